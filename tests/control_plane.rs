//! Proof that the local control plane is a real one: the StatefulSet controller, the scheduler, KWOK's
//! fake kubelets, garbage collection, RBAC and server-side apply all behave as in a real cluster.

// Test code: a failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod, Service};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::json;
use testbed::service_per_pod::statefulset;
use testbed::{Cluster, eventually};

fn is_running_and_ready(pod: &Pod) -> bool {
    let status = pod.status.as_ref();
    status.and_then(|s| s.phase.as_deref()) == Some("Running")
        && status
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|conditions| {
                conditions
                    .iter()
                    .any(|c| c.type_ == "Ready" && c.status == "True")
            })
}

async fn pod_names(pods: &Api<Pod>, selector: &str) -> BTreeSet<String> {
    let list = pods
        .list(&ListParams::default().labels(selector))
        .await
        .expect("listing pods");
    list.items.iter().map(|pod| pod.name_any()).collect()
}

#[tokio::test]
async fn fake_nodes_are_ready_in_at_least_two_zones() {
    let cluster = Cluster::connect().await;
    let nodes = Api::<Node>::all(cluster.admin())
        .list(&ListParams::default().labels("type=kwok"))
        .await
        .unwrap();
    let ready: Vec<&Node> = nodes
        .items
        .iter()
        .filter(|node| {
            node.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|conditions| {
                    conditions
                        .iter()
                        .any(|c| c.type_ == "Ready" && c.status == "True")
                })
        })
        .collect();
    assert!(
        ready.len() >= 3,
        "expected at least 3 Ready KWOK nodes, got {}",
        ready.len()
    );
    let zones: BTreeSet<&str> = ready
        .iter()
        .filter_map(|node| {
            node.labels()
                .get("topology.kubernetes.io/zone")
                .map(String::as_str)
        })
        .collect();
    assert!(zones.len() >= 2, "expected at least two zones, got {zones:?}");
}

#[tokio::test]
async fn statefulset_pods_run_scale_down_and_are_garbage_collected() {
    let cluster = Cluster::connect().await;
    let namespace = cluster.namespace("sts").await;
    let sets: Api<StatefulSet> = namespace.api();
    let pods: Api<Pod> = namespace.api();
    sets.create(&PostParams::default(), &statefulset("web", 3, &[]))
        .await
        .unwrap();

    let running = eventually(
        "3 pods Running and Ready on KWOK nodes",
        Duration::from_secs(60),
        || async {
            let list = pods.list(&ListParams::default().labels("app=web")).await.ok()?;
            let ready: Vec<Pod> = list.items.into_iter().filter(is_running_and_ready).collect();
            (ready.len() == 3).then_some(ready)
        },
    )
    .await;
    for pod in &running {
        let node = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.as_deref())
            .unwrap_or_default();
        assert!(
            node.starts_with("kwok-node-"),
            "{} runs on {node:?}",
            pod.name_any()
        );
    }

    sets.patch(
        "web",
        &PatchParams::default(),
        &Patch::Merge(json!({ "spec": { "replicas": 1 } })),
    )
    .await
    .unwrap();
    eventually(
        "pods web-2 and web-1 gone, web-0 kept",
        Duration::from_secs(60),
        || async {
            (pod_names(&pods, "app=web").await == BTreeSet::from(["web-0".to_owned()])).then_some(())
        },
    )
    .await;
    assert!(
        is_running_and_ready(&pods.get("web-0").await.unwrap()),
        "web-0 must stay Running and Ready"
    );

    sets.delete("web", &DeleteParams::default()).await.unwrap();
    eventually(
        "web-0 garbage-collected with its StatefulSet",
        Duration::from_secs(60),
        || async { pod_names(&pods, "app=web").await.is_empty().then_some(()) },
    )
    .await;
    namespace.delete().await;
}

#[tokio::test]
async fn service_account_needs_a_role_binding_to_list_services() {
    let cluster = Cluster::connect().await;
    let namespace = cluster.namespace("rbac").await;
    let as_reader: Api<Service> = Api::namespaced(
        cluster.service_account_client(&namespace.name, "reader").await,
        &namespace.name,
    );

    match as_reader.list(&ListParams::default()).await {
        Err(kube::Error::Api(status)) if status.code == 403 => {}
        other => panic!("expected 403 Forbidden without a RoleBinding, got {other:?}"),
    }
    let as_alice: Api<Service> = Api::namespaced(cluster.user("alice").await, &namespace.name);
    match as_alice.list(&ListParams::default()).await {
        Err(kube::Error::Api(status)) if status.code == 403 => {}
        other => panic!("expected 403 Forbidden for a token-file user without rights, got {other:?}"),
    }

    let role: Role = serde_json::from_value(json!({
        "metadata": { "name": "service-reader" },
        "rules": [{ "apiGroups": [""], "resources": ["services"], "verbs": ["list"] }]
    }))
    .unwrap();
    let binding: RoleBinding = serde_json::from_value(json!({
        "metadata": { "name": "service-reader" },
        "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "service-reader" },
        "subjects": [{ "kind": "ServiceAccount", "name": "reader", "namespace": namespace.name }]
    }))
    .unwrap();
    namespace
        .api::<Role>()
        .create(&PostParams::default(), &role)
        .await
        .unwrap();
    namespace
        .api::<RoleBinding>()
        .create(&PostParams::default(), &binding)
        .await
        .unwrap();

    eventually(
        "listing Services allowed by the Role",
        Duration::from_secs(10),
        || async { as_reader.list(&ListParams::default()).await.ok() },
    )
    .await;
    match as_alice.list(&ListParams::default()).await {
        Err(kube::Error::Api(status)) if status.code == 403 => {}
        other => panic!("the binding is for the ServiceAccount only; alice got {other:?}"),
    }
    namespace.delete().await;
}

#[tokio::test]
async fn server_side_apply_of_the_same_object_is_a_no_op() {
    let cluster = Cluster::connect().await;
    let namespace = cluster.namespace("ssa").await;
    let maps: Api<ConfigMap> = namespace.api();
    let params = PatchParams::apply("integration-tests");
    let object = |value: &str| json!({ "apiVersion": "v1", "kind": "ConfigMap", "metadata": { "name": "settings" }, "data": { "key": value } });

    let first = maps
        .patch("settings", &params, &Patch::Apply(object("one")))
        .await
        .unwrap();
    let again = maps
        .patch("settings", &params, &Patch::Apply(object("one")))
        .await
        .unwrap();
    assert_eq!(
        first.resource_version(),
        again.resource_version(),
        "re-applying the same object must write nothing"
    );

    let changed = maps
        .patch("settings", &params, &Patch::Apply(object("two")))
        .await
        .unwrap();
    assert_ne!(
        again.resource_version(),
        changed.resource_version(),
        "a real change must be written"
    );
    namespace.delete().await;
}

#[tokio::test]
async fn a_pod_with_a_finalizer_stays_terminating_until_the_finalizer_is_removed() {
    let cluster = Cluster::connect().await;
    let namespace = cluster.namespace("finalizer").await;
    let pods: Api<Pod> = namespace.api();
    let pod: Pod = serde_json::from_value(json!({
        "metadata": { "name": "held", "finalizers": ["jitsi-k8s.test/hold"] },
        "spec": { "containers": [{ "name": "main", "image": "registry.invalid/placeholder:1" }] }
    }))
    .unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();
    eventually("the pod Running and Ready", Duration::from_secs(30), || async {
        pods.get("held").await.ok().filter(is_running_and_ready)
    })
    .await;

    pods.delete("held", &DeleteParams::default()).await.unwrap();
    // Long enough for KWOK (no artificial delays) to have deleted a pod without finalizers many times over.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let terminating = pods
        .get("held")
        .await
        .expect("the pod must still exist while its finalizer is set");
    assert!(
        terminating.metadata.deletion_timestamp.is_some(),
        "the pod must be Terminating"
    );

    pods.patch(
        "held",
        &PatchParams::default(),
        &Patch::Merge(json!({ "metadata": { "finalizers": null } })),
    )
    .await
    .unwrap();
    eventually(
        "the pod gone once its finalizer is removed",
        Duration::from_secs(30),
        || async { pods.get_opt("held").await.ok().flatten().is_none().then_some(()) },
    )
    .await;
    namespace.delete().await;
}
