//! Measures service-per-pod on the local control plane, as it runs in production (its own
//! ServiceAccount, RBAC and flags from `manifests/`):
//! - pod created → Service created, per pod, for a StatefulSet of 100 pods created at once, then for
//!   20 pods added one at a time (as an autoscaler does);
//! - the write requests the API server counted (its own `apiserver_request_total`) while nothing
//!   changes for 60 s, except touches of the StatefulSet that make the controller reconcile.
//!
//! Run alone against a cluster nothing else uses (its counts are cluster-wide):
//! `cargo xtask cluster up && cargo build --release --bins && KUBECONFIG=target/local-cluster/kubeconfig \
//!  JITSI_K8S_DAEMON_PROFILE=release cargo run --release -p integration-tests --example controller_latency`

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use integration_tests::eventually;
use integration_tests::measure::{apiserver_writes, percentile, signed_ms};
use integration_tests::service_per_pod::{Fixture, statefulset};
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use kube::{Api, ResourceExt};
use serde_json::json;

const PODS: usize = 100;
const STEADY: Duration = Duration::from_secs(60);
const SCALE_UPS: usize = 20;

type FirstSeen = Arc<Mutex<HashMap<String, Instant>>>;

fn record_first_seen<K>(api: Api<K>) -> FirstSeen
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
{
    let seen: FirstSeen = Arc::default();
    let sink = seen.clone();
    tokio::spawn(async move {
        let mut events = watcher(api, watcher::Config::default()).boxed();
        while let Some(event) = events.next().await {
            if let Ok(watcher::Event::Apply(object) | watcher::Event::InitApply(object)) = event
                && let Ok(mut seen) = sink.lock()
            {
                seen.entry(object.name_any()).or_insert_with(Instant::now);
            }
        }
    });
    seen
}

#[tokio::main]
async fn main() {
    let fx = Fixture::start("spp-measure").await;
    let pods_seen = record_first_seen::<Pod>(fx.namespace.api());
    let services_seen = record_first_seen::<Service>(fx.namespace.api());
    tokio::time::sleep(Duration::from_secs(1)).await;

    let created = Instant::now();
    fx.sets()
        .create(
            &PostParams::default(),
            &statefulset("jvb", PODS as i32, &[("service-per-pod/base-port", "31100")]),
        )
        .await
        .expect("creating the StatefulSet");
    let all_services = eventually("100 Services", Duration::from_secs(120), || async {
        let count = services_seen.lock().ok()?.len();
        (count == PODS).then(|| created.elapsed())
    })
    .await;
    eventually("100 pods", Duration::from_secs(120), || async {
        (pods_seen.lock().ok()?.len() == PODS).then_some(())
    })
    .await;

    let (pods, services) = (
        pods_seen.lock().expect("pods").clone(),
        services_seen.lock().expect("services").clone(),
    );
    let mut deltas_ms: Vec<f64> = (0..PODS)
        .map(|i| {
            let name = format!("jvb-{i}");
            signed_ms(pods[&name], services[&name])
        })
        .collect();
    deltas_ms.sort_by(f64::total_cmp);
    let before_pod = deltas_ms.iter().filter(|d| **d < 0.0).count();

    // Steady state: converged; the StatefulSet is touched every 5 s, so the controller reconciles.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let admin = fx.cluster.admin();
    let writes_before = apiserver_writes(&admin).await;
    let reconciles_before = fx.controller.metric("service_per_pod_reconciles_total").await;
    let steady_start = Instant::now();
    let mut touch = 0;
    while steady_start.elapsed() < STEADY {
        touch += 1;
        let patch = json!({ "metadata": { "annotations": { "example.com/touch": touch.to_string() } } });
        fx.sets()
            .patch("jvb", &PatchParams::default(), &Patch::Merge(patch))
            .await
            .expect("touch");
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    let writes_after = apiserver_writes(&admin).await;

    // As an autoscaler grows a shard: one bridge at a time.
    let mut one_at_a_time_ms = Vec::new();
    for replicas in PODS + 1..=PODS + SCALE_UPS {
        let patch = json!({ "spec": { "replicas": replicas } });
        fx.sets()
            .patch("jvb", &PatchParams::default(), &Patch::Merge(patch))
            .await
            .expect("scale up");
        let name = format!("jvb-{}", replicas - 1);
        let (pod, service) = eventually(
            &format!("pod and Service {name}"),
            Duration::from_secs(30),
            || async {
                let pod = *pods_seen.lock().ok()?.get(&name)?;
                let service = *services_seen.lock().ok()?.get(&name)?;
                Some((pod, service))
            },
        )
        .await;
        one_at_a_time_ms.push(signed_ms(pod, service));
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    one_at_a_time_ms.sort_by(f64::total_cmp);
    let reconciles = fx.controller.metric("service_per_pod_reconciles_total").await - reconciles_before;
    let delta = |resource: &str| {
        writes_after.get(resource).unwrap_or(&0.0) - writes_before.get(resource).unwrap_or(&0.0)
    };

    println!("## service-per-pod on the local control plane ({PODS} pods, one StatefulSet)\n");
    println!("| measure | value |");
    println!("|---|---|");
    println!(
        "| StatefulSet created → all {PODS} Services present | {:.0} ms |",
        all_services.as_secs_f64() * 1000.0
    );
    println!(
        "| all {PODS} at once: pod → Service, p50 | {:.1} ms |",
        percentile(&deltas_ms, 50.0)
    );
    println!(
        "| all {PODS} at once: pod → Service, p99 | {:.1} ms |",
        percentile(&deltas_ms, 99.0)
    );
    println!(
        "| all {PODS} at once: pod → Service, max | {:.1} ms |",
        deltas_ms[PODS - 1]
    );
    println!("| Services that existed before their pod | {before_pod} of {PODS} |");
    println!(
        "| one pod at a time ({SCALE_UPS} scale-ups): pod → Service, p50 | {:.1} ms |",
        percentile(&one_at_a_time_ms, 50.0)
    );
    println!(
        "| one pod at a time ({SCALE_UPS} scale-ups): pod → Service, p99 | {:.1} ms |",
        percentile(&one_at_a_time_ms, 99.0)
    );
    println!(
        "| steady state {}s: reconciles run | {reconciles:.0} |",
        STEADY.as_secs()
    );
    println!(
        "| steady state {}s: Service writes (apiserver_request_total) | {:.0} |",
        STEADY.as_secs(),
        delta("services")
    );
    println!(
        "| steady state {}s: Event writes | {:.0} |",
        STEADY.as_secs(),
        delta("events")
    );
    println!(
        "| steady state {}s: Lease writes (leader election renewals) | {:.0} |",
        STEADY.as_secs(),
        delta("leases")
    );
    println!("\n(negative latencies: the Service was created from spec.replicas before the pod existed)");
    fx.namespace.delete().await;
}
