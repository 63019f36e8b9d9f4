//! The metric names our dashboards, alerts and adapter rules may use besides our exporters' own: standard
//! names of programs we do not ship, each list checked where the program can run.

/// HAProxy's built-in Prometheus exporter; `tests/haproxy.rs` checks them against the real one.
pub const HAPROXY_METRICS: &[&str] = &[
    "haproxy_backend_active_servers",
    "haproxy_server_http_responses_total",
    "haproxy_sticktable_used",
];

/// Names from the Kubernetes side of a monitoring stack: the kubelet's cAdvisor, kube-state-metrics, and
/// Prometheus's own `up`. No such program runs here; the names are their documented, stable ones.
pub const KUBERNETES_METRICS: &[&str] = &[
    "up",
    "container_cpu_usage_seconds_total",
    "container_memory_working_set_bytes",
    "container_network_transmit_bytes_total",
    "kube_horizontalpodautoscaler_spec_max_replicas",
    "kube_horizontalpodautoscaler_status_current_replicas",
    "kube_pod_container_resource_limits",
    "kube_pod_container_resource_requests",
];
