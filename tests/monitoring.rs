//! Our PodMonitors, rules and dashboards in a real Prometheus, set up as each monitoring stack sets up
//! its own (`testbed::monitoring`): the Prometheus Operator turns them into configuration, Prometheus
//! discovers our pods through the API server under its own ServiceAccount (our component's RoleBinding is
//! its only right in our namespace) and scrapes the exporters where their pods are, at their pod IPs.

// Test code: a failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::ListParams;
use serde_json::Value;
use testbed::bridge_stub::{BridgeStub, StubConfig};
use testbed::manifests::{self, kind, of_kind, render_overlay};
use testbed::monitoring::{PrometheusServer, Stack, label, our_programs};
use testbed::pod_runtime::PodRuntime;
use testbed::prosody::{Occupants, Prosody, ProsodyOptions};
use testbed::{Cluster, TestNamespace, eventually};
use tokio::sync::Mutex;

const DEV: &str = "manifests/overlays/dev";
const SHARD_LABEL: &str = "jitsi_org_shard";

/// The dev overlay with a monitoring stack's component, applied; its pods, once all are Running.
async fn deploy(namespace: &TestNamespace, objects: &[Value]) -> Vec<Pod> {
    manifests::apply(
        &objects
            .iter()
            .filter(|o| kind(o) == "Namespace")
            .cloned()
            .collect::<Vec<_>>(),
    );
    manifests::apply(objects);
    let expected: usize = objects
        .iter()
        .filter(|o| matches!(kind(o), "Deployment" | "StatefulSet"))
        .map(|w| w["spec"]["replicas"].as_u64().unwrap_or(1) as usize)
        .sum();
    assert!(of_kind(objects, "PodMonitor").count() >= 4);
    let pods = namespace.api::<Pod>();
    eventually(
        "every pod of the dev overlay Running",
        Duration::from_secs(90),
        || async {
            let list = pods.list(&ListParams::default()).await.ok()?;
            let running: Vec<Pod> = list
                .items
                .into_iter()
                .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
                .filter(|p| p.status.as_ref().and_then(|s| s.pod_ip.as_ref()).is_some())
                .collect();
            (running.len() == expected).then_some(running)
        },
    )
    .await
}

fn named_app<'a>(pods: &'a [Pod], app: &str) -> Vec<&'a Pod> {
    pods.iter()
        .filter(|p| p.labels().get("app.kubernetes.io/name").map(String::as_str) == Some(app))
        .collect()
}

/// One test at a time: kube-prometheus's Prometheus selects every PodMonitor of the cluster, so two at
/// once would scrape (and alert on) each other's pods.
static ONE_AT_A_TIME: Mutex<()> = Mutex::const_new(());

/// Our daemons running in their pods, and what stands in for the containers we cannot run (the bridge,
/// Prosody's image): a bridge stub and Debian's Prosody on this host, reached from inside each pod at
/// the address the real container would serve (`127.0.0.1:8080`, `127.0.0.1:5280`).
struct Workloads {
    bridges: Vec<(BridgeStub, PodRuntime)>,
    _prosody: (Prosody, Occupants, PodRuntime),
    _controller: PodRuntime,
}

async fn run_workloads(cluster: &Cluster, pods: &[Pod], draining_stub: StubConfig) -> Workloads {
    let programs = our_programs(&["jvb-exporter", "prosody-exporter", "service-per-pod"]);
    let mut bridges = Vec::new();
    for pod in named_app(pods, "jvb") {
        let stub = BridgeStub::start(draining_stub.clone()).await;
        let mut runtime =
            PodRuntime::start_containers(cluster, pod, &programs, Some(&["jvb-exporter"])).await;
        runtime.forward_in(8080, stub.addr);
        bridges.push((stub, runtime));
    }
    let prosody_pod = named_app(pods, "prosody")[0];
    let prosody = Prosody::start(ProsodyOptions::default());
    let occupants = Occupants::join(&prosody, &[("monitored-room", 2)]);
    let mut runtime =
        PodRuntime::start_containers(cluster, prosody_pod, &programs, Some(&["prosody-exporter"])).await;
    let address: std::net::SocketAddr = prosody.url().trim_start_matches("http://").parse().unwrap();
    runtime.forward_in(5280, address);
    // The controller as its pod runs it: its own ServiceAccount token (projected by the API server's
    // admission into the pod spec), its env, the API server through the pod's network.
    let controller_pod = named_app(pods, "service-per-pod")[0];
    let controller = PodRuntime::start(cluster, controller_pod, &programs).await;
    Workloads {
        bridges,
        _prosody: (prosody, occupants, runtime),
        _controller: controller,
    }
}

/// The targets of one of our PodMonitors, by pod: `(health, labels)`.
fn targets_of(targets: &[Value], namespace: &str, pod_monitor: &str) -> BTreeMap<String, (String, Value)> {
    let job = format!("{namespace}/{pod_monitor}");
    targets
        .iter()
        .filter(|t| t["labels"]["job"] == job.as_str())
        .map(|t| {
            (
                t["labels"]["pod"].as_str().unwrap_or_default().to_owned(),
                (
                    t["health"].as_str().unwrap_or_default().to_owned(),
                    t["labels"].clone(),
                ),
            )
        })
        .collect()
}

/// Every target of `pod_monitor` up, one per pod it is meant for, at its pod IP, labelled with
/// namespace, pod and shard.
async fn expect_live_targets(
    prometheus: &PrometheusServer,
    namespace: &str,
    pod_monitor: &str,
    meant_for: &[&Pod],
) {
    let targets = eventually(
        &format!("PodMonitor {pod_monitor}: a live target per pod"),
        Duration::from_secs(120),
        || async {
            let targets = targets_of(&prometheus.active_targets().await, namespace, pod_monitor);
            let all_up = meant_for.iter().all(|pod| {
                targets
                    .get(&pod.name_any())
                    .is_some_and(|(health, _)| health == "up")
            });
            (all_up && targets.len() == meant_for.len()).then_some(targets)
        },
    )
    .await;
    for pod in meant_for {
        let (_, labels) = &targets[&pod.name_any()];
        let ip = pod.status.as_ref().unwrap().pod_ip.clone().unwrap();
        assert!(
            labels["instance"]
                .as_str()
                .unwrap()
                .starts_with(&format!("{ip}:")),
            "scraped at its pod IP: {labels}"
        );
        assert_eq!(labels["namespace"], namespace);
        if let Some(shard) = pod.labels().get("jitsi.org/shard") {
            assert_eq!(labels[SHARD_LABEL], shard.as_str(), "{labels}");
        }
    }
}

/// The stack's Prometheus, once it scrapes every jvb, prosody and service-per-pod pod (what it took and
/// what it holds printed for the closing notes).
async fn start_and_scrape_ours(
    cluster: &Cluster,
    stack: Stack,
    namespace: &str,
    pods: &[Pod],
) -> PrometheusServer {
    let prometheus = PrometheusServer::start(cluster, stack).await;
    for (pod_monitor, app) in [
        ("jvb", "jvb"),
        ("prosody", "prosody"),
        ("service-per-pod", "service-per-pod"),
    ] {
        expect_live_targets(&prometheus, namespace, pod_monitor, &named_app(pods, app)).await;
    }
    let mib =
        |bytes: Option<u64>| bytes.map_or("?".to_owned(), |b| format!("{:.1} MiB", b as f64 / 1048576.0));
    println!(
        "{stack:?}: Prometheus ready {:.1?} after its pod's containers started; RSS with {} targets: prometheus {}, config-reloader {}",
        prometheus.ready_after,
        prometheus.active_targets().await.len(),
        mib(prometheus.runtime.rss_bytes("prometheus")),
        mib(prometheus.runtime.rss_bytes("config-reloader")),
    );
    prometheus
}

/// Dashboard panels that cannot show data on the local cluster, and why.
const NO_DATA_HERE: &[(&str, &str)] = &[
    ("container_", "cAdvisor: no kubelet runs on a KWOK node"),
    ("kube_", "kube-state-metrics is not part of the local cluster"),
    (
        "haproxy_",
        "HAProxy runs in the HAProxy tests, not in its pod here",
    ),
];

/// Every panel query of our dashboards, with Grafana's variables as a user picks them.
fn dashboard_queries(objects: &[Value], namespace: &str) -> Vec<(String, String)> {
    let mut queries = Vec::new();
    for config_map in
        of_kind(objects, "ConfigMap").filter(|c| c["metadata"]["labels"]["grafana_dashboard"] == "1")
    {
        for (file, json) in config_map["data"].as_object().unwrap() {
            let dashboard: Value = serde_json::from_str(json.as_str().unwrap()).unwrap();
            for panel in dashboard["panels"].as_array().unwrap() {
                for target in panel["targets"].as_array().into_iter().flatten() {
                    let Some(expr) = target["expr"].as_str() else {
                        continue;
                    };
                    let expr = expr
                        // Grafana's $__rate_interval for a 30 s scrape interval: 4 × 30 s.
                        .replace("$__rate_interval", "2m")
                        .replace("$namespace", namespace)
                        .replace("$shard", "shard-0")
                        .replace("$pod", ".*");
                    queries.push((
                        format!("{file}: {}", panel["title"].as_str().unwrap_or("?")),
                        expr,
                    ));
                }
            }
        }
    }
    queries
}

#[tokio::test]
async fn kube_prometheus_scrapes_our_pods_where_they_run_and_our_alerts_fire() {
    testbed::monitoring::require();
    testbed::dataplane::require();
    let _alone = ONE_AT_A_TIME.lock().await;
    let cluster = Cluster::connect().await;
    let namespace = cluster.namespace("monitoring-kp").await;
    // The dev overlay's controller gives the bridges the dev block's node ports.
    namespace.reserve_node_ports(30300).await;
    // The dev overlay carries components/kube-prometheus already.
    let objects = render_overlay(&namespace.name, DEV, &[]);
    assert!(
        of_kind(&objects, "RoleBinding")
            .any(|b| b["subjects"][0]["name"] == Stack::KubePrometheus.service_account()),
        "the dev overlay binds kube-prometheus's Prometheus"
    );
    let pods = deploy(&namespace, &objects).await;
    // Participants stay on a draining bridge: what the drain alert waits for.
    let stub = StubConfig {
        participants: Some(4),
        leave_every: None,
        ..StubConfig::default()
    };
    let mut workloads = run_workloads(&cluster, &pods, stub).await;
    let prometheus = start_and_scrape_ours(&cluster, Stack::KubePrometheus, &namespace.name, &pods).await;
    // Jicofo's and HAProxy's targets exist (discovered, labelled) but are down: their processes do not
    // run here.
    let targets = prometheus.active_targets().await;
    for pod_monitor in ["jicofo", "haproxy"] {
        assert_eq!(
            targets_of(&targets, &namespace.name, pod_monitor).len(),
            named_app(&pods, pod_monitor).len(),
            "PodMonitor {pod_monitor}: one target per pod"
        );
    }

    // The series our dashboards and alerts group by carry namespace, pod and shard.
    let participants = prometheus.query("jitsi_participants").await;
    assert!(!participants.is_empty(), "no jitsi_participants series");
    for (labels, value) in &participants {
        assert_eq!(label(labels, "namespace"), Some(namespace.name.as_str()));
        assert!(label(labels, "pod").is_some_and(|pod| pod.starts_with("shard-0-jvb-")));
        assert_eq!(label(labels, SHARD_LABEL), Some("shard-0"));
        assert_eq!(*value, 4.0);
    }
    let census = prometheus.query("jitsi_prosody_participants").await;
    assert_eq!(census.iter().map(|(_, v)| *v).sum::<f64>(), 2.0, "{census:?}");

    // Every panel returns series for these pods, or says why it cannot here. A rate needs two scrapes
    // in its window: a minute or two after the first.
    let panels: Vec<(String, String)> = dashboard_queries(&objects, &namespace.name)
        .into_iter()
        .filter(|(_, expr)| !NO_DATA_HERE.iter().any(|(prefix, _)| expr.contains(prefix)))
        .collect();
    let deadline = std::time::Instant::now() + Duration::from_secs(150);
    let mut without_data;
    loop {
        without_data = Vec::new();
        for (panel, expr) in &panels {
            if prometheus.query(expr).await.is_empty() {
                without_data.push(format!("{panel}: {expr}"));
            }
        }
        if without_data.is_empty() || std::time::Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    assert!(without_data.is_empty(), "panels without data: {without_data:#?}");

    // Every rule of our PrometheusRule is loaded and evaluates without error.
    let rule = of_kind(&objects, "PrometheusRule").next().unwrap();
    let shipped: Vec<&str> = rule["spec"]["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|group| group["rules"].as_array().unwrap())
        .filter_map(|rule| rule["alert"].as_str())
        .collect();
    let loaded = eventually(
        "every rule loaded and evaluated",
        Duration::from_secs(90),
        || async {
            let loaded: BTreeMap<String, String> = prometheus
                .rule_groups()
                .await
                .iter()
                .flat_map(|group| group["rules"].as_array().cloned().unwrap_or_default())
                .filter(|rule| {
                    rule["lastEvaluation"]
                        .as_str()
                        .is_some_and(|t| !t.starts_with("0001"))
                })
                .map(|rule| {
                    (
                        rule["name"].as_str().unwrap_or_default().to_owned(),
                        rule["health"].as_str().unwrap_or_default().to_owned(),
                    )
                })
                .collect();
            shipped
                .iter()
                .all(|name| loaded.contains_key(*name))
                .then_some(loaded)
        },
    )
    .await;
    for name in &shipped {
        assert_eq!(loaded[*name], "ok", "rule {name}");
    }

    // A draining bridge with participants shows in the drain alert's pending state.
    let (stub, _) = &workloads.bridges[0];
    let bridge = workloads.bridges[0].1.net.name.clone();
    reqwest::Client::new()
        .post(format!("{}/colibri/drain/enable", stub.url()))
        .send()
        .await
        .unwrap();
    eventually(
        "JitsiBridgeDrainingLong pending for the draining bridge",
        Duration::from_secs(120),
        || async {
            alert_state(&prometheus, "JitsiBridgeDrainingLong", &bridge)
                .await
                .filter(|s| s == "pending")
        },
    )
    .await;

    // Its exporter stops: JitsiBridgeUnreachable fires within its `for` (5 min) + a scrape and an
    // evaluation.
    let stopped = std::time::Instant::now();
    workloads.bridges[0].1.kill("jvb-exporter");
    eventually(
        "JitsiBridgeUnreachable firing",
        Duration::from_secs(5 * 60 + 120),
        || async {
            alert_state(&prometheus, "JitsiBridgeUnreachable", &bridge)
                .await
                .filter(|s| s == "firing")
        },
    )
    .await;
    let took = stopped.elapsed();
    println!("JitsiBridgeUnreachable fired {took:.0?} after the exporter stopped");
    assert!(
        took <= Duration::from_secs(5 * 60 + 15 + 30 + 15),
        "fired {took:?} after the exporter stopped: more than for + a scrape + an evaluation"
    );

    prometheus.stop(&cluster).await;
    drop(workloads);
    namespace.delete().await;
}

/// The state (`pending`, `firing`) of `alert` for `pod`, if Prometheus holds it.
async fn alert_state(prometheus: &PrometheusServer, alert: &str, pod: &str) -> Option<String> {
    prometheus
        .alerts()
        .await
        .into_iter()
        .find(|a| a["labels"]["alertname"] == alert && a["labels"]["pod"] == pod)
        .and_then(|a| a["state"].as_str().map(str::to_owned))
}

#[tokio::test]
async fn kube_prometheus_stack_selects_our_monitors_and_rules_by_its_release_label_only() {
    testbed::monitoring::require();
    testbed::dataplane::require();
    let _alone = ONE_AT_A_TIME.lock().await;
    let cluster = Cluster::connect().await;
    let namespace = cluster.namespace("monitoring-kps").await;
    namespace.reserve_node_ports(30300).await;
    let mut objects = render_overlay(&namespace.name, DEV, &[Stack::KubePrometheusStack.component()]);
    // The same bridge monitor without the release label: the chart's Prometheus must not see it.
    let mut unlabelled = of_kind(&objects, "PodMonitor")
        .find(|m| m["metadata"]["name"] == "jvb")
        .unwrap()
        .clone();
    unlabelled["metadata"]["name"] = "jvb-unlabelled".into();
    unlabelled["metadata"]["labels"]
        .as_object_mut()
        .unwrap()
        .remove("release");
    objects.push(unlabelled);
    let pods = deploy(&namespace, &objects).await;
    let _workloads = run_workloads(&cluster, &pods, StubConfig::default()).await;
    let prometheus =
        start_and_scrape_ours(&cluster, Stack::KubePrometheusStack, &namespace.name, &pods).await;
    let targets = prometheus.active_targets().await;
    assert!(
        targets_of(&targets, &namespace.name, "jvb-unlabelled").is_empty(),
        "a PodMonitor without the release label was selected"
    );
    let groups: Vec<String> = eventually("our rule groups loaded", Duration::from_secs(90), || async {
        let groups: Vec<String> = prometheus
            .rule_groups()
            .await
            .iter()
            .filter_map(|g| g["name"].as_str().map(str::to_owned))
            .collect();
        groups.iter().any(|g| g == "jitsi-videobridge").then_some(groups)
    })
    .await;
    let rule = of_kind(&objects, "PrometheusRule").next().unwrap();
    for group in rule["spec"]["groups"].as_array().unwrap() {
        let name = group["name"].as_str().unwrap();
        assert!(
            groups.iter().any(|g| g == name),
            "group {name} not loaded: {groups:?}"
        );
    }
    prometheus.stop(&cluster).await;
    namespace.delete().await;
}
