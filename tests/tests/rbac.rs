//! RBAC proof on the real API server: for each ServiceAccount our manifests create, what
//! `kubectl auth can-i --list` reports equals the rules the manifests document — any extra verb fails.
//! (Only the self-review rights every authenticated user has are set aside.)

// Test code: a failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

use integration_tests::manifests::{self, kind};
use integration_tests::service_per_pod::{BASE, NAMESPACED, Scope, install_rbac};
use integration_tests::{Cluster, TestNamespace};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::PostParams;
use serde_json::{Value, json};

type Rights = BTreeMap<String, BTreeSet<String>>;

/// Granted to every authenticated user by the API server's bootstrap policy.
const EVERYONE: [&str; 3] = [
    "selfsubjectreviews.authentication.k8s.io",
    "selfsubjectaccessreviews.authorization.k8s.io",
    "selfsubjectrulesreviews.authorization.k8s.io",
];

/// Resource rights in `namespace` of the ServiceAccount `home`/`account`, as the API server reports them.
fn can_i(namespace: &str, home: &str, account: &str) -> Rights {
    let output = Command::new("kubectl")
        .args(["auth", "can-i", "--list", "--namespace", namespace])
        .arg(format!("--as=system:serviceaccount:{home}:{account}"))
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let mut rights = Rights::new();
    for line in text.lines().skip(1) {
        let resource = line.split_whitespace().next().unwrap_or_default();
        if resource.is_empty() || resource.starts_with('[') || EVERYONE.contains(&resource) {
            continue; // non-resource URLs, or what everyone may do
        }
        let verbs = line
            .rsplit_once('[')
            .map(|(_, v)| v.trim_end_matches(']'))
            .unwrap_or_default();
        rights
            .entry(resource.to_owned())
            .or_default()
            .extend(verbs.split_whitespace().map(str::to_owned));
    }
    rights
}

/// The rights the rules of rendered Roles/ClusterRoles grant.
fn documented(roles: &[&Value]) -> Rights {
    let mut rights = Rights::new();
    for role in roles {
        for rule in role["rules"].as_array().unwrap() {
            for group in rule["apiGroups"].as_array().unwrap() {
                for resource in rule["resources"].as_array().unwrap() {
                    let (group, resource) = (group.as_str().unwrap(), resource.as_str().unwrap());
                    let key = if group.is_empty() {
                        resource.to_owned()
                    } else {
                        format!("{resource}.{group}")
                    };
                    let verbs = rule["verbs"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|v| v.as_str().unwrap().to_owned());
                    rights.entry(key).or_default().extend(verbs);
                }
            }
        }
    }
    rights
}

fn role<'a>(objects: &'a [Value], kind_name: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| kind(o) == kind_name && o["metadata"]["name"] == name)
        .unwrap()
}

#[tokio::test]
async fn service_per_pod_namespaced_has_exactly_its_documented_rights() {
    let cluster = Cluster::connect().await;
    let namespace = cluster.namespace("rbac-spp").await;
    install_rbac(&namespace.name, Scope::Namespace);
    let objects = manifests::render(&namespace.name, &[BASE], &[NAMESPACED]);
    let expected = documented(&[
        role(&objects, "Role", "service-per-pod"),
        role(&objects, "Role", "service-per-pod-leader-election"),
    ]);
    assert_eq!(
        can_i(&namespace.name, &namespace.name, "service-per-pod"),
        expected
    );
    // And nothing at all in another namespace.
    let elsewhere = cluster.namespace("rbac-spp-other").await;
    assert_eq!(
        can_i(&elsewhere.name, &namespace.name, "service-per-pod"),
        Rights::new(),
        "a namespaced controller reaches nowhere else"
    );
    elsewhere.delete().await;
    namespace.delete().await;
}

#[tokio::test]
async fn service_per_pod_cluster_wide_has_exactly_its_documented_rights() {
    let cluster = Cluster::connect().await;
    let namespace = cluster.namespace("rbac-spp-cluster").await;
    install_rbac(&namespace.name, Scope::Cluster);
    let objects = manifests::render(&namespace.name, &[BASE], &[]);
    let cluster_role = role(&objects, "ClusterRole", "service-per-pod");
    let lease_role = role(&objects, "Role", "service-per-pod-leader-election");
    assert_eq!(
        can_i(&namespace.name, &namespace.name, "service-per-pod"),
        documented(&[cluster_role, lease_role])
    );
    let elsewhere = cluster.namespace("rbac-spp-cluster-other").await;
    assert_eq!(
        can_i(&elsewhere.name, &namespace.name, "service-per-pod"),
        documented(&[cluster_role]),
        "leases only at home"
    );
    elsewhere.delete().await;
    namespace.delete().await;
}

#[tokio::test]
async fn the_jvb_may_only_read_nodes() {
    let cluster = Cluster::connect().await;
    let namespace: TestNamespace = cluster.namespace("rbac-jvb").await;
    let accounts: kube::Api<ServiceAccount> = namespace.api();
    accounts
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({ "metadata": { "name": "jvb" } })).unwrap(),
        )
        .await
        .unwrap();
    let mut objects = manifests::render(
        &namespace.name,
        &[],
        &["manifests/components/jvb-advertise-from-node"],
    );
    for object in objects.iter_mut().filter(|o| kind(o) == "ClusterRoleBinding") {
        object["subjects"][0]["namespace"] = json!(namespace.name);
    }
    manifests::apply(&objects);
    let expected = documented(&[role(&objects, "ClusterRole", "jvb-node-reader")]);
    assert_eq!(
        expected,
        Rights::from([("nodes".to_owned(), BTreeSet::from(["get".to_owned()]))])
    );
    assert_eq!(can_i(&namespace.name, &namespace.name, "jvb"), expected);
    let elsewhere = cluster.namespace("rbac-jvb-other").await;
    assert_eq!(
        can_i(&elsewhere.name, &namespace.name, "jvb"),
        expected,
        "Nodes are cluster-wide: the same anywhere"
    );
    elsewhere.delete().await;
    namespace.delete().await;
}
