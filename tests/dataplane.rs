//! The media path with real packets: service-per-pod's NodePort Services, programmed into nftables by a
//! real kube-proxy in each node's network namespace, carry UDP from the client namespace (the internet) to
//! the bridge pod's own network namespace (`cargo xtask cluster up --dataplane`; `testbed::dataplane`).

// Test code: a failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, ResourceExt};
use serde_json::json;
use testbed::dataplane::{self, PodNet, node_ip, node_names, probe};
use testbed::eventually;
use testbed::service_per_pod::{Fixture, statefulset_annotating_pods};

const SECOND: Duration = Duration::from_secs(1);
const BASE_PORT: &str = "service-per-pod/base-port";

/// The pods of StatefulSet `set`, once `count` of them run with an IP, by name.
async fn running_pods(pods: &Api<Pod>, set: &str, count: usize) -> BTreeMap<String, Pod> {
    eventually(
        &format!("{count} pods of {set} Running with an IP"),
        60 * SECOND,
        || async {
            let list = pods
                .list(&ListParams::default().labels(&format!("app={set}")))
                .await
                .ok()?;
            let running: BTreeMap<String, Pod> = list
                .items
                .into_iter()
                .filter(|p| p.metadata.deletion_timestamp.is_none())
                .filter(|p| {
                    let status = p.status.as_ref();
                    status.and_then(|s| s.phase.as_deref()) == Some("Running")
                        && status.and_then(|s| s.pod_ip.as_ref()).is_some()
                })
                .map(|p| (p.name_any(), p))
                .collect();
            (running.len() == count).then_some(running)
        },
    )
    .await
}

/// The port a bridge's Service sends to (its node port, which is also the bridge's own port).
fn node_port(service: &Service) -> u16 {
    let port = &service.spec.as_ref().unwrap().ports.as_ref().unwrap()[0];
    let node_port = port.node_port.unwrap();
    assert_eq!(
        port.target_port.as_ref().map(|t| match t {
            k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(n) => *n,
            k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(s) => s.parse().unwrap(),
        }),
        Some(node_port),
        "the bridge listens on its node port"
    );
    u16::try_from(node_port).unwrap()
}

/// Attaches every pod to the network with a responder on its Service's port.
fn wire(pods: &BTreeMap<String, Pod>, services: &BTreeMap<String, Service>) -> BTreeMap<String, PodNet> {
    pods.iter()
        .map(|(name, pod)| {
            let mut net = PodNet::attach(pod);
            net.serve_udp(node_port(&services[name]));
            (name.clone(), net)
        })
        .collect()
}

/// Waits until `ip:port` answers `expected` (kube-proxy syncs within about a second of a change).
async fn answers(ip: Ipv4Addr, port: u16, expected: Option<&str>, within: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let got = tokio::task::spawn_blocking(move || probe(ip, port))
            .await
            .unwrap();
        if got.as_deref() == expected {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "{ip}:{port} answered {got:?}, expected {expected:?} within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Scales `jvb` from 3 to 1 with pod 2 held Terminating (a finalizer, as its preStop hook would while
/// calls remain); returns once pod 1 is gone and pod 2 is Terminating.
async fn scale_to_one_holding_jvb_2(fx: &Fixture) {
    let pods: Api<Pod> = fx.namespace.api();
    fx.hold_terminating("jvb-2").await;
    fx.scale("jvb", 1).await;
    eventually("jvb-1 gone and jvb-2 Terminating", 30 * SECOND, || async {
        let gone = pods.get_opt("jvb-1").await.ok()?.is_none();
        let pod = pods.get_opt("jvb-2").await.ok()??;
        (gone && pod.metadata.deletion_timestamp.is_some()).then_some(())
    })
    .await;
}

/// Probes `ip:port` for `during`, each datagram answered by `expected` (or the test fails); the count.
async fn always_answers(ip: Ipv4Addr, port: u16, expected: &str, during: Duration) -> usize {
    let until = Instant::now() + during;
    let mut probes = 0;
    while Instant::now() < until {
        assert_eq!(
            tokio::task::spawn_blocking(move || probe(ip, port))
                .await
                .unwrap()
                .as_deref(),
            Some(expected),
            "{ip}:{port} stopped reaching {expected} after {probes} probes"
        );
        probes += 1;
    }
    probes
}

fn other_nodes(node: &str) -> Vec<&'static str> {
    node_names().into_iter().filter(|n| *n != node).collect()
}

/// A namespace with its controller and StatefulSet `jvb` of three bridges, each on the network with its
/// responder.
async fn three_wired_bridges(prefix: &str) -> (Fixture, BTreeMap<String, Service>, BTreeMap<String, PodNet>) {
    dataplane::require();
    let fx = Fixture::start(prefix).await;
    let base = fx.namespace.node_port_block().await;
    let base_text = base.to_string();
    fx.create(&statefulset_annotating_pods("jvb", 3, &[(BASE_PORT, &base_text)]))
        .await;
    let services = fx
        .wait_until_settled(&["jvb-0", "jvb-1", "jvb-2"], 60 * SECOND)
        .await;
    let pods = running_pods(&fx.namespace.api(), "jvb", 3).await;
    let nets = wire(&pods, &services);
    (fx, services, nets)
}

#[tokio::test]
async fn each_bridge_answers_on_its_node_port_of_its_own_node_only() {
    let (fx, services, nets) = three_wired_bridges("dataplane-local").await;
    for (name, net) in &nets {
        let port = node_port(&services[name]);
        let took = answers(node_ip(&net.node), port, Some(name), 10 * SECOND).await;
        println!(
            "{name}: {}:{port} answered by the pod ({took:?} after wiring)",
            net.node
        );
        // externalTrafficPolicy: Local — a node without this bridge drops its port.
        for other in other_nodes(&net.node) {
            assert_eq!(
                probe(node_ip(other), port),
                None,
                "{other}:{port} answered for {name}"
            );
        }
    }
    drop(nets);
    fx.namespace.delete().await;
}

#[tokio::test]
async fn a_draining_bridge_is_reached_until_its_pod_is_gone_then_nothing_answers() {
    let (fx, services, mut nets) = three_wired_bridges("dataplane-drain").await;
    let draining = &nets["jvb-2"];
    let (node, port) = (node_ip(&draining.node), node_port(&services["jvb-2"]));
    answers(node, port, Some("jvb-2"), 10 * SECOND).await;

    // Pod 2 held Terminating, as by its preStop hook while calls remain; its responder keeps running.
    scale_to_one_holding_jvb_2(&fx).await;
    nets.remove("jvb-1");
    // For the whole drain (here 5 s), every datagram to node:base+2 still reaches pod 2.
    let probes = always_answers(node, port, "jvb-2", 5 * SECOND).await;
    println!("jvb-2 Terminating: {probes} of {probes} probes answered by it");

    fx.release("jvb-2").await;
    fx.wait_for_services(&["jvb-0"], 30 * SECOND).await;
    // The responder still runs in its namespace: only the Service is gone, and with it the path.
    let took = answers(node, port, None, 10 * SECOND).await;
    println!("jvb-2 gone: node port silent {took:?} after its Service");
    drop(nets);
    fx.namespace.delete().await;
}

#[tokio::test]
async fn a_bridge_moved_to_another_node_is_reached_there_within_seconds() {
    dataplane::require();
    let fx = Fixture::start("dataplane-move").await;
    let base = fx.namespace.node_port_block().await;
    let base_text = base.to_string();
    let [first, second, ..] = node_names()[..] else {
        panic!("two nodes at least")
    };
    let mut set = statefulset_annotating_pods("jvb", 1, &[(BASE_PORT, &base_text)]);
    set.spec
        .as_mut()
        .unwrap()
        .template
        .spec
        .as_mut()
        .unwrap()
        .node_selector = Some([("kubernetes.io/hostname".to_owned(), first.to_owned())].into());
    fx.create(&set).await;
    let services = fx.wait_until_settled(&["jvb-0"], 60 * SECOND).await;
    let port = node_port(&services["jvb-0"]);
    let pods_api: Api<Pod> = fx.namespace.api();
    let pods = running_pods(&pods_api, "jvb", 1).await;
    let mut net = PodNet::attach(&pods["jvb-0"]);
    net.serve_udp(port);
    answers(node_ip(first), port, Some("jvb-0"), 10 * SECOND).await;
    let old_uid = pods["jvb-0"].uid();

    // Rescheduled: the StatefulSet now wants its pod on the other node and replaces it.
    let move_to = json!({ "spec": { "template": { "spec": { "nodeSelector": { "kubernetes.io/hostname": second } } } } });
    fx.sets()
        .patch("jvb", &PatchParams::default(), &Patch::Merge(move_to))
        .await
        .unwrap();
    let moved = eventually("jvb-0 replaced on the other node", 60 * SECOND, || async {
        let pod = pods_api.get_opt("jvb-0").await.ok()??;
        let running =
            pod.status.as_ref()?.phase.as_deref() == Some("Running") && pod.status.as_ref()?.pod_ip.is_some();
        (pod.uid() != old_uid && running).then_some(pod)
    })
    .await;
    assert_eq!(moved.spec.as_ref().unwrap().node_name.as_deref(), Some(second));
    drop(net);
    let started = Instant::now();
    let mut net = PodNet::attach(&moved);
    net.serve_udp(port);
    answers(node_ip(second), port, Some("jvb-0"), 10 * SECOND).await;
    println!(
        "jvb-0 moved {first} → {second}: answered on {second}:{port} {:?} after its new pod ran",
        started.elapsed()
    );
    assert_eq!(probe(node_ip(first), port), None, "the old node still answers");
    drop(net);
    fx.namespace.delete().await;
}

#[tokio::test]
async fn two_shards_never_answer_for_each_other() {
    dataplane::require();
    let (fx, blocks) = Fixture::start_granted("dataplane-shards", 2).await;
    let mut services = BTreeMap::new();
    let mut pods = BTreeMap::new();
    for (shard, base) in ["shard-a", "shard-b"].iter().zip(&blocks) {
        let base_text = base.to_string();
        fx.create(&statefulset_annotating_pods(shard, 2, &[(BASE_PORT, &base_text)]))
            .await;
        pods.extend(running_pods(&fx.namespace.api(), shard, 2).await);
    }
    let settled = fx
        .wait_until_settled(&["shard-a-0", "shard-a-1", "shard-b-0", "shard-b-1"], 60 * SECOND)
        .await;
    services.extend(settled);
    let nets = wire(&pods, &services);
    // Every node, every port of both blocks in use: an answer, if any, comes from the port's own pod.
    let owner: BTreeMap<u16, &str> = services
        .iter()
        .map(|(name, service)| (node_port(service), name.as_str()))
        .collect();
    for (name, net) in &nets {
        answers(
            node_ip(&net.node),
            node_port(&services[name]),
            Some(name),
            10 * SECOND,
        )
        .await;
    }
    let mut answered = 0;
    for node in node_names() {
        for (port, pod) in &owner {
            if let Some(answer) = probe(node_ip(node), *port) {
                assert_eq!(answer, *pod, "{node}:{port} answered for another pod");
                answered += 1;
            }
        }
    }
    assert_eq!(
        answered,
        owner.len(),
        "each port answers on exactly its pod's node"
    );
    drop(nets);
    fx.namespace.delete().await;
}

/// `count` bridges of StatefulSet `jvb` in `LoadBalancer` mode (plus `extra` annotations) behind the
/// stood-in load balancer address `load_balancer`, each answering on `base + ordinal` in its own pod.
async fn bridges_behind(
    fx: &Fixture,
    count: i32,
    base: u16,
    extra: &[(&str, &str)],
    load_balancer: Ipv4Addr,
) -> (dataplane::ClientRoute, BTreeMap<String, PodNet>) {
    let base_text = base.to_string();
    let mut annotations = vec![
        (BASE_PORT, base_text.as_str()),
        ("service-per-pod/expose", "LoadBalancer"),
    ];
    annotations.extend_from_slice(extra);
    fx.create(&statefulset_annotating_pods("jvb", count, &annotations))
        .await;
    fx.wait_for_services(&["jvb-public"], 60 * SECOND).await;
    let ingress =
        json!({ "status": { "loadBalancer": { "ingress": [{ "ip": load_balancer.to_string() }] } } });
    fx.services()
        .patch_status("jvb-public", &PatchParams::default(), &Patch::Merge(ingress))
        .await
        .unwrap();
    let route = dataplane::ClientRoute::to_first_node(load_balancer);
    let pods_api: Api<Pod> = fx.namespace.api();
    let pods = running_pods(&pods_api, "jvb", usize::try_from(count).unwrap()).await;
    let mut nets: BTreeMap<String, PodNet> = BTreeMap::new();
    for (name, pod) in &pods {
        let ordinal: u16 = name.rsplit('-').next().unwrap().parse().unwrap();
        let mut net = PodNet::attach(pod);
        net.serve_udp(base + ordinal);
        nets.insert(name.clone(), net);
    }
    (route, nets)
}

/// `LoadBalancer` mode on real packets: the cloud is stood in for by an address the client routes to the
/// first node, set as the Service's load balancer ingress (kube-proxy programs it like a cloud's). Each
/// bridge answers on `LB:base+i` whichever node it runs on; a draining one too; a gone one not.
#[tokio::test]
async fn one_load_balancer_address_reaches_each_bridge_on_its_own_port() {
    dataplane::require();
    let fx = Fixture::start("dataplane-lb").await;
    let base = fx.namespace.node_port_block().await;
    let load_balancer = Ipv4Addr::new(10, 250, 1, 10);
    let (route, mut nets) = bridges_behind(&fx, 3, base, &[], load_balancer).await;
    for (name, net) in &nets {
        let ordinal: u16 = name.rsplit('-').next().unwrap().parse().unwrap();
        let took = answers(load_balancer, base + ordinal, Some(name), 15 * SECOND).await;
        println!(
            "{name} (on {}): {load_balancer}:{} answered by it ({took:?})",
            net.node,
            base + ordinal
        );
    }

    // A drain: pod 2 held Terminating, its port on the shared address still reaches it.
    scale_to_one_holding_jvb_2(&fx).await;
    nets.remove("jvb-1");
    let port = base + 2;
    let probes = always_answers(load_balancer, port, "jvb-2", 3 * SECOND).await;
    fx.release("jvb-2").await;
    let took = answers(load_balancer, port, None, 15 * SECOND).await;
    println!("jvb-2 draining: {probes} of {probes} probes answered; gone: silent {took:?} later");
    answers(load_balancer, base, Some("jvb-0"), 5 * SECOND).await;
    drop(nets);
    drop(route);
    fx.namespace.delete().await;
}

/// `LoadBalancer` mode without node ports (`service-per-pod/node-ports: "false"`), as for a load balancer
/// that sends to pod IPs: ports above the node-port range, each reaching its own bridge through the
/// stood-in load balancer address — and no node port answering for them.
#[tokio::test]
async fn without_node_ports_ports_above_the_node_port_range_reach_each_bridge() {
    dataplane::require();
    let fx = Fixture::start("dataplane-lb-direct").await;
    let base: u16 = 41000;
    let load_balancer = Ipv4Addr::new(10, 250, 1, 12);
    let no_node_ports = [("service-per-pod/node-ports", "false")];
    let (route, nets) = bridges_behind(&fx, 3, base, &no_node_ports, load_balancer).await;
    let service = fx.services().get("jvb-public").await.unwrap();
    let spec = service.spec.as_ref().unwrap();
    assert_eq!(spec.allocate_load_balancer_node_ports, Some(false));
    assert!(spec.ports.iter().flatten().all(|port| port.node_port.is_none()));
    for (name, net) in &nets {
        let ordinal: u16 = name.rsplit('-').next().unwrap().parse().unwrap();
        let took = answers(load_balancer, base + ordinal, Some(name), 15 * SECOND).await;
        println!(
            "{name} (on {}): {load_balancer}:{} answered by it ({took:?}); no node port",
            net.node,
            base + ordinal
        );
        for node in node_names() {
            assert_eq!(
                probe(node_ip(node), base + ordinal),
                None,
                "{node}:{} answered",
                base + ordinal
            );
        }
    }
    drop(nets);
    drop(route);
    fx.namespace.delete().await;
}

/// A bridge whose probes fail for a while (NotReady, not terminating) in `LoadBalancer` mode: its slice
/// keeps it ready and serving, so kube-proxy keeps its port and its calls — as NodePort mode's
/// `publishNotReadyAddresses` does. (Before, the slice followed the Ready condition: kube-proxy rejected
/// the port and flushed its conntrack entries, every call on that bridge dropped.)
#[tokio::test]
async fn a_not_ready_bridge_behind_the_load_balancer_keeps_answering() {
    dataplane::require();
    let fx = Fixture::start("dataplane-lb-notready").await;
    let base = fx.namespace.node_port_block().await;
    let load_balancer = Ipv4Addr::new(10, 250, 1, 11);
    let (route, nets) = bridges_behind(&fx, 2, base, &[], load_balancer).await;
    let pods_api: Api<Pod> = fx.namespace.api();
    let port = base + 1;
    answers(load_balancer, port, Some("jvb-1"), 15 * SECOND).await;
    // Its readiness probe fails: the kubelet marks it NotReady (the pod's status, as the kubelet writes it).
    let not_ready = json!({ "status": { "conditions": [
        { "type": "Ready", "status": "False", "reason": "ProbeFailed" },
        { "type": "ContainersReady", "status": "False" },
    ] } });
    pods_api
        .patch_status("jvb-1", &PatchParams::default(), &Patch::Strategic(not_ready))
        .await
        .unwrap();
    eventually("jvb-1 NotReady", 10 * SECOND, || async {
        let pod = pods_api.get("jvb-1").await.ok()?;
        let ready = pod.status?.conditions?.into_iter().find(|c| c.type_ == "Ready")?;
        (ready.status == "False").then_some(())
    })
    .await;
    let probes = always_answers(load_balancer, port, "jvb-1", 5 * SECOND).await;
    let slices: Api<k8s_openapi::api::discovery::v1::EndpointSlice> = fx.namespace.api();
    let slice = slices.get("jvb-public-1").await.unwrap();
    let conditions = slice.endpoints.unwrap()[0].conditions.clone().unwrap();
    assert_eq!(
        (conditions.ready, conditions.serving, conditions.terminating),
        (Some(true), Some(true), Some(false)),
        "a NotReady bridge stays in its slice as it is"
    );
    println!("jvb-1 NotReady: {probes} of {probes} probes through {load_balancer}:{port} answered by it");
    drop(nets);
    drop(route);
    fx.namespace.delete().await;
}
