//! The metric names our dashboards, alerts and adapter rules may use besides our exporters' own: standard
//! names of programs we do not ship, each list checked where the program can run.

/// HAProxy's built-in Prometheus exporter; `tests/haproxy.rs` checks them against the real one.
pub const HAPROXY_METRICS: &[&str] = &[
    "haproxy_backend_active_servers",
    "haproxy_server_http_responses_total",
    "haproxy_sticktable_used",
];
