//! What Services a StatefulSet should have: pure functions of the StatefulSet, its pods, the other
//! StatefulSets' claims and the Services that exist. No client, no clock.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::{Value, json};

use crate::annotations::{OptIn, Protocol};

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

/// Ordinals that need a Service: every replica the spec asks for, and every pod that still exists
/// (Terminating ones included) — a draining bridge keeps its port until it is really gone.
pub fn wanted_ordinals(replicas: u32, pod_ordinals: impl IntoIterator<Item = u32>) -> BTreeSet<u32> {
    (0..replicas).chain(pod_ordinals).collect()
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

/// The in-range node ports a StatefulSet wants for `ordinals`.
pub fn claimed_ports(opt_in: &OptIn, ordinals: &BTreeSet<u32>, range: NodePortRange) -> BTreeSet<u16> {
    ordinals
        .iter()
        .filter_map(|ordinal| port_for(opt_in.base_port, *ordinal))
        .filter(|port| range.contains(*port))
        .collect()
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

/// Why an ordinal gets no Service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Skipped {
    /// base + ordinal is outside the node-port range (`None`: beyond 65535).
    OutOfRange {
        ordinal: u32,
        port: Option<u16>,
        range: NodePortRange,
    },
    /// Another StatefulSet holds or claimed this port first.
    Conflict { ordinal: u32, port: u16, holder: SetKey },
    /// `<statefulset>-<ordinal>` is not a valid Service name.
    InvalidName { name: String },
}

impl Skipped {
    /// A short CamelCase reason for Events and metric labels.
    pub fn reason(&self) -> &'static str {
        match self {
            Skipped::OutOfRange { .. } => "PortOutOfRange",
            Skipped::Conflict { .. } => "PortConflict",
            Skipped::InvalidName { .. } => "InvalidServiceName",
        }
    }
}

impl fmt::Display for Skipped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Skipped::OutOfRange {
                ordinal,
                port: Some(port),
                range,
            } => {
                write!(
                    f,
                    "pod ordinal {ordinal} gets no Service: port {port} is outside the node-port range {range}"
                )
            }
            Skipped::OutOfRange {
                ordinal, port: None, ..
            } => {
                write!(
                    f,
                    "pod ordinal {ordinal} gets no Service: base port + ordinal is above 65535"
                )
            }
            Skipped::Conflict {
                ordinal,
                port,
                holder,
            } => write!(
                f,
                "pod ordinal {ordinal} gets no Service: node port {port} belongs to StatefulSet {holder}, which claimed it first"
            ),
            Skipped::InvalidName { name } => {
                write!(
                    f,
                    "no Service can be named {name:?}: Service names must be DNS-1035 labels of at most 63 characters"
                )
            }
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
    pub selector_label: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub services: Vec<DesiredService>,
    pub skipped: Vec<Skipped>,
}

pub fn plan(
    set: &SetKey,
    opt_in: &OptIn,
    ordinals: &BTreeSet<u32>,
    range: NodePortRange,
    winners: &BTreeMap<u16, SetKey>,
) -> Plan {
    let mut plan = Plan::default();
    for &ordinal in ordinals {
        let name = service_name(&set.name, ordinal);
        if !is_dns1035_label(&name) {
            plan.skipped.push(Skipped::InvalidName { name });
            continue;
        }
        let port = match port_for(opt_in.base_port, ordinal) {
            Some(port) if range.contains(port) => port,
            port => {
                plan.skipped.push(Skipped::OutOfRange { ordinal, port, range });
                continue;
            }
        };
        if let Some(holder) = winners.get(&port).filter(|holder| *holder != set) {
            plan.skipped.push(Skipped::Conflict {
                ordinal,
                port,
                holder: holder.clone(),
            });
            continue;
        }
        plan.services.push(DesiredService {
            name,
            ordinal,
            port,
            protocols: opt_in.protocols.clone(),
            selector_label: opt_in.selector_label.clone(),
        });
    }
    plan
}

/// The object sent with server-side apply: exactly the fields this controller owns.
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
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": desired.name,
            "namespace": set.namespace,
            "labels": { MANAGED_BY_LABEL: MANAGED_BY_VALUE, STATEFULSET_LABEL: set.name },
            "ownerReferences": [{
                "apiVersion": "apps/v1",
                "kind": "StatefulSet",
                "name": set.name,
                "uid": owner_uid,
                "controller": true,
            }],
        },
        "spec": {
            "type": "NodePort",
            "externalTrafficPolicy": "Local",
            "publishNotReadyAddresses": true,
            "selector": { desired.selector_label.as_str(): desired.name },
            "ports": ports,
        },
    })
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

/// Whether `actual` already carries every field of `desired` as we would apply it. Fields other
/// managers added (extra labels, annotations, extra ports) are theirs and do not count.
pub fn is_up_to_date(desired: &DesiredService, set: &SetKey, owner_uid: &str, actual: &Service) -> bool {
    let labels = actual.metadata.labels.as_ref();
    let label = |key: &str| labels.and_then(|labels| labels.get(key)).map(String::as_str);
    let Some(spec) = actual.spec.as_ref() else {
        return false;
    };
    let selector_ok = spec.selector.as_ref().is_some_and(|selector| {
        selector.len() == 1 && selector.get(&desired.selector_label) == Some(&desired.name)
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
        && spec.type_.as_deref() == Some("NodePort")
        && spec.external_traffic_policy.as_deref() == Some("Local")
        && spec.publish_not_ready_addresses == Some(true)
        && selector_ok
        && ports_ok
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::annotations::DEFAULT_LABEL;

    fn key(name: &str) -> SetKey {
        SetKey {
            namespace: "jitsi".to_owned(),
            name: name.to_owned(),
        }
    }

    fn opt_in(base_port: u16) -> OptIn {
        OptIn {
            base_port,
            protocols: vec![Protocol::Udp],
            selector_label: DEFAULT_LABEL.to_owned(),
        }
    }

    #[test]
    fn wanted_ordinals_keep_pods_beyond_replicas() {
        assert_eq!(wanted_ordinals(1, [0, 2]), BTreeSet::from([0, 2]));
        assert_eq!(wanted_ordinals(3, []), BTreeSet::from([0, 1, 2]));
        assert_eq!(wanted_ordinals(0, [4]), BTreeSet::from([4]));
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
        let plan = plan(
            &key("jvb"),
            &opt_in(30300),
            &BTreeSet::from([0, 1, 4]),
            NodePortRange::default(),
            &BTreeMap::new(),
        );
        let ports: Vec<(String, u16)> = plan.services.iter().map(|s| (s.name.clone(), s.port)).collect();
        assert_eq!(
            ports,
            vec![
                ("jvb-0".into(), 30300),
                ("jvb-1".into(), 30301),
                ("jvb-4".into(), 30304)
            ]
        );
        assert!(plan.skipped.is_empty());
    }

    #[test]
    fn plan_skips_only_the_ordinals_out_of_range() {
        let range = NodePortRange::default();
        let plan = plan(
            &key("jvb"),
            &opt_in(32766),
            &BTreeSet::from([0, 1, 2, 3]),
            range,
            &BTreeMap::new(),
        );
        assert_eq!(
            plan.services.iter().map(|s| s.port).collect::<Vec<_>>(),
            vec![32766, 32767]
        );
        assert_eq!(
            plan.skipped,
            vec![
                Skipped::OutOfRange {
                    ordinal: 2,
                    port: Some(32768),
                    range
                },
                Skipped::OutOfRange {
                    ordinal: 3,
                    port: Some(32769),
                    range
                },
            ]
        );
        let beyond = super::plan(
            &key("jvb"),
            &opt_in(65535),
            &BTreeSet::from([1]),
            range,
            &BTreeMap::new(),
        );
        assert_eq!(
            beyond.skipped,
            vec![Skipped::OutOfRange {
                ordinal: 1,
                port: None,
                range
            }]
        );
    }

    #[test]
    fn plan_refuses_service_names_that_are_not_dns_labels() {
        let long = "j".repeat(62);
        let plan = plan(
            &key(&long),
            &opt_in(30300),
            &BTreeSet::from([0]),
            NodePortRange::default(),
            &BTreeMap::new(),
        );
        assert_eq!(
            plan.skipped,
            vec![Skipped::InvalidName {
                name: format!("{long}-0")
            }]
        );
        let dotted = super::plan(
            &key("jvb.a"),
            &opt_in(30300),
            &BTreeSet::from([0]),
            NodePortRange::default(),
            &BTreeMap::new(),
        );
        assert!(matches!(dotted.skipped[..], [Skipped::InvalidName { .. }]));
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
    fn a_lost_port_is_skipped_as_a_conflict() {
        let winners = BTreeMap::from([(30301, key("other"))]);
        let plan = plan(
            &key("jvb"),
            &opt_in(30300),
            &BTreeSet::from([0, 1]),
            NodePortRange::default(),
            &winners,
        );
        assert_eq!(plan.services.len(), 1);
        assert_eq!(
            plan.skipped,
            vec![Skipped::Conflict {
                ordinal: 1,
                port: 30301,
                holder: key("other")
            }]
        );
        assert!(plan.skipped[0].to_string().contains("jitsi/other"));
    }

    #[test]
    fn the_manifest_is_what_the_contract_says() {
        let desired = DesiredService {
            name: "jvb-2".into(),
            ordinal: 2,
            port: 30302,
            protocols: vec![Protocol::Udp, Protocol::Tcp],
            selector_label: DEFAULT_LABEL.into(),
        };
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
                    "ownerReferences": [{ "apiVersion": "apps/v1", "kind": "StatefulSet", "name": "jvb", "uid": "uid-1", "controller": true }]
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
    fn up_to_date_compares_only_our_fields() {
        let desired = DesiredService {
            name: "jvb-0".into(),
            ordinal: 0,
            port: 30300,
            protocols: vec![Protocol::Udp],
            selector_label: DEFAULT_LABEL.into(),
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
            "a widened selector"
        );

        let mut edited = actual;
        edited.spec.as_mut().unwrap().external_traffic_policy = Some("Cluster".into());
        assert!(
            !is_up_to_date(&desired, &key("jvb"), "uid-1", &edited),
            "traffic policy"
        );
    }
}
