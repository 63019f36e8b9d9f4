//! Command line; every flag can also be set from the environment.

use std::net::SocketAddr;
use std::time::Duration;

use daemon_kit::telemetry::LogArgs;

/// Serves Prosody's statistics and Jitsi's room census to Prometheus.
#[derive(Debug, clap::Parser)]
#[command(name = "prosody-exporter", version)]
pub struct Cli {
    /// Prosody's HTTP port, on localhost (its /metrics only answers allowed addresses).
    #[arg(long, env = "PROSODY_URL", default_value = "http://127.0.0.1:5280")]
    pub prosody_url: String,

    /// Path of mod_http_openmetrics.
    #[arg(long, env = "METRICS_PATH", default_value = "/metrics")]
    pub metrics_path: String,

    /// Path of the room census (mod_muc_census).
    #[arg(long, env = "CENSUS_PATH", default_value = "/room-census")]
    pub census_path: String,

    /// Do not read the room census.
    #[arg(long, env = "NO_CENSUS")]
    pub no_census: bool,

    /// Address to serve /metrics, /livez and /readyz on.
    #[arg(long, env = "LISTEN", default_value = "0.0.0.0:9889")]
    pub listen: SocketAddr,

    /// Timeout of each request to Prosody; keep it below Prometheus's scrape timeout.
    #[arg(long, env = "TIMEOUT", default_value = "2s", value_parser = daemon_kit::flags::parse_duration)]
    pub timeout: Duration,

    /// Largest body read from Prosody; a larger one is a failed scrape (reason `too_large`).
    #[arg(long, env = "BODY_LIMIT", default_value = "8MiB", value_parser = daemon_kit::flags::parse_bytes)]
    pub body_limit: usize,

    #[command(flatten)]
    pub connections: daemon_kit::http_server::ConnectionArgs,

    #[command(flatten)]
    pub log: LogArgs,
}
