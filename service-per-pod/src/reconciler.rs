//! One StatefulSet's reconcile: read the watch caches, ask [`crate::desired`] what should exist,
//! apply what differs, delete what is no longer wanted, and tell the operator (one Event and one log
//! line) about anything it refused to do.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;

use daemon_kit::admin::Readiness;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::{DeleteParams, PartialObjectMeta, Patch, PatchParams, Preconditions};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Client, Resource, ResourceExt};

use crate::annotations;
use crate::desired::{self, Claim, DesiredService, NodePortRange, SetKey, Skipped};
use crate::leader::Leadership;
use crate::metrics::{Category, Metrics, Verb};

pub const FIELD_MANAGER: &str = "service-per-pod";
/// Set by the StatefulSet controller since Kubernetes 1.28; older pods fall back to their name.
const POD_INDEX_LABEL: &str = "apps.kubernetes.io/pod-index";
/// How soon to look again when a reconcile comes before the caches are filled.
const CACHE_WAIT: Duration = Duration::from_millis(200);
/// Service writes in flight at once for one StatefulSet.
const CONCURRENT_WRITES: usize = 16;
/// While a StatefulSet loses a port to another, look again this often (the other may let it go).
const CONFLICT_RECHECK: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API error: {0}")]
    Api(#[source] kube::Error),
    #[error("the API server refused node port {port} for Service {service}: {message}")]
    NodePortRefused {
        service: String,
        port: u16,
        message: String,
    },
}

impl Error {
    pub fn category(&self) -> Category {
        match self {
            Error::Api(_) => Category::Api,
            Error::NodePortRefused { .. } => Category::NodePortRefused,
        }
    }
}

/// What every reconcile shares.
pub struct Context {
    pub client: Client,
    pub statefulsets: Store<StatefulSet>,
    pub services: Store<Service>,
    pub pods: Store<PartialObjectMeta<Pod>>,
    pub node_port_range: NodePortRange,
    pub recorder: Recorder,
    pub leadership: Leadership,
    /// Until every cache is filled, an absent Service may just not be listed yet: no writes before.
    synced: Readiness,
    pub metrics: Metrics,
    /// The warnings last reported per StatefulSet, so each is reported once, not at every reconcile.
    reported: Mutex<HashMap<SetKey, BTreeSet<(String, String)>>>,
    conflicts: Mutex<HashMap<SetKey, usize>>,
    failures: Mutex<HashMap<SetKey, u32>>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("node_port_range", &self.node_port_range)
            .finish_non_exhaustive()
    }
}

/// The watch caches a reconcile reads, and whether every one of them has been filled once.
#[derive(Clone)]
pub struct Caches {
    pub statefulsets: Store<StatefulSet>,
    pub services: Store<Service>,
    pub pods: Store<PartialObjectMeta<Pod>>,
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
        client: Client,
        caches: Caches,
        node_port_range: NodePortRange,
        recorder: Recorder,
        leadership: Leadership,
        metrics: Metrics,
    ) -> Self {
        let Caches {
            statefulsets,
            services,
            pods,
            synced,
        } = caches;
        Self {
            client,
            statefulsets,
            services,
            pods,
            synced,
            node_port_range,
            recorder,
            leadership,
            metrics,
            reported: Mutex::default(),
            conflicts: Mutex::default(),
            failures: Mutex::default(),
        }
    }
}

fn key_of(set: &StatefulSet) -> SetKey {
    SetKey {
        namespace: set.namespace().unwrap_or_default(),
        name: set.name_any(),
    }
}

pub async fn reconcile(set: Arc<StatefulSet>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    ctx.metrics.reconciles.inc();
    let result = if !ctx.synced.is_ready() {
        Ok(Action::requeue(CACHE_WAIT))
    } else if ctx.leadership.is_leader() {
        reconcile_leading(&set, &ctx).await
    } else {
        Ok(Action::await_change())
    };
    ctx.metrics
        .reconcile_duration
        .observe(started.elapsed().as_secs_f64());
    ctx.metrics
        .managed_services
        .set(i64::try_from(ctx.services.state().len()).unwrap_or(i64::MAX));
    if result.is_ok()
        && let Ok(mut failures) = ctx.failures.lock()
    {
        failures.remove(&key_of(&set));
    }
    result
}

/// Transient failures are retried with exponential backoff per StatefulSet (0.5 s doubling to 5 min).
pub fn error_policy(set: Arc<StatefulSet>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.error(error.category());
    let attempts = ctx.failures.lock().map_or(1, |mut failures| {
        let attempts = failures.entry(key_of(&set)).or_insert(0);
        *attempts = attempts.saturating_add(1);
        *attempts
    });
    let delay = Duration::from_millis(500)
        .saturating_mul(1 << attempts.min(10))
        .min(Duration::from_secs(300));
    tracing::warn!(statefulset = %key_of(&set), %error, retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

async fn reconcile_leading(set: &StatefulSet, ctx: &Context) -> Result<Action, Error> {
    let key = key_of(set);
    let Some(uid) = set.uid() else {
        return Ok(Action::await_change());
    };
    let services_api: Api<Service> = Api::namespaced(ctx.client.clone(), &key.namespace);
    let owned = owned_services(ctx, &key, &uid);

    let opt_in = match annotations::parse(set.annotations()) {
        Ok(Some(opt_in)) => opt_in,
        Ok(None) => {
            // Opting out is explicit: every Service this controller made for the StatefulSet goes.
            for service in &owned {
                delete_service(ctx, &services_api, service).await?;
            }
            forget(ctx, &key);
            return Ok(Action::await_change());
        }
        Err(invalid) => {
            // A broken annotation changes nothing: existing Services stay as they are.
            report(
                ctx,
                set,
                &key,
                vec![(invalid.reason().to_owned(), invalid.to_string())],
            )
            .await;
            return Ok(Action::await_change());
        }
    };

    let ordinals = wanted_ordinals(ctx, set, &key, &uid);
    let winners = desired::port_winners(&claims(ctx), &held_ports(ctx));
    let plan = desired::plan(&key, &opt_in, &ordinals, ctx.node_port_range, &winners);

    let mut warnings: Vec<(String, String)> = plan
        .skipped
        .iter()
        .map(|skipped| (skipped.reason().to_owned(), skipped.to_string()))
        .collect();
    // Independent Services are written concurrently: a StatefulSet scaled up by 100 needs 100
    // Services now, not one round trip after another.
    let outdated: Vec<(&DesiredService, bool)> = plan
        .services
        .iter()
        .filter_map(|wanted| {
            let actual = owned.iter().find(|service| service.name_any() == wanted.name);
            match actual {
                Some(actual) if desired::is_up_to_date(wanted, &key, &uid, actual) => None,
                actual => Some((wanted, actual.is_some())),
            }
        })
        .collect();
    let writes: Vec<_> = outdated
        .into_iter()
        .map(|(wanted, is_ours)| ensure_service(ctx, &services_api, &key, &uid, wanted, is_ours))
        .collect();
    let outcomes: Vec<Result<Applied, Error>> = futures::stream::iter(writes)
        .buffer_unordered(CONCURRENT_WRITES)
        .collect()
        .await;
    let mut refused = None;
    for outcome in outcomes {
        match outcome? {
            Applied::Written => {}
            Applied::Foreign(message) => warnings.push(("ForeignService".to_owned(), message)),
            Applied::Refused(error) => {
                if let Error::NodePortRefused { message, .. } = &error {
                    warnings.push(("NodePortRefused".to_owned(), message.clone()));
                }
                refused = Some(error);
            }
        }
    }

    for service in &owned {
        let ordinal = desired::ordinal_in_name(&key.name, &service.name_any());
        if ordinal.is_some_and(|ordinal| !ordinals.contains(&ordinal)) {
            delete_service(ctx, &services_api, service).await?;
        }
    }

    let conflicts = plan
        .skipped
        .iter()
        .filter(|skipped| matches!(skipped, Skipped::Conflict { .. }))
        .count();
    set_conflicts(ctx, &key, conflicts);
    report(ctx, set, &key, warnings).await;
    match refused {
        Some(error) => Err(error),
        None if conflicts > 0 => Ok(Action::requeue(CONFLICT_RECHECK)),
        None => Ok(Action::await_change()),
    }
}

/// What became of one wanted Service.
enum Applied {
    Written,
    /// A Service of that name exists and is not ours: left untouched.
    Foreign(String),
    /// The API server refused it; retried with backoff.
    Refused(Error),
}

/// Creates or repairs one Service with server-side apply — unless a Service of that name exists that
/// this StatefulSet does not control (`is_ours` says whether our cache has it as ours).
async fn ensure_service(
    ctx: &Context,
    api: &Api<Service>,
    key: &SetKey,
    uid: &str,
    wanted: &DesiredService,
    is_ours: bool,
) -> Result<Applied, Error> {
    if !is_ours {
        // Not ours in the cache; the API server has the last word on whether the name is free.
        let existing = api.get_opt(&wanted.name).await.map_err(Error::Api)?;
        if existing.is_some_and(|existing| desired::controller_uid(&existing) != Some(uid)) {
            return Ok(Applied::Foreign(format!(
                "pod ordinal {} gets no Service: a Service named {} exists and is not controlled by this StatefulSet; it is left untouched",
                wanted.ordinal, wanted.name
            )));
        }
    }
    let manifest = desired::service_manifest(wanted, key, uid);
    let params = PatchParams::apply(FIELD_MANAGER).force();
    ctx.metrics.write(Verb::Apply);
    match api.patch(&wanted.name, &params, &Patch::Apply(&manifest)).await {
        Ok(_) => {
            tracing::info!(statefulset = %key, service = %wanted.name, port = wanted.port, "applied Service");
            Ok(Applied::Written)
        }
        Err(kube::Error::Api(status)) if status.code == 422 && status.message.contains("nodePort") => {
            Ok(Applied::Refused(Error::NodePortRefused {
                service: wanted.name.clone(),
                port: wanted.port,
                message: status.message.clone(),
            }))
        }
        Err(error) => Err(Error::Api(error)),
    }
}

/// Services in the cache that this StatefulSet (this UID: not an earlier one of the same name) controls.
fn owned_services(ctx: &Context, key: &SetKey, uid: &str) -> Vec<Arc<Service>> {
    ctx.services
        .state()
        .into_iter()
        .filter(|service| {
            service.namespace().as_deref() == Some(key.namespace.as_str())
                && desired::controller_uid(service) == Some(uid)
        })
        .collect()
}

/// The ordinals that need a Service: the replicas asked for, and every pod that still exists.
fn wanted_ordinals(ctx: &Context, set: &StatefulSet, key: &SetKey, uid: &str) -> BTreeSet<u32> {
    // A StatefulSet without replicas means 1, as the API server defaults it.
    let replicas = set
        .spec
        .as_ref()
        .and_then(|spec| spec.replicas)
        .unwrap_or(1)
        .max(0)
        .unsigned_abs();
    desired::wanted_ordinals(replicas, pod_ordinals(ctx, key, uid))
}

/// Ordinals of the StatefulSet's existing pods, Terminating ones included.
fn pod_ordinals(ctx: &Context, key: &SetKey, uid: &str) -> Vec<u32> {
    ctx.pods
        .state()
        .iter()
        .filter(|pod| pod.namespace().as_deref() == Some(key.namespace.as_str()))
        .filter(|pod| {
            pod.owner_references()
                .iter()
                .any(|owner| owner.controller == Some(true) && owner.uid == uid)
        })
        .filter_map(|pod| {
            pod.labels()
                .get(POD_INDEX_LABEL)
                .and_then(|index| index.parse().ok())
                .or_else(|| desired::ordinal_in_name(&key.name, &pod.name_any()))
        })
        .collect()
}

/// What every opted-in StatefulSet in the cache wants, for settling port conflicts.
fn claims(ctx: &Context) -> Vec<Claim> {
    ctx.statefulsets
        .state()
        .iter()
        .filter(|set| set.meta().deletion_timestamp.is_none())
        .filter_map(|set| {
            let opt_in = annotations::parse(set.annotations()).ok().flatten()?;
            let uid = set.uid()?;
            let key = key_of(set);
            let ordinals = wanted_ordinals(ctx, set, &key, &uid);
            let created = set
                .meta()
                .creation_timestamp
                .as_ref()
                .map_or(i64::MAX, |time| time.0.as_second());
            Some(Claim {
                set: key,
                created,
                ports: desired::claimed_ports(&opt_in, &ordinals, ctx.node_port_range),
            })
        })
        .collect()
}

/// Node ports held by the Services we manage, and the StatefulSet each belongs to.
fn held_ports(ctx: &Context) -> BTreeMap<u16, SetKey> {
    let mut held = BTreeMap::new();
    for service in ctx.services.state() {
        let (Some(namespace), Some(set)) = (
            service.namespace(),
            service.labels().get(desired::STATEFULSET_LABEL).cloned(),
        ) else {
            continue;
        };
        let ports = service.spec.as_ref().and_then(|spec| spec.ports.as_ref());
        for node_port in ports.into_iter().flatten().filter_map(|port| port.node_port) {
            if let Ok(node_port) = u16::try_from(node_port) {
                held.insert(
                    node_port,
                    SetKey {
                        namespace: namespace.clone(),
                        name: set.clone(),
                    },
                );
            }
        }
    }
    held
}

async fn delete_service(ctx: &Context, api: &Api<Service>, service: &Service) -> Result<(), Error> {
    let name = service.name_any();
    // The UID precondition makes sure we delete the Service we looked at, never a newer one of that name.
    let params = DeleteParams {
        preconditions: Some(Preconditions {
            uid: service.uid(),
            resource_version: None,
        }),
        ..DeleteParams::background()
    };
    ctx.metrics.write(Verb::Delete);
    match api.delete(&name, &params).await {
        Ok(_) => {
            tracing::info!(namespace = ?service.namespace(), service = %name, "deleted Service");
            Ok(())
        }
        Err(kube::Error::Api(status)) if status.code == 404 || status.code == 409 => Ok(()),
        Err(error) => Err(Error::Api(error)),
    }
}

fn set_conflicts(ctx: &Context, key: &SetKey, count: usize) {
    if let Ok(mut conflicts) = ctx.conflicts.lock() {
        if count == 0 {
            conflicts.remove(key);
        } else {
            conflicts.insert(key.clone(), count);
        }
        // Deleted StatefulSets are never reconciled again: drop what we kept about them here.
        conflicts.retain(|key, _| still_exists(ctx, key));
        let total: usize = conflicts.values().sum();
        ctx.metrics
            .port_conflicts
            .set(i64::try_from(total).unwrap_or(i64::MAX));
    }
}

fn still_exists(ctx: &Context, key: &SetKey) -> bool {
    ctx.statefulsets
        .get(&ObjectRef::new(&key.name).within(&key.namespace))
        .is_some()
}

fn forget(ctx: &Context, key: &SetKey) {
    set_conflicts(ctx, key, 0);
    if let Ok(mut reported) = ctx.reported.lock() {
        reported.remove(key);
    }
}

/// One Warning Event on the StatefulSet and one log line per problem — once, not at every reconcile:
/// a problem is reported again only after it went away and came back.
async fn report(ctx: &Context, set: &StatefulSet, key: &SetKey, warnings: Vec<(String, String)>) {
    let current: BTreeSet<(String, String)> = warnings.into_iter().collect();
    let new: Vec<(String, String)> = match ctx.reported.lock() {
        Ok(mut reported) => {
            let previous = reported.insert(key.clone(), current.clone()).unwrap_or_default();
            reported.retain(|key, _| still_exists(ctx, key));
            current.difference(&previous).cloned().collect()
        }
        Err(_) => current.into_iter().collect(),
    };
    let reference = set.object_ref(&());
    for (reason, message) in new {
        ctx.metrics.error(Category::from_reason(&reason));
        tracing::warn!(statefulset = %key, reason = %reason, "{message}");
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
