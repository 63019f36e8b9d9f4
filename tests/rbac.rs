//! RBAC proof on the real API server: for each ServiceAccount our manifests create or bind, what
//! `kubectl auth can-i --list` reports equals the table in SECURITY.md ("What each ServiceAccount may do")
//! and the rules in `manifests/` — any extra verb on either side fails. (Only the self-review rights every
//! authenticated user has are set aside.)

// Test code: a failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::PostParams;
use serde_json::{Value, json};
use testbed::manifests::{self, kind};
use testbed::service_per_pod::{BASE, NAMESPACED, Scope, install_rbac};
use testbed::{Cluster, TestNamespace};

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

const SPP_NAMESPACED: &str = "service-per-pod (components/service-per-pod-namespaced, as in both overlays)";
const SPP_CLUSTER: &str =
    "service-per-pod (base, cluster-wide: one controller for several namespaces, with --port-grants)";
const JVB: &str = "jvb (base/shard: `<shard>-jvb`, token not even mounted)";
const JVB_NODE_READER: &str = "jvb with components/jvb-advertise-from-node";
const PROMETHEUS: &str =
    "prometheus-k8s of namespace monitoring (components/kube-prometheus, as in both overlays)";
const PROMETHEUS_STACK: &str =
    "kube-prometheus-stack-prometheus of namespace monitoring (components/kube-prometheus-stack)";
const HOME: &str = "the Jitsi namespace";
const ELSEWHERE: &str = "elsewhere";

/// SECURITY.md's table: (ServiceAccount variant, where) → rights.
fn documented_in_security_md() -> BTreeMap<(String, String), Rights> {
    let text = std::fs::read_to_string(testbed::repo_root().join("SECURITY.md")).unwrap();
    let section = text
        .split("## What each ServiceAccount may do")
        .nth(1)
        .expect("SECURITY.md documents the ServiceAccounts' rights")
        .split("\n## ")
        .next()
        .unwrap();
    let mut table: BTreeMap<(String, String), Rights> = BTreeMap::new();
    for row in section
        .lines()
        .filter(|l| l.starts_with("| ") && !l.starts_with("| ServiceAccount"))
    {
        let cells: Vec<&str> = row.trim_matches('|').split('|').map(str::trim).collect();
        let [account, place, resource, verbs] = cells[..] else {
            panic!("a row of four cells: {row}");
        };
        let rights = table.entry((account.to_owned(), place.to_owned())).or_default();
        if resource != "—" {
            rights
                .entry(resource.to_owned())
                .or_default()
                .extend(verbs.split_whitespace().map(str::to_owned));
        }
    }
    table
}

fn expected(account: &str, place: &str) -> Rights {
    documented_in_security_md()
        .remove(&(account.to_owned(), place.to_owned()))
        .unwrap_or_else(|| panic!("SECURITY.md has no rows for {account} / {place}"))
}

#[tokio::test]
async fn service_per_pod_namespaced_has_exactly_its_documented_rights() {
    let cluster = Cluster::connect().await;
    let namespace = cluster.namespace("rbac-spp").await;
    install_rbac(&namespace.name, Scope::Namespace);
    let objects = manifests::render(&namespace.name, &[BASE], &[NAMESPACED]);
    let in_manifests = documented(&[
        role(&objects, "Role", "service-per-pod"),
        role(&objects, "Role", "service-per-pod-leader-election"),
    ]);
    assert_eq!(
        in_manifests,
        expected(SPP_NAMESPACED, HOME),
        "manifests vs SECURITY.md"
    );
    assert_eq!(
        can_i(&namespace.name, &namespace.name, "service-per-pod"),
        expected(SPP_NAMESPACED, HOME)
    );
    // And nothing at all in another namespace.
    let elsewhere = cluster.namespace("rbac-spp-other").await;
    assert_eq!(
        can_i(&elsewhere.name, &namespace.name, "service-per-pod"),
        expected(SPP_NAMESPACED, ELSEWHERE),
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
        documented(&[cluster_role, lease_role]),
        expected(SPP_CLUSTER, HOME),
        "manifests vs SECURITY.md"
    );
    assert_eq!(
        documented(&[cluster_role]),
        expected(SPP_CLUSTER, ELSEWHERE),
        "manifests vs SECURITY.md"
    );
    assert_eq!(
        can_i(&namespace.name, &namespace.name, "service-per-pod"),
        expected(SPP_CLUSTER, HOME)
    );
    let elsewhere = cluster.namespace("rbac-spp-cluster-other").await;
    assert_eq!(
        can_i(&elsewhere.name, &namespace.name, "service-per-pod"),
        expected(SPP_CLUSTER, ELSEWHERE),
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
    assert_eq!(
        documented(&[role(&objects, "ClusterRole", "jvb-node-reader")]),
        expected(JVB_NODE_READER, HOME),
        "manifests vs SECURITY.md"
    );
    assert_eq!(
        can_i(&namespace.name, &namespace.name, "jvb"),
        expected(JVB_NODE_READER, HOME)
    );
    let elsewhere = cluster.namespace("rbac-jvb-other").await;
    assert_eq!(
        can_i(&elsewhere.name, &namespace.name, "jvb"),
        expected(JVB_NODE_READER, ELSEWHERE),
        "Nodes are cluster-wide: the same anywhere"
    );
    elsewhere.delete().await;
    namespace.delete().await;
}

/// Every ServiceAccount the dev overlay creates or binds, found in the rendering itself — so a new one
/// cannot slip in undocumented. Rendered with the kube-prometheus-stack component as well, so both
/// monitoring stacks' Prometheus are checked.
#[tokio::test]
async fn every_service_account_of_the_dev_overlay_has_exactly_its_documented_rights() {
    let cluster = Cluster::connect().await;
    let namespace = cluster.namespace("rbac-dev-overlay").await;
    let objects = manifests::render_overlay(
        &namespace.name,
        "manifests/overlays/dev",
        &["manifests/components/kube-prometheus-stack"],
    );
    let rbac: Vec<Value> = objects
        .iter()
        .filter(|o| {
            matches!(
                kind(o),
                "ServiceAccount" | "Role" | "RoleBinding" | "ClusterRole" | "ClusterRoleBinding"
            )
        })
        .cloned()
        .collect();
    manifests::apply(&rbac);

    let mut accounts: BTreeSet<(String, String)> = objects
        .iter()
        .filter(|o| kind(o) == "ServiceAccount")
        .map(|o| {
            (
                namespace.name.clone(),
                o["metadata"]["name"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    for binding in objects
        .iter()
        .filter(|o| matches!(kind(o), "RoleBinding" | "ClusterRoleBinding"))
    {
        for subject in binding["subjects"].as_array().unwrap() {
            assert_eq!(
                subject["kind"], "ServiceAccount",
                "bindings name ServiceAccounts only"
            );
            accounts.insert((
                subject["namespace"].as_str().unwrap().to_owned(),
                subject["name"].as_str().unwrap().to_owned(),
            ));
        }
    }
    let variant = |home: &str, name: &str| -> &'static str {
        match (home == namespace.name, name) {
            (true, "service-per-pod") => SPP_NAMESPACED,
            (true, "shard-0-jvb") => JVB,
            (false, "prometheus-k8s") if home == "monitoring" => PROMETHEUS,
            (false, "kube-prometheus-stack-prometheus") if home == "monitoring" => PROMETHEUS_STACK,
            _ => panic!("{home}/{name} is not in SECURITY.md's table"),
        }
    };
    let elsewhere = cluster.namespace("rbac-dev-overlay-other").await;
    for (home, name) in &accounts {
        let documented_as = variant(home, name);
        assert_eq!(
            can_i(&namespace.name, home, name),
            expected(documented_as, HOME),
            "{home}/{name} in the Jitsi namespace"
        );
        assert_eq!(
            can_i(&elsewhere.name, home, name),
            expected(documented_as, ELSEWHERE),
            "{home}/{name} elsewhere"
        );
    }
    assert_eq!(accounts.len(), 4, "{accounts:?}");
    for prometheus in [PROMETHEUS, PROMETHEUS_STACK] {
        assert_eq!(
            documented(&[role(&objects, "Role", "prometheus-discovery")]),
            expected(prometheus, HOME),
            "manifests vs SECURITY.md"
        );
    }
    elsewhere.delete().await;
    namespace.delete().await;
}
