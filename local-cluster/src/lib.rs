//! The local cluster's one definition, shared by `xtask` (which starts and stops it) and the testbed
//! (which runs tests, the demo and benchmarks against it): the topology every run gets, where its state
//! lives, the typed state file, and the process helpers both sides need ([`process`]), so neither
//! re-parses what the other wrote.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub mod autoscaling;
pub mod dataplane;
pub mod monitoring;
pub mod process;
pub mod source;

/// The Service CIDR; its first address is the `kubernetes` Service, named in the serving certificate.
pub const SERVICE_CIDR: &str = "10.96.0.0/16";
pub const KUBERNETES_SERVICE_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 1);
/// Pod IPs handed out by KWOK; must not overlap the Service CIDR.
pub const POD_CIDR: &str = "10.244.0.0/16";
/// The API server's `--service-node-port-range`.
pub const NODE_PORT_RANGE: (u16, u16) = (30000, 32767);

/// A fake Node of the cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Node {
    pub name: &'static str,
    pub zone: &'static str,
    /// Its InternalIP: on a private segment that exists only inside the dataplane's namespaces
    /// (`dataplane`), where this address is the node's own.
    pub ip: Ipv4Addr,
}

/// The fake Nodes every local cluster has, in two zones.
pub const NODES: [Node; 3] = [
    Node {
        name: "kwok-node-0",
        zone: "local-1a",
        ip: Ipv4Addr::new(10, 250, 0, 1),
    },
    Node {
        name: "kwok-node-1",
        zone: "local-1b",
        ip: Ipv4Addr::new(10, 250, 0, 2),
    },
    Node {
        name: "kwok-node-2",
        zone: "local-1a",
        ip: Ipv4Addr::new(10, 250, 0, 3),
    },
];

/// The repository this crate is part of.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// Where built tools and upstream sources are cached, shared by every clone and CI run on this machine:
/// `JITSI_K8S_CACHE`, else `$XDG_CACHE_HOME/jitsi-k8s`, else `~/.cache/jitsi-k8s`.
pub fn cache_dir() -> Result<PathBuf, String> {
    if let Some(dir) = std::env::var_os("JITSI_K8S_CACHE") {
        return Ok(PathBuf::from(dir));
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
        return Ok(PathBuf::from(dir).join("jitsi-k8s"));
    }
    let home = std::env::var_os("HOME").ok_or("HOME is not set: set JITSI_K8S_CACHE")?;
    Ok(PathBuf::from(home).join(".cache/jitsi-k8s"))
}

/// Where a local cluster keeps everything it writes (PKI, kubeconfigs, etcd data, logs, state file):
/// `JITSI_K8S_CLUSTER_DIR`, else `target/local-cluster` in the repository.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterDir(pub PathBuf);

impl ClusterDir {
    pub fn discover() -> Self {
        Self(
            std::env::var_os("JITSI_K8S_CLUSTER_DIR")
                .map_or_else(|| repo_root().join("target/local-cluster"), PathBuf::from),
        )
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// The admin's kubeconfig (contexts `admin`, and `alice`, `bob`, `carol` without any rights).
    pub fn kubeconfig(&self) -> PathBuf {
        self.0.join("kubeconfig")
    }

    pub fn logs(&self) -> PathBuf {
        self.0.join("logs")
    }

    fn state_file(&self) -> PathBuf {
        self.0.join("state.json")
    }

    /// The running cluster's state; `None` when there is none (or its file is unreadable).
    pub fn load(&self) -> Option<State> {
        let text = std::fs::read_to_string(self.state_file()).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// Writes the state atomically (a reader never sees half of it).
    pub fn save(&self, state: &State) -> std::io::Result<()> {
        let tmp = self.0.join("state.json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(state)?)?;
        std::fs::rename(&tmp, self.state_file())
    }
}

/// What a running local cluster is: versions, ports and processes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    pub kubernetes_version: String,
    pub kwok_version: String,
    pub apiserver_port: u16,
    pub etcd_client_port: u16,
    pub scheduler_port: u16,
    /// In start order.
    pub processes: Vec<Process>,
}

impl State {
    pub fn process(&self, name: &str) -> Option<&Process> {
        self.processes.iter().find(|process| process.name == name)
    }

    pub fn process_mut(&mut self, name: &str) -> Option<&mut Process> {
        self.processes.iter_mut().find(|process| process.name == name)
    }
}

/// One process of the cluster, and how it was started, so it can be started again the same way.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Process {
    pub name: String,
    pub pid: u32,
    pub program: PathBuf,
    pub args: Vec<String>,
    pub log: PathBuf,
}

/// A TCP port on 127.0.0.1 that nothing listens on now. The kernel hands out ephemeral ports in
/// sequence, so a port that was just free stays free long enough for the process started next to bind it.
pub fn free_tcp_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// As [`free_tcp_port`], for UDP.
pub fn free_udp_port() -> std::io::Result<u16> {
    Ok(std::net::UdpSocket::bind("127.0.0.1:0")?.local_addr()?.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips_through_its_file() {
        let dir = std::env::temp_dir().join(format!("local-cluster-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cluster = ClusterDir(dir.clone());
        assert_eq!(cluster.load(), None);
        let state = State {
            kubernetes_version: "v1.36.3".into(),
            kwok_version: "v0.8.0".into(),
            apiserver_port: 1,
            etcd_client_port: 2,
            scheduler_port: 3,
            processes: vec![Process {
                name: "etcd".into(),
                pid: 42,
                program: "/bin/etcd".into(),
                args: vec!["--name=default".into()],
                log: dir.join("logs/etcd.log"),
            }],
        };
        cluster.save(&state).unwrap();
        assert_eq!(cluster.load(), Some(state.clone()));
        assert_eq!(state.process("etcd").map(|p| p.pid), Some(42));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn nodes_span_two_zones_with_distinct_addresses() {
        let zones: std::collections::BTreeSet<_> = NODES.iter().map(|node| node.zone).collect();
        let ips: std::collections::BTreeSet<_> = NODES.iter().map(|node| node.ip).collect();
        assert!(zones.len() >= 2);
        assert_eq!(ips.len(), NODES.len());
    }

    #[test]
    fn free_ports_are_free() {
        let port = free_tcp_port().unwrap();
        assert!(std::net::TcpListener::bind(("127.0.0.1", port)).is_ok());
        assert_ne!(free_udp_port().unwrap(), 0);
    }
}
