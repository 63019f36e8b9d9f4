//! Command line; every flag can also be set from the environment.

use std::net::SocketAddr;

use daemon_kit::telemetry::LogArgs;

use std::time::Duration;

use crate::desired::NodePortRange;
use crate::grants::Grants;

/// Gives every pod of an opted-in StatefulSet its own NodePort Service (annotation
/// `service-per-pod/base-port`), kept until the pod is really gone.
#[derive(Debug, clap::Parser)]
#[command(name = "service-per-pod", version)]
pub struct Cli {
    /// Watch StatefulSets in this namespace only (default: all namespaces).
    #[arg(long, env = "WATCH_NAMESPACE")]
    pub namespace: Option<String>,

    /// The API server's `--service-node-port-range`: ports outside it get no Service.
    #[arg(long, env = "NODE_PORT_RANGE", default_value = "30000-32767")]
    pub node_port_range: NodePortRange,

    /// The ports a StatefulSet in `LoadBalancer` mode without node ports (`service-per-pod/node-ports:
    /// "false"`) may use: its load balancer sends to the pods directly, so the node-port range does not
    /// bound them. Grants apply to them as to node ports.
    #[arg(long, env = "DIRECT_PORT_RANGE", default_value = "1024-65535")]
    pub direct_port_range: NodePortRange,

    /// Which namespaces may claim which node ports: `namespace=first-last` entries separated by commas
    /// (`*` for every namespace). Nothing is granted that is not listed — except that a controller
    /// watching one namespace (--namespace) grants it the whole range when this is empty.
    #[arg(long, env = "PORT_GRANTS", default_value = "")]
    pub port_grants: Grants,

    /// Deadline of every API call that writes (Services, Events, the Lease). With leader election it
    /// must end before a standby may take over: shorter than a third of the lease duration.
    #[arg(long, env = "API_TIMEOUT", default_value = "2s", value_parser = daemon_kit::flags::parse_duration)]
    pub api_timeout: Duration,

    /// Address of the admin server: /livez, /readyz (once the watch caches are synced), /metrics.
    #[arg(long, env = "ADMIN_ADDR", default_value = "0.0.0.0:8080")]
    pub admin_addr: SocketAddr,

    #[command(flatten)]
    pub log: LogArgs,

    /// Take part in leader election on a Lease, so several replicas can run and only one writes.
    #[arg(long, env = "LEADER_ELECTION")]
    pub leader_election: bool,

    /// Name of the coordination.k8s.io Lease used for leader election.
    #[arg(long, env = "LEASE_NAME", default_value = "service-per-pod")]
    pub lease_name: String,

    /// Namespace of the Lease (default: the pod's namespace from POD_NAMESPACE, else `default`).
    #[arg(long, env = "LEASE_NAMESPACE")]
    pub lease_namespace: Option<String>,

    /// How long a leader's Lease is valid without renewal; a standby takes over after this.
    #[arg(long, env = "LEASE_DURATION_SECONDS", default_value_t = 10, value_parser = clap::value_parser!(u32).range(2..=300))]
    pub lease_duration_seconds: u32,

    /// This replica's identity in the Lease and in Events (default: the pod name, else the host name).
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
}
