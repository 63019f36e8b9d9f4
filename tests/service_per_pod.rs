//! service-per-pod on the real local control plane, running as a process under its own ServiceAccount
//! and the RBAC from `manifests/` (namespaced variant; the cluster-wide one has its own test file).
//!
//! Tests run in parallel against one API server, and node ports are cluster-wide: every test takes its
//! own block of ports from the harness (`TestNamespace::node_port_block`), so no two tests ever contend
//! for one.

// Test code: a failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::json;
use testbed::eventually;
use testbed::service_per_pod::{
    Fixture, ports, service_writes, start_controller, statefulset, statefulset_annotating_pods,
};

const SECOND: Duration = Duration::from_secs(1);

fn resource_versions(services: &BTreeMap<String, Service>) -> BTreeMap<String, String> {
    services
        .iter()
        .map(|(name, s)| (name.clone(), s.resource_version().unwrap_or_default()))
        .collect()
}

#[tokio::test]
async fn every_pod_gets_a_service_as_the_contract_says() {
    let fx = Fixture::start("spp-contract").await;
    let base = i32::from(fx.namespace.node_port_block().await);
    let set = fx
        .create(&statefulset(
            "jvb",
            3,
            &[("service-per-pod/base-port", &*base.to_string())],
        ))
        .await;
    let services = fx
        .wait_for_services(&["jvb-0", "jvb-1", "jvb-2"], 10 * SECOND)
        .await;
    for (ordinal, name) in ["jvb-0", "jvb-1", "jvb-2"].iter().enumerate() {
        let service = &services[*name];
        let port = base + ordinal as i32;
        let spec = service.spec.as_ref().unwrap();
        assert_eq!(spec.type_.as_deref(), Some("NodePort"));
        assert_eq!(spec.external_traffic_policy.as_deref(), Some("Local"));
        assert_eq!(spec.publish_not_ready_addresses, Some(true));
        assert_eq!(
            spec.selector.clone().unwrap(),
            BTreeMap::from([(
                "statefulset.kubernetes.io/pod-name".to_owned(),
                (*name).to_owned()
            )])
        );
        assert_eq!(
            ports(service),
            vec![(
                port,
                Some(port),
                Some(port.to_string()),
                Some("UDP".into()),
                Some("udp".into())
            )]
        );
        let labels = service.labels();
        assert_eq!(
            labels.get("app.kubernetes.io/managed-by").map(String::as_str),
            Some("service-per-pod")
        );
        assert_eq!(
            labels.get("service-per-pod/statefulset").map(String::as_str),
            Some("jvb")
        );
        let owner = &service.owner_references()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.name.as_str(), owner.controller),
            ("StatefulSet", "jvb", Some(true))
        );
        assert_eq!(Some(owner.uid.clone()), set.uid());
        let managers: Vec<(String, String)> = service
            .managed_fields()
            .iter()
            .filter(|entry| entry.fields_v1.is_some())
            .map(|entry| {
                (
                    entry.manager.clone().unwrap_or_default(),
                    entry.operation.clone().unwrap_or_default(),
                )
            })
            .collect();
        assert!(
            managers.iter().all(|(manager, _)| manager == "service-per-pod"),
            "written by service-per-pod alone: {managers:?}"
        );
    }
    // Once its pod exists, the pod is the Service's second owner (not its controller).
    let pods: Api<Pod> = fx.namespace.api();
    for name in ["jvb-0", "jvb-1", "jvb-2"] {
        let pod_uid = eventually(&format!("pod {name}"), 30 * SECOND, || async {
            pods.get_opt(name).await.ok()??.uid()
        })
        .await;
        eventually(&format!("pod {name} owning its Service"), 10 * SECOND, || async {
            let service = fx.services().get_opt(name).await.ok()??;
            service
                .owner_references()
                .iter()
                .any(|owner| owner.kind == "Pod" && owner.uid == pod_uid && owner.controller == Some(false))
                .then_some(())
        })
        .await;
    }
    fx.namespace.delete().await;
}

#[tokio::test]
async fn protocols_and_selector_label_come_from_the_annotations() {
    let fx = Fixture::start("spp-options").await;
    let base = i32::from(fx.namespace.node_port_block().await);
    let annotations = [
        ("service-per-pod/base-port", &*base.to_string()),
        ("service-per-pod/protocols", "TCP,UDP"),
        ("service-per-pod-label", "jvb-pod"),
    ];
    fx.create(&statefulset("jvb", 1, &annotations)).await;
    let services = fx.wait_for_services(&["jvb-0"], 10 * SECOND).await;
    let mut found = ports(&services["jvb-0"]);
    found.sort();
    assert_eq!(
        found,
        vec![
            (
                base,
                Some(base),
                Some(base.to_string()),
                Some("TCP".into()),
                Some("tcp".into())
            ),
            (
                base,
                Some(base),
                Some(base.to_string()),
                Some("UDP".into()),
                Some("udp".into())
            ),
        ]
    );
    let selector = services["jvb-0"].spec.as_ref().unwrap().selector.clone().unwrap();
    assert_eq!(
        selector,
        BTreeMap::from([
            ("jvb-pod".to_owned(), "jvb-0".to_owned()),
            (
                "statefulset.kubernetes.io/pod-name".to_owned(),
                "jvb-0".to_owned()
            )
        ]),
        "the legacy label annotation narrows the pod name, never replaces it"
    );

    // The new annotation wins over the legacy one.
    let new_label =
        json!({ "metadata": { "annotations": { "service-per-pod/label": "example.com/bridge" } } });
    fx.sets()
        .patch("jvb", &PatchParams::default(), &Patch::Merge(new_label))
        .await
        .unwrap();
    eventually(
        "the selector to follow service-per-pod/label",
        10 * SECOND,
        || async {
            let service = fx.services().get("jvb-0").await.ok()?;
            let selector = service.spec?.selector?;
            let wanted = BTreeMap::from([
                ("example.com/bridge".to_owned(), "jvb-0".to_owned()),
                (
                    "statefulset.kubernetes.io/pod-name".to_owned(),
                    "jvb-0".to_owned(),
                ),
            ]);
            (selector == wanted).then_some(())
        },
    )
    .await;
    fx.namespace.delete().await;
}

/// The heart of it: scaling down never cuts a draining bridge's port.
#[tokio::test]
async fn a_terminating_pod_keeps_its_service_until_it_is_gone() {
    let fx = Fixture::start("spp-drain").await;
    let base = i32::from(fx.namespace.node_port_block().await);
    fx.create(&statefulset(
        "jvb",
        3,
        &[("service-per-pod/base-port", &*base.to_string())],
    ))
    .await;
    fx.wait_for_services(&["jvb-0", "jvb-1", "jvb-2"], 10 * SECOND)
        .await;
    let pods: Api<Pod> = fx.namespace.api();
    eventually("pod jvb-2 to exist", 30 * SECOND, || async {
        pods.get_opt("jvb-2").await.ok().flatten()
    })
    .await;
    // Hold pod 2 Terminating, as a bridge with calls in its preStop drain would be.
    fx.hold_terminating("jvb-2").await;

    fx.scale("jvb", 1).await;
    eventually("pod jvb-1 gone and jvb-2 Terminating", 30 * SECOND, || async {
        let gone = pods.get_opt("jvb-1").await.ok()?.is_none();
        let terminating = pods
            .get_opt("jvb-2")
            .await
            .ok()??
            .metadata
            .deletion_timestamp
            .is_some();
        (gone && terminating).then_some(())
    })
    .await;
    fx.wait_for_services(&["jvb-0", "jvb-2"], 10 * SECOND).await;
    // And it stays that way while the pod drains.
    tokio::time::sleep(2 * SECOND).await;
    assert_eq!(
        fx.service_map().await.keys().cloned().collect::<Vec<_>>(),
        vec!["jvb-0", "jvb-2"]
    );
    // A scale-down's drain holds no ordinal the StatefulSet wants.
    held_ordinals_reach(&fx, 0.0).await;

    // The count goes up again during the drain: ordinal 2 is wanted and held until the pod is gone,
    // what the autoscaler's query asks one bridge more for; ordinal 1 comes back at once.
    fx.scale("jvb", 3).await;
    held_ordinals_reach(&fx, 1.0).await;
    fx.wait_for_services(&["jvb-0", "jvb-1", "jvb-2"], 10 * SECOND)
        .await;

    fx.release("jvb-2").await;
    held_ordinals_reach(&fx, 0.0).await;
    fx.scale("jvb", 1).await;
    fx.wait_for_services(&["jvb-0"], 30 * SECOND).await;
    fx.namespace.delete().await;
}

/// Waits until the controller reports `held` ordinals held by terminating pods for StatefulSet `jvb`.
async fn held_ordinals_reach(fx: &Fixture, held: f64) {
    let series = format!(
        "service_per_pod_ordinals_held_by_terminating_pods{{statefulset_namespace=\"{}\",statefulset=\"jvb\"}}",
        fx.namespace.name
    );
    eventually(&format!("{series} = {held}"), 30 * SECOND, || async {
        let metrics = fx.controller.metrics().await;
        let value = metrics
            .lines()
            .find_map(|line| line.strip_prefix(&format!("{series} ")))?
            .trim()
            .parse::<f64>()
            .ok()?;
        (value == held).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_deleted_or_edited_service_is_restored() {
    let fx = Fixture::start("spp-restore").await;
    let base = i32::from(fx.namespace.node_port_block().await);
    fx.create(&statefulset(
        "jvb",
        2,
        &[("service-per-pod/base-port", &*base.to_string())],
    ))
    .await;
    fx.wait_for_services(&["jvb-0", "jvb-1"], 10 * SECOND).await;

    let deleted = Instant::now();
    fx.services()
        .delete("jvb-1", &DeleteParams::default())
        .await
        .unwrap();
    // Usually within a tenth of a second; but the API server may refuse the node port it has just freed
    // for a moment ("provided port is already allocated"), and the controller then retries after 1 s, 2 s,
    // … (seen: 1.1 s, and once beyond 2 s). The time is printed; the test asks only that it comes back.
    eventually("the deleted Service back", 10 * SECOND, || async {
        let service = fx.services().get_opt("jvb-1").await.ok()??;
        (ports(&service)[0].1 == Some(base + 1)).then_some(())
    })
    .await;
    println!("deleted Service restored after {:?}", deleted.elapsed());

    let edited = Instant::now();
    let edit =
        json!({ "spec": { "externalTrafficPolicy": "Cluster", "selector": { "app": "someone-else" } } });
    fx.services()
        .patch("jvb-0", &PatchParams::default(), &Patch::Merge(edit))
        .await
        .unwrap();
    eventually("the edited Service restored", 2 * SECOND, || async {
        let spec = fx.services().get("jvb-0").await.ok()?.spec?;
        let selector = spec.selector?;
        (spec.external_traffic_policy.as_deref() == Some("Local")
            && selector
                == BTreeMap::from([(
                    "statefulset.kubernetes.io/pod-name".to_owned(),
                    "jvb-0".to_owned(),
                )]))
        .then_some(())
    })
    .await;
    println!("edited Service restored after {:?}", edited.elapsed());
    fx.namespace.delete().await;
}

#[tokio::test]
async fn removing_the_annotation_deletes_every_service() {
    let fx = Fixture::start("spp-optout").await;
    let base = i32::from(fx.namespace.node_port_block().await);
    fx.create(&statefulset(
        "jvb",
        2,
        &[("service-per-pod/base-port", &*base.to_string())],
    ))
    .await;
    fx.wait_for_services(&["jvb-0", "jvb-1"], 10 * SECOND).await;
    let opt_out = json!({ "metadata": { "annotations": { "service-per-pod/base-port": null } } });
    fx.sets()
        .patch("jvb", &PatchParams::default(), &Patch::Merge(opt_out))
        .await
        .unwrap();
    fx.wait_for_services(&[], 10 * SECOND).await;
    fx.namespace.delete().await;
}

#[tokio::test]
async fn deleting_the_statefulset_garbage_collects_its_services() {
    let fx = Fixture::start("spp-gc").await;
    let base = i32::from(fx.namespace.node_port_block().await);
    fx.create(&statefulset(
        "jvb",
        2,
        &[("service-per-pod/base-port", &*base.to_string())],
    ))
    .await;
    fx.wait_for_services(&["jvb-0", "jvb-1"], 10 * SECOND).await;
    // Stop the controller first: the garbage collector alone must remove the Services.
    let mut fx = fx;
    fx.controller.kill();
    fx.sets()
        .delete("jvb", &DeleteParams::background())
        .await
        .unwrap();
    fx.wait_for_services(&[], 30 * SECOND).await;
    fx.namespace.delete().await;
}

#[tokio::test]
async fn at_steady_state_the_controller_writes_nothing() {
    let fx = Fixture::start("spp-steady").await;
    let base = i32::from(fx.namespace.node_port_block().await);
    fx.create(&statefulset(
        "jvb",
        3,
        &[("service-per-pod/base-port", &*base.to_string())],
    ))
    .await;
    let converged = fx
        .wait_until_settled(&["jvb-0", "jvb-1", "jvb-2"], 30 * SECOND)
        .await;
    tokio::time::sleep(SECOND).await;
    let writes_before = service_writes(&fx.controller).await;
    let reconciles_before = fx.controller.metric("service_per_pod_reconciles_total").await;

    // Changes that trigger reconciles but change nothing the Services depend on.
    for round in 0..5 {
        let touch = json!({ "metadata": { "annotations": { "example.com/touched": round.to_string() } } });
        fx.sets()
            .patch("jvb", &PatchParams::default(), &Patch::Merge(touch))
            .await
            .unwrap();
        let pods: Api<Pod> = fx.namespace.api();
        let label = json!({ "metadata": { "labels": { "example.com/round": round.to_string() } } });
        let _ = pods
            .patch("jvb-0", &PatchParams::default(), &Patch::Merge(label))
            .await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    tokio::time::sleep(SECOND).await;

    let reconciles_after = fx.controller.metric("service_per_pod_reconciles_total").await;
    assert!(
        reconciles_after >= reconciles_before + 5.0,
        "the changes must have been reconciled"
    );
    assert_eq!(
        service_writes(&fx.controller).await,
        writes_before,
        "no Service writes at steady state"
    );
    assert_eq!(
        resource_versions(&fx.service_map().await),
        resource_versions(&converged),
        "no Service changed at steady state"
    );
    fx.namespace.delete().await;
}

#[tokio::test]
async fn a_bad_base_port_is_reported_once_and_clobbers_nothing() {
    let fx = Fixture::start("spp-badport").await;
    let base = i32::from(fx.namespace.node_port_block().await);
    fx.create(&statefulset(
        "jvb",
        2,
        &[("service-per-pod/base-port", &*base.to_string())],
    ))
    .await;
    // Settled: each Service also owned by its pod (an owner the controller adds once the pod exists).
    let before = fx.wait_until_settled(&["jvb-0", "jvb-1"], 30 * SECOND).await;

    let bad = json!({ "metadata": { "annotations": { "service-per-pod/base-port": "thirty" } } });
    fx.sets()
        .patch("jvb", &PatchParams::default(), &Patch::Merge(bad))
        .await
        .unwrap();
    let message = fx.wait_for_warning("jvb", "InvalidAnnotation").await;
    assert!(
        message.contains("service-per-pod/base-port") && message.contains("thirty"),
        "{message}"
    );
    // More reconciles of the same broken StatefulSet: no second Event, and nothing touched.
    fx.scale("jvb", 3).await;
    tokio::time::sleep(2 * SECOND).await;
    assert_eq!(
        fx.warnings("jvb", "InvalidAnnotation").await.len(),
        1,
        "reported once"
    );
    assert_eq!(
        resource_versions(&fx.service_map().await),
        resource_versions(&before),
        "nothing clobbered"
    );
    let log = fx.controller.log_text();
    assert_eq!(
        log.matches("not a port number").count(),
        1,
        "one log line:\n{log}"
    );
    fx.namespace.delete().await;
}

/// Ports 32766–32767 (the top of the range).
#[tokio::test]
async fn ordinals_outside_the_node_port_range_get_no_service() {
    let fx = Fixture::start("spp-range").await;
    // The top of the range, on purpose: this block, whoever else wants it.
    fx.namespace.reserve_node_ports(32760).await;
    fx.create(&statefulset("jvb", 3, &[("service-per-pod/base-port", "32766")]))
        .await;
    fx.wait_for_services(&["jvb-0", "jvb-1"], 10 * SECOND).await;
    let message = fx.wait_for_warning("jvb", "PortOutOfRange").await;
    assert!(
        message.starts_with("pod ordinal 2 gets no Service") && message.contains("30000-32767"),
        "{message}"
    );
    assert_eq!(fx.service_map().await.len(), 2);
    fx.namespace.delete().await;
}

#[tokio::test]
async fn the_first_claim_keeps_a_contested_port_until_it_lets_go() {
    let fx = Fixture::start("spp-conflict").await;
    let base = i32::from(fx.namespace.node_port_block().await);
    fx.create(&statefulset(
        "first",
        2,
        &[("service-per-pod/base-port", &*base.to_string())],
    ))
    .await;
    fx.wait_for_services(&["first-0", "first-1"], 10 * SECOND).await;
    // `second` wants base + 1 (held by first-1) and base + 2.
    fx.create(&statefulset(
        "second",
        2,
        &[("service-per-pod/base-port", &*(base + 1).to_string())],
    ))
    .await;
    fx.wait_for_services(&["first-0", "first-1", "second-1"], 10 * SECOND)
        .await;
    let message = fx.wait_for_warning("second", "PortConflict").await;
    assert!(
        message.contains(&(base + 1).to_string()) && message.contains("/first"),
        "{message}"
    );
    assert_eq!(fx.controller.metric("service_per_pod_port_conflicts").await, 1.0);
    let first_1 = fx.services().get("first-1").await.unwrap();
    assert_eq!(
        ports(&first_1)[0].1,
        Some(base + 1),
        "the first claim keeps its port"
    );

    // The conflict goes away: `second` gets the port without a restart of the controller.
    fx.scale("first", 1).await;
    let services = fx
        .wait_for_services(&["first-0", "second-0", "second-1"], 20 * SECOND)
        .await;
    assert_eq!(ports(&services["second-0"])[0].1, Some(base + 1));
    eventually("the conflict gauge back to 0", 10 * SECOND, || async {
        (fx.controller.metric("service_per_pod_port_conflicts").await == 0.0).then_some(())
    })
    .await;

    // A StatefulSet deleted while it loses a port takes its conflict with it.
    fx.create(&statefulset(
        "third",
        1,
        &[("service-per-pod/base-port", &*(base + 1).to_string())],
    ))
    .await;
    eventually("third to lose its contested port", 10 * SECOND, || async {
        (fx.controller.metric("service_per_pod_port_conflicts").await == 1.0).then_some(())
    })
    .await;
    fx.sets()
        .delete("third", &DeleteParams::background())
        .await
        .unwrap();
    fx.scale("second", 3).await;
    eventually(
        "the deleted StatefulSet's conflict forgotten",
        10 * SECOND,
        || async { (fx.controller.metric("service_per_pod_port_conflicts").await == 0.0).then_some(()) },
    )
    .await;
    fx.namespace.delete().await;
}

#[tokio::test]
async fn a_foreign_service_of_the_wanted_name_is_left_untouched() {
    let fx = Fixture::start("spp-foreign").await;
    let base = i32::from(fx.namespace.node_port_block().await);
    let foreign = fx.create_foreign_service("jvb-0").await;
    fx.create(&statefulset(
        "jvb",
        1,
        &[("service-per-pod/base-port", &*base.to_string())],
    ))
    .await;
    let message = fx.wait_for_warning("jvb", "ForeignService").await;
    assert!(
        message.contains("jvb-0") && message.contains("left untouched"),
        "{message}"
    );
    tokio::time::sleep(SECOND).await;
    let after = fx.services().get("jvb-0").await.unwrap();
    assert_eq!(
        after.resource_version(),
        foreign.resource_version(),
        "the foreign Service is untouched"
    );
    fx.namespace.delete().await;
}

#[tokio::test]
async fn a_node_port_taken_by_another_service_is_reported_and_retried() {
    let fx = Fixture::start("spp-taken").await;
    let base = i32::from(fx.namespace.node_port_block().await);
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
        1,
        &[("service-per-pod/base-port", &*base.to_string())],
    ))
    .await;
    let message = fx.wait_for_warning("jvb", "NodePortRefused").await;
    assert!(
        message.contains(&base.to_string()) && message.contains("already allocated"),
        "the apiserver's message: {message}"
    );

    fx.services()
        .delete("squatter", &DeleteParams::default())
        .await
        .unwrap();
    let services = fx.wait_for_services(&["jvb-0"], 30 * SECOND).await;
    assert_eq!(ports(&services["jvb-0"])[0].1, Some(base));
    fx.namespace.delete().await;
}

#[tokio::test]
async fn a_standby_takes_over_within_15_seconds_of_the_leader_dying() {
    let mut fx = Fixture::start("spp-leader").await;
    let base = i32::from(fx.namespace.node_port_block().await);
    let mut standby = start_controller(
        &fx.cluster,
        &fx.namespace.name,
        &fx.deployment,
        "service-per-pod-1",
    )
    .await;
    fx.create(&statefulset(
        "jvb",
        1,
        &[("service-per-pod/base-port", &*base.to_string())],
    ))
    .await;
    fx.wait_for_services(&["jvb-0"], 10 * SECOND).await;

    let leases: Api<Lease> = fx.namespace.api();
    let holder = eventually("a Lease holder", 15 * SECOND, || async {
        leases
            .get_opt("service-per-pod")
            .await
            .ok()??
            .spec?
            .holder_identity
    })
    .await;
    assert_eq!(
        fx.controller.metric("service_per_pod_leader").await + standby.metric("service_per_pod_leader").await,
        1.0
    );
    let leader_is_first = holder == "service-per-pod-0";
    if leader_is_first {
        fx.controller.kill()
    } else {
        standby.kill()
    }
    let killed = Instant::now();
    fx.scale("jvb", 3).await;
    eventually("the standby to create the new Services", 15 * SECOND, || async {
        let names: Vec<String> = fx.service_map().await.into_keys().collect();
        (names == ["jvb-0", "jvb-1", "jvb-2"]).then_some(())
    })
    .await;
    println!(
        "standby reconciled the change {:?} after the leader was killed",
        killed.elapsed()
    );
    let survivor = if leader_is_first { &standby } else { &fx.controller };
    assert_eq!(survivor.metric("service_per_pod_leader").await, 1.0);
    drop(standby);
    fx.namespace.delete().await;
}

#[tokio::test]
async fn a_restarted_controller_with_nothing_changed_writes_nothing() {
    let mut fx = Fixture::start("spp-restart").await;
    let base = i32::from(fx.namespace.node_port_block().await);
    fx.create(&statefulset(
        "jvb",
        2,
        &[("service-per-pod/base-port", &*base.to_string())],
    ))
    .await;
    let converged = fx.wait_until_settled(&["jvb-0", "jvb-1"], 30 * SECOND).await;
    fx.controller.kill();
    fx.controller = start_controller(
        &fx.cluster,
        &fx.namespace.name,
        &fx.deployment,
        "service-per-pod-0",
    )
    .await;
    eventually("the new controller to lead", 15 * SECOND, || async {
        (fx.controller.metric("service_per_pod_leader").await == 1.0).then_some(())
    })
    .await;
    eventually("the new controller to reconcile", 10 * SECOND, || async {
        (fx.controller.metric("service_per_pod_reconciles_total").await >= 1.0).then_some(())
    })
    .await;
    tokio::time::sleep(2 * SECOND).await;
    assert_eq!(
        service_writes(&fx.controller).await,
        0.0,
        "a fresh controller finds everything in place"
    );
    assert_eq!(
        resource_versions(&fx.service_map().await),
        resource_versions(&converged)
    );
    fx.namespace.delete().await;
}

/// A StatefulSet deleted while a bridge still drains: the bridge's Service is kept by its pod (the
/// Service's second owner) until the pod is gone, whether or not the controller runs.
#[tokio::test]
async fn deleting_the_statefulset_keeps_a_draining_pods_service_until_the_pod_is_gone() {
    let mut fx = Fixture::start("spp-orphan").await;
    let base = i32::from(fx.namespace.node_port_block().await);
    fx.create(&statefulset(
        "jvb",
        3,
        &[("service-per-pod/base-port", &*base.to_string())],
    ))
    .await;
    let pods: Api<Pod> = fx.namespace.api();
    let pod_uid = eventually("pod jvb-2", 30 * SECOND, || async {
        pods.get_opt("jvb-2").await.ok()??.uid()
    })
    .await;
    fx.hold_terminating("jvb-2").await;
    eventually("every Service owned by its pod", 15 * SECOND, || async {
        let services = fx.try_service_map().await?;
        (services.len() == 3
            && services
                .values()
                .all(|service| service.owner_references().iter().any(|owner| owner.kind == "Pod")))
        .then_some(())
    })
    .await;
    // The controller is down while it happens: nothing but the owner references keeps the Service.
    fx.controller.kill();
    fx.sets()
        .delete("jvb", &DeleteParams::background())
        .await
        .unwrap();
    eventually("pods 0 and 1 gone, pod 2 Terminating", 30 * SECOND, || async {
        let left: Vec<Pod> = pods.list(&Default::default()).await.ok()?.items;
        (left.len() == 1 && left[0].name_any() == "jvb-2" && left[0].metadata.deletion_timestamp.is_some())
            .then_some(())
    })
    .await;
    fx.wait_for_services(&["jvb-2"], 60 * SECOND).await;
    tokio::time::sleep(3 * SECOND).await;
    let service = fx.services().get("jvb-2").await.unwrap();
    assert!(
        service
            .owner_references()
            .iter()
            .any(|owner| owner.uid == pod_uid)
    );
    assert_eq!(
        ports(&service)[0].1,
        Some(base + 2),
        "the draining bridge keeps its port"
    );

    fx.release("jvb-2").await;
    fx.wait_for_services(&[], 60 * SECOND).await;
    fx.namespace.delete().await;
}

/// A new base port applies to new pods; running bridges keep the port they listen on.
#[tokio::test]
async fn a_changed_base_port_moves_only_pods_created_after_it() {
    let fx = Fixture::start("spp-rebase").await;
    let (old, new) = (
        fx.namespace.node_port_block().await,
        fx.namespace.node_port_block().await,
    );
    let mut set = statefulset_annotating_pods("jvb", 2, &[("service-per-pod/base-port", &old.to_string())]);
    // Pods are replaced only when deleted, so the old ones stay as they are.
    set.spec.as_mut().unwrap().update_strategy =
        serde_json::from_value(json!({ "type": "OnDelete" })).unwrap();
    fx.create(&set).await;
    let pods: Api<Pod> = fx.namespace.api();
    eventually("pods jvb-0 and jvb-1", 30 * SECOND, || async {
        (pods.list(&Default::default()).await.ok()?.items.len() == 2).then_some(())
    })
    .await;
    fx.wait_for_services(&["jvb-0", "jvb-1"], 10 * SECOND).await;

    let rebase = json!({
        "metadata": { "annotations": { "service-per-pod/base-port": new.to_string() } },
        "spec": { "replicas": 3, "template": { "metadata": { "annotations": { "service-per-pod/base-port": new.to_string() } } } }
    });
    fx.sets()
        .patch("jvb", &PatchParams::default(), &Patch::Merge(rebase))
        .await
        .unwrap();
    let message = fx.wait_for_warning("jvb", "BasePortChanged").await;
    assert!(message.contains("pod ordinals 0–1 keep"), "{message}");
    let node_port = |services: &BTreeMap<String, Service>, name: &str| ports(&services[name])[0].1;
    let services = fx
        .wait_for_services(&["jvb-0", "jvb-1", "jvb-2"], 30 * SECOND)
        .await;
    assert_eq!(
        node_port(&services, "jvb-0"),
        Some(i32::from(old)),
        "a running bridge keeps its port"
    );
    assert_eq!(node_port(&services, "jvb-1"), Some(i32::from(old) + 1));
    assert_eq!(
        node_port(&services, "jvb-2"),
        Some(i32::from(new) + 2),
        "a new pod gets the new base"
    );

    // Replacing a pod moves its Service.
    pods.delete("jvb-0", &DeleteParams::default()).await.unwrap();
    eventually("jvb-0 on the new base", 30 * SECOND, || async {
        let service = fx.services().get_opt("jvb-0").await.ok()??;
        (ports(&service)[0].1 == Some(i32::from(new))).then_some(())
    })
    .await;
    fx.namespace.delete().await;
}
