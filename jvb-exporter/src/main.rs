use std::process::ExitCode;

use clap::Parser;
use daemon_kit::admin::BoundServer;
use daemon_kit::shutdown::Shutdown;
use jvb_exporter::cli::Cli;
use jvb_exporter::scrape::Exporter;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(error) = daemon_kit::telemetry::init(&cli.log) {
        eprintln!("jvb-exporter: {error}");
        return ExitCode::from(2);
    }
    // One thread: a scrape is a few hundred microseconds of work, and handing it between worker threads
    // costs more CPU than it saves (measured with `cargo xtask bench exporter`).
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            tracing::error!("cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let exporter = match Exporter::new(&cli.jvb_url, cli.timeout, cli.source, cli.legacy_names) {
            Ok(exporter) => exporter,
            Err(error) => {
                tracing::error!("cannot build the HTTP client: {error}");
                return ExitCode::FAILURE;
            }
        };
        let shutdown = match Shutdown::install() {
            Ok(shutdown) => shutdown,
            Err(error) => {
                tracing::error!("cannot install signal handlers: {error}");
                return ExitCode::FAILURE;
            }
        };
        let server = match BoundServer::bind(cli.listen).await {
            Ok(server) => server,
            Err(error) => {
                tracing::error!("{error}");
                return ExitCode::FAILURE;
            }
        };
        match jvb_exporter::server::serve(server, exporter, shutdown).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                tracing::error!("{error}");
                ExitCode::FAILURE
            }
        }
    })
}
