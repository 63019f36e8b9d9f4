//! The skeleton every daemon of this project shares, so that each one only wires its own logic:
//! logging flags and tracing set-up ([`telemetry`]) and flag parsers ([`flags`]) for all; behind the
//! `server` feature the admin HTTP server with `/livez` and `/readyz` ([`admin`]) and the signal handling
//! for a graceful stop ([`shutdown`]); behind `registry` a `/metrics` from a prometheus-client registry;
//! behind `exporter` what both exporters are made of ([`exporter`], [`exposition`]).

#[cfg(feature = "server")]
pub mod admin;
#[cfg(feature = "exporter")]
pub mod exporter;
#[cfg(feature = "exporter")]
pub mod exposition;
pub mod flags;
#[cfg(feature = "server")]
pub mod http_server;
#[cfg(feature = "exporter")]
pub mod openmetrics;
#[cfg(feature = "server")]
pub mod shutdown;
pub mod telemetry;

#[cfg(feature = "server")]
use std::net::SocketAddr;
#[cfg(feature = "server")]
use std::process::ExitCode;

#[cfg(feature = "server")]
/// Runs an HTTP daemon whose only listener is `listen` (the exporters): a one-thread runtime — each
/// request is a little work between two local fetches — signal handling, ready as soon as the listener is
/// bound, served until the first stop signal. Every failure is logged as one line and gives a non-zero
/// exit code.
pub fn run_http_daemon(
    listen: SocketAddr,
    limits: http_server::ConnectionLimits,
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
            .serve(
                router(readiness),
                limits,
                async move { shutdown.draining().await },
            )
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
