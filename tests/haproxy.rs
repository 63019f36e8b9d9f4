//! HAProxy exactly as the manifests configure it (rendered `haproxy.cfg` and `start.sh`, Debian's
//! `haproxy`): two peered replicas, three shards found through SRV records served by dnsmasq, 1 000 rooms.

// Test code: a failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use testbed::eventually;
use testbed::free_tcp_port;
use testbed::haproxy::{Dns, Replica, ShardWeb, render, sample_sum};
use testbed::promql::HAPROXY_METRICS;

const ROOMS: usize = 1000;

async fn get(client: &reqwest::Client, replica: &Replica, path_and_query: &str) -> String {
    let url = format!("http://{}{path_and_query}", replica.http);
    let response = client.get(&url).send().await.unwrap();
    assert!(response.status().is_success(), "{url}: {}", response.status());
    response.text().await.unwrap()
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

#[tokio::test]
async fn rooms_stick_to_one_shard_through_every_replica() {
    let rendered = render("manifests/overlays/production", "production");
    assert_eq!(rendered.replicas, 2, "production runs two HAProxy replicas");
    let shards = [
        ShardWeb::start("shard-0").await,
        ShardWeb::start("shard-1").await,
        ShardWeb::start("shard-2").await,
    ];
    let mut dns = Dns::start(
        &rendered.shard_srv,
        &shards.iter().collect::<Vec<_>>(),
        &rendered.config_dir,
    );
    let peer_port = free_tcp_port().expect("a free port");
    let replicas: Vec<Replica> = (0..rendered.replicas)
        .map(|ordinal| Replica::start(&rendered, ordinal, peer_port, dns.addr))
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

    // A room's first request goes to either replica; it picks a shard round-robin.
    let mut shard_of = BTreeMap::new();
    for room in 0..ROOMS {
        let replica = &replicas[room % replicas.len()];
        let shard = get(&client, replica, &format!("/xmpp-websocket?room=room-{room}")).await;
        shard_of.insert(room, shard);
    }
    let mut per_shard: BTreeMap<&str, usize> = BTreeMap::new();
    for shard in shard_of.values() {
        *per_shard.entry(shard).or_default() += 1;
    }
    println!("new rooms per shard: {per_shard:?}");
    assert_eq!(per_shard.len(), 3, "{per_shard:?}");
    for (shard, rooms) in &per_shard {
        assert!(
            *rooms * 100 <= ROOMS * 40,
            "{shard} got {rooms} of {ROOMS} new rooms: {per_shard:?}"
        );
    }

    // The replicas share what they learnt (peers), then every later request of a room, through either
    // replica, lands where the room is.
    for replica in &replicas {
        eventually(
            "every room in every replica's stick table",
            Duration::from_secs(15),
            || async {
                let text = metrics(&client, replica).await?;
                let used = sample_sum(&text, "haproxy_sticktable_used", "name=\"shards\"")?;
                (used == ROOMS as f64).then_some(())
            },
        )
        .await;
    }
    for (room, first) in &shard_of {
        for replica in &replicas {
            let again = get(&client, replica, &format!("/http-bind?room=room-{room}")).await;
            assert_eq!(
                &again, first,
                "room-{room} moved from {first} to {again} through {}",
                replica.http
            );
        }
    }

    // Page loads carry no room: balanced over the shards.
    for replica in &replicas {
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        for _ in 0..300 {
            *counts.entry(get(&client, replica, "/").await).or_default() += 1;
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

    // shard-2 leaves DNS (its web is gone): no new room goes there.
    dns.serve(&[&shards[0], &shards[1]]);
    wait_for_shards(&client, &replicas, 2.0, Duration::from_secs(60)).await;
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for room in ROOMS..ROOMS + 300 {
        let replica = &replicas[room % replicas.len()];
        let shard = get(&client, replica, &format!("/xmpp-websocket?room=room-{room}")).await;
        *counts.entry(shard).or_default() += 1;
    }
    println!("new rooms after shard-2 left DNS: {counts:?}");
    assert_eq!(
        counts.keys().collect::<Vec<_>>(),
        ["shard-0", "shard-1"],
        "{counts:?}"
    );
}
