use std::process::ExitCode;

use clap::Parser;
use jvb_exporter::cli::Cli;
use jvb_exporter::scrape::Exporter;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(error) = daemon_kit::telemetry::init(&cli.log) {
        eprintln!("jvb-exporter: {error}");
        return ExitCode::from(2);
    }
    let exporter = match Exporter::new(
        &cli.jvb_url,
        cli.timeout,
        cli.body_limit,
        cli.source,
        cli.legacy_names,
    ) {
        Ok(exporter) => exporter,
        Err(error) => {
            tracing::error!("--jvb-url: {error}");
            return ExitCode::from(2);
        }
    };
    // One thread (daemon-kit's choice): a thread pool cost more CPU per scrape than it saved (measured with
    // `cargo xtask bench exporter`).
    daemon_kit::run_http_daemon(cli.listen, cli.connections.limits(), |readiness| {
        daemon_kit::exporter::router(exporter, readiness)
    })
}
