//! Command line; every flag can also be set from the environment.

use std::net::SocketAddr;
use std::time::Duration;

use daemon_kit::telemetry::LogArgs;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Source {
    /// `/colibri/stats` as `jitsi_*` metrics.
    Colibri,
    /// The bridge's own `/metrics` (`jitsi_jvb_*`), passed through.
    Native,
    /// Both, in one response.
    Both,
}

impl Source {
    pub fn colibri(self) -> bool {
        matches!(self, Source::Colibri | Source::Both)
    }

    pub fn native(self) -> bool {
        matches!(self, Source::Native | Source::Both)
    }
}

/// Serves a Jitsi Videobridge's colibri stats as Prometheus metrics.
#[derive(Debug, clap::Parser)]
#[command(name = "jvb-exporter", version)]
pub struct Cli {
    /// The bridge's private HTTP API.
    #[arg(long, env = "JVB_URL", default_value = "http://127.0.0.1:8080")]
    pub jvb_url: String,

    /// Address to serve /metrics, /livez and /readyz on.
    #[arg(long, env = "LISTEN", default_value = "0.0.0.0:9888")]
    pub listen: SocketAddr,

    /// Upstream timeout: keep it below Prometheus's scrape timeout.
    #[arg(long, env = "TIMEOUT", default_value = "3s", value_parser = daemon_kit::flags::parse_duration)]
    pub timeout: Duration,

    /// Largest body read from the bridge; a larger one is a failed scrape (reason `too_large`).
    #[arg(long, env = "BODY_LIMIT", default_value = "4MiB", value_parser = daemon_kit::flags::parse_bytes)]
    pub body_limit: usize,

    /// What to export.
    #[arg(long, env = "SOURCE", value_enum, default_value_t = Source::Colibri)]
    pub source: Source,

    /// Also emit the old names of cumulative fields (`jitsi_total_conferences_created`, untyped), so
    /// existing dashboards keep working. `--legacy-names=false` turns them off.
    #[arg(long, env = "LEGACY_NAMES", default_value_t = true, action = clap::ArgAction::Set)]
    pub legacy_names: bool,

    #[command(flatten)]
    pub connections: daemon_kit::http_server::ConnectionArgs,

    #[command(flatten)]
    pub log: LogArgs,
}
