use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use daemon_kit::admin::BoundServer;
use daemon_kit::shutdown::Shutdown;
use prosody_exporter::cli::Cli;
use prosody_exporter::scrape::Exporter;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(error) = daemon_kit::telemetry::init(&cli.log) {
        eprintln!("prosody-exporter: {error}");
        return ExitCode::from(2);
    }
    // One thread: each scrape is a little parsing between two local requests.
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            tracing::error!("cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let census_path = (!cli.no_census).then_some(cli.census_path.as_str());
        let exporter = match Exporter::new(&cli.prosody_url, &cli.metrics_path, census_path, cli.timeout) {
            Ok(exporter) => Arc::new(exporter),
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
        match prosody_exporter::server::serve(server, exporter, shutdown).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                tracing::error!("{error}");
                ExitCode::FAILURE
            }
        }
    })
}
