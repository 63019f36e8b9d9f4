//! `cargo xtask demo --once`: the main job's scenario holds on the local control plane.
//! The demo applies the dev overlay, whose bridges take node ports 30300 and up: the test holds that
//! block for it, so a test elsewhere that uses the same overlay waits instead of colliding.

// Test code: a failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used)]

use testbed::Cluster;
use testbed::daemon::binary;

#[tokio::test]
async fn the_demo_scenario_holds() {
    let cluster = Cluster::connect().await;
    let holder = cluster.namespace("demo-node-ports").await;
    holder.reserve_node_ports(30300).await;
    // The demo deletes its namespace, and waits until it is gone, before it exits.
    testbed::dataplane::require();
    let output = tokio::task::spawn_blocking(|| {
        std::process::Command::new(binary("demo"))
            .args(["--once", "--dataplane"])
            .output()
    })
    .await
    .unwrap()
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "the demo failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("demo: every step held"), "{stdout}");
    // The table after scaling to 3 shows every bridge with its port and a live exporter.
    for (pod, port) in [
        ("shard-0-jvb-0", 30300),
        ("shard-0-jvb-1", 30301),
        ("shard-0-jvb-2", 30302),
    ] {
        assert!(
            stdout.lines().any(|l| l.contains(pod)
                && l.contains(&port.to_string())
                && l.contains(" up ")
                && l.trim_end().ends_with("yes")),
            "no live row for {pod}, reachable over UDP:\n{stdout}"
        );
    }
    // The main claim: after scaling down, the removed bridges are listed Terminating with their Service
    // and node port while their participants fall, and are gone with their Service afterwards.
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
    // What stands in for what is said on screen.
    assert!(stdout.contains("stood in:"), "{stdout}");
    holder.delete().await;
}
