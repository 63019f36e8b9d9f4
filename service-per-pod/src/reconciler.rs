//! One StatefulSet's reconcile: read the watch caches, ask [`crate::desired`] what should exist,
//! create what is missing, repair what drifted, delete what is no longer wanted, and tell the operator
//! (one Event and one log line per kind of problem) about anything it refused to do.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;

use daemon_kit::admin::Readiness;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Client, Resource, ResourceExt};

use crate::annotations::{self, Expose, OptIn};
use crate::cached_pod::{CachedPod, POD_INDEX_LABEL};
use crate::desired::{self, Claim, DesiredService, Limits, PodView, SetKey, SetView};
use crate::leader::Leadership;
use crate::metrics::{Category, Metrics, Verb};

pub const FIELD_MANAGER: &str = "service-per-pod";
/// How soon to look again when a reconcile comes before the caches are filled.
const CACHE_WAIT: Duration = Duration::from_millis(200);
/// Service writes in flight at once for one StatefulSet.
const CONCURRENT_WRITES: usize = 16;
/// While a StatefulSet loses a port to another, look again this often (the other may let it go).
const CONFLICT_RECHECK: Duration = Duration::from_secs(5);
/// A node port the API server refused is tried again after 1, 2, 4, 8, 16, then every 30 seconds: the
/// API server's own repair loop frees leaked ports every 3 minutes, and a bridge must not wait longer.
const REFUSED_RETRY_MAX: Duration = Duration::from_secs(30);
/// Other failures (the API server unreachable, ...) back off per StatefulSet up to this.
const BACKOFF_MAX: Duration = Duration::from_secs(60);
/// How long a write of ours may take to come back through the Service watch before the cache is
/// believed again (it takes milliseconds; a Service deleted meanwhile is looked at again after this).
const ECHO_WAIT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API error: {0}")]
    Api(#[source] kube::Error),
}

impl Error {
    pub fn category(&self) -> Category {
        match self {
            Error::Api(_) => Category::Api,
        }
    }
}

/// A node port the API server refused, and when to try it again.
#[derive(Clone, Copy, Debug)]
struct Refused {
    attempts: u32,
    next: Instant,
}

/// A write of ours the Service cache does not show yet. Reconciles come in bursts (every pod event
/// of a new StatefulSet is one), and one that reads the cache a moment after our write would write
/// again: a second create of the same Service is refused for its node port (422, "already
/// allocated") before its name is even checked, and a second repair patch is a wasted write.
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
    /// When the cache counts again for this Service, if it does not yet. `actual` is the cache's
    /// Service of that name.
    fn pending_until(&self, actual: Option<&Service>, now: Instant) -> Option<Instant> {
        let (at, still_stale) = match self {
            Echo::Created { uid, at } => (*at, actual.is_none_or(|s| s.uid().as_ref() != Some(uid))),
            Echo::Patched { stale, at } => (
                *at,
                actual.is_some_and(|s| s.resource_version().as_ref() == Some(stale)),
            ),
        };
        let until = at + ECHO_WAIT;
        // A Service replaced by someone else meanwhile (another UID) shows up as `still_stale` for a
        // create: the wait is bounded, and the reconcile after it looks at the cache again.
        (still_stale && until > now).then_some(until)
    }
}

/// What every reconcile shares.
pub struct Context {
    /// For writes: every call under the client's timeout (see `runtime`).
    pub writer: Client,
    pub statefulsets: Store<StatefulSet>,
    pub services: Store<Service>,
    pub pods: Store<CachedPod>,
    /// The EndpointSlices of `LoadBalancer` mode (ours only).
    pub slices: Store<EndpointSlice>,
    pub limits: Limits,
    pub recorder: Recorder,
    pub leadership: Leadership,
    /// Until every cache is filled, an absent Service may just not be listed yet: no writes before.
    synced: Readiness,
    pub metrics: Metrics,
    /// The warnings last reported per StatefulSet, so each is reported once, not at every reconcile.
    reported: Mutex<HashMap<SetKey, BTreeSet<(String, String)>>>,
    conflicts: Mutex<HashMap<SetKey, u64>>,
    refused: Mutex<HashMap<(SetKey, u16), Refused>>,
    failures: Mutex<HashMap<SetKey, u32>>,
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

/// The watch caches a reconcile reads, and whether every one of them has been filled once.
#[derive(Clone)]
pub struct Caches {
    pub statefulsets: Store<StatefulSet>,
    pub services: Store<Service>,
    pub pods: Store<CachedPod>,
    pub slices: Store<EndpointSlice>,
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
            services,
            pods,
            slices,
            synced,
        } = caches;
        Self {
            writer,
            statefulsets,
            services,
            pods,
            slices,
            synced,
            limits,
            recorder,
            leadership,
            metrics,
            reported: Mutex::default(),
            conflicts: Mutex::default(),
            refused: Mutex::default(),
            failures: Mutex::default(),
            echoes: Mutex::default(),
        }
    }
}

fn key_of(set: &StatefulSet) -> SetKey {
    SetKey {
        namespace: set.namespace().unwrap_or_default(),
        name: set.name_any(),
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
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
    if result.is_ok() {
        lock(&ctx.failures).remove(&key_of(&set));
    }
    result
}

/// Failures other than refused node ports are retried with exponential backoff per StatefulSet
/// (0.5 s doubling, at most a minute).
pub fn error_policy(set: Arc<StatefulSet>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.error(error.category());
    let attempts = {
        let mut failures = lock(&ctx.failures);
        let attempts = failures.entry(key_of(&set)).or_insert(0);
        *attempts = attempts.saturating_add(1);
        *attempts
    };
    let delay = Duration::from_millis(500)
        .saturating_mul(1 << attempts.min(10))
        .min(BACKOFF_MAX);
    tracing::warn!(statefulset = %key_of(&set), %error, retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

/// The caches read once per reconcile, indexed by owner: the cost of a reconcile grows with the pods
/// and Services there are, not with their product.
struct Snapshot {
    /// Pods by the UID of the StatefulSet that controls them, by ordinal.
    pods: HashMap<String, BTreeMap<u32, PodView>>,
    /// Services by the UID of their controller.
    services: HashMap<String, Vec<Arc<Service>>>,
    /// Node ports held by the Services we manage, and the StatefulSet each belongs to.
    held: BTreeMap<u16, SetKey>,
}

/// Where a pod is reached and whether it serves, as its EndpointSlice says it (what the EndpointSlice
/// controller would write for a selector): ready = Ready and not terminating; serving = Ready.
fn endpoint_of(pod: &CachedPod) -> Option<crate::public::Endpoint> {
    let ip = pod.status.pod_ip.clone().filter(|ip| !ip.is_empty())?;
    let is_ready = pod.is_ready();
    let terminating = pod.metadata.deletion_timestamp.is_some();
    Some(crate::public::Endpoint {
        ip,
        node: pod.spec.node_name.clone(),
        ready: is_ready && !terminating,
        serving: is_ready,
        terminating,
    })
}

impl Snapshot {
    fn read(ctx: &Context) -> Self {
        let mut pods: HashMap<String, BTreeMap<u32, PodView>> = HashMap::new();
        for pod in ctx.pods.state() {
            let Some(owner) = pod
                .owner_references()
                .iter()
                .find(|owner| owner.controller == Some(true) && owner.kind == "StatefulSet")
            else {
                continue;
            };
            let ordinal = pod
                .labels()
                .get(POD_INDEX_LABEL)
                .and_then(|index| index.parse().ok())
                .or_else(|| desired::ordinal_in_name(&owner.name, &pod.name_any()));
            if let Some(ordinal) = ordinal {
                pods.entry(owner.uid.clone()).or_default().insert(
                    ordinal,
                    PodView {
                        name: pod.name_any(),
                        uid: pod.uid().unwrap_or_default(),
                        base_port: annotations::pod_base_port(pod.annotations()),
                        endpoint: endpoint_of(&pod),
                    },
                );
            }
        }
        let mut services: HashMap<String, Vec<Arc<Service>>> = HashMap::new();
        let mut held = BTreeMap::new();
        for service in ctx.services.state() {
            if let (Some(namespace), Some(set)) = (
                service.namespace(),
                service.labels().get(desired::STATEFULSET_LABEL).cloned(),
            ) {
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
            if let Some(uid) = desired::controller_uid(&service) {
                services.entry(uid.to_owned()).or_default().push(service.clone());
            }
        }
        Self { pods, services, held }
    }

    fn view(&self, set: &StatefulSet, opt_in: OptIn) -> Option<SetView> {
        let uid = set.uid()?;
        // A StatefulSet without replicas means 1, as the API server defaults it.
        let replicas = set
            .spec
            .as_ref()
            .and_then(|spec| spec.replicas)
            .unwrap_or(1)
            .max(0)
            .unsigned_abs();
        let created = set
            .meta()
            .creation_timestamp
            .as_ref()
            .map_or(i64::MAX, |time| time.0.as_second());
        Some(SetView {
            key: key_of(set),
            pods: self.pods.get(&uid).cloned().unwrap_or_default(),
            uid,
            opt_in,
            replicas,
            created,
        })
    }

    /// What every opted-in StatefulSet in the cache claims, for settling port conflicts.
    fn claims(&self, ctx: &Context) -> Vec<Claim> {
        ctx.statefulsets
            .state()
            .iter()
            .filter(|set| set.meta().deletion_timestamp.is_none())
            .filter_map(|set| {
                let opt_in = annotations::parse(set.annotations()).ok().flatten()?;
                let view = self.view(set, opt_in)?;
                Some(Claim {
                    ports: desired::claimed_ports(&view, &ctx.limits),
                    set: view.key,
                    created: view.created,
                })
            })
            .collect()
    }
}

async fn reconcile_leading(set: &StatefulSet, ctx: &Context) -> Result<Action, Error> {
    let key = key_of(set);
    let Some(uid) = set.uid() else {
        return Ok(Action::await_change());
    };
    let services_api: Api<Service> = Api::namespaced(ctx.writer.clone(), &key.namespace);
    let snapshot = Snapshot::read(ctx);
    let owned: Vec<Arc<Service>> = snapshot
        .services
        .get(&uid)
        .map(|services| {
            services
                .iter()
                .filter(|service| service.namespace().as_deref() == Some(key.namespace.as_str()))
                .cloned()
                .collect()
        })
        .unwrap_or_default();

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
    let Some(view) = snapshot.view(set, opt_in) else {
        return Ok(Action::await_change());
    };
    let winners = desired::port_winners(&snapshot.claims(ctx), &snapshot.held);
    let plan = desired::plan(&view, &ctx.limits, &winners);
    // The index of every pod and Service is not held across the writes below: with a few reconciles
    // waiting on the API server at once, their snapshots were a good part of the controller's memory.
    drop((snapshot, winners));

    let mut warnings: Vec<(String, String)> = plan
        .refusals
        .iter()
        .map(|refusal| (refusal.reason().to_owned(), refusal.to_string()))
        .collect();
    if let Some((ordinals, base)) = &plan.kept_base_ports {
        warnings.push((
            "BasePortChanged".to_owned(),
            format!(
                "pod ordinals {ordinals} keep the node ports of the base port they were created with until they are replaced; \
                 pods created from now on get base port {base}"
            ),
        ));
    }

    if let Expose::LoadBalancer { service } = &view.opt_in.expose {
        let name = crate::public::service_name(&key.name, service.as_deref());
        warnings.extend(reconcile_public(ctx, &services_api, &name, &plan, &view, &owned).await?);
        let conflicts = conflict_count(&plan);
        set_conflicts(ctx, &key, conflicts);
        report(ctx, set, &key, warnings).await;
        return Ok(if conflicts > 0 {
            Action::requeue(CONFLICT_RECHECK)
        } else {
            Action::await_change()
        });
    }

    // What needs a write, and how: create what is absent, apply what is ours and drifted. Ports the
    // API server refused wait for their own retry time without holding up the others.
    let now = Instant::now();
    let mut next_retry: Option<Instant> = None;
    let mut writes = Vec::new();
    for (index, wanted) in plan.services.iter().enumerate() {
        let actual = owned.iter().find(|service| service.name_any() == wanted.name);
        if let Some(until) = awaited_echo(ctx, &key.namespace, &wanted.name, actual.map(AsRef::as_ref), now) {
            next_retry = Some(next_retry.map_or(until, |next| next.min(until)));
            continue;
        }
        if actual.is_some_and(|actual| desired::is_up_to_date(wanted, &key, &uid, actual)) {
            lock(&ctx.refused).remove(&(key.clone(), wanted.port));
            continue;
        }
        if let Some(refused) = lock(&ctx.refused).get(&(key.clone(), wanted.port))
            && refused.next > now
        {
            next_retry = Some(next_retry.map_or(refused.next, |next| next.min(refused.next)));
            continue;
        }
        writes.push((index, actual.cloned()));
    }
    // Each write's future is made when it starts: made all at once, a hundred of them (kilobytes each)
    // sat in memory while the first few waited on the API server.
    let outcomes: Vec<(u16, Result<Written, Error>)> = {
        let (plan, services_api, key, uid) = (&plan, &services_api, &key, &uid);
        let writes = writes
            .into_iter()
            .map(|(index, actual): (usize, Option<Arc<Service>>)| async move {
                ensure_service(
                    ctx,
                    services_api,
                    key,
                    uid,
                    &plan.services[index],
                    actual.as_deref(),
                )
                .await
            });
        futures::stream::iter(writes)
            .buffer_unordered(CONCURRENT_WRITES)
            .collect()
            .await
    };
    for (port, outcome) in outcomes {
        match outcome? {
            Written::Done | Written::NotLeading => {
                lock(&ctx.refused).remove(&(key.clone(), port));
            }
            Written::Foreign(message) => warnings.push(("ForeignService".to_owned(), message)),
            Written::Refused(message) => {
                let retry_at = note_refused(ctx, &key, port);
                next_retry = Some(next_retry.map_or(retry_at, |next| next.min(retry_at)));
                warnings.push(("NodePortRefused".to_owned(), message));
            }
        }
    }
    update_refused_gauge(ctx);

    let wanted = desired::wanted(&view);
    for service in &owned {
        // A per-pod Service no longer wanted, or the one Service of `LoadBalancer` mode after a switch
        // back (its EndpointSlices go with it).
        match desired::ordinal_in_name(&key.name, &service.name_any()) {
            Some(ordinal) if wanted.contains(ordinal) => {}
            _ => delete_service(ctx, &services_api, service).await?,
        }
    }

    let conflicts = conflict_count(&plan);
    set_conflicts(ctx, &key, conflicts);
    report(ctx, set, &key, warnings).await;
    let recheck = match (next_retry, conflicts > 0) {
        (Some(at), true) => Some(at.saturating_duration_since(now).min(CONFLICT_RECHECK)),
        (Some(at), false) => Some(at.saturating_duration_since(now)),
        (None, true) => Some(CONFLICT_RECHECK),
        (None, false) => None,
    };
    Ok(recheck.map_or_else(Action::await_change, |delay| {
        Action::requeue(delay.max(Duration::from_millis(100)))
    }))
}

/// Until when a write of ours to `namespace/name` is still on its way to the cache (so the Service is
/// left alone until then); forgets the write once the cache shows it.
fn awaited_echo(
    ctx: &Context,
    namespace: &str,
    name: &str,
    actual: Option<&Service>,
    now: Instant,
) -> Option<Instant> {
    let mut echoes = lock(&ctx.echoes);
    let key = (namespace.to_owned(), name.to_owned());
    let until = echoes.get(&key)?.pending_until(actual, now);
    if until.is_none() {
        echoes.remove(&key);
    }
    until
}

fn expect_echo(ctx: &Context, namespace: &str, name: &str, echo: Echo) {
    let mut echoes = lock(&ctx.echoes);
    // Writes whose echo never came (their Service deleted at once) are dropped once stale.
    let now = Instant::now();
    echoes.retain(|_, echo| match echo {
        Echo::Created { at, .. } | Echo::Patched { at, .. } => *at + ECHO_WAIT > now,
    });
    echoes.insert((namespace.to_owned(), name.to_owned()), echo);
}

fn conflict_count(plan: &desired::Plan) -> u64 {
    plan.refusals
        .iter()
        .filter(|refusal| matches!(refusal, desired::Refusal::Conflict { .. }))
        .map(|refusal| refusal.ordinals().len())
        .sum()
}

/// `LoadBalancer` mode: the one Service with a port per planned ordinal, and an EndpointSlice per pod
/// that has an address; per-pod Services of NodePort mode go. Returns the warnings to report.
async fn reconcile_public(
    ctx: &Context,
    services_api: &Api<Service>,
    name: &str,
    plan: &desired::Plan,
    view: &SetView,
    owned: &[Arc<Service>],
) -> Result<Vec<(String, String)>, Error> {
    let (key, uid) = (&view.key, view.uid.as_str());
    let mut warnings = Vec::new();
    for service in owned.iter().filter(|service| service.name_any() != name) {
        delete_service(ctx, services_api, service).await?;
    }
    if !ctx.leadership.is_leader() {
        return Ok(warnings);
    }
    let manifest = crate::public::service_manifest(name, key, uid, &plan.services);
    let actual = owned.iter().find(|service| service.name_any() == name);
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..PatchParams::default()
    };
    let service_uid = match actual {
        Some(actual) => {
            let current = serde_json::to_value(actual.as_ref()).unwrap_or_default();
            if !crate::public::is_up_to_date(&manifest, &current) {
                ctx.metrics.write(Verb::Patch);
                let patch = crate::public::repair_patch(&manifest, actual.metadata.uid.as_deref());
                match services_api.patch(name, &params, &Patch::Merge(&patch)).await {
                    Ok(_) => tracing::info!(statefulset = %key, service = %name, "wrote Service"),
                    Err(kube::Error::Api(status)) if status.code == 422 => {
                        warnings.push((
                            "NodePortRefused".to_owned(),
                            format!(
                                "the API server refused the ports of Service {name}: {}",
                                status.message
                            ),
                        ));
                    }
                    Err(error) => return Err(Error::Api(error)),
                }
            }
            actual.metadata.uid.clone()
        }
        None => {
            ctx.metrics.write(Verb::Create);
            let service: Service = serde_json::from_value(manifest)
                .map_err(|error| Error::Api(kube::Error::SerdeError(error)))?;
            let post = PostParams {
                field_manager: Some(FIELD_MANAGER.to_owned()),
                ..PostParams::default()
            };
            match services_api.create(&post, &service).await {
                Ok(created) => {
                    tracing::info!(statefulset = %key, service = %name, "created Service");
                    created.metadata.uid
                }
                Err(kube::Error::Api(status)) if status.code == 409 => {
                    match services_api.get_opt(name).await.map_err(Error::Api)? {
                        Some(existing) if desired::controller_uid(&existing) == Some(uid) => {
                            existing.metadata.uid
                        }
                        _ => {
                            warnings.push(("ForeignService".to_owned(), format!(
                                "no Service for the StatefulSet's pods: a Service named {name} exists and is not controlled by this StatefulSet; it is left untouched"
                            )));
                            return Ok(warnings);
                        }
                    }
                }
                Err(kube::Error::Api(status)) if status.code == 422 => {
                    warnings.push((
                        "NodePortRefused".to_owned(),
                        format!("the API server refused Service {name}: {}", status.message),
                    ));
                    return Ok(warnings);
                }
                Err(error) => return Err(Error::Api(error)),
            }
        }
    };
    let Some(service_uid) = service_uid else {
        return Ok(warnings);
    };
    reconcile_slices(ctx, key, name, &service_uid, plan, view).await?;
    Ok(warnings)
}

/// One EndpointSlice per planned pod with an address, owned by the Service; every other slice of ours for
/// this StatefulSet goes.
async fn reconcile_slices(
    ctx: &Context,
    key: &SetKey,
    service: &str,
    service_uid: &str,
    plan: &desired::Plan,
    view: &SetView,
) -> Result<(), Error> {
    let api: Api<EndpointSlice> = Api::namespaced(ctx.writer.clone(), &key.namespace);
    let existing: Vec<Arc<EndpointSlice>> = ctx
        .slices
        .state()
        .into_iter()
        .filter(|slice| slice.namespace().as_deref() == Some(key.namespace.as_str()))
        .filter(|slice| slice.labels().get(desired::STATEFULSET_LABEL) == Some(&key.name))
        .collect();
    let mut wanted_names = BTreeSet::new();
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..PatchParams::default()
    };
    for wanted in &plan.services {
        let snapshot_endpoint = view
            .pods
            .get(&wanted.ordinal)
            .filter(|pod| wanted.pod.as_ref().is_some_and(|owner| owner.uid == pod.uid))
            .and_then(|pod| pod.endpoint.clone());
        let Some(endpoint) = snapshot_endpoint else {
            continue;
        };
        let manifest = crate::public::slice_manifest(service, service_uid, key, wanted, &endpoint);
        let slice_name = crate::public::slice_name(service, wanted.ordinal);
        wanted_names.insert(slice_name.clone());
        let actual = existing.iter().find(|slice| slice.name_any() == slice_name);
        let result = match actual {
            Some(actual) => {
                let current = serde_json::to_value(actual.as_ref()).unwrap_or_default();
                if crate::public::is_up_to_date(&manifest, &current) {
                    continue;
                }
                ctx.metrics.write(Verb::Patch);
                let patch = crate::public::repair_patch(&manifest, actual.metadata.uid.as_deref());
                api.patch(&slice_name, &params, &Patch::Merge(&patch))
                    .await
                    .map(|_| ())
            }
            None => {
                ctx.metrics.write(Verb::Create);
                let slice: EndpointSlice = serde_json::from_value(manifest)
                    .map_err(|error| Error::Api(kube::Error::SerdeError(error)))?;
                let post = PostParams {
                    field_manager: Some(FIELD_MANAGER.to_owned()),
                    ..PostParams::default()
                };
                match api.create(&post, &slice).await {
                    Err(kube::Error::Api(status)) if status.code == 409 => Ok(()),
                    other => other.map(|_| ()),
                }
            }
        };
        result.map_err(Error::Api)?;
    }
    for slice in existing
        .iter()
        .filter(|slice| !wanted_names.contains(&slice.name_any()))
    {
        ctx.metrics.write(Verb::Delete);
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                uid: slice.uid(),
                resource_version: None,
            }),
            ..DeleteParams::background()
        };
        match api.delete(&slice.name_any(), &params).await {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 404 || status.code == 409 => {}
            Err(error) => return Err(Error::Api(error)),
        }
    }
    Ok(())
}

/// Counts another refusal of `port` and says when to try it next (1 s doubling, at most 30 s).
fn note_refused(ctx: &Context, key: &SetKey, port: u16) -> Instant {
    let mut refused = lock(&ctx.refused);
    let entry = refused.entry((key.clone(), port)).or_insert(Refused {
        attempts: 0,
        next: Instant::now(),
    });
    entry.attempts = entry.attempts.saturating_add(1);
    let delay = Duration::from_secs(1)
        .saturating_mul(1 << (entry.attempts - 1).min(5))
        .min(REFUSED_RETRY_MAX);
    entry.next = Instant::now() + delay;
    entry.next
}

fn update_refused_gauge(ctx: &Context) {
    let mut refused = lock(&ctx.refused);
    refused.retain(|(key, _), _| still_exists(ctx, key));
    ctx.metrics
        .refused_node_ports
        .set(i64::try_from(refused.len()).unwrap_or(i64::MAX));
}

/// What became of one wanted Service.
enum Written {
    Done,
    /// Leadership ended before the write: nothing was sent.
    NotLeading,
    /// A Service of that name exists and is not ours: left untouched.
    Foreign(String),
    /// The API server refused its node port; retried on its own schedule.
    Refused(String),
}

/// Creates an absent Service, or repairs one this StatefulSet controls. Never touches anyone else's:
/// an absent Service is only ever *created* (a create that finds one of that name fails), and a repair is
/// a merge patch of our fields, conditioned on the resourceVersion of the Service our cache shows we
/// control. (Not server-side apply: fields a create set belong to an "Update" manager, which a later
/// apply would never remove — a changed port would leave its old entry behind.)
async fn ensure_service(
    ctx: &Context,
    api: &Api<Service>,
    key: &SetKey,
    uid: &str,
    wanted: &DesiredService,
    actual: Option<&Service>,
) -> (u16, Result<Written, Error>) {
    let port = wanted.port;
    if !ctx.leadership.is_leader() {
        return (port, Ok(Written::NotLeading));
    }
    // A Service of ours on the wrong node port is replaced (see `desired::node_ports_match`).
    let actual = match actual {
        Some(actual) if !desired::node_ports_match(wanted, actual) => {
            if let Err(error) = delete_service(ctx, api, actual).await {
                return (port, Err(error));
            }
            None
        }
        other => other,
    };
    let is_ours = actual.is_some();
    let result = if let Some(actual) = actual {
        ctx.metrics.write(Verb::Patch);
        let params = PatchParams {
            field_manager: Some(FIELD_MANAGER.to_owned()),
            ..PatchParams::default()
        };
        let patch = desired::repair_patch(wanted, key, uid, actual);
        let stale = actual.resource_version().unwrap_or_default();
        api.patch(&wanted.name, &params, &Patch::Merge(&patch))
            .await
            .map(|_| {
                let at = Instant::now();
                expect_echo(ctx, &key.namespace, &wanted.name, Echo::Patched { stale, at });
            })
    } else {
        let manifest = desired::service_manifest(wanted, key, uid);
        ctx.metrics.write(Verb::Create);
        let service: Service = match serde_json::from_value(manifest) {
            Ok(service) => service,
            Err(error) => return (port, Err(Error::Api(kube::Error::SerdeError(error)))),
        };
        let params = PostParams {
            field_manager: Some(FIELD_MANAGER.to_owned()),
            ..PostParams::default()
        };
        api.create(&params, &service).await.map(|created| {
            let echo = Echo::Created {
                uid: created.uid().unwrap_or_default(),
                at: Instant::now(),
            };
            expect_echo(ctx, &key.namespace, &wanted.name, echo);
        })
    };
    let outcome = match result {
        Ok(()) => {
            tracing::info!(statefulset = %key, service = %wanted.name, port, created = !is_ours, "wrote Service");
            Ok(Written::Done)
        }
        // A repair whose Service was replaced meanwhile (another UID): the watch brings the news.
        Err(kube::Error::Api(status))
            if is_ours && (status.code == 409 || status.code == 422) && status.message.contains("uid") =>
        {
            tracing::info!(statefulset = %key, service = %wanted.name, "the Service changed under us; looking again");
            Ok(Written::Done)
        }
        Err(kube::Error::Api(status)) if status.code == 409 && status.reason == "AlreadyExists" => {
            // (A Service we just deleted to replace it may still be going: looked at again then.)
            // Ours, created a moment ago and not in the cache yet — or someone else's.
            match api.get_opt(&wanted.name).await {
                Ok(Some(existing)) if desired::controller_uid(&existing) == Some(uid) => Ok(Written::Done),
                Ok(_) => Ok(Written::Foreign(format!(
                    "pod ordinal {} gets no Service: a Service named {} exists and is not controlled by this StatefulSet; it is left untouched",
                    wanted.ordinal, wanted.name
                ))),
                Err(error) => Err(Error::Api(error)),
            }
        }
        Err(kube::Error::Api(status)) if status.code == 422 && status.message.contains("nodePort") => {
            // A create of a Service that exists is refused for its node port before its name is
            // checked: when the Service of that name is ours, it is no refusal.
            if !is_ours
                && let Ok(Some(existing)) = api.get_opt(&wanted.name).await
                && desired::controller_uid(&existing) == Some(uid)
            {
                return (port, Ok(Written::Done));
            }
            tracing::warn!(statefulset = %key, service = %wanted.name, port, "node port refused: {}", status.message);
            Ok(Written::Refused(format!(
                "the API server refused node port {port} for Service {}: {} (tried again within {} s)",
                wanted.name,
                status.message,
                REFUSED_RETRY_MAX.as_secs()
            )))
        }
        Err(error) => Err(Error::Api(error)),
    };
    (port, outcome)
}

async fn delete_service(ctx: &Context, api: &Api<Service>, service: &Service) -> Result<(), Error> {
    if !ctx.leadership.is_leader() {
        return Ok(());
    }
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

fn set_conflicts(ctx: &Context, key: &SetKey, count: u64) {
    let mut conflicts = lock(&ctx.conflicts);
    if count == 0 {
        conflicts.remove(key);
    } else {
        conflicts.insert(key.clone(), count);
    }
    // Deleted StatefulSets are never reconciled again: drop what we kept about them here.
    conflicts.retain(|key, _| still_exists(ctx, key));
    let total: u64 = conflicts.values().sum();
    ctx.metrics
        .port_conflicts
        .set(i64::try_from(total).unwrap_or(i64::MAX));
}

fn still_exists(ctx: &Context, key: &SetKey) -> bool {
    ctx.statefulsets
        .get(&ObjectRef::new(&key.name).within(&key.namespace))
        .is_some()
}

fn forget(ctx: &Context, key: &SetKey) {
    set_conflicts(ctx, key, 0);
    lock(&ctx.reported).remove(key);
    lock(&ctx.refused).retain(|(refused_key, _), _| refused_key != key);
}

/// One Warning Event on the StatefulSet and one log line per problem — once, not at every reconcile:
/// a problem is reported again only after it went away and came back.
async fn report(ctx: &Context, set: &StatefulSet, key: &SetKey, warnings: Vec<(String, String)>) {
    let current: BTreeSet<(String, String)> = warnings.into_iter().collect();
    let new: Vec<(String, String)> = {
        let mut reported = lock(&ctx.reported);
        let previous = reported.insert(key.clone(), current.clone()).unwrap_or_default();
        reported.retain(|key, _| still_exists(ctx, key));
        current.difference(&previous).cloned().collect()
    };
    let reference = set.object_ref(&());
    for (reason, message) in new {
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
        // Never longer than the wait: a Service deleted at once is created again after it.
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
        assert_eq!(echo.pending_until(Some(&service("a", "7")), at + ECHO_WAIT), None);
    }
}
