use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use prosody_exporter::cli::Cli;
use prosody_exporter::scrape::Exporter;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(error) = daemon_kit::telemetry::init(&cli.log) {
        eprintln!("prosody-exporter: {error}");
        return ExitCode::from(2);
    }
    let census_path = (!cli.no_census).then_some(cli.census_path.as_str());
    let exporter = match Exporter::new(
        &cli.prosody_url,
        &cli.metrics_path,
        census_path,
        cli.timeout,
        cli.body_limit,
    ) {
        Ok(exporter) => Arc::new(exporter),
        Err(error) => {
            tracing::error!("--prosody-url: {error}");
            return ExitCode::from(2);
        }
    };
    daemon_kit::run_http_daemon(cli.listen, cli.connections.limits(), |readiness| {
        daemon_kit::exporter::router(exporter, readiness)
    })
}
