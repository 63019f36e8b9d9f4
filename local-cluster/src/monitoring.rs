//! What `cargo xtask cluster up --monitoring` adds to a cluster with a dataplane, as the testbed finds
//! it: the Prometheus Operator running against the API server, and the programs a Prometheus pod runs
//! (Prometheus, the operator's config reloader), linked into the cluster folder by the names of the
//! images they stand for.

use std::path::PathBuf;

use crate::ClusterDir;

/// The state file's name for the operator's process.
pub const OPERATOR_PROCESS: &str = "prometheus-operator";
/// The namespace every monitoring stack of the local cluster lives in (as kube-prometheus and
/// kube-prometheus-stack install theirs).
pub const NAMESPACE: &str = "monitoring";

/// Where the programs of the images the operator's pods name are linked, by image repository's last
/// path element: `prometheus`, `prometheus-config-reloader`.
pub fn image_programs(cluster: &ClusterDir) -> PathBuf {
    cluster.path().join("monitoring/images")
}

/// Whether the running cluster has its monitoring: the operator's process recorded and the programs
/// linked.
pub fn is_up(cluster: &ClusterDir) -> bool {
    let Some(state) = cluster.load() else {
        return false;
    };
    state.process(OPERATOR_PROCESS).is_some()
        && ["prometheus", "prometheus-config-reloader"]
            .iter()
            .all(|name| image_programs(cluster).join(name).is_file())
}
