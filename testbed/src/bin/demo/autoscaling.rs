//! The autoscaling loop, when the cluster runs KEDA (`--dataplane`): the demo changes nothing but the
//! bridges' load — the participants of their stand-ins, whose stress level follows — and every count
//! that follows is decided by the real chain: jvb-exporter in each pod → Prometheus → KEDA's operator
//! and metrics API server → kube-controller-manager's HPA controller → the StatefulSet → service-per-pod's
//! Services → kube-proxy's node ports → UDP; a removed bridge drains in its real preStop hook.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::Api;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
use testbed::Cluster;
use tokio::sync::Mutex;

use super::{BRIDGES, Bridges, Failure, NAMESPACE, Row, format_table, rows, step};

/// A stand-in's stress level per participant: 20 participants are a bridge at capacity (stress 1).
pub const STRESS_PER_PARTICIPANT: f64 = 0.05;
/// The HPA KEDA creates for the shard's ScaledObject.
const HPA: &str = "keda-hpa-shard-0-jvb";
/// The external metric KEDA names after the ScaledObject's first trigger.
const METRIC: &str = "s0-prometheus";

/// The shard's load, which the demo sets: participants on the bridges that take new conferences,
/// spread evenly over them; and how fast participants leave a draining bridge.
#[derive(Debug)]
pub struct Load {
    participants: AtomicU64,
    leave_every_ms: AtomicU64,
}

impl Default for Load {
    fn default() -> Self {
        Self {
            participants: AtomicU64::new(0),
            leave_every_ms: AtomicU64::new(1000),
        }
    }
}

impl Load {
    fn set(&self, participants: u64) {
        self.participants.store(participants, Ordering::SeqCst);
    }

    fn pace(&self, every: Duration) {
        self.leave_every_ms.store(
            u64::try_from(every.as_millis()).unwrap_or(u64::MAX),
            Ordering::SeqCst,
        );
    }

    pub fn leave_every(&self) -> Duration {
        Duration::from_millis(self.leave_every_ms.load(Ordering::SeqCst))
    }

    /// Each serving bridge's participants now.
    pub fn shares(&self, serving: &[String]) -> BTreeMap<String, u64> {
        distribute(self.participants.load(Ordering::SeqCst), serving)
    }
}

/// `participants` spread over `serving` bridges, the remainder to the first ones (lowest ordinals,
/// as names sort them).
fn distribute(participants: u64, serving: &[String]) -> BTreeMap<String, u64> {
    let mut names: Vec<&String> = serving.iter().collect();
    names.sort_by_key(|name| ordinal(name));
    let count = names.len() as u64;
    names
        .into_iter()
        .enumerate()
        .map(|(index, name)| {
            let extra = u64::from((index as u64) < participants % count.max(1));
            (name.clone(), participants / count.max(1) + extra)
        })
        .collect()
}

fn ordinal(name: &str) -> u32 {
    name.rsplit('-').next().and_then(|o| o.parse().ok()).unwrap_or(0)
}

/// What the demo watches throughout, every second: each bridge's row, the autoscaler's counts, and
/// every breach of what the loop must keep.
#[derive(Debug, Default)]
struct Watch {
    started: Option<Instant>,
    /// When each pod first answered UDP on its Service (by pod UID-less name and start).
    first_udp: BTreeMap<String, Instant>,
    /// When each pod was first seen Running without a deletion.
    first_seen: BTreeMap<String, Instant>,
    /// UDP probes missed in a row, per pod.
    misses: BTreeMap<String, u32>,
    /// Each bridge's phase at the last snapshot: Terminating (or gone) then Running is a new pod.
    phases: BTreeMap<String, String>,
    violations: Vec<String>,
    /// `spec.replicas` of the StatefulSet each time it changed.
    replicas: Vec<(Duration, i32)>,
    /// The autoscaler's line each time it changed.
    autoscaler: Vec<(Duration, String)>,
    /// Bridges seen Terminating at once, at most.
    most_draining: usize,
    last_table: String,
}

type Shared = Arc<Mutex<Watch>>;

/// Runs the loop: load up, down, up again during a drain (with `rise_during_drain`), down to one bridge.
pub async fn scenario(
    cluster: &Cluster,
    pods: &Api<Pod>,
    services: &Api<Service>,
    bridges: &Bridges,
    load: &Load,
    rise_during_drain: bool,
) -> Result<(), Failure> {
    step(
        "autoscaling: KEDA (real) made HPA keda-hpa-shard-0-jvb from the ScaledObject; kube-controller-manager's \
         HPA controller (real) reads its metric through the API server's aggregation layer",
    );
    let scaled_objects: Api<DynamicObject> = Api::namespaced_with(
        cluster.admin(),
        NAMESPACE,
        &ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("keda.sh", "v1alpha1", "ScaledObject"),
            "scaledobjects",
        ),
    );
    let scaled = scaled_objects
        .get(BRIDGES)
        .await
        .map_err(|e| format!("reading ScaledObject {BRIDGES}: {e}"))?;
    let trigger = &scaled.data["spec"]["triggers"][0]["metadata"];
    println!("  query:      {}", trigger["query"].as_str().unwrap_or_default());
    println!(
        "  threshold:  {} per bridge (bridges wanted = ceil(query / threshold)), from {}",
        trigger["threshold"].as_str().unwrap_or_default(),
        trigger["serverAddress"].as_str().unwrap_or_default()
    );
    println!(
        "  timings:    the dev overlay's, shortened for the demo: scale up at once, scale down after 30 s, one \
         bridge per 30 s (production: 60 s; 15 minutes, one bridge per 10 minutes)"
    );
    println!(
        "  load:       the stand-ins' participants, {STRESS_PER_PARTICIPANT} stress each (20 = a bridge at \
         capacity, 12 = the 0.6 target); new participants go to the bridges not draining"
    );
    println!(
        "  the metric as the HPA controller reads it:\n    kubectl get --raw '{}'",
        metric_path()
    );

    let watch: Shared = Arc::default();
    let _watcher = super::AbortOnDrop(tokio::spawn(watch_loop(
        cluster.clone(),
        pods.clone(),
        services.clone(),
        bridges.clone(),
        watch.clone(),
    )));

    step("load 6 participants (stress 0.3): one bridge");
    load.set(6);
    let value = wait_for_metric(cluster, |v| (v - 0.3).abs() < 0.01, "0.3").await?;
    println!("  external.metrics.k8s.io answers {METRIC} = {value} (through the aggregation layer)");
    wait_for_bridges(&watch, 1, Duration::from_secs(120)).await?;
    settle().await;

    step("load rises to 30 participants (stress 1.5): ceil(1.5 / 0.6) = 3 bridges");
    load.set(30);
    let rise = Instant::now();
    wait_for_bridges(&watch, 3, Duration::from_secs(180)).await?;
    settle().await;
    {
        let watch = watch.lock().await;
        for name in [format!("{BRIDGES}-1"), format!("{BRIDGES}-2")] {
            let answered = watch
                .first_udp
                .get(&name)
                .ok_or_else(|| format!("{name} never answered UDP"))?;
            println!(
                "  load step → {name} answering UDP on its Service: {:.1} s",
                answered.saturating_duration_since(rise).as_secs_f64()
            );
        }
    }

    if rise_during_drain {
        step(
            "load falls to 10 participants (stress 0.5): the HPA removes one bridge at a time; \
             shard-0-jvb-2 drains slowly (one participant leaves every 40 s)",
        );
        load.pace(Duration::from_secs(40));
        load.set(10);
        let draining = format!("{BRIDGES}-2");
        wait_until(
            &watch,
            Duration::from_secs(150),
            "shard-0-jvb-2 Terminating",
            |w| w.last_rows_contain(&draining, "Terminating"),
        )
        .await?;
        settle().await;

        step(
            "load rises again to 30 while shard-0-jvb-2 drains: the StatefulSet cannot recreate ordinal 2 \
             until that pod is gone; service-per-pod reports the held ordinal and the query asks one bridge more",
        );
        let again = Instant::now();
        load.set(30);
        let fresh = format!("{BRIDGES}-3");
        wait_until(
            &watch,
            Duration::from_secs(240),
            "shard-0-jvb-3 answering UDP while shard-0-jvb-2 drains",
            |w| w.first_udp.contains_key(&fresh),
        )
        .await?;
        let still_draining = rows(pods, services, bridges)
            .await
            .iter()
            .any(|r| r.name == draining && r.phase == "Terminating");
        settle().await;
        if !still_draining {
            return Err(format!(
                "{draining}'s drain ended before the new bridge came: the rise during a drain was not shown"
            ));
        }
        {
            let watch = watch.lock().await;
            let came = watch.first_udp[&fresh].saturating_duration_since(again);
            println!(
                "  load step during the drain → {fresh} answering UDP: {:.1} s; the shard served with 2 bridges \
                 until then (3 wanted), then 3, while {draining} kept its calls",
                came.as_secs_f64()
            );
            let since = again.saturating_duration_since(watch.started.unwrap_or(again));
            for (at, line) in watch.autoscaler.iter().filter(|(at, _)| *at >= since) {
                println!("    +{:>5.1} s  {line}", (*at - since).as_secs_f64());
            }
        }
        load.pace(Duration::from_secs(1));
        step(
            "shard-0-jvb-2's drain ends: the StatefulSet recreates ordinal 2, then the HPA removes one bridge (to 3)",
        );
        wait_until(&watch, Duration::from_secs(300), "back to 3 bridges", |w| {
            w.replicas.last().map(|(_, r)| *r) == Some(3)
                && w.serving() == 3
                && w.draining() == 0
                && w.all_running_answer()
        })
        .await?;
        settle().await;
    }

    step("load falls to 5 participants (stress 0.25): one bridge at a time, each drained, down to 1");
    load.pace(Duration::from_secs(2));
    load.set(5);
    wait_for_bridges(&watch, 1, Duration::from_secs(300)).await?;
    settle().await;

    let watch = watch.lock().await;
    let decreases: Vec<i32> = watch
        .replicas
        .windows(2)
        .map(|pair| pair[0].1 - pair[1].1)
        .filter(|drop| *drop > 0)
        .collect();
    println!(
        "  the StatefulSet's replicas, as the HPA set them: {}",
        watch
            .replicas
            .iter()
            .map(|(_, r)| r.to_string())
            .collect::<Vec<_>>()
            .join(" → ")
    );
    if decreases.iter().any(|drop| *drop > 1) {
        return Err(format!(
            "the HPA removed more than one bridge at once: {:?}",
            watch.replicas
        ));
    }
    println!(
        "  at most {} bridge(s) drained at once; no Service lost or duplicated, every running or draining \
         bridge answered UDP throughout",
        watch.most_draining
    );
    if !watch.violations.is_empty() {
        return Err(format!(
            "the loop broke what it must keep:\n  {}",
            watch.violations.join("\n  ")
        ));
    }
    Ok(())
}

fn metric_path() -> String {
    format!(
        "/apis/external.metrics.k8s.io/v1beta1/namespaces/{NAMESPACE}/{METRIC}?labelSelector=scaledobject.keda.sh%2Fname%3D{BRIDGES}"
    )
}

/// The metric's value through the aggregated API, once `good` holds for it.
async fn wait_for_metric(cluster: &Cluster, good: impl Fn(f64) -> bool, what: &str) -> Result<f64, Failure> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let request = http::Request::get(metric_path())
            .body(Vec::new())
            .map_err(|e| e.to_string())?;
        let last = match cluster.admin().request::<serde_json::Value>(request).await {
            Ok(list) => {
                let value = list["items"][0]["value"].as_str().unwrap_or_default().to_owned();
                if let Some(number) = quantity(&value)
                    && good(number)
                {
                    return Ok(number);
                }
                format!("value {value}")
            }
            Err(e) => e.to_string(),
        };
        if Instant::now() > deadline {
            return Err(format!(
                "the external metric {METRIC} did not read {what} within 120 s (last: {last})"
            ));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// A Kubernetes quantity as the metrics API writes values: `300m`, `2`, `1500m`.
fn quantity(text: &str) -> Option<f64> {
    match text.strip_suffix('m') {
        Some(milli) => milli.parse::<f64>().ok().map(|m| m / 1000.0),
        None => text.parse().ok(),
    }
}

impl Watch {
    fn rows_now(&self) -> &str {
        &self.last_table
    }

    fn last_rows_contain(&self, name: &str, phase: &str) -> bool {
        self.rows_now()
            .lines()
            .any(|line| line.split_whitespace().take(2).eq([name, phase]))
    }

    fn count_phase(&self, phase: &str) -> usize {
        self.rows_now()
            .lines()
            .filter(|line| line.split_whitespace().nth(1) == Some(phase))
            .count()
    }

    /// Every Running bridge has answered UDP on its Service.
    fn all_running_answer(&self) -> bool {
        self.rows_now()
            .lines()
            .filter(|line| line.split_whitespace().nth(1) == Some("Running"))
            .filter_map(|line| line.split_whitespace().next())
            .all(|name| self.first_udp.contains_key(name))
    }

    fn serving(&self) -> usize {
        self.count_phase("Running")
    }

    fn draining(&self) -> usize {
        self.count_phase("Terminating")
    }
}

/// Exactly `count` bridges Running, none draining, each answering UDP on its Service.
async fn wait_for_bridges(watch: &Shared, count: usize, timeout: Duration) -> Result<(), Failure> {
    wait_until(
        watch,
        timeout,
        &format!("{count} bridge(s) running, none draining, each answering UDP"),
        |w| {
            w.serving() == count
                && w.draining() == 0
                && w.rows_now().lines().count() == count + 1
                && w.all_running_answer()
        },
    )
    .await
}

async fn wait_until(
    watch: &Shared,
    timeout: Duration,
    what: &str,
    done: impl Fn(&Watch) -> bool,
) -> Result<(), Failure> {
    let deadline = Instant::now() + timeout;
    loop {
        {
            let watch = watch.lock().await;
            if done(&watch) {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            let watch = watch.lock().await;
            let timeline: Vec<String> = watch
                .autoscaler
                .iter()
                .map(|(at, line)| format!("+{:.0} s {line}", at.as_secs_f64()))
                .chain(
                    watch
                        .replicas
                        .iter()
                        .map(|(at, replicas)| format!("+{:.0} s replicas {replicas}", at.as_secs_f64())),
                )
                .collect();
            return Err(format!(
                "{what}: not within {timeout:?}\n{}\n  autoscaler and StatefulSet:\n    {}",
                watch.last_table,
                timeline.join("\n    ")
            ));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Lets the watcher print a few more seconds of the step that just held (the load spread over new
/// bridges, a drain's first participants leaving).
async fn settle() {
    tokio::time::sleep(Duration::from_secs(3)).await;
}

/// Every second: the rows, the HPA and the StatefulSet; records what the loop must keep.
async fn watch_loop(
    cluster: Cluster,
    pods: Api<Pod>,
    services: Api<Service>,
    bridges: Bridges,
    watch: Shared,
) {
    let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(cluster.admin(), NAMESPACE);
    let sets: Api<StatefulSet> = Api::namespaced(cluster.admin(), NAMESPACE);
    let started = Instant::now();
    watch.lock().await.started = Some(started);
    loop {
        let rows = rows(&pods, &services, &bridges).await;
        let hpa = hpas.get_opt(HPA).await.ok().flatten();
        let replicas = sets
            .get_opt(BRIDGES)
            .await
            .ok()
            .flatten()
            .and_then(|s| s.spec?.replicas);
        let now = Instant::now();
        let mut w = watch.lock().await;
        check(&mut w, &rows, now);
        let table = format_table(&rows);
        // As it happens: each change of the table (bridges coming, draining, leaving; participants).
        if table != w.last_table {
            println!("  +{:.1} s\n{table}", (now - started).as_secs_f64());
        }
        w.last_table = table;
        if let Some(replicas) = replicas
            && w.replicas.last().map(|(_, r)| *r) != Some(replicas)
        {
            w.replicas.push((now - started, replicas));
        }
        if let Some(line) = hpa.as_ref().map(autoscaler_line)
            && w.autoscaler.last().map(|(_, l)| l) != Some(&line)
        {
            println!("  +{:.1} s  autoscaler: {line}", (now - started).as_secs_f64());
            w.autoscaler.push((now - started, line));
        }
        drop(w);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// `desired 3, current 2, metric 1.5 (0.75 per bridge, target 0.6)`.
fn autoscaler_line(hpa: &HorizontalPodAutoscaler) -> String {
    let status = hpa.status.as_ref();
    let metric = status
        .and_then(|s| s.current_metrics.as_ref())
        .and_then(|m| m.first())
        .and_then(|m| m.external.as_ref())
        .and_then(|e| e.current.average_value.as_ref())
        .map_or("-".to_owned(), |q| q.0.clone());
    format!(
        "desired {}, current {}, average per bridge {metric} (target 600m)",
        status.map_or(0, |s| s.desired_replicas),
        status.and_then(|s| s.current_replicas).unwrap_or(0),
    )
}

/// The loop's promises, checked on each snapshot: a Running bridge has its Service within 10 s and,
/// once it answered UDP, keeps answering; a draining bridge with calls keeps its Service and answers;
/// no two bridges share a port.
fn check(watch: &mut Watch, rows: &[Row], now: Instant) {
    let mut ports: BTreeMap<i32, &str> = BTreeMap::new();
    let draining = rows.iter().filter(|r| r.phase == "Terminating").count();
    watch.most_draining = watch.most_draining.max(draining);
    // A name no longer listed, or Running again after Terminating, starts afresh (a recreated ordinal).
    let listed: BTreeSet<&str> = rows.iter().map(|r| r.name.as_str()).collect();
    let renewed: Vec<String> = watch
        .phases
        .iter()
        .filter(|(name, phase)| {
            let now = rows.iter().find(|r| &r.name == *name).map(|r| r.phase.as_str());
            !listed.contains(name.as_str()) || (phase.as_str() != "Running" && now == Some("Running"))
        })
        .map(|(name, _)| name.clone())
        .collect();
    for name in renewed {
        watch.first_seen.remove(&name);
        watch.first_udp.remove(&name);
        watch.misses.remove(&name);
    }
    watch.phases = rows.iter().map(|r| (r.name.clone(), r.phase.clone())).collect();
    for row in rows {
        if let Some(port) = row.node_port
            && matches!(row.phase.as_str(), "Running" | "Terminating")
            && let Some(other) = ports.insert(port, &row.name)
        {
            watch
                .violations
                .push(format!("{} and {other} share port {port}", row.name));
        }
        let with_calls = row.participants.is_some_and(|p| p > 0.0);
        match row.phase.as_str() {
            "Running" => {
                let seen = *watch.first_seen.entry(row.name.clone()).or_insert(now);
                if row.node_port.is_none() && now - seen > Duration::from_secs(10) {
                    watch
                        .violations
                        .push(format!("{} Running for 10 s without its Service", row.name));
                }
            }
            "Terminating" if with_calls && row.node_port.is_none() => {
                watch
                    .violations
                    .push(format!("{} lost its Service while draining with calls", row.name));
            }
            _ => {}
        }
        let must_answer = row.phase == "Running" || (row.phase == "Terminating" && with_calls);
        match row.udp {
            Some(true) => {
                watch.first_udp.entry(row.name.clone()).or_insert(now);
                watch.misses.remove(&row.name);
            }
            Some(false) if must_answer && watch.first_udp.contains_key(&row.name) => {
                let misses = watch.misses.entry(row.name.clone()).or_insert(0);
                *misses += 1;
                // One lost datagram is the network's; two in a row is a bridge cut off.
                if *misses == 2 {
                    watch.violations.push(format!(
                        "{} ({}) stopped answering UDP on its Service",
                        row.name, row.phase
                    ));
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_is_spread_evenly_with_the_remainder_on_the_lowest_ordinals() {
        let names = [
            "shard-0-jvb-10".to_owned(),
            "shard-0-jvb-2".to_owned(),
            "shard-0-jvb-0".to_owned(),
        ];
        let shares = distribute(10, &names);
        assert_eq!(shares["shard-0-jvb-0"], 4);
        assert_eq!(shares["shard-0-jvb-2"], 3);
        assert_eq!(shares["shard-0-jvb-10"], 3);
        assert!(distribute(5, &[]).is_empty());
    }

    #[test]
    fn quantities_read_as_the_metrics_api_writes_them() {
        assert_eq!(quantity("300m"), Some(0.3));
        assert_eq!(quantity("2"), Some(2.0));
        assert_eq!(quantity("x"), None);
    }
}
