//! Command line; every option can also be set from the environment.

use std::path::PathBuf;
use std::time::Duration;

use daemon_kit::telemetry::LogArgs;

/// Starts a Jitsi Videobridge with the port and address its pod identity gives it, and drains it
/// gracefully when the pod stops.
#[derive(Debug, clap::Parser)]
#[command(name = "jvb-startup", version)]
pub struct Cli {
    #[command(flatten)]
    pub log: LogArgs,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Decide port and address, then exec the command (`-- /init`), which keeps this process's PID.
    Exec(ExecArgs),
    /// The preStop hook: graceful shutdown, then wait until the bridge's calls have ended.
    Drain(DrainArgs),
    /// Copy this binary into a folder (an emptyDir shared with the bridge container).
    Install(InstallArgs),
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    #[default]
    Plain,
    Json,
}

#[derive(Debug, clap::Args)]
pub struct ExecArgs {
    /// The pod's name (downward API metadata.name); HOSTNAME when unset. Its ordinal is the digits after the last `-`.
    #[arg(long, env = "POD_NAME")]
    pub pod_name: Option<String>,

    /// The shard's base port: the bridge listens on, and advertises, base port + ordinal.
    #[arg(long, env = "JVB_BASE_PORT")]
    pub base_port: Option<String>,

    /// Address(es) to advertise, comma-separated (IPv4 or IPv6). Wins over everything else.
    #[arg(long, env = "JVB_ADVERTISE_IP")]
    pub advertise_ip: Option<String>,

    /// Advertise the Node's ExternalIP (else its InternalIP), read through the pod's ServiceAccount.
    #[arg(long, env = "JVB_ADVERTISE_FROM_NODE")]
    pub advertise_from_node: bool,

    /// Advertise the external address of this LoadBalancer Service (status.loadBalancer.ingress; a
    /// hostname is resolved), waiting until it has one: the shard's one public address, with every bridge
    /// on its own port. Needs `get` on that Service.
    #[arg(
        long,
        env = "JVB_ADVERTISE_FROM_SERVICE",
        conflicts_with = "advertise_from_node"
    )]
    pub advertise_from_service: Option<String>,

    /// How long --advertise-from-service waits for the load balancer's address before giving up (exit 3).
    #[arg(long, env = "JVB_SERVICE_WAIT", default_value = "10m", value_parser = daemon_kit::flags::parse_duration)]
    pub service_wait: Duration,

    /// The pod's namespace (downward API metadata.namespace), where --advertise-from-service looks; else
    /// the ServiceAccount's.
    #[arg(long, env = "POD_NAMESPACE")]
    pub pod_namespace: Option<String>,

    /// The Node the pod runs on (downward API spec.nodeName), for --advertise-from-node.
    #[arg(long, env = "NODE_NAME")]
    pub node_name: Option<String>,

    /// The Node's address (downward API status.hostIP): advertised when nothing else applies.
    #[arg(long, env = "HOST_IP")]
    pub host_ip: Option<String>,

    /// The pod's own address (downward API status.podIP): the local side of --write-config's mappings.
    #[arg(long, env = "POD_IP")]
    pub pod_ip: Option<String>,

    /// The nodes' own addresses are private (a private-node cluster): refuse to start (exit 2, one
    /// sentence) rather than advertise an address no participant can reach — a call that connects with
    /// no media is worse than a bridge that does not start.
    #[arg(long, env = "JVB_REQUIRE_PUBLIC_ADDRESS")]
    pub require_public_address: bool,

    /// The cluster's NodePort range: a port outside it is started anyway, with a warning.
    #[arg(long, env = "NODE_PORT_RANGE", default_value = "30000-32767")]
    pub node_port_range: String,

    /// Also write the settings as HOCON to this file (atomically), e.g. /config/custom-jvb.conf.
    #[arg(long, env = "JVB_WRITE_CONFIG")]
    pub write_config: Option<PathBuf>,

    /// Print the decision and exit without starting anything.
    #[arg(long)]
    pub dry_run: bool,

    /// Format of --dry-run's output.
    #[arg(long, value_enum, default_value_t = Output::Plain)]
    pub output: Output,

    /// The command to exec, after `--` (e.g. `-- /init`).
    #[arg(last = true, required_unless_present = "dry_run")]
    pub command: Vec<String>,
}

#[derive(Debug, clap::Args)]
pub struct DrainArgs {
    /// The bridge's private HTTP API.
    #[arg(long, env = "JVB_URL", default_value = "http://127.0.0.1:8080")]
    pub jvb_url: String,

    /// How often to poll /colibri/stats.
    #[arg(long, env = "DRAIN_INTERVAL", default_value = "5s", value_parser = daemon_kit::flags::parse_duration)]
    pub interval: Duration,

    /// Give up waiting after this long (keep it below the pod's terminationGracePeriodSeconds).
    #[arg(long, env = "DRAIN_TIMEOUT", default_value = "3h", value_parser = daemon_kit::flags::parse_duration)]
    pub timeout: Duration,

    /// Only enable drain mode (no new conferences here) instead of a graceful shutdown.
    #[arg(long, env = "DRAIN_ONLY")]
    pub drain_only: bool,

    /// The bridge counts as gone only once its port has refused connections for this long (at least
    /// three times in a row): a bridge that is slow, restarting its listener or briefly overloaded is not
    /// gone.
    #[arg(long, env = "DRAIN_GONE_AFTER", default_value = "3s", value_parser = daemon_kit::flags::parse_duration)]
    pub gone_after: Duration,

    /// Timeout of each HTTP request to the bridge.
    #[arg(long, env = "DRAIN_REQUEST_TIMEOUT", default_value = "5s", value_parser = daemon_kit::flags::parse_duration)]
    pub request_timeout: Duration,

    /// Also write the progress to this file. The kubelet keeps nothing a preStop hook prints, so the
    /// manifests set /proc/1/fd/1 — the container's own log (`kubectl logs`).
    #[arg(long, env = "DRAIN_LOG_TO")]
    pub log_to: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct InstallArgs {
    /// The folder to copy the binary into (as `jvb-startup`).
    pub dir: PathBuf,
}
