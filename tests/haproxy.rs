//! HAProxy exactly as the manifests configure it (rendered `haproxy.cfg` and `start.sh`, Debian's
//! `haproxy`): two peered replicas, shards found through the A records of their `<shard>-web` headless
//! Services (served by dnsmasq), 1 000 rooms that must never change shard — not when a shard's web pod is
//! replaced, not when a shard gets a second web pod, not when an HAProxy replica restarts.

// Test code: a failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use testbed::eventually;
use testbed::free_tcp_port;
use testbed::haproxy::{
    Replica, RoomTraffic, ShardWeb, WEB_POD_HEADER, render, render_dir, sample_sum, start_replicas,
};
use testbed::manifests::edit;
use testbed::promql::HAPROXY_METRICS;
use testbed::prosody::{Occupants, Prosody, ProsodyOptions};

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

#[tokio::test]
async fn rooms_stay_on_their_shard_through_web_rollouts_scale_out_and_restarts() {
    let rendered = render("manifests/overlays/production", "production");
    assert_eq!(rendered.replicas, 2, "production runs two HAProxy replicas");
    let web_port = free_tcp_port().expect("a free port");
    let shard_0 = ShardWeb::start(0, 0, web_port).await;
    let shard_1 = ShardWeb::start(1, 0, web_port).await;
    let shard_2 = ShardWeb::start(2, 0, web_port).await;
    let (mut dns, wiring, mut replicas) =
        start_replicas(&rendered, &[&shard_0, &shard_1, &shard_2], web_port);
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
    let live = placed
        .iter()
        .map(|(room, shard)| (format!("room-{room}"), shard.clone()))
        .collect();
    let traffic = RoomTraffic::start(&client, urls, live);
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
    let outcome = traffic.finish().await;
    println!(
        "during the rollout: {} requests of placed rooms, {} answered by another shard, {} failed",
        outcome.asked,
        outcome.moved.len(),
        outcome.failed.len()
    );
    assert!(
        outcome.moved.is_empty() && outcome.failed.is_empty(),
        "rooms moved or failed during the rollout: {outcome:?}"
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

/// The rooms of `replica`'s stick table on `shard`.
fn rooms_on(replica: &Replica, shard: &str) -> BTreeSet<String> {
    replica
        .rooms()
        .into_iter()
        .filter(|(_, s)| s == shard)
        .map(|(room, _)| room)
        .collect()
}

/// Retiring a shard, as docs/deploying.md ("Upgrading Jitsi") says, with the real haproxy: the overlay
/// marks shard-0 draining and the replicas restart one by one with it; its live rooms stay, no new room
/// goes there (not even after another restart), and the rooms that ended there are forgotten with the
/// real Prosody's census, so their names open elsewhere when used again.
#[tokio::test]
async fn a_draining_shard_keeps_its_rooms_takes_no_new_one_and_forgets_the_ended_ones() {
    let copy = testbed::manifests::copy_of_manifests("haproxy-drain");
    let production = copy.join("manifests/overlays/production");
    let before = render_dir(&production, "drain-before");
    assert_eq!(before.draining_shards, "", "production drains nothing");
    let web_port = free_tcp_port().expect("a free port");
    let webs = [
        ShardWeb::start(0, 0, web_port).await,
        ShardWeb::start(1, 0, web_port).await,
        ShardWeb::start(2, 0, web_port).await,
    ];
    let (_dns, wiring, mut replicas) = start_replicas(&before, &webs.iter().collect::<Vec<_>>(), web_port);
    let client = reqwest::Client::new();
    wait_for_shards(&client, &replicas, 3.0, Duration::from_secs(30)).await;
    let placed = place(&client, &replicas, 0..300).await;
    for replica in &replicas {
        wait_for_table(&client, replica, 300).await;
    }

    // The operator marks shard-0 draining in the overlay; the StatefulSet rolls the replicas one by one.
    edit(
        &production.join("kustomization.yaml"),
        "{name: HAPROXY_DRAINING_SHARDS, value: \"\"}",
        "{name: HAPROXY_DRAINING_SHARDS, value: \"shard-0\"}",
    );
    let marked = render_dir(&production, "drain-marked");
    assert_eq!(marked.draining_shards, "shard-0");
    for ordinal in 0..replicas.len() {
        drop(replicas.remove(ordinal));
        replicas.insert(ordinal, Replica::start(&marked, ordinal, wiring));
        // Not ready at first: it learns the rooms from its peer before the Service sends it any.
        let healthz = format!("http://{}/healthz", replicas[ordinal].metrics);
        let first = eventually("haproxy to answer /healthz", Duration::from_secs(10), || async {
            Some(client.get(&healthz).send().await.ok()?.status().as_u16())
        })
        .await;
        assert_eq!(first, 503, "a replica said ready before it had learnt the rooms");
        // A draining shard is no active server: it takes no new room (what the alert on no active shard
        // and the dashboard's "shards taking rooms" count).
        wait_for_shards(
            &client,
            &replicas[ordinal..=ordinal],
            2.0,
            Duration::from_secs(30),
        )
        .await;
        wait_for_table(&client, &replicas[ordinal], 300).await;
        assert!(
            replicas[ordinal].log().contains("shard-0 is draining"),
            "{}",
            replicas[ordinal].log()
        );
        assert_rooms_in_place(
            &client,
            &replicas,
            &placed,
            &format!("haproxy-{ordinal} restarted draining shard-0"),
        )
        .await;
    }
    // New rooms and page loads go to the other shards only.
    let mut new_rooms: BTreeMap<String, usize> = BTreeMap::new();
    for room in 300..600 {
        *new_rooms
            .entry(shard_of_room(&client, &replicas[room % 2], room).await)
            .or_default() += 1;
    }
    for replica in &replicas {
        for _ in 0..50 {
            *new_rooms.entry(get(&client, replica, "/").await.0).or_default() += 1;
        }
    }
    println!("new rooms and page loads while shard-0 drains: {new_rooms:?}");
    assert_eq!(
        new_rooms.keys().collect::<Vec<_>>(),
        ["shard-1", "shard-2"],
        "{new_rooms:?}"
    );

    // Three of shard-0's rooms are live (people in them, on the real Prosody); the others ended.
    let shard_0_rooms: Vec<usize> = placed
        .iter()
        .filter(|(_, shard)| *shard == "shard-0")
        .map(|(room, _)| *room)
        .collect();
    let live: Vec<String> = shard_0_rooms[..3].iter().map(|r| format!("room-{r}")).collect();
    let prosody = Prosody::start(ProsodyOptions::default());
    let mut occupants = Occupants::join(
        &prosody,
        &live.iter().map(|room| (room.as_str(), 2)).collect::<Vec<_>>(),
    );
    let census_url = format!("{}/room-census", prosody.url());
    let census = || async {
        client
            .get(&census_url)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    };

    // Bad input changes nothing: not a census, not a shard.
    let entries_before = replicas[0].rooms();
    let (ok, _, stderr) = replicas[0].forget_ended_rooms("shard-0", "<html>502</html>", &[]);
    assert!(!ok && stderr.contains("stdin is not a room census"), "{stderr}");
    let (ok, _, stderr) = replicas[0].forget_ended_rooms("shard-x", &census().await, &[]);
    assert!(!ok && stderr.contains("usage"), "{stderr}");
    assert_eq!(replicas[0].rooms(), entries_before);

    // Every entry was touched a moment ago (the checks above): a room may have opened after the census
    // was read, so nothing is forgotten yet.
    let (ok, said, stderr) = replicas[0].forget_ended_rooms("shard-0", &census().await, &[]);
    assert!(ok, "{stderr}");
    println!("{said}");
    assert!(
        said.contains("3 rooms and 6 participants live") && said.contains(": 0 ended and forgotten"),
        "{said}"
    );

    // Later: the ended rooms are forgotten on every replica, except one asked for after the census was
    // read (it may be opening now).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let census_then = census().await;
    let reopening = format!("room-{}", shard_0_rooms[3]);
    let (shard, _) = get(&client, &replicas[1], &format!("/?room={reopening}")).await;
    assert_eq!(
        shard,
        "shard-0",
        "an entry of the draining shard is still followed: {}",
        replicas[1]
            .log()
            .lines()
            .filter(|l| !l.contains(" GET "))
            .collect::<Vec<_>>()
            .join("\n")
    );
    // Its peer learns the renewed entry too.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let ended = shard_0_rooms.len() - 4;
    for replica in &replicas {
        let (ok, said, stderr) =
            replica.forget_ended_rooms("shard-0", &census_then, &[("FORGET_RECENT_SECONDS", "2")]);
        assert!(ok, "{stderr}");
        println!("{said}");
        assert!(
            said.contains(&format!(
                "{ended} ended and forgotten, 3 live, 1 touched in the last 2s"
            )),
            "{said}"
        );
        let left: BTreeSet<String> = live.iter().cloned().chain([reopening.clone()]).collect();
        assert_eq!(rooms_on(replica, "shard-0"), left, "{}", replica.name);
    }

    // An ended room's name used again opens on a shard that takes new rooms; the live ones stay put,
    // through another restart of a replica (it learns the table from its peer, without what was forgotten).
    drop(replicas.remove(1));
    replicas.insert(1, Replica::start(&marked, 1, wiring));
    wait_for_shards(&client, &replicas[1..], 2.0, Duration::from_secs(30)).await;
    wait_for_table(&client, &replicas[1], 600 - ended).await;
    let mut reused: BTreeMap<String, usize> = BTreeMap::new();
    for room in &shard_0_rooms[4..] {
        *reused
            .entry(shard_of_room(&client, &replicas[room % 2], *room).await)
            .or_default() += 1;
    }
    println!("{ended} ended rooms of shard-0, their names used again: {reused:?}");
    assert!(!reused.contains_key("shard-0"), "{reused:?}");
    let still: BTreeMap<usize, String> = shard_0_rooms[..4]
        .iter()
        .map(|r| (*r, "shard-0".to_owned()))
        .collect();
    assert_rooms_in_place(
        &client,
        &replicas,
        &still,
        "forgetting the ended rooms and a restart",
    )
    .await;

    // The last rooms end: the census says so, and everything of shard-0 is forgotten.
    for room in &live {
        occupants.leave(room);
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    for replica in &replicas {
        let (ok, said, stderr) =
            replica.forget_ended_rooms("shard-0", &census().await, &[("FORGET_RECENT_SECONDS", "2")]);
        assert!(ok, "{stderr}");
        println!("{said}");
        assert!(
            said.starts_with("shard-0: 0 rooms and 0 participants live"),
            "{said}"
        );
        assert_eq!(rooms_on(replica, "shard-0"), BTreeSet::new(), "{}", replica.name);
    }
    std::fs::remove_dir_all(&copy).unwrap();
}

/// A draining shard that is not one of haproxy.cfg's servers stops the replica with one sentence (a
/// typo would otherwise drain nothing, silently).
#[test]
fn a_draining_shard_that_does_not_exist_is_refused_at_start() {
    let rendered = render("manifests/overlays/production", "drain-typo");
    for (value, said) in [
        ("shard-0 shard-20", "haproxy.cfg has no server shard-20"),
        ("shard_1", "'shard_1' is not a shard name"),
    ] {
        let output = std::process::Command::new("sh")
            .arg(rendered.config_dir.join("start.sh"))
            .env("HAPROXY_REPLICAS", "1")
            .env("HAPROXY_PEER_ADDRESS", "127.0.0.1:1")
            .env("HAPROXY_LOCAL_PEER", "haproxy-0")
            .env("HAPROXY_RUNTIME_DIR", &rendered.config_dir)
            .env("HAPROXY_DRAINING_SHARDS", value)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{value}: {stderr}");
        assert!(stderr.contains(said), "{value}: {stderr}");
    }
}
