//! A Service as the index keeps it: what `desired::slim_service` keeps, in boxed strings and slices. A
//! `k8s_openapi` `Service` is 824 bytes before any of its strings, and each of its two maps (labels,
//! selector) allocates a whole B-tree node (about 540 bytes) for its two or three entries: with 2 400
//! bridges the cached Services were most of the controller's heap. A reconcile gets real `Service`s back
//! for its own StatefulSet (about a hundred), built when it asks.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};

type Pairs = Box<[(Box<str>, Box<str>)]>;

#[derive(Clone, Debug, PartialEq)]
pub struct CachedService {
    name: Option<Box<str>>,
    namespace: Option<Box<str>>,
    uid: Option<Box<str>>,
    resource_version: Option<Box<str>>,
    owner_references: Option<Box<[OwnerReference]>>,
    deletion_timestamp: Option<Time>,
    labels: Option<Pairs>,
    /// Only those this controller carried onto a public Service (`public::carried_only`).
    annotations: Option<Pairs>,
    spec: Option<CachedSpec>,
}

#[derive(Clone, Debug, PartialEq)]
struct CachedSpec {
    type_: Option<Box<str>>,
    external_traffic_policy: Option<Box<str>>,
    publish_not_ready_addresses: Option<bool>,
    selector: Option<Pairs>,
    ports: Option<Box<[ServicePort]>>,
    load_balancer_class: Option<Box<str>>,
    allocate_load_balancer_node_ports: Option<bool>,
}

fn boxed(text: &Option<String>) -> Option<Box<str>> {
    text.as_deref().map(Box::from)
}

fn unboxed(text: &Option<Box<str>>) -> Option<String> {
    text.as_deref().map(str::to_owned)
}

fn pairs(map: &Option<BTreeMap<String, String>>) -> Option<Pairs> {
    map.as_ref().map(|map| {
        map.iter()
            .map(|(key, value)| (Box::from(key.as_str()), Box::from(value.as_str())))
            .collect()
    })
}

fn map(pairs: &Option<Pairs>) -> Option<BTreeMap<String, String>> {
    pairs.as_ref().map(|pairs| {
        pairs
            .iter()
            .map(|(key, value)| (key.to_string(), value.to_string()))
            .collect()
    })
}

impl CachedService {
    /// Keeps the fields `desired::slim_service` keeps; any other is dropped.
    pub fn new(service: &Service) -> Self {
        let metadata = &service.metadata;
        Self {
            name: boxed(&metadata.name),
            namespace: boxed(&metadata.namespace),
            uid: boxed(&metadata.uid),
            resource_version: boxed(&metadata.resource_version),
            owner_references: metadata
                .owner_references
                .as_ref()
                .map(|owners| owners.iter().cloned().collect()),
            deletion_timestamp: metadata.deletion_timestamp.clone(),
            labels: pairs(&metadata.labels),
            annotations: pairs(&crate::public::carried_only(metadata.annotations.as_ref())),
            spec: service.spec.as_ref().map(|spec| CachedSpec {
                type_: boxed(&spec.type_),
                external_traffic_policy: boxed(&spec.external_traffic_policy),
                publish_not_ready_addresses: spec.publish_not_ready_addresses,
                selector: pairs(&spec.selector),
                ports: spec.ports.as_ref().map(|ports| ports.iter().cloned().collect()),
                load_balancer_class: boxed(&spec.load_balancer_class),
                allocate_load_balancer_node_ports: spec.allocate_load_balancer_node_ports,
            }),
        }
    }

    /// The Service as `desired::slim_service` leaves it.
    pub fn service(&self) -> Service {
        Service {
            metadata: ObjectMeta {
                name: unboxed(&self.name),
                namespace: unboxed(&self.namespace),
                uid: unboxed(&self.uid),
                resource_version: unboxed(&self.resource_version),
                owner_references: self.owner_references.as_ref().map(|owners| owners.to_vec()),
                deletion_timestamp: self.deletion_timestamp.clone(),
                labels: map(&self.labels),
                annotations: map(&self.annotations),
                ..ObjectMeta::default()
            },
            spec: self.spec.as_ref().map(|spec| ServiceSpec {
                type_: unboxed(&spec.type_),
                external_traffic_policy: unboxed(&spec.external_traffic_policy),
                publish_not_ready_addresses: spec.publish_not_ready_addresses,
                selector: map(&spec.selector),
                ports: spec.ports.as_ref().map(|ports| ports.to_vec()),
                load_balancer_class: unboxed(&spec.load_balancer_class),
                allocate_load_balancer_node_ports: spec.allocate_load_balancer_node_ports,
                ..ServiceSpec::default()
            }),
            status: None,
        }
    }

    /// The UID of the object that controls the Service, if any.
    pub fn controller_uid(&self) -> Option<&str> {
        self.owner_references
            .as_deref()?
            .iter()
            .find(|owner| owner.controller == Some(true))
            .map(|owner| owner.uid.as_str())
    }

    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels
            .as_deref()?
            .iter()
            .find(|(name, _)| &**name == key)
            .map(|(_, value)| &**value)
    }

    /// The node ports of its ports.
    pub fn node_ports(&self) -> impl Iterator<Item = u16> + '_ {
        self.spec
            .as_ref()
            .and_then(|spec| spec.ports.as_deref())
            .into_iter()
            .flatten()
            .filter_map(|port| port.node_port)
            .filter_map(|port| u16::try_from(port).ok())
    }

    /// The name of the StatefulSet that controls the Service, if one does.
    pub fn controlling_statefulset(&self) -> Option<&str> {
        self.owner_references
            .as_deref()?
            .iter()
            .find(|owner| owner.controller == Some(true) && owner.kind == "StatefulSet")
            .map(|owner| owner.name.as_str())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn service(value: serde_json::Value) -> Service {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn a_slim_service_comes_back_as_it_went_in() {
        let per_pod = service(json!({
            "metadata": {
                "name": "jvb-0", "namespace": "jitsi", "uid": "svc-uid", "resourceVersion": "42",
                "labels": { "service-per-pod/statefulset": "jvb", "app.kubernetes.io/managed-by": "service-per-pod" },
                "ownerReferences": [{ "apiVersion": "apps/v1", "kind": "StatefulSet", "name": "jvb",
                    "uid": "set-uid", "controller": true, "blockOwnerDeletion": true }],
                "deletionTimestamp": "2026-12-05T10:00:00Z"
            },
            "spec": {
                "type": "NodePort", "externalTrafficPolicy": "Local", "publishNotReadyAddresses": true,
                "selector": { "statefulset.kubernetes.io/pod-name": "jvb-0" },
                "ports": [
                    { "name": "udp", "protocol": "UDP", "port": 30300, "targetPort": 30300, "nodePort": 30300 },
                    { "name": "tcp", "protocol": "TCP", "port": 30300, "targetPort": "media", "nodePort": 30300 }
                ]
            }
        }));
        let cached = CachedService::new(&per_pod);
        assert_eq!(cached.service(), per_pod);
        assert_eq!(cached.controller_uid(), Some("set-uid"));
        assert_eq!(cached.controlling_statefulset(), Some("jvb"));
        assert_eq!(cached.label("service-per-pod/statefulset"), Some("jvb"));
        assert_eq!(cached.node_ports().collect::<Vec<_>>(), [30300, 30300]);

        // Absent and empty stay apart: a plan may compare them.
        let bare =
            service(json!({ "metadata": { "name": "orphan", "labels": {} }, "spec": { "selector": {} } }));
        let cached = CachedService::new(&bare);
        assert_eq!(cached.service(), bare);
        assert_eq!(cached.controller_uid(), None);
        assert_eq!(cached.node_ports().count(), 0);
        let empty = Service::default();
        assert_eq!(CachedService::new(&empty).service(), empty);
    }

    #[test]
    fn a_full_service_comes_back_as_slim_service_leaves_it() {
        let full = service(json!({
            "metadata": {
                "name": "jvb-0", "namespace": "jitsi", "uid": "svc-uid", "resourceVersion": "42",
                "annotations": { "note": "dropped" }, "generation": 3,
                "managedFields": [{ "manager": "service-per-pod", "operation": "Update" }],
                "labels": { "service-per-pod/statefulset": "jvb" }
            },
            "spec": {
                "type": "NodePort", "clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"],
                "sessionAffinity": "None", "ports": [{ "protocol": "UDP", "port": 30300, "nodePort": 30300 }]
            },
            "status": { "loadBalancer": {} }
        }));
        let mut slim = full.clone();
        crate::desired::slim_service(&mut slim);
        assert_eq!(CachedService::new(&full).service(), slim);
    }
}
