//! `cargo xtask cluster up --dataplane`: real packets for the local cluster. Each KWOK node becomes a
//! network namespace with its InternalIP, running a real kube-proxy (nftables mode) built from the same
//! Kubernetes module as the control plane, and kube-router's NetworkPolicy controller (iptables and
//! ipsets) enforcing the policies on the node's pods; a client namespace stands for the internet. The layout and the
//! names are in `local_cluster::dataplane`; pods are attached by the tests that need them.
//!
//! kube-proxy reaches the API server, which listens on the host's loopback only, through socat: a Unix
//! socket in the cluster folder (Unix sockets are not bound to a network namespace) forwarded to the API
//! server, and in each node namespace `127.0.0.1:<api server port>` forwarded to that socket. So the
//! node's kubeconfig names the same URL as everyone else's, and the API server is never exposed.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};

use local_cluster::dataplane::{self, CLIENT, CLIENT_IP, HUB, NODE_PREFIX};
use local_cluster::process::{is_running, log_tail};
use local_cluster::{NODES, POD_CIDR, State};

use crate::cluster::start;
use crate::packages::which;
use crate::paths::Paths;

/// kube-proxy's identity: the `system:node-proxier` ClusterRoleBinding names this user.
pub const KUBE_PROXY_USER: &str = "system:kube-proxy";
pub const KUBE_PROXY_KUBECONFIG: &str = "kube-proxy.kubeconfig";
/// kube-router's identity (its NetworkPolicy controller only), with the read-only rights below.
pub const KUBE_ROUTER_USER: &str = "system:kube-router";
pub const KUBE_ROUTER_KUBECONFIG: &str = "kube-router.kubeconfig";
const KUBE_ROUTER_RBAC: &str = "apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: jitsi-k8s-dataplane:kube-router
rules:
  - apiGroups: [\"\"]
    resources: [namespaces, pods, services, endpoints, nodes]
    verbs: [get, list, watch]
  - apiGroups: [networking.k8s.io]
    resources: [networkpolicies]
    verbs: [get, list, watch]
  - apiGroups: [discovery.k8s.io]
    resources: [endpointslices]
    verbs: [get, list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: jitsi-k8s-dataplane:kube-router
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: jitsi-k8s-dataplane:kube-router
subjects:
  - apiGroup: rbac.authorization.k8s.io
    kind: User
    name: system:kube-router
";

/// Builds the dataplane next to a running control plane; `kubernetes_bin` holds kube-proxy.
pub fn up(paths: &Paths, state: &mut State, kubernetes_bin: &Path) -> Result<()> {
    let kube_router = crate::gobuild::KUBE_ROUTER
        .ensure_built(&paths.go_modules(), &paths.cache)?
        .join("kube-router");
    let started = Instant::now();
    crate::packages::ensure_commands(&crate::packages::DATAPLANE_PROGRAMS)?;
    let uid = Command::new("id").arg("-u").output().context("running id")?;
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        bail!("the dataplane creates network namespaces: run `cargo xtask cluster up --dataplane` as root");
    }
    remove_all();
    build_network().map_err(|e| anyhow!("building the dataplane's namespaces: {e}"))?;

    let dir = paths.cluster.path().join("dataplane");
    std::fs::create_dir_all(&dir)?;
    let socket = dir.join("apiserver.sock");
    let port = state.apiserver_port;
    start(
        paths,
        state,
        "dataplane-apiserver-socket",
        &which("socat")?,
        &[
            format!("UNIX-LISTEN:{},fork,unlink-early", socket.display()),
            format!("TCP:127.0.0.1:{port}"),
        ],
    )?;
    let ip = which("ip")?;
    for node in NODES {
        let netns = dataplane::node_namespace(node.name);
        start(
            paths,
            state,
            &format!("dataplane-apiserver-{}", node.name),
            &ip,
            &[
                "netns".to_owned(),
                "exec".to_owned(),
                netns.clone(),
                which("socat")?.display().to_string(),
                format!(
                    "TCP-LISTEN:{port},bind={},fork,reuseaddr",
                    dataplane::APISERVER_IN_NODE
                ),
                format!("UNIX-CONNECT:{}", socket.display()),
            ],
        )?;
        let config = dir.join(format!("kube-proxy-{}.yaml", node.name));
        std::fs::write(
            &config,
            kube_proxy_config(node.name, &paths.cluster.path().join(KUBE_PROXY_KUBECONFIG)),
        )?;
        start(
            paths,
            state,
            &format!("kube-proxy-{}", node.name),
            &ip,
            &[
                "netns".to_owned(),
                "exec".to_owned(),
                netns,
                kubernetes_bin.join("kube-proxy").display().to_string(),
                format!("--config={}", config.display()),
            ],
        )?;
    }
    crate::cluster::kubectl_owned(
        paths,
        &[
            "apply".to_owned(),
            "--server-side".to_owned(),
            "--field-manager=xtask".to_owned(),
            "--filename=-".to_owned(),
        ],
        Some(KUBE_ROUTER_RBAC),
    )
    .context("granting kube-router its read-only rights")?;
    for node in NODES {
        // Only the NetworkPolicy controller: kube-proxy routes Services, our veths route pods.
        start(
            paths,
            state,
            &format!("kube-router-{}", node.name),
            &ip,
            &[
                "netns".to_owned(),
                "exec".to_owned(),
                dataplane::node_namespace(node.name),
                kube_router.display().to_string(),
                "--run-firewall=true".to_owned(),
                "--run-router=false".to_owned(),
                "--run-service-proxy=false".to_owned(),
                format!("--hostname-override={}", node.name),
                format!(
                    "--kubeconfig={}",
                    paths.cluster.path().join(KUBE_ROUTER_KUBECONFIG).display()
                ),
                "--metrics-port=0".to_owned(),
                "--health-port=0".to_owned(),
                "--iptables-sync-period=1m".to_owned(),
            ],
        )?;
    }
    for node in NODES {
        wait_for_kube_proxy(state, node.name)?;
        wait_for_chain(state, node.name)?;
    }
    println!(
        "==> dataplane up in {:.1?}: {} node namespaces with kube-proxy (nftables), client {CLIENT} at {CLIENT_IP}",
        started.elapsed(),
        NODES.len()
    );
    Ok(())
}

fn kube_proxy_config(node: &str, kubeconfig: &Path) -> String {
    // conntrack: leave the kernel's (per-namespace) limits and timeouts as they are.
    format!(
        "apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: nftables
hostnameOverride: {node}
clientConnection:
  kubeconfig: {}
clusterCIDR: {POD_CIDR}
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
nodePortAddresses: [primary]
conntrack:
  maxPerCore: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
",
        kubeconfig.display()
    )
}

/// The hub's bridge, one namespace per node and the client, each on the bridge with its address.
fn build_network() -> Result<(), String> {
    let ip = dataplane::ip;
    add_namespace(HUB)?;
    ip(Some(HUB), &["link", "add", "br0", "type", "bridge"])?;
    ip(Some(HUB), &["link", "set", "br0", "up"])?;
    let members = NODES
        .iter()
        .enumerate()
        .map(|(i, node)| (dataplane::node_namespace(node.name), format!("n{i}"), node.ip))
        .chain(std::iter::once((
            CLIENT.to_owned(),
            "client".to_owned(),
            CLIENT_IP,
        )));
    for (netns, hub_side, address) in members {
        add_namespace(&netns)?;
        ip(
            None,
            &[
                "link", "add", "eth0", "netns", &netns, "type", "veth", "peer", "name", &hub_side, "netns",
                HUB,
            ],
        )?;
        ip(Some(HUB), &["link", "set", &hub_side, "master", "br0", "up"])?;
        ip(
            Some(&netns),
            &["addr", "add", &format!("{address}/{NODE_PREFIX}"), "dev", "eth0"],
        )?;
        ip(Some(&netns), &["link", "set", "eth0", "up"])?;
        if netns != CLIENT {
            // A node routes for its pods; replies of pods on other nodes may come back another way.
            dataplane::sysctl(&netns, "net.ipv4.ip_forward", "1")?;
            dataplane::sysctl(&netns, "net.ipv4.conf.all.rp_filter", "0")?;
            dataplane::sysctl(&netns, "net.ipv4.conf.default.rp_filter", "0")?;
        }
    }
    // The internet reaches pod addresses as through a load balancer that keeps the client's address:
    // through the first node, which routes to the pod's node.
    let first_node = NODES[0].ip.to_string();
    ip(Some(CLIENT), &["route", "add", POD_CIDR, "via", &first_node])?;
    Ok(())
}

fn add_namespace(netns: &str) -> Result<(), String> {
    dataplane::ip(None, &["netns", "add", netns])?;
    dataplane::ip(Some(netns), &["link", "set", "lo", "up"])
}

/// kube-proxy is ready once it has written its nftables table in the node's namespace.
fn wait_for_kube_proxy(state: &State, node: &str) -> Result<()> {
    wait_in_node(
        state,
        "kube-proxy",
        node,
        &["nft", "list", "table", "ip", "kube-proxy"],
    )
}

/// kube-router is enforcing once its filter chain exists in the node's namespace.
fn wait_for_chain(state: &State, node: &str) -> Result<()> {
    wait_in_node(
        state,
        "kube-router",
        node,
        &["iptables", "-S", "KUBE-ROUTER-FORWARD"],
    )
}

/// Waits until `check` succeeds in `node`'s namespace, while `<program>-<node>` runs (60 s at most).
fn wait_in_node(state: &State, program: &str, node: &str, check: &[&str]) -> Result<()> {
    let name = format!("{program}-{node}");
    let process = state
        .process(&name)
        .with_context(|| format!("{name} not started"))?;
    let netns = dataplane::node_namespace(node);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let checked = Command::new("ip")
            .args(["netns", "exec", &netns])
            .args(check)
            .output()?;
        if checked.status.success() {
            return Ok(());
        }
        if !is_running(process.pid) {
            bail!("{name} exited during start-up:\n{}", log_tail(&process.log, 30));
        }
        if Instant::now() > deadline {
            bail!(
                "{name} was not ready within 60 s (`{}` failed):\n{}",
                check.join(" "),
                log_tail(&process.log, 30)
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Deletes every namespace of the dataplane (nodes, client, hub, pods), whoever created it.
pub fn remove_all() {
    for netns in dataplane::namespaces() {
        dataplane::delete_namespace(&netns);
    }
}
