//! Exposes Prosody's statistics and Jitsi's room census to Prometheus.
//!
//! Only the command line exists so far; the behaviour arrives with issue 5.

use daemon_kit::telemetry::LogArgs;

/// Exposes Prosody's statistics and Jitsi's room census to Prometheus.
#[derive(Debug, clap::Parser)]
#[command(name = "prosody-exporter", version)]
pub struct Cli {
    #[command(flatten)]
    pub log: LogArgs,
}
