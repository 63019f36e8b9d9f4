//! Wiring: the Kubernetes client, the watches, leader election, the admin server, shutdown.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use daemon_kit::admin::{self, BoundServer, Readiness};
use daemon_kit::shutdown::Shutdown;
use futures::StreamExt;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::controller::{self, Controller};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use prometheus_client::registry::Registry;

use crate::cached_pod::CachedPod;
use crate::cli::Cli;
use crate::desired::{Limits, MANAGED_SELECTOR};
use crate::grants::Grants;
use crate::index::{Change, Index};
use crate::leader::{Elector, Leadership, LeaseSettings};
use crate::metrics::Metrics;
use crate::reconciler::{self, Caches, Context};

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot connect to Kubernetes: {0}")]
    Client(#[source] kube::Error),
    #[error("cannot read the Kubernetes client configuration: {0}")]
    Config(#[source] kube::config::InferConfigError),
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Admin(#[from] admin::ServeError),
    #[error("cannot install signal handlers: {0}")]
    Signals(#[source] std::io::Error),
    #[error("leader election stopped unexpectedly; exiting so the pod is restarted")]
    ElectorStopped,
}

impl RunError {
    /// Exit code: 2 for a configuration the operator must fix, 1 for everything else.
    pub fn exit_code(&self) -> u8 {
        match self {
            RunError::Usage(_) => 2,
            _ => 1,
        }
    }
}

/// Everything is reconciled this often: what a watch may have missed is caught within this time, and a
/// reconcile with nothing to do writes nothing.
const RESYNC_PERIOD: Duration = Duration::from_secs(300);

/// Pods of StatefulSets carry this label; watching only them keeps the cache small.
const STATEFULSET_POD_SELECTOR: &str = "statefulset.kubernetes.io/pod-name";

/// The grants in force: the flag's, or — for a controller that watches one namespace and was given
/// none — the whole range to that namespace.
fn limits(cli: &Cli) -> Result<Limits, RunError> {
    let grants = match (&cli.namespace, cli.port_grants.is_empty()) {
        (Some(namespace), true) => {
            Grants::whole_range(namespace, cli.node_port_range).and(namespace, cli.direct_port_range)
        }
        _ => cli.port_grants.clone(),
    };
    grants
        .check_within(&[cli.node_port_range, cli.direct_port_range])
        .map_err(RunError::Usage)?;
    if grants.is_empty() {
        tracing::warn!(
            "no node ports are granted to any namespace (--port-grants): every StatefulSet will be refused"
        );
    }
    Ok(Limits {
        range: cli.node_port_range,
        direct_range: cli.direct_port_range,
        grants,
    })
}

pub async fn run(cli: Cli) -> Result<(), RunError> {
    let limits = limits(&cli)?;
    let shutdown = Shutdown::install().map_err(RunError::Signals)?;
    let identity = cli.identity.clone().unwrap_or_else(host_name);
    let mut config = kube::Config::infer().await.map_err(RunError::Config)?;
    // Which replica sent a request, in the API server's audit log.
    if let Ok(agent) = http::HeaderValue::from_str(&format!(
        "service-per-pod/{} ({identity})",
        env!("CARGO_PKG_VERSION")
    )) {
        config.headers.push((http::header::USER_AGENT, agent));
    }
    // Watches keep their connection open on purpose; everything else must answer in time.
    let client = Client::try_from(config.clone()).map_err(RunError::Client)?;
    let mut writer_config = config;
    writer_config.read_timeout = Some(cli.api_timeout);
    writer_config.write_timeout = Some(cli.api_timeout);
    writer_config.connect_timeout = Some(cli.api_timeout);
    writer_config.reset_reader_on_write = true;
    let writer = Client::try_from(writer_config).map_err(RunError::Client)?;

    let mut registry = Registry::default();
    let metrics = Metrics::register(&mut registry);
    let readiness = Readiness::default();
    let admin = BoundServer::bind(cli.admin_addr).await?;
    tracing::info!(addr = %admin.local_addr(), "admin server listening");
    let admin_stop = shutdown.clone();
    let admin_task = tokio::spawn(admin.serve(
        admin::router(readiness.clone(), Arc::new(registry)),
        Default::default(),
        async move { admin_stop.draining().await },
    ));

    // The Lease is released only once the controller has stopped writing: `release` fires then.
    let (release, released) = tokio::sync::oneshot::channel::<()>();
    let (leadership, mut elector_task) = if cli.leader_election {
        let namespace = cli
            .lease_namespace
            .clone()
            .or_else(|| std::env::var("POD_NAMESPACE").ok())
            .unwrap_or_else(|| "default".to_owned());
        let settings = LeaseSettings::new(
            cli.lease_name.clone(),
            namespace.clone(),
            identity.clone(),
            Duration::from_secs(u64::from(cli.lease_duration_seconds)),
        );
        settings
            .check_api_timeout(cli.api_timeout)
            .map_err(RunError::Usage)?;
        let (elector, leadership) =
            Elector::new(Api::<Lease>::namespaced(writer.clone(), &namespace), settings);
        let task = tokio::spawn(elector.run(async move {
            let _ = released.await;
        }));
        (leadership, Some(task))
    } else {
        (Leadership::always(), None)
    };

    let (statefulsets, services, pods, slices): (
        Api<StatefulSet>,
        Api<Service>,
        Api<CachedPod>,
        Api<EndpointSlice>,
    ) = match cli.namespace.as_deref() {
        Some(namespace) => (
            Api::namespaced(client.clone(), namespace),
            Api::namespaced(client.clone(), namespace),
            Api::namespaced(client.clone(), namespace),
            Api::namespaced(client.clone(), namespace),
        ),
        None => (
            Api::all(client.clone()),
            Api::all(client.clone()),
            Api::all(client.clone()),
            Api::all(client.clone()),
        ),
    };

    // Ready once every watch has listed everything once. (Not `Store::wait_until_ready`: its
    // readiness wakes only one waiter, and the controller itself waits on the StatefulSet store.)
    let caches = CacheSync::new(readiness.clone(), 4);
    // A relist after the first (an outage, a 410) may have replaced deletions we never saw: everything
    // is reconciled then. So is everything every few minutes, which costs nothing when nothing changed.
    let (relisted, relists) = tokio::sync::mpsc::unbounded_channel::<()>();
    let index = Index::default();
    let (set_store, set_writer) = reflector::store();
    let set_stream = reflector::reflector(
        set_writer,
        caches.track(
            watcher(statefulsets, watcher::Config::default())
                .modify(|set: &mut StatefulSet| {
                    // The pod template is most of a StatefulSet, and nothing here reads it.
                    if let Some(spec) = set.spec.as_mut() {
                        spec.template = Default::default();
                    }
                    slim(set);
                })
                .backoff(WatchBackoff::default()),
        ),
    )
    .applied_objects();
    let service_stream = indexed(
        caches.track(
            watcher(services, list_config().labels(MANAGED_SELECTOR))
                .modify(crate::desired::slim_service)
                .backoff(WatchBackoff::default()),
        ),
        relisted.clone(),
        {
            let index = index.clone();
            move |event| index.apply_service(event)
        },
    );
    // Of a pod: identity, owners, deletion state, its pod-index label and base-port annotation, and for
    // `LoadBalancer` mode its node, IP and deletion state (`CachedPod::slim`).
    let pod_stream = indexed(
        caches.track(
            watcher(pods, list_config().labels(STATEFULSET_POD_SELECTOR))
                .modify(CachedPod::slim)
                .backoff(WatchBackoff::default()),
        ),
        relisted.clone(),
        {
            let index = index.clone();
            move |event| index.apply_pod(event)
        },
    );
    let slice_stream = indexed(
        caches.track(
            watcher(
                slices,
                watcher::Config::default().labels(crate::public::SLICE_SELECTOR),
            )
            .modify(slim)
            .backoff(WatchBackoff::default()),
        ),
        relisted,
        {
            let index = index.clone();
            move |event| index.apply_slice(event)
        },
    );

    // A pod triggers the reconcile of the StatefulSet that owns it — by namespace, name *and* UID — when
    // that StatefulSet has opted in: one lookup. A pod naming the UID of a StatefulSet of another namespace
    // (a forged owner) triggers that StatefulSet, which reports it (the rare path scans the store).
    let owner_of = {
        let store = set_store.clone();
        move |namespace: &str, name: &str, uid: &str| {
            let local = store.get(&ObjectRef::<StatefulSet>::new(name).within(namespace));
            let set = match local {
                Some(set) if set.metadata.uid.as_deref() == Some(uid) => Some(set),
                _ => store
                    .state()
                    .into_iter()
                    .find(|set| set.metadata.uid.as_deref() == Some(uid)),
            }?;
            let namespace = set.namespace()?;
            set.annotations()
                .contains_key(crate::annotations::BASE_PORT)
                .then(|| ObjectRef::<StatefulSet>::new(&set.name_any()).within(&namespace))
        }
    };
    let controller = Controller::for_stream(set_stream, set_store.clone())
        .with_config(controller::Config::default().concurrency(4))
        // Each watch backs off on its own (WatchBackoff). The controller's default would add a second,
        // shared backoff over all of them (up to 30 s, jittered to about a minute, reset only after two
        // quiet minutes): after an API server restart every watch's errors (refused connections, 403s
        // while its RBAC caches fill, 410s) compounded there and froze every watch, healthy ones too,
        // for 1–3 minutes.
        .trigger_backoff(NoTriggerBackoff)
        .owns_stream(service_stream)
        .watches_stream(slice_stream, |slice: EndpointSlice| {
            // A slice changed or removed by someone else: its StatefulSet repairs it.
            let namespace = slice.namespace()?;
            let set = slice.labels().get(crate::desired::STATEFULSET_LABEL)?;
            Some(ObjectRef::<StatefulSet>::new(set).within(&namespace))
        })
        .watches_stream(pod_stream, move |pod: CachedPod| {
            // Pods of StatefulSets that have not opted in cost one lookup, nothing more.
            let namespace = pod.namespace()?;
            let owner = pod
                .owner_references()
                .iter()
                .find(|o| o.controller == Some(true) && o.kind == "StatefulSet")?;
            owner_of(&namespace, &owner.name, &owner.uid)
        })
        .reconcile_all_on(futures::stream::select_all([
            became_leader(leadership.clone(), metrics.clone()).boxed(),
            tokio_stream_of(relists).boxed(),
            resync(RESYNC_PERIOD).boxed(),
        ]));

    let reporter = Reporter {
        controller: "service-per-pod".to_owned(),
        instance: Some(identity),
    };
    let caches = Caches {
        statefulsets: set_store,
        index,
        synced: readiness.clone(),
    };
    let ctx = Arc::new(Context::new(
        writer.clone(),
        caches,
        limits,
        Recorder::new(writer, reporter),
        leadership,
        metrics,
    ));

    let stop = shutdown.clone();
    let abort = shutdown.clone();
    let controller_run = controller
        .graceful_shutdown_on(async move { stop.draining().await })
        .run(reconciler::reconcile, reconciler::error_policy, ctx)
        .for_each(|result| async move {
            if let Err(error) = result {
                tracing::debug!(%error, "controller event");
            }
        });
    let elector_ended = async {
        match elector_task.as_mut() {
            Some(task) => {
                let _ = task.await;
            }
            None => std::future::pending().await,
        }
    };
    let outcome = tokio::select! {
        _ = controller_run => {
            tracing::info!("controller stopped");
            Ok(())
        }
        _ = abort.aborting() => {
            tracing::warn!("second stop signal: exiting without waiting");
            Ok(())
        }
        _ = elector_ended => Err(RunError::ElectorStopped),
    };
    readiness.set(false);
    // No reconcile runs any more: now the Lease may go.
    let _ = release.send(());
    if let Some(task) = elector_task
        && !task.is_finished()
    {
        let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
    }
    outcome?;
    let _ = admin_task.await;
    Ok(())
}

/// A `()` each time this replica becomes the leader: everything is reconciled then, since a standby's
/// reconciles wrote nothing.
fn became_leader(leadership: Leadership, metrics: Metrics) -> impl futures::Stream<Item = ()> + Send {
    futures::stream::unfold((leadership.changes(), false), move |(mut changes, was_leader)| {
        let metrics = metrics.clone();
        let leadership = leadership.clone();
        async move {
            let mut was_leader = was_leader;
            loop {
                changes.borrow_and_update();
                let leading = leadership.is_leader();
                metrics.leader.set(i64::from(leading));
                if leading && !was_leader {
                    return Some(((), (changes, true)));
                }
                was_leader = leading;
                changes.changed().await.ok()?;
            }
        }
    })
}

/// Counts the watches that have completed their first full list, and marks the process ready when all
/// have.
#[derive(Clone, Debug)]
struct CacheSync {
    readiness: Readiness,
    pending: Arc<AtomicUsize>,
}

impl CacheSync {
    fn new(readiness: Readiness, watches: usize) -> Self {
        Self {
            readiness,
            pending: Arc::new(AtomicUsize::new(watches)),
        }
    }

    fn track<K, S>(&self, stream: S) -> impl futures::Stream<Item = S::Item> + Send + use<K, S>
    where
        S: futures::Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send,
    {
        let sync = self.clone();
        let mut counted = false;
        stream.inspect(move |event| {
            if !counted && matches!(event, Ok(watcher::Event::InitDone)) {
                counted = true;
                if sync.pending.fetch_sub(1, Ordering::AcqRel) == 1 {
                    tracing::info!("watch caches synced");
                    sync.readiness.set(true);
                }
            }
        })
    }
}

/// How the pod and Service watches list: 100 objects a page, not kube-runtime's 500. A relist (after an
/// API server restart, every watch at once) holds a whole page's body and its parsed objects at a time; at
/// 2 400 bridges smaller pages cost a few more round trips and keep that peak a fifth of the size.
fn list_config() -> watcher::Config {
    watcher::Config::default().page_size(LIST_PAGE_SIZE)
}

const LIST_PAGE_SIZE: u32 = 100;

fn host_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|name| name.trim().to_owned())
        })
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "service-per-pod".to_owned())
}

/// Drops what the StatefulSet and EndpointSlice caches hold but the controller never reads: managedFields
/// are the largest part of most objects. (Pods and Services keep only listed fields: `CachedPod::slim`,
/// `desired::slim_service`.)
fn slim<K: kube::Resource>(object: &mut K) {
    object.meta_mut().managed_fields = None;
}

/// How a failed watch is retried: 0.25 s doubling up to 2 s, with jitter. (kube-runtime's default goes
/// to 30 s and compounds: after an API server restart its first answers for our ServiceAccount are 403
/// while its RBAC caches fill, and each one doubled the wait.)
#[derive(Debug, Default)]
struct WatchBackoff {
    failures: u32,
}

impl Iterator for WatchBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        self.failures = self.failures.saturating_add(1);
        let base = Duration::from_millis(250).saturating_mul(1 << (self.failures - 1).min(3));
        // ±25 % so that several watches (and several controllers) do not retry in step.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or_default();
        let jitter = f64::from(nanos % 1000) / 1000.0 * 0.5 + 0.75;
        Some(base.mul_f64(jitter))
    }
}

impl kube::runtime::utils::Backoff for WatchBackoff {
    fn reset(&mut self) {
        self.failures = 0;
    }
}

/// No delay on the controller's merged trigger stream: the watches have their own backoff.
#[derive(Debug)]
struct NoTriggerBackoff;

impl Iterator for NoTriggerBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        Some(Duration::ZERO)
    }
}

impl kube::runtime::utils::Backoff for NoTriggerBackoff {
    fn reset(&mut self) {}
}

/// A watch whose events update the index before they trigger reconciles: a reconcile never reads an
/// index older than the event that caused it. A completed relist after the first also asks for a
/// reconcile of everything.
fn indexed<K, S>(
    events: S,
    relisted: tokio::sync::mpsc::UnboundedSender<()>,
    apply: impl Fn(&watcher::Event<K>) -> Change + Send + 'static,
) -> impl futures::Stream<Item = Result<K, watcher::Error>> + Send
where
    K: Clone + Send + 'static,
    S: futures::Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send,
{
    let mut listed_once = false;
    events
        .inspect(move |event| {
            if let Ok(event) = event
                && apply(event) == Change::Relisted
            {
                if listed_once {
                    let _ = relisted.send(());
                }
                listed_once = true;
            }
        })
        .touched_objects()
}

fn tokio_stream_of(
    mut receiver: tokio::sync::mpsc::UnboundedReceiver<()>,
) -> impl futures::Stream<Item = ()> + Send {
    futures::stream::poll_fn(move |cx| receiver.poll_recv(cx))
}

/// A `()` every `period` (the first after one period).
fn resync(period: Duration) -> impl futures::Stream<Item = ()> + Send {
    futures::stream::unfold((), move |()| async move {
        tokio::time::sleep(period).await;
        Some(((), ()))
    })
}
