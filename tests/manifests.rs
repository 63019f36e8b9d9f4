//! The overlays users apply: rendered with kustomize, checked for the promises they make, accepted by the
//! real API server (Pod Security "restricted" included) without a warning, and the dev overlay run for real
//! with the service-per-pod controller started from its own manifest.

// Test code: a failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Node, Pod, Service};
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::{Value, json};
use testbed::manifests::{self, kind, kubectl, named, of_kind, render_overlay};
use testbed::service_per_pod::start_controller;
use testbed::{Cluster, eventually};

const DEV: &str = "manifests/overlays/dev";
const PRODUCTION: &str = "manifests/overlays/production";
const GATEWAY_API: &str = "manifests/components/gateway-api";
const TURN: &str = "manifests/components/turn";
const KUBE_PROMETHEUS_STACK: &str = "manifests/components/kube-prometheus-stack";
const BASE_PORT: &str = "service-per-pod/base-port";
const SHARD_LABEL: &str = "jitsi.org/shard";

/// Every overlay as users render it, with the components that go with it.
fn renderings() -> Vec<(&'static str, &'static [&'static str], Vec<Value>)> {
    [
        (DEV, &[][..]),
        (PRODUCTION, &[][..]),
        (PRODUCTION, &[KUBE_PROMETHEUS_STACK][..]),
        (PRODUCTION, &[GATEWAY_API][..]),
        (PRODUCTION, &[TURN][..]),
    ]
    .into_iter()
    .map(|(overlay, components)| {
        let namespace = "render-only";
        (
            overlay,
            components,
            render_overlay(namespace, overlay, components),
        )
    })
    .collect()
}

fn name(object: &Value) -> &str {
    object["metadata"]["name"].as_str().unwrap_or_default()
}

fn pod_spec(workload: &Value) -> &Value {
    &workload["spec"]["template"]["spec"]
}

fn workloads(objects: &[Value]) -> impl Iterator<Item = &Value> {
    objects
        .iter()
        .filter(|o| matches!(kind(o), "Deployment" | "StatefulSet"))
}

/// Init containers first, then the others.
fn containers(workload: &Value) -> Vec<&Value> {
    let spec = pod_spec(workload);
    ["initContainers", "containers"]
        .iter()
        .flat_map(|field| spec[field].as_array().into_iter().flatten())
        .collect()
}

fn env<'a>(container: &'a Value, variable: &str) -> Option<&'a Value> {
    container["env"]
        .as_array()?
        .iter()
        .find(|e| e["name"] == variable)
}

fn container<'a>(workload: &'a Value, container_name: &str) -> &'a Value {
    containers(workload)
        .into_iter()
        .find(|c| c["name"] == container_name)
        .unwrap_or_else(|| panic!("{} has no container {container_name}", name(workload)))
}

/// "3h", "90m", "45s" → seconds.
fn seconds(duration: &str) -> u64 {
    let (number, unit) = duration.split_at(duration.len() - 1);
    let number: u64 = number.parse().unwrap();
    number
        * match unit {
            "h" => 3600,
            "m" => 60,
            "s" => 1,
            other => panic!("unexpected unit {other} in {duration}"),
        }
}

/// Why a kubelet on a real cluster would not pull `image` as the same bits every time, if it would not:
/// a short name (resolved through whatever registry the node's runtime defaults to), no tag or a moving
/// one, or a Jitsi image from Docker Hub (Jitsi stopped publishing there in June 2026; a mirror in the
/// operator's registry is fine).
fn image_problem(image: &str) -> Option<String> {
    let (name, tag) = match image.rsplit_once(':') {
        Some((name, tag)) if !tag.contains('/') => (name, tag),
        _ => (image, ""),
    };
    let registry = name.split_once('/').map(|(first, _)| first).unwrap_or_default();
    let path = &name[registry.len()..].trim_start_matches('/');
    if !(registry.contains('.') || registry.contains(':') || registry == "localhost") {
        return Some(format!("{image} does not name its registry"));
    }
    if tag.is_empty() || ["latest", "stable", "unstable", "nightly"].contains(&tag) {
        return Some(format!("{image} is not pinned to a release tag"));
    }
    let jitsi = ["web", "jicofo", "prosody", "jvb"]
        .iter()
        .any(|j| *path == format!("jitsi/{j}"));
    if jitsi && ["docker.io", "index.docker.io", "registry-1.docker.io"].contains(&registry) {
        return Some(format!(
            "{image}: Jitsi no longer publishes to Docker Hub, use ghcr.io/jitsi"
        ));
    }
    None
}

#[test]
fn the_image_check_refuses_what_would_not_pull_pinned() {
    for bad in [
        "jitsi/jvb:stable-11146-2",
        "docker.io/jitsi/jvb:stable-11146-2",
        "ghcr.io/jitsi/jvb",
        "ghcr.io/jitsi/jvb:latest",
        "ghcr.io/jitsi/web:stable",
        "haproxy:3.2.18",
        "localhost:5000/jvb-exporter",
    ] {
        assert!(image_problem(bad).is_some(), "{bad} passed");
    }
    for good in [
        "ghcr.io/jitsi/jvb:stable-11146-2",
        "docker.io/library/haproxy:3.2.18",
        "localhost:5000/jitsi-k8s/jvb-exporter:0.1.0",
        "registry.example.org:5000/jitsi/jvb:stable-11146-2",
    ] {
        assert_eq!(image_problem(good), None, "{good}");
    }
}

/// A native sidecar (init container with `restartPolicy: Always`) runs beside the app: it is probed too.
fn runs_to_completion(workload: &Value, container: &Value) -> bool {
    container["restartPolicy"] != "Always"
        && pod_spec(workload)["initContainers"]
            .as_array()
            .is_some_and(|inits| inits.contains(container))
}

#[test]
fn every_container_is_pinned_sized_and_probed() {
    for (overlay, _, objects) in renderings() {
        for workload in workloads(&objects) {
            for c in containers(workload) {
                let at = format!("{overlay}: {}/{}", name(workload), c["name"]);
                let image = c["image"].as_str().unwrap();
                if let Some(problem) = image_problem(image) {
                    panic!("{at}: {problem}");
                }
                if image.contains("/jitsi/") {
                    assert!(
                        image.starts_with("ghcr.io/jitsi/"),
                        "{at}: {image} is not Jitsi's own"
                    );
                }
                let resources = &c["resources"];
                for field in ["/requests/cpu", "/requests/memory", "/limits/memory"] {
                    assert!(resources.pointer(field).is_some(), "{at}: no resources{field}");
                }
                if !runs_to_completion(workload, c) {
                    for probe in ["readinessProbe", "livenessProbe"] {
                        assert!(c[probe].is_object(), "{at}: no {probe}");
                    }
                }
            }
        }
    }
}

/// The bridge's metrics outlive the bridge: the exporter is a native sidecar started after jvb-startup
/// is installed, so the kubelet stops it only once `jvb` has exited; and the alert for a drain that
/// takes too long fires before the preStop hook gives up, which happens before the kubelet kills.
#[test]
fn the_bridge_exporter_outlives_the_drain_and_the_drain_alert_can_fire() {
    let alerts =
        std::fs::read_to_string(testbed::repo_root().join("manifests/base/monitoring/alerts.yaml")).unwrap();
    let draining_for = alert_for(&alerts, "JitsiBridgeDrainingLong");
    for (overlay, _, objects) in renderings() {
        for bridges in of_kind(&objects, "StatefulSet").filter(|s| name(s).ends_with("-jvb")) {
            let set = name(bridges);
            let inits: Vec<&str> = pod_spec(bridges)["initContainers"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c["name"].as_str().unwrap())
                .collect();
            assert_eq!(inits, ["install-jvb-startup", "jvb-exporter"], "{overlay}: {set}");
            let exporter = container(bridges, "jvb-exporter");
            assert_eq!(exporter["restartPolicy"], "Always", "{overlay}: {set}");
            assert!(
                pod_spec(bridges)["containers"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .all(|c| c["name"] != "jvb-exporter")
            );

            let drain = seconds(
                env(container(bridges, "jvb"), "DRAIN_TIMEOUT").unwrap()["value"]
                    .as_str()
                    .unwrap(),
            );
            let grace = pod_spec(bridges)["terminationGracePeriodSeconds"]
                .as_u64()
                .unwrap();
            assert!(
                draining_for < drain,
                "{overlay}: {set} gives up draining after {drain} s, the alert waits {draining_for} s"
            );
            assert!(
                drain + 60 <= grace,
                "{overlay}: {set}: {drain} s drain, {grace} s grace"
            );

            // Prometheus scrapes the port the sidecar serves.
            let monitor = of_kind(&objects, "PodMonitor")
                .find(|m| m["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"] == "jvb")
                .expect("a PodMonitor for the bridges");
            let port = monitor["spec"]["podMetricsEndpoints"][0]["port"]
                .as_str()
                .unwrap();
            assert!(
                exporter["ports"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|p| p["name"] == port),
                "{overlay}: the PodMonitor scrapes port {port}, which jvb-exporter does not serve"
            );
        }
    }
}

/// The `for:` of an alert in a PrometheusRule file, in seconds.
fn alert_for(rules: &str, alert: &str) -> u64 {
    let rest = rules
        .split_once(&format!("- alert: {alert}\n"))
        .unwrap_or_else(|| panic!("no alert {alert}"))
        .1;
    let line = rest
        .lines()
        .take_while(|l| !l.trim_start().starts_with("- alert:"))
        .find_map(|l| l.trim().strip_prefix("for: "))
        .unwrap_or_else(|| panic!("{alert} has no for:"));
    seconds(line.trim())
}

/// An autoscaler owns the count of what it scales: a `replicas` in the manifest would be re-applied by
/// every `kubectl apply`, fighting it.
#[test]
fn nothing_an_autoscaler_scales_sets_its_own_replicas() {
    for (overlay, _, objects) in renderings() {
        let autoscalers =
            of_kind(&objects, "HorizontalPodAutoscaler").chain(of_kind(&objects, "ScaledObject"));
        for hpa in autoscalers {
            let target = &hpa["spec"]["scaleTargetRef"];
            let scaled = named(
                &objects,
                target["kind"].as_str().unwrap(),
                target["name"].as_str().unwrap(),
            );
            assert!(
                scaled["spec"].get("replicas").is_none(),
                "{overlay}: {} sets replicas although HPA {} scales it",
                name(scaled),
                name(hpa)
            );
        }
    }
}

#[test]
fn haproxy_peers_follow_the_replica_count() {
    for (overlay, _, objects) in renderings() {
        let haproxy = named(&objects, "StatefulSet", "haproxy");
        let replicas = haproxy["spec"]["replicas"].as_u64().unwrap();
        let peers = env(container(haproxy, "haproxy"), "HAPROXY_REPLICAS").unwrap()["value"]
            .as_str()
            .unwrap();
        assert_eq!(
            peers,
            replicas.to_string(),
            "{overlay}: HAPROXY_REPLICAS differs from spec.replicas"
        );
        let peer_service = named(&objects, "Service", "haproxy-peers");
        assert_eq!(
            peer_service["spec"]["publishNotReadyAddresses"], true,
            "{overlay}"
        );
        assert_eq!(haproxy["spec"]["serviceName"], "haproxy-peers", "{overlay}");
    }
}

#[test]
fn every_shard_is_wired_to_itself_and_owns_a_distinct_port_block() {
    for (overlay, _, objects) in renderings() {
        let controller = named(&objects, "Deployment", "service-per-pod");
        let range = env(container(controller, "service-per-pod"), "NODE_PORT_RANGE").unwrap()["value"]
            .as_str()
            .unwrap();
        let (low, high) = range.split_once('-').unwrap();
        let (low, high): (u32, u32) = (low.parse().unwrap(), high.parse().unwrap());

        let mut blocks = BTreeMap::new();
        let bridges: Vec<&Value> = of_kind(&objects, "StatefulSet")
            .filter(|s| s["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/name"] == "jvb")
            .collect();
        assert!(!bridges.is_empty(), "{overlay}: no bridges");
        for bridges in bridges {
            let set = name(bridges);
            let shard = bridges["spec"]["template"]["metadata"]["labels"][SHARD_LABEL]
                .as_str()
                .unwrap_or_else(|| panic!("{overlay}: {set}'s pods carry no {SHARD_LABEL} label"));
            assert_eq!(
                set,
                format!("{shard}-jvb"),
                "{overlay}: the shard label and the name prefix differ"
            );

            // The controller reads the StatefulSet's annotation, jvb-startup the pod's: one value.
            let base = bridges["metadata"]["annotations"][BASE_PORT].as_str().unwrap();
            assert_eq!(
                bridges["spec"]["template"]["metadata"]["annotations"][BASE_PORT].as_str(),
                Some(base),
                "{overlay}: {set}"
            );
            let jvb = container(bridges, "jvb");
            assert_eq!(
                env(jvb, "JVB_BASE_PORT").unwrap()["valueFrom"]["fieldRef"]["fieldPath"],
                format!("metadata.annotations['{BASE_PORT}']"),
                "{overlay}: {set}"
            );
            let base: u32 = base.parse().unwrap();
            assert!(
                base >= low && base + 99 <= high,
                "{overlay}: {set}'s block {base}+0..99 is outside {range}"
            );
            if let Some((other, other_base)) = blocks.iter().find(|(_, b)| base.abs_diff(**b) < 100) {
                panic!("{overlay}: {set} (base {base}) overlaps {other} (base {other_base})");
            }
            blocks.insert(set.to_owned(), base);

            // $(SHARD)-prosody must be this shard's own Prosody Service.
            assert_eq!(env(jvb, "XMPP_SERVER").unwrap()["value"], "$(SHARD)-prosody");
            named(&objects, "Service", &format!("{shard}-prosody"));
            let prosody = named(&objects, "Deployment", &format!("{shard}-prosody"));
            let service = named(&objects, "Service", &format!("{shard}-prosody"));
            assert_eq!(
                service["spec"]["selector"][SHARD_LABEL], shard,
                "{overlay}: {shard}-prosody would select other shards' Prosody"
            );
            assert_eq!(
                prosody["spec"]["template"]["metadata"]["labels"][SHARD_LABEL],
                shard
            );

            // The preStop hook gives up before the kubelet kills the bridge.
            let drain = seconds(env(jvb, "DRAIN_TIMEOUT").unwrap()["value"].as_str().unwrap());
            let grace = pod_spec(bridges)["terminationGracePeriodSeconds"]
                .as_u64()
                .unwrap();
            assert!(
                drain + 60 <= grace,
                "{overlay}: {set} drains for {drain} s but is killed after {grace} s"
            );
            assert_eq!(
                jvb["lifecycle"]["preStop"]["exec"]["command"],
                json!(["/jvb-startup/jvb-startup", "drain"])
            );
            assert_eq!(
                jvb["command"],
                json!(["/jvb-startup/jvb-startup", "exec", "--", "/init"])
            );

            let scaler = of_kind(&objects, "ScaledObject")
                .find(|h| h["spec"]["scaleTargetRef"]["name"] == set)
                .unwrap_or_else(|| panic!("{overlay}: no ScaledObject scales {set}"));
            let bounds = (
                scaler["spec"]["minReplicaCount"].as_u64(),
                scaler["spec"]["maxReplicaCount"].as_u64(),
            );
            let expected = if overlay == DEV {
                (Some(1), Some(4))
            } else {
                (Some(2), Some(6))
            };
            assert_eq!(bounds, expected, "{overlay}: {set}'s ScaledObject");
        }
        if overlay == PRODUCTION {
            assert_eq!(blocks.len(), 2, "production runs two shards");
            // Applies on any cluster: nothing pins pods to zones unless the operator opts in.
            for workload in workloads(&objects) {
                assert!(
                    pod_spec(workload).get("nodeSelector").is_none(),
                    "{overlay}: {} is pinned: {}",
                    name(workload),
                    pod_spec(workload)["nodeSelector"]
                );
            }
        }
        every_shard_is_a_haproxy_server(overlay, &objects, blocks.keys());
    }
}

/// HAProxy knows each shard by name: server `<shard>` resolves `<shard>-web`, the shard's headless
/// Service, on the port its web pods serve.
fn every_shard_is_a_haproxy_server<'a>(
    overlay: &str,
    objects: &[Value],
    bridge_sets: impl Iterator<Item = &'a String>,
) {
    let config = of_kind(objects, "ConfigMap")
        .find_map(|c| c["data"]["haproxy.cfg"].as_str())
        .unwrap_or_else(|| panic!("{overlay}: no ConfigMap holds haproxy.cfg"));
    let haproxy = container(named(objects, "StatefulSet", "haproxy"), "haproxy");
    let shard_port = env(haproxy, "HAPROXY_SHARD_PORT").unwrap()["value"]
        .as_str()
        .unwrap();
    assert_eq!(
        env(haproxy, "HAPROXY_SHARD_DOMAIN").unwrap()["value"],
        "$(POD_NAMESPACE).svc.cluster.local"
    );
    for set in bridge_sets {
        let shard = set.strip_suffix("-jvb").unwrap();
        let number = shard.strip_prefix("shard-").unwrap();
        // Its weight: 1, or 0 while it drains (start.sh sets HAPROXY_WEIGHT_SHARD_<N>).
        assert!(
            config.contains(&format!(
                "  server {shard} \"{shard}-web.${{HAPROXY_SHARD_DOMAIN}}:${{HAPROXY_SHARD_PORT}}\" \
                 weight \"${{HAPROXY_WEIGHT_SHARD_{number}-1}}\"\n"
            )),
            "{overlay}: haproxy.cfg has no server for {shard}"
        );
        let service = named(objects, "Service", &format!("{shard}-web"));
        assert_eq!(
            service["spec"]["clusterIP"], "None",
            "{overlay}: {shard}-web is not headless"
        );
        assert_eq!(service["spec"]["selector"][SHARD_LABEL], shard, "{overlay}");
        let web = named(objects, "Deployment", &format!("{shard}-web"));
        assert!(
            service["spec"]["selector"]
                .as_object()
                .unwrap()
                .iter()
                .all(|(k, v)| &web["spec"]["template"]["metadata"]["labels"][k] == v),
            "{overlay}: {shard}-web does not select its web pods"
        );
        let service_port = &service["spec"]["ports"][0];
        assert_eq!(
            service_port["port"].to_string(),
            shard_port,
            "{overlay}: {shard}-web"
        );
        let container_port = container(web, "web")["ports"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == service_port["targetPort"])
            .unwrap_or_else(|| panic!("{overlay}: {shard}-web's targetPort is not a web port"));
        assert_eq!(container_port["containerPort"].to_string(), shard_port);
    }
}

#[test]
fn production_commits_no_secret_and_dev_generates_its_own() {
    for (overlay, _, objects) in renderings() {
        let secrets: Vec<&str> = of_kind(&objects, "Secret").map(name).collect();
        if overlay == PRODUCTION {
            assert!(secrets.is_empty(), "production renders Secrets {secrets:?}");
        } else {
            assert_eq!(secrets.len(), 1, "{overlay}: {secrets:?}");
            assert!(secrets[0].starts_with("jitsi-secrets-"), "{overlay}: {secrets:?}");
        }
    }
}

/// The names in each ScaledObject's query are its own (set by the shard folder's and the overlay's
/// replacements), its threshold is the 0.6 the query adds per held ordinal, and it asks the Prometheus of
/// the stack the overlay monitors with.
#[test]
fn every_scaled_object_queries_its_own_shard_in_its_own_namespace() {
    for (overlay, components, objects) in renderings() {
        let scalers: Vec<&Value> = of_kind(&objects, "ScaledObject").collect();
        assert_eq!(scalers.len(), if overlay == DEV { 1 } else { 2 }, "{overlay}");
        for scaler in scalers {
            let namespace = scaler["metadata"]["namespace"].as_str().unwrap();
            let set = scaler["spec"]["scaleTargetRef"]["name"].as_str().unwrap();
            assert_eq!(scaler["spec"]["scaleTargetRef"]["kind"], "StatefulSet");
            named(&objects, "StatefulSet", set);
            let shard = scaler["metadata"]["labels"][SHARD_LABEL].as_str().unwrap();
            assert_eq!(set, format!("{shard}-jvb"));
            let trigger = &scaler["spec"]["triggers"][0];
            assert_eq!(trigger["type"], "prometheus");
            let query = trigger["metadata"]["query"].as_str().unwrap();
            for wanted in [
                format!("{{namespace=\"{namespace}\",jitsi_org_shard=\"{shard}\"}}"),
                format!("{{statefulset_namespace=\"{namespace}\",statefulset=\"{set}\"}}"),
            ] {
                assert!(
                    query.contains(&wanted),
                    "{overlay}: {set}: {wanted} not in {query}"
                );
            }
            for placeholder in ["NAMESPACE", "SHARD", "STATEFULSET"] {
                assert!(!query.contains(placeholder), "{overlay}: {set}: {query}");
            }
            let threshold = trigger["metadata"]["threshold"].as_str().unwrap();
            assert!(
                query.contains(&format!(
                    "+ {threshold} * (max(service_per_pod_ordinals_held_by_terminating_pods"
                )),
                "{overlay}: a held ordinal must weigh one bridge's threshold {threshold}: {query}"
            );
            let server = if components.contains(&KUBE_PROMETHEUS_STACK) {
                "http://kube-prometheus-stack-prometheus.monitoring.svc:9090"
            } else {
                "http://prometheus-k8s.monitoring.svc:9090"
            };
            assert_eq!(
                trigger["metadata"]["serverAddress"], server,
                "{overlay} {components:?}"
            );
            assert_eq!(trigger["metadata"]["ignoreNullValues"], "false");
            assert!(of_kind(&objects, "HorizontalPodAutoscaler").next().is_none());
        }
    }
}

/// components/hpa-prometheus-adapter, added to a shard folder as its comment says: that shard's
/// ScaledObject gives way to a plain HPA on the stress level, the other shard keeps KEDA.
#[test]
fn the_prometheus_adapter_component_gives_one_shard_a_plain_hpa_on_stress() {
    let copy = manifests::copy_of_manifests("adapter-component");
    let shard_1 = copy.join("manifests/overlays/production/shard-1/kustomization.yaml");
    let text = std::fs::read_to_string(&shard_1).unwrap();
    std::fs::write(
        &shard_1,
        text.replace(
            "resources:\n  - ../../../base/shard\n",
            "resources:\n  - ../../../base/shard\ncomponents:\n  - ../../../components/hpa-prometheus-adapter\n",
        ),
    )
    .unwrap();
    let objects = manifests::render_dir(&copy.join("manifests/overlays/production"));
    let hpas: Vec<&Value> = of_kind(&objects, "HorizontalPodAutoscaler").collect();
    assert_eq!(hpas.len(), 1);
    assert_eq!(name(hpas[0]), "shard-1-jvb");
    assert_eq!(hpas[0]["spec"]["scaleTargetRef"]["name"], "shard-1-jvb");
    assert_eq!(
        hpas[0]["spec"]["metrics"],
        json!([{ "type": "Pods", "pods": {
            "metric": { "name": "jitsi_stress_level" },
            "target": { "type": "AverageValue", "averageValue": "600m" } } }])
    );
    let scalers: Vec<&str> = of_kind(&objects, "ScaledObject").map(name).collect();
    assert_eq!(scalers, ["shard-0-jvb"]);
    named(&objects, "ConfigMap", "shard-1-prometheus-adapter-rules");
    std::fs::remove_dir_all(&copy).unwrap();
}

/// Applies the Namespace of a rendering for real (its Pod Security labels then apply to everything else).
fn apply_namespace(objects: &[Value], namespace: &str) {
    let rendered = of_kind(objects, "Namespace")
        .next()
        .expect("the overlay carries its Namespace");
    assert_eq!(name(rendered), namespace);
    let labels = &rendered["metadata"]["labels"];
    assert_eq!(labels["pod-security.kubernetes.io/enforce"], "restricted");
    assert_eq!(labels["pod-security.kubernetes.io/warn"], "restricted");
    manifests::apply(std::slice::from_ref(rendered));
}

#[tokio::test]
async fn every_overlay_passes_a_server_side_dry_run_without_a_warning() {
    let cluster = Cluster::connect().await;
    for (overlay, components) in [
        (DEV, &[][..]),
        (PRODUCTION, &[][..]),
        (PRODUCTION, &[KUBE_PROMETHEUS_STACK][..]),
        (PRODUCTION, &[GATEWAY_API][..]),
    ] {
        let namespace = cluster.namespace("manifests-dry-run").await;
        let objects = render_overlay(&namespace.name, overlay, components);
        apply_namespace(&objects, &namespace.name);
        let rest: Vec<&Value> = objects.iter().filter(|o| kind(o) != "Namespace").collect();
        let list = json!({ "apiVersion": "v1", "kind": "List", "items": rest });
        let (ok, stdout, stderr) = kubectl(
            &[
                "apply",
                "--server-side",
                "--dry-run=server",
                "--force-conflicts",
                "--field-manager=manifests-dry-run",
                "--filename=-",
            ],
            &list.to_string(),
        );
        assert!(
            ok,
            "{overlay} {components:?} refused by the API server:\n{stderr}"
        );
        assert!(
            !stderr.to_lowercase().contains("warning"),
            "{overlay} {components:?} drew warnings:\n{stderr}"
        );
        assert_eq!(stdout.lines().count(), rest.len(), "{overlay}: {stdout}");
        namespace.delete().await;
    }
}

/// The dev overlay applied for real. Its bridges take the overlay's own node ports, 30300 and up.
#[tokio::test]
async fn the_dev_overlay_runs_and_its_bridges_get_their_node_ports() {
    let cluster = Cluster::connect().await;
    let namespace = cluster.namespace("manifests-dev").await;
    namespace.reserve_node_ports(30300).await;
    let objects = render_overlay(&namespace.name, DEV, &[]);
    apply_namespace(&objects, &namespace.name);
    manifests::apply(&objects);

    // Every workload's pods are admitted under "restricted" and run on the KWOK nodes.
    let expected: usize = workloads(&objects)
        .map(|w| w["spec"]["replicas"].as_u64().unwrap_or(1) as usize)
        .sum();
    let pods: Api<Pod> = namespace.api();
    let nodes: Vec<String> = Api::<Node>::all(cluster.admin())
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .map(ResourceExt::name_any)
        .collect();
    let running = eventually(
        "every pod of the dev overlay Running",
        Duration::from_secs(90),
        || async {
            let list = pods.list(&ListParams::default()).await.ok()?;
            let running: Vec<Pod> = list
                .items
                .into_iter()
                .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
                .collect();
            (running.len() == expected).then_some(running)
        },
    )
    .await;
    for pod in &running {
        let node = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_default();
        assert!(
            nodes.contains(&node),
            "{} runs on {node:?}, not a cluster node",
            pod.name_any()
        );
    }
    assert!(running.iter().any(|p| p.name_any() == "shard-0-jvb-0"));

    // The controller as its manifest runs it: its ServiceAccount and Role from the overlay, its flags.
    let deployment = named(&objects, "Deployment", "service-per-pod");
    let controller = start_controller(&cluster, &namespace.name, deployment, "service-per-pod-local").await;

    let services: Api<Service> = namespace.api();
    let expect_service = |name: &'static str, port: i32| {
        let services = services.clone();
        async move {
            let service = eventually(&format!("Service {name}"), Duration::from_secs(30), || async {
                services.get_opt(name).await.ok().flatten()
            })
            .await;
            let spec = service.spec.unwrap();
            assert_eq!(spec.type_.as_deref(), Some("NodePort"));
            assert_eq!(spec.external_traffic_policy.as_deref(), Some("Local"));
            let ports = spec.ports.unwrap();
            assert_eq!(ports.len(), 1);
            assert_eq!(ports[0].protocol.as_deref(), Some("UDP"));
            assert_eq!((ports[0].port, ports[0].node_port), (port, Some(port)));
            let pod_name = name.to_owned();
            assert_eq!(
                spec.selector.unwrap().get("statefulset.kubernetes.io/pod-name"),
                Some(&pod_name)
            );
        }
    };
    expect_service("shard-0-jvb-0", 30300).await;

    let sets: Api<StatefulSet> = namespace.api();
    let scale = |replicas: i32| {
        let sets = sets.clone();
        async move {
            sets.patch(
                "shard-0-jvb",
                &PatchParams::default(),
                &Patch::Merge(json!({ "spec": { "replicas": replicas } })),
            )
            .await
            .unwrap();
        }
    };
    scale(2).await;
    expect_service("shard-0-jvb-1", 30301).await;
    scale(1).await;
    eventually(
        "Service shard-0-jvb-1 gone with its pod",
        Duration::from_secs(60),
        || async {
            let gone = services.get_opt("shard-0-jvb-1").await.ok()?.is_none();
            gone.then_some(())
        },
    )
    .await;
    assert!(services.get_opt("shard-0-jvb-0").await.unwrap().is_some());
    drop(controller);
    namespace.delete().await;
}

#[test]
fn advertising_from_the_node_turns_on_the_token_the_flag_and_the_node_reader_binding() {
    let objects = manifests::render(
        "render-only",
        &["manifests/base/shard"],
        &["manifests/components/jvb-advertise-from-node"],
    );
    let bridges = named(&objects, "StatefulSet", "jvb");
    assert_eq!(pod_spec(bridges)["automountServiceAccountToken"], true);
    assert_eq!(pod_spec(bridges)["serviceAccountName"], "jvb");
    assert_eq!(
        env(container(bridges, "jvb"), "JVB_ADVERTISE_FROM_NODE").unwrap()["value"],
        "true"
    );
    let binding = named(&objects, "ClusterRoleBinding", "jvb-node-reader");
    assert_eq!(
        binding["subjects"],
        json!([{ "kind": "ServiceAccount", "name": "jvb", "namespace": "render-only" }])
    );
    // Without the component the bridges hold no token at all.
    let plain = manifests::render("render-only", &["manifests/base/shard"], &[]);
    let account = named(&plain, "ServiceAccount", "jvb");
    assert_eq!(account["automountServiceAccountToken"], false);
    assert!(
        env(
            container(named(&plain, "StatefulSet", "jvb"), "jvb"),
            "JVB_ADVERTISE_FROM_NODE"
        )
        .is_none()
    );
}

/// components/zone-pinning as its header says: a zone.yaml and the component in each shard's folder.
#[test]
fn zone_pinning_puts_each_shard_in_the_zone_its_operator_names() {
    let copy = manifests::copy_of_manifests("zone-pinning");
    let production = copy.join("manifests/overlays/production");
    let header =
        std::fs::read_to_string(copy.join("manifests/components/zone-pinning/kustomization.yaml")).unwrap();
    // The zone.yaml of the header, uncommented, up to its `zone:` line.
    let mut zone_file = String::new();
    for line in header.lines().skip_while(|l| !l.contains("apiVersion: v1")) {
        let line = line.strip_prefix("#   ").unwrap();
        let line = line.split(" #").next().unwrap().trim_end();
        zone_file += line;
        zone_file.push('\n');
        if line.trim_start().starts_with("zone:") {
            break;
        }
    }
    assert!(zone_file.contains("kind: ConfigMap"), "{zone_file}");
    for (shard, zone) in [("shard-0", "europe-west1-b"), ("shard-1", "europe-west1-c")] {
        let folder = production.join(shard);
        std::fs::write(
            folder.join("zone.yaml"),
            zone_file.replace("europe-west1-b", zone),
        )
        .unwrap();
        let kustomization = std::fs::read_to_string(folder.join("kustomization.yaml")).unwrap();
        assert!(kustomization.contains("  - ../../../base/shard\n"));
        std::fs::write(
            folder.join("kustomization.yaml"),
            kustomization.replace(
                "  - ../../../base/shard\n",
                "  - ../../../base/shard\n  - zone.yaml\ncomponents:\n  - ../../../components/zone-pinning\n",
            ),
        )
        .unwrap();
    }
    let objects = manifests::render_dir(&production);
    assert!(
        of_kind(&objects, "ConfigMap").all(|c| !name(c).contains("shard-zone")),
        "the zone's ConfigMap is kustomize's input only"
    );
    let mut pinned = 0;
    for workload in workloads(&objects) {
        let zone = &pod_spec(workload)["nodeSelector"]["topology.kubernetes.io/zone"];
        match workload["spec"]["template"]["metadata"]["labels"][SHARD_LABEL].as_str() {
            Some("shard-0") => assert_eq!(zone, "europe-west1-b", "{}", name(workload)),
            Some("shard-1") => assert_eq!(zone, "europe-west1-c", "{}", name(workload)),
            _ => assert!(
                zone.is_null(),
                "{} belongs to no shard but is pinned",
                name(workload)
            ),
        }
        pinned += usize::from(!zone.is_null());
    }
    assert_eq!(pinned, 8, "web, jicofo, prosody and jvb of two shards");
    std::fs::remove_dir_all(&copy).unwrap();
}

/// docs/deploying.md's procedure, followed literally on a copy of `manifests/`.
#[test]
fn adding_a_shard_as_docs_deploying_says_gives_a_third_wired_shard() {
    let copy = manifests::copy_of_manifests("shard-procedure");
    let production = copy.join("manifests/overlays/production");
    // 1. copy the folder; 2. change its name and base port; 3. list it.
    let shard_1 = std::fs::read_to_string(production.join("shard-1/kustomization.yaml")).unwrap();
    assert_eq!(shard_1.matches("shard-1").count(), 2, "the docs say two places");
    let shard_2 = shard_1
        .replace("shard-1", "shard-2")
        .replace("\"30400\"", "\"30500\"");
    std::fs::create_dir_all(production.join("shard-2")).unwrap();
    std::fs::write(production.join("shard-2/kustomization.yaml"), shard_2).unwrap();
    let parent = std::fs::read_to_string(production.join("kustomization.yaml")).unwrap();
    assert!(parent.contains("  - shard-1\n"));
    std::fs::write(
        production.join("kustomization.yaml"),
        parent.replace("  - shard-1\n", "  - shard-1\n  - shard-2\n"),
    )
    .unwrap();

    let objects = manifests::render_dir(&production);
    let bridges = named(&objects, "StatefulSet", "shard-2-jvb");
    assert_eq!(bridges["metadata"]["annotations"][BASE_PORT], "30500");
    assert_eq!(
        bridges["spec"]["template"]["metadata"]["labels"][SHARD_LABEL],
        "shard-2"
    );
    let prosody = named(&objects, "Service", "shard-2-prosody");
    assert_eq!(prosody["spec"]["selector"][SHARD_LABEL], "shard-2");
    named(&objects, "Deployment", "shard-2-web");
    named(&objects, "Deployment", "shard-2-jicofo");
    // HAProxy already has a server for it: the Service it resolves now exists.
    every_shard_is_a_haproxy_server("shard-2", &objects, ["shard-2-jvb".to_owned()].iter());
    let scaler = named(&objects, "ScaledObject", "shard-2-jvb");
    assert_eq!(scaler["spec"]["scaleTargetRef"]["name"], "shard-2-jvb");
    let query = scaler["spec"]["triggers"][0]["metadata"]["query"]
        .as_str()
        .unwrap();
    assert!(query.contains("jitsi_org_shard=\"shard-2\"") && query.contains("statefulset=\"shard-2-jvb\""));
    assert_eq!(
        of_kind(&objects, "StatefulSet")
            .filter(|s| name(s).ends_with("-jvb"))
            .count(),
        3
    );
    std::fs::remove_dir_all(&copy).unwrap();
}

/// The production overlay on a cluster whose zones are nobody's placeholders, applied as
/// docs/deploying.md says (Secret by hand, `kubectl apply --server-side`, kubectl's own field manager):
/// every pod is scheduled. Then the bridges are scaled as the HPA scales them and the overlay is applied
/// again exactly the same way: no conflict, and the autoscaler's count stays.
#[tokio::test]
async fn production_applies_on_any_cluster_and_re_applying_leaves_the_bridges_to_the_hpa() {
    let cluster = Cluster::connect().await;
    let namespace = cluster.namespace("manifests-production").await;
    let objects = render_overlay(&namespace.name, PRODUCTION, &[]);
    apply_namespace(&objects, &namespace.name);
    testbed::manifests::create_jitsi_secrets(&namespace.name);
    let rest: Vec<&Value> = objects.iter().filter(|o| kind(o) != "Namespace").collect();
    let list = json!({ "apiVersion": "v1", "kind": "List", "items": rest }).to_string();
    let apply_as_documented = || kubectl(&["apply", "--server-side", "--filename=-"], &list);
    let (ok, _, stderr) = apply_as_documented();
    assert!(ok, "the first apply failed:\n{stderr}");

    let zones: BTreeMap<String, String> = Api::<Node>::all(cluster.admin())
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .map(|node| {
            let zone = node.labels().get("topology.kubernetes.io/zone").cloned();
            (node.name_any(), zone.unwrap_or_default())
        })
        .collect();
    assert!(
        zones.values().all(|z| z != "zone-a" && z != "zone-b"),
        "the local cluster must not have the zones production once pinned to: {zones:?}"
    );
    let pods: Api<Pod> = namespace.api();
    let sets: Api<StatefulSet> = namespace.api();
    let zones = &zones;
    let every_pod_scheduled_and_ready = |bridges_per_shard: i32| {
        let (pods, sets) = (pods.clone(), sets.clone());
        async move {
            let bridges = sets.list(&ListParams::default()).await.ok()?;
            let ready = bridges
                .items
                .iter()
                .filter(|s| s.name_any().ends_with("-jvb"))
                .all(|s| {
                    let status = s.status.as_ref();
                    status.and_then(|s| s.ready_replicas) == Some(bridges_per_shard)
                        && status.map(|s| s.replicas) == Some(bridges_per_shard)
                });
            let pods = pods.list(&ListParams::default()).await.ok()?.items;
            let scheduled = pods.iter().all(|p| {
                let node = p.spec.as_ref().and_then(|s| s.node_name.as_deref());
                let running = p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
                running && node.is_some_and(|n| zones.get(n).is_some_and(|z| !z.is_empty()))
            });
            (ready && scheduled).then_some(pods.len())
        }
    };
    // The HPA (minReplicas 2) takes each shard from the StatefulSet's default of one bridge to two.
    let running = eventually(
        "production's pods Running on zoned nodes, two bridges per shard",
        Duration::from_secs(120),
        || every_pod_scheduled_and_ready(2),
    )
    .await;
    // 2 shards × (web, jicofo, prosody, 2 bridges) + 2 HAProxy + 2 controllers.
    assert_eq!(running, 2 * 5 + 2 + 2);

    // As the HPA scales: an update of the scale subresource under kube-controller-manager's name.
    let autoscaler = PostParams {
        field_manager: Some("kube-controller-manager".to_owned()),
        ..PostParams::default()
    };
    for set in ["shard-0-jvb", "shard-1-jvb"] {
        eventually(&format!("{set} scaled to 4"), Duration::from_secs(30), || async {
            let mut scale = sets.get_scale(set).await.ok()?;
            scale.spec.get_or_insert_default().replicas = Some(4);
            sets.replace_scale(set, &autoscaler, &scale).await.ok()
        })
        .await;
    }
    eventually("four bridges per shard", Duration::from_secs(120), || {
        every_pod_scheduled_and_ready(4)
    })
    .await;

    let (ok, stdout, stderr) = apply_as_documented();
    assert!(ok, "re-applying as documented failed:\n{stderr}");
    assert!(!stderr.contains("onflict"), "{stderr}");
    assert!(
        stdout.contains("statefulset.apps/shard-0-jvb serverside-applied"),
        "{stdout}"
    );
    for set in ["shard-0-jvb", "shard-1-jvb"] {
        let replicas = sets.get(set).await.unwrap().spec.unwrap().replicas;
        assert_eq!(replicas, Some(4), "{set} after re-applying");
    }

    // What the test guards against: the same StatefulSet with a `replicas` of its own. Where the API
    // server records the autoscaler's ownership of the field (scale-subresource tracking) the apply
    // conflicts; where it does not (this API server, for StatefulSets created by server-side apply) it
    // silently takes the shard back to that count. Either way the autoscaler's 4 would not survive.
    let mut with_replicas = named(&objects, "StatefulSet", "shard-0-jvb").clone();
    with_replicas["spec"]["replicas"] = json!(1);
    let (ok, stdout, stderr) = kubectl(
        &[
            "apply",
            "--server-side",
            "--dry-run=server",
            "--output=json",
            "--filename=-",
        ],
        &with_replicas.to_string(),
    );
    let conflicts = !ok && stderr.contains("conflict") && stderr.contains(".spec.replicas");
    let resets = ok && serde_json::from_str::<Value>(&stdout).unwrap()["spec"]["replicas"] == 1;
    assert!(
        conflicts || resets,
        "a manifest replicas went unnoticed: ok={ok}\n{stdout}\n{stderr}"
    );
    namespace.delete().await;
}

/// Every PodMonitor scrapes a port that the pods it selects serve.
#[test]
fn every_pod_monitor_selects_pods_that_serve_its_port() {
    for (overlay, _, objects) in renderings() {
        let monitors: Vec<&Value> = of_kind(&objects, "PodMonitor").collect();
        let selected: Vec<&str> = monitors
            .iter()
            .map(|m| {
                m["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"]
                    .as_str()
                    .unwrap()
            })
            .collect();
        for wanted in ["jvb", "prosody", "jicofo", "haproxy", "service-per-pod"] {
            assert!(
                selected.contains(&wanted),
                "{overlay}: no PodMonitor for {wanted}"
            );
        }
        for monitor in monitors {
            let selector = monitor["spec"]["selector"]["matchLabels"].as_object().unwrap();
            let pods: Vec<&Value> = workloads(&objects)
                .filter(|w| {
                    let labels = &w["spec"]["template"]["metadata"]["labels"];
                    selector.iter().all(|(k, v)| &labels[k] == v)
                })
                .collect();
            assert!(
                !pods.is_empty(),
                "{overlay}: PodMonitor {} selects nothing",
                name(monitor)
            );
            for endpoint in monitor["spec"]["podMetricsEndpoints"].as_array().unwrap() {
                for workload in &pods {
                    assert!(
                        containers(workload)
                            .iter()
                            .flat_map(|c| c["ports"].as_array().into_iter().flatten())
                            .any(|p| p["name"] == endpoint["port"]),
                        "{overlay}: PodMonitor {} scrapes port {}, which {} does not serve",
                        name(monitor),
                        endpoint["port"],
                        name(workload)
                    );
                }
            }
        }
    }
}

/// The production overlay switched to kube-prometheus-stack as its header says: the chart's Prometheus
/// selects the monitors and rules by `release`, its ServiceAccount may read the pods, and the dashboards
/// go where the chart's Grafana sidecar looks (its own namespace), applied as the component says.
#[tokio::test]
async fn kube_prometheus_stack_finds_the_monitors_rules_and_dashboards() {
    let copy = manifests::copy_of_manifests("kube-prometheus-stack");
    let production = copy.join("manifests/overlays/production");
    let kustomization = std::fs::read_to_string(production.join("kustomization.yaml")).unwrap();
    assert!(kustomization.contains("  - ../../components/kube-prometheus\n"));
    std::fs::write(
        production.join("kustomization.yaml"),
        kustomization.replace(
            "  - ../../components/kube-prometheus\n",
            "  - ../../components/kube-prometheus-stack\n",
        ),
    )
    .unwrap();
    let objects = manifests::render_dir(&production);
    let selected: Vec<&Value> = of_kind(&objects, "PodMonitor")
        .chain(of_kind(&objects, "PrometheusRule"))
        .collect();
    assert_eq!(selected.len(), 6, "five PodMonitors and the rules");
    for object in selected {
        assert_eq!(
            object["metadata"]["labels"]["release"],
            "kube-prometheus-stack",
            "{} {}",
            kind(object),
            name(object)
        );
    }
    let bindings: Vec<&Value> = of_kind(&objects, "RoleBinding")
        .filter(|b| b["roleRef"]["name"] == "prometheus-discovery")
        .collect();
    assert_eq!(bindings.len(), 1);
    assert_eq!(
        bindings[0]["subjects"],
        json!([{ "kind": "ServiceAccount", "name": "kube-prometheus-stack-prometheus", "namespace": "monitoring" }])
    );
    assert!(
        of_kind(&objects, "ConfigMap").all(|c| c["metadata"]["labels"]["grafana_dashboard"].is_null()),
        "the dashboards are applied to Grafana's namespace, not the Jitsi one"
    );
    std::fs::remove_dir_all(&copy).unwrap();

    // The component's command, run for real into a namespace standing for Grafana's.
    let header = std::fs::read_to_string(
        testbed::repo_root().join("manifests/components/kube-prometheus-stack/kustomization.yaml"),
    )
    .unwrap();
    let command = header
        .lines()
        .find_map(|l| l.trim_start_matches('#').trim().strip_prefix("kubectl "))
        .expect("the component says how to apply the dashboards");
    let cluster = Cluster::connect().await;
    let grafana = cluster.namespace("grafana").await;
    let root = testbed::repo_root();
    let args: Vec<String> = command
        .split_whitespace()
        .map(|word| match word {
            "monitoring" => grafana.name.clone(),
            path if path.starts_with("manifests/") => root.join(path).display().to_string(),
            word => word.to_owned(),
        })
        .collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (ok, stdout, stderr) = kubectl(&args, "");
    assert!(ok, "kubectl {args:?}: {stderr}");
    assert_eq!(stdout.lines().count(), 2, "{stdout}");
    let dashboards = Api::<k8s_openapi::api::core::v1::ConfigMap>::namespaced(cluster.admin(), &grafana.name)
        .list(&ListParams::default().labels("grafana_dashboard=1"))
        .await
        .unwrap();
    assert_eq!(dashboards.items.len(), 2);
    grafana.delete().await;

    // Without the switch, production binds kube-prometheus's Prometheus and keeps the dashboards.
    let default = render_overlay("render-only", PRODUCTION, &[]);
    let binding = named(&default, "RoleBinding", "prometheus-k8s");
    assert_eq!(binding["subjects"][0]["name"], "prometheus-k8s");
    assert_eq!(
        of_kind(&default, "ConfigMap")
            .filter(|c| c["metadata"]["labels"]["grafana_dashboard"] == "1")
            .count(),
        2
    );
}

/// components/gateway-api: the public host routed to HAProxy's HTTP port, the Ingress gone.
#[test]
fn the_gateway_component_routes_the_public_host_to_haproxy_instead_of_the_ingress() {
    let with_ingress = render_overlay("render-only", PRODUCTION, &[]);
    let ingress = named(&with_ingress, "Ingress", "jitsi");
    let objects = render_overlay("render-only", PRODUCTION, &[GATEWAY_API]);
    assert_eq!(
        of_kind(&objects, "Ingress").count(),
        0,
        "the route replaces the Ingress"
    );
    let route = named(&objects, "HTTPRoute", "jitsi");
    assert_eq!(
        route["spec"]["hostnames"],
        json!([ingress["spec"]["rules"][0]["host"]])
    );
    let backend = &route["spec"]["rules"][0]["backendRefs"][0];
    let service = named(&objects, "Service", backend["name"].as_str().unwrap());
    let port = service["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["port"] == backend["port"])
        .expect("the route's port is a port of the Service");
    assert_eq!(port["name"], "http");
    assert_eq!(
        service["spec"]["selector"]["app.kubernetes.io/name"], "haproxy",
        "the route leads to HAProxy, which keeps rooms on their shard"
    );
    assert_eq!(route["spec"]["rules"][0]["timeouts"]["request"], "0s");
}

/// docs/deploying.md's `images:` snippet, pasted into a copy of the production overlay as it says: every
/// daemon of ours comes from the operator's registry at the same tag; Jitsi's and HAProxy's images stay.
#[test]
fn the_images_override_of_docs_deploying_points_every_daemon_at_the_registry() {
    let docs = std::fs::read_to_string(testbed::repo_root().join("docs/deploying.md")).unwrap();
    let snippet = docs
        .split("```yaml\n")
        .skip(1)
        .map(|block| block.split("```").next().unwrap())
        .find(|block| block.starts_with("images:"))
        .expect("docs/deploying.md shows the images: override");
    let copy = manifests::copy_of_manifests("images-override");
    let production = copy.join("manifests/overlays/production");
    let mut kustomization = std::fs::read_to_string(production.join("kustomization.yaml")).unwrap();
    kustomization.push_str(snippet);
    std::fs::write(production.join("kustomization.yaml"), kustomization).unwrap();
    let original = render_overlay("render-only", PRODUCTION, &[]);
    let overridden = manifests::render_dir(&production);
    let images = |objects: &[Value]| -> Vec<String> {
        workloads(objects)
            .flat_map(containers)
            .map(|c| c["image"].as_str().unwrap().to_owned())
            .collect()
    };
    let (before, after) = (images(&original), images(&overridden));
    assert_eq!(before.len(), after.len());
    let mut moved = 0;
    for (before, after) in before.iter().zip(&after) {
        if let Some(daemon) = before.strip_prefix("ghcr.io/jitsi-k8s/") {
            assert_eq!(after, &format!("registry.example.org/jitsi-k8s/{daemon}"));
            moved += 1;
        } else {
            assert_eq!(after, before);
        }
        assert_eq!(image_problem(after), None);
    }
    // service-per-pod, and per shard jvb-startup, jvb-exporter, prosody-exporter.
    assert_eq!(moved, 1 + 2 * 3, "{after:?}");
    std::fs::remove_dir_all(&copy).unwrap();
}

/// components/jvb-load-balancer as its header says (in each shard's folder): the shard's bridges in
/// LoadBalancer mode, advertising the public Service the controller names `<set>-public`, with a token
/// that may get that Service and nothing else — checked by the API server itself.
#[tokio::test]
async fn the_load_balancer_component_lets_each_shards_bridges_read_only_their_public_service() {
    let copy = manifests::copy_of_manifests("jvb-load-balancer");
    let production = copy.join("manifests/overlays/production");
    for shard in ["shard-0", "shard-1"] {
        let path = production.join(shard).join("kustomization.yaml");
        let mut kustomization = std::fs::read_to_string(&path).unwrap();
        kustomization.push_str("components:\n  - ../../../components/jvb-load-balancer\n");
        std::fs::write(&path, kustomization).unwrap();
    }
    let cluster = Cluster::connect().await;
    let namespace = cluster.namespace("manifests-lb").await;
    let mut objects = manifests::render_dir(&production);
    for object in &mut objects {
        if object["metadata"].get("namespace").is_some() {
            object["metadata"]["namespace"] = json!(namespace.name);
        }
        if let Some(subjects) = object.get_mut("subjects").and_then(Value::as_array_mut) {
            for subject in subjects {
                subject["namespace"] = json!(namespace.name);
            }
        }
    }
    assert!(
        of_kind(&objects, "ConfigMap").all(|c| !name(c).ends_with("jvb-public")),
        "the name carrier is kustomize's input only"
    );
    for shard in ["shard-0", "shard-1"] {
        let set = format!("{shard}-jvb");
        let bridges = named(&objects, "StatefulSet", &set);
        assert_eq!(
            bridges["metadata"]["annotations"]["service-per-pod/expose"],
            "LoadBalancer"
        );
        assert_eq!(pod_spec(bridges)["automountServiceAccountToken"], true);
        let jvb = container(bridges, "jvb");
        let names: Vec<&str> = jvb["env"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["name"].as_str().unwrap())
            .collect();
        let position = |n: &str| names.iter().position(|x| *x == n).unwrap();
        assert!(
            position("SHARD") < position("JVB_ADVERTISE_FROM_SERVICE"),
            "$(SHARD) expands only from an earlier variable"
        );
        // The controller's default name for the StatefulSet's public Service is `<set>-public`.
        let advertised = env(jvb, "JVB_ADVERTISE_FROM_SERVICE").unwrap()["value"]
            .as_str()
            .unwrap()
            .replace("$(SHARD)", shard);
        assert_eq!(advertised, format!("{set}-public"));
        let role = named(&objects, "Role", &format!("{shard}-jvb-public-reader"));
        assert_eq!(
            role["rules"],
            json!([{ "apiGroups": [""], "resources": ["services"], "resourceNames": [advertised], "verbs": ["get"] }])
        );
    }

    // The API server's own answer, for the ServiceAccount the bridges run as.
    let rbac: Vec<Value> = objects
        .iter()
        .filter(|o| matches!(kind(o), "ServiceAccount" | "Role" | "RoleBinding"))
        .filter(|o| name(o).starts_with("shard-0-jvb"))
        .cloned()
        .collect();
    manifests::apply(&rbac);
    let account = format!("system:serviceaccount:{}:shard-0-jvb", namespace.name);
    let can = |verb: &str, what: &str| {
        let (_, stdout, _) = kubectl(
            &[
                "auth",
                "can-i",
                verb,
                what,
                "--namespace",
                &namespace.name,
                "--as",
                &account,
            ],
            "",
        );
        stdout.trim() == "yes"
    };
    assert!(can("get", "services/shard-0-jvb-public"));
    assert!(!can("get", "services/shard-1-jvb-public"), "another shard's");
    assert!(!can("get", "services/shard-0-web"));
    assert!(!can("list", "services"));
    assert!(!can("get", "pods"));
    namespace.delete().await;
    std::fs::remove_dir_all(&copy).unwrap();
}

/// docs/deploying.md's "Opening the media ports" is what `testbed::firewall` renders from the production
/// overlay — the shards' blocks, merged — and the TURN relay's NetworkPolicy sends to exactly those blocks.
#[test]
fn the_guides_firewall_commands_and_the_relays_egress_open_exactly_the_shards_blocks() {
    let objects = render_overlay("render-only", PRODUCTION, &[]);
    let blocks = testbed::firewall::blocks(&objects);
    assert_eq!(
        blocks,
        BTreeMap::from([
            ("shard-0".to_owned(), (30300, 30399)),
            ("shard-1".to_owned(), (30400, 30499)),
        ])
    );
    let wanted = testbed::firewall::section(PRODUCTION, &objects);
    let path = testbed::repo_root().join("docs/deploying.md");
    let guide = std::fs::read_to_string(&path).unwrap();
    let start = guide
        .find("<!-- firewall: rendered")
        .expect("the guide's firewall section");
    let end_marker = "<!-- firewall: end -->\n";
    let end = guide[start..].find(end_marker).expect("its end marker") + start + end_marker.len();
    if std::env::var_os("UPDATE_DOCS").is_some() {
        std::fs::write(&path, format!("{}{wanted}{}", &guide[..start], &guide[end..])).unwrap();
        return;
    }
    assert!(
        guide[start..end] == wanted,
        "docs/deploying.md's firewall commands differ from the production overlay's ports \
         (UPDATE_DOCS=1 cargo test -p integration-tests --test manifests firewall rewrites them):\n{wanted}"
    );

    let ranges = testbed::firewall::ranges(&blocks);
    let with_turn = render_overlay("render-only", PRODUCTION, &[TURN]);
    let policy = named(&with_turn, "NetworkPolicy", "turn");
    let egress = &policy["spec"]["egress"][0]["ports"][0];
    assert_eq!(
        (egress["port"].as_u64(), egress["endPort"].as_u64()),
        (Some(u64::from(ranges[0].0)), Some(u64::from(ranges[0].1))),
        "components/turn's relay must reach exactly the production shards' blocks: {ranges:?}"
    );
    assert_eq!(ranges.len(), 1, "one range: the relay's policy carries one");
}

/// The guide's cloud recipes for LoadBalancer mode (GKE, EKS), pasted into a shard folder as it says, render
/// to annotations the controller reads as meant.
#[test]
fn the_guides_load_balancer_recipes_render_to_what_the_controller_reads() {
    use service_per_pod::annotations::{Expose, parse};
    let guide = std::fs::read_to_string(testbed::repo_root().join("docs/deploying.md")).unwrap();
    let recipe = |cloud: &str| -> String {
        let from = guide.find(cloud).unwrap_or_else(|| panic!("no {cloud} recipe"));
        let block = &guide[from..];
        let start = block.find("```yaml\n").unwrap() + "```yaml\n".len();
        let end = block[start..].find("```").unwrap() + start;
        block[start..end]
            .lines()
            .filter(|line| !line.trim_start().starts_with('#'))
            .collect::<Vec<_>>()
            .join("\n")
    };
    for (cloud, class, node_ports, annotation) in [
        ("**Google Cloud (GKE)", None, true, "cloud.google.com/l4-rbs"),
        (
            "**AWS (EKS)",
            Some("service.k8s.aws/nlb"),
            false,
            "service.beta.kubernetes.io/aws-load-balancer-scheme",
        ),
    ] {
        let copy = manifests::copy_of_manifests("lb-recipe");
        let shard = copy.join("manifests/overlays/production/shard-0/kustomization.yaml");
        let mut text = std::fs::read_to_string(&shard).unwrap();
        text.push_str("components:\n  - ../../../components/jvb-load-balancer\n");
        text.push_str(&recipe(cloud));
        text.push('\n');
        std::fs::write(&shard, text).unwrap();
        let objects = manifests::render_dir(&copy.join("manifests/overlays/production"));
        std::fs::remove_dir_all(&copy).unwrap();
        let bridges = named(&objects, "StatefulSet", "shard-0-jvb");
        let annotations: BTreeMap<String, String> =
            serde_json::from_value(bridges["metadata"]["annotations"].clone()).unwrap();
        let opt_in = parse(&annotations)
            .unwrap_or_else(|e| panic!("{cloud}: {e}"))
            .expect("opted in");
        let Expose::LoadBalancer(public) = opt_in.expose else {
            panic!("{cloud}: not LoadBalancer mode")
        };
        assert_eq!(public.class.as_deref(), class, "{cloud}");
        assert_eq!(public.node_ports, node_ports, "{cloud}");
        assert!(
            public.annotations.contains_key(annotation),
            "{cloud}: {:?}",
            public.annotations
        );
    }
    // An NLB has at most 50 listeners (AWS's quota, not adjustable): one per bridge port, so production's
    // shards must stay within it to use the EKS recipe as they are.
    let production = render_overlay("render-only", PRODUCTION, &[]);
    for scaled in of_kind(&production, "ScaledObject") {
        let most = scaled["spec"]["maxReplicaCount"].as_u64().unwrap();
        assert!(
            most <= 50,
            "{}: {most} bridges > an NLB's 50 listeners",
            name(scaled)
        );
    }
}
