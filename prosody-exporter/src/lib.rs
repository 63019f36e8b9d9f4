//! prosody-exporter: a sidecar that reads Prosody's own OpenMetrics (`mod_http_openmetrics`) and Jitsi's
//! room census on localhost — where Prosody allows them — and serves both to Prometheus as valid text.
//!
//! [`openmetrics`] and [`census`] are the pure core; [`scrape`] fetches; [`server`] serves.
//! `prosody-modules/mod_muc_census.lua` serves the census for Prosody installations without Jitsi's module.

pub mod census;
pub mod cli;
pub mod openmetrics;
pub mod scrape;
pub mod server;
