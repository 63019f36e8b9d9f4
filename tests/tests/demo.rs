//! `cargo xtask demo --once`: the main job's scenario holds on the local control plane.
//! Its own test binary: it applies the dev overlay into its own namespace `jitsi-dev` and uses the dev
//! block of node ports (30300–30302), which `manifests.rs` also uses; test binaries run one at a time.

// Test code: a failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used)]

use std::process::Command;

use integration_tests::daemon::binary;

#[test]
fn the_demo_scenario_holds() {
    let output = Command::new(binary("demo")).arg("--once").output().unwrap();
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
            stdout
                .lines()
                .any(|l| l.contains(pod) && l.contains(&port.to_string()) && l.contains(" up ")),
            "no live row for {pod}:\n{stdout}"
        );
    }
    // What stands in for what is said on screen.
    assert!(stdout.contains("stood in:"), "{stdout}");
}
