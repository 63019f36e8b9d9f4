//! Pods on the local cluster's real dataplane (`cargo xtask cluster up --dataplane`): a test attaches the
//! pods it needs to the network of their node, runs a UDP responder in them, and probes from the client
//! namespace that stands for the internet — through the real kube-proxy of each node.

use std::net::Ipv4Addr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use local_cluster::NODES;
use local_cluster::dataplane::{self, CLIENT, POD_GATEWAY};

use crate::daemon::binary;

/// The MAC of every pod veth's node end (as Calico does): the pod's static neighbour for its gateway.
const NODE_SIDE_MAC: &str = "ee:ee:ee:ee:ee:ee";

/// Panics with the command to run when the cluster has no dataplane.
pub fn require() {
    assert!(
        dataplane::is_up(),
        "the local cluster has no dataplane: run the tests through `cargo xtask test`, or start \
         `cargo xtask cluster up --dataplane` (as root)"
    );
}

/// A node's InternalIP, by name.
pub fn node_ip(node: &str) -> Ipv4Addr {
    NODES
        .iter()
        .find(|n| n.name == node)
        .unwrap_or_else(|| panic!("{node} is not a node of the local cluster"))
        .ip
}

/// Every node's name.
pub fn node_names() -> Vec<&'static str> {
    NODES.iter().map(|n| n.name).collect()
}

/// A transport protocol a pod serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Udp,
    Tcp,
}

impl Protocol {
    fn word(self) -> &'static str {
        match self {
            Protocol::Udp => "udp",
            Protocol::Tcp => "tcp",
        }
    }
}

/// `program` to be run in network namespace `netns`.
fn in_netns(netns: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut command = Command::new("ip");
    command.args(["netns", "exec", netns]).arg(program);
    command
}

/// One datagram from the internet (the client namespace) to `ip:port`: the answer, or None when nothing
/// answers within half a second.
pub fn probe(ip: Ipv4Addr, port: u16) -> Option<String> {
    probe_from(CLIENT, Protocol::Udp, ip, port)
}

/// One datagram or connection from the internet to `ip:port`.
pub fn probe_from_internet(protocol: Protocol, ip: Ipv4Addr, port: u16) -> Option<String> {
    probe_from(CLIENT, protocol, ip, port)
}

fn probe_from(netns: &str, protocol: Protocol, ip: Ipv4Addr, port: u16) -> Option<String> {
    let output = in_netns(netns, binary("net-peer"))
        .args(["probe", protocol.word(), &format!("{ip}:{port}"), "500"])
        .output()
        .expect("running net-peer probe");
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

/// A pod wired to its node: its own network namespace with its pod IP, a veth to the node, routes on
/// every node. Everything goes when dropped — drop it as soon as its pod is gone, since KWOK hands the
/// IP to the next pod at once.
#[derive(Debug)]
pub struct PodNet {
    pub name: String,
    pub ip: Ipv4Addr,
    pub node: String,
    netns: String,
    responders: Vec<Child>,
}

impl PodNet {
    /// Wires a scheduled pod that has its IP (KWOK's) to the node it runs on.
    pub fn attach(pod: &Pod) -> Self {
        require();
        let name = pod.name_any();
        let ip: Ipv4Addr = pod
            .status
            .as_ref()
            .and_then(|s| s.pod_ip.as_deref())
            .unwrap_or_else(|| panic!("{name} has no pod IP yet"))
            .parse()
            .expect("an IPv4 pod IP");
        let node = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_else(|| panic!("{name} is not scheduled"));
        let uid = pod.uid().unwrap_or_else(|| panic!("{name} has no UID"));
        let netns = dataplane::pod_namespace(&uid);
        let node_netns = dataplane::node_namespace(&node);
        let veth = dataplane::pod_veth(&uid);
        let host = format!("{ip}/32");
        let gateway = POD_GATEWAY.to_string();
        let steps: Vec<(Option<&str>, Vec<&str>)> = vec![
            (None, vec!["netns", "add", &netns]),
            (Some(&netns), vec!["link", "set", "lo", "up"]),
            (
                None,
                vec![
                    "link",
                    "add",
                    &veth,
                    "netns",
                    &node_netns,
                    "address",
                    NODE_SIDE_MAC,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    "eth0",
                    "netns",
                    &netns,
                ],
            ),
            (Some(&node_netns), vec!["link", "set", &veth, "up"]),
            (Some(&node_netns), vec!["route", "replace", &host, "dev", &veth]),
            (Some(&netns), vec!["addr", "add", &host, "dev", "eth0"]),
            (Some(&netns), vec!["link", "set", "eth0", "up"]),
            // The gateway is the node's end of the veth, by its fixed MAC: no ARP needed.
            (
                Some(&netns),
                vec!["route", "add", &gateway, "dev", "eth0", "scope", "link"],
            ),
            (
                Some(&netns),
                vec![
                    "neigh",
                    "add",
                    &gateway,
                    "lladdr",
                    NODE_SIDE_MAC,
                    "dev",
                    "eth0",
                    "nud",
                    "permanent",
                ],
            ),
            (
                Some(&netns),
                vec!["route", "add", "default", "via", &gateway, "dev", "eth0"],
            ),
        ];
        for (in_netns, args) in steps {
            dataplane::ip(in_netns, &args).unwrap_or_else(|e| panic!("wiring {name}: {e}"));
        }
        let via = node_ip(&node).to_string();
        for other in NODES.iter().filter(|n| n.name != node) {
            let other_netns = dataplane::node_namespace(other.name);
            dataplane::ip(Some(&other_netns), &["route", "replace", &host, "via", &via])
                .unwrap_or_else(|e| panic!("routing {name} from {}: {e}", other.name));
        }
        Self {
            name,
            ip,
            node,
            netns,
            responders: Vec::new(),
        }
    }

    /// Runs a UDP responder on `port` in the pod that answers with the pod's name; returns once it
    /// answers from the pod's own node.
    pub fn serve_udp(&mut self, port: u16) {
        self.serve(Protocol::Udp, port);
    }

    /// Runs a responder on `protocol`/`port` in the pod that answers with the pod's name; returns once
    /// it answers from the pod's own node (which NetworkPolicy implementations let through, as for the
    /// kubelet's probes).
    pub fn serve(&mut self, protocol: Protocol, port: u16) {
        let child = in_netns(&self.netns, binary("net-peer"))
            .args(["serve", protocol.word(), &port.to_string(), &self.name])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("starting net-peer serve");
        self.responders.push(child);
        let node_netns = dataplane::node_namespace(&self.node);
        let deadline = Instant::now() + Duration::from_secs(10);
        while probe_from(&node_netns, protocol, self.ip, port).as_deref() != Some(&self.name) {
            assert!(
                Instant::now() < deadline,
                "{}'s responder on {protocol:?} {}:{port} does not answer from its node",
                self.name,
                self.ip
            );
        }
    }

    /// One datagram or connection from this pod to `ip:port`.
    pub fn probe(&self, protocol: Protocol, ip: Ipv4Addr, port: u16) -> Option<String> {
        probe_from(&self.netns, protocol, ip, port)
    }

    /// `program` to be run in the pod's network namespace, as the pod's container would run it.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        in_netns(&self.netns, program)
    }
}

impl Drop for PodNet {
    fn drop(&mut self) {
        for responder in &mut self.responders {
            let _ = responder.kill();
            let _ = responder.wait();
        }
        // Only the routes that still lead to this pod: its IP may already be another pod's.
        let host = format!("{}/32", self.ip);
        let via = node_ip(&self.node).to_string();
        for node in NODES.iter().filter(|n| n.name != self.node) {
            let _ = dataplane::ip(
                Some(&dataplane::node_namespace(node.name)),
                &["route", "del", &host, "via", &via],
            );
        }
        dataplane::delete_namespace(&self.netns);
    }
}

/// A route in the client namespace sending `address` to the first node — an address standing for a
/// cloud load balancer, which kube-proxy serves once it is a Service's load balancer ingress. Removed
/// when dropped.
#[derive(Debug)]
pub struct ClientRoute(Ipv4Addr);

impl ClientRoute {
    pub fn to_first_node(address: Ipv4Addr) -> Self {
        require();
        let first = NODES[0].ip.to_string();
        dataplane::ip(
            Some(CLIENT),
            &["route", "replace", &format!("{address}/32"), "via", &first],
        )
        .unwrap_or_else(|e| panic!("routing {address} to the first node: {e}"));
        Self(address)
    }
}

impl Drop for ClientRoute {
    fn drop(&mut self) {
        let _ = dataplane::ip(Some(CLIENT), &["route", "del", &format!("{}/32", self.0)]);
    }
}

/// Another corner of the internet: a network namespace of its own on the nodes' segment (as the client
/// namespace), optionally on a network that lets no UDP out (nftables drops every UDP datagram it sends,
/// as a school's or a company's firewall does). Removed when dropped.
#[derive(Debug)]
pub struct Internet {
    pub netns: String,
    pub ip: Ipv4Addr,
}

impl Internet {
    /// `name`: a few letters, unique among running tests; `host`: the last octet of its address on the
    /// nodes' segment (the client has 100; take one above).
    pub fn join(name: &str, host: u8, udp_blocked: bool) -> Self {
        require();
        let netns = format!("jk-net-{name}");
        let hub_side = format!("i-{name}");
        let ip = Ipv4Addr::new(10, 250, 0, host);
        dataplane::delete_namespace(&netns);
        let steps: Vec<(Option<&str>, Vec<String>)> = vec![
            (None, vec!["netns".into(), "add".into(), netns.clone()]),
            (
                Some(&netns),
                vec!["link".into(), "set".into(), "lo".into(), "up".into()],
            ),
            (
                None,
                [
                    "link",
                    "add",
                    "eth0",
                    "netns",
                    &netns,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    &hub_side,
                    "netns",
                    dataplane::HUB,
                ]
                .map(str::to_owned)
                .to_vec(),
            ),
            (
                Some(dataplane::HUB),
                ["link", "set", &hub_side, "master", "br0", "up"]
                    .map(str::to_owned)
                    .to_vec(),
            ),
            (
                Some(&netns),
                vec![
                    "addr".into(),
                    "add".into(),
                    format!("{ip}/{}", dataplane::NODE_PREFIX),
                    "dev".into(),
                    "eth0".into(),
                ],
            ),
            (
                Some(&netns),
                ["link", "set", "eth0", "up"].map(str::to_owned).to_vec(),
            ),
        ];
        for (in_netns, args) in &steps {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            dataplane::ip(*in_netns, &args).unwrap_or_else(|e| panic!("wiring {netns}: {e}"));
        }
        if udp_blocked {
            let rules = "table inet jk_no_udp {\n  chain output {\n    type filter hook output priority 0; policy accept;\n    meta l4proto udp counter drop\n  }\n}\n";
            let mut nft = in_netns(&netns, "nft")
                .args(["-f", "-"])
                .stdin(Stdio::piped())
                .spawn()
                .expect("running nft");
            std::io::Write::write_all(nft.stdin.as_mut().expect("nft stdin"), rules.as_bytes())
                .expect("writing the rules");
            drop(nft.stdin.take());
            assert!(
                nft.wait().expect("nft").success(),
                "nft refused the UDP block in {netns}"
            );
        }
        Self { netns, ip }
    }

    /// Sends `address` (a stood-in load balancer) to `node`, which must then serve it.
    pub fn route_via(&self, address: Ipv4Addr, node: &str) {
        dataplane::ip(
            Some(&self.netns),
            &[
                "route",
                "replace",
                &format!("{address}/32"),
                "via",
                &node_ip(node).to_string(),
            ],
        )
        .unwrap_or_else(|e| panic!("routing {address} via {node}: {e}"));
    }

    /// `program` to be run from this corner of the internet.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        in_netns(&self.netns, program)
    }

    /// The UDP datagrams its firewall dropped so far.
    pub fn udp_dropped(&self) -> u64 {
        let output = in_netns(&self.netns, "nft")
            .args(["list", "table", "inet", "jk_no_udp"])
            .output()
            .expect("nft list");
        let text = String::from_utf8_lossy(&output.stdout);
        text.split_whitespace()
            .skip_while(|word| *word != "packets")
            .nth(1)
            .and_then(|count| count.parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for Internet {
    fn drop(&mut self) {
        dataplane::delete_namespace(&self.netns);
    }
}

/// A media flow from the internet (the client namespace) to `ip:port`: a sequence-numbered datagram every
/// 50 ms, each answered or not within 300 ms (`net-peer flow`), recorded until stopped.
#[derive(Debug)]
pub struct Flow {
    pub to: (Ipv4Addr, u16),
    child: Child,
    record: std::sync::Arc<std::sync::Mutex<FlowRecord>>,
}

/// What a flow saw so far.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FlowRecord {
    pub sent: u64,
    pub answered: u64,
    /// The sequence numbers nobody answered.
    pub lost: Vec<u64>,
    /// Every pod that answered, in order of first answer.
    pub answered_by: Vec<String>,
}

impl FlowRecord {
    /// The longest run of consecutive lost datagrams.
    pub fn longest_gap(&self) -> u64 {
        let mut longest = 0;
        let mut run = 0;
        let mut previous = None;
        for seq in &self.lost {
            run = if previous == Some(seq - 1) { run + 1 } else { 1 };
            longest = longest.max(run);
            previous = Some(*seq);
        }
        longest
    }
}

impl Flow {
    pub fn start(ip: Ipv4Addr, port: u16) -> Self {
        require();
        let mut child = in_netns(CLIENT, binary("net-peer"))
            .args(["flow", &format!("{ip}:{port}"), "50", "300"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("starting net-peer flow");
        let stdout = child.stdout.take().expect("a piped stdout");
        let record = std::sync::Arc::new(std::sync::Mutex::new(FlowRecord::default()));
        let writer = record.clone();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
                let Some((seq, pod)) = line.split_once(' ') else {
                    continue;
                };
                let Ok(seq) = seq.parse::<u64>() else {
                    continue;
                };
                let mut record = writer.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                record.sent = seq;
                if pod == "-" {
                    record.lost.push(seq);
                } else {
                    record.answered += 1;
                    if !record.answered_by.iter().any(|p| p == pod) {
                        record.answered_by.push(pod.to_owned());
                    }
                }
            }
        });
        Flow {
            to: (ip, port),
            child,
            record,
        }
    }

    /// What the flow saw until now.
    pub fn record(&self) -> FlowRecord {
        self.record
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Ends the flow (the call ended): what it saw.
    pub fn stop(mut self) -> FlowRecord {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // The reader has the last lines once the pipe is closed; a moment for it to take them.
        std::thread::sleep(Duration::from_millis(50));
        self.record()
    }
}

impl Drop for Flow {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
