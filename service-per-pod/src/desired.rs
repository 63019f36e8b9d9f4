//! What Services a StatefulSet should have: pure functions of the StatefulSet, its pods, the other
//! StatefulSets' claims, the administrator's port grants and the Services that exist. No client, no clock.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Service, ServiceSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::{Value, json};

use crate::annotations::{DEFAULT_LABEL, OptIn, Protocol};
use crate::grants::Grants;
use crate::ordinals::Ordinals;

pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY_VALUE: &str = "service-per-pod";
pub const STATEFULSET_LABEL: &str = "service-per-pod/statefulset";
/// The label selector of every Service this controller manages.
pub const MANAGED_SELECTOR: &str = "app.kubernetes.io/managed-by=service-per-pod";

pub use daemon_kit::flags::NodePortRange;

/// A StatefulSet's namespace and name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SetKey {
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for SetKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// A StatefulSet as the planner sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SetView {
    pub key: SetKey,
    pub uid: String,
    pub opt_in: OptIn,
    /// `spec.replicas`, which may be anything up to 2^31-1.
    pub replicas: u32,
    /// `spec.ordinals.start`: the replicas are ordinals `start..start + replicas`.
    pub start: u32,
    /// The StatefulSet is being deleted: only its existing pods are planned, not `spec.replicas`.
    pub deleting: bool,
    /// Creation time (seconds since the epoch): older claims win a contested port.
    pub created: i64,
    /// Its existing pods (Terminating ones included), by ordinal; shared with the watch index.
    pub pods: Arc<BTreeMap<u32, PodView>>,
}

impl SetView {
    /// The ordinals `spec.replicas` asks for (none while the StatefulSet is being deleted).
    pub fn replica_ordinals(&self) -> Ordinals {
        if self.deleting {
            Ordinals::new()
        } else {
            Ordinals::counted(self.start, self.replicas)
        }
    }

    /// How many ordinals `spec.replicas` asks for are still held by a terminating pod: a bridge that
    /// drains at an ordinal the StatefulSet wants again (the count went up during its drain). The
    /// StatefulSet recreates such an ordinal only once the old pod is gone, so an autoscaler that wants
    /// that much serving capacity must ask for one more replica per held ordinal.
    pub fn ordinals_held_by_terminating_pods(&self) -> usize {
        let wanted = self.replica_ordinals();
        self.pods
            .iter()
            .filter(|(ordinal, pod)| pod.terminating && wanted.contains(**ordinal))
            .count()
    }
}

/// One existing pod of a StatefulSet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodView {
    pub name: String,
    pub uid: String,
    /// The base port the pod was created with (its own `service-per-pod/base-port`): what its bridge
    /// listens on, whatever the StatefulSet says now.
    pub base_port: Option<u16>,
    /// Its address and state, once it has an IP: its EndpointSlice in `LoadBalancer` mode.
    pub endpoint: Option<crate::public::Endpoint>,
    /// Being deleted (a bridge draining in its preStop hook).
    pub terminating: bool,
}

/// What bounds every plan: the API server's node-port range (or, for a Service without node ports, the
/// range such ports may take), and the ports the administrator granted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    pub range: NodePortRange,
    /// The ports of a `LoadBalancer` Service without node ports (`service-per-pod/node-ports: "false"`):
    /// its load balancer sends to the pods directly, so the node-port range does not bound them.
    pub direct_range: NodePortRange,
    pub grants: Grants,
}

/// Unprivileged ports: a bridge binds its own port in its pod, and the restricted Pod Security profile
/// lets it bind nothing lower.
pub const DEFAULT_DIRECT_RANGE: NodePortRange = NodePortRange {
    first: 1024,
    last: 65535,
};

impl Limits {
    /// The range `set`'s ports must lie in. Grants and conflicts apply the same in either: a port is one
    /// StatefulSet's whatever its mode, so switching modes never lands on another's port.
    pub fn range_for(&self, set: &SetView) -> NodePortRange {
        if set.opt_in.expose.uses_node_ports() {
            self.range
        } else {
            self.direct_range
        }
    }
}

pub fn port_for(base_port: u16, ordinal: u32) -> Option<u16> {
    u16::try_from(u32::from(base_port).checked_add(ordinal)?).ok()
}

pub fn service_name(set_name: &str, ordinal: u32) -> String {
    format!("{set_name}-{ordinal}")
}

/// The ordinal a name of the form `<set>-<ordinal>` carries (Services and pods are named alike).
pub fn ordinal_in_name(set_name: &str, name: &str) -> Option<u32> {
    let digits = name.strip_prefix(set_name)?.strip_prefix('-')?;
    if digits.is_empty()
        || !digits.bytes().all(|b| b.is_ascii_digit())
        || (digits.len() > 1 && digits.starts_with('0'))
    {
        return None;
    }
    digits.parse().ok()
}

/// Service names must be DNS-1035 labels; a StatefulSet name may be a longer DNS subdomain with dots.
pub fn is_dns1035_label(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && name.bytes().next().is_some_and(|b| b.is_ascii_lowercase())
        && !name.ends_with('-')
}

/// The ordinals whose Service name `<set>-<ordinal>` is a valid DNS-1035 label (a range from 0).
fn nameable(set_name: &str) -> Option<std::ops::RangeInclusive<u32>> {
    if !is_dns1035_label(&service_name(set_name, 0)) {
        return None;
    }
    // `<set>-` leaves this many characters for the digits.
    let digits = 63usize.saturating_sub(set_name.len() + 1);
    if digits >= 10 {
        return Some(0..=u32::MAX);
    }
    Some(0..=10u32.pow(u32::try_from(digits).unwrap_or(9)) - 1)
}

/// The ordinals `i` for which `base + i` lies in `range` (a range; empty as `None`).
fn in_range_window(base: u16, range: NodePortRange) -> Option<std::ops::RangeInclusive<u32>> {
    if base > range.last {
        return None;
    }
    Some(u32::from(range.first.saturating_sub(base))..=u32::from(range.last - base))
}

/// The Service an ordinal would get, before grants and conflicts.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Candidate {
    ordinal: u32,
    port: u16,
}

/// Where a StatefulSet's wanted ordinals stand before grants and conflicts: at most one candidate per
/// port of the node-port range, whatever `spec.replicas` says; the rest as ranges.
#[derive(Clone, Debug, Default)]
struct Candidates {
    inside: Vec<Candidate>,
    out_of_range: Ordinals,
    unnameable: Ordinals,
    /// Ordinals whose port another ordinal of the same StatefulSet already has (a pod created under an
    /// older base port).
    collisions: Ordinals,
}

fn candidates(set: &SetView, range: NodePortRange) -> Candidates {
    let mut result = Candidates::default();
    let nameable = nameable(&set.key.name);
    let mut taken = BTreeSet::new();
    // Existing pods first: a pod's port comes from the pod itself (what its bridge listens on), and it
    // keeps it even when a replica without a pod would map to the same port under a newer base.
    for (ordinal, pod) in set.pods.iter() {
        if !nameable.as_ref().is_some_and(|names| names.contains(ordinal)) {
            result.unnameable.insert(*ordinal);
            continue;
        }
        match port_for(pod.base_port.unwrap_or(set.opt_in.base_port), *ordinal) {
            Some(port) if range.contains(port) && taken.insert(port) => result.inside.push(Candidate {
                ordinal: *ordinal,
                port,
            }),
            Some(port) if range.contains(port) => result.collisions.insert(*ordinal),
            _ => result.out_of_range.insert(*ordinal),
        }
    }
    let mut from_replicas = set.replica_ordinals();
    for ordinal in set.pods.keys() {
        from_replicas = from_replicas.outside(*ordinal..=*ordinal);
    }
    let (from_replicas, unnameable) = match &nameable {
        Some(names) => (
            from_replicas.within(names.clone()),
            from_replicas.outside(names.clone()),
        ),
        None => (Ordinals::new(), from_replicas),
    };
    for range in unnameable.ranges() {
        result.unnameable.insert_range(range.clone());
    }
    match in_range_window(set.opt_in.base_port, range) {
        Some(window) => {
            for range in from_replicas.outside(window.clone()).ranges() {
                result.out_of_range.insert_range(range.clone());
            }
            for ordinal in from_replicas.within(window).iter() {
                match port_for(set.opt_in.base_port, ordinal) {
                    Some(port) if taken.insert(port) => result.inside.push(Candidate { ordinal, port }),
                    _ => result.collisions.insert(ordinal),
                }
            }
        }
        None => {
            for range in from_replicas.ranges() {
                result.out_of_range.insert_range(range.clone());
            }
        }
    }
    result.inside.sort_by_key(|candidate| candidate.ordinal);
    result
}

/// The node ports a StatefulSet claims: those of its wanted ordinals, and of its reserved block, that
/// lie in the range and are granted to its namespace. At most the size of the range.
pub fn claimed_ports(set: &SetView, limits: &Limits) -> BTreeSet<u16> {
    let granted = |port: &u16| limits.grants.allows(&set.key.namespace, *port);
    let mut ports: BTreeSet<u16> = candidates(set, limits.range_for(set))
        .inside
        .iter()
        .map(|candidate| candidate.port)
        .filter(granted)
        .collect();
    if let (Some(reserve), Some(window)) = (
        set.opt_in.reserve,
        in_range_window(set.opt_in.base_port, limits.range_for(set)),
    ) {
        let reserved = Ordinals::counted(set.start, reserve).within(window);
        ports.extend(
            reserved
                .iter()
                .filter_map(|ordinal| port_for(set.opt_in.base_port, ordinal))
                .filter(granted),
        );
    }
    ports
}

/// One StatefulSet's claim on node ports, for settling conflicts between StatefulSets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claim {
    pub set: SetKey,
    /// The StatefulSet's creation time (seconds since the epoch): older claims win.
    pub created: i64,
    pub ports: BTreeSet<u16>,
}

/// For every port claimed by at least one StatefulSet, the one that gets it: the StatefulSet whose
/// Service already holds it, else the oldest claimant (ties broken by namespace/name, so every
/// replica of the controller decides alike).
pub fn port_winners(claims: &[Claim], held: &BTreeMap<u16, SetKey>) -> BTreeMap<u16, SetKey> {
    let mut oldest: BTreeMap<u16, (i64, &SetKey)> = BTreeMap::new();
    for claim in claims {
        for port in &claim.ports {
            let candidate = (claim.created, &claim.set);
            oldest
                .entry(*port)
                .and_modify(|best| {
                    if candidate < *best {
                        *best = candidate;
                    }
                })
                .or_insert(candidate);
        }
    }
    oldest
        .into_iter()
        .map(|(port, (_, set))| (port, held.get(&port).unwrap_or(set).clone()))
        .collect()
}

/// Why ordinals get no Service: one of each kind per StatefulSet, their ordinals as ranges, so a
/// StatefulSet of two billion replicas is one message, not two billion.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// base + ordinal is outside the node-port range (or above 65535).
    OutOfRange {
        ordinals: Ordinals,
        base: u16,
        range: NodePortRange,
        /// Which range: the node-port range, or that of a Service without node ports.
        node_ports: bool,
    },
    /// The ports are in range but not granted to the StatefulSet's namespace.
    NotGranted {
        ordinals: Ordinals,
        ports: Ordinals,
        namespace: String,
        granted: String,
    },
    /// Other StatefulSets hold or claimed these ports first.
    Conflict {
        ordinals: Ordinals,
        ports: Ordinals,
        holders: BTreeSet<SetKey>,
    },
    /// `<statefulset>-<ordinal>` is not a valid Service name.
    InvalidName { ordinals: Ordinals, set: String },
}

impl Refusal {
    /// A short CamelCase reason for Events and metric labels.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::OutOfRange { .. } => "PortOutOfRange",
            Refusal::NotGranted { .. } => "PortNotGranted",
            Refusal::Conflict { .. } => "PortConflict",
            Refusal::InvalidName { .. } => "InvalidServiceName",
        }
    }

    pub fn ordinals(&self) -> &Ordinals {
        match self {
            Refusal::OutOfRange { ordinals, .. }
            | Refusal::NotGranted { ordinals, .. }
            | Refusal::Conflict { ordinals, .. }
            | Refusal::InvalidName { ordinals, .. } => ordinals,
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // "pod ordinal 2 gets", "pod ordinals 2–5 get".
        let which = |ordinals: &Ordinals| {
            if ordinals.len() == 1 {
                format!("pod ordinal {ordinals} gets")
            } else {
                format!("pod ordinals {ordinals} get")
            }
        };
        let node_ports = |ports: &Ordinals| {
            if ports.len() == 1 {
                format!("node port {ports}")
            } else {
                format!("node ports {ports}")
            }
        };
        match self {
            Refusal::OutOfRange {
                ordinals,
                base,
                range,
                node_ports,
            } => write!(
                f,
                "{} no Service: base port {base} + ordinal is outside the {} {range}",
                which(ordinals),
                if *node_ports {
                    "node-port range"
                } else {
                    "port range of a Service without node ports"
                }
            ),
            Refusal::NotGranted {
                ordinals,
                ports,
                namespace,
                granted,
            } => write!(
                f,
                "{} no Service: {} not granted to namespace {namespace} (granted: {granted}; an administrator grants ports with the controller's --port-grants)",
                which(ordinals),
                if ports.len() == 1 {
                    format!("{} is", node_ports(ports))
                } else {
                    format!("{} are", node_ports(ports))
                }
            ),
            Refusal::Conflict {
                ordinals,
                ports,
                holders,
            } => {
                let holders: Vec<String> = holders.iter().map(ToString::to_string).collect();
                let (verb, them) = if ports.len() == 1 {
                    ("belongs", "it")
                } else {
                    ("belong", "them")
                };
                write!(
                    f,
                    "{} no Service: {} {verb} to StatefulSet {}, which claimed {them} first",
                    which(ordinals),
                    node_ports(ports),
                    holders.join(", ")
                )
            }
            Refusal::InvalidName { ordinals, set } => write!(
                f,
                "{} no Service: {set}-<ordinal> is not a valid Service name (a DNS-1035 label of at most 63 characters)",
                which(ordinals)
            ),
        }
    }
}

/// A Service the StatefulSet should have.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DesiredService {
    pub name: String,
    pub ordinal: u32,
    pub port: u16,
    pub protocols: Vec<Protocol>,
    /// The pod label the Service selects on besides the pod name, when the StatefulSet names one.
    pub extra_selector_label: Option<String>,
    /// The pod, once it exists: the Service's second owner, so it outlives its StatefulSet while the
    /// pod drains.
    pub pod: Option<PodOwner>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodOwner {
    pub name: String,
    pub uid: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub services: Vec<DesiredService>,
    pub refusals: Vec<Refusal>,
    /// Existing pods whose base port differs from the StatefulSet's: they keep theirs (as their bridges
    /// do) until they are replaced.
    pub kept_base_ports: Option<(Ordinals, u16)>,
}

impl Plan {
    /// Every wanted ordinal that got no Service.
    pub fn refused(&self) -> Ordinals {
        let mut all = Ordinals::new();
        for refusal in &self.refusals {
            for range in refusal.ordinals().ranges() {
                all.insert_range(range.clone());
            }
        }
        all
    }
}

/// The ordinals that need a Service: every replica the spec asks for (`spec.ordinals.start` on; none once
/// the StatefulSet is being deleted) and every pod that still exists (Terminating ones included) — a
/// draining bridge keeps its port until it is really gone.
pub fn wanted(set: &SetView) -> Ordinals {
    let mut ordinals = set.replica_ordinals();
    for ordinal in set.pods.keys() {
        ordinals.insert(*ordinal);
    }
    ordinals
}

/// What Services `set` should have, given the limits and who won each contested port. Work and memory
/// are bounded by the node-port range and the pods that exist, never by `spec.replicas`.
pub fn plan(set: &SetView, limits: &Limits, winners: &BTreeMap<u16, SetKey>) -> Plan {
    let Candidates {
        inside,
        out_of_range,
        unnameable,
        collisions,
    } = candidates(set, limits.range_for(set));
    let mut plan = Plan::default();
    let mut not_granted = Ordinals::new();
    let mut not_granted_ports = Ordinals::new();
    let mut conflict_ports: Ordinals = collisions
        .iter()
        .filter_map(|ordinal| port_for(set.opt_in.base_port, ordinal).map(u32::from))
        .collect();
    let mut conflicts = collisions;
    let mut holders = BTreeSet::new();
    if !conflicts.is_empty() {
        holders.insert(set.key.clone());
    }
    let extra_selector_label =
        (set.opt_in.selector_label != DEFAULT_LABEL).then(|| set.opt_in.selector_label.clone());
    for Candidate { ordinal, port } in inside {
        if !limits.grants.allows(&set.key.namespace, port) {
            not_granted.insert(ordinal);
            not_granted_ports.insert(u32::from(port));
            continue;
        }
        if let Some(holder) = winners.get(&port).filter(|holder| **holder != set.key) {
            conflicts.insert(ordinal);
            conflict_ports.insert(u32::from(port));
            holders.insert(holder.clone());
            continue;
        }
        plan.services.push(DesiredService {
            name: service_name(&set.key.name, ordinal),
            ordinal,
            port,
            protocols: set.opt_in.protocols.clone(),
            extra_selector_label: extra_selector_label.clone(),
            pod: set.pods.get(&ordinal).map(|pod| PodOwner {
                name: pod.name.clone(),
                uid: pod.uid.clone(),
            }),
        });
    }
    if !out_of_range.is_empty() {
        plan.refusals.push(Refusal::OutOfRange {
            ordinals: out_of_range,
            base: set.opt_in.base_port,
            range: limits.range_for(set),
            node_ports: set.opt_in.expose.uses_node_ports(),
        });
    }
    if !not_granted.is_empty() {
        plan.refusals.push(Refusal::NotGranted {
            ordinals: not_granted,
            ports: not_granted_ports,
            namespace: set.key.namespace.clone(),
            granted: limits.grants.describe(&set.key.namespace),
        });
    }
    if !conflicts.is_empty() {
        plan.refusals.push(Refusal::Conflict {
            ordinals: conflicts,
            ports: conflict_ports,
            holders,
        });
    }
    if !unnameable.is_empty() {
        plan.refusals.push(Refusal::InvalidName {
            ordinals: unnameable,
            set: set.key.name.clone(),
        });
    }
    let kept: Ordinals = set
        .pods
        .iter()
        .filter(|(_, pod)| pod.base_port.is_some_and(|base| base != set.opt_in.base_port))
        .map(|(ordinal, _)| *ordinal)
        .collect();
    if !kept.is_empty() {
        plan.kept_base_ports = Some((kept, set.opt_in.base_port));
    }
    plan
}

/// The pod selector of a Service: the pod's name always (set by the StatefulSet controller), and the
/// StatefulSet's own label too when it names one — so the Service never selects a pod of anyone else.
pub fn selector(desired: &DesiredService) -> BTreeMap<String, String> {
    let mut selector = BTreeMap::from([(DEFAULT_LABEL.to_owned(), desired.name.clone())]);
    if let Some(label) = &desired.extra_selector_label {
        selector.insert(label.clone(), desired.name.clone());
    }
    selector
}

/// The Service as created and applied: exactly the fields this controller owns.
pub fn service_manifest(desired: &DesiredService, set: &SetKey, owner_uid: &str) -> Value {
    let ports: Vec<Value> = desired
        .protocols
        .iter()
        .map(|protocol| {
            json!({
                "name": protocol.port_name(),
                "protocol": protocol.as_str(),
                "port": desired.port,
                "targetPort": desired.port,
                "nodePort": desired.port,
            })
        })
        .collect();
    let mut owners = vec![json!({
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "name": set.name,
        "uid": owner_uid,
        "controller": true,
    })];
    if let Some(pod) = &desired.pod {
        owners.push(json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "name": pod.name,
            "uid": pod.uid,
            "controller": false,
        }));
    }
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": desired.name,
            "namespace": set.namespace,
            "labels": { MANAGED_BY_LABEL: MANAGED_BY_VALUE, STATEFULSET_LABEL: set.name },
            "ownerReferences": owners,
        },
        "spec": {
            "type": "NodePort",
            "externalTrafficPolicy": "Local",
            "publishNotReadyAddresses": true,
            "selector": selector(desired),
            "ports": ports,
        },
    })
}

/// The merge patch that repairs `actual`, a Service this StatefulSet controls, into `desired`: exactly our
/// fields (labels we set, owners, type, traffic policy, selector — keys someone added are removed —
/// and the ports list, replaced whole), bound to the UID we looked at, so it can never land on another
/// Service that took the name meanwhile. Not to its resourceVersion: the garbage collector edits our
/// Services too (it drops the owner reference of a deleted pod), and a conflicting update that moves a
/// node port leaks that port in the API server's allocator for minutes.
pub fn repair_patch(desired: &DesiredService, set: &SetKey, owner_uid: &str, actual: &Service) -> Value {
    let mut manifest = service_manifest(desired, set, owner_uid);
    let mut selector = serde_json::Map::new();
    for key in actual
        .spec
        .as_ref()
        .and_then(|spec| spec.selector.as_ref())
        .into_iter()
        .flat_map(|selector| selector.keys())
    {
        selector.insert(key.clone(), Value::Null);
    }
    for (key, value) in crate::desired::selector(desired) {
        selector.insert(key, Value::String(value));
    }
    manifest["spec"]["selector"] = Value::Object(selector);
    let metadata = &mut manifest["metadata"];
    metadata["uid"] = json!(actual.metadata.uid);
    if let Some(object) = metadata.as_object_mut() {
        object.remove("name");
        object.remove("namespace");
    }
    if let Some(object) = manifest.as_object_mut() {
        object.remove("apiVersion");
        object.remove("kind");
    }
    manifest
}

/// Keeps of a Service what the controller compares, repairs and deletes by: name, namespace, UID,
/// version, labels, owners, deletion state, the annotations it carried onto a public Service, and the
/// spec fields it sets (type, traffic policy, publishing of unready pods, selector, ports, load balancer
/// class and node-port allocation). The API server's own fields (cluster IPs, IP families, session
/// affinity, status) and others' annotations are dropped as the Service arrives in the cache: with
/// thousands of Services they were a good part of the controller's memory.
pub fn slim_service(service: &mut Service) {
    let mut metadata = std::mem::take(&mut service.metadata);
    service.metadata = ObjectMeta {
        labels: metadata.labels.take(),
        annotations: crate::public::carried_only(metadata.annotations.as_ref()),
        ..cached_identity(metadata)
    };
    service.spec = service.spec.take().map(|spec| ServiceSpec {
        type_: spec.type_,
        external_traffic_policy: spec.external_traffic_policy,
        publish_not_ready_addresses: spec.publish_not_ready_addresses,
        selector: spec.selector,
        ports: spec.ports,
        load_balancer_class: spec.load_balancer_class,
        allocate_load_balancer_node_ports: spec.allocate_load_balancer_node_ports,
        ..ServiceSpec::default()
    });
    service.status = None;
}

/// What every cached object keeps of its metadata: name, namespace, UID, version, owners and deletion
/// state. Labels and annotations are each cache's own choice.
pub fn cached_identity(metadata: ObjectMeta) -> ObjectMeta {
    ObjectMeta {
        name: metadata.name,
        namespace: metadata.namespace,
        uid: metadata.uid,
        resource_version: metadata.resource_version,
        owner_references: metadata.owner_references,
        deletion_timestamp: metadata.deletion_timestamp,
        ..ObjectMeta::default()
    }
}

/// The UID of the object that controls `service`, if any.
pub fn controller_uid(service: &Service) -> Option<&str> {
    service
        .metadata
        .owner_references
        .as_ref()?
        .iter()
        .find(|owner| owner.controller == Some(true))
        .map(|owner| owner.uid.as_str())
}

/// Whether `actual` holds exactly the node port *number* `desired` wants. A Service whose number must
/// change is replaced, not edited: its old port belonged to a bridge that is gone (a pod created under
/// another base, or a hand edit), and an update that moves a node port leaks it in the API server's
/// allocator whenever it races with another write to the Service (the garbage collector's, say).
/// Protocols added or removed keep the number (the API server allocates a number once for all its
/// protocols): those are patched in place.
pub fn node_ports_match(desired: &DesiredService, actual: &Service) -> bool {
    let found: BTreeSet<i32> = actual
        .spec
        .as_ref()
        .and_then(|spec| spec.ports.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|port| port.node_port)
        .collect();
    found == BTreeSet::from([i32::from(desired.port)])
}

/// Whether `actual` already carries every field of `desired` as we would apply it. Fields other
/// managers added (extra labels, annotations, extra ports) are theirs and do not count.
pub fn is_up_to_date(desired: &DesiredService, set: &SetKey, owner_uid: &str, actual: &Service) -> bool {
    let labels = actual.metadata.labels.as_ref();
    let label = |key: &str| labels.and_then(|labels| labels.get(key)).map(String::as_str);
    let Some(spec) = actual.spec.as_ref() else {
        return false;
    };
    let selector_ok = spec.selector.as_ref() == Some(&selector(desired));
    let pod_owner_ok = desired.pod.as_ref().is_none_or(|pod| {
        actual
            .metadata
            .owner_references
            .iter()
            .flatten()
            .any(|owner| owner.uid == pod.uid && owner.kind == "Pod")
    });
    let ports = spec.ports.as_deref().unwrap_or_default();
    let ports_ok = desired.protocols.iter().all(|protocol| {
        ports.iter().any(|port| {
            port.protocol.as_deref() == Some(protocol.as_str())
                && port.name.as_deref() == Some(protocol.port_name())
                && port.port == i32::from(desired.port)
                && port.node_port == Some(i32::from(desired.port))
                && port.target_port == Some(IntOrString::Int(i32::from(desired.port)))
        })
    });
    label(MANAGED_BY_LABEL) == Some(MANAGED_BY_VALUE)
        && label(STATEFULSET_LABEL) == Some(set.name.as_str())
        && controller_uid(actual) == Some(owner_uid)
        && pod_owner_ok
        && spec.type_.as_deref() == Some("NodePort")
        && spec.external_traffic_policy.as_deref() == Some("Local")
        && spec.publish_not_ready_addresses == Some(true)
        && selector_ok
        && ports_ok
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> SetKey {
        SetKey {
            namespace: "jitsi".to_owned(),
            name: name.to_owned(),
        }
    }

    fn opt_in(base_port: u16) -> OptIn {
        OptIn {
            expose: crate::annotations::Expose::NodePort,
            base_port,
            protocols: vec![Protocol::Udp],
            selector_label: DEFAULT_LABEL.to_owned(),
            reserve: None,
        }
    }

    fn set(name: &str, base_port: u16, replicas: u32) -> SetView {
        SetView {
            key: key(name),
            uid: format!("uid-{name}"),
            opt_in: opt_in(base_port),
            replicas,
            start: 0,
            deleting: false,
            created: 100,
            pods: Arc::default(),
        }
    }

    fn pod(set: &str, ordinal: u32, base_port: Option<u16>) -> (u32, PodView) {
        (
            ordinal,
            PodView {
                name: format!("{set}-{ordinal}"),
                uid: format!("pod-uid-{ordinal}"),
                base_port,
                endpoint: None,
                terminating: false,
            },
        )
    }

    fn limits() -> Limits {
        Limits {
            range: NodePortRange::default(),
            direct_range: DEFAULT_DIRECT_RANGE,
            grants: Grants::whole_range("jitsi", NodePortRange::default()),
        }
    }

    fn ports(plan: &Plan) -> Vec<(String, u16)> {
        plan.services.iter().map(|s| (s.name.clone(), s.port)).collect()
    }

    #[test]
    fn wanted_ordinals_keep_pods_beyond_replicas() {
        let mut view = set("jvb", 30300, 1);
        Arc::make_mut(&mut view.pods).extend([pod("jvb", 0, None), pod("jvb", 2, None)]);
        assert_eq!(wanted(&view).to_string(), "0, 2");
        assert_eq!(wanted(&set("jvb", 30300, 3)).to_string(), "0–2");
    }

    #[test]
    fn ordinals_in_names() {
        assert_eq!(ordinal_in_name("shard-0-jvb", "shard-0-jvb-12"), Some(12));
        assert_eq!(ordinal_in_name("shard-0-jvb", "shard-0-jvb-0"), Some(0));
        assert_eq!(ordinal_in_name("jvb", "jvb-01"), None);
        assert_eq!(ordinal_in_name("jvb", "jvb-x"), None);
        assert_eq!(ordinal_in_name("jvb", "jvb-"), None);
        assert_eq!(ordinal_in_name("jvb", "other-1"), None);
        assert_eq!(ordinal_in_name("jvb", "jvb-extra-1"), None);
    }

    #[test]
    fn plan_gives_each_ordinal_base_plus_ordinal() {
        let mut view = set("jvb", 30300, 2);
        Arc::make_mut(&mut view.pods).extend([pod("jvb", 0, None), pod("jvb", 4, None)]);
        let plan = plan(&view, &limits(), &BTreeMap::new());
        assert_eq!(
            ports(&plan),
            vec![
                ("jvb-0".into(), 30300),
                ("jvb-1".into(), 30301),
                ("jvb-4".into(), 30304)
            ]
        );
        assert!(plan.refusals.is_empty());
        assert_eq!(
            plan.services[0].pod.as_ref().map(|p| p.uid.as_str()),
            Some("pod-uid-0")
        );
        assert_eq!(
            plan.services[1].pod, None,
            "no pod yet: the StatefulSet is the only owner"
        );
    }

    #[test]
    fn a_huge_replica_count_is_bounded_by_the_range_and_refused_in_one_message() {
        let view = set("jvb", 30000, i32::MAX as u32);
        let started = std::time::Instant::now();
        let plan = plan(&view, &limits(), &BTreeMap::new());
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
        assert_eq!(plan.services.len(), 2768, "one Service per port of the range");
        assert_eq!(plan.refusals.len(), 1);
        assert_eq!(
            plan.refusals[0].to_string(),
            "pod ordinals 2768–2147483646 get no Service: base port 30000 + ordinal is outside the node-port range 30000-32767"
        );
        assert_eq!(claimed_ports(&view, &limits()).len(), 2768);
    }

    #[test]
    fn ordinals_out_of_range_are_one_refusal() {
        let plan = plan(&set("jvb", 32766, 4), &limits(), &BTreeMap::new());
        assert_eq!(
            ports(&plan),
            vec![("jvb-0".into(), 32766), ("jvb-1".into(), 32767)]
        );
        assert_eq!(
            plan.refusals,
            vec![Refusal::OutOfRange {
                ordinals: [2, 3].into_iter().collect(),
                base: 32766,
                range: NodePortRange::default(),
                node_ports: true,
            }]
        );
        let beyond = super::plan(&set("jvb", 65535, 2), &limits(), &BTreeMap::new());
        assert!(beyond.services.is_empty());
        assert_eq!(beyond.refusals[0].ordinals().to_string(), "0–1");
        let below = super::plan(&set("jvb", 29999, 2), &limits(), &BTreeMap::new());
        assert_eq!(ports(&below), vec![("jvb-1".into(), 30000)]);
        assert_eq!(below.refusals[0].ordinals().to_string(), "0");
    }

    #[test]
    fn without_node_ports_the_direct_range_bounds_the_ports_and_grants_still_apply() {
        let mut direct = set("jvb", 40000, 3);
        direct.opt_in.expose = crate::annotations::Expose::LoadBalancer(crate::annotations::PublicService {
            node_ports: false,
            ..Default::default()
        });
        let nothing_granted = plan(&direct, &limits(), &BTreeMap::new());
        assert!(nothing_granted.services.is_empty());
        assert_eq!(nothing_granted.refusals[0].reason(), "PortNotGranted");
        let limits = Limits {
            grants: "jitsi=30000-32767,jitsi=40000-40001".parse().unwrap(),
            ..limits()
        };
        let granted = plan(&direct, &limits, &BTreeMap::new());
        assert_eq!(
            ports(&granted),
            vec![("jvb-0".into(), 40000), ("jvb-1".into(), 40001)]
        );
        assert_eq!(granted.refusals[0].reason(), "PortNotGranted");
        // The same ports with node ports: outside the node-port range, said as such.
        let node_ports = plan(&set("jvb", 40000, 1), &limits, &BTreeMap::new());
        assert_eq!(
            node_ports.refusals[0].to_string(),
            "pod ordinal 0 gets no Service: base port 40000 + ordinal is outside the node-port range 30000-32767"
        );
        let mut below = direct.clone();
        below.opt_in.base_port = 80;
        assert_eq!(
            plan(&below, &limits, &BTreeMap::new()).refusals[0].to_string(),
            "pod ordinals 0–2 get no Service: base port 80 + ordinal is outside the port range of a Service without node ports 1024-65535"
        );
    }

    #[test]
    fn ports_not_granted_to_the_namespace_are_refused() {
        let limits = Limits {
            range: NodePortRange::default(),
            direct_range: DEFAULT_DIRECT_RANGE,
            grants: "jitsi=30300-30301".parse().unwrap(),
        };
        let plan = plan(&set("jvb", 30300, 4), &limits, &BTreeMap::new());
        assert_eq!(
            ports(&plan),
            vec![("jvb-0".into(), 30300), ("jvb-1".into(), 30301)]
        );
        assert_eq!(plan.refusals.len(), 1);
        let message = plan.refusals[0].to_string();
        assert!(
            message.starts_with("pod ordinals 2–3 get no Service"),
            "{message}"
        );
        assert!(
            message
                .contains("node ports 30302–30303 are not granted to namespace jitsi (granted: 30300-30301"),
            "{message}"
        );
        let nothing = Limits {
            range: NodePortRange::default(),
            direct_range: DEFAULT_DIRECT_RANGE,
            grants: Grants::default(),
        };
        assert!(
            super::plan(&set("jvb", 30300, 2), &nothing, &BTreeMap::new())
                .services
                .is_empty()
        );
        assert!(
            claimed_ports(&set("jvb", 30300, 2), &nothing).is_empty(),
            "no claim on what is not granted"
        );
    }

    #[test]
    fn service_names_that_are_not_dns_labels_are_refused() {
        let long = "j".repeat(61);
        let plan = plan(&set(&long, 30300, 12), &limits(), &BTreeMap::new());
        assert_eq!(
            plan.services.len(),
            10,
            "{long}-0 .. {long}-9 fit in 63 characters"
        );
        assert_eq!(plan.refusals[0].reason(), "InvalidServiceName");
        assert_eq!(plan.refusals[0].ordinals().to_string(), "10–11");
        let dotted = super::plan(&set("jvb.a", 30300, 1), &limits(), &BTreeMap::new());
        assert!(matches!(dotted.refusals[..], [Refusal::InvalidName { .. }]));
    }

    #[test]
    fn the_holder_of_a_port_keeps_it_otherwise_the_oldest_claim_wins() {
        let old = Claim {
            set: key("old"),
            created: 100,
            ports: BTreeSet::from([30300, 30301]),
        };
        let new = Claim {
            set: key("new"),
            created: 200,
            ports: BTreeSet::from([30301, 30302]),
        };
        let winners = port_winners(&[new.clone(), old.clone()], &BTreeMap::new());
        assert_eq!(winners[&30300], key("old"));
        assert_eq!(winners[&30301], key("old"));
        assert_eq!(winners[&30302], key("new"));
        let held = BTreeMap::from([(30301, key("new"))]);
        assert_eq!(port_winners(&[old, new], &held)[&30301], key("new"));
    }

    #[test]
    fn equal_ages_are_settled_by_name() {
        let a = Claim {
            set: key("a"),
            created: 5,
            ports: BTreeSet::from([30300]),
        };
        let b = Claim {
            set: key("b"),
            created: 5,
            ports: BTreeSet::from([30300]),
        };
        assert_eq!(
            port_winners(&[b.clone(), a.clone()], &BTreeMap::new())[&30300],
            key("a")
        );
        assert_eq!(port_winners(&[a, b], &BTreeMap::new())[&30300], key("a"));
    }

    #[test]
    fn lost_ports_are_one_conflict_naming_the_holders() {
        let winners = BTreeMap::from([(30301, key("other")), (30302, key("other"))]);
        let plan = plan(&set("jvb", 30300, 3), &limits(), &winners);
        assert_eq!(plan.services.len(), 1);
        assert_eq!(plan.refusals.len(), 1);
        let message = plan.refusals[0].to_string();
        assert!(
            message.starts_with("pod ordinals 1–2 get no Service"),
            "{message}"
        );
        assert!(
            message.contains("node ports 30301–30302 belong to StatefulSet jitsi/other"),
            "{message}"
        );
    }

    #[test]
    fn a_reserved_block_is_claimed_before_the_replicas_need_it() {
        let mut view = set("jvb", 30300, 2);
        view.opt_in.reserve = Some(100);
        let claimed = claimed_ports(&view, &limits());
        assert_eq!(claimed.len(), 100);
        assert!(claimed.contains(&30399) && !claimed.contains(&30400));
        let plan = plan(&view, &limits(), &BTreeMap::new());
        assert_eq!(plan.services.len(), 2, "Services for the replicas only");
    }

    #[test]
    fn an_existing_pod_keeps_the_port_it_was_created_with() {
        let mut view = set("jvb", 30400, 3);
        Arc::make_mut(&mut view.pods).extend([
            pod("jvb", 0, Some(30300)),
            pod("jvb", 1, Some(30300)),
            pod("jvb", 2, None),
        ]);
        let plan = plan(&view, &limits(), &BTreeMap::new());
        assert_eq!(
            ports(&plan),
            vec![
                ("jvb-0".into(), 30300),
                ("jvb-1".into(), 30301),
                ("jvb-2".into(), 30402)
            ]
        );
        assert_eq!(plan.kept_base_ports, Some(([0, 1].into_iter().collect(), 30400)));
        let claimed = claimed_ports(&view, &limits());
        assert_eq!(claimed, BTreeSet::from([30300, 30301, 30402]));
    }

    #[test]
    fn a_replica_never_takes_the_port_of_a_pod_created_under_another_base() {
        // Pod 5 was created with base 30295: it holds 30300, which ordinal 0 would get under base 30300.
        let mut view = set("jvb", 30300, 1);
        Arc::make_mut(&mut view.pods).extend([pod("jvb", 5, Some(30295))]);
        let plan = plan(&view, &limits(), &BTreeMap::new());
        assert_eq!(ports(&plan), vec![("jvb-5".into(), 30300)]);
        assert_eq!(plan.refusals[0].reason(), "PortConflict");
        assert_eq!(plan.refusals[0].ordinals().to_string(), "0");
    }

    #[test]
    fn the_selector_is_the_pod_name_and_a_custom_label_only_narrows_it() {
        let mut view = set("shard", 30300, 1);
        view.opt_in.selector_label = "jitsi.org/shard".into();
        let plan = plan(&view, &limits(), &BTreeMap::new());
        assert_eq!(
            selector(&plan.services[0]),
            BTreeMap::from([
                (DEFAULT_LABEL.to_owned(), "shard-0".to_owned()),
                ("jitsi.org/shard".to_owned(), "shard-0".to_owned())
            ])
        );
    }

    /// The Service of bridge `ordinal` on both protocols, its pod an owner.
    fn bridge_service(ordinal: u32, port: u16) -> DesiredService {
        DesiredService {
            name: format!("jvb-{ordinal}"),
            ordinal,
            port,
            protocols: vec![Protocol::Udp, Protocol::Tcp],
            extra_selector_label: None,
            pod: Some(PodOwner {
                name: format!("jvb-{ordinal}"),
                uid: "pod-uid".into(),
            }),
        }
    }

    #[test]
    fn the_manifest_is_what_the_contract_says() {
        let desired = bridge_service(2, 30302);
        let manifest = service_manifest(&desired, &key("jvb"), "uid-1");
        assert_eq!(
            manifest,
            json!({
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {
                    "name": "jvb-2",
                    "namespace": "jitsi",
                    "labels": { "app.kubernetes.io/managed-by": "service-per-pod", "service-per-pod/statefulset": "jvb" },
                    "ownerReferences": [
                        { "apiVersion": "apps/v1", "kind": "StatefulSet", "name": "jvb", "uid": "uid-1", "controller": true },
                        { "apiVersion": "v1", "kind": "Pod", "name": "jvb-2", "uid": "pod-uid", "controller": false }
                    ]
                },
                "spec": {
                    "type": "NodePort",
                    "externalTrafficPolicy": "Local",
                    "publishNotReadyAddresses": true,
                    "selector": { "statefulset.kubernetes.io/pod-name": "jvb-2" },
                    "ports": [
                        { "name": "udp", "protocol": "UDP", "port": 30302, "targetPort": 30302, "nodePort": 30302 },
                        { "name": "tcp", "protocol": "TCP", "port": 30302, "targetPort": 30302, "nodePort": 30302 }
                    ]
                }
            })
        );
    }

    #[test]
    fn a_repair_replaces_our_fields_only_on_the_service_seen() {
        let desired = DesiredService {
            name: "jvb-0".into(),
            ordinal: 0,
            port: 30400,
            protocols: vec![Protocol::Udp],
            extra_selector_label: None,
            pod: None,
        };
        let mut actual: Service =
            serde_json::from_value(service_manifest(&desired, &key("jvb"), "uid-1")).unwrap();
        actual.metadata.uid = Some("service-uid".into());
        actual
            .spec
            .as_mut()
            .unwrap()
            .selector
            .as_mut()
            .unwrap()
            .insert("widened".into(), "x".into());
        let patch = repair_patch(&desired, &key("jvb"), "uid-1", &actual);
        assert_eq!(patch["metadata"]["uid"], "service-uid");
        assert!(patch["metadata"].get("resourceVersion").is_none());
        assert_eq!(
            patch["spec"]["selector"],
            json!({ "statefulset.kubernetes.io/pod-name": "jvb-0", "widened": null })
        );
        assert_eq!(patch["spec"]["ports"][0]["nodePort"], 30400);
        assert!(patch.get("kind").is_none() && patch["metadata"].get("name").is_none());
    }

    #[test]
    fn up_to_date_compares_only_our_fields() {
        let mut desired = DesiredService {
            name: "jvb-0".into(),
            ordinal: 0,
            port: 30300,
            protocols: vec![Protocol::Udp],
            extra_selector_label: None,
            pod: None,
        };
        let mut actual: Service =
            serde_json::from_value(service_manifest(&desired, &key("jvb"), "uid-1")).unwrap();
        assert!(is_up_to_date(&desired, &key("jvb"), "uid-1", &actual));
        assert!(
            !is_up_to_date(&desired, &key("jvb"), "uid-2", &actual),
            "another owner"
        );

        actual
            .metadata
            .labels
            .as_mut()
            .unwrap()
            .insert("team".into(), "media".into());
        assert!(
            is_up_to_date(&desired, &key("jvb"), "uid-1", &actual),
            "extra labels are someone else's"
        );

        let mut edited = actual.clone();
        edited.spec.as_mut().unwrap().ports.as_mut().unwrap()[0].node_port = Some(30999);
        assert!(
            !is_up_to_date(&desired, &key("jvb"), "uid-1", &edited),
            "a hand-edited node port"
        );

        let mut edited = actual.clone();
        edited
            .spec
            .as_mut()
            .unwrap()
            .selector
            .as_mut()
            .unwrap()
            .insert("extra".into(), "x".into());
        assert!(
            !is_up_to_date(&desired, &key("jvb"), "uid-1", &edited),
            "a changed selector"
        );

        let mut edited = actual.clone();
        edited.spec.as_mut().unwrap().external_traffic_policy = Some("Cluster".into());
        assert!(
            !is_up_to_date(&desired, &key("jvb"), "uid-1", &edited),
            "traffic policy"
        );

        assert!(node_ports_match(&desired, &actual));
        let mut moved = desired.clone();
        moved.port = 30400;
        assert!(
            !node_ports_match(&moved, &actual),
            "a new port replaces the Service"
        );

        desired.pod = Some(PodOwner {
            name: "jvb-0".into(),
            uid: "pod-uid".into(),
        });
        assert!(
            !is_up_to_date(&desired, &key("jvb"), "uid-1", &actual),
            "the pod is not an owner yet"
        );
        assert!(node_ports_match(&desired, &actual), "a new owner is an edit");
    }

    #[test]
    fn a_slimmed_service_compares_and_repairs_as_the_full_one() {
        let desired = bridge_service(0, 30300);
        // What the API server returns: our manifest plus its own fields.
        let mut served = service_manifest(&desired, &key("jvb"), "uid-1");
        served["metadata"]["uid"] = json!("svc-uid");
        served["metadata"]["resourceVersion"] = json!("42");
        served["metadata"]["creationTimestamp"] = json!("2026-12-01T00:00:00Z");
        served["metadata"]["annotations"] = json!({ "team": "media" });
        served["metadata"]["managedFields"] =
            json!([{ "manager": "service-per-pod", "operation": "Update" }]);
        served["spec"]["clusterIP"] = json!("10.96.0.10");
        served["spec"]["clusterIPs"] = json!(["10.96.0.10"]);
        served["spec"]["ipFamilies"] = json!(["IPv4"]);
        served["spec"]["ipFamilyPolicy"] = json!("SingleStack");
        served["spec"]["sessionAffinity"] = json!("None");
        served["spec"]["internalTrafficPolicy"] = json!("Cluster");
        served["status"] = json!({ "loadBalancer": {} });
        let full: Service = serde_json::from_value(served).unwrap();
        let mut slim = full.clone();
        slim_service(&mut slim);

        for owner in ["uid-1", "uid-2"] {
            assert_eq!(
                is_up_to_date(&desired, &key("jvb"), owner, &slim),
                is_up_to_date(&desired, &key("jvb"), owner, &full)
            );
        }
        assert!(is_up_to_date(&desired, &key("jvb"), "uid-1", &slim));
        let mut moved = desired.clone();
        moved.port = 30400;
        assert_eq!(node_ports_match(&moved, &slim), node_ports_match(&moved, &full));
        assert_eq!(
            repair_patch(&moved, &key("jvb"), "uid-1", &slim),
            repair_patch(&moved, &key("jvb"), "uid-1", &full)
        );
        assert_eq!(controller_uid(&slim), Some("uid-1"));
        assert_eq!(slim.metadata.resource_version.as_deref(), Some("42"));
        assert!(slim.metadata.annotations.is_none() && slim.status.is_none());
        assert!(slim.spec.as_ref().unwrap().cluster_ips.is_none());
    }

    #[test]
    fn only_terminating_pods_at_wanted_ordinals_hold_capacity() {
        let mut set = set("jvb", 30300, 2);
        let mut pods: BTreeMap<u32, PodView> = (0..3).map(|o| pod("jvb", o, Some(30300))).collect();
        // A scale-down: the pod above the count drains; nothing is held.
        pods.get_mut(&2).unwrap().terminating = true;
        set.pods = Arc::new(pods.clone());
        assert_eq!(set.ordinals_held_by_terminating_pods(), 0);
        // The count goes up again during the drain: ordinal 2 is wanted and still held.
        set.replicas = 4;
        assert_eq!(set.ordinals_held_by_terminating_pods(), 1);
        // A StatefulSet being deleted wants no ordinal.
        set.deleting = true;
        assert_eq!(set.ordinals_held_by_terminating_pods(), 0);
        set.deleting = false;
        pods.get_mut(&0).unwrap().terminating = true;
        set.pods = Arc::new(pods);
        assert_eq!(set.ordinals_held_by_terminating_pods(), 2);
    }
}
