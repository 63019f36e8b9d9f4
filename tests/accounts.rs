//! components/auth-internal on the real API server: each shard's Prosody keeps its accounts on a
//! PersistentVolumeClaim of its own, admitted under Pod Security "restricted", and a replaced Prosody pod
//! gets the same volume back. The local cluster has no storage provisioner: the test creates the
//! PersistentVolume the claim binds to, as a cluster's provisioner would (kube-controller-manager's real
//! PersistentVolume controller binds them). What Prosody does with the accounts is in
//! tests/image_contract.rs (the image's rendered configuration in the real Prosody 13).

// Test code: a failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod};
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::json;
use testbed::manifests::{self, edit, kind};
use testbed::{Cluster, eventually};

/// The Prosody pod of shard-0 that is not being deleted, once Running.
async fn running_prosody(pods: &Api<Pod>) -> Pod {
    eventually("shard-0's Prosody Running", Duration::from_secs(120), || async {
        pods.list(&ListParams::default().labels("app.kubernetes.io/name=prosody"))
            .await
            .ok()?
            .items
            .into_iter()
            .find(|p| {
                p.metadata.deletion_timestamp.is_none()
                    && p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
            })
    })
    .await
}

fn claim_of(pod: &Pod) -> Option<String> {
    pod.spec
        .as_ref()?
        .volumes
        .as_ref()?
        .iter()
        .find(|v| v.name == "data")?
        .persistent_volume_claim
        .as_ref()
        .map(|c| c.claim_name.clone())
}

#[tokio::test]
async fn a_shards_accounts_live_on_its_own_volume_and_come_back_with_a_new_prosody_pod() {
    let cluster = Cluster::connect().await;
    let namespace = cluster.namespace("accounts").await;
    let copy = manifests::copy_of_manifests("accounts");
    let dev = copy.join("manifests/overlays/dev");
    edit(
        &dev.join("kustomization.yaml"),
        "namespace: jitsi-dev\n",
        &format!("namespace: {}\n", namespace.name),
    );
    edit(
        &dev.join("shard-0/kustomization.yaml"),
        "  - ../../../base/shard\n",
        "  - ../../../base/shard\ncomponents:\n  - ../../../components/auth-internal\n",
    );
    let objects = manifests::render_dir(&dev);
    std::fs::remove_dir_all(&copy).unwrap();
    let claim = manifests::named(&objects, "PersistentVolumeClaim", "shard-0-prosody-data");
    assert_eq!(claim["spec"]["accessModes"], json!(["ReadWriteOnce"]));
    let prosody = manifests::named(&objects, "Deployment", "shard-0-prosody");
    assert_eq!(prosody["spec"]["strategy"], json!({ "type": "Recreate" }));

    // What a provisioner would make: a volume for exactly this claim.
    let volumes: Api<PersistentVolume> = Api::all(cluster.admin());
    let volume_name = format!("{}-prosody-data", namespace.name);
    let volume: PersistentVolume = serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": { "name": volume_name },
        "spec": {
            "capacity": { "storage": "1Gi" },
            "accessModes": ["ReadWriteOnce"],
            "persistentVolumeReclaimPolicy": "Delete",
            "hostPath": { "path": format!("/var/lib/jitsi-k8s-tests/{volume_name}") },
            "claimRef": { "namespace": namespace.name, "name": "shard-0-prosody-data" }
        }
    }))
    .unwrap();
    volumes.create(&PostParams::default(), &volume).await.unwrap();

    let (namespaces, rest): (Vec<_>, Vec<_>) = objects.into_iter().partition(|o| kind(o) == "Namespace");
    manifests::apply(&namespaces);
    // Applied as the docs say; the API server admits Prosody's pod under the namespace's "restricted"
    // Pod Security with the claim among its volumes.
    manifests::apply(&rest);
    let claims: Api<PersistentVolumeClaim> = namespace.api();
    eventually(
        "the claim Bound to its volume",
        Duration::from_secs(60),
        || async {
            let claim = claims.get("shard-0-prosody-data").await.ok()?;
            (claim.status?.phase.as_deref() == Some("Bound")).then_some(())
        },
    )
    .await;
    let pods: Api<Pod> = namespace.api();
    let first = running_prosody(&pods).await;
    assert_eq!(claim_of(&first).as_deref(), Some("shard-0-prosody-data"));

    // A new Prosody pod (a restart, a node lost) gets the same claim, hence the same accounts.
    let deployments: Api<Deployment> = namespace.api();
    assert!(deployments.get("shard-0-prosody").await.is_ok());
    pods.delete(&first.name_any(), &DeleteParams::default())
        .await
        .unwrap();
    let second = eventually("a new Prosody pod", Duration::from_secs(120), || async {
        let pod = running_prosody(&pods).await;
        (pod.uid() != first.uid()).then_some(pod)
    })
    .await;
    assert_eq!(claim_of(&second).as_deref(), Some("shard-0-prosody-data"));
    let bound = claims.get("shard-0-prosody-data").await.unwrap();
    assert_eq!(
        bound.spec.and_then(|s| s.volume_name).as_deref(),
        Some(volume_name.as_str())
    );

    namespace.delete().await;
    let _ = volumes.delete(&volume_name, &DeleteParams::default()).await;
}
