//! service-per-pod as the base manifests deploy it: a ClusterRole, watching every namespace.
//!
//! Its own test binary on purpose: test binaries run one after another, so this cluster-wide
//! controller never meets the namespaced ones of `service_per_pod.rs`.

// Test code: a failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Service;
use kube::api::{ListParams, PostParams};
use kube::{Api, ResourceExt};
use testbed::service_per_pod::{Scope, install_rbac, ports, start_controller, statefulset};
use testbed::{Cluster, eventually};

#[tokio::test]
async fn the_cluster_wide_controller_serves_statefulsets_in_every_namespace() {
    let cluster = Cluster::connect().await;
    let system = cluster.namespace("spp-system").await;
    let deployment = install_rbac(&system.name, Scope::Cluster);
    let controller = start_controller(&cluster, &system.name, &deployment, "service-per-pod-0").await;

    let apps = [
        cluster.namespace("spp-apps-a").await,
        cluster.namespace("spp-apps-b").await,
    ];
    let mut bases = Vec::new();
    for namespace in &apps {
        let base = namespace.node_port_block().await;
        bases.push(i32::from(base));
        let sets: Api<StatefulSet> = namespace.api();
        sets.create(
            &PostParams::default(),
            &statefulset("jvb", 2, &[("service-per-pod/base-port", &base.to_string())]),
        )
        .await
        .unwrap();
    }
    for (namespace, base) in apps.iter().zip(bases) {
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
    assert_eq!(controller.metric("service_per_pod_leader").await, 1.0);
    drop(controller);
    for namespace in apps {
        namespace.delete().await;
    }
    system.delete().await;
}
