//! The opt-in contract of a StatefulSet: its `service-per-pod/*` annotations, parsed strictly.

use std::collections::BTreeMap;
use std::fmt;

pub const BASE_PORT: &str = "service-per-pod/base-port";
pub const PROTOCOLS: &str = "service-per-pod/protocols";
pub const LABEL: &str = "service-per-pod/label";
/// Reserves the ports of ordinals `0..max-replicas` even while fewer replicas run, so the ports an
/// autoscaler will need next cannot be taken by another StatefulSet meanwhile.
pub const MAX_REPLICAS: &str = "service-per-pod/max-replicas";
/// How the pods are exposed: `NodePort` (default; a Service per pod) or `LoadBalancer` (one Service
/// for the StatefulSet, one port per pod, an EndpointSlice per pod).
pub const EXPOSE: &str = "service-per-pod/expose";
/// The name of the one Service in `LoadBalancer` mode (default `<statefulset>-public`).
pub const PUBLIC_SERVICE: &str = "service-per-pod/public-service";
/// Annotations the cloud's load balancer controller reads, carried onto the one Service of
/// `LoadBalancer` mode: a JSON object of strings (`{"service.beta.kubernetes.io/aws-load-balancer-type": "external"}`).
pub const PUBLIC_SERVICE_ANNOTATIONS: &str = "service-per-pod/public-service-annotations";
/// `spec.loadBalancerClass` of the one Service (which load balancer controller serves it).
pub const LOAD_BALANCER_CLASS: &str = "service-per-pod/load-balancer-class";
/// `false`: the one Service gets no node ports (`allocateLoadBalancerNodePorts: false`), for load
/// balancers that send to pod IPs directly; its ports are then not bounded by the node-port range.
pub const NODE_PORTS: &str = "service-per-pod/node-ports";
/// The annotation of the design we replace; means the same as [`LABEL`].
pub const LEGACY_LABEL: &str = "service-per-pod-label";
/// Set on every pod by the StatefulSet controller, so it selects exactly one pod.
pub const DEFAULT_LABEL: &str = "statefulset.kubernetes.io/pod-name";

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Udp,
    Tcp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Udp => "UDP",
            Protocol::Tcp => "TCP",
        }
    }

    /// The port entry's name: Services with several ports need one, and it must be a DNS label.
    pub fn port_name(self) -> &'static str {
        match self {
            Protocol::Udp => "udp",
            Protocol::Tcp => "tcp",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a StatefulSet's pods are reached from outside.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Expose {
    /// A NodePort Service per pod, `externalTrafficPolicy: Local`.
    #[default]
    NodePort,
    /// One LoadBalancer Service, one port per pod, each port's only endpoint its pod.
    LoadBalancer(PublicService),
}

/// What the operator says about the one Service of `LoadBalancer` mode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublicService {
    /// Its name, when the annotation gives one.
    pub name: Option<String>,
    /// Carried onto it, for the cloud's load balancer controller.
    pub annotations: BTreeMap<String, String>,
    pub class: Option<String>,
    /// Whether its ports are also node ports (`allocateLoadBalancerNodePorts`).
    pub node_ports: bool,
}

impl Default for PublicService {
    fn default() -> Self {
        Self {
            name: None,
            annotations: BTreeMap::new(),
            class: None,
            node_ports: true,
        }
    }
}

impl Expose {
    /// Whether the ports are node ports (bounded by the node-port range, unique in the cluster).
    pub fn uses_node_ports(&self) -> bool {
        match self {
            Expose::NodePort => true,
            Expose::LoadBalancer(public) => public.node_ports,
        }
    }
}

/// A StatefulSet that asked for per-pod Services, and how.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OptIn {
    pub base_port: u16,
    /// Sorted, without duplicates, never empty.
    pub protocols: Vec<Protocol>,
    /// The pod label the Services select on besides the pod name; its value is the pod's name.
    pub selector_label: String,
    /// Ordinals `0..reserve` keep their ports reserved, whatever `spec.replicas` says.
    pub reserve: Option<u32>,
    pub expose: Expose,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InvalidAnnotation {
    #[error("annotation {BASE_PORT} is {value:?}, which is not a port number (1-65535)")]
    BasePort { value: String },
    #[error("annotation {PROTOCOLS} is {value:?}; expected a comma-separated list of UDP and TCP")]
    Protocols { value: String },
    #[error("annotation {annotation} is {value:?}, which is not a valid label key")]
    Label { annotation: &'static str, value: String },
    #[error("annotation {MAX_REPLICAS} is {value:?}, which is not a whole number from 1 to 65535")]
    MaxReplicas { value: String },
    #[error("annotation {EXPOSE} is {value:?}; expected NodePort or LoadBalancer")]
    Expose { value: String },
    #[error(
        "annotation {PUBLIC_SERVICE} is {value:?}, which is not a valid Service name (a DNS-1035 label of at most 63 characters)"
    )]
    PublicService { value: String },
    #[error(
        "annotation {PUBLIC_SERVICE_ANNOTATIONS} is not a JSON object of annotation names to strings ({problem})"
    )]
    PublicServiceAnnotations { problem: String },
    #[error(
        "annotation {LOAD_BALANCER_CLASS} is {value:?}, which is not a valid load balancer class (a qualified name such as service.k8s.aws/nlb)"
    )]
    LoadBalancerClass { value: String },
    #[error("annotation {NODE_PORTS} is {value:?}; expected true or false")]
    NodePorts { value: String },
    #[error("annotation {annotation} applies only with {EXPOSE}: LoadBalancer")]
    OnlyWithLoadBalancer { annotation: &'static str },
}

impl InvalidAnnotation {
    /// A short CamelCase reason for Events and metric labels.
    pub fn reason(&self) -> &'static str {
        "InvalidAnnotation"
    }
}

/// `Ok(None)`: the StatefulSet has not opted in (no base-port annotation).
pub fn parse(annotations: &BTreeMap<String, String>) -> Result<Option<OptIn>, InvalidAnnotation> {
    let Some(raw_base) = annotations.get(BASE_PORT) else {
        return Ok(None);
    };
    let base_port = match raw_base.trim().parse::<u16>() {
        Ok(port) if port > 0 => port,
        _ => {
            return Err(InvalidAnnotation::BasePort {
                value: raw_base.clone(),
            });
        }
    };
    let protocols = match annotations.get(PROTOCOLS) {
        None => vec![Protocol::Udp],
        Some(raw) => {
            parse_protocols(raw).ok_or_else(|| InvalidAnnotation::Protocols { value: raw.clone() })?
        }
    };
    let (annotation, selector_label) = match (annotations.get(LABEL), annotations.get(LEGACY_LABEL)) {
        (Some(label), _) => (LABEL, label.trim()),
        (None, Some(label)) => (LEGACY_LABEL, label.trim()),
        (None, None) => (LABEL, DEFAULT_LABEL),
    };
    if !is_label_key(selector_label) {
        return Err(InvalidAnnotation::Label {
            annotation,
            value: selector_label.to_owned(),
        });
    }
    let reserve = match annotations.get(MAX_REPLICAS) {
        None => None,
        Some(raw) => match raw.trim().parse::<u16>() {
            Ok(count) if count > 0 => Some(u32::from(count)),
            _ => return Err(InvalidAnnotation::MaxReplicas { value: raw.clone() }),
        },
    };
    let expose = match annotations.get(EXPOSE).map(|raw| raw.trim()) {
        None | Some("NodePort") => Expose::NodePort,
        Some("LoadBalancer") => {
            let name = match annotations.get(PUBLIC_SERVICE) {
                None => None,
                Some(raw) if crate::desired::is_dns1035_label(raw.trim()) => Some(raw.trim().to_owned()),
                Some(raw) => return Err(InvalidAnnotation::PublicService { value: raw.clone() }),
            };
            let carried = match annotations.get(PUBLIC_SERVICE_ANNOTATIONS) {
                None => BTreeMap::new(),
                Some(raw) => parse_carried_annotations(raw)
                    .map_err(|problem| InvalidAnnotation::PublicServiceAnnotations { problem })?,
            };
            let class = match annotations.get(LOAD_BALANCER_CLASS) {
                None => None,
                Some(raw) if is_label_key(raw.trim()) => Some(raw.trim().to_owned()),
                Some(raw) => return Err(InvalidAnnotation::LoadBalancerClass { value: raw.clone() }),
            };
            let node_ports = match annotations.get(NODE_PORTS).map(|raw| raw.trim()) {
                None | Some("true") => true,
                Some("false") => false,
                Some(_) => {
                    return Err(InvalidAnnotation::NodePorts {
                        value: annotations[NODE_PORTS].clone(),
                    });
                }
            };
            Expose::LoadBalancer(PublicService {
                name,
                annotations: carried,
                class,
                node_ports,
            })
        }
        Some(_) => {
            return Err(InvalidAnnotation::Expose {
                value: annotations[EXPOSE].clone(),
            });
        }
    };
    if expose == Expose::NodePort {
        // Said for a Service that does not exist in this mode: the operator's intent would be lost.
        for annotation in [
            PUBLIC_SERVICE,
            PUBLIC_SERVICE_ANNOTATIONS,
            LOAD_BALANCER_CLASS,
            NODE_PORTS,
        ] {
            if annotations.contains_key(annotation) {
                return Err(InvalidAnnotation::OnlyWithLoadBalancer { annotation });
            }
        }
    }
    Ok(Some(OptIn {
        base_port,
        protocols,
        selector_label: selector_label.to_owned(),
        reserve,
        expose,
    }))
}

/// The base port a pod was created with (the annotation its template carried), when it is a valid one.
pub fn pod_base_port(annotations: &BTreeMap<String, String>) -> Option<u16> {
    annotations
        .get(BASE_PORT)?
        .trim()
        .parse::<u16>()
        .ok()
        .filter(|port| *port > 0)
}

/// Annotations under our own prefix are the controller's bookkeeping, never carried.
fn parse_carried_annotations(raw: &str) -> Result<BTreeMap<String, String>, String> {
    let parsed: serde_json::Value = serde_json::from_str(raw).map_err(|error| error.to_string())?;
    let object = parsed.as_object().ok_or_else(|| "not an object".to_owned())?;
    let mut carried = BTreeMap::new();
    for (key, value) in object {
        if !is_label_key(key) {
            return Err(format!("{key:?} is not a valid annotation name"));
        }
        if key.starts_with("service-per-pod/") {
            return Err(format!("{key:?} is the controller's own"));
        }
        let value = value
            .as_str()
            .ok_or_else(|| format!("the value of {key:?} is not a string"))?;
        carried.insert(key.clone(), value.to_owned());
    }
    Ok(carried)
}

fn parse_protocols(raw: &str) -> Option<Vec<Protocol>> {
    let mut protocols = Vec::new();
    for item in raw.split(',') {
        let protocol = match item.trim().to_ascii_uppercase().as_str() {
            "UDP" => Protocol::Udp,
            "TCP" => Protocol::Tcp,
            _ => return None,
        };
        protocols.push(protocol);
    }
    protocols.sort();
    protocols.dedup();
    Some(protocols)
}

/// A Kubernetes label key: an optional DNS-subdomain prefix and `/`, then a name of at most 63
/// characters — alphanumerics with `-`, `_`, `.` inside.
pub fn is_label_key(key: &str) -> bool {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    let name_ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && name.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && name.bytes().last().is_some_and(|b| b.is_ascii_alphanumeric());
    let prefix_ok = prefix.is_none_or(|prefix| {
        !prefix.is_empty()
            && prefix.len() <= 253
            && prefix.split('.').all(|part| {
                !part.is_empty()
                    && part.len() <= 63
                    && part
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                    && !part.starts_with('-')
                    && !part.ends_with('-')
            })
    });
    name_ok && prefix_ok
}

#[cfg(test)]
mod tests {
    use super::*;

    fn annotations(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn no_base_port_means_not_opted_in() {
        assert_eq!(parse(&annotations(&[(PROTOCOLS, "TCP")])), Ok(None));
    }

    #[test]
    fn defaults_are_udp_and_the_pod_name_label() {
        let opt_in = parse(&annotations(&[(BASE_PORT, "30300")])).unwrap().unwrap();
        assert_eq!(
            opt_in,
            OptIn {
                base_port: 30300,
                protocols: vec![Protocol::Udp],
                selector_label: DEFAULT_LABEL.to_owned(),
                reserve: None,
                expose: Expose::NodePort,
            }
        );
    }

    #[test]
    fn load_balancer_mode_is_opt_in_with_an_optional_service_name() {
        let opt_in = parse(&annotations(&[(BASE_PORT, "30300"), (EXPOSE, "LoadBalancer")]))
            .unwrap()
            .unwrap();
        assert_eq!(opt_in.expose, Expose::LoadBalancer(PublicService::default()));
        let opt_in = parse(&annotations(&[
            (BASE_PORT, "30300"),
            (EXPOSE, " LoadBalancer "),
            (PUBLIC_SERVICE, "media"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(
            opt_in.expose,
            Expose::LoadBalancer(PublicService {
                name: Some("media".to_owned()),
                ..PublicService::default()
            })
        );
        for bad in ["loadbalancer", "ClusterIP", ""] {
            assert_eq!(
                parse(&annotations(&[(BASE_PORT, "30300"), (EXPOSE, bad)])),
                Err(InvalidAnnotation::Expose {
                    value: bad.to_owned()
                })
            );
        }
        for bad in ["Media", "1media", "a_b", &"x".repeat(64)] {
            assert_eq!(
                parse(&annotations(&[
                    (BASE_PORT, "30300"),
                    (EXPOSE, "LoadBalancer"),
                    (PUBLIC_SERVICE, bad)
                ])),
                Err(InvalidAnnotation::PublicService {
                    value: bad.to_owned()
                })
            );
        }
    }

    #[test]
    fn the_public_services_annotations_class_and_node_ports_are_parsed_strictly() {
        let lb = |extra: &[(&str, &str)]| {
            let mut pairs = vec![(BASE_PORT, "40000"), (EXPOSE, "LoadBalancer")];
            pairs.extend_from_slice(extra);
            parse(&annotations(&pairs))
        };
        let opt_in = lb(&[
            (
                PUBLIC_SERVICE_ANNOTATIONS,
                r#"{"service.beta.kubernetes.io/aws-load-balancer-type": "external", "example.com/x": ""}"#,
            ),
            (LOAD_BALANCER_CLASS, " service.k8s.aws/nlb "),
            (NODE_PORTS, "false"),
        ])
        .unwrap()
        .unwrap();
        let Expose::LoadBalancer(public) = &opt_in.expose else {
            panic!("LoadBalancer mode")
        };
        assert_eq!(public.annotations.len(), 2);
        assert_eq!(
            public.annotations["service.beta.kubernetes.io/aws-load-balancer-type"],
            "external"
        );
        assert_eq!(public.class.as_deref(), Some("service.k8s.aws/nlb"));
        assert!(!public.node_ports && !opt_in.expose.uses_node_ports());

        for (bad, problem) in [
            ("{", "EOF while parsing"),
            (r#"["a"]"#, "not an object"),
            (r#"{"Not A Key": "x"}"#, "not a valid annotation name"),
            (r#"{"a": 1}"#, "not a string"),
            (
                r#"{"service-per-pod/carried-annotations": "x"}"#,
                "the controller's own",
            ),
        ] {
            let error = lb(&[(PUBLIC_SERVICE_ANNOTATIONS, bad)]).unwrap_err();
            assert!(error.to_string().contains(problem), "{bad}: {error}");
        }
        assert_eq!(
            lb(&[(LOAD_BALANCER_CLASS, "not a class")]),
            Err(InvalidAnnotation::LoadBalancerClass {
                value: "not a class".to_owned()
            })
        );
        assert_eq!(
            lb(&[(NODE_PORTS, "no")]),
            Err(InvalidAnnotation::NodePorts {
                value: "no".to_owned()
            })
        );
        // Said of a Service NodePort mode does not have: refused, not ignored.
        assert_eq!(
            parse(&annotations(&[
                (BASE_PORT, "30300"),
                (LOAD_BALANCER_CLASS, "x.io/y")
            ])),
            Err(InvalidAnnotation::OnlyWithLoadBalancer {
                annotation: LOAD_BALANCER_CLASS
            })
        );
    }

    #[test]
    fn max_replicas_reserves_a_block_and_nonsense_is_refused() {
        let opt_in = parse(&annotations(&[(BASE_PORT, "30300"), (MAX_REPLICAS, " 100 ")]))
            .unwrap()
            .unwrap();
        assert_eq!(opt_in.reserve, Some(100));
        for bad in ["0", "-1", "x", "65536", ""] {
            assert_eq!(
                parse(&annotations(&[(BASE_PORT, "30300"), (MAX_REPLICAS, bad)])),
                Err(InvalidAnnotation::MaxReplicas {
                    value: bad.to_owned()
                }),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn a_pods_base_port_is_read_leniently() {
        assert_eq!(pod_base_port(&annotations(&[(BASE_PORT, "30400")])), Some(30400));
        assert_eq!(pod_base_port(&annotations(&[(BASE_PORT, "nope")])), None);
        assert_eq!(pod_base_port(&annotations(&[])), None);
    }

    #[test]
    fn protocols_are_case_insensitive_sorted_and_deduplicated() {
        let opt_in = parse(&annotations(&[
            (BASE_PORT, " 30400 "),
            (PROTOCOLS, "tcp, UDP,TCP"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(opt_in.base_port, 30400);
        assert_eq!(opt_in.protocols, vec![Protocol::Udp, Protocol::Tcp]);
    }

    #[test]
    fn bad_base_ports_are_refused() {
        for bad in ["", "abc", "0", "65536", "-1", "30300.5", "3e4"] {
            assert_eq!(
                parse(&annotations(&[(BASE_PORT, bad)])),
                Err(InvalidAnnotation::BasePort {
                    value: bad.to_owned()
                }),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn bad_protocols_are_refused() {
        for bad in ["", "SCTP", "UDP,", "UDP;TCP"] {
            let parsed = parse(&annotations(&[(BASE_PORT, "30300"), (PROTOCOLS, bad)]));
            assert_eq!(
                parsed,
                Err(InvalidAnnotation::Protocols {
                    value: bad.to_owned()
                }),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn the_new_label_annotation_wins_over_the_legacy_one() {
        let both = annotations(&[
            (BASE_PORT, "30300"),
            (LABEL, "example.com/jvb"),
            (LEGACY_LABEL, "old"),
        ]);
        assert_eq!(parse(&both).unwrap().unwrap().selector_label, "example.com/jvb");
        let legacy = annotations(&[(BASE_PORT, "30300"), (LEGACY_LABEL, "jvb-pod")]);
        assert_eq!(parse(&legacy).unwrap().unwrap().selector_label, "jvb-pod");
    }

    #[test]
    fn invalid_label_keys_are_refused_naming_the_annotation() {
        let legacy = annotations(&[(BASE_PORT, "30300"), (LEGACY_LABEL, "not a label")]);
        assert_eq!(
            parse(&legacy),
            Err(InvalidAnnotation::Label {
                annotation: LEGACY_LABEL,
                value: "not a label".to_owned()
            })
        );
    }

    #[test]
    fn label_keys() {
        for good in [DEFAULT_LABEL, "app", "a.b-c_d", "example.com/x", "a/b"] {
            assert!(is_label_key(good), "{good}");
        }
        for bad in [
            "",
            "-a",
            "a-",
            "Example.com/x",
            "/x",
            "x/",
            "a b",
            &"n".repeat(64),
            "a//b",
        ] {
            assert!(!is_label_key(bad), "{bad}");
        }
    }
}
