//! Upgrading without cutting a call, one shard at a time, as docs/deploying.md ("Upgrading Jitsi") says —
//! on the local dataplane, with real packets and the real haproxy:
//!
//! - the production overlay (copied) on the real API server with service-per-pod (its ServiceAccount)
//!   giving each bridge its NodePort Service, the real kube-proxy carrying a sequence-numbered UDP flow
//!   from the internet (the client namespace) to every bridge, and every bridge Terminating drained by its
//!   real preStop hook (`jvb-startup drain`, participants leaving a stand-in bridge) before it goes;
//! - HAProxy (Debian's, the rendered configuration, two peered replicas) keeping rooms on shard-0 and
//!   shard-1, with participants asking for their rooms all along; shard-0's room census from a real
//!   Prosody with people in its live rooms;
//! - the procedure: a new shard (shard-2, the new release) added as "Adding a shard" says, shard-0 marked
//!   draining in the overlay and HAProxy rolled, new rooms, the ended rooms forgotten, the last rooms
//!   ending, shard-0 deleted — and, in the second test, a node drained in the middle
//!   (`kubectl drain --disable-eviction`, "Node maintenance").
//!
//! What must hold: no live room answered by another shard, no request failed, no new room on shard-0, no
//! datagram lost to any bridge while it had its call, every Terminating bridge's Service kept until the
//! bridge was gone.

// Test code: a failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, ResourceExt};
use serde_json::json;
use testbed::bridge_stub::{BridgeStub, StubConfig};
use testbed::dataplane::{self, Flow, FlowRecord, PodNet, node_ip, probe};
use testbed::haproxy::{Replica, RoomTraffic, ShardWeb, render_dir, sample_sum, start_replicas};
use testbed::manifests::{self, edit, kubectl, reapply};
use testbed::prosody::{Occupants, Prosody, ProsodyOptions};
use testbed::service_per_pod::start_controller;
use testbed::{Cluster, eventually, free_tcp_port};

const MINUTE: Duration = Duration::from_secs(60);
/// Keeps a bridge pod Terminating while its preStop hook runs, as the kubelet does.
const PRE_STOP: &str = "upgrade.jitsi-k8s.dev/pre-stop";
const ROOMS: usize = 40;
/// Rooms of shard-0 still live when it starts draining.
const LIVE_ON_SHARD_0: usize = 4;

/// A bridge of the test: its pod on the dataplane, answering UDP on its port, a stand-in bridge with two
/// participants for its preStop hook to drain, and the flow of its call.
struct Bridge {
    uid: String,
    shard: String,
    stub: BridgeStub,
    net: PodNet,
    flow: Option<Flow>,
    drain: Option<tokio::process::Child>,
    terminating_since: Option<Instant>,
}

/// What became of the bridges' calls.
#[derive(Default)]
struct Calls {
    /// The bridges that drained and went: `name (shard, node)`, their flow, how long they were
    /// Terminating (their Service kept all along, or `services_lost` says when not).
    ended: Vec<(String, FlowRecord, Duration)>,
    /// Every moment a Terminating bridge had no Service.
    services_lost: Vec<String>,
}

type Bridges = Arc<tokio::sync::Mutex<BTreeMap<String, Bridge>>>;

/// The bridge's port: its pod's base-port annotation plus its ordinal (what jvb-startup works out).
fn media_port(pod: &Pod) -> u16 {
    let base: u16 = pod.annotations()["service-per-pod/base-port"].parse().unwrap();
    let ordinal: u16 = pod.name_any().rsplit('-').next().unwrap().parse().unwrap();
    base + ordinal
}

/// What a kubelet and the bridge containers would do, for every bridge pod of the namespace.
async fn follow_bridges(namespace: String, client: kube::Client, bridges: Bridges, calls: Arc<Mutex<Calls>>) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), &namespace);
    let services: Api<Service> = Api::namespaced(client, &namespace);
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let Ok(listed) = pods
            .list(&ListParams::default().labels("app.kubernetes.io/name=jvb"))
            .await
        else {
            continue;
        };
        let Ok(service_names) = services.list(&ListParams::default()).await else {
            continue;
        };
        let service_names: BTreeSet<String> = service_names.items.iter().map(ResourceExt::name_any).collect();
        let mut bridges = bridges.lock().await;
        for pod in &listed.items {
            let name = pod.name_any();
            let uid = pod.uid().unwrap_or_default();
            let running = pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
                && pod.status.as_ref().and_then(|s| s.pod_ip.as_ref()).is_some();
            let deleting = pod.metadata.deletion_timestamp.is_some();
            if bridges.get(&name).is_some_and(|b| b.uid != uid) {
                bridges.remove(&name);
            }
            match bridges.get_mut(&name) {
                None if running && !deleting => {
                    let mut net = PodNet::attach(pod);
                    net.serve_udp(media_port(pod));
                    let shard = pod.labels()["jitsi.org/shard"].clone();
                    let stub = BridgeStub::start(StubConfig {
                        participants: Some(2),
                        leave_every: Some(Duration::from_secs(2)),
                        exit_after_empty: Duration::from_millis(500),
                        ..StubConfig::default()
                    })
                    .await;
                    let hold = json!({ "metadata": { "finalizers": [PRE_STOP] } });
                    pods.patch(&name, &PatchParams::default(), &Patch::Merge(hold))
                        .await
                        .unwrap();
                    bridges.insert(
                        name.clone(),
                        Bridge {
                            uid,
                            shard,
                            stub,
                            net,
                            flow: None,
                            drain: None,
                            terminating_since: None,
                        },
                    );
                }
                None => {}
                Some(bridge) => {
                    // The call starts once the bridge's Service carries it from the internet.
                    if bridge.flow.is_none() && !deleting && service_names.contains(&name) {
                        let (ip, port) = (node_ip(&bridge.net.node), media_port(pod));
                        let answer = tokio::task::spawn_blocking(move || probe(ip, port))
                            .await
                            .unwrap();
                        if answer.as_deref() == Some(name.as_str()) {
                            bridge.flow = Some(Flow::start(ip, port));
                        }
                    }
                    if !deleting {
                        continue;
                    }
                    if !service_names.contains(&name) {
                        lock(&calls)
                            .services_lost
                            .push(format!("{name} had no Service while Terminating"));
                    }
                    match &mut bridge.drain {
                        None => {
                            bridge.terminating_since = Some(Instant::now());
                            bridge.drain = Some(bridge.stub.start_pre_stop_drain());
                        }
                        Some(hook) => {
                            if let Ok(Some(_)) = hook.try_wait() {
                                // The last participant left and the bridge exited: its call is over.
                                let record = bridge.flow.take().map(Flow::stop).unwrap_or_default();
                                let terminating =
                                    bridge.terminating_since.map(|t| t.elapsed()).unwrap_or_default();
                                let who = format!("{name} ({}, {})", bridge.shard, bridge.net.node);
                                lock(&calls).ended.push((who, record, terminating));
                                let release = json!({ "metadata": { "finalizers": null } });
                                pods.patch(&name, &PatchParams::default(), &Patch::Merge(release))
                                    .await
                                    .unwrap();
                                bridges.remove(&name);
                            }
                        }
                    }
                }
            }
        }
        // Pods that are gone take their network with them.
        bridges.retain(|name, bridge| {
            listed
                .items
                .iter()
                .any(|p| &p.name_any() == name && p.uid().as_deref() == Some(bridge.uid.as_str()))
        });
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Waits until `count` bridges of `shard` carry a call (their Service answers from the internet).
async fn calls_up(bridges: &Bridges, shard: &str, count: usize) {
    eventually(
        &format!("{count} bridges of {shard} carrying a call"),
        2 * MINUTE,
        || async {
            let bridges = bridges.lock().await;
            let up = bridges
                .values()
                .filter(|b| b.shard == shard && b.flow.is_some() && b.drain.is_none())
                .count();
            (up == count).then_some(())
        },
    )
    .await;
}

/// The shard a room's request lands on, through `replica`.
async fn shard_of(client: &reqwest::Client, replica: &Replica, room: &str) -> String {
    let url = format!("http://{}/xmpp-websocket?room={room}", replica.http);
    let response = client.get(&url).send().await.unwrap();
    assert!(response.status().is_success(), "{url}: {}", response.status());
    response.text().await.unwrap()
}

/// Waits until `replica` is ready as its pod's readiness probe sees it (`/healthz` answers 200, which it
/// does only once it has had time to learn the rooms from its peers), then checks that it has `shards`
/// shards taking rooms and knows at least `rooms` rooms.
async fn replica_ready(client: &reqwest::Client, replica: &Replica, shards: f64, rooms: usize) {
    let healthz = format!("http://{}/healthz", replica.metrics);
    let started = Instant::now();
    eventually(
        &format!("{} ready", replica.name),
        Duration::from_secs(30),
        || async {
            let status = client.get(&healthz).send().await.ok()?.status();
            status.is_success().then_some(())
        },
    )
    .await;
    let text = client
        .get(format!("http://{}/metrics", replica.metrics))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let active = sample_sum(&text, "haproxy_backend_active_servers", "proxy=\"shards\"");
    let used = sample_sum(&text, "haproxy_sticktable_used", "name=\"shards\"").unwrap_or_default();
    println!(
        "  {} ready after {:.1} s: {used} rooms learnt, {active:?} shards taking rooms",
        replica.name,
        started.elapsed().as_secs_f64()
    );
    assert_eq!(
        active,
        Some(shards),
        "{} is ready with other shards",
        replica.name
    );
    assert!(
        used >= rooms as f64,
        "{} is ready knowing {used} of {rooms} rooms",
        replica.name
    );
}

/// Step 3 of "Retiring a shard": shard-0's census piped into `forget-ended-rooms.sh` on every replica
/// (entries touched in the last 5 s kept); what each said.
async fn forget_ended_rooms_of_shard_0(
    client: &reqwest::Client,
    census_url: &str,
    replicas: &[Replica],
) -> Vec<String> {
    let census = client.get(census_url).send().await.unwrap().text().await.unwrap();
    let mut said_all = Vec::new();
    for replica in replicas {
        let (ok, said, stderr) =
            replica.forget_ended_rooms("shard-0", &census, &[("FORGET_RECENT_SECONDS", "5")]);
        assert!(ok, "{}: {stderr}", replica.name);
        println!("  {}", said.trim());
        said_all.push(said);
    }
    said_all
}

fn urls(replicas: &[Replica]) -> Vec<String> {
    replicas.iter().map(|r| format!("http://{}", r.http)).collect()
}

/// `kubectl kustomize <overlay> | kubectl delete -f - -l jitsi.org/shard=<shard> --wait=false`, as
/// docs/deploying.md says.
fn delete_shard(overlay: &Path, shard: &str) {
    let rendered = std::process::Command::new("kubectl")
        .arg("kustomize")
        .arg(overlay)
        .output()
        .unwrap();
    assert!(
        rendered.status.success(),
        "{}",
        String::from_utf8_lossy(&rendered.stderr)
    );
    let (ok, stdout, stderr) = kubectl(
        &[
            "delete",
            "--filename=-",
            &format!("--selector=jitsi.org/shard={shard}"),
            "--wait=false",
        ],
        &String::from_utf8_lossy(&rendered.stdout),
    );
    assert!(ok, "kubectl delete: {stderr}");
    println!("  kubectl delete: {} objects of {shard}", stdout.lines().count());
}

async fn upgrade(prefix: &str, drain_a_node: bool) {
    dataplane::require();
    let cluster = Cluster::connect().await;
    let namespace = cluster.namespace(prefix).await;
    // The overlay's own node ports: shard-0, shard-1 and the new shard-2.
    for first in [30300, 30400, 30500] {
        namespace.reserve_node_ports(first).await;
    }
    let copy = manifests::copy_of_manifests(prefix);
    let production = copy.join("manifests/overlays/production");
    let root = production.join("kustomization.yaml");
    edit(
        &root,
        "namespace: jitsi\n",
        &format!("namespace: {}\n", namespace.name),
    );
    // A label of this test's pods only, for `kubectl drain --pod-selector`: the nodes are shared.
    let mut text = std::fs::read_to_string(&root).unwrap();
    text.push_str(&format!(
        "labels:\n  - pairs:\n      upgrade-test: {}\n    includeSelectors: false\n    includeTemplates: true\n",
        namespace.name
    ));
    std::fs::write(&root, text).unwrap();

    println!("==> the production overlay: shard-0 and shard-1, two bridges each");
    let objects = manifests::deploy_copy(&copy, &namespace.name);
    let deployment = manifests::named(&objects, "Deployment", "service-per-pod").clone();
    let _controller = start_controller(&cluster, &namespace.name, &deployment, "service-per-pod-0").await;
    let bridges: Bridges = Arc::default();
    let calls: Arc<Mutex<Calls>> = Arc::default();
    let follower = tokio::spawn(follow_bridges(
        namespace.name.clone(),
        cluster.admin(),
        bridges.clone(),
        calls.clone(),
    ));
    // The autoscaler's minimum (KEDA, when the cluster runs it, agrees).
    namespace.scale_statefulset("shard-0-jvb", 2).await;
    namespace.scale_statefulset("shard-1-jvb", 2).await;
    calls_up(&bridges, "shard-0", 2).await;
    calls_up(&bridges, "shard-1", 2).await;

    println!("==> HAProxy (real, two replicas), rooms on both shards, people in shard-0's live rooms");
    let before = render_dir(&production, &format!("{prefix}-before"));
    let web_port = free_tcp_port().expect("a free port");
    let webs = [
        ShardWeb::start(0, 0, web_port).await,
        ShardWeb::start(1, 0, web_port).await,
    ];
    let (mut dns, wiring, mut replicas) = start_replicas(&before, &[&webs[0], &webs[1]], web_port);
    let client = reqwest::Client::new();
    for replica in &replicas {
        replica_ready(&client, replica, 2.0, 0).await;
    }
    let mut placed: BTreeMap<String, String> = BTreeMap::new();
    for room in 0..ROOMS {
        let name = format!("room-{room}");
        let shard = shard_of(&client, &replicas[room % 2], &name).await;
        placed.insert(name, shard);
    }
    let on_shard_0: Vec<String> = placed
        .iter()
        .filter(|(_, s)| *s == "shard-0")
        .map(|(r, _)| r.clone())
        .collect();
    println!(
        "  {ROOMS} rooms: {} on shard-0, {} on shard-1",
        on_shard_0.len(),
        ROOMS - on_shard_0.len()
    );
    assert_eq!(on_shard_0.len(), ROOMS / 2);
    let live_on_0 = &on_shard_0[..LIVE_ON_SHARD_0];
    let ended_on_0 = &on_shard_0[LIVE_ON_SHARD_0..];
    let prosody = Prosody::start(ProsodyOptions::default());
    let mut occupants = Occupants::join(
        &prosody,
        &live_on_0.iter().map(|r| (r.as_str(), 2)).collect::<Vec<_>>(),
    );
    let census_url = format!("{}/room-census", prosody.url());
    // Everyone in a live room keeps asking for it; shard-0's other rooms have ended.
    let live: BTreeMap<String, String> = placed
        .iter()
        .filter(|(room, _)| !ended_on_0.contains(room))
        .map(|(r, s)| (r.clone(), s.clone()))
        .collect();
    let traffic = RoomTraffic::start(&client, urls(&replicas), live);
    let placed_at = Instant::now();

    println!("==> 1. the new release as a new shard: shard-2 (\"Adding a shard\")");
    let status = std::process::Command::new("cp")
        .args(["-r", "shard-1", "shard-2"])
        .current_dir(&production)
        .status()
        .unwrap();
    assert!(status.success());
    let shard_2 = production.join("shard-2/kustomization.yaml");
    let text = std::fs::read_to_string(&shard_2).unwrap();
    std::fs::write(
        &shard_2,
        text.replace("shard-1", "shard-2")
            .replace("\"30400\"", "\"30500\"")
            .replace("stable-11146-2", "stable-11146-3"),
    )
    .unwrap();
    edit(&root, "  - shard-1\n", "  - shard-1\n  - shard-2\n");
    reapply(&copy, &namespace.name);
    namespace.scale_statefulset("shard-2-jvb", 2).await;
    let web_2 = ShardWeb::start(2, 0, web_port).await;
    dns.serve(&[&webs[0], &webs[1], &web_2]);
    calls_up(&bridges, "shard-2", 2).await;
    for replica in &replicas {
        replica_ready(&client, replica, 3.0, ROOMS).await;
    }

    println!("==> 2. shard-0 draining: HAPROXY_DRAINING_SHARDS in the overlay, applied, HAProxy rolled");
    edit(
        &root,
        "{name: HAPROXY_DRAINING_SHARDS, value: \"\"}",
        "{name: HAPROXY_DRAINING_SHARDS, value: \"shard-0\"}",
    );
    reapply(&copy, &namespace.name);
    let sets: Api<StatefulSet> = namespace.api();
    let haproxy = sets.get("haproxy").await.unwrap();
    let env = haproxy.spec.unwrap().template.spec.unwrap().containers[0]
        .env
        .clone()
        .unwrap();
    assert!(
        env.iter()
            .any(|v| v.name == "HAPROXY_DRAINING_SHARDS" && v.value.as_deref() == Some("shard-0")),
        "the applied StatefulSet does not drain shard-0"
    );
    let marked = render_dir(&production, &format!("{prefix}-marked"));
    assert_eq!(marked.draining_shards, "shard-0");
    // One replica at a time, as the StatefulSet rolls them: it leaves the Service's endpoints (preStop),
    // stops, starts with the new configuration and is back once ready.
    for ordinal in 0..replicas.len() {
        let in_service: Vec<String> = urls(&replicas)
            .into_iter()
            .enumerate()
            .filter(|(i, _)| *i != ordinal)
            .map(|(_, url)| url)
            .collect();
        traffic.set_in_service(in_service);
        tokio::time::sleep(Duration::from_secs(1)).await;
        drop(replicas.remove(ordinal));
        replicas.insert(ordinal, Replica::start(&marked, ordinal, wiring));
        replica_ready(&client, &replicas[ordinal], 2.0, ROOMS).await;
        traffic.set_in_service(urls(&replicas));
        println!("  haproxy-{ordinal} restarted, shard-0 draining");
    }

    if drain_a_node {
        let node = bridges.lock().await["shard-1-jvb-0"].net.node.clone();
        println!(
            "==> in the middle: node {node} drained (its bridge shard-1-jvb-0 drains and comes back elsewhere)"
        );
        let selector = format!("--pod-selector=upgrade-test={}", namespace.name);
        let drained = tokio::task::spawn_blocking(move || {
            let drained = kubectl(
                &[
                    "drain",
                    &node,
                    "--ignore-daemonsets",
                    "--delete-emptydir-data",
                    "--disable-eviction",
                    "--timeout=3m",
                    &selector,
                ],
                "",
            );
            let uncordoned = kubectl(&["uncordon", &node], "");
            (drained, uncordoned)
        })
        .await
        .unwrap();
        assert!(drained.0.0, "kubectl drain: {}{}", drained.0.1, drained.0.2);
        assert!(drained.1.0, "kubectl uncordon: {}", drained.1.2);
        calls_up(&bridges, "shard-1", 2).await;
    }

    println!("==> 3. new rooms while shard-0 drains");
    let mut new_rooms: BTreeMap<String, usize> = BTreeMap::new();
    for room in ROOMS..ROOMS + 30 {
        let name = format!("room-{room}");
        let shard = shard_of(&client, &replicas[room % 2], &name).await;
        *new_rooms.entry(shard.clone()).or_default() += 1;
        traffic.add_room(&name, &shard);
    }
    println!("  30 new rooms: {new_rooms:?}");
    assert!(!new_rooms.contains_key("shard-0"), "{new_rooms:?}");

    println!("==> 4. shard-0's ended rooms forgotten on every replica (its census from the real Prosody)");
    let recent = Duration::from_secs(5);
    tokio::time::sleep(recent.saturating_sub(placed_at.elapsed())).await;
    for said in forget_ended_rooms_of_shard_0(&client, &census_url, &replicas).await {
        assert!(
            said.contains(&format!(
                "{LIVE_ON_SHARD_0} rooms and {} participants live",
                2 * LIVE_ON_SHARD_0
            )) && said.contains(&format!("{} ended and forgotten", ended_on_0.len())),
            "{said}"
        );
    }
    let mut reused: BTreeMap<String, usize> = BTreeMap::new();
    for (i, room) in ended_on_0.iter().enumerate() {
        let shard = shard_of(&client, &replicas[i % 2], room).await;
        *reused.entry(shard.clone()).or_default() += 1;
        traffic.add_room(room, &shard);
    }
    println!("  shard-0's ended rooms, their names used again: {reused:?}");
    assert!(!reused.contains_key("shard-0"), "{reused:?}");

    println!("==> 5. shard-0's last rooms end; watching it empty");
    for room in live_on_0 {
        occupants.leave(room);
        traffic.end_room(room);
    }
    tokio::time::sleep(recent).await;
    for said in forget_ended_rooms_of_shard_0(&client, &census_url, &replicas).await {
        assert!(
            said.starts_with("shard-0: 0 rooms and 0 participants live"),
            "{said}"
        );
    }
    for replica in &replicas {
        assert!(
            replica.rooms().values().all(|s| s != "shard-0"),
            "{} still sends rooms to shard-0",
            replica.name
        );
    }

    println!(
        "==> 6. shard-0 removed: its objects deleted, its bridges drain, their Services kept until they are gone"
    );
    delete_shard(&production, "shard-0");
    edit(&root, "  - shard-0\n", "");
    std::fs::remove_dir_all(production.join("shard-0")).unwrap();
    reapply(&copy, &namespace.name);
    dns.serve(&[&webs[1], &web_2]);
    let services: Api<Service> = namespace.api();
    let pods: Api<Pod> = namespace.api();
    eventually(
        "shard-0's bridges and their Services gone",
        3 * MINUTE,
        || async {
            let pods_left = pods
                .list(&ListParams::default().labels("jitsi.org/shard=shard-0"))
                .await
                .ok()?
                .items
                .len();
            let services_left = services
                .list(&ListParams::default().labels("jitsi.org/shard=shard-0"))
                .await
                .ok()?
                .items
                .iter()
                .filter(|s| s.name_any().starts_with("shard-0-jvb-"))
                .count();
            (pods_left == 0 && services_left == 0).then_some(())
        },
    )
    .await;

    let outcome = traffic.finish().await;
    follower.abort();
    let mut bridges = bridges.lock().await;
    let mut still_up: Vec<(String, FlowRecord)> = Vec::new();
    for (name, bridge) in bridges.iter_mut() {
        if let Some(flow) = bridge.flow.take() {
            still_up.push((
                format!("{name} ({}, {})", bridge.shard, bridge.net.node),
                flow.stop(),
            ));
        }
        // Nobody runs their preStop hooks any more: the namespace's deletion must not wait for them.
        let release = json!({ "metadata": { "finalizers": null } });
        pods.patch(name, &PatchParams::default(), &Patch::Merge(release))
            .await
            .unwrap();
    }
    let calls = std::mem::take(&mut *lock(&calls));
    println!("==> figures");
    println!(
        "  room requests: {} asked, {} answered by another shard, {} failed",
        outcome.asked,
        outcome.moved.len(),
        outcome.failed.len()
    );
    let row = |name: &str, state: &str, record: &FlowRecord| {
        println!(
            "  {name:<38} {state:<32} {:>5} datagrams, {:>5} answered, {} lost (longest gap {})",
            record.sent,
            record.answered,
            record.lost.len(),
            record.longest_gap()
        );
    };
    for (name, record, terminating) in &calls.ended {
        let state = format!("drained in {:.1} s, Service kept", terminating.as_secs_f64());
        row(name, &state, record);
    }
    for (name, record) in &still_up {
        row(name, "up", record);
    }
    assert!(outcome.moved.is_empty(), "live rooms moved: {:?}", outcome.moved);
    assert!(
        outcome.failed.is_empty(),
        "room requests failed: {:?}",
        outcome.failed
    );
    assert!(calls.services_lost.is_empty(), "{:?}", calls.services_lost);
    let shard_0_ended = calls
        .ended
        .iter()
        .filter(|(n, _, _)| n.contains("(shard-0,"))
        .count();
    // Two, or three when the node drained in the middle held one of them (it came back, then went).
    assert!(
        (2..=3).contains(&shard_0_ended),
        "shard-0's bridges drained and went: {shard_0_ended}"
    );
    if drain_a_node {
        assert!(
            calls
                .ended
                .iter()
                .any(|(n, _, _)| n.starts_with("shard-1-jvb-0 ")),
            "the drained node's bridge drained"
        );
    }
    assert_eq!(
        still_up.len(),
        4,
        "shard-1's and shard-2's bridges carry their calls"
    );
    let records = calls
        .ended
        .iter()
        .map(|(n, r, _)| (n, r))
        .chain(still_up.iter().map(|(n, r)| (n, r)));
    for (name, record) in records {
        assert!(record.sent > 20, "{name}: the call hardly ran: {record:?}");
        assert!(
            record.lost.is_empty(),
            "{name} lost datagrams while it had its call: {record:?}"
        );
    }
    drop(bridges);
    drop(replicas);
    std::fs::remove_dir_all(&copy).unwrap();
    namespace.delete().await;
}

#[tokio::test]
async fn a_shard_is_retired_with_no_room_moved_and_no_datagram_lost() {
    upgrade("upgrade", false).await;
}

#[tokio::test]
async fn a_shard_is_retired_with_a_node_drained_in_the_middle_and_no_call_cut() {
    upgrade("upgrade-drain", true).await;
}
