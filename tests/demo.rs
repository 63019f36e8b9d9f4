//! `cargo xtask demo --once`: the main job's scenario holds on the local control plane.
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

/// The rows a bridge's table shows: running with its port, a live exporter and UDP reachable; after the
/// scale-down, Terminating and reachable while draining, then gone.
fn check_the_main_claim(stdout: &str, service_of: impl Fn(&str) -> String) {
    for (pod, port) in [
        ("shard-0-jvb-0", 30300),
        ("shard-0-jvb-1", 30301),
        ("shard-0-jvb-2", 30302),
    ] {
        let service = service_of(pod);
        assert!(
            stdout.lines().any(|l| l.contains(pod)
                && l.contains(&format!(" {service} "))
                && l.contains(&port.to_string())
                && l.contains(" up ")
                && l.trim_end().ends_with("yes")),
            "no live row for {pod} on {service}, reachable over UDP:\n{stdout}"
        );
    }
    for (pod, port) in [("shard-0-jvb-1", 30301), ("shard-0-jvb-2", 30302)] {
        let draining: Vec<&str> = stdout
            .lines()
            .filter(|l| {
                l.contains(pod)
                    && l.contains("Terminating")
                    && l.contains(&port.to_string())
                    && l.trim_end().ends_with("yes")
            })
            .collect();
        assert!(
            draining.len() >= 2,
            "{pod} not shown draining with its Service:\n{stdout}"
        );
        assert!(
            stdout.contains(&format!(
                "{pod}: Terminating with its Service while participants fell"
            )),
            "{stdout}"
        );
    }
    let last_table = stdout.rsplit("POD ").next().unwrap();
    assert!(
        last_table.contains("shard-0-jvb-0")
            && !last_table.contains("shard-0-jvb-1")
            && !last_table.contains("shard-0-jvb-2"),
        "the last table still lists a removed bridge or its Service:\n{last_table}"
    );
}

/// With the cluster's monitoring, the demo's Prometheus: its URL, the three queries, and their answers
/// while the demo runs (three bridges up and their participants, then the drain).
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
    // 3 bridges of 4, 7 and 10 participants.
    assert!(
        answer("→ bridges up, per shard:").ends_with("shard-0: 3"),
        "{stdout}"
    );
    assert!(
        answer("→ participants, per shard:").ends_with("shard-0: 21"),
        "{stdout}"
    );
    assert!(
        stdout.contains("Prometheus during the drain, draining bridges: shard-0: "),
        "{stdout}"
    );
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
    check_the_main_claim(&stdout, |pod| pod.to_owned());
    // What stands in for what is said on screen.
    assert!(stdout.contains("stood in:"), "{stdout}");
    check_prometheus(&stdout);

    let stdout = run_demo(&["--load-balancer"]).await;
    assert!(
        stdout.contains("shard-0-jvb-public: load balancer address 10.250.1.20"),
        "{stdout}"
    );
    check_the_main_claim(&stdout, |_| "shard-0-jvb-public".to_owned());
    holder.delete().await;
}
