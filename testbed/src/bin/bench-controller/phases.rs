//! The phases every subject goes through, and what each yields.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, ResourceExt};
use serde_json::json;
use testbed::eventually;
use testbed::measure::{apiserver_writes, percentile, signed_ms, usage};
use testbed::service_per_pod::{hold_terminating, release};

use crate::Sizes;
use crate::subject::{Running, create_services, floor_service};

/// The warm-up (and correctness) StatefulSet: 3 bridges above every block the bulk phase uses.
const HOLD: &str = "hold";
const HOLD_BASE: u16 = 32700;
/// Bridges added one at a time in phase 4.
const ONE_BY_ONE: usize = 20;
/// API server restarts in the restarts phase.
const RESTARTS: usize = 5;

/// p50, p99 and max of a sample, in milliseconds.
#[derive(Clone, Copy, Debug)]
pub struct Spread {
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

impl Spread {
    fn of(mut sample: Vec<f64>) -> Self {
        sample.sort_by(f64::total_cmp);
        Self {
            p50: percentile(&sample, 50.0),
            p99: percentile(&sample, 99.0),
            max: percentile(&sample, 100.0),
        }
    }
}

/// Writes the API server counted at steady state, by resource.
#[derive(Clone, Copy, Debug, Default)]
pub struct SteadyWrites {
    pub services: f64,
    /// Beyond the benchmark's own touches.
    pub statefulsets: f64,
    pub events: f64,
    pub leases: f64,
}

/// CPU seconds and peak RSS (MiB) of a process.
#[derive(Clone, Copy, Debug, Default)]
pub struct Cost {
    pub cpu_seconds: f64,
    pub peak_rss_mib: f64,
}

#[derive(Clone, Debug, Default)]
pub struct Figures {
    pub bulk_seconds: f64,
    pub set_to_all: Option<Spread>,
    /// None for the floor: its Services do not follow pods.
    pub bulk_pod_to_service: Option<Spread>,
    pub bulk_service_writes: f64,
    pub bulk_cpu_seconds: Option<f64>,
    pub steady: Option<SteadyWrites>,
    pub steady_cpu_seconds: Option<f64>,
    pub scale_to_service: Option<Spread>,
    pub one_by_one_pod_to_service: Option<Spread>,
    /// The API server killed and started again, then a bridge added: its Service after /readyz.
    pub restart_to_service: Option<Spread>,
    /// What became of a Terminating bridge's Service at scale-down.
    pub drain: Option<String>,
    /// Whether a StatefulSet can be deleted while the controller is down.
    pub deleted_while_down: Option<String>,
    pub controller: Option<Cost>,
    /// The controller's peak RSS before the restarts phase (bulk, steady state, one by one).
    pub rss_before_restarts: Option<f64>,
    pub hooks: Option<Cost>,
}

/// The median of a sample (the lower middle of an even one).
fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values
        .get(values.len().saturating_sub(1) / 2)
        .copied()
        .unwrap_or(f64::NAN)
}

fn median_of<T>(
    runs: &[Figures],
    pick: impl Fn(&Figures) -> Option<T>,
    fold: impl Fn(Vec<T>) -> T,
) -> Option<T> {
    let values: Vec<T> = runs.iter().filter_map(pick).collect();
    (!values.is_empty()).then(|| fold(values))
}

fn median_spread(values: Vec<Spread>) -> Spread {
    Spread {
        p50: median(values.iter().map(|s| s.p50).collect()),
        p99: median(values.iter().map(|s| s.p99).collect()),
        max: median(values.iter().map(|s| s.max).collect()),
    }
}

impl Figures {
    /// Each figure's median over several runs of one column; the verdicts of the correctness checks are
    /// those of every run, when they differ.
    pub fn median(runs: &[Figures]) -> Figures {
        let number = |pick: fn(&Figures) -> f64| median(runs.iter().map(pick).collect());
        let spread = |pick: fn(&Figures) -> Option<Spread>| median_of(runs, pick, median_spread);
        let optional = |pick: fn(&Figures) -> Option<f64>| median_of(runs, pick, median);
        let verdict = |pick: fn(&Figures) -> Option<String>| {
            let mut all: Vec<String> = runs.iter().filter_map(pick).collect();
            all.dedup();
            (!all.is_empty()).then(|| all.join(" / "))
        };
        let cost = |pick: fn(&Figures) -> Option<Cost>| {
            median_of(runs, pick, |costs| Cost {
                cpu_seconds: median(costs.iter().map(|c| c.cpu_seconds).collect()),
                peak_rss_mib: median(costs.iter().map(|c| c.peak_rss_mib).collect()),
            })
        };
        Figures {
            bulk_seconds: number(|f| f.bulk_seconds),
            set_to_all: spread(|f| f.set_to_all),
            bulk_pod_to_service: spread(|f| f.bulk_pod_to_service),
            bulk_service_writes: number(|f| f.bulk_service_writes),
            bulk_cpu_seconds: optional(|f| f.bulk_cpu_seconds),
            steady: median_of(
                runs,
                |f| f.steady,
                |all| SteadyWrites {
                    services: median(all.iter().map(|w| w.services).collect()),
                    statefulsets: median(all.iter().map(|w| w.statefulsets).collect()),
                    events: median(all.iter().map(|w| w.events).collect()),
                    leases: median(all.iter().map(|w| w.leases).collect()),
                },
            ),
            steady_cpu_seconds: optional(|f| f.steady_cpu_seconds),
            scale_to_service: spread(|f| f.scale_to_service),
            one_by_one_pod_to_service: spread(|f| f.one_by_one_pod_to_service),
            restart_to_service: spread(|f| f.restart_to_service),
            drain: verdict(|f| f.drain.clone()),
            deleted_while_down: verdict(|f| f.deleted_while_down.clone()),
            controller: cost(|f| f.controller),
            rss_before_restarts: optional(|f| f.rss_before_restarts),
            hooks: cost(|f| f.hooks),
        }
    }
}

/// When each object (by UID) was first seen, under its name.
type Seen = Arc<Mutex<HashMap<String, (String, Instant)>>>;

fn record<K>(api: Api<K>) -> Seen
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
{
    let seen: Seen = Arc::default();
    let sink = seen.clone();
    tokio::spawn(async move {
        // Backed off: the restarts phase takes the API server away.
        let mut events = watcher(api, watcher::Config::default()).default_backoff().boxed();
        while let Some(event) = events.next().await {
            if let Ok(watcher::Event::Apply(object) | watcher::Event::InitApply(object)) = event
                && let Ok(mut seen) = sink.lock()
            {
                let uid = object.uid().unwrap_or_default();
                seen.entry(uid)
                    .or_insert_with(|| (object.name_any(), Instant::now()));
            }
        }
    });
    seen
}

/// First-seen instants by name (the first incarnation of each name).
fn by_name(seen: &Seen) -> HashMap<String, Instant> {
    let seen = seen.lock().expect("seen");
    let mut names: HashMap<String, Instant> = HashMap::new();
    for (name, at) in seen.values() {
        names
            .entry(name.clone())
            .and_modify(|first| *first = (*first).min(*at))
            .or_insert(*at);
    }
    names
}

/// The newest incarnation of `name` first seen at or after `since`.
fn seen_since(seen: &Seen, name: &str, since: Instant) -> Option<Instant> {
    seen.lock()
        .ok()?
        .values()
        .filter(|(n, at)| n == name && *at >= since)
        .map(|(_, at)| *at)
        .max()
}

fn delta(after: &HashMap<String, f64>, before: &HashMap<String, f64>, resource: &str) -> f64 {
    after.get(resource).unwrap_or(&0.0) - before.get(resource).unwrap_or(&0.0)
}

fn cost(process: Option<&testbed::daemon::Daemon>) -> Option<Cost> {
    let usage = usage(process?.pid())?;
    Some(Cost {
        cpu_seconds: usage.cpu_seconds,
        peak_rss_mib: usage.peak_rss_mib,
    })
}

fn cpu(run: &Running) -> Option<f64> {
    cost(run.controller.as_ref()).map(|c| c.cpu_seconds)
}

async fn scale(run: &Running, name: &str, replicas: usize) {
    let patch = json!({ "spec": { "replicas": replicas } });
    run.sets()
        .patch(name, &PatchParams::default(), &Patch::Merge(patch))
        .await
        .unwrap_or_else(|e| panic!("scaling {name}: {e}"));
}

pub async fn measure(run: &mut Running, sizes: Sizes) -> Figures {
    let admin = run.cluster.admin();
    let pods_seen = record::<Pod>(run.namespace.api());
    let services_seen = record::<Service>(run.namespace.api());
    let mut figures = Figures::default();

    // 1. Warm-up: the controller is live once `hold` has its Services.
    run.sets()
        .create(&PostParams::default(), &run.kind.statefulset(HOLD, 3, HOLD_BASE))
        .await
        .expect("creating the warm-up StatefulSet");
    if !run.kind.has_controller() {
        let services = (0..3).map(|i| floor_service(HOLD, i, HOLD_BASE)).collect();
        create_services(&run.services(), services, 3).await;
    }
    eventually("the warm-up Services", Duration::from_secs(180), || async {
        let names = by_name(&services_seen);
        (0..3)
            .all(|i| names.contains_key(&format!("{HOLD}-{i}")))
            .then_some(())
    })
    .await;
    eprintln!("    warm-up done");

    // 2. Bulk: every StatefulSet at once.
    let total = sizes.sets * sizes.pods;
    let writes_0 = apiserver_writes(&admin).await;
    let cpu_0 = cpu(run);
    let names: Vec<String> = (0..sizes.sets).map(|i| format!("jvb-{i:02}")).collect();
    let base = |i: usize| 30000 + 100 * i as u16;
    let mut created_at = HashMap::new();
    let started = Instant::now();
    let create_sets = async {
        for (i, name) in names.iter().enumerate() {
            created_at.insert(name.clone(), Instant::now());
            run.sets()
                .create(
                    &PostParams::default(),
                    &run.kind.statefulset(name, sizes.pods as i32, base(i)),
                )
                .await
                .expect("creating a StatefulSet");
        }
    };
    if run.kind.has_controller() {
        create_sets.await;
    } else {
        let services = names
            .iter()
            .enumerate()
            .flat_map(|(i, name)| (0..sizes.pods).map(move |ordinal| floor_service(name, ordinal, base(i))))
            .collect();
        let services_api = run.services();
        tokio::join!(create_sets, create_services(&services_api, services, 32));
    }
    let timeout = Duration::from_secs(1800);
    eventually(&format!("{total} pods and Services"), timeout, || async {
        let (pods, services) = (by_name(&pods_seen).len(), by_name(&services_seen).len());
        (pods >= total + 3 && services >= total + 3).then_some(())
    })
    .await;
    figures.bulk_seconds = started.elapsed().as_secs_f64();
    let (pods, services) = (by_name(&pods_seen), by_name(&services_seen));
    let in_bulk = |name: &&String| !name.starts_with(HOLD);
    if run.kind.has_controller() {
        figures.bulk_pod_to_service = Some(Spread::of(
            pods.iter()
                .filter(|(name, _)| in_bulk(name))
                .filter_map(|(name, pod)| Some(signed_ms(*pod, *services.get(name)?)))
                .collect(),
        ));
    }
    figures.set_to_all = Some(Spread::of(
        names
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
            .collect(),
    ));
    tokio::time::sleep(Duration::from_secs(3)).await;
    let writes_1 = apiserver_writes(&admin).await;
    figures.bulk_service_writes = delta(&writes_1, &writes_0, "services");
    let cpu_1 = cpu(run);
    figures.bulk_cpu_seconds = cpu_1.zip(cpu_0).map(|(after, before)| after - before);
    eprintln!("    bulk: {:.1} s", figures.bulk_seconds);

    // 3. Steady state: nothing changes but the StatefulSets' metadata, once a minute each.
    if run.kind.has_controller() {
        let steady_start = Instant::now();
        let mut touches = 0.0;
        while steady_start.elapsed() < sizes.steady {
            for name in &names {
                touches += 1.0;
                let patch =
                    json!({ "metadata": { "annotations": { "example.com/touch": touches.to_string() } } });
                run.sets()
                    .patch(name, &PatchParams::default(), &Patch::Merge(patch))
                    .await
                    .expect("touch");
            }
            let rest = Duration::from_secs(60).min(sizes.steady.saturating_sub(steady_start.elapsed()));
            tokio::time::sleep(rest).await;
        }
        let writes_2 = apiserver_writes(&admin).await;
        figures.steady = Some(SteadyWrites {
            services: delta(&writes_2, &writes_1, "services"),
            statefulsets: delta(&writes_2, &writes_1, "statefulsets") - touches,
            events: delta(&writes_2, &writes_1, "events"),
            leases: delta(&writes_2, &writes_1, "leases"),
        });
        figures.steady_cpu_seconds = cpu(run).zip(cpu_1).map(|(after, before)| after - before);
        eprintln!("    steady state done");
    }

    // 4. With every pod in place, bridges added one at a time (as an autoscaler grows a shard): the
    // last StatefulSet drops its top 20 pods, then gets them back one by one.
    let grower = names.last().expect("a StatefulSet").clone();
    let grower_base = base(names.len() - 1);
    let top = sizes.pods.min(ONE_BY_ONE);
    scale(run, &grower, sizes.pods - top).await;
    if !run.kind.has_controller() {
        for ordinal in sizes.pods - top..sizes.pods {
            let _ = run
                .services()
                .delete(&format!("{grower}-{ordinal}"), &DeleteParams::default())
                .await;
        }
    }
    let pods_api: Api<Pod> = run.namespace.api();
    eventually(
        "the top pods and Services gone",
        Duration::from_secs(300),
        || async {
            for ordinal in sizes.pods - top..sizes.pods {
                let name = format!("{grower}-{ordinal}");
                if run.services().get_opt(&name).await.ok()?.is_some()
                    || pods_api.get_opt(&name).await.ok()?.is_some()
                {
                    return None;
                }
            }
            Some(())
        },
    )
    .await;
    let mut scale_to_service = Vec::new();
    let mut pod_to_service = Vec::new();
    for replicas in sizes.pods - top + 1..=sizes.pods {
        let ordinal = replicas - 1;
        let name = format!("{grower}-{ordinal}");
        let asked = Instant::now();
        scale(run, &grower, replicas).await;
        if !run.kind.has_controller() {
            create_services(
                &run.services(),
                vec![floor_service(&grower, ordinal, grower_base)],
                1,
            )
            .await;
        }
        let (pod, service) = eventually(
            &format!("pod and Service {name}"),
            Duration::from_secs(120),
            || async {
                Some((
                    seen_since(&pods_seen, &name, asked)?,
                    seen_since(&services_seen, &name, asked)?,
                ))
            },
        )
        .await;
        scale_to_service.push(signed_ms(asked, service));
        pod_to_service.push(signed_ms(pod, service));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    figures.scale_to_service = Some(Spread::of(scale_to_service));
    if run.kind.has_controller() {
        figures.one_by_one_pod_to_service = Some(Spread::of(pod_to_service));
    }
    eprintln!("    one at a time done");

    // 4b. Restarts: the API server killed and started again, then a bridge added to `hold` — how soon
    // after the API server is ready again is it served.
    if run.kind.has_controller() {
        figures.rss_before_restarts = cost(run.controller.as_ref()).map(|c| c.peak_rss_mib);
        figures.restart_to_service = Some(restarts(run, &services_seen).await);
        eprintln!("    restarts done");
    }

    // 5. Correctness: a draining bridge at scale-down, and a StatefulSet deleted with its controller down.
    if run.kind.has_controller() {
        figures.drain = Some(drain(run).await);
        figures.controller = cost(run.controller.as_ref());
        figures.hooks = cost(run.hooks.as_ref());
        figures.deleted_while_down = Some(delete_while_down(run).await);
    }
    figures
}

/// Whether the API server answers `/readyz` with ok.
async fn api_server_ready(admin: &kube::Client) -> bool {
    let Ok(request) = http::Request::get("/readyz").body(Vec::new()) else {
        return false;
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(2), admin.request_text(request)).await,
        Ok(Ok(text)) if text.trim() == "ok"
    )
}

/// [`RESTARTS`] times: kube-apiserver killed, started again after 3 s, and once `/readyz` answers ok,
/// `hold` grows by one bridge; the time from `/readyz` to that bridge's Service. `hold` is back at 3
/// bridges afterwards.
async fn restarts(run: &Running, services_seen: &Seen) -> Spread {
    let admin = run.cluster.admin();
    let mut served = Vec::new();
    for round in 0..RESTARTS {
        let apiserver = testbed::control_plane::kill("kube-apiserver");
        tokio::time::sleep(Duration::from_secs(3)).await;
        apiserver.start();
        eventually("the API server ready", Duration::from_secs(180), || async {
            api_server_ready(&admin).await.then_some(())
        })
        .await;
        let ready = Instant::now();
        let replicas = 4 + round;
        let patch = json!({ "spec": { "replicas": replicas } });
        eventually("the scale request accepted", Duration::from_secs(60), || async {
            run.sets()
                .patch(HOLD, &PatchParams::default(), &Patch::Merge(patch.clone()))
                .await
                .ok()
        })
        .await;
        let name = format!("{HOLD}-{}", replicas - 1);
        let at = eventually(&format!("Service {name}"), Duration::from_secs(600), || async {
            seen_since(services_seen, &name, ready)
        })
        .await;
        served.push(signed_ms(ready, at));
        eprintln!(
            "    restart {}: {name} served {:.0} ms after /readyz",
            round + 1,
            signed_ms(ready, at)
        );
    }
    scale(run, HOLD, 3).await;
    eventually("hold back at 3 Services", Duration::from_secs(300), || async {
        let services = run
            .services()
            .list(&kube::api::ListParams::default())
            .await
            .ok()?;
        let held = services
            .items
            .iter()
            .filter(|service| service.name_any().starts_with(&format!("{HOLD}-")))
            .count();
        (held == 3).then_some(())
    })
    .await;
    Spread::of(served)
}

/// `hold` scaled 3 → 1 while pod `hold-2` is held Terminating: what becomes of its Service.
async fn drain(run: &Running) -> String {
    let draining = format!("{HOLD}-2");
    let pods: Api<Pod> = run.namespace.api();
    hold_terminating(&pods, &draining).await;
    scale(run, HOLD, 1).await;
    eventually(
        "hold-2 Terminating and hold-1 gone",
        Duration::from_secs(120),
        || async {
            let held = pods.get_opt(&draining).await.ok()??;
            let gone = pods.get_opt(&format!("{HOLD}-1")).await.ok()?.is_none();
            (held.metadata.deletion_timestamp.is_some() && gone).then_some(())
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    let kept = run
        .services()
        .get_opt(&draining)
        .await
        .expect("reading the Service")
        .is_some();
    release(&pods, &draining).await;
    eventually("hold-2 gone", Duration::from_secs(60), || async {
        pods.get_opt(&draining).await.ok()?.is_none().then_some(())
    })
    .await;
    let pod_gone = Instant::now();
    if !kept {
        return "deleted while the pod was still Terminating (calls cut)".to_owned();
    }
    let removed = tokio::time::timeout(Duration::from_secs(30), async {
        while run.services().get_opt(&draining).await.ok().flatten().is_some() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    match removed {
        Ok(()) => format!(
            "kept while Terminating; removed {:.1} s after the pod was gone",
            pod_gone.elapsed().as_secs_f64()
        ),
        Err(_) => "kept while Terminating, but still there 30 s after the pod was gone".to_owned(),
    }
}

/// The controller stopped, then `hold` deleted: can it go?
async fn delete_while_down(run: &mut Running) -> String {
    run.kill_controller();
    let asked = Instant::now();
    run.sets()
        .delete(HOLD, &DeleteParams::background())
        .await
        .expect("deleting the StatefulSet");
    let gone = tokio::time::timeout(Duration::from_secs(30), async {
        while run.sets().get_opt(HOLD).await.ok().flatten().is_some() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    match gone {
        Ok(()) => format!("deleted in {:.1} s", asked.elapsed().as_secs_f64()),
        Err(_) => {
            let finalizers = run
                .sets()
                .get_opt(HOLD)
                .await
                .ok()
                .flatten()
                .map(|set| set.finalizers().join(", "))
                .unwrap_or_default();
            format!("still there after 30 s (finalizer {finalizers})")
        }
    }
}
