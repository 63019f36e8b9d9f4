//! Works out a Jitsi Videobridge's port and advertised address from its pod identity, then execs the image's /init; drains it gracefully on preStop.
//!
//! Only the command line exists so far; the behaviour arrives with issue 4.

use daemon_kit::telemetry::LogArgs;

/// Works out a Jitsi Videobridge's port and advertised address from its pod identity, then execs the image's /init; drains it gracefully on preStop.
#[derive(Debug, clap::Parser)]
#[command(name = "jvb-startup", version)]
pub struct Cli {
    #[command(flatten)]
    pub log: LogArgs,
}
