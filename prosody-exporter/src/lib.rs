//! prosody-exporter: a sidecar that reads Prosody's own OpenMetrics (`mod_http_openmetrics`) and Jitsi's
//! room census on localhost — where Prosody allows them — and serves both to Prometheus as valid text.
//!
//! [`census`] and daemon-kit's `openmetrics` parser are the pure core; [`scrape`] fetches; daemon-kit's exporter skeleton serves.
//! The census comes from Jitsi's `mod_muc_census` (in the jitsi/prosody image); the tests' Prosody loads
//! the stand-in `testbed/prosody/mod_muc_census.lua`.

pub mod census;
pub mod cli;
pub mod scrape;
