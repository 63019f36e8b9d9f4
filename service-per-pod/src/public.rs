//! `LoadBalancer` mode (`service-per-pod/expose: LoadBalancer`): one Service `<statefulset>-public` of
//! type LoadBalancer, without selector, with a port `base + i` per wanted ordinal, and one EndpointSlice
//! per pod whose only endpoint is that pod, on a port of the same name. kube-proxy sends each port to the
//! endpoints whose slice carries that port name: exactly one pod. Pure: manifests and comparisons.
//!
//! The same ordinals get a port as in NodePort mode (replicas ∪ existing pods, grants and conflicts
//! settled by [`crate::desired::plan`]); each port also carries the node port `base + i`, so the
//! controller's port accounting is the same in both modes and the bridge is reachable on its node port
//! too. `externalTrafficPolicy: Cluster`: a cloud load balancer health-checks nodes per Service, not per
//! port, so with `Local` it would send a port's traffic to nodes without that bridge.

use serde_json::{Value, json};

use crate::annotations::{Protocol, PublicService};
use crate::desired::{DesiredService, MANAGED_BY_LABEL, MANAGED_BY_VALUE, STATEFULSET_LABEL, SetKey};

/// The label every EndpointSlice carries for its Service; kube-proxy joins them by it.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// Who manages a slice: the EndpointSlice controller leaves slices managed by others alone.
pub const SLICE_MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
pub const SLICE_MANAGED_BY_VALUE: &str = "service-per-pod";
/// The slices this controller watches: its own.
pub const SLICE_SELECTOR: &str = "endpointslice.kubernetes.io/managed-by=service-per-pod";

/// The one Service of a StatefulSet in `LoadBalancer` mode.
pub fn service_name(set_name: &str, configured: Option<&str>) -> String {
    configured.map_or_else(|| format!("{set_name}-public"), str::to_owned)
}

/// A port's name is its ordinal (`3`), with the protocol when the StatefulSet has several (`3-udp`).
pub fn port_name(ordinal: u32, protocol: Protocol, several: bool) -> String {
    if several {
        format!("{ordinal}-{}", protocol.port_name())
    } else {
        ordinal.to_string()
    }
}

/// On the Service: the keys of the annotations carried from the StatefulSet, comma-separated, so that one
/// the operator removes is removed — and none another controller (the cloud's) wrote is ever touched.
pub const CARRIED_ANNOTATIONS: &str = "service-per-pod/carried-annotations";

/// The annotations the Service should carry: the operator's, the list of their keys, and — as `null`, which
/// a merge patch removes — those it carried before (`previously`: the list found on it) but no longer.
fn annotations_of(spec: &PublicService, previously: Option<&str>) -> serde_json::Map<String, Value> {
    let mut annotations: serde_json::Map<String, Value> = spec
        .annotations
        .iter()
        .map(|(key, value)| (key.clone(), json!(value)))
        .collect();
    for gone in previously
        .into_iter()
        .flat_map(|list| list.split(','))
        .filter(|key| !key.is_empty() && !spec.annotations.contains_key(*key))
        // Only what we could have carried: the list is on an object others may write to.
        .filter(|key| crate::annotations::is_label_key(key) && !key.starts_with("service-per-pod/"))
    {
        annotations.insert(gone.to_owned(), Value::Null);
    }
    let keys: Vec<&str> = spec.annotations.keys().map(String::as_str).collect();
    annotations.insert(CARRIED_ANNOTATIONS.to_owned(), json!(keys.join(",")));
    annotations
}

/// Of a Service's annotations, those this controller carried onto it and their list; `None` when it
/// carried none (every per-pod Service): what the caches keep.
pub fn carried_only(
    annotations: Option<&std::collections::BTreeMap<String, String>>,
) -> Option<std::collections::BTreeMap<String, String>> {
    let annotations = annotations?;
    let list = annotations.get(CARRIED_ANNOTATIONS)?;
    Some(
        annotations
            .iter()
            .filter(|(key, _)| *key == CARRIED_ANNOTATIONS || list.split(',').any(|carried| carried == *key))
            .map(|(key, value)| (key.clone(), value.clone()))
            .collect(),
    )
}

/// Why the Service keeps a class other than the one asked for, when it does.
pub fn class_kept(service: &str, wanted: Option<&str>, actual: Option<&str>) -> Option<String> {
    (wanted != actual).then(|| {
        format!(
            "the Service {service} keeps loadBalancerClass {}: the StatefulSet asks for {}, and Kubernetes does not let \
             the class of an existing Service change. Replace it as docs/deploying.md says (\"Changing the load \
             balancer class\"); its ports and annotations are still kept up to date",
            actual.unwrap_or("(none)"),
            wanted.unwrap_or("(none)")
        )
    })
}

/// The EndpointSlice of one pod: `<service>-<ordinal>`.
pub fn slice_name(service: &str, ordinal: u32) -> String {
    format!("{service}-{ordinal}")
}

/// Where a pod is reached, and in what state: the one endpoint of its slice.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub ip: String,
    pub node: Option<String>,
    /// Ready and not terminating: new traffic goes here.
    pub ready: bool,
    /// Ready, terminating or not: a draining bridge keeps serving its calls.
    pub serving: bool,
    pub terminating: bool,
}

fn ports_of(wanted: &DesiredService) -> Vec<Value> {
    let several = wanted.protocols.len() > 1;
    wanted
        .protocols
        .iter()
        .map(|protocol| {
            json!({
                "name": port_name(wanted.ordinal, *protocol, several),
                "protocol": protocol.as_str(),
                "port": wanted.port,
            })
        })
        .collect()
}

/// The Service as created and patched: exactly the fields this controller owns. Every pod that exists is
/// a second owner, so the Service outlives a deleted StatefulSet while its bridges drain.
/// `kept`: port entries carried over as they are (those of ordinals the planner refuses keep what they
/// have). `existing`: the Service as it is, when it is — its list of carried annotations, and its class,
/// which is kept when it differs (the API server refuses a change).
pub fn service_manifest(
    name: &str,
    set: &SetKey,
    owner_uid: &str,
    spec: &PublicService,
    wanted: &[DesiredService],
    kept: &[Value],
    existing: Option<&Value>,
) -> Value {
    let mut ports: Vec<Value> = wanted
        .iter()
        .flat_map(|service| {
            ports_of(service).into_iter().map(move |mut port| {
                port["targetPort"] = json!(service.port);
                if spec.node_ports {
                    port["nodePort"] = json!(service.port);
                }
                port
            })
        })
        .collect();
    ports.extend(kept.iter().cloned());
    // In a stable order, so that an unchanged set of ports is an unchanged list.
    ports.sort_by_key(|port| port["port"].as_u64().unwrap_or(0) * 4 + u64::from(port["protocol"] == "TCP"));
    let mut owners = vec![json!({
        "apiVersion": "apps/v1", "kind": "StatefulSet", "name": set.name, "uid": owner_uid, "controller": true,
    })];
    owners.extend(wanted.iter().filter_map(|service| service.pod.as_ref()).map(|pod| {
        json!({ "apiVersion": "v1", "kind": "Pod", "name": pod.name, "uid": pod.uid, "controller": false })
    }));
    let previously =
        existing.and_then(|service| service["metadata"]["annotations"][CARRIED_ANNOTATIONS].as_str());
    let mut manifest = json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": name,
            "namespace": set.namespace,
            "labels": { MANAGED_BY_LABEL: MANAGED_BY_VALUE, STATEFULSET_LABEL: set.name },
            "annotations": annotations_of(spec, previously),
            "ownerReferences": owners,
        },
        "spec": {
            "type": "LoadBalancer",
            "externalTrafficPolicy": "Cluster",
            "allocateLoadBalancerNodePorts": spec.node_ports,
            "ports": ports,
        },
    });
    // Set at creation only: the API server refuses any change of it on an existing LoadBalancer Service
    // (from none to one too), so whatever it has stays, and the reconciler says so (`class_kept`).
    if let (None, Some(class)) = (existing, spec.class.as_deref()) {
        manifest["spec"]["loadBalancerClass"] = json!(class);
    }
    manifest
}

/// The EndpointSlice of one pod, owned by the Service: its one endpoint on its port(s).
pub fn slice_manifest(
    service: &str,
    service_uid: &str,
    set: &SetKey,
    wanted: &DesiredService,
    endpoint: &Endpoint,
) -> Value {
    let mut address = json!({
        "addresses": [endpoint.ip],
        "conditions": {
            "ready": endpoint.ready,
            "serving": endpoint.serving,
            "terminating": endpoint.terminating,
        },
    });
    if let Some(node) = &endpoint.node {
        address["nodeName"] = json!(node);
    }
    if let Some(pod) = &wanted.pod {
        address["targetRef"] =
            json!({ "kind": "Pod", "namespace": set.namespace, "name": pod.name, "uid": pod.uid });
    }
    json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": slice_name(service, wanted.ordinal),
            "namespace": set.namespace,
            "labels": {
                SERVICE_NAME_LABEL: service,
                SLICE_MANAGED_BY_LABEL: SLICE_MANAGED_BY_VALUE,
                STATEFULSET_LABEL: set.name,
            },
            "ownerReferences": [{
                "apiVersion": "v1", "kind": "Service", "name": service, "uid": service_uid, "controller": true,
            }],
        },
        "addressType": if endpoint.ip.contains(':') { "IPv6" } else { "IPv4" },
        "endpoints": [address],
        "ports": ports_of(wanted),
    })
}

/// Whether `actual` carries every field of `wanted` (a manifest above): objects may hold more keys
/// (defaults, other managers' labels), lists must match element for element. Identity fields are left
/// out of the comparison.
pub fn is_up_to_date(wanted: &Value, actual: &Value) -> bool {
    let mut wanted = wanted.clone();
    if let Some(metadata) = wanted.get_mut("metadata").and_then(Value::as_object_mut) {
        metadata.remove("name");
        metadata.remove("namespace");
    }
    contains(actual, &wanted)
}

/// A `null` in `wanted` (a key a merge patch removes) wants the key absent.
fn contains(actual: &Value, wanted: &Value) -> bool {
    match (actual, wanted) {
        (Value::Object(actual), Value::Object(wanted)) => wanted.iter().all(|(key, value)| match value {
            Value::Null => actual.get(key).is_none_or(Value::is_null),
            _ => actual.get(key).is_some_and(|found| contains(found, value)),
        }),
        (Value::Array(actual), Value::Array(wanted)) => {
            actual.len() == wanted.len() && actual.iter().zip(wanted).all(|(a, w)| contains(a, w))
        }
        (actual, wanted) => actual == wanted,
    }
}

/// The merge patch that repairs an object we control into `wanted`: our fields (lists replaced whole),
/// bound to the UID we looked at so it never lands on another object that took the name meanwhile —
/// and, with `version`, to the resourceVersion too (the API server then fails it on a concurrent write
/// instead of retrying it internally).
pub fn repair_patch(wanted: &Value, actual_uid: Option<&str>, version: Option<&str>) -> Value {
    let mut patch = wanted.clone();
    if let Some(object) = patch.as_object_mut() {
        object.remove("apiVersion");
        object.remove("kind");
    }
    if let Some(metadata) = patch.get_mut("metadata").and_then(Value::as_object_mut) {
        metadata.remove("name");
        metadata.remove("namespace");
        metadata.insert("uid".to_owned(), json!(actual_uid));
        if let Some(version) = version {
            metadata.insert("resourceVersion".to_owned(), json!(version));
        }
    }
    patch
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::PodOwner;

    fn set() -> SetKey {
        SetKey {
            namespace: "jitsi".to_owned(),
            name: "shard-0-jvb".to_owned(),
        }
    }

    fn wanted(ordinal: u32, protocols: &[Protocol], pod: bool) -> DesiredService {
        DesiredService {
            name: format!("shard-0-jvb-{ordinal}"),
            ordinal,
            port: 30300 + u16::try_from(ordinal).unwrap(),
            protocols: protocols.to_vec(),
            extra_selector_label: None,
            pod: pod.then(|| PodOwner {
                name: format!("shard-0-jvb-{ordinal}"),
                uid: format!("uid-{ordinal}"),
            }),
        }
    }

    #[test]
    fn one_port_per_ordinal_named_after_it_on_its_node_port_and_pods_as_owners() {
        let manifest = service_manifest(
            "shard-0-jvb-public",
            &set(),
            "set-uid",
            &PublicService::default(),
            &[
                wanted(0, &[Protocol::Udp], true),
                wanted(2, &[Protocol::Udp], false),
            ],
            &[],
            None,
        );
        assert_eq!(manifest["spec"]["type"], "LoadBalancer");
        assert_eq!(manifest["spec"]["externalTrafficPolicy"], "Cluster");
        assert!(
            manifest["spec"].get("selector").is_none(),
            "no selector: the slices are ours"
        );
        assert_eq!(
            manifest["spec"]["ports"],
            json!([
                { "name": "0", "protocol": "UDP", "port": 30300, "targetPort": 30300, "nodePort": 30300 },
                { "name": "2", "protocol": "UDP", "port": 30302, "targetPort": 30302, "nodePort": 30302 },
            ])
        );
        let owners = manifest["metadata"]["ownerReferences"].as_array().unwrap();
        assert_eq!(owners.len(), 2, "the StatefulSet and the one pod that exists");
        assert_eq!(owners[1]["uid"], "uid-0");
    }

    fn cloud_spec(annotations: &[(&str, &str)], class: Option<&str>, node_ports: bool) -> PublicService {
        PublicService {
            name: None,
            annotations: annotations
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            class: class.map(str::to_owned),
            node_ports,
        }
    }

    #[test]
    fn annotations_and_class_are_carried_and_a_removed_annotation_goes_but_no_one_elses() {
        let spec = cloud_spec(
            &[("service.beta.kubernetes.io/aws-load-balancer-type", "external")],
            Some("service.k8s.aws/nlb"),
            true,
        );
        let one = [wanted(0, &[Protocol::Udp], true)];
        let created = service_manifest("p", &set(), "u", &spec, &one, &[], None);
        assert_eq!(
            created["metadata"]["annotations"],
            json!({
                "service.beta.kubernetes.io/aws-load-balancer-type": "external",
                CARRIED_ANNOTATIONS: "service.beta.kubernetes.io/aws-load-balancer-type",
            })
        );
        assert_eq!(created["spec"]["loadBalancerClass"], "service.k8s.aws/nlb");
        assert_eq!(created["spec"]["allocateLoadBalancerNodePorts"], true);

        // As the cloud left it: its own annotation, its status, the class; then the operator drops ours.
        let mut existing = created.clone();
        existing["metadata"]["annotations"]["cloud.example/lb-id"] = json!("lb-123");
        existing["status"] = json!({ "loadBalancer": { "ingress": [{ "ip": "203.0.113.7" }] } });
        assert!(is_up_to_date(
            &service_manifest("p", &set(), "u", &spec, &one, &[], Some(&existing)),
            &existing
        ));
        let dropped = cloud_spec(&[], Some("service.k8s.aws/nlb"), true);
        let wanted = service_manifest("p", &set(), "u", &dropped, &one, &[], Some(&existing));
        assert!(!is_up_to_date(&wanted, &existing));
        let patch = repair_patch(&wanted, Some("uid"), None);
        assert_eq!(
            patch["metadata"]["annotations"],
            json!({
                "service.beta.kubernetes.io/aws-load-balancer-type": null,
                CARRIED_ANNOTATIONS: "",
            }),
            "ours removed, the cloud's untouched"
        );
        assert!(
            patch["spec"].get("loadBalancerClass").is_none(),
            "never patched: immutable"
        );
    }

    #[test]
    fn a_changed_class_is_kept_and_said() {
        assert_eq!(class_kept("p", Some("a.io/x"), Some("a.io/x")), None);
        let said = class_kept("p", Some("b.io/y"), Some("a.io/x")).unwrap();
        assert!(
            said.starts_with("the Service p keeps loadBalancerClass a.io/x: the StatefulSet asks for b.io/y")
        );
        assert!(
            class_kept("p", Some("b.io/y"), None)
                .unwrap()
                .contains("keeps loadBalancerClass (none)")
        );
    }

    #[test]
    fn without_node_ports_the_ports_carry_none() {
        let spec = cloud_spec(&[], None, false);
        let manifest = service_manifest(
            "p",
            &set(),
            "u",
            &spec,
            &[wanted(1, &[Protocol::Udp], true)],
            &[],
            None,
        );
        assert_eq!(manifest["spec"]["allocateLoadBalancerNodePorts"], false);
        assert_eq!(
            manifest["spec"]["ports"],
            json!([{ "name": "1", "protocol": "UDP", "port": 30301, "targetPort": 30301 }])
        );
        assert!(manifest["spec"].get("loadBalancerClass").is_none());
    }

    #[test]
    fn several_protocols_name_their_ports_apart() {
        let manifest = service_manifest(
            "p",
            &set(),
            "u",
            &PublicService::default(),
            &[wanted(4, &[Protocol::Udp, Protocol::Tcp], false)],
            &[],
            None,
        );
        let names: Vec<&str> = manifest["spec"]["ports"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["4-udp", "4-tcp"]);
    }

    #[test]
    fn a_draining_pod_stays_serving_and_terminating_in_its_slice() {
        let endpoint = Endpoint {
            ip: "10.244.0.9".to_owned(),
            node: Some("node-a".to_owned()),
            ready: false,
            serving: true,
            terminating: true,
        };
        let slice = slice_manifest(
            "p",
            "svc-uid",
            &set(),
            &wanted(2, &[Protocol::Udp], true),
            &endpoint,
        );
        assert_eq!(slice["metadata"]["name"], "p-2");
        assert_eq!(slice["metadata"]["labels"][SERVICE_NAME_LABEL], "p");
        assert_eq!(
            slice["metadata"]["labels"][SLICE_MANAGED_BY_LABEL],
            "service-per-pod"
        );
        assert_eq!(slice["addressType"], "IPv4");
        assert_eq!(
            slice["endpoints"][0]["conditions"],
            json!({ "ready": false, "serving": true, "terminating": true })
        );
        assert_eq!(
            slice["ports"],
            json!([{ "name": "2", "protocol": "UDP", "port": 30302 }])
        );
    }

    #[test]
    fn up_to_date_ignores_defaults_and_others_fields_but_not_a_changed_list() {
        let wanted = service_manifest(
            "p",
            &set(),
            "u",
            &PublicService::default(),
            &[wanted(0, &[Protocol::Udp], false)],
            &[],
            None,
        );
        let mut actual = wanted.clone();
        actual["spec"]["clusterIP"] = json!("10.96.0.7");
        actual["metadata"]["labels"]["team"] = json!("media");
        actual["metadata"]["ownerReferences"][0]["blockOwnerDeletion"] = json!(true);
        assert!(is_up_to_date(&wanted, &actual));
        actual["spec"]["ports"]
            .as_array_mut()
            .unwrap()
            .push(json!({ "name": "9", "protocol": "UDP", "port": 30309 }));
        assert!(!is_up_to_date(&wanted, &actual), "a port too many");
        let patch = repair_patch(&wanted, Some("abc"), None);
        assert_eq!(patch["metadata"]["uid"], "abc");
        assert!(patch["metadata"].get("name").is_none() && patch.get("kind").is_none());
    }
}
