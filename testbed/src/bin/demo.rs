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
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::{Api, ResourceExt};
use serde_json::json;
use testbed::bridge_stub::{BridgeStub, StubConfig};
use testbed::daemon::Daemon;
use testbed::haproxy::{self, Dns, Replica, ShardWeb, Wiring};
use testbed::manifests::{self, named, repo_root};
use testbed::prosody::{Occupants, Prosody, ProsodyOptions};
use testbed::service_per_pod::start_controller;
use testbed::{Cluster, promtool};
use tokio::sync::Mutex;

const OVERLAY: &str = "manifests/overlays/dev";
/// The dev overlay's own namespace: the demo applies the overlay exactly as a user would.
const NAMESPACE: &str = "jitsi-dev";
const BRIDGES: &str = "shard-0-jvb";
const STEP_TIMEOUT: Duration = Duration::from_secs(120);

/// A step that did not hold, in one sentence.
type Failure = String;

/// One simulated bridge: a stub replaying a recorded `/colibri/stats`, and a real jvb-exporter reading it.
struct Bridge {
    _stub: BridgeStub,
    exporter: Daemon,
}

type Bridges = Arc<Mutex<BTreeMap<String, Bridge>>>;

#[tokio::main]
async fn main() -> ExitCode {
    let once = std::env::args().any(|arg| arg == "--once");
    println!("{}", STAND_INS);
    let cluster = Cluster::connect().await;
    let outcome = tokio::select! {
        outcome = scenario(&cluster, once) => outcome,
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
               read by a real jvb-exporter; the shard's web is a stub HAProxy finds through dnsmasq SRV
               records, as it would through the cluster DNS
";

async fn scenario(cluster: &Cluster, once: bool) -> Result<(), Failure> {
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

    step("service-per-pod: started from its manifest (ServiceAccount token, flags, env)");
    let deployment = named(&objects, "Deployment", "service-per-pod");
    let controller = start_controller(cluster, NAMESPACE, deployment, "service-per-pod-demo").await;
    println!(
        "  admin and metrics on http://{}  (log: {})",
        controller.admin,
        controller.log.display()
    );

    let bridges: Bridges = Arc::default();
    let _follower = AbortOnDrop(tokio::spawn(follow_bridges(pods.clone(), bridges.clone())));

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
    for replicas in [1, 3, 1] {
        scale(cluster, replicas).await?;
        converge(&pods, &services, &bridges, replicas as usize).await?;
        println!("{}", table(&pods, &services, &bridges).await);
    }

    println!("\n{}", look_around(&controller, &prosody_exporter, &haproxy));
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
                    look_around(&controller, &prosody_exporter, &haproxy)
                );
            } else if now != shown {
                println!("{now}");
            }
            shown = now;
        }
    }
    Ok(())
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

/// Gives every Running bridge pod its simulated bridge and exporter, and stops those of pods that left.
async fn follow_bridges(pods: Api<Pod>, bridges: Bridges) {
    loop {
        let running: Vec<String> = running_pods(&pods, BRIDGES)
            .await
            .iter()
            .map(ResourceExt::name_any)
            .collect();
        let mut bridges = bridges.lock().await;
        bridges.retain(|name, _| running.contains(name));
        for name in running {
            if bridges.contains_key(&name) {
                continue;
            }
            let ordinal: u64 = name.rsplit('-').next().and_then(|o| o.parse().ok()).unwrap_or(0);
            let stub = BridgeStub::start(StubConfig {
                participants: Some(4 + 3 * ordinal),
                ..StubConfig::default()
            })
            .await;
            let env = [("JVB_URL", stub.url()), ("SOURCE", "both".to_owned())];
            let exporter = Daemon::start_with_addr_flag("jvb-exporter", &[], &env, "--listen");
            bridges.insert(
                name,
                Bridge {
                    _stub: stub,
                    exporter,
                },
            );
        }
        drop(bridges);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn scale(cluster: &Cluster, replicas: i32) -> Result<(), Failure> {
    step(&format!("scale {BRIDGES} to {replicas}"));
    // Without a metrics pipeline the HPA only keeps the count within min..max; the dev overlay's max is
    // 2, so the demo raises it to reach 3, as more load would through prometheus-adapter.
    let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(cluster.admin(), NAMESPACE);
    let max = replicas.max(2);
    hpas.patch(
        BRIDGES,
        &PatchParams::default(),
        &Patch::Merge(json!({ "spec": { "maxReplicas": max } })),
    )
    .await
    .map_err(|e| format!("raising the HPA's maxReplicas to {max}: {e}"))?;
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
            let mut node_ports: Vec<(String, i32)> = list
                .items
                .iter()
                .filter(|s| s.name_any().starts_with(BRIDGES))
                .filter_map(|s| Some((s.name_any(), s.spec.as_ref()?.ports.as_ref()?.first()?.node_port?)))
                .collect();
            node_ports.sort();
            let expected: Vec<(String, i32)> = wanted.iter().cloned().zip(30300..).collect();
            if node_ports != expected {
                return None;
            }
            let bridges = bridges.lock().await;
            for name in &wanted {
                let text = reqwest::get(format!("http://{}/metrics", bridges.get(name)?.exporter.admin))
                    .await
                    .ok()?
                    .text()
                    .await
                    .ok()?;
                if promtool::samples(&text).get("jitsi_up") != Some(&1.0) {
                    return None;
                }
            }
            Some(())
        },
    )
    .await
}

async fn table(pods: &Api<Pod>, services: &Api<Service>, bridges: &Bridges) -> String {
    let pods = pods
        .list(&ListParams::default())
        .await
        .map(|l| l.items)
        .unwrap_or_default();
    let services = services
        .list(&ListParams::default())
        .await
        .map(|l| l.items)
        .unwrap_or_default();
    let bridges = bridges.lock().await;
    let mut table = format!(
        "  {:<16} {:<12} {:<16} {:>8}  {:<8} {:>12}",
        "POD", "PHASE", "SERVICE", "NODEPORT", "EXPORTER", "PARTICIPANTS"
    );
    let mut names: Vec<String> = pods
        .iter()
        .map(ResourceExt::name_any)
        .chain(services.iter().map(ResourceExt::name_any))
        .filter(|n| n.starts_with(BRIDGES))
        .collect();
    names.sort();
    names.dedup();
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
        let node_port = service
            .and_then(|s| s.spec.as_ref()?.ports.as_ref()?.first()?.node_port)
            .map_or("-".to_owned(), |p| p.to_string());
        let (up, participants) = match bridges.get(&name) {
            Some(bridge) => {
                let text = reqwest::get(format!("http://{}/metrics", bridge.exporter.admin))
                    .await
                    .ok();
                let samples = match text {
                    Some(response) => promtool::samples(&response.text().await.unwrap_or_default()),
                    None => BTreeMap::new(),
                };
                (
                    if samples.get("jitsi_up") == Some(&1.0) {
                        "up"
                    } else {
                        "down"
                    },
                    samples
                        .get("jitsi_participants")
                        .map_or("-".to_owned(), |p| p.to_string()),
                )
            }
            None => ("-", "-".to_owned()),
        };
        table.push_str(&format!(
            "\n  {:<16} {:<12} {:<16} {:>8}  {:<8} {:>12}",
            name,
            phase,
            service.map_or("-".to_owned(), ResourceExt::name_any),
            node_port,
            up,
            participants
        ));
    }
    table
}

fn look_around(controller: &Daemon, prosody_exporter: &Daemon, haproxy: &Replica) -> String {
    let kubeconfig = std::env::var("KUBECONFIG").unwrap_or_default();
    format!(
        "Look around (Ctrl-C tears everything down):\n\
         \x20 export KUBECONFIG={kubeconfig}\n\
         \x20 kubectl -n {NAMESPACE} get pods,services,hpa -o wide\n\
         \x20 kubectl -n {NAMESPACE} get events --field-selector reason!=Scheduled\n\
         \x20 curl http://{}/metrics     # service-per-pod\n\
         \x20 curl http://{}/metrics     # prosody-exporter\n\
         \x20 curl http://{}/metrics     # HAProxy's exporter; rooms: curl 'http://{}/?room=x'\n\
         \x20 logs: {}",
        controller.admin,
        prosody_exporter.admin,
        haproxy.metrics,
        haproxy.http,
        controller
            .log
            .parent()
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
    )
}

async fn delete_namespace(cluster: &Cluster) {
    let namespaces: Api<Namespace> = Api::all(cluster.admin());
    if namespaces.get_opt(NAMESPACE).await.ok().flatten().is_none() {
        return;
    }
    let _ = namespaces.delete(NAMESPACE, &DeleteParams::background()).await;
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline && namespaces.get_opt(NAMESPACE).await.ok().flatten().is_some() {
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
