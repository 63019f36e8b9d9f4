//! service-per-pod and a StatefulSet of two billion replicas (`spec.replicas: 2147483647`, which the API
//! server accepts): bounded work and memory, one Warning per reason, and no delay for anyone else.
//! It stops kube-controller-manager for a while, so it holds the cluster alone.

// Test code: a failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use serde_json::json;
use testbed::measure::usage;
use testbed::service_per_pod::{Fixture, ports, statefulset};
use testbed::{control_plane, eventually};

const SECOND: Duration = Duration::from_secs(1);

#[tokio::test]
async fn two_billion_replicas_cost_one_warning_per_reason_and_bounded_memory() {
    testbed::exclusive_cluster();
    let (fx, blocks) = Fixture::start_granted("spp-huge", 2).await;
    // The huge one gets the higher block: ports below its base are beyond its reach.
    let (low, high) = (blocks[0], blocks[1]);
    // kube-controller-manager's StatefulSet controller allocates a slot per replica (16 GiB for this
    // one, measured: it took the machine down), so it is stopped while the StatefulSet exists. Ours
    // needs no pod for this.
    let controller_manager = control_plane::kill("kube-controller-manager");
    fx.create(&statefulset(
        "huge",
        i32::MAX,
        &[("service-per-pod/base-port", &high.to_string())],
    ))
    .await;
    // Its granted block, and nothing else.
    let block: Vec<String> = (0..testbed::node_ports::BLOCK)
        .map(|i| format!("huge-{i}"))
        .collect();
    let names: Vec<&str> = block.iter().map(String::as_str).collect();
    fx.wait_for_services(&names, 30 * SECOND).await;
    let not_granted = fx.wait_for_warning("huge", "PortNotGranted").await;
    let out_of_range = fx.wait_for_warning("huge", "PortOutOfRange").await;
    println!("{not_granted}\n{out_of_range}");
    assert!(out_of_range.contains("2147483646"), "{out_of_range}");
    assert!(not_granted.starts_with("pod ordinals 10–"), "{not_granted}");

    // Another StatefulSet, created afterwards, is served at once.
    let asked = Instant::now();
    fx.create(&statefulset(
        "next",
        1,
        &[("service-per-pod/base-port", &low.to_string())],
    ))
    .await;
    let next = eventually("Service next-0", 5 * SECOND, || async {
        fx.services().get_opt("next-0").await.ok().flatten()
    })
    .await;
    let took = asked.elapsed();
    println!("a StatefulSet created after the huge one got its Service {took:?} later");
    assert!(took < SECOND, "{took:?}");
    assert_eq!(ports(&next)[0].1, Some(i32::from(low)));

    // A few more reconciles (every change of the huge one) neither repeat the warnings nor grow memory.
    for touch in 0..5 {
        let patch = json!({ "metadata": { "annotations": { "example.com/touch": touch.to_string() } } });
        fx.sets()
            .patch(
                "huge",
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(patch),
            )
            .await
            .unwrap();
    }
    tokio::time::sleep(2 * SECOND).await;
    for reason in ["PortNotGranted", "PortOutOfRange"] {
        assert_eq!(fx.warnings("huge", reason).await.len(), 1, "one {reason} Warning");
    }
    let memory = usage(fx.controller.pid()).unwrap();
    println!(
        "controller RSS {:.1} MiB, peak {:.1} MiB",
        memory.rss_mib, memory.peak_rss_mib
    );
    assert!(memory.peak_rss_mib < 64.0, "{memory:?}");
    assert_eq!(fx.service_map().await.len(), 11);
    fx.sets()
        .delete("huge", &kube::api::DeleteParams::default())
        .await
        .unwrap();
    eventually("the huge StatefulSet gone", 10 * SECOND, || async {
        fx.sets().get_opt("huge").await.ok()?.is_none().then_some(())
    })
    .await;
    controller_manager.start();
    fx.namespace.delete().await;
}
