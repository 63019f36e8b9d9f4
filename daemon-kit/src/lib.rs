//! The skeleton every daemon of this project shares, so that each one only wires its own logic:
//! logging flags and tracing set-up ([`telemetry`]), the admin HTTP server with `/livez`, `/readyz` and
//! `/metrics` ([`admin`]), the Prometheus text encoder of the exporters ([`exposition`]), and the signal
//! handling for a graceful stop ([`shutdown`]).

pub mod admin;
pub mod exposition;
pub mod flags;
pub mod shutdown;
pub mod telemetry;
