//! `cargo xtask demo`: a sharded Jitsi simulated on one machine, from `manifests/overlays/dev` applied to the
//! local control plane. What cannot run here is stood in for, and the demo says so on screen.
//!
//! `--once` runs the scenario and exits 0 when every step held (the test suite runs it); without it the
//! table keeps refreshing until Ctrl-C. Either way everything it started is stopped at the end and the
//! namespace deleted.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::process::{Command, ExitCode};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::{Api, ResourceExt};
use serde_json::json;
use testbed::bridge_stub::{BridgeStub, StubConfig};
use testbed::daemon::Daemon;
use testbed::dataplane::PodNet;
use testbed::haproxy::{self, Dns, Replica, ShardWeb, Wiring};
use testbed::manifests::{self, named, repo_root};
use testbed::monitoring::{PrometheusServer, Series, Stack, our_programs};
use testbed::pod_runtime::PodRuntime;
use testbed::prosody::{Occupants, Prosody, ProsodyOptions};
use testbed::service_per_pod::start_controller;
use testbed::{Cluster, promtool};
use tokio::sync::Mutex;

mod autoscaling;

const OVERLAY: &str = "manifests/overlays/dev";
/// The dev overlay's own namespace: the demo applies the overlay exactly as a user would.
const NAMESPACE: &str = "jitsi-dev";
const BRIDGES: &str = "shard-0-jvb";
const STEP_TIMEOUT: Duration = Duration::from_secs(120);
/// `--load-balancer`: the shard's one Service, and the address standing for the cloud's load balancer.
const PUBLIC_SERVICE: &str = "shard-0-jvb-public";
const LOAD_BALANCER_IP: std::net::Ipv4Addr = std::net::Ipv4Addr::new(10, 250, 1, 20);
/// Whether the bridges run in LoadBalancer mode (set once, from the command line).
static LOAD_BALANCED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();

fn load_balanced() -> bool {
    LOAD_BALANCED.get().copied().unwrap_or(false)
}

/// A step that did not hold, in one sentence.
type Failure = String;

/// One simulated bridge: a stub replaying a recorded `/colibri/stats`, a real jvb-exporter reading it,
/// and, once its pod is Terminating, the real preStop hook (`jvb-startup drain`) draining it.
struct Bridge {
    /// The pod's UID: a recreated ordinal is another bridge.
    uid: String,
    stub: BridgeStub,
    exporter: Exporter,
    drain: Option<tokio::process::Child>,
    /// With `--dataplane`: the pod on its node's network, answering UDP on its port.
    net: Option<PodNet>,
    /// Where the internet reaches it: its node's address and its node port.
    media: Option<(std::net::Ipv4Addr, u16)>,
}

/// Where a bridge's jvb-exporter runs: on this host, or — with the cluster's monitoring — in the bridge's
/// pod, at its pod IP, where Prometheus discovers and scrapes it.
enum Exporter {
    Host(Daemon),
    Pod {
        runtime: Box<PodRuntime>,
        admin: std::net::SocketAddr,
    },
}

impl Exporter {
    /// Where this host reads its `/metrics`.
    fn admin(&self) -> std::net::SocketAddr {
        match self {
            Exporter::Host(daemon) => daemon.admin,
            Exporter::Pod { admin, .. } => *admin,
        }
    }
}

/// Holds a bridge pod in Terminating while its preStop hook runs, as the kubelet does: KWOK deletes a
/// pod only once its finalizers are gone, and the demo removes this one when `jvb-startup drain` exits.
const PRE_STOP: &str = "demo.jitsi-k8s.dev/pre-stop";

type Bridges = Arc<Mutex<BTreeMap<String, Bridge>>>;

#[tokio::main]
async fn main() -> ExitCode {
    let once = std::env::args().any(|arg| arg == "--once");
    let dataplane = std::env::args().any(|arg| arg == "--dataplane");
    let _ = LOAD_BALANCED.set(std::env::args().any(|arg| arg == "--load-balancer"));
    println!("{}", STAND_INS);
    let cluster = Cluster::connect().await;
    let outcome = tokio::select! {
        outcome = scenario(&cluster, once, dataplane) => outcome,
        _ = tokio::signal::ctrl_c() => {
            println!("\nCtrl-C: tearing everything down");
            delete_namespace(&cluster).await;
            println!("demo: stopped; every process it started is gone and namespace {NAMESPACE} deleted");
            return ExitCode::SUCCESS;
        }
    };
    // Everything the scenario started (processes, stubs) was dropped with it; now the cluster side.
    delete_namespace(&cluster).await;
    match outcome {
        Ok(()) => {
            println!("demo: every step held");
            ExitCode::SUCCESS
        }
        Err(failure) => {
            eprintln!("demo: FAILED: {failure}");
            ExitCode::FAILURE
        }
    }
}

const STAND_INS: &str = "\
jitsi-k8s demo — manifests/overlays/dev on a local Kubernetes control plane
  real:        etcd, kube-apiserver, controller-manager, scheduler; the rendered manifests applied
               server-side; service-per-pod, jvb-exporter, prosody-exporter (our binaries); Prosody and
               HAProxy (Debian's programs, HAProxy with the rendered haproxy.cfg and start.sh)
  stood in:    the kubelets (KWOK: pods are scheduled and Running, no container runs); the
               service-per-pod controller runs as a local process under the manifest's ServiceAccount
               token and flags; each JVB pod's bridge is a stub replaying a recorded /colibri/stats,
               read by a real jvb-exporter; a removed bridge's preStop hook is the real `jvb-startup drain`
               against that stub, its pod held Terminating (a finalizer) while the hook runs, as a kubelet
               would; the shard's web is a stub HAProxy finds through dnsmasq A records of its headless
               Service name, as it would through the cluster DNS
  --dataplane: each KWOK node is a network namespace running a real kube-proxy (nftables); each bridge pod
               gets a network namespace answering UDP on its port; UDP REACHABLE is a datagram sent from
               a client namespace to the bridge's node address and node port, answered by that pod
               (with the cluster's monitoring: the bridges' jvb-exporter containers and the controller
               run in their pods, and the Prometheus Operator's Prometheus, real, discovers and scrapes
               them there; with its autoscaling, KEDA's operator and metrics server and the HPA
               controller, real, scale the bridges on their load: the load is the stand-ins'
               participants, set by the demo, their stress level following)
";

async fn scenario(cluster: &Cluster, once: bool, dataplane: bool) -> Result<(), Failure> {
    if dataplane && !local_cluster::dataplane::is_up() {
        return Err(
            "--dataplane needs the cluster's dataplane: `cargo xtask demo --dataplane` starts it".to_owned(),
        );
    }
    // With the dataplane and the cluster's monitoring, the exporters run in their pods and a real
    // Prometheus scrapes them.
    let monitored = dataplane && local_cluster::monitoring::is_up(&local_cluster::ClusterDir::discover());
    // With KEDA too, the bridges are scaled by the real autoscaling loop on their load.
    let autoscaled = monitored && local_cluster::autoscaling::is_up(&local_cluster::ClusterDir::discover());
    delete_namespace(cluster).await;
    step("apply manifests/overlays/dev (server-side, as `kubectl apply --server-side -k`)");
    let output = Command::new("kubectl")
        .args(["apply", "--server-side", "--field-manager=jitsi-demo", "-k"])
        .arg(repo_root().join(OVERLAY))
        .output()
        .map_err(|e| format!("running kubectl: {e}"))?;
    if !output.status.success() || !output.stderr.is_empty() {
        return Err(format!(
            "kubectl apply: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    println!(
        "  {} objects applied",
        String::from_utf8_lossy(&output.stdout).lines().count()
    );
    let objects = manifests::render_dir(&repo_root().join(OVERLAY));

    step("every pod admitted under Pod Security \"restricted\" and Running on the KWOK nodes");
    let expected: u64 = objects
        .iter()
        .filter(|o| matches!(manifests::kind(o), "Deployment" | "StatefulSet"))
        .map(|o| o["spec"]["replicas"].as_u64().unwrap_or(1))
        .sum();
    let pods: Api<Pod> = Api::namespaced(cluster.admin(), NAMESPACE);
    wait(&format!("{expected} pods Running"), || async {
        let running = running_pods(&pods, "").await.len() as u64;
        (running == expected).then_some(())
    })
    .await?;
    println!("  {expected} pods Running");

    let controller = if monitored {
        // In its pod, where Prometheus scrapes it: the autoscaler's query reads its held ordinals.
        step("service-per-pod: running in its pod (ServiceAccount token, flags, env of its manifest)");
        let pod = running_pods(&pods, "service-per-pod")
            .await
            .into_iter()
            .next()
            .ok_or("no Running service-per-pod pod")?;
        let mut runtime = PodRuntime::start(cluster, &pod, &our_programs(&["service-per-pod"])).await;
        let admin = runtime.expose(8080);
        Controller::Pod {
            runtime: Box::new(runtime),
            admin,
        }
    } else {
        step("service-per-pod: started from its manifest (ServiceAccount token, flags, env)");
        let deployment = named(&objects, "Deployment", "service-per-pod");
        Controller::Host(start_controller(cluster, NAMESPACE, deployment, "service-per-pod-demo").await)
    };
    println!(
        "  admin and metrics on http://{}  (logs: {})",
        controller.admin(),
        controller.logs()
    );

    // `--load-balancer`: what components/jvb-load-balancer sets, and the cloud stood in for.
    let _route = if load_balanced() {
        step("LoadBalancer mode: one Service for the shard's bridges, an EndpointSlice per bridge");
        let sets: Api<StatefulSet> = Api::namespaced(cluster.admin(), NAMESPACE);
        let expose = json!({ "metadata": { "annotations": { "service-per-pod/expose": "LoadBalancer" } } });
        sets.patch(BRIDGES, &PatchParams::default(), &Patch::Merge(expose))
            .await
            .map_err(|e| format!("switching {BRIDGES} to LoadBalancer mode: {e}"))?;
        let services: Api<Service> = Api::namespaced(cluster.admin(), NAMESPACE);
        wait(&format!("Service {PUBLIC_SERVICE}"), || async {
            services.get_opt(PUBLIC_SERVICE).await.ok().flatten()
        })
        .await?;
        let ingress =
            json!({ "status": { "loadBalancer": { "ingress": [{ "ip": LOAD_BALANCER_IP.to_string() }] } } });
        services
            .patch_status(PUBLIC_SERVICE, &PatchParams::default(), &Patch::Merge(ingress))
            .await
            .map_err(|e| format!("setting the load balancer's address: {e}"))?;
        println!(
            "  {PUBLIC_SERVICE}: load balancer address {LOAD_BALANCER_IP} (the cloud's part, stood in for)"
        );
        dataplane.then(|| testbed::dataplane::ClientRoute::to_first_node(LOAD_BALANCER_IP))
    } else {
        None
    };

    let prometheus = if monitored {
        step(
            "Prometheus (real), configured by the Prometheus Operator (real) from the overlay's PodMonitors and rules",
        );
        let prometheus = PrometheusServer::start(cluster, Stack::KubePrometheus).await;
        println!(
            "  Prometheus on {}  (kube-prometheus's Prometheus monitoring/k8s)",
            prometheus.url
        );
        // Built from the Go module, which carries no web UI assets: its HTTP API is what answers.
        println!(
            "  query it: curl -s '{}/api/v1/query' --data-urlencode 'query=...'",
            prometheus.url
        );
        for (what, query) in QUERIES {
            println!("    {what:<28} {query}");
        }
        Some(prometheus)
    } else {
        None
    };

    let bridges: Bridges = Arc::default();
    let load = autoscaled.then(|| Arc::new(autoscaling::Load::default()));
    let _follower = AbortOnDrop(tokio::spawn(follow_bridges(
        cluster.clone(),
        pods.clone(),
        bridges.clone(),
        dataplane,
        monitored,
        load.clone(),
    )));

    step("Prosody (real) with the room census, prosody-exporter (real), two people in a room");
    let prosody = Prosody::start(ProsodyOptions::default());
    let args = vec![format!("--prosody-url={}", prosody.url())];
    let mut prosody_exporter = Daemon::start_with_addr_flag("prosody-exporter", &args, &[], "--listen");
    prosody_exporter.ready().await;
    let _occupants = Occupants::join(&prosody, &[("demo-room", 2)]);
    wait("the census to count the room", || async {
        let samples = promtool::samples(&prosody_exporter.metrics().await);
        (samples.get("jitsi_prosody_participants") == Some(&2.0)).then_some(())
    })
    .await?;
    println!(
        "  prosody-exporter on http://{}: 1 room, 2 participants",
        prosody_exporter.admin
    );

    step(
        "HAProxy (real, rendered config) finds shard-0's web through its headless Service and keeps rooms on it",
    );
    let rendered = haproxy::render(OVERLAY, "demo");
    let web_port = testbed::free_tcp_port().expect("a free port");
    let web = ShardWeb::start(0, 0, web_port).await;
    let dns = Dns::start(&rendered.shard_domain, &[&web], &rendered.config_dir);
    let wiring = Wiring {
        peer_port: testbed::free_tcp_port().expect("a free port"),
        nameserver: dns.addr,
        web_port,
    };
    let haproxy = Replica::start(&rendered, 0, wiring);
    let http = reqwest::Client::new();
    wait("HAProxy to route a room to shard-0", || async {
        let url = format!("http://{}/xmpp-websocket?room=demo-room", haproxy.http);
        let body = http.get(&url).send().await.ok()?.text().await.ok()?;
        (body == "shard-0").then_some(())
    })
    .await?;
    println!("  http://{}/?room=demo-room → shard-0", haproxy.http);

    let services: Api<Service> = Api::namespaced(cluster.admin(), NAMESPACE);
    if let Some(load) = &load {
        // The loop in full in NodePort mode; in LoadBalancer mode without the rise during a drain.
        autoscaling::scenario(cluster, &pods, &services, &bridges, load, !load_balanced()).await?;
        if let Some(prometheus) = &prometheus {
            show_queries(prometheus, &QUERIES[..2], 1).await?;
        }
    } else {
        scale_by_hand(
            cluster,
            &pods,
            &services,
            &bridges,
            dataplane,
            prometheus.as_ref(),
        )
        .await?;
    }

    println!(
        "\n{}",
        look_around(&controller, &prosody_exporter, &haproxy, prometheus.as_ref())
    );
    if !once {
        // At a terminal the screen is redrawn; in a log, a table is printed only when it changed.
        let live = std::io::stdout().is_terminal();
        let mut shown = String::new();
        loop {
            tokio::time::sleep(Duration::from_secs(2)).await;
            let now = table(&pods, &services, &bridges).await;
            if live {
                print!("\x1b[2J\x1b[H");
                println!(
                    "{}\n\n{now}",
                    look_around(&controller, &prosody_exporter, &haproxy, prometheus.as_ref())
                );
            } else if now != shown {
                println!("{now}");
            }
            shown = now;
        }
    }
    Ok(())
}

/// Without KEDA: the bridges scaled 1 → 3 → 1 by hand, the drain watched.
async fn scale_by_hand(
    cluster: &Cluster,
    pods: &Api<Pod>,
    services: &Api<Service>,
    bridges: &Bridges,
    dataplane: bool,
    prometheus: Option<&PrometheusServer>,
) -> Result<(), Failure> {
    for replicas in [1, 3] {
        scale(cluster, replicas).await?;
        converge(pods, services, bridges, replicas as usize, dataplane).await?;
        println!("{}", table(pods, services, bridges).await);
    }
    if let Some(prometheus) = prometheus {
        show_queries(prometheus, &QUERIES[..2], 3).await?;
    }
    scale(cluster, 1).await?;
    let drain_seen = prometheus.map(|prometheus| {
        let (url, query) = (prometheus.url.clone(), QUERIES[2].1);
        tokio::spawn(async move { first_answer(&url, query).await })
    });
    watch_drain(pods, services, bridges).await?;
    if let Some(seen) = drain_seen {
        let answer = seen
            .await
            .map_err(|e| format!("the draining query: {e}"))?
            .ok_or("Prometheus never answered the draining bridges' query during the drain")?;
        println!("  Prometheus during the drain, {} {answer}", QUERIES[2].0);
    }
    converge(pods, services, bridges, 1, dataplane).await?;
    println!("{}", table(pods, services, bridges).await);
    Ok(())
}

/// Where service-per-pod runs: on this host under its ServiceAccount's token, or — with the cluster's
/// monitoring — in its pod, where Prometheus scrapes it.
enum Controller {
    Host(Daemon),
    Pod {
        runtime: Box<PodRuntime>,
        admin: std::net::SocketAddr,
    },
}

impl Controller {
    fn admin(&self) -> std::net::SocketAddr {
        match self {
            Controller::Host(daemon) => daemon.admin,
            Controller::Pod { admin, .. } => *admin,
        }
    }

    fn logs(&self) -> String {
        match self {
            Controller::Host(daemon) => daemon
                .log
                .parent()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
            Controller::Pod { runtime, .. } => runtime.log_path("service-per-pod").display().to_string(),
        }
    }
}

/// What the demo suggests pasting into Prometheus, each returning data while it runs.
const QUERIES: [(&str, &str); 3] = [
    ("bridges up, per shard:", "sum by (jitsi_org_shard) (jitsi_up)"),
    (
        "participants, per shard:",
        "sum by (jitsi_org_shard) (jitsi_participants)",
    ),
    (
        "draining bridges:",
        "count by (jitsi_org_shard) (jitsi_graceful_shutdown == 1 or jitsi_drain == 1)",
    ),
];

/// Waits until Prometheus has scraped every one of `bridges` bridges, then prints each query's answer.
async fn show_queries(
    prometheus: &PrometheusServer,
    queries: &[(&str, &str)],
    bridges: usize,
) -> Result<(), Failure> {
    step("Prometheus's answers to the first two queries");
    wait(
        &format!("Prometheus to have scraped the {bridges} bridges"),
        || async {
            let up = prometheus.query("count(jitsi_up == 1)").await;
            let scraped = prometheus.query("count(jitsi_participants)").await;
            // Exactly: the series of bridges that are gone must have gone stale first.
            let count = |series: &[Series]| series.first().map_or(0.0, |(_, value)| *value);
            (count(&up) == bridges as f64 && count(&scraped) == bridges as f64).then_some(())
        },
    )
    .await?;
    for (what, query) in queries {
        println!("  → {what:<28} {}", describe(&prometheus.query(query).await));
    }
    Ok(())
}

/// The first non-empty answer to `query` within two minutes.
async fn first_answer(url: &str, query: &str) -> Option<String> {
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        if let Some(series) = testbed::monitoring::query_at(&http, url, query)
            .await
            .filter(|series| !series.is_empty())
        {
            return Some(describe(&series));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    None
}

/// `shard-0: 3` for each series.
fn describe(series: &[Series]) -> String {
    series
        .iter()
        .map(|(labels, value)| {
            let shard = labels
                .get("jitsi_org_shard")
                .and_then(|s| s.as_str())
                .unwrap_or("(no shard)");
            format!("{shard}: {value}")
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Stops the bridge follower when the scenario ends or is dropped (Ctrl-C), so it starts nothing more.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn step(what: &str) {
    println!("\n==> {what}");
}

async fn wait<T, F, Fut>(what: &str, mut check: F) -> Result<T, Failure>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + STEP_TIMEOUT;
    loop {
        if let Some(value) = check().await {
            return Ok(value);
        }
        if Instant::now() > deadline {
            return Err(format!("{what}: not within {STEP_TIMEOUT:?}"));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn running_pods(pods: &Api<Pod>, prefix: &str) -> Vec<Pod> {
    pods.list(&ListParams::default())
        .await
        .map(|list| list.items)
        .unwrap_or_default()
        .into_iter()
        .filter(|p| p.name_any().starts_with(prefix))
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
        .collect()
}

/// Gives every Running bridge pod its simulated bridge and exporter; runs the preStop hook of each pod
/// that starts terminating and lets the pod go when the hook returns; stops those of pods that left.
async fn follow_bridges(
    cluster: Cluster,
    pods: Api<Pod>,
    bridges: Bridges,
    dataplane: bool,
    monitored: bool,
    load: Option<Arc<autoscaling::Load>>,
) {
    loop {
        let existing: Vec<Pod> = pods
            .list(&ListParams::default())
            .await
            .map(|list| list.items)
            .unwrap_or_default()
            .into_iter()
            .filter(|p| p.name_any().starts_with(BRIDGES))
            .collect();
        let mut bridges = bridges.lock().await;
        bridges.retain(|name, bridge| {
            existing
                .iter()
                .any(|p| &p.name_any() == name && p.uid().as_deref() == Some(bridge.uid.as_str()))
        });
        // The shard's load, spread over the bridges that take new conferences.
        if let Some(load) = &load {
            let serving: Vec<String> = existing
                .iter()
                .filter(|p| p.metadata.deletion_timestamp.is_none())
                .map(ResourceExt::name_any)
                .filter(|name| bridges.contains_key(name))
                .collect();
            for (name, participants) in load.shares(&serving) {
                if let Some(bridge) = bridges.get(&name) {
                    bridge.stub.set_participants(participants);
                }
            }
        }
        for pod in &existing {
            let name = pod.name_any();
            let running = pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
            match bridges.get_mut(&name) {
                None if running && pod.metadata.deletion_timestamp.is_none() => {
                    let mut bridge = start_bridge(&cluster, pod, monitored, load.is_some()).await;
                    if dataplane {
                        let port = media_port(pod);
                        let node = pod
                            .spec
                            .as_ref()
                            .and_then(|s| s.node_name.clone())
                            .unwrap_or_default();
                        match &mut bridge.exporter {
                            Exporter::Pod { runtime, .. } => runtime.net.serve_udp(port),
                            Exporter::Host(_) => {
                                let mut net = PodNet::attach(pod);
                                net.serve_udp(port);
                                bridge.net = Some(net);
                            }
                        }
                        let address = if load_balanced() {
                            LOAD_BALANCER_IP
                        } else {
                            testbed::dataplane::node_ip(&node)
                        };
                        bridge.media = Some((address, port));
                    }
                    bridges.insert(name.clone(), bridge);
                    let hold = json!({ "metadata": { "finalizers": [PRE_STOP] } });
                    let _ = pods
                        .patch(&name, &PatchParams::default(), &Patch::Merge(hold))
                        .await;
                }
                Some(bridge) if pod.metadata.deletion_timestamp.is_some() => match &mut bridge.drain {
                    None => {
                        if let Some(load) = &load {
                            bridge.stub.set_leave_every(load.leave_every());
                        }
                        bridge.drain = Some(bridge.stub.start_pre_stop_drain());
                    }
                    Some(hook) => {
                        if let Ok(Some(_)) = hook.try_wait() {
                            let release = json!({ "metadata": { "finalizers": null } });
                            let _ = pods
                                .patch(&name, &PatchParams::default(), &Patch::Merge(release))
                                .await;
                        }
                    }
                },
                _ => {}
            }
        }
        drop(bridges);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Bridge i starts with 4 + 3·i local participants; after a graceful shutdown one leaves every 1.5 s
/// (every 4 s when Prometheus watches, so that a 15 s scrape sees the drain). Autoscaled, it starts
/// empty, its participants set by the shard's load and its stress level following them.
async fn start_bridge(cluster: &Cluster, pod: &Pod, monitored: bool, autoscaled: bool) -> Bridge {
    let name = pod.name_any();
    let ordinal: u64 = name.rsplit('-').next().and_then(|o| o.parse().ok()).unwrap_or(0);
    let stub = BridgeStub::start(StubConfig {
        participants: Some(if autoscaled { 0 } else { 4 + 3 * ordinal }),
        leave_every: Some(Duration::from_millis(if monitored { 4000 } else { 1500 })),
        exit_after_empty: Duration::from_millis(500),
        stress_per_participant: autoscaled.then_some(autoscaling::STRESS_PER_PARTICIPANT),
        ..StubConfig::default()
    })
    .await;
    let exporter = if monitored {
        // The pod's own jvb-exporter container, as its manifest runs it, reading the stub at
        // 127.0.0.1:8080 like the bridge container next to it.
        let programs = our_programs(&["jvb-exporter"]);
        let mut runtime =
            PodRuntime::start_containers(cluster, pod, &programs, Some(&["jvb-exporter"])).await;
        runtime.forward_in(8080, stub.addr);
        let admin = runtime.expose(9888);
        Exporter::Pod {
            runtime: Box::new(runtime),
            admin,
        }
    } else {
        let env = [("JVB_URL", stub.url()), ("SOURCE", "both".to_owned())];
        Exporter::Host(Daemon::start_with_addr_flag(
            "jvb-exporter",
            &[],
            &env,
            "--listen",
        ))
    };
    Bridge {
        uid: pod.uid().unwrap_or_default(),
        stub,
        exporter,
        drain: None,
        net: None,
        media: None,
    }
}

/// The bridge's port, as jvb-startup works it out: the pod's base-port annotation plus its ordinal.
fn media_port(pod: &Pod) -> u16 {
    let base: u16 = pod
        .annotations()
        .get("service-per-pod/base-port")
        .and_then(|b| b.parse().ok())
        .unwrap_or(30300);
    let ordinal: u16 = pod
        .name_any()
        .rsplit('-')
        .next()
        .and_then(|o| o.parse().ok())
        .unwrap_or(0);
    base + ordinal
}

async fn scale(cluster: &Cluster, replicas: i32) -> Result<(), Failure> {
    // Without KEDA on the cluster no autoscaler acts on the ScaledObject: the demo scales by hand.
    step(&format!(
        "scale {BRIDGES} to {replicas} (by hand: no autoscaler runs without --dataplane)"
    ));
    let sets: Api<StatefulSet> = Api::namespaced(cluster.admin(), NAMESPACE);
    sets.patch(
        BRIDGES,
        &PatchParams::default(),
        &Patch::Merge(json!({ "spec": { "replicas": replicas } })),
    )
    .await
    .map_err(|e| format!("scaling {BRIDGES}: {e}"))?;
    Ok(())
}

/// Waits until exactly the bridges 0..replicas run, each with its Service at 30300 + ordinal and an
/// exporter that reads its bridge.
async fn converge(
    pods: &Api<Pod>,
    services: &Api<Service>,
    bridges: &Bridges,
    replicas: usize,
    dataplane: bool,
) -> Result<(), Failure> {
    let wanted: Vec<String> = (0..replicas).map(|i| format!("{BRIDGES}-{i}")).collect();
    wait(
        &format!("{replicas} bridges with their Services and exporters"),
        || async {
            let mut running: Vec<String> = running_pods(pods, BRIDGES)
                .await
                .iter()
                .map(ResourceExt::name_any)
                .collect();
            running.sort();
            if running != wanted {
                return None;
            }
            let list = services.list(&ListParams::default()).await.ok()?;
            let mut node_ports: Vec<(String, i32)> = if load_balanced() {
                let public = list.items.iter().find(|s| s.name_any() == PUBLIC_SERVICE)?;
                public
                    .spec
                    .as_ref()?
                    .ports
                    .iter()
                    .flatten()
                    .map(|p| {
                        (
                            format!("{BRIDGES}-{}", p.name.clone().unwrap_or_default()),
                            p.port,
                        )
                    })
                    .collect()
            } else {
                list.items
                    .iter()
                    .filter(|s| s.name_any().starts_with(BRIDGES))
                    .filter_map(|s| {
                        Some((s.name_any(), s.spec.as_ref()?.ports.as_ref()?.first()?.node_port?))
                    })
                    .collect()
            };
            node_ports.sort();
            let expected: Vec<(String, i32)> = wanted.iter().cloned().zip(30300..).collect();
            if node_ports != expected {
                return None;
            }
            let bridges = bridges.lock().await;
            for name in &wanted {
                let text = reqwest::get(format!("http://{}/metrics", bridges.get(name)?.exporter.admin()))
                    .await
                    .ok()?
                    .text()
                    .await
                    .ok()?;
                if promtool::samples(&text).get("jitsi_up") != Some(&1.0) {
                    return None;
                }
                if dataplane {
                    // kube-proxy has programmed its node port: the internet reaches this bridge.
                    let (ip, port) = bridges.get(name)?.media?;
                    let answer = tokio::task::spawn_blocking(move || testbed::dataplane::probe(ip, port))
                        .await
                        .ok()??;
                    if &answer != name {
                        return None;
                    }
                }
            }
            Some(())
        },
    )
    .await
}

/// What the demo shows of one bridge: its pod, its Service, and what its exporter reads from it.
struct Row {
    name: String,
    phase: String,
    service: Option<String>,
    node_port: Option<i32>,
    exporter: &'static str,
    participants: Option<f64>,
    /// With `--dataplane`: whether a datagram from the internet to its node port gets the bridge's answer.
    udp: Option<bool>,
}

async fn rows(pods: &Api<Pod>, services: &Api<Service>, bridges: &Bridges) -> Vec<Row> {
    // Services first, then pods: a pod still listed after its Services were read existed when they were
    // read, so a Terminating row without its Service is the controller's fault, never this snapshot's
    // (the other order shows a pod that left between the two reads next to its already deleted Service).
    let services = services
        .list(&ListParams::default())
        .await
        .map(|l| l.items)
        .unwrap_or_default();
    let pods = pods
        .list(&ListParams::default())
        .await
        .map(|l| l.items)
        .unwrap_or_default();
    let bridges = bridges.lock().await;
    let mut names: Vec<String> = pods
        .iter()
        .map(ResourceExt::name_any)
        .chain(services.iter().map(ResourceExt::name_any))
        // The bridges' pods and Services: `shard-0-jvb-<ordinal>` (not the governing Service
        // `shard-0-jvb`, nor the public one).
        .filter(|n| {
            n.strip_prefix(BRIDGES)
                .and_then(|rest| rest.strip_prefix('-'))
                .is_some_and(|ordinal| ordinal.parse::<u32>().is_ok())
        })
        .collect();
    names.sort();
    names.dedup();
    let public = services.iter().find(|s| s.name_any() == PUBLIC_SERVICE);
    let mut rows = Vec::new();
    for name in names {
        let pod = pods.iter().find(|p| p.name_any() == name);
        let phase = match pod {
            None => "gone".to_owned(),
            Some(p) if p.metadata.deletion_timestamp.is_some() => "Terminating".to_owned(),
            Some(p) => p
                .status
                .as_ref()
                .and_then(|s| s.phase.clone())
                .unwrap_or_default(),
        };
        let service = services.iter().find(|s| s.name_any() == name);
        let mut node_port = service.and_then(|s| s.spec.as_ref()?.ports.as_ref()?.first()?.node_port);
        // LoadBalancer mode: the bridge's port on the shard's one Service, named after its ordinal.
        let ordinal = name.rsplit('-').next().unwrap_or_default().to_owned();
        let public_port = public.and_then(|s| {
            s.spec
                .as_ref()?
                .ports
                .as_ref()?
                .iter()
                .find(|p| p.name.as_deref() == Some(&ordinal))
                .map(|p| p.port)
        });
        let service = match (service, public_port) {
            (None, Some(port)) => {
                node_port = Some(port);
                public
            }
            (service, _) => service,
        };
        let udp = match bridges.get(&name).and_then(|b| b.media) {
            Some((ip, port)) => {
                let expected = name.clone();
                let answer = tokio::task::spawn_blocking(move || testbed::dataplane::probe(ip, port))
                    .await
                    .ok()
                    .flatten();
                Some(answer.as_deref() == Some(expected.as_str()))
            }
            None => None,
        };
        let (exporter, participants) = match bridges.get(&name) {
            Some(bridge) => {
                let text = reqwest::get(format!("http://{}/metrics", bridge.exporter.admin()))
                    .await
                    .ok();
                let samples = match text {
                    Some(response) => promtool::samples(&response.text().await.unwrap_or_default()),
                    None => BTreeMap::new(),
                };
                let up = samples.get("jitsi_up") == Some(&1.0);
                (
                    if up { "up" } else { "down" },
                    samples.get("jitsi_participants").copied().filter(|_| up),
                )
            }
            None => ("-", None),
        };
        rows.push(Row {
            name,
            phase,
            service: service.map(ResourceExt::name_any),
            node_port,
            exporter,
            participants,
            udp,
        });
    }
    rows
}

fn format_table(rows: &[Row]) -> String {
    let with_udp = rows.iter().any(|r| r.udp.is_some());
    let mut table = format!(
        "  {:<16} {:<12} {:<18} {:>6}  {:<8} {:>12}",
        "POD", "PHASE", "SERVICE", "PORT", "EXPORTER", "PARTICIPANTS"
    );
    if with_udp {
        table.push_str("  UDP REACHABLE");
    }
    for row in rows {
        table.push_str(&format!(
            "\n  {:<16} {:<12} {:<18} {:>6}  {:<8} {:>12}",
            row.name,
            row.phase,
            row.service.as_deref().unwrap_or("-"),
            row.node_port.map_or("-".to_owned(), |p| p.to_string()),
            row.exporter,
            row.participants.map_or("-".to_owned(), |p| p.to_string()),
        ));
        if with_udp {
            let udp = match row.udp {
                Some(true) => "yes",
                Some(false) => "no",
                None => "-",
            };
            table.push_str(&format!("  {udp}"));
        }
    }
    table
}

async fn table(pods: &Api<Pod>, services: &Api<Service>, bridges: &Bridges) -> String {
    format_table(&rows(pods, services, bridges).await)
}

/// The main claim, watched as it happens: the bridges a scale-down removes stay Terminating while their
/// preStop hook drains them (participants falling), with their Service and node port in place; they
/// leave only once empty, and their Service with them.
async fn watch_drain(pods: &Api<Pod>, services: &Api<Service>, bridges: &Bridges) -> Result<(), Failure> {
    step("bridges 1 and 2 drain: Terminating, participants leaving, Services kept until each pod is gone");
    let removed = [format!("{BRIDGES}-1"), format!("{BRIDGES}-2")];
    let mut draining: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    let mut shown = String::new();
    let deadline = Instant::now() + STEP_TIMEOUT;
    loop {
        let rows = rows(pods, services, bridges).await;
        let text = format_table(&rows);
        if text != shown {
            println!("{text}");
            shown = text;
        }
        for row in rows.iter().filter(|r| r.phase == "Terminating") {
            let Some(name) = removed.iter().find(|n| **n == row.name) else {
                return Err(format!("{} is Terminating but the scale-down keeps it", row.name));
            };
            if row.node_port.is_none() {
                return Err(format!(
                    "{name} lost its Service while still Terminating: its calls would drop"
                ));
            }
            // Once its last participant has left the bridge exits and its pod goes: only a bridge with
            // calls must stay reachable.
            if row.udp == Some(false) && row.participants.is_some_and(|p| p > 0.0) {
                return Err(format!(
                    "{name} is Terminating but its node port no longer reaches it"
                ));
            }
            if let Some(participants) = row.participants {
                draining.entry(name).or_default().push(participants);
            }
        }
        if removed.iter().all(|n| rows.iter().all(|r| &r.name != n)) {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!(
                "the removed bridges were not gone within {STEP_TIMEOUT:?}"
            ));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    for name in &removed {
        let seen = draining
            .get(name.as_str())
            .ok_or_else(|| format!("{name} was never seen draining with its Service"))?;
        let (first, last) = (seen[0], seen[seen.len() - 1]);
        if last >= first {
            return Err(format!(
                "{name}: participants did not fall while it drained: {seen:?}"
            ));
        }
        println!(
            "  {name}: Terminating with its Service while participants fell {first} → {last}, then gone with its Service"
        );
    }
    Ok(())
}

fn look_around(
    controller: &Controller,
    prosody_exporter: &Daemon,
    haproxy: &Replica,
    prometheus: Option<&PrometheusServer>,
) -> String {
    let kubeconfig = std::env::var("KUBECONFIG").unwrap_or_default();
    let prometheus = prometheus.map_or(String::new(), |prometheus| {
        format!(
            "\n  curl -s {}/api/v1/targets     # Prometheus: the targets at their pod IPs; also /api/v1/alerts",
            prometheus.url
        )
    });
    format!(
        "Look around (Ctrl-C tears everything down):\n\
         \x20 export KUBECONFIG={kubeconfig}\n\
         \x20 kubectl -n {NAMESPACE} get pods,services,scaledobjects,hpa -o wide\n\
         \x20 kubectl -n {NAMESPACE} get events --field-selector reason!=Scheduled\n\
         \x20 curl http://{}/metrics     # service-per-pod\n\
         \x20 curl http://{}/metrics     # prosody-exporter\n\
         \x20 curl http://{}/metrics     # HAProxy's exporter; rooms: curl 'http://{}/?room=x'\n\
         \x20 logs: {}{prometheus}",
        controller.admin(),
        prosody_exporter.admin,
        haproxy.metrics,
        haproxy.http,
        controller.logs(),
    )
}

async fn delete_namespace(cluster: &Cluster) {
    // The Prometheus the demo asked the operator for lives in `monitoring`.
    if local_cluster::monitoring::is_up(&local_cluster::ClusterDir::discover()) {
        testbed::monitoring::remove(cluster, Stack::KubePrometheus).await;
    }
    let namespaces: Api<Namespace> = Api::all(cluster.admin());
    if namespaces.get_opt(NAMESPACE).await.ok().flatten().is_none() {
        return;
    }
    let _ = namespaces.delete(NAMESPACE, &DeleteParams::background()).await;
    let pods: Api<Pod> = Api::namespaced(cluster.admin(), NAMESPACE);
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline && namespaces.get_opt(NAMESPACE).await.ok().flatten().is_some() {
        // The bridges' simulated preStop hooks are gone with the scenario: let their pods go.
        for pod in pods
            .list(&ListParams::default())
            .await
            .map(|l| l.items)
            .unwrap_or_default()
        {
            if pod.finalizers().iter().any(|f| f == PRE_STOP) {
                let release = json!({ "metadata": { "finalizers": null } });
                let _ = pods
                    .patch(&pod.name_any(), &PatchParams::default(), &Patch::Merge(release))
                    .await;
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
