//! `cargo xtask demo --once`: the main job's scenario holds on the local control plane, the autoscaling
//! loop included (the tests' cluster runs KEDA).
//! The demo applies the dev overlay, whose bridges take node ports 30300 and up: the test holds that
//! block for it, so a test elsewhere that uses the same overlay waits instead of colliding.

// Test code: a failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used)]

use testbed::Cluster;
use testbed::daemon::binary;

/// Runs `demo --once --dataplane` with `extra` flags; its stdout, once it held.
async fn run_demo(extra: &'static [&'static str]) -> String {
    // The demo deletes its namespace, and waits until it is gone, before it exits.
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(binary("demo"))
            .args(["--once", "--dataplane"])
            .args(extra)
            .output()
    })
    .await
    .unwrap()
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the demo {extra:?} failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("demo: every step held"), "{stdout}");
    stdout
}

/// The rows a bridge's table shows: running with its port, a live exporter and UDP reachable; during a
/// scale-down, Terminating and reachable while draining; at the end only bridge 0.
fn check_the_main_claim(stdout: &str, bridges: &[&str], service_of: impl Fn(&str) -> String) {
    for pod in bridges {
        let ordinal: u16 = pod.rsplit('-').next().unwrap().parse().unwrap();
        let port = 30300 + ordinal;
        let service = service_of(pod);
        assert!(
            stdout.lines().any(|l| l.contains(&format!("{pod} "))
                && l.contains(" Running ")
                && l.contains(&format!(" {service} "))
                && l.contains(&port.to_string())
                && l.contains(" up ")
                && l.trim_end().ends_with("yes")),
            "no live row for {pod} on {service}, reachable over UDP:\n{stdout}"
        );
    }
    assert!(
        stdout
            .lines()
            .any(|l| l.contains("Terminating") && l.trim_end().ends_with("yes")),
        "no bridge shown draining with its Service, reachable:\n{stdout}"
    );
    let last_table = stdout.rsplit("POD ").next().unwrap();
    assert!(
        last_table.contains("shard-0-jvb-0")
            && bridges[1..]
                .iter()
                .all(|pod| !last_table.contains(&format!("{pod} "))),
        "the last table still lists a removed bridge or its Service:\n{last_table}"
    );
}

/// The autoscaling loop, as the demo reports it: the metric read back through the aggregated API, the
/// time from each load step to the new bridges answering UDP, one bridge removed at a time, and what the
/// loop must keep.
fn check_the_loop(stdout: &str, rise_during_drain: bool) {
    assert!(
        stdout.contains("external.metrics.k8s.io answers s0-prometheus = 0.3"),
        "{stdout}"
    );
    for pod in ["shard-0-jvb-1", "shard-0-jvb-2"] {
        assert!(
            stdout.contains(&format!("load step → {pod} answering UDP on its Service: ")),
            "{stdout}"
        );
    }
    assert!(
        stdout.contains(
            "no Service lost or duplicated, every running or draining bridge answered UDP throughout"
        ),
        "{stdout}"
    );
    let replicas = stdout
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("the StatefulSet's replicas, as the HPA set them: ")
        })
        .unwrap_or_else(|| panic!("no replica history:\n{stdout}"));
    let counts: Vec<i32> = replicas.split(" → ").map(|r| r.parse().unwrap()).collect();
    assert_eq!(counts.first(), Some(&1), "{replicas}");
    assert_eq!(counts.last(), Some(&1), "{replicas}");
    assert!(counts.contains(&3), "{replicas}");
    if rise_during_drain {
        assert!(
            counts.contains(&4),
            "the held ordinal was not asked for again: {replicas}"
        );
        assert!(
            stdout.contains("load step during the drain → shard-0-jvb-3 answering UDP: "),
            "{stdout}"
        );
    }
}

/// With the cluster's monitoring, the demo's Prometheus: its URL, the three queries, and the answers to
/// the first two once the loop is back at one bridge.
fn check_prometheus(stdout: &str) {
    testbed::monitoring::require();
    assert!(stdout.contains("Prometheus on http://127.0.0.1:"), "{stdout}");
    for query in [
        "sum by (jitsi_org_shard) (jitsi_up)",
        "sum by (jitsi_org_shard) (jitsi_participants)",
        "count by (jitsi_org_shard) (jitsi_graceful_shutdown == 1 or jitsi_drain == 1)",
    ] {
        assert!(stdout.contains(query), "query {query} not shown:\n{stdout}");
    }
    let answer = |what: &str| {
        stdout
            .lines()
            .find(|l| l.trim_start().starts_with(what))
            .unwrap_or_else(|| panic!("no answer to {what}:\n{stdout}"))
            .to_owned()
    };
    // One bridge left, carrying at most the load of 5 participants (the last scrape may predate the
    // last share of the load: scrapes are 15 s apart).
    assert!(
        answer("→ bridges up, per shard:").ends_with("shard-0: 1"),
        "{stdout}"
    );
    let participants: f64 = answer("→ participants, per shard:")
        .rsplit("shard-0: ")
        .next()
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no participants of shard-0:\n{stdout}"));
    assert!((1.0..=5.0).contains(&participants), "{stdout}");
}

/// The main job, as `cargo xtask demo --once --dataplane` runs it, in NodePort mode and then with the
/// shard's bridges behind one load balancer (`--load-balancer`). One after the other: both use the dev
/// overlay's namespace and node ports.
#[tokio::test]
async fn the_demo_scenario_holds_in_both_modes() {
    testbed::dataplane::require();
    let cluster = Cluster::connect().await;
    let holder = cluster.namespace("demo-node-ports").await;
    holder.reserve_node_ports(30300).await;

    let stdout = run_demo(&[]).await;
    check_the_main_claim(
        &stdout,
        &["shard-0-jvb-0", "shard-0-jvb-1", "shard-0-jvb-2", "shard-0-jvb-3"],
        |pod| pod.to_owned(),
    );
    check_the_loop(&stdout, true);
    // What stands in for what is said on screen.
    assert!(stdout.contains("stood in:"), "{stdout}");
    check_prometheus(&stdout);

    let stdout = run_demo(&["--load-balancer"]).await;
    assert!(
        stdout.contains("shard-0-jvb-public: load balancer address 10.250.1.20"),
        "{stdout}"
    );
    check_the_main_claim(
        &stdout,
        &["shard-0-jvb-0", "shard-0-jvb-1", "shard-0-jvb-2"],
        |_| "shard-0-jvb-public".to_owned(),
    );
    check_the_loop(&stdout, false);
    holder.delete().await;
}
