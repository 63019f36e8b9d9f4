//! `--log-level` and `--log-format`, and the tracing subscriber they configure.

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::writer::BoxMakeWriter;

/// How log lines are written to stderr.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One human-readable line per event.
    #[default]
    Plain,
    /// One JSON object per line, for log collectors.
    Json,
}

/// Logging flags, flattened into every daemon's command line.
#[derive(Clone, Debug, clap::Args)]
pub struct LogArgs {
    /// Log filter: a level (`info`) or tracing directives (`info,kube=warn`).
    #[arg(long, env = "LOG_LEVEL", default_value = "info")]
    pub log_level: String,

    /// Log line format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Plain)]
    pub log_format: LogFormat,
}

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("--log-level {directive:?} is not a valid log filter: {source}")]
    InvalidFilter {
        directive: String,
        source: tracing_subscriber::filter::ParseError,
    },
    #[error("a global tracing subscriber was already installed")]
    AlreadyInstalled,
}

/// Installs the global tracing subscriber, writing to stderr. Call once, first thing in `main`.
pub fn init(args: &LogArgs) -> Result<(), TelemetryError> {
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    init_with_writer(args, BoxMakeWriter::new(std::io::stderr), ansi)
}

/// As [`init`], writing to `writer` (colours only when `ansi`).
pub fn init_with_writer(args: &LogArgs, writer: BoxMakeWriter, ansi: bool) -> Result<(), TelemetryError> {
    let filter = EnvFilter::try_new(&args.log_level).map_err(|source| TelemetryError::InvalidFilter {
        directive: args.log_level.clone(),
        source,
    })?;
    // Colours only for a person at a terminal: in a pod's log they would be noise.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(ansi);
    let installed = match args.log_format {
        LogFormat::Plain => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
    };
    installed.map_err(|_| TelemetryError::AlreadyInstalled)
}
