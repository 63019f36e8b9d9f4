//! HAProxy exactly as the manifests configure it (rendered `haproxy.cfg` and `start.sh`, Debian's
//! `haproxy`): two peered replicas, shards found through the A records of their `<shard>-web` headless
//! Services (served by dnsmasq), 1 000 rooms that must never change shard — not when a shard's web pod is
//! replaced, not when a shard gets a second web pod, not when an HAProxy replica restarts.

// Test code: a failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use testbed::eventually;
use testbed::free_tcp_port;
use testbed::haproxy::{Dns, Replica, ShardWeb, WEB_POD_HEADER, Wiring, render, sample_sum};
use testbed::promql::HAPROXY_METRICS;

const ROOMS: usize = 1000;

/// The shard and the web pod that answered.
async fn get(client: &reqwest::Client, replica: &Replica, path_and_query: &str) -> (String, String) {
    let url = format!("http://{}{path_and_query}", replica.http);
    let response = client.get(&url).send().await.unwrap();
    assert!(response.status().is_success(), "{url}: {}", response.status());
    let pod = response.headers()[WEB_POD_HEADER].to_str().unwrap().to_owned();
    (response.text().await.unwrap(), pod)
}

async fn shard_of_room(client: &reqwest::Client, replica: &Replica, room: usize) -> String {
    get(client, replica, &format!("/xmpp-websocket?room=room-{room}"))
        .await
        .0
}

async fn metrics(client: &reqwest::Client, replica: &Replica) -> Option<String> {
    let url = format!("http://{}/metrics", replica.metrics);
    client.get(&url).send().await.ok()?.text().await.ok()
}

/// Waits until every replica sees exactly `count` healthy shards.
async fn wait_for_shards(client: &reqwest::Client, replicas: &[Replica], count: f64, timeout: Duration) {
    for replica in replicas {
        eventually(
            &format!("{count} healthy shards behind {}", replica.http),
            timeout,
            || async {
                let text = metrics(client, replica).await?;
                let active = sample_sum(&text, "haproxy_backend_active_servers", "proxy=\"shards\"")?;
                (active == count).then_some(())
            },
        )
        .await;
    }
}

/// Waits until `replica`'s stick table holds `rooms` rooms (learnt itself or from its peer).
async fn wait_for_table(client: &reqwest::Client, replica: &Replica, rooms: usize) {
    eventually(
        &format!("{rooms} rooms in the stick table of {}", replica.http),
        Duration::from_secs(20),
        || async {
            let text = metrics(client, replica).await?;
            let used = sample_sum(&text, "haproxy_sticktable_used", "name=\"shards\"")?;
            (used == rooms as f64).then_some(())
        },
    )
    .await;
}

/// Places rooms `rooms` (first request through alternating replicas) and asserts no shard got more than
/// 40 % of them.
async fn place(
    client: &reqwest::Client,
    replicas: &[Replica],
    rooms: std::ops::Range<usize>,
) -> BTreeMap<usize, String> {
    let mut placed = BTreeMap::new();
    let mut per_shard: BTreeMap<String, usize> = BTreeMap::new();
    for room in rooms.clone() {
        let shard = shard_of_room(client, &replicas[room % replicas.len()], room).await;
        *per_shard.entry(shard.clone()).or_default() += 1;
        placed.insert(room, shard);
    }
    println!("new rooms {rooms:?} per shard: {per_shard:?}");
    assert_eq!(per_shard.len(), 3, "{per_shard:?}");
    for (shard, count) in &per_shard {
        assert!(
            count * 100 <= rooms.len() * 40,
            "{shard} got {count} of {} new rooms: {per_shard:?}",
            rooms.len()
        );
    }
    placed
}

/// Every room, asked through every replica, is on the shard it was placed on.
async fn assert_rooms_in_place(
    client: &reqwest::Client,
    replicas: &[Replica],
    placed: &BTreeMap<usize, String>,
    after: &str,
) {
    let mut moved = Vec::new();
    for (room, first) in placed {
        for replica in replicas {
            let now = shard_of_room(client, replica, *room).await;
            if &now != first {
                moved.push(format!("room-{room} {first} -> {now} via {}", replica.http));
            }
        }
    }
    println!(
        "after {after}: {} of {} rooms changed shard through {} replicas",
        moved.len(),
        placed.len(),
        replicas.len()
    );
    assert!(moved.is_empty(), "after {after}: {moved:?}");
}

/// Asks for the placed rooms, round and round through every replica, until stopped: counts every
/// answer from another shard and every failed request.
struct Traffic {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<(usize, usize, usize)>,
}

impl Traffic {
    fn start(client: &reqwest::Client, urls: Vec<String>, placed: &BTreeMap<usize, String>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let client = client.clone();
        let placed = placed.clone();
        let task = tokio::spawn({
            let stop = stop.clone();
            async move {
                let (mut asked, mut moved, mut failed) = (0, 0, 0);
                'outer: loop {
                    for (room, shard) in &placed {
                        for url in &urls {
                            if stop.load(Ordering::Relaxed) {
                                break 'outer;
                            }
                            asked += 1;
                            let answer = client
                                .get(format!("{url}/http-bind?room=room-{room}"))
                                .send()
                                .await;
                            match answer {
                                Ok(response) if response.status().is_success() => {
                                    if &response.text().await.unwrap_or_default() != shard {
                                        moved += 1;
                                    }
                                }
                                Ok(response) => {
                                    failed += 1;
                                    eprintln!("{url} room-{room}: {}", response.status());
                                }
                                Err(e) => {
                                    failed += 1;
                                    eprintln!("{url} room-{room}: {e:?}");
                                }
                            }
                        }
                    }
                }
                (asked, moved, failed)
            }
        });
        Traffic { stop, task }
    }

    async fn finish(self) -> (usize, usize, usize) {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap()
    }
}

#[tokio::test]
async fn rooms_stay_on_their_shard_through_web_rollouts_scale_out_and_restarts() {
    let rendered = render("manifests/overlays/production", "production");
    assert_eq!(rendered.replicas, 2, "production runs two HAProxy replicas");
    let web_port = free_tcp_port().expect("a free port");
    let shard_0 = ShardWeb::start(0, 0, web_port).await;
    let shard_1 = ShardWeb::start(1, 0, web_port).await;
    let shard_2 = ShardWeb::start(2, 0, web_port).await;
    let mut dns = Dns::start(
        &rendered.shard_domain,
        &[&shard_0, &shard_1, &shard_2],
        &rendered.config_dir,
    );
    let wiring = Wiring {
        peer_port: free_tcp_port().expect("a free port"),
        nameserver: dns.addr,
        web_port,
    };
    let mut replicas: Vec<Replica> = (0..rendered.replicas)
        .map(|ordinal| Replica::start(&rendered, ordinal, wiring))
        .collect();
    let client = reqwest::Client::new();
    wait_for_shards(&client, &replicas, 3.0, Duration::from_secs(30)).await;

    // What the dashboards and alerts read from HAProxy is really there.
    let exposition = metrics(&client, &replicas[0]).await.unwrap();
    for name in HAPROXY_METRICS {
        assert!(
            exposition.lines().any(|l| l.starts_with(name)),
            "HAProxy does not export {name}"
        );
    }

    // A room's first request goes to either replica, which picks a shard round-robin. The replicas share
    // what they learnt (peers); every later request of a room, through either replica, lands where the
    // room is.
    let mut placed = place(&client, &replicas, 0..ROOMS).await;
    for replica in &replicas {
        wait_for_table(&client, replica, ROOMS).await;
    }
    assert_rooms_in_place(&client, &replicas, &placed, "placing").await;

    // Page loads carry no room: balanced over the shards.
    for replica in &replicas {
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        for _ in 0..300 {
            *counts.entry(get(&client, replica, "/").await.0).or_default() += 1;
        }
        println!(
            "requests without a room per shard, through {}: {counts:?}",
            replica.http
        );
        assert_eq!(counts.len(), 3, "{counts:?}");
        assert!(
            counts.values().all(|n| (80..=120).contains(n)),
            "unbalanced: {counts:?}"
        );
    }

    // While the rooms' participants keep asking: shard-0's web pod is replaced as a Deployment rollout
    // does it (the new pod becomes ready and joins DNS; the old one leaves DNS, serves through its
    // preStop, then stops), and shard-1 gets a second web pod.
    let urls = replicas.iter().map(|r| format!("http://{}", r.http)).collect();
    let traffic = Traffic::start(&client, urls, &placed);
    let shard_0_new = ShardWeb::start(0, 1, web_port).await;
    let shard_1_second = ShardWeb::start(1, 1, web_port).await;
    dns.serve(&[&shard_0, &shard_0_new, &shard_1, &shard_1_second, &shard_2]);
    tokio::time::sleep(Duration::from_secs(5)).await;
    dns.serve(&[&shard_0_new, &shard_1, &shard_1_second, &shard_2]);
    tokio::time::sleep(rendered.web_pre_stop).await;
    drop(shard_0);
    // Every replica now sends shard-0's rooms to the new pod (the old one is gone: anything else fails).
    let shard_0_room = *placed.iter().find(|(_, s)| *s == "shard-0").unwrap().0;
    for replica in &replicas {
        let (shard, pod) = get(&client, replica, &format!("/?room=room-{shard_0_room}")).await;
        assert_eq!(
            (shard.as_str(), pod),
            ("shard-0", shard_0_new.addr.ip().to_string())
        );
    }
    let (asked, moved, failed) = traffic.finish().await;
    println!(
        "during the rollout: {asked} requests of placed rooms, {moved} answered by another shard, {failed} failed"
    );
    assert_eq!(
        (moved, failed),
        (0, 0),
        "rooms moved or failed during the rollout"
    );
    wait_for_shards(&client, &replicas, 3.0, Duration::from_secs(30)).await;
    assert_rooms_in_place(&client, &replicas, &placed, "a web rollout and a web scale-out").await;

    // An HAProxy replica restarts (a rollout of the StatefulSet, an eviction): it learns every room from
    // its peer before it is asked.
    drop(replicas.remove(0));
    replicas.insert(0, Replica::start(&rendered, 0, wiring));
    wait_for_shards(&client, &replicas[..1], 3.0, Duration::from_secs(30)).await;
    wait_for_table(&client, &replicas[0], ROOMS).await;
    assert_rooms_in_place(&client, &replicas, &placed, "an HAProxy replica restarted").await;

    // New rooms still spread over the three shards.
    placed.extend(place(&client, &replicas, ROOMS..ROOMS + 300).await);

    // shard-2 leaves DNS (its web is gone): no new room goes there.
    dns.serve(&[&shard_0_new, &shard_1, &shard_1_second]);
    wait_for_shards(&client, &replicas, 2.0, Duration::from_secs(60)).await;
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for room in ROOMS + 300..ROOMS + 600 {
        let shard = shard_of_room(&client, &replicas[room % replicas.len()], room).await;
        *counts.entry(shard).or_default() += 1;
    }
    println!("new rooms after shard-2 left DNS: {counts:?}");
    assert_eq!(
        counts.keys().collect::<Vec<_>>(),
        ["shard-0", "shard-1"],
        "{counts:?}"
    );
}
