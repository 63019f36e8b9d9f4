//! service-per-pod as the base manifests deploy it: a ClusterRole, watching every namespace, serving the
//! ports an administrator granted (`PORT_GRANTS`) and nothing else — and a tenant's pod that names
//! another namespace's StatefulSet as its owner gets nothing of it.
//!
//! A cluster-wide controller sees every test's StatefulSets, so this test holds the cluster alone
//! (`testbed::exclusive_cluster`).

// Test code: a failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::events::v1::Event;
use kube::api::{ListParams, PostParams};
use kube::{Api, ResourceExt};
use testbed::node_ports::BLOCK;
use testbed::service_per_pod::{Scope, Tweaks, install_rbac, ports, start_controller_with, statefulset};
use testbed::{Cluster, eventually};

#[tokio::test]
async fn the_cluster_wide_controller_serves_the_namespaces_granted_and_no_other() {
    testbed::exclusive_cluster();
    let cluster = Cluster::connect().await;
    let system = cluster.namespace("spp-system").await;
    let deployment = install_rbac(&system.name, Scope::Cluster);
    let apps = [
        cluster.namespace("spp-apps-a").await,
        cluster.namespace("spp-apps-b").await,
    ];
    let tenant = cluster.namespace("spp-tenant").await;
    let mut bases = Vec::new();
    let mut grants = Vec::new();
    for namespace in &apps {
        let base = namespace.node_port_block().await;
        bases.push(base);
        grants.push(format!("{}={base}-{}", namespace.name, base + BLOCK - 1));
    }
    let tweaks = Tweaks {
        env: vec![("PORT_GRANTS".to_owned(), grants.join(","))],
        via: None,
    };
    let controller =
        start_controller_with(&cluster, &system.name, &deployment, "service-per-pod-0", &tweaks).await;

    for (namespace, base) in apps.iter().zip(&bases) {
        let sets: Api<StatefulSet> = namespace.api();
        sets.create(
            &PostParams::default(),
            &statefulset("jvb", 2, &[("service-per-pod/base-port", &base.to_string())]),
        )
        .await
        .unwrap();
    }
    // A tenant without a grant asks for ports that are free — and gets none, and one Event.
    let tenant_sets: Api<StatefulSet> = tenant.api();
    let free = tenant.node_port_block().await;
    tenant_sets
        .create(
            &PostParams::default(),
            &statefulset("jvb", 2, &[("service-per-pod/base-port", &free.to_string())]),
        )
        .await
        .unwrap();
    for (namespace, base) in apps.iter().zip(bases.iter().map(|base| i32::from(*base))) {
        let services: Api<Service> = namespace.api();
        let found = eventually(
            &format!("two Services in {}", namespace.name),
            Duration::from_secs(15),
            || async {
                let list = services.list(&ListParams::default()).await.ok()?;
                (list.items.len() == 2).then_some(list.items)
            },
        )
        .await;
        let mut node_ports: Vec<(String, Option<i32>)> = found
            .iter()
            .map(|service| (service.name_any(), ports(service)[0].1))
            .collect();
        node_ports.sort();
        assert_eq!(
            node_ports,
            vec![
                ("jvb-0".to_owned(), Some(base)),
                ("jvb-1".to_owned(), Some(base + 1))
            ]
        );
    }
    let events: Api<Event> = tenant.api();
    let refusals = eventually(
        "the tenant's PortNotGranted Event",
        Duration::from_secs(15),
        || async {
            let list = events.list(&ListParams::default()).await.ok()?;
            let refusals: Vec<String> = list
                .items
                .into_iter()
                .filter(|e| e.reason.as_deref() == Some("PortNotGranted"))
                .filter_map(|e| e.note)
                .collect();
            (!refusals.is_empty()).then_some(refusals)
        },
    )
    .await;
    println!("{}", refusals[0]);
    assert!(refusals[0].contains("granted: nothing"), "{}", refusals[0]);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let tenant_services: Api<Service> = tenant.api();
    assert!(
        tenant_services
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
    assert_eq!(refusals.len(), 1);
    assert_eq!(controller.metric("service_per_pod_leader").await, 1.0);

    // A tenant forges a pod that names app A's StatefulSet (by UID) as its owner, under another base
    // port, kept alive by a finalizer: it gets no Service, moves no port, and is reported.
    let sets_a: Api<StatefulSet> = apps[0].api();
    let owner_uid = sets_a.get("jvb").await.unwrap().metadata.uid.unwrap();
    let services_a: Api<Service> = apps[0].api();
    let before: Vec<(String, Option<String>)> = services_a
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .map(|service| (service.name_any(), service.resource_version()))
        .collect();
    let forged: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {
            "name": "forged-1",
            "labels": { "statefulset.kubernetes.io/pod-name": "forged-1", "apps.kubernetes.io/pod-index": "1" },
            "annotations": { "service-per-pod/base-port": bases[1].to_string() },
            "finalizers": ["tenant.example/keep"],
            "ownerReferences": [{
                "apiVersion": "apps/v1", "kind": "StatefulSet", "name": "jvb", "uid": owner_uid, "controller": true,
            }],
        },
        "spec": { "containers": [{ "name": "c", "image": "registry.example/forged:1" }] },
    }))
    .unwrap();
    let tenant_pods: Api<Pod> = tenant.api();
    // (Relative: a cluster-wide controller also sees what earlier runs left behind.)
    let foreign_before = controller.metric("service_per_pod_foreign_owner_pods").await;
    tenant_pods.create(&PostParams::default(), &forged).await.unwrap();
    let reported = eventually(
        "the ForeignOwner Event on app A's StatefulSet",
        Duration::from_secs(15),
        || async {
            let events: Api<Event> = apps[0].api();
            let list = events.list(&ListParams::default()).await.ok()?;
            list.items
                .into_iter()
                .find(|e| e.reason.as_deref() == Some("ForeignOwner"))
                .and_then(|e| e.note)
        },
    )
    .await;
    assert!(
        reported.contains(&format!("{}/forged-1", tenant.name)),
        "{reported}"
    );
    assert_eq!(
        controller.metric("service_per_pod_foreign_owner_pods").await - foreign_before,
        1.0
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after: Vec<(String, Option<String>)> = services_a
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .map(|service| (service.name_any(), service.resource_version()))
        .collect();
    assert_eq!(after, before, "app A's Services untouched");
    assert!(
        tenant_services
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
    let release = serde_json::json!({ "metadata": { "finalizers": null } });
    tenant_pods
        .patch(
            "jvb-1",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(release),
        )
        .await
        .unwrap();
    drop(controller);
    for namespace in apps {
        namespace.delete().await;
    }
    tenant.delete().await;
    system.delete().await;
}
