//! The overlays users apply: rendered with kustomize, checked for the promises they make, accepted by the
//! real API server (Pod Security "restricted" included) without a warning, and the dev overlay run for real
//! with the service-per-pod controller started from its own manifest.

// Test code: a failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Node, Pod, Service};
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, ResourceExt};
use serde_json::{Value, json};
use testbed::manifests::{self, kind, kubectl, named, of_kind, render_overlay};
use testbed::service_per_pod::start_controller;
use testbed::{Cluster, eventually};

const DEV: &str = "manifests/overlays/dev";
const PRODUCTION: &str = "manifests/overlays/production";
const HPA_STRESS: &str = "manifests/components/hpa-stress";
const BASE_PORT: &str = "service-per-pod/base-port";
const SHARD_LABEL: &str = "jitsi.org/shard";

/// Every overlay as users render it, with the components that go with it.
fn renderings() -> Vec<(&'static str, &'static [&'static str], Vec<Value>)> {
    [
        (DEV, &[][..]),
        (PRODUCTION, &[][..]),
        (PRODUCTION, &[HPA_STRESS][..]),
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

#[test]
fn every_container_is_pinned_sized_and_probed() {
    for (overlay, _, objects) in renderings() {
        for workload in workloads(&objects) {
            for c in containers(workload) {
                let at = format!("{overlay}: {}/{}", name(workload), c["name"]);
                let image = c["image"].as_str().unwrap();
                let tag = image.rsplit_once(':').map(|(_, tag)| tag).unwrap_or_default();
                assert!(
                    !tag.is_empty() && tag != "latest" && !tag.contains('/'),
                    "{at}: image {image} is not pinned by tag"
                );
                let resources = &c["resources"];
                for field in ["/requests/cpu", "/requests/memory", "/limits/memory"] {
                    assert!(resources.pointer(field).is_some(), "{at}: no resources{field}");
                }
                let is_init = pod_spec(workload)["initContainers"]
                    .as_array()
                    .is_some_and(|inits| inits.contains(c));
                if !is_init {
                    for probe in ["readinessProbe", "livenessProbe"] {
                        assert!(c[probe].is_object(), "{at}: no {probe}");
                    }
                }
            }
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

            let hpa = of_kind(&objects, "HorizontalPodAutoscaler")
                .find(|h| h["spec"]["scaleTargetRef"]["name"] == set)
                .unwrap_or_else(|| panic!("{overlay}: no HPA scales {set}"));
            let bounds = (
                hpa["spec"]["minReplicas"].as_u64(),
                hpa["spec"]["maxReplicas"].as_u64(),
            );
            let expected = if overlay == DEV {
                (Some(1), Some(2))
            } else {
                (Some(2), Some(6))
            };
            assert_eq!(bounds, expected, "{overlay}: {set}'s HPA");
        }
        if overlay == PRODUCTION {
            assert_eq!(blocks.len(), 2, "production runs two shards");
            let zones: BTreeMap<&str, &Value> = workloads(&objects)
                .filter_map(|w| {
                    let shard = w["spec"]["template"]["metadata"]["labels"][SHARD_LABEL].as_str()?;
                    Some((shard, &pod_spec(w)["nodeSelector"]["topology.kubernetes.io/zone"]))
                })
                .collect();
            assert_eq!(zones["shard-0"], "zone-a");
            assert_eq!(zones["shard-1"], "zone-b");
            for workload in workloads(&objects) {
                if let Some(shard) = workload["spec"]["template"]["metadata"]["labels"][SHARD_LABEL].as_str()
                {
                    assert_eq!(
                        &pod_spec(workload)["nodeSelector"]["topology.kubernetes.io/zone"],
                        zones[shard],
                        "{overlay}: {} is not pinned to its shard's zone",
                        name(workload)
                    );
                }
            }
        }
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

#[test]
fn the_stress_component_scales_on_the_bridges_stress_at_0_8() {
    let objects = render_overlay("render-only", PRODUCTION, &[HPA_STRESS]);
    for hpa in of_kind(&objects, "HorizontalPodAutoscaler") {
        assert_eq!(
            hpa["spec"]["metrics"],
            json!([{ "type": "Pods", "pods": {
                "metric": { "name": "jitsi_stress_level" },
                "target": { "type": "AverageValue", "averageValue": "800m" } } }])
        );
    }
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
        (PRODUCTION, &[HPA_STRESS][..]),
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

/// docs/deploying.md's procedure, followed literally on a copy of `manifests/`.
#[test]
fn adding_a_shard_as_docs_deploying_says_gives_a_third_wired_shard() {
    let copy = testbed::repo_root().join(format!("target/shard-procedure-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&copy);
    std::fs::create_dir_all(&copy).unwrap();
    let status = std::process::Command::new("cp")
        .args(["-r", "manifests"])
        .arg(&copy)
        .current_dir(testbed::repo_root())
        .status();
    assert!(status.unwrap().success());
    let production = copy.join("manifests/overlays/production");
    // 1. copy the folder; 2. change its name, base port and zone; 3. list it.
    let shard_1 = std::fs::read_to_string(production.join("shard-1/kustomization.yaml")).unwrap();
    assert_eq!(shard_1.matches("shard-1").count(), 2, "the docs say two places");
    let shard_2 = shard_1
        .replace("shard-1", "shard-2")
        .replace("\"30400\"", "\"30500\"")
        .replace("zone-b", "zone-c");
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
    assert_eq!(
        pod_spec(bridges)["nodeSelector"]["topology.kubernetes.io/zone"],
        "zone-c"
    );
    let prosody = named(&objects, "Service", "shard-2-prosody");
    assert_eq!(prosody["spec"]["selector"][SHARD_LABEL], "shard-2");
    named(&objects, "Deployment", "shard-2-web");
    named(&objects, "Deployment", "shard-2-jicofo");
    let hpa = named(&objects, "HorizontalPodAutoscaler", "shard-2-jvb");
    assert_eq!(hpa["spec"]["scaleTargetRef"]["name"], "shard-2-jvb");
    assert_eq!(
        of_kind(&objects, "StatefulSet")
            .filter(|s| name(s).ends_with("-jvb"))
            .count(),
        3
    );
    std::fs::remove_dir_all(&copy).unwrap();
}

/// The room census is on Prosody's HTTP port: only the shard's own pods may reach it.
#[test]
fn each_prosody_admits_its_own_shard_only() {
    let objects = render_overlay("render-only", PRODUCTION, &[]);
    for shard in ["shard-0", "shard-1"] {
        let policy = named(&objects, "NetworkPolicy", &format!("{shard}-prosody"));
        let prosody = named(&objects, "Deployment", &format!("{shard}-prosody"));
        let selects = |selector: &Value, labels: &Value| {
            selector["matchLabels"]
                .as_object()
                .unwrap()
                .iter()
                .all(|(key, value)| &labels[key] == value)
        };
        assert!(selects(
            &policy["spec"]["podSelector"],
            &prosody["spec"]["template"]["metadata"]["labels"]
        ));
        let from = &policy["spec"]["ingress"][0]["from"][0]["podSelector"];
        assert_eq!(from["matchLabels"][SHARD_LABEL], shard);
        // Every pod of the shard is admitted, no pod of another shard is.
        for workload in workloads(&objects) {
            let labels = &workload["spec"]["template"]["metadata"]["labels"];
            let same_shard = labels[SHARD_LABEL] == shard;
            assert_eq!(selects(from, labels), same_shard, "{}", name(workload));
        }
        assert_eq!(
            policy["spec"]["ingress"][1]["ports"],
            json!([{ "port": "metrics", "protocol": "TCP" }])
        );
    }
}
