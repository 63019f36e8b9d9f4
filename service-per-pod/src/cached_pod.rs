//! A pod as the controller caches it: its metadata, node, IP and Ready condition, deserialized straight
//! from the watch. A `k8s_openapi` `Pod` holds its whole spec and status inline (2.4 KB before any of its
//! strings) and parses every container of every pod event; with 2 400 bridges that was a third of the
//! controller's memory.

use std::collections::BTreeMap;

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};
use serde::{Deserialize, Serialize};

/// The label the StatefulSet controller puts the pod's ordinal in (Kubernetes 1.28 and later; older
/// pods fall back to their name).
pub const POD_INDEX_LABEL: &str = "apps.kubernetes.io/pod-index";

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct CachedPod {
    #[serde(default, deserialize_with = "read_metadata")]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: Spec,
    #[serde(default)]
    pub status: Status,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Spec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    #[serde(default, rename = "podIP", skip_serializing_if = "Option::is_none")]
    pub pod_ip: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct Condition {
    #[serde(rename = "type")]
    pub type_: String,
    pub status: String,
}

/// A pod's metadata, read without building what the cache drops: the parser skips managedFields (a tree
/// of JSON values per field manager, the largest part of a pod's metadata) instead of allocating it for
/// `slim` to free. Pod events are most of what the controller reads.
fn read_metadata<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<ObjectMeta, D::Error> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Kept {
        name: Option<String>,
        namespace: Option<String>,
        uid: Option<String>,
        resource_version: Option<String>,
        owner_references: Option<Vec<OwnerReference>>,
        deletion_timestamp: Option<Time>,
        labels: Option<BTreeMap<String, String>>,
        annotations: Option<BTreeMap<String, String>>,
    }
    let kept = Kept::deserialize(deserializer)?;
    Ok(ObjectMeta {
        name: kept.name,
        namespace: kept.namespace,
        uid: kept.uid,
        resource_version: kept.resource_version,
        owner_references: kept.owner_references,
        deletion_timestamp: kept.deletion_timestamp,
        labels: kept.labels,
        annotations: kept.annotations,
        ..ObjectMeta::default()
    })
}

impl CachedPod {
    /// Whether the pod's Ready condition is True.
    pub fn is_ready(&self) -> bool {
        self.status
            .conditions
            .iter()
            .any(|condition| condition.type_ == "Ready" && condition.status == "True")
    }

    /// Keeps what the controller reads: name, namespace, UID, owners, deletion state, the pod-index label
    /// and the base-port annotation, the Ready condition. Other labels and annotations (every chart and
    /// mesh adds some), managed fields and the other conditions are dropped as they arrive.
    pub fn slim(&mut self) {
        let mut metadata = std::mem::take(&mut self.metadata);
        let keep = |map: Option<BTreeMap<String, String>>, key: &str| {
            map.and_then(|mut map| map.remove_entry(key))
                .map(|entry| BTreeMap::from([entry]))
        };
        self.metadata = ObjectMeta {
            labels: keep(metadata.labels.take(), POD_INDEX_LABEL),
            annotations: keep(metadata.annotations.take(), crate::annotations::BASE_PORT),
            ..crate::desired::cached_identity(metadata)
        };
        self.status
            .conditions
            .retain(|condition| condition.type_ == "Ready");
    }
}

impl k8s_openapi::Resource for CachedPod {
    const API_VERSION: &'static str = "v1";
    const GROUP: &'static str = "";
    const KIND: &'static str = "Pod";
    const VERSION: &'static str = "v1";
    const URL_PATH_SEGMENT: &'static str = "pods";
    type Scope = NamespaceResourceScope;
}

impl k8s_openapi::Metadata for CachedPod {
    type Ty = ObjectMeta;

    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn metadata_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_pod_reads_as_its_node_ip_ready_condition_and_metadata() {
        let pod = serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": { "name": "jvb-0", "namespace": "jitsi", "uid": "u1",
                "labels": { "apps.kubernetes.io/pod-index": "0", "app": "jvb", "controller-revision-hash": "jvb-1" },
                "annotations": { "service-per-pod/base-port": "30300", "prometheus.io/scrape": "true" },
                "ownerReferences": [{ "apiVersion": "apps/v1", "kind": "StatefulSet", "name": "jvb", "uid": "s1", "controller": true }],
                "generateName": "jvb-", "resourceVersion": "42", "deletionTimestamp": "2026-12-05T10:00:00Z",
                "managedFields": [{ "manager": "kubelet", "operation": "Update" }] },
            "spec": { "nodeName": "node-1", "containers": [{ "name": "jvb", "image": "jitsi/jvb" }] },
            "status": { "podIP": "10.0.0.5", "phase": "Running", "conditions": [
                { "type": "PodScheduled", "status": "True" }, { "type": "Ready", "status": "True" } ] }
        });
        let mut cached: CachedPod = serde_json::from_value(pod).unwrap();
        assert!(cached.metadata.managed_fields.is_none(), "never parsed");
        cached.slim();
        assert_eq!(cached.metadata.name.as_deref(), Some("jvb-0"));
        assert_eq!(cached.spec.node_name.as_deref(), Some("node-1"));
        assert_eq!(cached.status.pod_ip.as_deref(), Some("10.0.0.5"));
        assert!(cached.is_ready());
        assert_eq!(cached.status.conditions.len(), 1);
        assert!(cached.metadata.managed_fields.is_none());
        assert_eq!(
            cached.metadata.labels,
            Some(BTreeMap::from([(POD_INDEX_LABEL.to_owned(), "0".to_owned())]))
        );
        assert_eq!(
            crate::annotations::pod_base_port(cached.metadata.annotations.as_ref().unwrap()),
            Some(30300)
        );
        assert_eq!(cached.metadata.annotations.as_ref().unwrap().len(), 1);
        assert_eq!(cached.metadata.owner_references.as_ref().unwrap()[0].name, "jvb");
        assert!(cached.metadata.generate_name.is_none());
        assert_eq!(cached.metadata.resource_version.as_deref(), Some("42"));
        assert!(cached.metadata.deletion_timestamp.is_some());
        // A pod just created has neither status nor node.
        let fresh: CachedPod =
            serde_json::from_value(serde_json::json!({ "metadata": { "name": "jvb-1" } })).unwrap();
        assert!(!fresh.is_ready() && fresh.spec.node_name.is_none());
    }
}
