//! jvb-exporter: a Jitsi Videobridge's `/colibri/stats` (and optionally its native `/metrics`) as
//! Prometheus metrics, correct (counters are counters) and never dark (a failing bridge gives
//! `jitsi_up 0`, never an error page or stale values).
//!
//! [`fields`], [`convert`] and [`exposition`] are the pure core; [`scrape`] talks to the bridge; the HTTP
//! side (`/metrics`, `/livez`, `/readyz`) is daemon-kit's exporter skeleton.

pub mod cli;
pub mod convert;
pub mod exposition;
pub mod fields;
pub mod scrape;

#[cfg(test)]
mod property_tests;
