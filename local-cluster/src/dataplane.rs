//! The local cluster's real dataplane (`cargo xtask cluster up --dataplane`): network namespaces standing
//! for the nodes, their pods and the internet, wired by veth pairs, with a real kube-proxy in each node.
//!
//! ```text
//!   jk-client (10.250.0.100) ─┐
//!   jk-node-0 (10.250.0.1) ───┤ br0 in jk-hub (one L2 segment, no address)
//!   jk-node-1 (10.250.0.2) ───┤
//!   jk-node-2 (10.250.0.3) ───┘
//!   jk-pod-<uid>: eth0 10.244.0.7/32, default via 169.254.1.1 ── veth jkp<uid> in its node
//! ```
//!
//! A node routes each of its pods' /32 to the pod's veth (the pod reaches its gateway by a static
//! neighbour entry for the veth's node end) and every other pod's /32 to the node that hosts it. No address here is routed outside these
//! namespaces; every name starts with `jk-` (namespaces) or `jkp` (pod veths), so `cluster down` and a
//! later `cluster up` remove everything a crashed run left.
//!
//! `xtask` creates the nodes, the client and kube-proxy; the testbed attaches pods (only the pods a test
//! needs on the network) and probes from the client.

use std::net::Ipv4Addr;
use std::process::Command;

use crate::NODES;

pub const HUB: &str = "jk-hub";
pub const CLIENT: &str = "jk-client";
/// The internet's address in the dataplane: the source of every probe.
pub const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 250, 0, 100);
/// The node segment's prefix length.
pub const NODE_PREFIX: u8 = 24;
/// What a pod sees as its gateway: its node's end of the veth, by a static neighbour entry (as Calico).
pub const POD_GATEWAY: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);
const POD_NAMESPACE_PREFIX: &str = "jk-pod-";
/// Where kube-proxy's API server connection ends up in a node's namespace (forwarded to the real one).
pub const APISERVER_IN_NODE: &str = "127.0.0.1";

/// The network namespace standing for a node.
pub fn node_namespace(node: &str) -> String {
    let index = NODES
        .iter()
        .position(|n| n.name == node)
        .map_or_else(|| node.to_owned(), |i| i.to_string());
    format!("jk-node-{index}")
}

/// The network namespace of a pod, by its UID: pod IPs are reused as soon as a pod is gone, while the
/// namespace of the pod that had it may still be being torn down.
pub fn pod_namespace(pod_uid: &str) -> String {
    format!("{POD_NAMESPACE_PREFIX}{}", uid_key(pod_uid))
}

/// The node-side veth of a pod (interface names have at most 15 bytes).
pub fn pod_veth(pod_uid: &str) -> String {
    format!("jkp{}", uid_key(pod_uid))
}

/// The first 10 hexadecimal digits of a UID (40 random bits: no collision among a run's pods).
fn uid_key(pod_uid: &str) -> String {
    pod_uid.chars().filter(char::is_ascii_hexdigit).take(10).collect()
}

/// Every network namespace of the dataplane that exists now (nodes, client, hub, pods).
pub fn namespaces() -> Vec<String> {
    std::fs::read_dir("/run/netns")
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|name| name.starts_with("jk-"))
                .collect()
        })
        .unwrap_or_default()
}

/// Whether the dataplane's node namespaces exist (the cluster was started with `--dataplane`).
pub fn is_up() -> bool {
    let present = namespaces();
    NODES
        .iter()
        .all(|node| present.contains(&node_namespace(node.name)))
        && present.iter().any(|n| n == CLIENT)
}

/// Runs `ip <args>` (in namespace `netns` when given); Err carries ip's own words.
pub fn ip(netns: Option<&str>, args: &[&str]) -> Result<(), String> {
    let mut command = Command::new("ip");
    if let Some(netns) = netns {
        command.args(["netns", "exec", netns, "ip"]);
    }
    let output = command
        .args(args)
        .output()
        .map_err(|e| format!("running ip (iproute2): {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}{}: {}",
            netns.map(|n| format!("(in {n}) ")).unwrap_or_default(),
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

/// Sets a sysctl inside `netns` (each network namespace has its own `net.*`).
pub fn sysctl(netns: &str, key: &str, value: &str) -> Result<(), String> {
    let output = Command::new("ip")
        .args([
            "netns",
            "exec",
            netns,
            "sysctl",
            "-q",
            "-w",
            &format!("{key}={value}"),
        ])
        .output()
        .map_err(|e| format!("running sysctl: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "sysctl {key}={value} in {netns}: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

/// Deletes a network namespace; its veths go with it. Absent is fine.
pub fn delete_namespace(netns: &str) {
    let _ = Command::new("ip").args(["netns", "delete", netns]).output();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_the_kernel_limits() {
        let uid = "0f3c9a2e-51d4-4b7e-9c1a-7d2f8e6b4a10";
        assert_eq!(pod_veth(uid), "jkp0f3c9a2e51");
        assert!(pod_veth(uid).len() <= 15);
        assert_eq!(pod_namespace(uid), "jk-pod-0f3c9a2e51");
        assert_eq!(node_namespace("kwok-node-2"), "jk-node-2");
    }

    #[test]
    fn node_addresses_share_the_client_segment_and_no_pod_or_service_range() {
        for node in NODES {
            assert_eq!(node.ip.octets()[..3], CLIENT_IP.octets()[..3]);
            assert_ne!(node.ip.octets()[..2], [10, 244]);
            assert_ne!(node.ip.octets()[..2], [10, 96]);
        }
    }
}
