//! Turns a Jitsi Videobridge's colibri stats into Prometheus metrics.
//!
//! Only the command line exists so far; the behaviour arrives with issue 10.

use daemon_kit::telemetry::LogArgs;

/// Turns a Jitsi Videobridge's colibri stats into Prometheus metrics.
#[derive(Debug, clap::Parser)]
#[command(name = "jvb-exporter", version)]
pub struct Cli {
    #[command(flatten)]
    pub log: LogArgs,
}
