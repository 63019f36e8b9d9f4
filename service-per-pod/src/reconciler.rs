//! One StatefulSet's reconcile, in one line: a snapshot from the watch index → the Services it should
//! have ([`crate::desired`]) → every write that takes, in order ([`crate::plan`]) → carried out
//! ([`crate::executor`]) → reported ([`crate::report`]) and looked at again on a timer when something
//! waits.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use daemon_kit::admin::Readiness;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Service;
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, Resource, ResourceExt};

use crate::annotations::{self, Expose, OptIn};
use crate::desired::{self, Claim, Limits, SetKey, SetView};
use crate::executor::{self, Outcome, Writer};
use crate::index::Index;
use crate::leader::Leadership;
use crate::metrics::{Category, Metrics};
use crate::plan::{self, Inputs, Mode, Waiting, Write};
use crate::report::{self, REFUSED_RETRY_MAX_SECS, Warning};

pub use crate::executor::FIELD_MANAGER;

/// How soon to look again when a reconcile comes before the caches are filled.
const CACHE_WAIT: Duration = Duration::from_millis(200);
/// While a StatefulSet loses a port to another, look again this often (the other may let it go).
const CONFLICT_RECHECK: Duration = Duration::from_secs(5);
/// Writes that failed are tried again after 0.5 s doubling, at most this.
const BACKOFF_MAX: Duration = Duration::from_secs(60);
/// How long a write of ours may take to come back through the watch before the cache is believed again
/// (it takes milliseconds; a Service deleted meanwhile is looked at again after this).
const ECHO_WAIT: Duration = Duration::from_secs(5);
/// At most this many rounds of plan and write in one reconcile: a node port refused in one round is left
/// out of the next, so the others go ahead at once.
const ROUNDS: usize = 3;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API error: {0}")]
    Api(#[source] kube::Error),
}

/// A node port the API server refused, and when to try it again.
#[derive(Clone, Copy, Debug)]
struct Refused {
    attempts: u32,
    next: Instant,
}

/// A write of ours the cache does not show yet. Reconciles come in bursts, and one that reads the cache
/// a moment after our write would write again.
#[derive(Clone, Debug)]
enum Echo {
    Created {
        uid: String,
        at: Instant,
    },
    /// The resourceVersion the cache showed before our patch.
    Patched {
        stale: String,
        at: Instant,
    },
}

impl Echo {
    /// When the cache counts again for this Service, if it does not yet.
    fn pending_until(&self, actual: Option<&Service>, now: Instant) -> Option<Instant> {
        let (at, still_stale) = match self {
            Echo::Created { uid, at } => (*at, actual.is_none_or(|s| s.uid().as_ref() != Some(uid))),
            Echo::Patched { stale, at } => (
                *at,
                actual.is_some_and(|s| s.resource_version().as_ref() == Some(stale)),
            ),
        };
        let until = at + ECHO_WAIT;
        (still_stale && until > now).then_some(until)
    }
}

/// What the controller remembers of one StatefulSet between reconciles.
#[derive(Debug, Default)]
struct Memory {
    /// The warnings last reported, so each is reported once.
    reported: BTreeSet<Warning>,
    refused: BTreeMap<u16, Refused>,
    /// Reconciles in a row whose writes did not all succeed.
    failures: u32,
    conflicts: u64,
    foreign_pods: usize,
}

/// What every reconcile shares.
pub struct Context {
    /// For writes: every call under the client's timeout (see `runtime`).
    pub writer: Client,
    pub statefulsets: Store<StatefulSet>,
    pub index: Index,
    pub limits: Limits,
    pub recorder: Recorder,
    pub leadership: Leadership,
    /// Until every cache is filled, an absent Service may just not be listed yet: no writes before.
    synced: Readiness,
    pub metrics: Metrics,
    memory: Mutex<HashMap<SetKey, Memory>>,
    /// Services we wrote, by namespace and name, until the cache shows the write.
    echoes: Mutex<HashMap<(String, String), Echo>>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn set_labels(key: &SetKey) -> crate::metrics::SetLabels {
    crate::metrics::SetLabels {
        statefulset_namespace: key.namespace.clone(),
        statefulset: key.name.clone(),
    }
}

fn key_of(set: &StatefulSet) -> SetKey {
    SetKey {
        namespace: set.namespace().unwrap_or_default(),
        name: set.name_any(),
    }
}

/// The planner's view of a StatefulSet: its spec and its pods from the index.
fn view_of(set: &StatefulSet, opt_in: OptIn, index: &Index) -> Option<SetView> {
    let uid = set.uid()?;
    let key = key_of(set);
    let spec = set.spec.as_ref();
    // A StatefulSet without replicas means 1, as the API server defaults it.
    let replicas = spec
        .and_then(|spec| spec.replicas)
        .unwrap_or(1)
        .max(0)
        .unsigned_abs();
    let start = spec
        .and_then(|spec| spec.ordinals.as_ref())
        .and_then(|ordinals| ordinals.start)
        .unwrap_or(0)
        .max(0)
        .unsigned_abs();
    let created = set
        .meta()
        .creation_timestamp
        .as_ref()
        .map_or(i64::MAX, |time| time.0.as_second());
    Some(SetView {
        pods: index.pods(&key.namespace, &uid),
        key,
        uid,
        opt_in,
        replicas,
        start,
        deleting: set.meta().deletion_timestamp.is_some(),
        created,
    })
}

/// What the reconciles read: the StatefulSets, the index of pods, Services and slices, and whether
/// every watch has listed everything once.
#[derive(Clone)]
pub struct Caches {
    pub statefulsets: Store<StatefulSet>,
    pub index: Index,
    pub synced: Readiness,
}

impl std::fmt::Debug for Caches {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Caches")
            .field("synced", &self.synced.is_ready())
            .finish_non_exhaustive()
    }
}

impl Context {
    pub fn new(
        writer: Client,
        caches: Caches,
        limits: Limits,
        recorder: Recorder,
        leadership: Leadership,
        metrics: Metrics,
    ) -> Self {
        let Caches {
            statefulsets,
            index,
            synced,
        } = caches;
        Self {
            writer,
            statefulsets,
            index,
            limits,
            recorder,
            leadership,
            synced,
            metrics,
            memory: Mutex::default(),
            echoes: Mutex::default(),
        }
    }

    /// What every opted-in StatefulSet claims, for settling port conflicts.
    fn claims(&self) -> Vec<Claim> {
        self.statefulsets
            .state()
            .iter()
            .filter(|set| set.meta().deletion_timestamp.is_none())
            .filter_map(|set| {
                let opt_in = annotations::parse(set.annotations()).ok().flatten()?;
                let view = view_of(set, opt_in, &self.index)?;
                Some(Claim {
                    ports: desired::claimed_ports(&view, &self.limits),
                    set: view.key,
                    created: view.created,
                })
            })
            .collect()
    }

    fn still_exists(&self, key: &SetKey) -> bool {
        self.statefulsets
            .get(&ObjectRef::new(&key.name).within(&key.namespace))
            .is_some()
    }

    /// Forgets what was kept about StatefulSets that are gone, and refreshes the gauges built from it.
    fn tidy(&self) {
        let mut memory = lock(&self.memory);
        memory.retain(|key, _| {
            let exists = self.still_exists(key);
            if !exists {
                self.metrics.held_ordinals.remove(&set_labels(key));
            }
            exists
        });
        let total =
            |f: fn(&Memory) -> u64| i64::try_from(memory.values().map(f).sum::<u64>()).unwrap_or(i64::MAX);
        self.metrics.port_conflicts.set(total(|m| m.conflicts));
        self.metrics
            .refused_node_ports
            .set(total(|m| m.refused.len() as u64));
        self.metrics
            .foreign_owner_pods
            .set(total(|m| m.foreign_pods as u64));
        self.metrics
            .managed_services
            .set(i64::try_from(self.index.service_count()).unwrap_or(i64::MAX));
    }

    /// Names whose write is still on its way to the cache; forgets those the cache shows.
    fn pending_echoes(
        &self,
        namespace: &str,
        services: &[Arc<Service>],
        now: Instant,
    ) -> (BTreeSet<String>, Option<Instant>) {
        let mut echoes = lock(&self.echoes);
        let mut pending = BTreeSet::new();
        let mut until_min: Option<Instant> = None;
        echoes.retain(|(ns, name), echo| {
            if ns != namespace {
                return match echo {
                    Echo::Created { at, .. } | Echo::Patched { at, .. } => *at + ECHO_WAIT > now,
                };
            }
            let actual = services.iter().find(|s| s.name_any() == *name).map(AsRef::as_ref);
            match echo.pending_until(actual, now) {
                Some(until) => {
                    pending.insert(name.clone());
                    until_min = Some(until_min.map_or(until, |u| u.min(until)));
                    true
                }
                None => false,
            }
        });
        (pending, until_min)
    }

    fn expect_echo(&self, namespace: &str, name: &str, echo: Echo) {
        lock(&self.echoes).insert((namespace.to_owned(), name.to_owned()), echo);
    }
}

pub async fn reconcile(set: Arc<StatefulSet>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    ctx.metrics.reconciles.inc();
    let action = if !ctx.synced.is_ready() {
        Action::requeue(CACHE_WAIT)
    } else if ctx.leadership.is_leader() {
        reconcile_leading(&set, &ctx).await
    } else {
        // A standby writes nothing; it reconciles everything when it becomes the leader. What it
        // reported as a leader is stale: only the leader's view counts.
        ctx.metrics.held_ordinals.clear();
        Action::await_change()
    };
    ctx.metrics
        .reconcile_duration
        .observe(started.elapsed().as_secs_f64());
    Ok(action)
}

/// Reconciles do not fail: what could not be written is reported and retried on a timer.
pub fn error_policy(_set: Arc<StatefulSet>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.error(Category::Api);
    tracing::warn!(%error, "reconcile failed");
    Action::requeue(Duration::from_secs(1))
}

async fn reconcile_leading(set: &StatefulSet, ctx: &Context) -> Action {
    let key = key_of(set);
    let Some(uid) = set.uid() else {
        return Action::await_change();
    };
    let opt_in = match annotations::parse(set.annotations()) {
        // Not opted in: nothing to do, unless Services of ours remain (an opt-out), which all go.
        Ok(None) if !ctx.index.has_services(&key.namespace, &uid) => return Action::await_change(),
        Ok(None) => {
            let services = ctx.index.services_of(&key.namespace, &uid);
            let mut cleanup = plan::Plan::default();
            for service in services {
                cleanup.steps.push(plan::Step {
                    id: plan::StepId(cleanup.steps.len()),
                    write: Write::DeleteService {
                        name: service.name_any(),
                        uid: service.uid().unwrap_or_default(),
                    },
                    after: Vec::new(),
                });
            }
            let outcomes = executor::execute(&writer(ctx, &key, &uid), &cleanup).await;
            let warnings = report::from_outcomes(&key, &cleanup, &outcomes);
            let failed = !warnings.is_empty();
            publish(ctx, set, &key, warnings).await;
            lock(&ctx.memory).remove(&key);
            ctx.metrics.held_ordinals.remove(&set_labels(&key));
            return if failed {
                Action::requeue(Duration::from_secs(5))
            } else {
                Action::await_change()
            };
        }
        Err(invalid) => {
            // A broken annotation changes nothing: existing Services stay as they are.
            publish(
                ctx,
                set,
                &key,
                vec![(invalid.reason().to_owned(), invalid.to_string())],
            )
            .await;
            return Action::await_change();
        }
        Ok(Some(opt_in)) => opt_in,
    };
    let Some(view) = view_of(set, opt_in, &ctx.index) else {
        return Action::await_change();
    };
    let held = view.ordinals_held_by_terminating_pods();
    // Remembered, so `tidy` removes the series once the StatefulSet is gone.
    lock(&ctx.memory).entry(key.clone()).or_default();
    ctx.metrics
        .held_ordinals
        .get_or_create(&set_labels(&key))
        .set(i64::try_from(held).unwrap_or(i64::MAX));
    let winners = desired::port_winners(&ctx.claims(), &ctx.index.held_ports());
    let wanted = desired::plan(&view, &ctx.limits, &winners);
    let mode = match &view.opt_in.expose {
        Expose::NodePort => Mode::NodePort,
        Expose::LoadBalancer(spec) => Mode::LoadBalancer {
            name: crate::public::service_name(&key.name, spec.name.as_deref()),
            spec: spec.clone(),
        },
    };

    let mut warnings: Vec<Warning> = wanted
        .refusals
        .iter()
        .map(|refusal| (refusal.reason().to_owned(), refusal.to_string()))
        .collect();
    if let Some((ordinals, base)) = &wanted.kept_base_ports {
        warnings.push((
            "BasePortChanged".to_owned(),
            format!(
                "pod ordinals {ordinals} keep the node ports of the base port they were created with until they are replaced; \
                 pods created from now on get base port {base}"
            ),
        ));
    }
    let foreign_pods = ctx.index.pods_claiming_from_elsewhere(&key.namespace, &uid);
    if !foreign_pods.is_empty() {
        let named: Vec<String> = foreign_pods
            .iter()
            .take(5)
            .map(|(ns, pod)| format!("{ns}/{pod}"))
            .collect();
        warnings.push((
            "ForeignOwner".to_owned(),
            format!(
                "{} pod(s) in other namespaces name this StatefulSet as their owner ({}): ignored, they get no Service",
                foreign_pods.len(),
                named.join(", ")
            ),
        ));
    }
    if let Mode::LoadBalancer { name, spec } = &mode {
        let services = ctx.index.services_of(&key.namespace, &uid);
        if let Some(existing) = services.iter().find(|service| service.name_any() == *name) {
            let actual = existing
                .spec
                .as_ref()
                .and_then(|spec| spec.load_balancer_class.as_deref());
            if let Some(message) = crate::public::class_kept(name, spec.class.as_deref(), actual) {
                warnings.push(("LoadBalancerClassKept".to_owned(), message));
            }
        }
    }

    let now = Instant::now();
    let mut next: Option<Instant> = None;
    let mut soonest = |at: Instant| next = Some(next.map_or(at, |n: Instant| n.min(at)));
    let mut troubled = false;
    let writer = writer(ctx, &key, &uid);
    for round in 0..ROUNDS {
        let services = ctx.index.services_of(&key.namespace, &uid);
        let orphans = ctx.index.orphans_of(&key);
        let slices = ctx.index.slices_of(&key);
        let (echoes, echo_until) = ctx.pending_echoes(&key.namespace, &services, Instant::now());
        if let Some(until) = echo_until {
            soonest(until);
        }
        let refused_ports: BTreeSet<u16> = lock(&ctx.memory)
            .get(&key)
            .map(|memory| {
                memory
                    .refused
                    .iter()
                    .filter(|(_, r)| r.next > Instant::now())
                    .map(|(p, _)| *p)
                    .collect()
            })
            .unwrap_or_default();
        let waiting = Waiting {
            refused_ports,
            echoes,
        };
        let write_plan = plan::plan(&Inputs {
            set: &view,
            desired: &wanted,
            services: &services,
            orphans: &orphans,
            slices: &slices,
            waiting: &waiting,
            mode: &mode,
        });
        if write_plan.steps.is_empty() {
            break;
        }
        let outcomes = executor::execute(&writer, &write_plan).await;
        let mut refused_now = false;
        for step in &write_plan.steps {
            let Some(outcome) = outcomes.get(&step.id) else {
                continue;
            };
            match (&step.write, outcome) {
                (
                    Write::CreateService {
                        name, dry_run: false, ..
                    },
                    Outcome::Done { uid: Some(created) },
                ) => {
                    ctx.expect_echo(
                        &key.namespace,
                        name,
                        Echo::Created {
                            uid: created.clone(),
                            at: Instant::now(),
                        },
                    );
                }
                (Write::PatchService { name, .. }, Outcome::Done { .. }) => {
                    if let Some(stale) = services
                        .iter()
                        .chain(&orphans)
                        .find(|s| s.name_any() == *name)
                        .and_then(|s| s.resource_version())
                    {
                        ctx.expect_echo(
                            &key.namespace,
                            name,
                            Echo::Patched {
                                stale,
                                at: Instant::now(),
                            },
                        );
                    }
                }
                (_, Outcome::Refused { ports, .. }) if !step.write.is_dry_run() => {
                    let mut memory = lock(&ctx.memory);
                    let memory = memory.entry(key.clone()).or_default();
                    for port in ports {
                        let entry = memory.refused.entry(*port).or_insert(Refused {
                            attempts: 0,
                            next: now,
                        });
                        entry.attempts = entry.attempts.saturating_add(1);
                        let delay = Duration::from_secs(1)
                            .saturating_mul(1 << (entry.attempts - 1).min(5))
                            .min(Duration::from_secs(REFUSED_RETRY_MAX_SECS));
                        entry.next = Instant::now() + delay;
                    }
                    refused_now = true;
                }
                (_, Outcome::Failed { .. } | Outcome::Conflict | Outcome::Foreign { .. }) => troubled = true,
                (_, Outcome::Refused { .. }) => troubled = true,
                _ => {}
            }
        }
        // Node ports that are ours now are no longer refused.
        {
            let mut memory = lock(&ctx.memory);
            if let Some(memory) = memory.get_mut(&key) {
                for step in &write_plan.steps {
                    if let (
                        Write::CreateService {
                            node_ports,
                            dry_run: false,
                            ..
                        }
                        | Write::PatchService { node_ports, .. },
                        Some(Outcome::Done { .. }),
                    ) = (&step.write, outcomes.get(&step.id))
                    {
                        for port in node_ports {
                            memory.refused.remove(port);
                        }
                    }
                }
            }
        }
        warnings.extend(report::from_outcomes(&key, &write_plan, &outcomes));
        if outcomes.values().any(|o| *o == Outcome::NotLeading) {
            break;
        }
        // A refused node port is left out of the next round, so the others go ahead now.
        if !refused_now || round + 1 == ROUNDS {
            break;
        }
    }

    let conflicts: u64 = wanted
        .refusals
        .iter()
        .filter(|refusal| matches!(refusal, desired::Refusal::Conflict { .. }))
        .map(|refusal| refusal.ordinals().len())
        .sum();
    {
        let mut memory = lock(&ctx.memory);
        let memory = memory.entry(key.clone()).or_default();
        memory.conflicts = conflicts;
        memory.foreign_pods = foreign_pods.len();
        memory
            .refused
            .retain(|port, _| wanted.services.iter().any(|s| s.port == *port));
        if let Some(retry) = memory.refused.values().map(|r| r.next).min() {
            soonest(retry);
        }
        if troubled {
            memory.failures = memory.failures.saturating_add(1);
            let delay = Duration::from_millis(500)
                .saturating_mul(1 << (memory.failures - 1).min(10))
                .min(BACKOFF_MAX);
            soonest(Instant::now() + delay);
        } else {
            memory.failures = 0;
        }
    }
    if conflicts > 0 {
        soonest(Instant::now() + CONFLICT_RECHECK);
    }
    publish(ctx, set, &key, warnings).await;
    ctx.tidy();
    match next {
        Some(at) => Action::requeue(
            at.saturating_duration_since(Instant::now())
                .max(Duration::from_millis(100)),
        ),
        None => Action::await_change(),
    }
}

fn writer<'a>(ctx: &'a Context, key: &'a SetKey, uid: &'a str) -> Writer<'a> {
    Writer {
        client: &ctx.writer,
        namespace: &key.namespace,
        owner_uid: uid,
        leadership: &ctx.leadership,
        metrics: &ctx.metrics,
    }
}

/// One Warning Event on the StatefulSet and one log line per problem — once, not at every reconcile.
async fn publish(ctx: &Context, set: &StatefulSet, key: &SetKey, warnings: Vec<Warning>) {
    let current: BTreeSet<Warning> = warnings.into_iter().collect();
    let news = {
        let mut memory = lock(&ctx.memory);
        let memory = memory.entry(key.clone()).or_default();
        let news = report::news(&memory.reported, &current);
        memory.reported = current;
        news
    };
    let reference = set.object_ref(&());
    for (reason, message) in news {
        if let Some(category) = Category::from_reason(&reason) {
            ctx.metrics.error(category);
        }
        tracing::warn!(statefulset = %key, reason = %reason, "{message}");
        if !ctx.leadership.is_leader() {
            continue;
        }
        let event = Event {
            type_: EventType::Warning,
            reason,
            note: Some(message),
            action: "Reconcile".to_owned(),
            secondary: None,
        };
        if let Err(error) = ctx.recorder.publish(&event, &reference).await {
            tracing::warn!(statefulset = %key, %error, "could not publish an Event");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(uid: &str, resource_version: &str) -> Service {
        let mut service = Service::default();
        service.metadata.uid = Some(uid.to_owned());
        service.metadata.resource_version = Some(resource_version.to_owned());
        service
    }

    #[test]
    fn a_created_service_is_awaited_until_the_cache_shows_its_uid() {
        let at = Instant::now();
        let echo = Echo::Created {
            uid: "new".to_owned(),
            at,
        };
        assert_eq!(echo.pending_until(None, at), Some(at + ECHO_WAIT));
        assert_eq!(
            echo.pending_until(Some(&service("old", "1")), at),
            Some(at + ECHO_WAIT)
        );
        assert_eq!(echo.pending_until(Some(&service("new", "2")), at), None);
        assert_eq!(echo.pending_until(None, at + ECHO_WAIT), None);
    }

    #[test]
    fn a_patched_service_is_awaited_while_the_cache_shows_the_version_before_the_patch() {
        let at = Instant::now();
        let echo = Echo::Patched {
            stale: "7".to_owned(),
            at,
        };
        assert_eq!(
            echo.pending_until(Some(&service("a", "7")), at),
            Some(at + ECHO_WAIT)
        );
        assert_eq!(echo.pending_until(Some(&service("a", "8")), at), None);
        assert_eq!(echo.pending_until(None, at), None);
    }
}
