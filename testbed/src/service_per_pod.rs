//! Running the service-per-pod controller the way `manifests/` deploys it: its own ServiceAccount and
//! RBAC rendered from the manifests, its flags and environment taken from the rendered Deployment.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::events::v1::Event;
use kube::api::ListParams;
use kube::{Api, ResourceExt};
use serde_json::{Value, json};

use crate::daemon::Daemon;
use crate::manifests::{self, kind};
use crate::{Cluster, TestNamespace, eventually};

pub const BASE: &str = "manifests/base/service-per-pod";
pub const NAMESPACED: &str = "manifests/components/service-per-pod-namespaced";

/// How the controller is scoped, as in the manifests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// The namespaced Component: a Role, and WATCH_NAMESPACE set to the controller's namespace.
    Namespace,
    /// The base as it is: a ClusterRole, all namespaces.
    Cluster,
}

/// Installs the controller's ServiceAccount and RBAC from the manifests into `namespace`, and returns
/// the rendered Deployment.
pub fn install_rbac(namespace: &str, scope: Scope) -> Value {
    let components: &[&str] = match scope {
        Scope::Namespace => &[NAMESPACED],
        Scope::Cluster => &[],
    };
    let objects = manifests::render(namespace, &[BASE], components);
    let rbac: Vec<Value> = objects
        .iter()
        .filter(|o| {
            matches!(
                kind(o),
                "ServiceAccount" | "Role" | "RoleBinding" | "ClusterRole" | "ClusterRoleBinding"
            )
        })
        .cloned()
        .collect();
    manifests::apply(&rbac);
    objects
        .into_iter()
        .find(|o| kind(o) == "Deployment")
        .expect("the manifests carry a Deployment")
}

/// Starts one controller replica named `pod_name` in `namespace` under the ServiceAccount's token.
pub async fn start_controller(
    cluster: &Cluster,
    namespace: &str,
    deployment: &Value,
    pod_name: &str,
) -> Daemon {
    start_controller_with(cluster, namespace, deployment, pod_name, &Tweaks::default()).await
}

/// What a test changes of how the manifests run the controller.
#[derive(Clone, Debug, Default)]
pub struct Tweaks {
    /// Environment set on top of the Deployment's (`PORT_GRANTS`, ...).
    pub env: Vec<(String, String)>,
    /// Reach the API server through this address (a fault proxy).
    pub via: Option<std::net::SocketAddr>,
}

pub async fn start_controller_with(
    cluster: &Cluster,
    namespace: &str,
    deployment: &Value,
    pod_name: &str,
    tweaks: &Tweaks,
) -> Daemon {
    let token = cluster.service_account_token(namespace, "service-per-pod").await;
    let kubeconfig = cluster.kubeconfig_file_via(&format!("{namespace}/{pod_name}"), &token, tweaks.via);
    let (args, mut env) = manifests::container_command(deployment, "service-per-pod", pod_name, namespace);
    env.push(("KUBECONFIG".to_owned(), kubeconfig.display().to_string()));
    env.retain(|(name, _)| name != "LOG_FORMAT" && !tweaks.env.iter().any(|(tweaked, _)| tweaked == name));
    env.extend(tweaks.env.iter().cloned());
    let env: Vec<(&str, String)> = env.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    let mut daemon = Daemon::start("service-per-pod", &args, &env);
    daemon.ready().await;
    daemon
}

/// A namespace with the controller running in it, scoped to it.
#[derive(Debug)]
pub struct Fixture {
    pub cluster: Cluster,
    pub namespace: TestNamespace,
    pub deployment: Value,
    pub controller: Daemon,
}

impl Fixture {
    pub async fn start(prefix: &str) -> Self {
        Self::start_with(prefix, |_| Tweaks::default()).await
    }

    /// As [`Fixture::start`], with the controller run as `tweaks` says (given the fresh namespace).
    pub async fn start_with(prefix: &str, tweaks: impl FnOnce(&TestNamespace) -> Tweaks) -> Self {
        let cluster = Cluster::connect().await;
        let namespace = cluster.namespace(prefix).await;
        let tweaks = tweaks(&namespace);
        Self::run_in(cluster, namespace, &tweaks).await
    }

    /// The controller's RBAC installed in `namespace`, and one replica started there as `tweaks` says.
    async fn run_in(cluster: Cluster, namespace: TestNamespace, tweaks: &Tweaks) -> Self {
        let deployment = install_rbac(&namespace.name, Scope::Namespace);
        let controller = start_controller_with(
            &cluster,
            &namespace.name,
            &deployment,
            "service-per-pod-0",
            tweaks,
        )
        .await;
        Self {
            cluster,
            namespace,
            deployment,
            controller,
        }
    }

    pub fn sets(&self) -> Api<StatefulSet> {
        self.namespace.api()
    }

    /// Creates `set` in the namespace; panics with the API server's words when refused.
    pub async fn create(&self, set: &StatefulSet) -> StatefulSet {
        self.sets()
            .create(&kube::api::PostParams::default(), set)
            .await
            .unwrap_or_else(|e| panic!("creating StatefulSet {:?}: {e}", set.metadata.name))
    }

    /// Scales StatefulSet `name` to `replicas`.
    pub async fn scale(&self, name: &str, replicas: i32) {
        let patch = json!({ "spec": { "replicas": replicas } });
        self.sets()
            .patch(
                name,
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(patch),
            )
            .await
            .unwrap_or_else(|e| panic!("scaling StatefulSet {name}: {e}"));
    }

    /// Holds pod `name` Terminating once deleted; see [`hold_terminating`].
    pub async fn hold_terminating(&self, name: &str) {
        hold_terminating(&self.namespace.api(), name).await;
    }

    /// Lets a held pod go.
    pub async fn release(&self, name: &str) {
        release(&self.namespace.api(), name).await;
    }

    pub fn services(&self) -> Api<Service> {
        self.namespace.api()
    }

    /// A Service named `name` that someone else made (not ours: no labels of ours, no owner), as it
    /// was created.
    pub async fn create_foreign_service(&self, name: &str) -> Service {
        let foreign: Service = serde_json::from_value(json!({
            "metadata": { "name": name, "labels": { "owner": "someone-else" } },
            "spec": { "selector": { "app": "something-else" }, "ports": [{ "port": 80, "protocol": "TCP" }] }
        }))
        .expect("service object");
        self.services()
            .create(&kube::api::PostParams::default(), &foreign)
            .await
            .unwrap_or_else(|e| panic!("creating Service {name}: {e}"))
    }

    /// The Services of the namespace, by name.
    pub async fn service_map(&self) -> BTreeMap<String, Service> {
        let list = self
            .services()
            .list(&ListParams::default())
            .await
            .expect("listing Services");
        list.items
            .into_iter()
            .map(|service| (service.name_any(), service))
            .collect()
    }

    /// The Services of the namespace, or `None` while the API server cannot answer.
    pub async fn try_service_map(&self) -> Option<BTreeMap<String, Service>> {
        let list = self.services().list(&ListParams::default()).await.ok()?;
        Some(
            list.items
                .into_iter()
                .map(|service| (service.name_any(), service))
                .collect(),
        )
    }

    /// Waits until the namespace's Services are exactly `names` (the API server may be briefly away).
    pub async fn wait_for_services(&self, names: &[&str], timeout: Duration) -> BTreeMap<String, Service> {
        let mut wanted: Vec<String> = names.iter().map(|name| (*name).to_owned()).collect();
        wanted.sort();
        eventually(&format!("Services exactly {wanted:?}"), timeout, || async {
            let services = self.try_service_map().await?;
            (services.keys().cloned().collect::<Vec<_>>() == wanted).then_some(services)
        })
        .await
    }

    /// As [`Fixture::wait_for_services`], and until each Service is also owned by its pod: the state a
    /// StatefulSet settles in once its pods exist.
    pub async fn wait_until_settled(&self, names: &[&str], timeout: Duration) -> BTreeMap<String, Service> {
        let mut wanted: Vec<String> = names.iter().map(|name| (*name).to_owned()).collect();
        wanted.sort();
        eventually(
            &format!("Services {wanted:?}, each owned by its pod"),
            timeout,
            || async {
                let services = self.try_service_map().await?;
                let settled = services.keys().cloned().collect::<Vec<_>>() == wanted
                    && services.values().all(|service| {
                        service
                            .owner_references()
                            .iter()
                            .any(|owner| owner.kind == "Pod" && owner.name == service.name_any())
                    });
                settled.then_some(services)
            },
        )
        .await
    }

    /// A namespaced controller granted only `count` node-port blocks of the harness instead of the whole
    /// range (`PORT_GRANTS`), so a test that asks for every port cannot take those of tests running beside
    /// it. Returns the blocks, lowest first.
    pub async fn start_granted(prefix: &str, count: usize) -> (Self, Vec<u16>) {
        let cluster = Cluster::connect().await;
        let namespace = cluster.namespace(prefix).await;
        let mut blocks = Vec::new();
        for _ in 0..count {
            blocks.push(namespace.node_port_block().await);
        }
        blocks.sort_unstable();
        let grants: Vec<String> = blocks
            .iter()
            .map(|first| {
                format!(
                    "{}={first}-{}",
                    namespace.name,
                    first + crate::node_ports::BLOCK - 1
                )
            })
            .collect();
        let tweaks = Tweaks {
            env: vec![("PORT_GRANTS".to_owned(), grants.join(","))],
            via: None,
        };
        let fixture = Self::run_in(cluster, namespace, &tweaks).await;
        (fixture, blocks)
    }

    /// Warning Events about StatefulSet `set` with `reason`: their messages.
    pub async fn warnings(&self, set: &str, reason: &str) -> Vec<String> {
        let events: Api<Event> = self.namespace.api();
        let list = events.list(&ListParams::default()).await.expect("listing Events");
        list.items
            .into_iter()
            .filter(|event| {
                event.type_.as_deref() == Some("Warning") && event.reason.as_deref() == Some(reason)
            })
            .filter(|event| event.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(set))
            .filter_map(|event| event.note)
            .collect()
    }

    /// Waits for one Warning Event and returns its message.
    pub async fn wait_for_warning(&self, set: &str, reason: &str) -> String {
        eventually(
            &format!("a {reason} Warning Event on {set}"),
            Duration::from_secs(15),
            || async { self.warnings(set, reason).await.into_iter().next() },
        )
        .await
    }
}

/// Holds pod `name` Terminating once deleted (a finalizer), as a bridge's preStop hook does while
/// calls remain.
pub async fn hold_terminating(pods: &Api<Pod>, name: &str) {
    set_finalizers(pods, name, json!([DRAINING])).await;
}

/// Lets a pod held by [`hold_terminating`] go.
pub async fn release(pods: &Api<Pod>, name: &str) {
    set_finalizers(pods, name, Value::Null).await;
}

async fn set_finalizers(pods: &Api<Pod>, name: &str, finalizers: Value) {
    let patch = json!({ "metadata": { "finalizers": finalizers } });
    pods.patch(
        name,
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(patch),
    )
    .await
    .unwrap_or_else(|e| panic!("setting the finalizers of pod {name}: {e}"));
}

/// Every write the controller has made (Services and EndpointSlices, by any verb).
pub async fn service_writes(daemon: &Daemon) -> f64 {
    let mut total = 0.0;
    for verb in ["Create", "Patch", "Delete"] {
        total += daemon
            .metric(&format!(
                "service_per_pod_service_writes_total{{verb=\"{verb}\"}}"
            ))
            .await;
    }
    total
}

/// The finalizer that stands for a draining bridge's preStop hook in the tests.
const DRAINING: &str = "jitsi-k8s.test/draining";

/// A StatefulSet of `replicas` pods (Parallel, so scaling does not wait on readiness) with `annotations`.
pub fn statefulset(name: &str, replicas: i32, annotations: &[(&str, &str)]) -> StatefulSet {
    let annotations: BTreeMap<&str, &str> = annotations.iter().copied().collect();
    serde_json::from_value(json!({
        "metadata": { "name": name, "annotations": annotations },
        "spec": {
            "replicas": replicas,
            "podManagementPolicy": "Parallel",
            "serviceName": name,
            "selector": { "matchLabels": { "app": name } },
            "template": {
                "metadata": { "labels": { "app": name } },
                "spec": { "containers": [{ "name": "jvb", "image": "jitsi/jvb:stable-10431" }] }
            }
        }
    }))
    .expect("statefulset object")
}

/// As [`statefulset`], with the annotations on the pod template too, as the manifests have them (a
/// shard's `commonAnnotations`): each pod then carries the base port it was created with.
pub fn statefulset_annotating_pods(name: &str, replicas: i32, annotations: &[(&str, &str)]) -> StatefulSet {
    let mut set = statefulset(name, replicas, annotations);
    if let Some(spec) = set.spec.as_mut() {
        let metadata = spec.template.metadata.get_or_insert_with(Default::default);
        metadata.annotations = Some(
            annotations
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        );
    }
    set
}

/// One port entry of a Service: `(port, nodePort, targetPort, protocol, name)`.
pub type PortEntry = (i32, Option<i32>, Option<String>, Option<String>, Option<String>);

/// Every port entry of a Service.
pub fn ports(service: &Service) -> Vec<PortEntry> {
    let spec = service.spec.as_ref().expect("spec");
    spec.ports
        .iter()
        .flatten()
        .map(|port| {
            let target = port.target_port.as_ref().map(|t| match t {
                k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(n) => n.to_string(),
                k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(s) => s.clone(),
            });
            (
                port.port,
                port.node_port,
                target,
                port.protocol.clone(),
                port.name.clone(),
            )
        })
        .collect()
}
