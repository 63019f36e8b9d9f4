use std::process::ExitCode;
use std::sync::Mutex;

use clap::Parser;
use jvb_startup::cli::{Cli, Command};
use jvb_startup::{drain, exec, install};
use tracing_subscriber::fmt::writer::BoxMakeWriter;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let log_to = match &cli.command {
        Command::Drain(args) => args.log_to.clone(),
        _ => None,
    };
    // The drain hook's own output is lost (the kubelet keeps none of it): write it where the container's
    // log is. If that cannot be opened, stderr it is, and the reason is the first line logged.
    let (installed, unopened) = match log_to
        .map(|path| (std::fs::OpenOptions::new().append(true).open(&path), path))
    {
        Some((Ok(file), _)) => (
            daemon_kit::telemetry::init_with_writer(&cli.log, BoxMakeWriter::new(Mutex::new(file)), false),
            None,
        ),
        Some((Err(error), path)) => (daemon_kit::telemetry::init(&cli.log), Some((path, error))),
        None => (daemon_kit::telemetry::init(&cli.log), None),
    };
    if let Err(error) = installed {
        eprintln!("jvb-startup: {error}");
        return ExitCode::from(2);
    }
    if let Some((path, error)) = unopened {
        tracing::warn!("cannot write to {} ({error}); logging to stderr", path.display());
    }
    match cli.command {
        Command::Exec(args) => match exec::run(&args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                tracing::error!("{error}");
                ExitCode::from(error.exit_code())
            }
        },
        Command::Drain(args) => drain::main(&args),
        Command::Install(args) => match install::install(&args.dir) {
            Ok(path) => {
                tracing::info!(path = %path.display(), "installed");
                ExitCode::SUCCESS
            }
            Err(error) => {
                tracing::error!("{error}");
                ExitCode::FAILURE
            }
        },
    }
}
