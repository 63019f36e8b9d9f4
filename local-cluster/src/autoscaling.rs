//! What `cargo xtask cluster up --autoscaling` adds to a cluster with monitoring, as the testbed finds
//! it: KEDA's operator and its metrics API server, registered with the API server's aggregation layer
//! as `v1beta1.external.metrics.k8s.io`, so kube-controller-manager's HPA controller reads KEDA's
//! metrics as it does on any cluster.
//!
//! Both run on this host (their containers would hold nothing else), under KEDA's own ServiceAccount
//! and upstream RBAC. Two things a cluster network gives them are stood in for, and only these:
//! - the API server reaches the metrics server through an `ExternalName` Service naming this host's
//!   loopback (a real cluster's API server routes to the Service's ClusterIP);
//! - KEDA's operator resolves the monitoring stacks' Prometheus Service names (the addresses our
//!   ScaledObjects name, unchanged) through a hosts file of its own, to loopback addresses where the
//!   testbed forwards to the Prometheus pod once it runs ([`prometheus_stand_in`]).

use std::net::Ipv4Addr;

use crate::ClusterDir;

/// The state file's names for KEDA's two processes.
pub const OPERATOR_PROCESS: &str = "keda-operator";
pub const METRICS_SERVER_PROCESS: &str = "keda-metrics-apiserver";
/// KEDA's namespace, as its release manifests install it.
pub const NAMESPACE: &str = "keda";
/// The APIService KEDA serves.
pub const API_SERVICE: &str = "v1beta1.external.metrics.k8s.io";

/// Each monitoring stack's Prometheus Service, as our components' ScaledObjects name it, and the
/// loopback address KEDA's operator resolves it to here.
pub const PROMETHEUS_SERVICES: [(&str, Ipv4Addr); 2] = [
    // kube-prometheus: Service prometheus-k8s.
    ("prometheus-k8s.monitoring.svc", Ipv4Addr::new(127, 0, 81, 1)),
    // kube-prometheus-stack, release kube-prometheus-stack: Service <release>-prometheus.
    (
        "kube-prometheus-stack-prometheus.monitoring.svc",
        Ipv4Addr::new(127, 0, 81, 2),
    ),
];
/// The port both stacks' Prometheus Services serve.
pub const PROMETHEUS_PORT: u16 = 9090;

/// Where KEDA's operator finds the Prometheus Service `host` (a name of [`PROMETHEUS_SERVICES`]).
pub fn prometheus_stand_in(host: &str) -> Option<std::net::SocketAddr> {
    PROMETHEUS_SERVICES
        .iter()
        .find(|(name, _)| *name == host)
        .map(|(_, ip)| std::net::SocketAddr::from((*ip, PROMETHEUS_PORT)))
}

/// The hosts file KEDA's operator sees as `/etc/hosts`: this host's own, and the Prometheus Services
/// (with and without the cluster domain).
pub fn hosts_file(host_hosts: &str) -> String {
    let mut text = host_hosts.trim_end().to_owned();
    text.push_str("\n# jitsi-k8s local cluster: the monitoring stacks' Prometheus Services\n");
    for (name, ip) in PROMETHEUS_SERVICES {
        text.push_str(&format!("{ip} {name} {name}.cluster.local\n"));
    }
    text
}

/// Whether the running cluster has KEDA: both processes recorded and running.
pub fn is_up(cluster: &ClusterDir) -> bool {
    cluster.load().is_some_and(|state| {
        [OPERATOR_PROCESS, METRICS_SERVER_PROCESS].iter().all(|name| {
            state
                .process(name)
                .is_some_and(|process| crate::process::is_running(process.pid))
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hosts_file_keeps_the_hosts_own_lines_and_names_each_stack() {
        let text = hosts_file("127.0.0.1 localhost\n");
        assert!(text.starts_with("127.0.0.1 localhost\n"));
        assert!(text.contains(
            "127.0.81.1 prometheus-k8s.monitoring.svc prometheus-k8s.monitoring.svc.cluster.local\n"
        ));
        assert_eq!(
            prometheus_stand_in("kube-prometheus-stack-prometheus.monitoring.svc"),
            Some("127.0.81.2:9090".parse().unwrap())
        );
        assert_eq!(prometheus_stand_in("elsewhere.svc"), None);
    }
}
