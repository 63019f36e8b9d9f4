//! prosody-exporter: a sidecar that reads Prosody's own OpenMetrics (`mod_http_openmetrics`) and Jitsi's
//! room census on localhost — where Prosody allows them — and serves both to Prometheus as valid text.
//!
//! [`census`] and daemon-kit's `openmetrics` parser are the pure core; [`scrape`] fetches; daemon-kit's exporter skeleton serves.
//! `manifests/components/prosody-muc-census/mod_muc_census.lua` serves the census where Jitsi's module is missing.

pub mod census;
pub mod cli;
pub mod scrape;
