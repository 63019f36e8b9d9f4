//! Abuse through service-per-pod: someone who may only edit StatefulSets in namespace A can neither take
//! a node port that belongs to namespace B, nor get a Service that selects pods of B.
//! A cluster-wide controller sees every test's StatefulSets, so this test holds the cluster alone.

// Test code: a failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{ListParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::json;
use testbed::node_ports::BLOCK;
use testbed::service_per_pod::{Scope, Tweaks, install_rbac, ports, start_controller_with, statefulset};
use testbed::{Cluster, eventually};

/// B's bridges hold a block of ports granted to B; an editor of A contests it.
#[tokio::test]
async fn an_editor_of_one_namespace_cannot_take_another_namespaces_port_or_pods() {
    testbed::exclusive_cluster();
    let cluster = Cluster::connect().await;
    let system = cluster.namespace("spp-abuse-system").await;
    let deployment = install_rbac(&system.name, Scope::Cluster);
    let (a, b) = (
        cluster.namespace("spp-abuse-a").await,
        cluster.namespace("spp-abuse-b").await,
    );
    let (a_block, b_block) = (a.node_port_block().await, b.node_port_block().await);
    let tweaks = Tweaks {
        env: vec![(
            "PORT_GRANTS".to_owned(),
            format!(
                "{}={a_block}-{},{}={b_block}-{}",
                a.name,
                a_block + BLOCK - 1,
                b.name,
                b_block + BLOCK - 1
            ),
        )],
        via: None,
    };
    let _controller =
        start_controller_with(&cluster, &system.name, &deployment, "service-per-pod-0", &tweaks).await;

    // B's bridges hold base and base + 1.
    let base = b_block;
    let base_text = base.to_string();
    let b_sets: Api<StatefulSet> = b.api();
    b_sets
        .create(
            &PostParams::default(),
            &statefulset("jvb", 2, &[("service-per-pod/base-port", &base_text)]),
        )
        .await
        .unwrap();
    let b_services: Api<Service> = b.api();
    eventually("B's two Services", Duration::from_secs(15), || async {
        (b_services.list(&ListParams::default()).await.ok()?.items.len() == 2).then_some(())
    })
    .await;

    // alice may edit StatefulSets in A, nothing else.
    let role: Role = serde_json::from_value(json!({
        "metadata": { "name": "statefulset-editor" },
        "rules": [{ "apiGroups": ["apps"], "resources": ["statefulsets"], "verbs": ["get", "list", "create", "update", "patch"] }]
    }))
    .unwrap();
    let binding: RoleBinding = serde_json::from_value(json!({
        "metadata": { "name": "alice-edits-statefulsets" },
        "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "statefulset-editor" },
        "subjects": [{ "kind": "User", "name": "alice", "apiGroup": "rbac.authorization.k8s.io" }]
    }))
    .unwrap();
    a.api::<Role>()
        .create(&PostParams::default(), &role)
        .await
        .unwrap();
    a.api::<RoleBinding>()
        .create(&PostParams::default(), &binding)
        .await
        .unwrap();
    let alice: Api<StatefulSet> = Api::namespaced(cluster.user("alice").await, &a.name);
    // She claims B's ports, and asks for Services selecting pods by a label B's pods carry.
    let attack = statefulset(
        "jvb",
        2,
        &[
            ("service-per-pod/base-port", &base_text),
            ("service-per-pod/label", "statefulset.kubernetes.io/pod-name"),
        ],
    );
    alice.create(&PostParams::default(), &attack).await.unwrap();

    let events: Api<Event> = a.api();
    eventually(
        "a PortNotGranted Warning in A",
        Duration::from_secs(15),
        || async {
            let list = events.list(&ListParams::default()).await.ok()?;
            list.items
                .iter()
                .any(|e| e.reason.as_deref() == Some("PortNotGranted"))
                .then_some(())
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let a_services: Api<Service> = a.api();
    assert!(
        a_services
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty(),
        "A got no Service for B's ports"
    );
    for service in b_services.list(&ListParams::default()).await.unwrap().items {
        let owner = &service.owner_references()[0];
        assert_eq!(owner.name, "jvb");
        assert_eq!(
            service.namespace().as_deref(),
            Some(b.name.as_str()),
            "B keeps its Services"
        );
        let base = i32::from(base);
        assert!(ports(&service)[0].1.is_some_and(|p| p == base || p == base + 1));
    }

    // A Service only ever selects pods of its own namespace: with free ports, A gets Services in A.
    let free_base = a_block;
    let free =
        json!({ "metadata": { "annotations": { "service-per-pod/base-port": free_base.to_string() } } });
    alice
        .patch(
            "jvb",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(free),
        )
        .await
        .unwrap();
    let mine = eventually("A's own Services", Duration::from_secs(15), || async {
        let list = a_services.list(&ListParams::default()).await.ok()?;
        (list.items.len() == 2).then_some(list.items)
    })
    .await;
    for service in mine {
        assert_eq!(
            service.namespace().as_deref(),
            Some(a.name.as_str()),
            "Services live, and select, in A only"
        );
    }
    a.delete().await;
    b.delete().await;
    system.delete().await;
}
