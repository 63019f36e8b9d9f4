//! Maintenance never evicts a busy bridge, and a change touches only what it concerns — against the real
//! API server: its eviction subresource and the PodDisruptionBudgets of the manifests (checked by the
//! disruption controller of kube-controller-manager), `kubectl drain` as operators run it (server-side dry
//! run: the nodes are shared with other tests), the Deployment and StatefulSet controllers rolling what a
//! re-apply changed.

// Test code: a failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{DeleteParams, EvictParams, ListParams, Patch, PatchParams};
use kube::{Api, ResourceExt};
use serde_json::{Value, json};
use testbed::manifests::{self, edit, kind, kubectl, reapply, render_overlay};
use testbed::{Cluster, TestNamespace, eventually};

const DEV: &str = "manifests/overlays/dev";

/// Applies `objects` (the Namespace first) and waits until `count` pods are Running.
async fn deploy(namespace: &TestNamespace, objects: &[Value], count: usize) {
    let (namespaces, rest): (Vec<Value>, Vec<Value>) =
        objects.iter().cloned().partition(|o| kind(o) == "Namespace");
    manifests::apply(&namespaces);
    manifests::apply(&rest);
    running_pods(namespace, count).await;
}

async fn running_pods(namespace: &TestNamespace, count: usize) -> Vec<Pod> {
    let pods: Api<Pod> = namespace.api();
    eventually(
        &format!("{count} pods Running in {}", namespace.name),
        Duration::from_secs(120),
        || async {
            let running: Vec<Pod> = pods
                .list(&ListParams::default())
                .await
                .ok()?
                .items
                .into_iter()
                .filter(|p| p.metadata.deletion_timestamp.is_none())
                .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
                .collect();
            (running.len() == count).then_some(running)
        },
    )
    .await
}

fn pod_named<'a>(pods: &'a [Pod], prefix: &str) -> &'a Pod {
    pods.iter()
        .find(|p| p.name_any().starts_with(prefix))
        .unwrap_or_else(|| panic!("no pod {prefix}*"))
}

/// What docs/deploying.md ("Node maintenance") says is refused and what is allowed.
#[tokio::test]
async fn a_serving_bridge_refuses_eviction_a_broken_one_and_the_rest_of_the_shard_do_not() {
    let cluster = Cluster::connect().await;
    let namespace = cluster.namespace("maint-evict").await;
    let objects = render_overlay(&namespace.name, DEV, &[]);
    let expected = objects
        .iter()
        .filter(|o| matches!(kind(o), "Deployment" | "StatefulSet"))
        .map(|w| w["spec"]["replicas"].as_u64().unwrap_or(1) as usize)
        .sum();
    deploy(&namespace, &objects, expected).await;
    // A second bridge, as the autoscaler would add it.
    namespace.scale_statefulset("shard-0-jvb", 2).await;
    let pods = running_pods(&namespace, expected + 1).await;
    let api: Api<Pod> = namespace.api();
    let pdbs: Api<k8s_openapi::api::policy::v1::PodDisruptionBudget> = namespace.api();
    eventually(
        "the disruption controller to count the bridges",
        Duration::from_secs(60),
        || async {
            let status = pdbs.get("shard-0-jvb").await.ok()?.status?;
            (status.expected_pods == Some(2) && status.current_healthy == Some(2)).then_some(())
        },
    )
    .await;

    // A serving bridge: refused, with the API server's reason.
    let refused = api
        .evict("shard-0-jvb-0", &EvictParams::default())
        .await
        .unwrap_err();
    match refused {
        kube::Error::Api(status) => {
            assert_eq!(status.code, 429, "{status:?}");
            assert!(status.message.contains("disruption budget"), "{status:?}");
        }
        other => panic!("evicting a serving bridge: {other}"),
    }
    // kubectl drain of its node says the same, and goes on trying; with --disable-eviction it deletes
    // the bridge instead, which then drains in its preStop hook (server-side dry run).
    let node = pod_named(&pods, "shard-0-jvb-0")
        .spec
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .unwrap();
    let drain = |extra: &[&str]| {
        let mut args = vec![
            "drain",
            node.as_str(),
            "--ignore-daemonsets",
            "--delete-emptydir-data",
            "--dry-run=server",
            "--timeout=8s",
            "--pod-selector=app.kubernetes.io/name=jvb",
        ];
        args.extend_from_slice(extra);
        kubectl(&args, "")
    };
    let (ok, stdout, stderr) = drain(&[]);
    let said = format!("{stdout}{stderr}");
    assert!(!ok, "kubectl drain evicted a serving bridge:\n{said}");
    assert!(
        said.contains(&format!("\"shard-0-jvb-0\" -n \"{}\"", namespace.name))
            && said.contains("Cannot evict pod as it would violate the pod's disruption budget"),
        "{said}"
    );
    // With --disable-eviction it deletes instead, consulting no budget; in a dry run the pods stay, so it
    // ends waiting for them to go.
    let (_, stdout, stderr) = drain(&["--disable-eviction"]);
    let said = format!("{stdout}{stderr}");
    assert!(!said.contains("disruption budget"), "{said}");
    assert!(
        said.contains("There are pending pods") && said.contains("pod/shard-0-jvb-0\n"),
        "{said}"
    );

    // Nothing else of the shard is protected: Jicofo and Prosody are only kept off autoscalers'
    // consolidations (annotations), web not at all.
    for (prefix, annotated) in [
        ("shard-0-web-", false),
        ("shard-0-jicofo-", true),
        ("shard-0-prosody-", true),
    ] {
        let pod = pod_named(&pods, prefix);
        let annotations = pod.annotations();
        assert_eq!(
            annotations
                .get("cluster-autoscaler.kubernetes.io/safe-to-evict")
                .map(String::as_str),
            annotated.then_some("false"),
            "{prefix}"
        );
        assert_eq!(
            annotations.get("karpenter.sh/do-not-disrupt").map(String::as_str),
            annotated.then_some("true"),
            "{prefix}"
        );
    }
    let web = pod_named(&pods, "shard-0-web-").name_any();
    api.evict(&web, &EvictParams::default())
        .await
        .unwrap_or_else(|e| panic!("evicting {web}: {e}"));

    // A bridge that is not Ready carries no working call: it may go (unhealthyPodEvictionPolicy).
    let not_ready = json!({ "status": { "conditions": [
        { "type": "Ready", "status": "False", "reason": "ContainersNotReady" },
        { "type": "ContainersReady", "status": "False", "reason": "ContainersNotReady" }
    ] } });
    eventually("an unready bridge evicted", Duration::from_secs(30), || async {
        api.patch_status(
            "shard-0-jvb-1",
            &PatchParams::default(),
            &Patch::Strategic(not_ready.clone()),
        )
        .await
        .ok()?;
        api.evict("shard-0-jvb-1", &EvictParams::default()).await.ok()
    })
    .await;
    namespace.delete().await;
}

/// Every pod's UID by its name (a Deployment's pods carry their ReplicaSet's hash: a replaced pod has
/// another name and another UID).
async fn uids(namespace: &TestNamespace) -> BTreeMap<String, String> {
    let pods: Api<Pod> = namespace.api();
    pods.list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .map(|p| (p.name_any(), p.uid().unwrap_or_default()))
        .collect()
}

/// The UIDs of the pods whose names start with `prefix`.
fn uids_of(pods: &BTreeMap<String, String>, prefix: &str) -> Vec<String> {
    pods.iter()
        .filter(|(name, _)| name.starts_with(prefix))
        .map(|(_, uid)| uid.clone())
        .collect()
}

/// One shard's setting changed: only that shard's pods of that component restart. A re-apply keeps the
/// replica counts a procedure set (web scaled to 0). A new bridge image replaces no running bridge;
/// a bridge deleted by hand comes back with it.
#[tokio::test]
async fn a_change_to_one_shard_restarts_only_that_shards_pods_of_that_component() {
    let cluster = Cluster::connect().await;
    let namespace = cluster.namespace("maint-config").await;
    let copy = manifests::copy_of_manifests("maint-config");
    let production = copy.join("manifests/overlays/production");
    edit(
        &production.join("kustomization.yaml"),
        "namespace: jitsi\n",
        &format!("namespace: {}\n", namespace.name),
    );
    manifests::deploy_copy(&copy, &namespace.name);
    // 2 shards × (web, jicofo, prosody, 2 bridges from the ScaledObject's minimum) + 2 HAProxy + 2 controllers.
    let expected = 2 * 5 + 2 + 2;
    namespace.scale_statefulset("shard-0-jvb", 2).await;
    namespace.scale_statefulset("shard-1-jvb", 2).await;
    running_pods(&namespace, expected).await;
    let before = uids(&namespace).await;

    // 1. One shard's Jicofo setting, in its folder as the docs say.
    edit(
        &production.join("shard-0/kustomization.yaml"),
        "configMapGenerator:\n",
        "configMapGenerator:\n  - name: jitsi-jicofo\n    behavior: merge\n    literals:\n      - JICOFO_AUTH_LIFETIME=12 hours\n",
    );
    reapply(&copy, &namespace.name);
    let jicofo_before = uids_of(&before, "shard-0-jicofo-");
    let after = eventually("shard-0's Jicofo replaced", Duration::from_secs(120), || async {
        let now = uids(&namespace).await;
        let jicofo = uids_of(&now, "shard-0-jicofo-");
        (now.len() == expected && jicofo.len() == 1 && jicofo != jicofo_before).then_some(now)
    })
    .await;
    for (pod, uid) in before
        .iter()
        .filter(|(pod, _)| !pod.starts_with("shard-0-jicofo-"))
    {
        assert_eq!(
            after.get(pod),
            Some(uid),
            "{pod} restarted for shard-0's Jicofo setting"
        );
    }

    // 2. A replica count set by hand (web at 0) survives a re-apply.
    let deployments: Api<Deployment> = namespace.api();
    deployments
        .patch(
            "shard-1-web",
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": { "replicas": 0 } })),
        )
        .await
        .unwrap();
    reapply(&copy, &namespace.name);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let web = deployments.get("shard-1-web").await.unwrap();
    assert_eq!(
        web.spec.unwrap().replicas,
        Some(0),
        "the re-apply scaled web back up"
    );

    // 3. A new bridge image: no running bridge is replaced; one deleted by hand comes back with it.
    edit(
        &production.join("shard-0/kustomization.yaml"),
        "  - name: ghcr.io/jitsi/jvb\n    newTag: stable-11146-2\n",
        "  - name: ghcr.io/jitsi/jvb\n    newTag: stable-11146-3\n",
    );
    reapply(&copy, &namespace.name);
    let sets: Api<StatefulSet> = namespace.api();
    eventually(
        "the StatefulSet to see its new revision",
        Duration::from_secs(30),
        || async {
            let status = sets.get("shard-0-jvb").await.ok()?.status?;
            (status.update_revision.is_some() && status.update_revision != status.current_revision)
                .then_some(())
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let now = uids(&namespace).await;
    for bridge in ["shard-0-jvb-0", "shard-0-jvb-1"] {
        assert_eq!(
            now.get(bridge),
            after.get(bridge),
            "{bridge} was replaced by the image change"
        );
    }
    let pods: Api<Pod> = namespace.api();
    pods.delete("shard-0-jvb-1", &DeleteParams::default())
        .await
        .unwrap();
    let image = eventually(
        "shard-0-jvb-1 back, from the new template",
        Duration::from_secs(60),
        || async {
            let pod = pods.get_opt("shard-0-jvb-1").await.ok()??;
            (pod.uid() != after.get("shard-0-jvb-1").cloned() && pod.metadata.deletion_timestamp.is_none())
                .then_some(())?;
            pod.spec?
                .containers
                .iter()
                .find(|c| c.name == "jvb")?
                .image
                .clone()
        },
    )
    .await;
    assert_eq!(image, "ghcr.io/jitsi/jvb:stable-11146-3");
    let untouched = pods.get("shard-0-jvb-0").await.unwrap();
    assert_eq!(untouched.uid(), after.get("shard-0-jvb-0").cloned());
    std::fs::remove_dir_all(&copy).unwrap();
    namespace.delete().await;
}
