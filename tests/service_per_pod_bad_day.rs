//! service-per-pod on a bad day: writes refused by an admission policy or a quota, a mode switch that
//! cannot happen, a protocol change with calls on, Services orphaned by `--cascade=orphan`, StatefulSets
//! whose ordinals start elsewhere. In each, no call is cut: what can be written is, what cannot is
//! reported once, and nothing that serves a bridge is taken away for it.

// Test code: a failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ResourceQuota, Service};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams, PropagationPolicy};
use kube::{Api, ResourceExt};
use serde_json::json;
use testbed::eventually;
use testbed::service_per_pod::{Fixture, ports, service_writes, statefulset, statefulset_annotating_pods};

const SECOND: Duration = Duration::from_secs(1);
const BASE_PORT: &str = "service-per-pod/base-port";

fn uids(services: &BTreeMap<String, Service>) -> BTreeMap<String, String> {
    services
        .iter()
        .map(|(name, service)| (name.clone(), service.uid().unwrap()))
        .collect()
}

/// A ValidatingAdmissionPolicy (cluster-scoped, removed when dropped) that refuses the controller's
/// updates of Service `frozen` in `namespace`.
struct Freeze {
    admin: kube::Client,
    name: String,
}

impl Freeze {
    async fn new(fx: &Fixture, frozen: &str) -> Self {
        let admin = fx.cluster.admin();
        let namespace = &fx.namespace.name;
        let name = format!("{namespace}-freeze");
        let user = format!("system:serviceaccount:{namespace}:service-per-pod");
        let policy = json!({
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingAdmissionPolicy",
            "metadata": { "name": name },
            "spec": {
                "failurePolicy": "Fail",
                "matchConstraints": { "resourceRules": [{
                    "apiGroups": [""], "apiVersions": ["v1"], "operations": ["UPDATE"], "resources": ["services"],
                }] },
                "matchConditions": [{ "name": "the-controller", "expression": format!("request.userInfo.username == '{user}'") }],
                "validations": [{
                    "expression": format!("object.metadata.name != '{frozen}'"),
                    "message": format!("{frozen} is frozen by policy"),
                }],
            },
        });
        let binding = json!({
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingAdmissionPolicyBinding",
            "metadata": { "name": name },
            "spec": {
                "policyName": name,
                "validationActions": ["Deny"],
                "matchResources": { "namespaceSelector": { "matchLabels": { "kubernetes.io/metadata.name": namespace } } },
            },
        });
        for object in [policy, binding] {
            let kind = object["kind"].as_str().unwrap();
            let api: Api<kube::api::DynamicObject> = Api::all_with(
                admin.clone(),
                &kube::api::ApiResource::from_gvk(&kube::api::GroupVersionKind::gvk(
                    "admissionregistration.k8s.io",
                    "v1",
                    kind,
                )),
            );
            api.create(&PostParams::default(), &serde_json::from_value(object).unwrap())
                .await
                .unwrap();
        }
        Self { admin, name }
    }

    async fn remove(self) {
        for kind in ["ValidatingAdmissionPolicyBinding", "ValidatingAdmissionPolicy"] {
            let api: Api<kube::api::DynamicObject> = Api::all_with(
                self.admin.clone(),
                &kube::api::ApiResource::from_gvk(&kube::api::GroupVersionKind::gvk(
                    "admissionregistration.k8s.io",
                    "v1",
                    kind,
                )),
            );
            let _ = api.delete(&self.name, &DeleteParams::default()).await;
        }
    }
}

/// A Service edited by hand (a key added to its selector): the controller repairs it.
async fn break_by_hand(fx: &Fixture, name: &str) {
    let patch = json!({ "spec": { "selector": { "edited-by": "hand" } } });
    fx.services()
        .patch(name, &PatchParams::default(), &Patch::Merge(patch))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_refused_update_holds_up_no_deletion_and_is_reported_once() {
    let fx = Fixture::start("spp-bad-policy").await;
    let base = fx.namespace.node_port_block().await.to_string();
    fx.create(&statefulset("jvb", 3, &[(BASE_PORT, &base)])).await;
    fx.wait_until_settled(&["jvb-0", "jvb-1", "jvb-2"], 30 * SECOND)
        .await;
    let freeze = Freeze::new(&fx, "jvb-0").await;
    // The policy takes effect once the API server's informer has it: jvb-0 is edited by hand until
    // the controller's repair of it is refused.
    let refused = eventually(
        "the controller's repair refused by the policy",
        60 * SECOND,
        || async {
            break_by_hand(&fx, "jvb-0").await;
            tokio::time::sleep(SECOND).await;
            fx.warnings("jvb", "WriteRefused").await.into_iter().next()
        },
    )
    .await;
    assert!(
        refused.contains("update Service jvb-0") && refused.contains("frozen by policy"),
        "{refused}"
    );
    // While jvb-0 cannot be repaired, the StatefulSet scales down: the removed pods' Services still go.
    fx.scale("jvb", 1).await;
    fx.wait_for_services(&["jvb-0"], 30 * SECOND).await;
    tokio::time::sleep(3 * SECOND).await;
    assert_eq!(
        fx.warnings("jvb", "WriteRefused").await.len(),
        1,
        "one Event for one refused write, not one per reconcile"
    );
    freeze.remove().await;
    eventually("jvb-0 repaired once the policy is gone", 90 * SECOND, || async {
        let selector = fx.services().get("jvb-0").await.ok()?.spec?.selector?;
        (!selector.contains_key("edited-by")).then_some(())
    })
    .await;
    fx.namespace.delete().await;
}

#[tokio::test]
async fn a_node_port_quota_refuses_one_create_and_the_deletions_that_free_it_still_happen() {
    let fx = Fixture::start("spp-bad-quota").await;
    let quota: ResourceQuota = serde_json::from_value(json!({
        "metadata": { "name": "node-ports" },
        "spec": { "hard": { "services.nodeports": "2" } },
    }))
    .unwrap();
    let quotas: Api<ResourceQuota> = fx.namespace.api();
    quotas.create(&PostParams::default(), &quota).await.unwrap();
    let base = fx.namespace.node_port_block().await.to_string();
    fx.create(&statefulset("jvb", 3, &[(BASE_PORT, &base)])).await;
    let refused = fx.wait_for_warning("jvb", "WriteRefused").await;
    assert!(
        refused.contains("create Service jvb-") && refused.contains("exceeded quota"),
        "{refused}"
    );
    eventually("the two Services the quota allows", 30 * SECOND, || async {
        (fx.try_service_map().await?.len() == 2).then_some(())
    })
    .await;
    // Scaling down frees the quota: the removed pods' Services go although a create failed meanwhile.
    fx.scale("jvb", 1).await;
    fx.wait_for_services(&["jvb-0"], 30 * SECOND).await;
    fx.scale("jvb", 2).await;
    fx.wait_for_services(&["jvb-0", "jvb-1"], 30 * SECOND).await;
    fx.namespace.delete().await;
}

#[tokio::test]
async fn a_mode_switch_the_api_server_would_refuse_leaves_the_per_pod_services_in_place() {
    let fx = Fixture::start("spp-bad-switch").await;
    let base = fx.namespace.node_port_block().await.to_string();
    fx.create(&statefulset_annotating_pods("jvb", 2, &[(BASE_PORT, &base)]))
        .await;
    let before = uids(&fx.wait_until_settled(&["jvb-0", "jvb-1"], 30 * SECOND).await);
    let foreign = fx.create_foreign_service("jvb-public").await;
    let switch = json!({ "metadata": { "annotations": { "service-per-pod/expose": "LoadBalancer" } } });
    fx.sets()
        .patch("jvb", &PatchParams::default(), &Patch::Merge(switch))
        .await
        .unwrap();
    let refused = fx.wait_for_warning("jvb", "ModeSwitchRefused").await;
    assert!(
        refused.contains("jvb-public") && refused.contains("the per-pod Services stay"),
        "{refused}"
    );
    tokio::time::sleep(3 * SECOND).await;
    let after = fx.service_map().await;
    assert_eq!(uids(&after).get("jvb-0"), before.get("jvb-0"), "jvb-0 untouched");
    assert_eq!(uids(&after).get("jvb-1"), before.get("jvb-1"), "jvb-1 untouched");
    assert_eq!(after["jvb-public"].resource_version(), foreign.resource_version());
    // Once the name is free, the switch happens.
    fx.services()
        .delete("jvb-public", &DeleteParams::default())
        .await
        .unwrap();
    eventually("the switch once the name is free", 60 * SECOND, || async {
        let services = fx.try_service_map().await?;
        let public = services.get("jvb-public")?;
        (services.len() == 1 && public.spec.as_ref()?.type_.as_deref() == Some("LoadBalancer")).then_some(())
    })
    .await;
    fx.namespace.delete().await;
}

#[tokio::test]
async fn adding_tcp_with_calls_on_replaces_no_service() {
    let fx = Fixture::start("spp-bad-protocols").await;
    let base = fx.namespace.node_port_block().await.to_string();
    fx.create(&statefulset("jvb", 2, &[(BASE_PORT, &base)])).await;
    let before = uids(&fx.wait_until_settled(&["jvb-0", "jvb-1"], 30 * SECOND).await);
    let writes_before = service_writes(&fx.controller).await;
    let both = json!({ "metadata": { "annotations": { "service-per-pod/protocols": "UDP,TCP" } } });
    fx.sets()
        .patch("jvb", &PatchParams::default(), &Patch::Merge(both))
        .await
        .unwrap();
    let after = eventually("both protocols on both Services", 30 * SECOND, || async {
        let services = fx.try_service_map().await?;
        services
            .values()
            .all(|service| ports(service).len() == 2)
            .then_some(services)
    })
    .await;
    assert_eq!(uids(&after), before, "patched in place: no Service was replaced");
    for service in after.values() {
        let node_ports: Vec<Option<i32>> = ports(service).iter().map(|port| port.1).collect();
        assert_eq!(node_ports[0], node_ports[1], "UDP and TCP on the same node port");
    }
    let writes = service_writes(&fx.controller).await - writes_before;
    assert!(writes <= 4.0, "{writes} writes for two patches");
    fx.namespace.delete().await;
}

#[tokio::test]
async fn services_orphaned_by_cascade_orphan_are_adopted_without_a_create() {
    let fx = Fixture::start("spp-bad-orphans").await;
    let base = fx.namespace.node_port_block().await.to_string();
    let set = statefulset("jvb", 2, &[(BASE_PORT, &base)]);
    fx.create(&set).await;
    let before = uids(&fx.wait_until_settled(&["jvb-0", "jvb-1"], 30 * SECOND).await);
    // The usual way to change volumeClaimTemplates: delete the StatefulSet, keep its pods, apply again.
    fx.sets()
        .delete(
            "jvb",
            &DeleteParams {
                propagation_policy: Some(PropagationPolicy::Orphan),
                ..DeleteParams::default()
            },
        )
        .await
        .unwrap();
    eventually(
        "the Services orphaned, kept, and the StatefulSet gone",
        60 * SECOND,
        || async {
            let services = fx.try_service_map().await?;
            let orphaned = services.len() == 2
                && services.values().all(|service| {
                    service
                        .owner_references()
                        .iter()
                        .all(|owner| owner.kind != "StatefulSet")
                });
            let gone = fx.sets().get_opt("jvb").await.ok()?.is_none();
            (orphaned && gone).then_some(())
        },
    )
    .await;
    let creates_before = fx
        .controller
        .metric("service_per_pod_service_writes_total{verb=\"Create\"}")
        .await;
    let recreated = fx.create(&set).await;
    let adopted = eventually(
        "the Services adopted by the new StatefulSet",
        30 * SECOND,
        || async {
            let services = fx.try_service_map().await?;
            let adopted = services.len() == 2
                && services.values().all(|service| {
                    service.owner_references().iter().any(|owner| {
                        owner.controller == Some(true) && Some(&owner.uid) == recreated.metadata.uid.as_ref()
                    })
                });
            adopted.then_some(services)
        },
    )
    .await;
    assert_eq!(uids(&adopted), before, "the same Services, adopted");
    tokio::time::sleep(3 * SECOND).await;
    let creates = fx
        .controller
        .metric("service_per_pod_service_writes_total{verb=\"Create\"}")
        .await
        - creates_before;
    assert_eq!(creates, 0.0, "adopted by a patch, never POSTed again");
    assert!(fx.warnings("jvb", "ForeignService").await.is_empty());
    fx.namespace.delete().await;
}

#[tokio::test]
async fn ordinals_start_where_the_statefulset_says_and_ports_follow_them() {
    let fx = Fixture::start("spp-bad-start").await;
    let base = fx.namespace.node_port_block().await;
    let mut set = statefulset("jvb", 2, &[(BASE_PORT, &base.to_string())]);
    set.spec.as_mut().unwrap().ordinals =
        Some(k8s_openapi::api::apps::v1::StatefulSetOrdinals { start: Some(3) });
    fx.create(&set).await;
    let services = fx.wait_until_settled(&["jvb-3", "jvb-4"], 30 * SECOND).await;
    for (name, offset) in [("jvb-3", 3), ("jvb-4", 4)] {
        assert_eq!(
            ports(&services[name])[0].1,
            Some(i32::from(base) + offset),
            "{name}: base + ordinal"
        );
    }
    fx.namespace.delete().await;
}
