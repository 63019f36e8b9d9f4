//! Verdicts on NetworkPolicies from cyclonus's policy engine (`netpol-verdicts`, built by
//! `cargo xtask test` from `xtask/go/netpol-verdicts` and named by `NETPOL_VERDICTS`).

use std::process::Command;

use local_cluster::process::output_with_stdin;
use serde::Deserialize;
use serde_json::{Value, json};

/// What the policies decide for one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct Verdict {
    pub ingress: bool,
    pub egress: bool,
    pub allowed: bool,
}

/// One end of a connection, as cyclonus models it.
#[derive(Debug, Clone)]
pub enum Peer {
    /// A pod: its labels, its namespace and that namespace's labels.
    Pod {
        namespace: String,
        namespace_labels: Value,
        labels: Value,
    },
    /// An address outside the cluster.
    External(String),
}

impl Peer {
    fn to_json(&self) -> Value {
        match self {
            Peer::Pod {
                namespace,
                namespace_labels,
                labels,
            } => json!({ "Internal": {
                "Namespace": namespace, "NamespaceLabels": namespace_labels, "PodLabels": labels } }),
            Peer::External(address) => json!({ "IP": address }),
        }
    }
}

/// A connection to `port` (and its name on the destination pod, "" if unnamed) over `protocol`.
#[derive(Debug, Clone)]
pub struct Connection {
    pub from: Peer,
    pub to: Peer,
    pub protocol: String,
    pub port: u16,
    pub port_name: String,
}

/// cyclonus's verdict on each connection, in order.
pub fn verdicts(policies: &[&Value], connections: &[Connection]) -> Vec<Verdict> {
    let program = std::env::var("NETPOL_VERDICTS").expect(
        "NETPOL_VERDICTS is not set: run the integration tests through `cargo xtask test`, which builds \
         netpol-verdicts (cyclonus) and names it there",
    );
    let traffic: Vec<Value> = connections
        .iter()
        .map(|c| {
            json!({ "Source": c.from.to_json(), "Destination": c.to.to_json(),
                    "ResolvedPort": c.port, "ResolvedPortName": c.port_name, "Protocol": c.protocol })
        })
        .collect();
    let request = json!({ "policies": policies, "traffic": traffic });
    let output = output_with_stdin(&mut Command::new(&program), request.to_string().as_bytes())
        .unwrap_or_else(|e| panic!("running {program}: {e}"));
    assert!(
        output.status.success(),
        "{program} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let verdicts: Vec<Verdict> = serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "{program} printed no verdicts ({e}): {}",
            String::from_utf8_lossy(&output.stdout)
        )
    });
    assert_eq!(verdicts.len(), connections.len(), "one verdict per connection");
    verdicts
}
