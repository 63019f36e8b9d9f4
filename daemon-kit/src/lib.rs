//! The skeleton every daemon of this project shares, so that each one only wires its own logic:
//! logging flags and tracing set-up ([`telemetry`]), the admin HTTP server with `/livez`, `/readyz` and
//! `/metrics` ([`admin`]), the Prometheus text encoder of the exporters ([`exposition`]), and the signal
//! handling for a graceful stop ([`shutdown`]).

pub mod admin;
pub mod exposition;
pub mod flags;
pub mod shutdown;
pub mod telemetry;

use std::net::SocketAddr;
use std::process::ExitCode;

/// Runs an HTTP daemon whose only listener is `listen` (the exporters): a one-thread runtime — each
/// request is a little work between two local fetches — signal handling, ready as soon as the listener is
/// bound, served until the first stop signal. Every failure is logged as one line and gives a non-zero
/// exit code.
pub fn run_http_daemon(
    listen: SocketAddr,
    router: impl FnOnce(admin::Readiness) -> axum::Router,
) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            tracing::error!("cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let shutdown = match shutdown::Shutdown::install() {
            Ok(shutdown) => shutdown,
            Err(error) => {
                tracing::error!("cannot install signal handlers: {error}");
                return ExitCode::FAILURE;
            }
        };
        let server = match admin::BoundServer::bind(listen).await {
            Ok(server) => server,
            Err(error) => {
                tracing::error!("{error}");
                return ExitCode::FAILURE;
            }
        };
        let readiness = admin::Readiness::default();
        readiness.set(true);
        tracing::info!(addr = %server.local_addr(), "serving /metrics");
        match server
            .serve(router(readiness), async move { shutdown.draining().await })
            .await
        {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                tracing::error!("{error}");
                ExitCode::FAILURE
            }
        }
    })
}
