//! `cargo xtask bench controller`: service-per-pod at production scale on the local control plane, as it
//! runs in production (its own ServiceAccount, RBAC and flags from `manifests/`):
//! 1. 24 StatefulSets × 100 pods created at once (the whole NodePort range in blocks of 100): per
//!    StatefulSet, created → all its Services; per pod, pod created → Service created;
//! 2. steady state (5 min; every StatefulSet touched once a minute so the controller reconciles): the
//!    API server's own count of Service writes, target 0;
//! 3. churn like an HPA's (5 min): 10 StatefulSets scaled between 1 and 6, then convergence checked.
//!
//! After each phase, the controller's CPU time and memory (RSS, peak).
//!
//! Prints a markdown table. Needs a cluster nothing else uses (counts are cluster-wide). Sizes can be
//! reduced for a try: BENCH_SETS, BENCH_PODS, BENCH_STEADY_SECS, BENCH_CHURN_SECS.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use kube::{Api, ResourceExt};
use serde_json::json;
use testbed::eventually;
use testbed::measure::{apiserver_writes, machine_line, percentile, signed_ms, usage};
use testbed::service_per_pod::{Fixture, statefulset};

fn setting(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// When each object (by UID) was first seen, under its name.
#[derive(Default)]
struct Seen {
    first: HashMap<String, (String, Instant)>,
}

type Shared = Arc<Mutex<Seen>>;

fn record<K>(api: Api<K>) -> Shared
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
{
    let seen: Shared = Arc::default();
    let sink = seen.clone();
    tokio::spawn(async move {
        let mut events = watcher(api, watcher::Config::default()).boxed();
        while let Some(event) = events.next().await {
            if let Ok(watcher::Event::Apply(object) | watcher::Event::InitApply(object)) = event
                && let Ok(mut seen) = sink.lock()
            {
                let uid = object.uid().unwrap_or_default();
                let name = object.name_any();
                seen.first.entry(uid).or_insert_with(|| (name, Instant::now()));
            }
        }
    });
    seen
}

/// First-seen instants by name (the first incarnation of each name).
fn by_name(seen: &Shared) -> HashMap<String, Instant> {
    let seen = seen.lock().expect("seen");
    let mut names: HashMap<String, Instant> = HashMap::new();
    for (name, at) in seen.first.values() {
        names
            .entry(name.clone())
            .and_modify(|first| *first = (*first).min(*at))
            .or_insert(*at);
    }
    names
}

fn delta(after: &HashMap<String, f64>, before: &HashMap<String, f64>, resource: &str) -> f64 {
    after.get(resource).unwrap_or(&0.0) - before.get(resource).unwrap_or(&0.0)
}

/// CPU seconds, RSS and peak RSS (MiB) of the controller.
fn process_usage(pid: u32) -> (f64, f64, f64) {
    let usage = usage(pid).expect("the controller is running");
    (usage.cpu_seconds, usage.rss_mib, usage.peak_rss_mib)
}

#[tokio::main]
async fn main() {
    let sets = setting("BENCH_SETS", 24) as usize;
    let pods_per_set = setting("BENCH_PODS", 100) as usize;
    let steady = Duration::from_secs(setting("BENCH_STEADY_SECS", 300));
    let churn = Duration::from_secs(setting("BENCH_CHURN_SECS", 300));
    let total = sets * pods_per_set;
    assert!(sets * 100 <= 2700, "the NodePort range holds 27 blocks of 100");

    let fx = Fixture::start("spp-bench").await;
    let pid = fx.controller.pid();
    let admin = fx.cluster.admin();
    let pods_seen = record::<Pod>(fx.namespace.api());
    let services_seen = record::<Service>(fx.namespace.api());
    tokio::time::sleep(Duration::from_secs(1)).await;
    let row = |measure: String, value: String| println!("| {measure} | {value} |");

    // 1. Everything at once.
    let writes_0 = apiserver_writes(&admin).await;
    let reconciles_0 = fx.controller.metric("service_per_pod_reconciles_total").await;
    let (cpu_0, _, _) = process_usage(pid);
    let names: Vec<String> = (0..sets).map(|i| format!("jvb-{i:02}")).collect();
    let mut created_at = HashMap::new();
    for (i, name) in names.iter().enumerate() {
        let base = (30000 + 100 * i).to_string();
        created_at.insert(name.clone(), Instant::now());
        fx.sets()
            .create(
                &PostParams::default(),
                &statefulset(name, pods_per_set as i32, &[("service-per-pod/base-port", &base)]),
            )
            .await
            .expect("creating a StatefulSet");
    }
    let started = Instant::now();
    eventually(
        &format!("{total} pods and Services"),
        Duration::from_secs(900),
        || async {
            let pods = by_name(&pods_seen).len();
            let services = by_name(&services_seen).len();
            (pods >= total && services >= total).then_some(())
        },
    )
    .await;
    let converged = started.elapsed();
    let (pods, services) = (by_name(&pods_seen), by_name(&services_seen));
    let mut pod_to_service: Vec<f64> = pods
        .iter()
        .filter_map(|(name, pod)| Some(signed_ms(*pod, *services.get(name)?)))
        .collect();
    pod_to_service.sort_by(f64::total_cmp);
    let mut set_to_all: Vec<f64> = names
        .iter()
        .map(|set| {
            let last = services
                .iter()
                .filter(|(name, _)| name.rsplit_once('-').is_some_and(|(prefix, _)| prefix == set))
                .map(|(_, at)| *at)
                .max()
                .expect("services of the set");
            signed_ms(created_at[set], last)
        })
        .collect();
    set_to_all.sort_by(f64::total_cmp);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let writes_1 = apiserver_writes(&admin).await;
    let reconciles_1 = fx.controller.metric("service_per_pod_reconciles_total").await;
    let (cpu_1, rss_1, peak_1) = process_usage(pid);
    let (created_sum, created_count) = reconcile_durations(&fx.controller).await;

    println!(
        "# service-per-pod benchmark\n\nMachine: {}.\n\
         Local control plane (etcd, kube-apiserver, controller-manager, scheduler v1.36, KWOK nodes); the \
         controller as a release build under its own ServiceAccount and RBAC from `manifests/`. Command: \
         `cargo xtask bench controller`.\n",
        machine_line()
    );
    println!("\n## service-per-pod: {sets} StatefulSets × {pods_per_set} pods on the local control plane\n");
    println!("| measure | value |");
    println!("|---|---|");
    row(
        format!("{sets} StatefulSets created at once → all {total} Services"),
        format!("{:.1} s", converged.as_secs_f64()),
    );
    row(
        "StatefulSet created → all its Services, p50 / max".to_owned(),
        format!(
            "{:.1} s / {:.1} s",
            percentile(&set_to_all, 50.0) / 1000.0,
            percentile(&set_to_all, 100.0) / 1000.0
        ),
    );
    row(
        format!(
            "pod created → its Service, p50 / p99 / max ({} pods)",
            pod_to_service.len()
        ),
        format!(
            "{:.0} ms / {:.0} ms / {:.0} ms",
            percentile(&pod_to_service, 50.0),
            percentile(&pod_to_service, 99.0),
            percentile(&pod_to_service, 100.0)
        ),
    );
    row(
        "Services that existed before their pod (planned from spec.replicas)".to_owned(),
        format!(
            "{} of {}",
            pod_to_service.iter().filter(|d| **d < 0.0).count(),
            pod_to_service.len()
        ),
    );
    let reconciles = reconciles_1 - reconciles_0;
    row(
        "creation: reconciles / Service writes / writes per reconcile".to_owned(),
        format!(
            "{reconciles:.0} / {:.0} / {:.2}",
            delta(&writes_1, &writes_0, "services"),
            delta(&writes_1, &writes_0, "services") / reconciles.max(1.0)
        ),
    );
    row(
        "creation: controller CPU time".to_owned(),
        format!("{:.1} s", cpu_1 - cpu_0),
    );
    row(
        "controller RSS after creation (peak)".to_owned(),
        format!("{rss_1:.1} MiB ({peak_1:.1} MiB)"),
    );

    // 2. Steady state: nothing changes but the StatefulSets' metadata, once a minute each.
    let steady_start = Instant::now();
    let mut touches = 0;
    while steady_start.elapsed() < steady {
        for name in &names {
            touches += 1;
            let patch =
                json!({ "metadata": { "annotations": { "example.com/touch": touches.to_string() } } });
            fx.sets()
                .patch(name, &PatchParams::default(), &Patch::Merge(patch))
                .await
                .expect("touch");
        }
        let rest = Duration::from_secs(60).min(steady.saturating_sub(steady_start.elapsed()));
        tokio::time::sleep(rest).await;
    }
    let writes_2 = apiserver_writes(&admin).await;
    let reconciles_2 = fx.controller.metric("service_per_pod_reconciles_total").await;
    let (cpu_2, rss_2, peak_2) = process_usage(pid);
    // The cost of one reconcile with every pod and Service in place: the steady-state reconciles do
    // nothing but read the caches and compare, so this is the controller's own work per reconcile.
    let (steady_sum, steady_count) = reconcile_durations(&fx.controller).await;
    row(
        format!(
            "steady state {} s: reconciles / Service writes / Event writes",
            steady.as_secs()
        ),
        format!(
            "{:.0} / {:.0} / {:.0}",
            reconciles_2 - reconciles_1,
            delta(&writes_2, &writes_1, "services"),
            delta(&writes_2, &writes_1, "events")
        ),
    );
    row(
        format!(
            "steady state {} s: Lease writes (leader renewals)",
            steady.as_secs()
        ),
        format!("{:.0}", delta(&writes_2, &writes_1, "leases")),
    );
    row(
        format!("steady state {} s: controller CPU time", steady.as_secs()),
        format!("{:.2} s", cpu_2 - cpu_1),
    );
    row(
        format!("steady state, {total} pods and Services in place: time per reconcile (mean)"),
        format!(
            "{:.2} ms",
            (steady_sum - created_sum) / (steady_count - created_count).max(1.0) * 1000.0
        ),
    );
    row(
        "controller RSS after steady state (peak)".to_owned(),
        format!("{rss_2:.1} MiB ({peak_2:.1} MiB)"),
    );

    // 2b. With every pod in place, bridges added one at a time (as an autoscaler grows a shard): the
    // last StatefulSet drops its top 20 pods, then gets them back one by one.
    let grower = names.last().expect("a StatefulSet").clone();
    let top = pods_per_set.min(20);
    let scale = |replicas: usize| {
        let sets = fx.sets();
        let name = grower.clone();
        async move {
            let patch = json!({ "spec": { "replicas": replicas } });
            sets.patch(&name, &PatchParams::default(), &Patch::Merge(patch))
                .await
                .expect("scale");
        }
    };
    scale(pods_per_set - top).await;
    let services_api: Api<Service> = fx.namespace.api();
    eventually(
        "the top pods and Services gone",
        Duration::from_secs(120),
        || async {
            let pods_api: Api<Pod> = fx.namespace.api();
            for ordinal in pods_per_set - top..pods_per_set {
                let name = format!("{grower}-{ordinal}");
                if services_api.get_opt(&name).await.ok()?.is_some()
                    || pods_api.get_opt(&name).await.ok()?.is_some()
                {
                    return None;
                }
            }
            Some(())
        },
    )
    .await;
    let mut one_at_a_time: Vec<f64> = Vec::new();
    for replicas in pods_per_set - top + 1..=pods_per_set {
        let name = format!("{grower}-{}", replicas - 1);
        let asked = Instant::now();
        scale(replicas).await;
        // The newest incarnation of the pod and of its Service (both were there before the scale-down).
        let (pod, service) = eventually(
            &format!("pod and Service {name}"),
            Duration::from_secs(60),
            || async {
                let newest = |seen: &Shared| {
                    seen.lock()
                        .ok()?
                        .first
                        .values()
                        .filter(|(n, at)| *n == name && *at >= asked)
                        .map(|(_, at)| *at)
                        .max()
                };
                Some((newest(&pods_seen)?, newest(&services_seen)?))
            },
        )
        .await;
        one_at_a_time.push(signed_ms(pod, service));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    one_at_a_time.sort_by(f64::total_cmp);
    row(
        format!("{total} pods in place, {top} bridges added one at a time: pod → Service p50 / p99 / max"),
        format!(
            "{:.1} ms / {:.1} ms / {:.1} ms",
            percentile(&one_at_a_time, 50.0),
            percentile(&one_at_a_time, 99.0),
            percentile(&one_at_a_time, 100.0)
        ),
    );
    let writes_2 = apiserver_writes(&admin).await;
    let reconciles_2 = fx.controller.metric("service_per_pod_reconciles_total").await;
    let (cpu_2, _, _) = process_usage(pid);

    // 3. Churn: 10 StatefulSets scaled between 1 and 6, like an HPA, every few seconds.
    let churned: Vec<String> = names.iter().take(10).cloned().collect();
    let churn_start = Instant::now();
    let mut step: u64 = 0;
    let mut scale_ops = 0;
    let mut last: HashMap<String, i32> = HashMap::new();
    while churn_start.elapsed() < churn {
        for (i, name) in churned.iter().enumerate() {
            step += 1;
            // A deterministic walk over 1..=6 (no RNG crate needed): different per set and step.
            let replicas = 1 + ((step * 7 + i as u64 * 13 + step / 5) % 6) as i32;
            last.insert(name.clone(), replicas);
            let patch = json!({ "spec": { "replicas": replicas } });
            fx.sets()
                .patch(name, &PatchParams::default(), &Patch::Merge(patch))
                .await
                .expect("scale");
            scale_ops += 1;
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    let pods_api: Api<Pod> = fx.namespace.api();
    let settle = Instant::now();
    eventually(
        "the churned StatefulSets to converge",
        Duration::from_secs(300),
        || async {
            let services: HashSet<String> = services_api
                .list(&Default::default())
                .await
                .ok()?
                .items
                .iter()
                .map(ResourceExt::name_any)
                .collect();
            let pods: HashSet<String> = pods_api
                .list(&Default::default())
                .await
                .ok()?
                .items
                .iter()
                .map(ResourceExt::name_any)
                .collect();
            for name in &churned {
                let replicas = last[name] as usize;
                for ordinal in 0..pods_per_set {
                    let object = format!("{name}-{ordinal}");
                    let wanted = ordinal < replicas || pods.contains(&object);
                    if services.contains(&object) != wanted {
                        return None;
                    }
                }
            }
            Some(())
        },
    )
    .await;
    let settled = settle.elapsed();
    let writes_3 = apiserver_writes(&admin).await;
    let reconciles_3 = fx.controller.metric("service_per_pod_reconciles_total").await;
    let (cpu_3, rss_3, peak_3) = process_usage(pid);
    row(
        format!(
            "churn {} s: scale operations on 10 StatefulSets (1..6 replicas)",
            churn.as_secs()
        ),
        format!("{scale_ops}"),
    );
    row(
        "churn: reconciles / Service writes / writes per reconcile".to_owned(),
        format!(
            "{:.0} / {:.0} / {:.2}",
            reconciles_3 - reconciles_2,
            delta(&writes_3, &writes_2, "services"),
            delta(&writes_3, &writes_2, "services") / (reconciles_3 - reconciles_2).max(1.0)
        ),
    );
    row(
        "churn: converged after the last scale operation".to_owned(),
        format!("{:.1} s", settled.as_secs_f64()),
    );
    row(
        format!("churn {} s: controller CPU time", churn.as_secs()),
        format!("{:.1} s", cpu_3 - cpu_2),
    );
    row(
        "controller RSS at the end (peak over the run)".to_owned(),
        format!("{rss_3:.1} MiB ({peak_3:.1} MiB)"),
    );
    fx.namespace.delete().await;
    if let Ok(note) = std::env::var("BENCH_METACONTROLLER_NOTE") {
        println!("\n## The approach we replace: metacontroller\n\n{note}");
    }
}

/// The controller's reconcile-duration histogram so far: (sum of seconds, count).
async fn reconcile_durations(controller: &testbed::daemon::Daemon) -> (f64, f64) {
    (
        controller
            .metric("service_per_pod_reconcile_duration_seconds_sum")
            .await,
        controller
            .metric("service_per_pod_reconcile_duration_seconds_count")
            .await,
    )
}
