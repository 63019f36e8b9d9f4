//! `service-per-pod/expose: LoadBalancer` on the real API server: one Service `<set>-public` of type
//! LoadBalancer without selector, a port `base + i` per wanted ordinal (named after it), and one
//! EndpointSlice per pod whose conditions follow the pod — through scaling, a drain, a switch of modes,
//! and a foreign Service of that name.

// Test code: a failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, ResourceExt};
use serde_json::{Value, json};
use testbed::eventually;
use testbed::service_per_pod::{Fixture, service_writes, statefulset_annotating_pods};

const SECOND: Duration = Duration::from_secs(1);
const BASE_PORT: &str = "service-per-pod/base-port";
const EXPOSE: &str = "service-per-pod/expose";

/// One EndpointSlice as the test sees it: its endpoint's IP, its ports (name, number), its conditions.
type Slice = (String, Vec<(String, i32)>, Value);

/// The public Service's ports as (name, port, nodePort), and its slices by name.
#[derive(Debug, PartialEq)]
struct Exposed {
    ports: Vec<(String, i32, Option<i32>)>,
    slices: BTreeMap<String, Slice>,
}

async fn exposed(fx: &Fixture, service: &str) -> Option<Exposed> {
    let found = fx.services().get_opt(service).await.ok()??;
    let spec = found.spec.as_ref()?;
    assert_eq!(spec.type_.as_deref(), Some("LoadBalancer"));
    assert_eq!(spec.external_traffic_policy.as_deref(), Some("Cluster"));
    assert!(
        spec.selector.as_ref().is_none_or(BTreeMap::is_empty),
        "no selector"
    );
    let ports = spec
        .ports
        .iter()
        .flatten()
        .map(|p| (p.name.clone().unwrap_or_default(), p.port, p.node_port))
        .collect();
    let slices: Api<EndpointSlice> = fx.namespace.api();
    let list = slices
        .list(&ListParams::default().labels(&format!("kubernetes.io/service-name={service}")))
        .await
        .ok()?;
    let slices = list
        .items
        .into_iter()
        .filter_map(|slice| {
            let endpoint = slice.endpoints.as_ref()?.first()?.clone();
            let ports = slice
                .ports
                .iter()
                .flatten()
                .map(|p| (p.name.clone().unwrap_or_default(), p.port.unwrap_or(0)))
                .collect();
            Some((
                slice.name_any(),
                (
                    endpoint.addresses.first()?.clone(),
                    ports,
                    serde_json::to_value(&endpoint.conditions).unwrap(),
                ),
            ))
        })
        .collect();
    Some(Exposed { ports, slices })
}

/// What `count` running pods and `ordinals` should look like: ports base+i named i, a slice per pod.
async fn expect(fx: &Fixture, base: i32, ordinals: &[i32], conditions: &BTreeMap<i32, Value>) -> Exposed {
    let pods: Api<Pod> = fx.namespace.api();
    eventually(
        &format!("jvb-public with ports and slices for {ordinals:?}"),
        30 * SECOND,
        || async {
            let exposed = exposed(fx, "jvb-public").await?;
            let ports: Vec<(String, i32, Option<i32>)> = ordinals
                .iter()
                .map(|i| (i.to_string(), base + i, Some(base + i)))
                .collect();
            if exposed.ports != ports {
                return None;
            }
            let mut slices = BTreeMap::new();
            for i in ordinals {
                let pod = pods.get_opt(&format!("jvb-{i}")).await.ok()??;
                let ip = pod.status.as_ref()?.pod_ip.clone()?;
                let wanted = conditions
                    .get(i)
                    .cloned()
                    .unwrap_or(json!({ "ready": true, "serving": true, "terminating": false }));
                slices.insert(
                    format!("jvb-public-{i}"),
                    (ip, vec![(i.to_string(), base + i)], wanted),
                );
            }
            (exposed.slices == slices).then_some(exposed)
        },
    )
    .await
}

fn load_balanced(base: &str) -> [(&'static str, &str); 2] {
    [(BASE_PORT, base), (EXPOSE, "LoadBalancer")]
}

#[tokio::test]
async fn one_public_service_a_port_and_a_slice_per_pod_and_nothing_written_at_steady_state() {
    let fx = Fixture::start("spp-lb").await;
    let base = fx.namespace.node_port_block().await;
    let base_text = base.to_string();
    fx.create(&statefulset_annotating_pods("jvb", 3, &load_balanced(&base_text)))
        .await;
    expect(&fx, i32::from(base), &[0, 1, 2], &BTreeMap::new()).await;
    fx.wait_for_services(&["jvb-public"], 10 * SECOND).await;

    // Scale up: ports and slices follow; then nothing is written while nothing changes.
    fx.scale("jvb", 5).await;
    expect(&fx, i32::from(base), &[0, 1, 2, 3, 4], &BTreeMap::new()).await;
    tokio::time::sleep(2 * SECOND).await;
    let writes = service_writes(&fx.controller).await;
    let pods: Api<Pod> = fx.namespace.api();
    for round in 0..3 {
        let label = json!({ "metadata": { "labels": { "example.com/round": round.to_string() } } });
        pods.patch("jvb-0", &PatchParams::default(), &Patch::Merge(label))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    tokio::time::sleep(SECOND).await;
    assert_eq!(
        service_writes(&fx.controller).await,
        writes,
        "no writes at steady state"
    );
    fx.namespace.delete().await;
}

#[tokio::test]
async fn a_draining_pod_keeps_its_port_and_a_serving_terminating_slice_until_it_is_gone() {
    let fx = Fixture::start("spp-lb-drain").await;
    let base = fx.namespace.node_port_block().await;
    let base_text = base.to_string();
    fx.create(&statefulset_annotating_pods("jvb", 3, &load_balanced(&base_text)))
        .await;
    let base = i32::from(base);
    expect(&fx, base, &[0, 1, 2], &BTreeMap::new()).await;
    fx.hold_terminating("jvb-2").await;
    fx.scale("jvb", 1).await;
    let draining = BTreeMap::from([(2, json!({ "ready": false, "serving": true, "terminating": true }))]);
    expect(&fx, base, &[0, 2], &draining).await;
    // And it stays that way while the pod drains.
    tokio::time::sleep(2 * SECOND).await;
    expect(&fx, base, &[0, 2], &draining).await;

    fx.release("jvb-2").await;
    expect(&fx, base, &[0], &BTreeMap::new()).await;
    fx.namespace.delete().await;
}

#[tokio::test]
async fn switching_modes_replaces_the_services_and_a_foreign_public_service_is_left_alone() {
    let fx = Fixture::start("spp-lb-switch").await;
    let base = fx.namespace.node_port_block().await;
    let base_text = base.to_string();
    fx.create(&statefulset_annotating_pods("jvb", 2, &[(BASE_PORT, &base_text)]))
        .await;
    fx.wait_until_settled(&["jvb-0", "jvb-1"], 30 * SECOND).await;
    let switch = |mode: &'static str| json!({ "metadata": { "annotations": { EXPOSE: mode } } });
    fx.sets()
        .patch(
            "jvb",
            &PatchParams::default(),
            &Patch::Merge(switch("LoadBalancer")),
        )
        .await
        .unwrap();
    expect(&fx, i32::from(base), &[0, 1], &BTreeMap::new()).await;
    fx.wait_for_services(&["jvb-public"], 30 * SECOND).await;
    fx.sets()
        .patch("jvb", &PatchParams::default(), &Patch::Merge(switch("NodePort")))
        .await
        .unwrap();
    fx.wait_for_services(&["jvb-0", "jvb-1"], 30 * SECOND).await;
    let slices: Api<EndpointSlice> = fx.namespace.api();
    eventually(
        "the public Service's slices gone with it",
        30 * SECOND,
        || async {
            let list = slices
                .list(&ListParams::default().labels("kubernetes.io/service-name=jvb-public"))
                .await
                .ok()?;
            list.items.is_empty().then_some(())
        },
    )
    .await;

    // Someone else's Service of the wanted name: untouched, and one Event says why.
    let foreign = fx.create_foreign_service("other-public").await;
    let other_base = fx.namespace.node_port_block().await.to_string();
    fx.create(&statefulset_annotating_pods(
        "other",
        1,
        &load_balanced(&other_base),
    ))
    .await;
    let message = fx.wait_for_warning("other", "ForeignService").await;
    assert!(message.contains("other-public"), "{message}");
    let after = fx.services().get("other-public").await.unwrap();
    assert_eq!(after.resource_version(), foreign.resource_version());
    fx.namespace.delete().await;
}

/// What adding 10 bridges costs in API writes, in each mode (printed for the record; bounded so a
/// regression fails): NodePort creates a Service per pod and adds the pod as its owner; LoadBalancer
/// patches the one Service and creates a slice per pod.
#[tokio::test]
async fn adding_ten_bridges_costs_a_few_writes_each_in_either_mode() {
    for expose in ["NodePort", "LoadBalancer"] {
        let fx = Fixture::start("spp-lb-cost").await;
        let base = fx.namespace.node_port_block().await;
        let base_text = base.to_string();
        fx.create(&statefulset_annotating_pods(
            "jvb",
            0,
            &[(BASE_PORT, &base_text), (EXPOSE, expose)],
        ))
        .await;
        tokio::time::sleep(SECOND).await;
        let before = service_writes(&fx.controller).await;
        fx.scale("jvb", 10).await;
        let pods: Api<Pod> = fx.namespace.api();
        eventually("10 bridges exposed", 60 * SECOND, || async {
            let running = pods.list(&ListParams::default()).await.ok()?.items.len();
            if running < 10 {
                return None;
            }
            if expose == "NodePort" {
                let services = fx.try_service_map().await?;
                let owned = services.values().all(|s| s.owner_references().len() == 2);
                (services.len() == 10 && owned).then_some(())
            } else {
                let exposed = exposed(&fx, "jvb-public").await?;
                (exposed.ports.len() == 10 && exposed.slices.len() == 10).then_some(())
            }
        })
        .await;
        // Let any late write land before counting.
        tokio::time::sleep(2 * SECOND).await;
        let writes = service_writes(&fx.controller).await - before;
        println!("{expose}: {writes} API writes to add 10 bridges");
        assert!(writes <= 30.0, "{expose}: {writes} writes for 10 bridges");
        fx.namespace.delete().await;
    }
}

/// Port accounting is the same in both modes: a LoadBalancer StatefulSet whose block overlaps one held
/// in NodePort mode gets no port for the contested ordinals (and one PortConflict Event), the others it
/// gets; when the holder lets go, the ports follow without a restart.
#[tokio::test]
async fn a_load_balancer_statefulset_respects_ports_held_in_node_port_mode() {
    let fx = Fixture::start("spp-lb-conflict").await;
    let base = fx.namespace.node_port_block().await;
    let holder_base = base.to_string();
    let contender_base = (base + 2).to_string();
    fx.create(&statefulset_annotating_pods(
        "holder",
        3,
        &[(BASE_PORT, &holder_base)],
    ))
    .await;
    fx.wait_until_settled(&["holder-0", "holder-1", "holder-2"], 30 * SECOND)
        .await;
    fx.create(&statefulset_annotating_pods(
        "jvb",
        3,
        &[(BASE_PORT, &contender_base), (EXPOSE, "LoadBalancer")],
    ))
    .await;
    let message = fx.wait_for_warning("jvb", "PortConflict").await;
    assert!(message.contains("holder"), "{message}");
    let base = i32::from(base);
    let ports = |exposed: &Exposed| exposed.ports.iter().map(|p| p.1).collect::<Vec<_>>();
    let partial = eventually(
        "jvb-public without the contested port, slices for the others",
        30 * SECOND,
        || async {
            let exposed = exposed(&fx, "jvb-public").await?;
            (ports(&exposed) == [base + 3, base + 4] && exposed.slices.len() == 2).then_some(exposed)
        },
    )
    .await;
    assert!(
        !partial.slices.contains_key("jvb-public-0"),
        "no slice for a port it does not have"
    );
    fx.scale("holder", 2).await;
    eventually("the released port taken", 30 * SECOND, || async {
        let exposed = exposed(&fx, "jvb-public").await?;
        (ports(&exposed) == [base + 2, base + 3, base + 4]).then_some(())
    })
    .await;
    fx.namespace.delete().await;
}

const CARRIED: &str = "service-per-pod/public-service-annotations";
const CLASS: &str = "service-per-pod/load-balancer-class";

/// The Service's annotations, class and load balancer status, as the test compares them.
async fn cloud_view(fx: &Fixture) -> (BTreeMap<String, String>, Option<String>, Value) {
    let service = fx.services().get("jvb-public").await.unwrap();
    (
        service.metadata.annotations.clone().unwrap_or_default(),
        service.spec.as_ref().unwrap().load_balancer_class.clone(),
        serde_json::to_value(service.status.as_ref().and_then(|s| s.load_balancer.as_ref())).unwrap(),
    )
}

/// A cloud needs its annotations and `loadBalancerClass` on the public Service (EKS: the AWS Load Balancer
/// Controller's NLB). Carried from the StatefulSet, kept through the controller's repairs; what the cloud
/// writes there itself (its own annotation, the status) is never touched; an annotation the operator drops
/// goes; a class cannot change on an existing Service: kept, with an Event.
#[tokio::test]
async fn the_clouds_annotations_and_class_are_carried_kept_across_repairs_and_never_fought_over() {
    let fx = Fixture::start("spp-lb-cloud").await;
    let base = fx.namespace.node_port_block().await;
    let base_text = base.to_string();
    let carried = json!({
        "service.beta.kubernetes.io/aws-load-balancer-type": "external",
        "service.beta.kubernetes.io/aws-load-balancer-scheme": "internet-facing",
    })
    .to_string();
    let mut annotations = load_balanced(&base_text).to_vec();
    annotations.extend([(CARRIED, carried.as_str()), (CLASS, "service.k8s.aws/nlb")]);
    fx.create(&statefulset_annotating_pods("jvb", 2, &annotations))
        .await;
    expect(&fx, i32::from(base), &[0, 1], &BTreeMap::new()).await;
    let (found, class, _) = cloud_view(&fx).await;
    assert_eq!(
        found["service.beta.kubernetes.io/aws-load-balancer-type"],
        "external"
    );
    assert_eq!(
        found["service.beta.kubernetes.io/aws-load-balancer-scheme"],
        "internet-facing"
    );
    assert_eq!(class.as_deref(), Some("service.k8s.aws/nlb"));

    // The cloud's controller at work: an annotation of its own, and the address.
    let cloud = json!({ "metadata": { "annotations": { "cloud.example/load-balancer-id": "lb-0123" } } });
    fx.services()
        .patch("jvb-public", &PatchParams::default(), &Patch::Merge(cloud))
        .await
        .unwrap();
    let address = json!({ "status": { "loadBalancer": { "ingress": [{ "hostname": "k8s-jitsi-0123.elb.example" }] } } });
    fx.services()
        .patch_status("jvb-public", &PatchParams::default(), &Patch::Merge(address))
        .await
        .unwrap();
    // Repairs: a bridge more (its port patched in), and an operator's hand edit of a carried annotation.
    fx.scale("jvb", 3).await;
    expect(&fx, i32::from(base), &[0, 1, 2], &BTreeMap::new()).await;
    let edit = json!({ "metadata": { "annotations": { "service.beta.kubernetes.io/aws-load-balancer-scheme": "internal" } } });
    fx.services()
        .patch("jvb-public", &PatchParams::default(), &Patch::Merge(edit))
        .await
        .unwrap();
    let (found, class, status) = eventually("the carried annotation restored", 30 * SECOND, || async {
        let view = cloud_view(&fx).await;
        (view.0["service.beta.kubernetes.io/aws-load-balancer-scheme"] == "internet-facing").then_some(view)
    })
    .await;
    assert_eq!(
        found["cloud.example/load-balancer-id"], "lb-0123",
        "the cloud's own annotation kept"
    );
    assert_eq!(class.as_deref(), Some("service.k8s.aws/nlb"));
    assert_eq!(status["ingress"][0]["hostname"], "k8s-jitsi-0123.elb.example");
    // Not fought over: nothing is written while nothing changes.
    tokio::time::sleep(2 * SECOND).await;
    let writes = service_writes(&fx.controller).await;
    tokio::time::sleep(3 * SECOND).await;
    assert_eq!(
        service_writes(&fx.controller).await,
        writes,
        "no writes at steady state"
    );

    // The operator drops one carried annotation: it goes, nothing else does.
    let fewer = json!({ "service.beta.kubernetes.io/aws-load-balancer-type": "external" }).to_string();
    let patch = json!({ "metadata": { "annotations": { CARRIED: fewer } } });
    fx.sets()
        .patch("jvb", &PatchParams::default(), &Patch::Merge(patch))
        .await
        .unwrap();
    let found = eventually("the dropped annotation removed", 30 * SECOND, || async {
        let view = cloud_view(&fx).await;
        (!view
            .0
            .contains_key("service.beta.kubernetes.io/aws-load-balancer-scheme"))
        .then_some(view.0)
    })
    .await;
    assert_eq!(
        found["service.beta.kubernetes.io/aws-load-balancer-type"],
        "external"
    );
    assert_eq!(found["cloud.example/load-balancer-id"], "lb-0123");

    // Another class: the API server would refuse it; the Service keeps its own, and an Event says so.
    let reclass = json!({ "metadata": { "annotations": { CLASS: "example.com/other-lb" } } });
    fx.sets()
        .patch("jvb", &PatchParams::default(), &Patch::Merge(reclass))
        .await
        .unwrap();
    let message = fx.wait_for_warning("jvb", "LoadBalancerClassKept").await;
    println!("Event LoadBalancerClassKept: {message}");
    assert!(
        message.contains("keeps loadBalancerClass service.k8s.aws/nlb"),
        "{message}"
    );
    fx.scale("jvb", 4).await;
    expect(&fx, i32::from(base), &[0, 1, 2, 3], &BTreeMap::new()).await;
    assert_eq!(cloud_view(&fx).await.1.as_deref(), Some("service.k8s.aws/nlb"));

    // Malformed: one Event, the Service as it was.
    let before = fx.services().get("jvb-public").await.unwrap();
    let broken = json!({ "metadata": { "annotations": { CARRIED: "{not json" } } });
    fx.sets()
        .patch("jvb", &PatchParams::default(), &Patch::Merge(broken))
        .await
        .unwrap();
    let message = fx.wait_for_warning("jvb", "InvalidAnnotation").await;
    assert!(message.contains(CARRIED), "{message}");
    tokio::time::sleep(SECOND).await;
    let after = fx.services().get("jvb-public").await.unwrap();
    assert_eq!(after.resource_version(), before.resource_version());
    fx.namespace.delete().await;
}

/// `service-per-pod/node-ports: "false"`: for load balancers that send to pod IPs, the Service takes no
/// node port (`allocateLoadBalancerNodePorts: false`), so its ports may lie above the node-port range;
/// grants still bound them. Switching an existing Service over gives its node ports back.
#[tokio::test]
async fn without_node_ports_the_ports_lie_beyond_the_node_port_range_and_grants_still_apply() {
    let fx = Fixture::start("spp-lb-direct").await;
    let direct = [
        (BASE_PORT, "40000"),
        (EXPOSE, "LoadBalancer"),
        ("service-per-pod/node-ports", "false"),
    ];
    fx.create(&statefulset_annotating_pods("jvb", 3, &direct)).await;
    let service = eventually(
        "jvb-public with 3 ports and no node port",
        30 * SECOND,
        || async {
            let service = fx.services().get_opt("jvb-public").await.ok()??;
            let spec = service.spec.as_ref()?;
            let ports: Vec<(i32, Option<i32>)> = spec
                .ports
                .iter()
                .flatten()
                .map(|p| (p.port, p.node_port))
                .collect();
            (ports == [(40000, None), (40001, None), (40002, None)]).then_some(service)
        },
    )
    .await;
    assert_eq!(
        service.spec.as_ref().unwrap().allocate_load_balancer_node_ports,
        Some(false)
    );
    let slices: Api<EndpointSlice> = fx.namespace.api();
    let list = eventually("a slice per bridge", 30 * SECOND, || async {
        let list = slices
            .list(&ListParams::default().labels("kubernetes.io/service-name=jvb-public"))
            .await
            .ok()?;
        (list.items.len() == 3).then_some(list)
    })
    .await;
    let mut slice_ports: Vec<i32> = list
        .items
        .iter()
        .flat_map(|slice| slice.ports.iter().flatten().filter_map(|p| p.port))
        .collect();
    slice_ports.sort_unstable();
    assert_eq!(slice_ports, [40000, 40001, 40002]);
    fx.namespace.delete().await;

    // With node ports first, then without: the node ports go back to the API server.
    let (fx, blocks) = Fixture::start_granted("spp-lb-direct-switch", 1).await;
    let base_text = blocks[0].to_string();
    fx.create(&statefulset_annotating_pods("jvb", 2, &load_balanced(&base_text)))
        .await;
    expect(&fx, i32::from(blocks[0]), &[0, 1], &BTreeMap::new()).await;
    let switch = json!({ "metadata": { "annotations": { "service-per-pod/node-ports": "false" } } });
    fx.sets()
        .patch("jvb", &PatchParams::default(), &Patch::Merge(switch))
        .await
        .unwrap();
    eventually("the node ports given back", 30 * SECOND, || async {
        let exposed = exposed(&fx, "jvb-public").await?;
        exposed
            .ports
            .iter()
            .all(|(_, _, node_port)| node_port.is_none())
            .then_some(())
    })
    .await;
    // A port beyond what the administrator granted (start_granted grants only its node-port block).
    let beyond = [
        (BASE_PORT, "40000"),
        (EXPOSE, "LoadBalancer"),
        ("service-per-pod/node-ports", "false"),
    ];
    fx.create(&statefulset_annotating_pods("other", 1, &beyond)).await;
    let message = fx.wait_for_warning("other", "PortNotGranted").await;
    assert!(message.contains("40000"), "{message}");
    fx.namespace.delete().await;
}
