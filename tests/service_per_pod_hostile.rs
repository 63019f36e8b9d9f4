//! service-per-pod against what a careless or hostile tenant can write into a StatefulSet: a replica
//! count of two billion, a selector label that matches other workloads, ports that were never granted,
//! ports another StatefulSet reserved. The controller runs as its manifests run it, under its own
//! ServiceAccount, with port grants limited to the blocks the harness gave each test.

// Test code: a failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::{ListParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::json;
use testbed::eventually;
use testbed::service_per_pod::{Fixture, ports, statefulset};

const SECOND: Duration = Duration::from_secs(1);

#[tokio::test]
async fn a_label_shared_by_other_workloads_selects_only_the_statefulsets_own_pods() {
    let fx = Fixture::start("spp-label").await;
    let base = fx.namespace.node_port_block().await;
    // Pods of other workloads of shard-0 (Prosody, Jicofo, web) carry the shard label.
    let pods: Api<Pod> = fx.namespace.api();
    for other in ["shard-0", "prosody", "jicofo"] {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": { "name": other, "labels": { "jitsi.org/shard": "shard-0", "app": other } },
            "spec": { "containers": [{ "name": "c", "image": "example.org/other:1" }] }
        }))
        .unwrap();
        pods.create(&PostParams::default(), &pod).await.unwrap();
    }
    // A StatefulSet named `shard` whose Services would select on that label.
    fx.create(&statefulset(
        "shard",
        2,
        &[
            ("service-per-pod/base-port", &base.to_string()),
            ("service-per-pod/label", "jitsi.org/shard"),
        ],
    ))
    .await;
    let services = fx.wait_for_services(&["shard-0", "shard-1"], 15 * SECOND).await;
    let set_uid = fx.sets().get("shard").await.unwrap().uid().unwrap();
    for service in services.values() {
        let selector = service.spec.as_ref().unwrap().selector.clone().unwrap();
        assert_eq!(
            selector.get("statefulset.kubernetes.io/pod-name"),
            Some(&service.name_any()),
            "the pod name is always in the selector"
        );
        let query: Vec<String> = selector.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let selected = pods
            .list(&ListParams::default().labels(&query.join(",")))
            .await
            .unwrap()
            .items;
        for pod in &selected {
            assert!(
                pod.owner_references().iter().any(|o| o.uid == set_uid),
                "Service {} selects {}, which the StatefulSet does not own",
                service.name_any(),
                pod.name_any()
            );
        }
    }
    // Neither the pod named `shard-0` of another workload, nor prosody or jicofo.
    fx.namespace.delete().await;
}

#[tokio::test]
async fn ports_never_granted_to_the_namespace_get_no_service_and_one_event() {
    let (fx, blocks) = Fixture::start_granted("spp-grant", 1).await;
    let granted = blocks[0];
    // A block the harness gave this test, but that the controller was not told to grant.
    let ungranted = fx.namespace.node_port_block().await;
    fx.create(&statefulset(
        "jvb",
        2,
        &[("service-per-pod/base-port", &ungranted.to_string())],
    ))
    .await;
    let message = fx.wait_for_warning("jvb", "PortNotGranted").await;
    println!("{message}");
    assert!(
        message.contains(&format!("granted: {granted}-{}", granted + 9)),
        "{message}"
    );
    tokio::time::sleep(2 * SECOND).await;
    assert!(
        fx.service_map().await.is_empty(),
        "no Service for ports never granted"
    );
    assert_eq!(fx.warnings("jvb", "PortNotGranted").await.len(), 1);
    assert_eq!(
        fx.controller
            .metric("service_per_pod_reconcile_errors_total{category=\"PortNotGranted\"}")
            .await,
        1.0
    );
    fx.namespace.delete().await;
}

#[tokio::test]
async fn a_reserved_block_is_kept_for_the_autoscaler() {
    let fx = Fixture::start("spp-reserve").await;
    let base = fx.namespace.node_port_block().await;
    fx.create(&statefulset(
        "bridges",
        1,
        &[
            ("service-per-pod/base-port", &base.to_string()),
            ("service-per-pod/max-replicas", "10"),
        ],
    ))
    .await;
    fx.wait_for_services(&["bridges-0"], 15 * SECOND).await;
    // Created later, aiming at ports the first one has no pod for yet.
    fx.create(&statefulset(
        "squatter",
        2,
        &[("service-per-pod/base-port", &(base + 5).to_string())],
    ))
    .await;
    let message = fx.wait_for_warning("squatter", "PortConflict").await;
    assert!(message.contains("/bridges"), "{message}");
    tokio::time::sleep(SECOND).await;
    let names: Vec<String> = fx.service_map().await.into_keys().collect();
    assert_eq!(
        names,
        vec!["bridges-0"],
        "the reserved ports stay free for bridges-1..9"
    );
    fx.sets()
        .patch(
            "bridges",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({ "spec": { "replicas": 7 } })),
        )
        .await
        .unwrap();
    let services = fx
        .wait_for_services(
            &[
                "bridges-0",
                "bridges-1",
                "bridges-2",
                "bridges-3",
                "bridges-4",
                "bridges-5",
                "bridges-6",
            ],
            15 * SECOND,
        )
        .await;
    let node_ports: BTreeMap<String, Option<i32>> = services
        .iter()
        .map(|(name, service)| (name.clone(), ports(service)[0].1))
        .collect();
    assert_eq!(node_ports["bridges-6"], Some(i32::from(base) + 6));
    fx.namespace.delete().await;
}

#[tokio::test]
async fn a_node_port_refused_for_a_minute_is_taken_within_30_seconds_of_its_release() {
    let fx = Fixture::start("spp-refused").await;
    let base = fx.namespace.node_port_block().await;
    // A Service outside the controller's sight (no managed-by label) holds the port.
    let squatter: Service = serde_json::from_value(json!({
        "metadata": { "name": "squatter" },
        "spec": { "type": "NodePort", "selector": { "app": "x" }, "ports": [{ "port": base, "nodePort": base, "protocol": "UDP" }] }
    }))
    .unwrap();
    fx.services()
        .create(&PostParams::default(), &squatter)
        .await
        .unwrap();
    fx.create(&statefulset(
        "jvb",
        2,
        &[("service-per-pod/base-port", &base.to_string())],
    ))
    .await;
    let message = fx.wait_for_warning("jvb", "NodePortRefused").await;
    assert!(message.contains("already allocated"), "{message}");
    // The set's other Service is not held up by the refused one.
    eventually("Service jvb-1", 10 * SECOND, || async {
        fx.services().get_opt("jvb-1").await.ok().flatten()
    })
    .await;
    assert_eq!(
        fx.controller.metric("service_per_pod_refused_node_ports").await,
        1.0
    );
    tokio::time::sleep(60 * SECOND).await;
    assert_eq!(
        fx.warnings("jvb", "NodePortRefused").await.len(),
        1,
        "one Event, not one per retry"
    );

    fx.services()
        .delete("squatter", &kube::api::DeleteParams::default())
        .await
        .unwrap();
    let released = Instant::now();
    eventually("Service jvb-0 on the released port", 35 * SECOND, || async {
        let service = fx.services().get_opt("jvb-0").await.ok()??;
        (ports(&service)[0].1 == Some(i32::from(base))).then_some(())
    })
    .await;
    let took = released.elapsed();
    println!("the released port was taken {took:?} after its release");
    assert!(took <= 30 * SECOND, "{took:?}");
    eventually("the refused-ports gauge back at 0", 10 * SECOND, || async {
        (fx.controller.metric("service_per_pod_refused_node_ports").await == 0.0).then_some(())
    })
    .await;
    fx.namespace.delete().await;
}
