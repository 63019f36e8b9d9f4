use std::process::ExitCode;

use clap::Parser;
use jvb_startup::cli::{Cli, Command};
use jvb_startup::{drain, exec, install};

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(error) = daemon_kit::telemetry::init(&cli.log) {
        eprintln!("jvb-startup: {error}");
        return ExitCode::from(2);
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
