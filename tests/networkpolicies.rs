//! The NetworkPolicies of the production overlay, rendered as users render them, against the matrix
//! SECURITY.md promises: evaluated cell by cell by cyclonus's policy engine (the Kubernetes SIG Network
//! analyzer), and enforced on real packets by kube-router's NetworkPolicy controller in the local
//! cluster's dataplane (`cargo xtask cluster up --dataplane`). Every port a pod declares must have its row.

// Test code: a failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::Api;
use kube::api::PostParams;
use serde_json::{Value, json};
use testbed::dataplane::{PodNet, Protocol};
use testbed::manifests::{self, kind, of_kind, render_overlay};
use testbed::netpol::{Connection, Peer, verdicts};

const PRODUCTION: &str = "manifests/overlays/production";
const NAMESPACE: &str = "jitsi";
const MARKER: &str = "<!-- networkpolicy-matrix";

/// One row of the matrix: connections to `to` on `protocol`/`port`, allowed or not from each source.
#[derive(Debug)]
struct Row {
    to: String,
    protocol: String,
    port: u16,
    allowed: Vec<bool>,
}

struct Matrix {
    sources: Vec<String>,
    rows: Vec<Row>,
}

fn cells(line: &str) -> Vec<String> {
    line.trim()
        .trim_matches('|')
        .split('|')
        .map(|cell| cell.trim().to_owned())
        .collect()
}

/// The table after the marker in SECURITY.md.
fn matrix() -> Matrix {
    let text = std::fs::read_to_string(testbed::repo_root().join("SECURITY.md")).unwrap();
    let mut lines = text
        .lines()
        .skip_while(|l| !l.starts_with(MARKER))
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'));
    let header = cells(lines.next().expect("SECURITY.md has the NetworkPolicy matrix"));
    assert_eq!(header[..2], ["to", "port"]);
    let sources = header[2..].to_vec();
    let rows = lines
        .skip(1)
        .map(|line| {
            let cells = cells(line);
            assert_eq!(cells.len(), sources.len() + 2, "{line}");
            let mut port = cells[1].split_whitespace();
            let protocol = port.next().unwrap().to_owned();
            let number = port.next().unwrap().parse().unwrap();
            let allowed = cells[2..]
                .iter()
                .map(|cell| match cell.as_str() {
                    "yes" => true,
                    "—" => false,
                    other => panic!("cell {other:?} of {line} is neither yes nor —"),
                })
                .collect();
            Row {
                to: cells[0].clone(),
                protocol,
                port: number,
                allowed,
            }
        })
        .collect();
    Matrix { sources, rows }
}

/// "shard-0 bridge" → shard-0-jvb, "HAProxy" → haproxy: the workload a matrix name stands for.
fn workload_name(name: &str) -> String {
    name.to_lowercase().replace("bridge", "jvb").replace(' ', "-")
}

fn workload<'a>(objects: &'a [Value], name: &str) -> &'a Value {
    objects
        .iter()
        .filter(|o| matches!(kind(o), "Deployment" | "StatefulSet"))
        .find(|o| o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("production renders no workload {name}"))
}

fn container_ports(workload: &Value) -> Vec<&Value> {
    let spec = &workload["spec"]["template"]["spec"];
    ["initContainers", "containers"]
        .iter()
        .flat_map(|field| spec[field].as_array().into_iter().flatten())
        .flat_map(|c| c["ports"].as_array().into_iter().flatten())
        .collect()
}

fn protocol(port: &Value) -> &str {
    port["protocol"].as_str().unwrap_or("TCP")
}

struct Rendered {
    objects: Vec<Value>,
    namespace_labels: Value,
}

impl Rendered {
    fn production() -> Self {
        Self::production_in(NAMESPACE)
    }

    fn production_in(namespace_name: &str) -> Self {
        let objects = render_overlay(namespace_name, PRODUCTION, &[]);
        let namespace = of_kind(&objects, "Namespace").next().unwrap();
        let mut namespace_labels = namespace["metadata"]["labels"].clone();
        // Set by the API server on every namespace; policies select namespaces by it.
        namespace_labels["kubernetes.io/metadata.name"] = json!(namespace_name);
        Self {
            objects,
            namespace_labels,
        }
    }

    fn policies(&self) -> Vec<&Value> {
        of_kind(&self.objects, "NetworkPolicy").collect()
    }

    fn pod(&self, workload_name: &str) -> Peer {
        Peer::Pod {
            namespace: NAMESPACE.to_owned(),
            namespace_labels: self.namespace_labels.clone(),
            labels: workload(&self.objects, workload_name)["spec"]["template"]["metadata"]["labels"].clone(),
        }
    }

    fn source(&self, name: &str) -> Peer {
        match name {
            "internet" => Peer::External("203.0.113.7".to_owned()),
            "pod of another namespace" => Peer::Pod {
                namespace: "default".to_owned(),
                namespace_labels: json!({ "kubernetes.io/metadata.name": "default" }),
                labels: json!({ "app": "curious" }),
            },
            "Prometheus (namespace monitoring)" => Peer::Pod {
                namespace: "monitoring".to_owned(),
                namespace_labels: json!({ "kubernetes.io/metadata.name": "monitoring" }),
                labels: json!({ "app.kubernetes.io/name": "prometheus" }),
            },
            workload => self.pod(&workload_name(workload)),
        }
    }

    /// A connection to the row's pod and port, with the port's name on that pod (policies name ports).
    fn connection(&self, from: Peer, row: &Row) -> Connection {
        let destination = workload_name(&row.to);
        let port_name = container_ports(workload(&self.objects, &destination))
            .into_iter()
            .find(|p| p["containerPort"] == row.port && protocol(p) == row.protocol)
            .and_then(|p| p["name"].as_str())
            .unwrap_or_default()
            .to_owned();
        Connection {
            from,
            to: self.pod(&destination),
            protocol: row.protocol.clone(),
            port: row.port,
            port_name,
        }
    }
}

#[test]
fn the_rendered_policies_give_exactly_the_matrix_of_security_md() {
    let rendered = Rendered::production();
    let matrix = matrix();
    assert!(matrix.rows.len() >= 12, "the matrix lost rows");
    let mut connections = Vec::new();
    let mut expected = Vec::new();
    for row in &matrix.rows {
        for (source, allowed) in matrix.sources.iter().zip(&row.allowed) {
            connections.push(rendered.connection(rendered.source(source), row));
            expected.push((source, row, *allowed));
        }
    }
    let answers = verdicts(&rendered.policies(), &connections);
    let wrong: Vec<String> = expected
        .iter()
        .zip(&answers)
        .filter(|((_, _, allowed), verdict)| verdict.allowed != *allowed)
        .map(|((source, row, allowed), _)| {
            format!(
                "{source} → {} {} {}: SECURITY.md says {}, the policies {}",
                row.to,
                row.protocol,
                row.port,
                if *allowed { "allowed" } else { "denied" },
                if *allowed { "deny it" } else { "allow it" }
            )
        })
        .collect();
    assert!(
        wrong.is_empty(),
        "{} cells differ:\n{}",
        wrong.len(),
        wrong.join("\n")
    );

    // The engine is live, not a rubber stamp: without the namespace's default deny and the bridge's own
    // policy, the internet reaches the bridge's REST API.
    let rest_api = matrix
        .rows
        .iter()
        .find(|r| r.to == "shard-0 bridge" && r.port == 8080)
        .unwrap();
    let open: Vec<&Value> = rendered
        .policies()
        .into_iter()
        .filter(|p| {
            !matches!(
                p["metadata"]["name"].as_str(),
                Some("default-deny-ingress" | "shard-0-jvb")
            )
        })
        .collect();
    let internet = rendered.connection(rendered.source("internet"), rest_api);
    assert!(verdicts(&open, &[internet])[0].allowed);
}

/// A port added to a pod without deciding who may reach it fails here, as does a pod without a row.
#[test]
fn every_port_a_pod_declares_is_in_the_matrix() {
    let rendered = Rendered::production();
    let matrix = matrix();
    for workload in rendered
        .objects
        .iter()
        .filter(|o| matches!(kind(o), "Deployment" | "StatefulSet"))
    {
        let name = workload["metadata"]["name"].as_str().unwrap();
        // shard-0 stands for every shard.
        let class = name.replacen("shard-1-", "shard-0-", 1);
        let rows: Vec<&Row> = matrix
            .rows
            .iter()
            .filter(|r| workload_name(&r.to) == class)
            .collect();
        assert!(!rows.is_empty(), "{name} has no row in SECURITY.md's matrix");
        for port in container_ports(workload) {
            assert!(
                rows.iter()
                    .any(|r| port["containerPort"] == r.port && protocol(port) == r.protocol),
                "{name} declares {} {} ({}), which SECURITY.md's matrix does not list",
                protocol(port),
                port["containerPort"],
                port["name"]
            );
        }
    }
    // The media row is the shard's real first port.
    let bridges = workload(&rendered.objects, "shard-0-jvb");
    let media = matrix
        .rows
        .iter()
        .find(|r| r.to == "shard-0 bridge" && r.protocol == "UDP")
        .expect("a media row");
    assert_eq!(
        bridges["metadata"]["annotations"]["service-per-pod/base-port"],
        media.port.to_string()
    );
    // Every policy selects pods of the namespace it is in; none is left from a removed workload.
    for policy in rendered.policies() {
        assert_eq!(policy["metadata"]["namespace"], NAMESPACE);
    }
}

/// A pod standing for one of the matrix's peers: its labels, its declared ports (policies name ports,
/// which an implementation resolves through the pod's spec) and namespace, no container running (KWOK),
/// its own network namespace with responders (`testbed::dataplane::PodNet`).
async fn stand_in(namespace: &str, name: &str, labels: &Value, ports: &[&Value]) -> PodNet {
    let cluster = testbed::Cluster::connect().await;
    let pods: Api<Pod> = Api::namespaced(cluster.admin(), namespace);
    let pod: Pod = serde_json::from_value(json!({
        "metadata": { "name": name, "labels": labels },
        "spec": { "containers": [{
            "name": "stand-in", "image": "registry.example.org/stand-in:1", "ports": ports }] }
    }))
    .unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();
    let running = testbed::eventually(
        &format!("{namespace}/{name} Running with an IP"),
        Duration::from_secs(60),
        || async {
            let pod = pods.get_opt(name).await.ok()??;
            let status = pod.status.as_ref()?;
            (status.phase.as_deref() == Some("Running") && status.pod_ip.is_some()).then_some(pod)
        },
    )
    .await;
    PodNet::attach(&running)
}

fn protocol_of(row: &Row) -> Protocol {
    if row.protocol == "UDP" {
        Protocol::Udp
    } else {
        Protocol::Tcp
    }
}

/// The matrix on real packets: the rendered policies applied to a namespace of stand-in pods labelled as
/// the workloads are, each destination serving its rows' ports, each source probing them — through the
/// node namespaces, where kube-router's NetworkPolicy controller filters. Sources and destinations are
/// distinct pods (traffic of a pod to itself never leaves it, whatever the policies say).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_matrix_holds_on_real_packets_through_kube_router() {
    testbed::dataplane::require();
    let cluster = testbed::Cluster::connect().await;
    let jitsi = cluster.namespace("netpol-enforced").await;
    let elsewhere = cluster.namespace("netpol-elsewhere").await;
    // The policies admit Prometheus by its namespace's name.
    let namespaces: Api<Namespace> = Api::all(cluster.admin());
    if namespaces.get_opt("monitoring").await.unwrap().is_none() {
        let monitoring: Namespace =
            serde_json::from_value(json!({ "metadata": { "name": "monitoring" } })).unwrap();
        let _ = namespaces.create(&PostParams::default(), &monitoring).await;
    }
    let rendered = Rendered::production_in(&jitsi.name);
    let matrix = matrix();
    let template_labels =
        |name: &str| workload(&rendered.objects, name)["spec"]["template"]["metadata"]["labels"].clone();
    let declared = |name: &str| container_ports(workload(&rendered.objects, name));

    // Destinations, each serving the ports of its rows.
    let mut destinations = BTreeMap::new();
    for row in &matrix.rows {
        let workload = workload_name(&row.to);
        if !destinations.contains_key(&workload) {
            let net = stand_in(
                &jitsi.name,
                &format!("{workload}-to"),
                &template_labels(&workload),
                &declared(&workload),
            )
            .await;
            destinations.insert(workload.clone(), net);
        }
        destinations
            .get_mut(&workload)
            .unwrap()
            .serve(protocol_of(row), row.port);
    }
    // Sources: the internet is the client namespace, the others stand-in pods.
    let suffix = &jitsi.name[jitsi.name.len() - 8..];
    let mut sources: Vec<Option<PodNet>> = Vec::new();
    for source in &matrix.sources {
        let net = match source.as_str() {
            "internet" => None,
            "pod of another namespace" => {
                Some(stand_in(&elsewhere.name, "curious", &json!({ "app": "curious" }), &[]).await)
            }
            "Prometheus (namespace monitoring)" => Some(
                stand_in(
                    "monitoring",
                    &format!("prometheus-{suffix}"),
                    &json!({ "app.kubernetes.io/name": "prometheus" }),
                    &[],
                )
                .await,
            ),
            workload => {
                let name = workload_name(workload);
                Some(
                    stand_in(
                        &jitsi.name,
                        &format!("{name}-from"),
                        &template_labels(&name),
                        &declared(&name),
                    )
                    .await,
                )
            }
        };
        sources.push(net);
    }
    let cells: Vec<(usize, &Row, bool)> = matrix
        .rows
        .iter()
        .flat_map(|row| {
            row.allowed
                .iter()
                .enumerate()
                .map(move |(i, allowed)| (i, row, *allowed))
        })
        .collect();
    // Every cell at once (a denied one waits out its half-second timeout).
    let probe_all = || {
        std::thread::scope(|scope| {
            let probes: Vec<_> = cells
                .iter()
                .map(|(source, row, _)| {
                    let destination = &destinations[&workload_name(&row.to)];
                    let from = sources[*source].as_ref();
                    scope.spawn(move || {
                        let (ip, port, protocol) = (destination.ip, row.port, protocol_of(row));
                        let answer = match from {
                            Some(net) => net.probe(protocol, ip, port),
                            None => testbed::dataplane::probe_from_internet(protocol, ip, port),
                        };
                        answer.as_deref() == Some(destination.name.as_str())
                    })
                })
                .collect();
            probes
                .into_iter()
                .map(|p| p.join().unwrap())
                .collect::<Vec<bool>>()
        })
    };

    // Before any policy everything answers: the denials below are the policies' doing.
    let open = tokio::task::block_in_place(probe_all);
    assert!(
        open.iter().all(|answered| *answered),
        "without policies some probe went unanswered: {open:?}"
    );

    let policies: Vec<Value> = rendered.policies().into_iter().cloned().collect();
    manifests::apply(&policies);
    // kube-router applies them within seconds; until it has, cells differ.
    let deadline = Instant::now() + Duration::from_secs(60);
    let wrong = loop {
        let answers = tokio::task::block_in_place(probe_all);
        let wrong: Vec<String> = cells
            .iter()
            .zip(&answers)
            .filter(|((_, _, allowed), answered)| *allowed != **answered)
            .map(|((source, row, allowed), _)| {
                format!(
                    "{} → {} {} {}: SECURITY.md says {}, the packets {}",
                    matrix.sources[*source],
                    row.to,
                    row.protocol,
                    row.port,
                    if *allowed { "allowed" } else { "denied" },
                    if *allowed {
                        "went unanswered"
                    } else {
                        "got through"
                    }
                )
            })
            .collect();
        if wrong.is_empty() || Instant::now() > deadline {
            break wrong;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    assert!(
        wrong.is_empty(),
        "{} cells differ on real packets:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
    println!(
        "{} cells of SECURITY.md's matrix hold on real packets ({} allowed, {} denied)",
        cells.len(),
        cells.iter().filter(|c| c.2).count(),
        cells.iter().filter(|c| !c.2).count()
    );
    drop(destinations);
    drop(sources);
    let pods: Api<Pod> = Api::namespaced(cluster.admin(), "monitoring");
    let _ = pods
        .delete(&format!("prometheus-{suffix}"), &Default::default())
        .await;
    elsewhere.delete().await;
    jitsi.delete().await;
}
