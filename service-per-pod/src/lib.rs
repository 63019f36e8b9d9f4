//! Gives every pod of an opted-in StatefulSet its own NodePort Service at base port + ordinal, kept until the pod is really gone.
//!
//! Only the command line exists so far; the behaviour arrives with issue 3.

use daemon_kit::telemetry::LogArgs;

/// Gives every pod of an opted-in StatefulSet its own NodePort Service at base port + ordinal, kept until the pod is really gone.
#[derive(Debug, clap::Parser)]
#[command(name = "service-per-pod", version)]
pub struct Cli {
    #[command(flatten)]
    pub log: LogArgs,
}
