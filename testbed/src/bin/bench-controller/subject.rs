//! What keeps a bridge's Service in each column of the benchmark, started in a fresh namespace of the
//! one cluster, and the StatefulSets each expects.

use std::path::PathBuf;
use std::time::Duration;

use futures::{StreamExt, stream};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Namespace, Service};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::json;
use testbed::daemon::Daemon;
use testbed::service_per_pod::{Scope, install_rbac, start_controller, statefulset};
use testbed::{Cluster, TestNamespace, eventually, free_tcp_port, repo_root};

/// The label every subject's Services select on: a StatefulSet pod carries it already.
const POD_NAME_LABEL: &str = "statefulset.kubernetes.io/pod-name";

/// metacontroller, as `cargo xtask bench controller` built it.
#[derive(Clone, Debug)]
pub struct Metacontroller {
    pub binary: PathBuf,
    /// Its CRDs (`metacontroller-crds-v1.yaml` of the same source).
    pub crds: PathBuf,
    /// The jsonnet hook server (`xtask/go/jsonnet-hooks`).
    pub hooks: PathBuf,
}

#[derive(Clone, Debug)]
pub enum Kind {
    /// service-per-pod: release build, its ServiceAccount, RBAC and flags from `manifests/`.
    Ours,
    /// metacontroller with the seed's DecoratorController and jsonnet hooks; `tuned` raises client-go's
    /// QPS so that the API server, not the client, limits.
    Metacontroller { tuned: bool, build: Metacontroller },
    /// No controller: the benchmark creates the Services itself, 32 at a time.
    Floor,
}

impl Kind {
    pub fn label(&self) -> &'static str {
        match self {
            Kind::Ours => "service-per-pod",
            Kind::Metacontroller { tuned: false, .. } => "metacontroller (default QPS 5)",
            Kind::Metacontroller { tuned: true, .. } => "metacontroller (QPS 1000)",
            Kind::Floor => "floor (no controller)",
        }
    }

    fn prefix(&self) -> &'static str {
        match self {
            Kind::Ours => "bench-ours",
            Kind::Metacontroller { tuned: false, .. } => "bench-mc-default",
            Kind::Metacontroller { tuned: true, .. } => "bench-mc-tuned",
            Kind::Floor => "bench-floor",
        }
    }

    pub fn has_controller(&self) -> bool {
        !matches!(self, Kind::Floor)
    }

    /// A StatefulSet of `replicas` bridges whose Services start at `base`, in the form this subject
    /// reads: our annotation; the seed's annotation and the base port as an argument of the `jvb`
    /// container; nothing for the floor.
    pub fn statefulset(&self, name: &str, replicas: i32, base: u16) -> StatefulSet {
        let base = base.to_string();
        match self {
            Kind::Ours => statefulset(name, replicas, &[("service-per-pod/base-port", &base)]),
            Kind::Metacontroller { .. } => {
                let mut set = statefulset(name, replicas, &[("service-per-pod-label", POD_NAME_LABEL)]);
                if let Some(container) = set
                    .spec
                    .as_mut()
                    .and_then(|spec| spec.template.spec.as_mut())
                    .and_then(|pod| pod.containers.first_mut())
                {
                    container.args = Some(vec![base]);
                }
                set
            }
            Kind::Floor => statefulset(name, replicas, &[]),
        }
    }
}

/// The Service the floor creates for ordinal `ordinal` of `set`: what the controllers create, less
/// their bookkeeping.
pub fn floor_service(set: &str, ordinal: usize, base: u16) -> Service {
    let name = format!("{set}-{ordinal}");
    let port = i32::from(base) + ordinal as i32;
    serde_json::from_value(json!({
        "metadata": { "name": name },
        "spec": {
            "type": "NodePort",
            "externalTrafficPolicy": "Local",
            "selector": { POD_NAME_LABEL: name },
            "ports": [{ "port": port, "targetPort": port, "nodePort": port, "protocol": "UDP" }]
        }
    }))
    .expect("service object")
}

/// Creates `services`, `parallel` requests at a time.
pub async fn create_services(api: &Api<Service>, services: Vec<Service>, parallel: usize) {
    stream::iter(services)
        .for_each_concurrent(parallel, |service| async move {
            if let Err(error) = api.create(&PostParams::default(), &service).await {
                panic!("creating Service {}: {error}", service.name_any());
            }
        })
        .await;
}

/// A subject running in its own namespace.
pub struct Running {
    pub kind: Kind,
    pub cluster: Cluster,
    pub namespace: TestNamespace,
    /// The controller process (none for the floor).
    pub controller: Option<Daemon>,
    /// metacontroller's hook server.
    pub hooks: Option<Daemon>,
}

impl Running {
    pub async fn start(kind: Kind) -> Self {
        let cluster = Cluster::connect().await;
        let namespace = cluster.namespace(kind.prefix()).await;
        let (controller, hooks) = match &kind {
            Kind::Ours => {
                let deployment = install_rbac(&namespace.name, Scope::Namespace);
                let controller =
                    start_controller(&cluster, &namespace.name, &deployment, "service-per-pod-0").await;
                (Some(controller), None)
            }
            Kind::Metacontroller { tuned, build } => {
                let (controller, hooks) = start_metacontroller(build, *tuned).await;
                (Some(controller), Some(hooks))
            }
            Kind::Floor => (None, None),
        };
        Self {
            kind,
            cluster,
            namespace,
            controller,
            hooks,
        }
    }

    pub fn sets(&self) -> Api<StatefulSet> {
        self.namespace.api()
    }

    pub fn services(&self) -> Api<Service> {
        self.namespace.api()
    }

    /// Stops the controller at once, as a crash (or an uninstall) would.
    pub fn kill_controller(&mut self) {
        if let Some(controller) = self.controller.as_mut() {
            controller.kill();
        }
    }

    /// Deletes the namespace and waits until it is gone, so that the next subject finds every node
    /// port free. A StatefulSet held by metacontroller's finalizer is let go first (its controller is
    /// stopped by then).
    pub async fn remove(mut self) {
        self.kill_controller();
        let sets = self.sets();
        if let Ok(list) = sets.list(&ListParams::default()).await {
            for set in list.items {
                if set.finalizers().is_empty() {
                    continue;
                }
                let release = json!({ "metadata": { "finalizers": null } });
                let _ = sets
                    .patch(&set.name_any(), &PatchParams::default(), &Patch::Merge(release))
                    .await;
            }
        }
        let _ = self
            .services()
            .delete_collection(&DeleteParams::default(), &ListParams::default())
            .await;
        let name = self.namespace.name.clone();
        let namespaces: Api<Namespace> = Api::all(self.cluster.admin());
        self.namespace.delete().await;
        eventually(
            &format!("namespace {name} to be gone"),
            Duration::from_secs(900),
            || async { namespaces.get_opt(&name).await.ok()?.is_none().then_some(()) },
        )
        .await;
    }
}

/// Installs metacontroller's CRDs and the seed's DecoratorController (hooks served from this
/// repository's copy of the seed's jsonnet), and starts both processes.
async fn start_metacontroller(build: &Metacontroller, tuned: bool) -> (Daemon, Daemon) {
    let hooks_dir = repo_root().join("bench/metacontroller");
    let mut hooks = Daemon::start_program(
        "jsonnet-hooks",
        &build.hooks,
        &[format!("--dir={}", hooks_dir.display())],
        &[],
        "--listen",
    );
    hooks.ready().await;
    kubectl(
        &[
            "apply",
            "--server-side",
            "--filename",
            &build.crds.display().to_string(),
        ],
        None,
    );
    kubectl(
        &[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd/decoratorcontrollers.metacontroller.k8s.io",
            "crd/compositecontrollers.metacontroller.k8s.io",
            "crd/controllerrevisions.metacontroller.k8s.io",
        ],
        None,
    );
    let hook = |name: &str| format!("http://{}/{name}", hooks.admin);
    let decorator = json!({
        "apiVersion": "metacontroller.k8s.io/v1alpha1",
        "kind": "DecoratorController",
        "metadata": { "name": "service-per-pod" },
        "spec": {
            "resources": [{
                "apiVersion": "apps/v1",
                "resource": "statefulsets",
                "annotationSelector": { "matchExpressions": [{ "key": "service-per-pod-label", "operator": "Exists" }] }
            }],
            "attachments": [{ "apiVersion": "v1", "resource": "services" }],
            "hooks": {
                "sync": { "webhook": { "url": hook("sync-service-per-pod") } },
                "finalize": { "webhook": { "url": hook("finalize-service-per-pod") } }
            }
        }
    });
    kubectl(
        &["apply", "--server-side", "--force-conflicts", "--filename=-"],
        Some(&decorator.to_string()),
    );
    let kubeconfig = std::env::var("KUBECONFIG").expect("KUBECONFIG names the local cluster");
    let metrics = free_tcp_port().expect("a free port");
    let mut args = vec![
        format!("--kubeconfig={kubeconfig}"),
        format!("--metrics-address=127.0.0.1:{metrics}"),
        "--pprof-address=0".to_owned(),
    ];
    if tuned {
        args.push("--client-go-qps=1000".to_owned());
        args.push("--client-go-burst=2000".to_owned());
    }
    let mut controller = Daemon::start_program(
        "metacontroller",
        &build.binary,
        &args,
        &[],
        "--health-probe-bind-address",
    );
    controller.ready().await;
    (controller, hooks)
}

/// Runs kubectl as the admin; panics with its words when it fails.
fn kubectl(args: &[&str], stdin: Option<&str>) {
    let (ok, _, said) = testbed::manifests::kubectl(args, stdin.unwrap_or_default());
    assert!(ok, "kubectl {}: {said}", args.join(" "));
}
