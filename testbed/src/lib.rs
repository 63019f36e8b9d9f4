//! The simulated environment the integration tests, the demo and the benchmarks run in.
//!
//! Here: a connection to the local control plane that `cargo xtask cluster up` starts, a fresh namespace
//! per test, clients for ServiceAccounts and for the non-admin users of the cluster's token file,
//! node-port blocks handed out so that concurrent tests never share one ([`node_ports`]), and
//! `eventually` for conditions that take time. Around it: our daemons as processes ([`daemon`]), a
//! stateful stand-in for a Jitsi Videobridge ([`bridge_stub`]), a fault-injecting proxy, real Prosody and
//! HAProxy runners, the rendered manifests, and measurements for the benchmarks.
//!
//! Tests fail (never skip) when no cluster is reachable: a test that cannot fail proves nothing.

pub mod audit;
pub mod bridge_stub;
pub mod control_plane;
pub mod daemon;
pub mod dataplane;
pub mod fault_proxy;
pub mod firewall;
pub mod haproxy;
pub mod jitsi_images;
pub mod manifests;
pub mod measure;
pub mod monitoring;
pub mod netpol;
pub mod node_ports;
pub mod pod_runtime;
pub mod promql;
pub mod promtool;
pub mod prosody;
pub mod replay_server;
pub mod service_per_pod;
pub mod tcp_proxy;

use std::future::Future;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Namespace, Pod, Service, ServiceAccount};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig, NamedAuthInfo, NamedContext};
use kube::{Api, Client, Config, Resource};
pub use local_cluster::{free_tcp_port, free_udp_port, repo_root};

/// A file of the recorded outputs in `testdata/` (provenance in `testdata/README.md`).
pub fn testdata(relative: &str) -> String {
    let path = repo_root().join("testdata").join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// The local cluster, as the admin sees it.
#[derive(Clone)]
pub struct Cluster {
    kubeconfig: Kubeconfig,
    admin: Client,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster").finish_non_exhaustive()
    }
}

/// The lock this process holds on the local cluster: shared by every test, exclusive for a test that
/// takes the control plane down. A file lock, so it spans test binaries, however cargo schedules them,
/// and is released when the process ends.
static CLUSTER_LOCK: std::sync::OnceLock<std::fs::File> = std::sync::OnceLock::new();

fn lock_cluster(exclusive: bool) {
    CLUSTER_LOCK.get_or_init(|| {
        let dir = local_cluster::ClusterDir::discover();
        let path = dir.path().join("tests.lock");
        let file = std::fs::File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
        let locked = if exclusive {
            file.lock()
        } else {
            file.lock_shared()
        };
        locked.unwrap_or_else(|e| panic!("locking {}: {e}", path.display()));
        file
    });
}

/// Marks this process as using the local cluster (shared with other tests), for code that reaches it
/// without [`Cluster::connect`] (kubectl).
pub fn use_cluster() {
    lock_cluster(false);
}

/// Takes the local cluster for this test binary alone (it kills and restarts control-plane processes):
/// waits until no other test process uses it, and keeps others waiting until this one ends. Call it
/// first thing, before [`Cluster::connect`].
pub fn exclusive_cluster() {
    assert!(
        CLUSTER_LOCK.get().is_none(),
        "exclusive_cluster must come before anything else touches the cluster in this process"
    );
    lock_cluster(true);
}

impl Cluster {
    /// Connects with the kubeconfig in `KUBECONFIG` (written by `cargo xtask cluster up`).
    pub async fn connect() -> Self {
        lock_cluster(false);
        let path = std::env::var("KUBECONFIG").expect(
            "KUBECONFIG is not set: run the integration tests through `cargo xtask test`, \
             or start `cargo xtask cluster up` and `eval $(cargo xtask cluster env)` first",
        );
        let kubeconfig = Kubeconfig::read_from(&path).unwrap_or_else(|e| panic!("reading {path}: {e}"));
        let admin = client_for_context(&kubeconfig, "admin").await;
        Self { kubeconfig, admin }
    }

    pub fn admin(&self) -> Client {
        self.admin.clone()
    }

    /// A client for one of the token-file users without any rights (`alice`, `bob`, `carol`).
    pub async fn user(&self, name: &str) -> Client {
        client_for_context(&self.kubeconfig, name).await
    }

    /// A fresh namespace named `<prefix>-<unique>`, ready for pods (its `default` ServiceAccount exists).
    ///
    /// Namespaces a failed earlier run of the same test left behind (for inspection) are deleted
    /// first, and their Services at once: on a long-lived development cluster they would otherwise
    /// still hold the node ports this run needs.
    pub async fn namespace(&self, prefix: &str) -> TestNamespace {
        self.delete_stale_namespaces(prefix).await;
        let name = format!("{prefix}-{}", unique_suffix());
        let namespace: Namespace = serde_json::from_value(serde_json::json!({
            "metadata": { "name": name, "labels": { "jitsi-k8s.test/namespace": "true", "jitsi-k8s.test/prefix": prefix } }
        }))
        .expect("namespace object");
        Api::<Namespace>::all(self.admin())
            .create(&PostParams::default(), &namespace)
            .await
            .unwrap_or_else(|e| panic!("creating namespace {name}: {e}"));
        // Pods are refused until the controller-manager has made the namespace's default ServiceAccount.
        let accounts: Api<ServiceAccount> = Api::namespaced(self.admin(), &name);
        eventually(
            "the namespace's default ServiceAccount",
            Duration::from_secs(30),
            || async { accounts.get_opt("default").await.ok().flatten() },
        )
        .await;
        TestNamespace {
            name,
            client: self.admin(),
        }
    }

    async fn delete_stale_namespaces(&self, prefix: &str) {
        let namespaces: Api<Namespace> = Api::all(self.admin());
        let selector = format!("jitsi-k8s.test/prefix={prefix}");
        let Ok(stale) = namespaces.list(&ListParams::default().labels(&selector)).await else {
            return;
        };
        for namespace in stale.items {
            let name = namespace.metadata.name.unwrap_or_default();
            let services: Api<Service> = Api::namespaced(self.admin(), &name);
            let _ = services
                .delete_collection(&DeleteParams::default(), &ListParams::default())
                .await;
            // Pods a failed test held Terminating with a finalizer would keep the namespace forever.
            let pods: Api<Pod> = Api::namespaced(self.admin(), &name);
            let held = pods
                .list(&ListParams::default())
                .await
                .map(|list| list.items)
                .unwrap_or_default();
            for pod in held {
                if pod
                    .metadata
                    .finalizers
                    .iter()
                    .flatten()
                    .any(|f| f.starts_with("jitsi-k8s.test/"))
                {
                    let release = serde_json::json!({ "metadata": { "finalizers": null } });
                    let pod_name = pod.metadata.name.unwrap_or_default();
                    let _ = pods
                        .patch(&pod_name, &PatchParams::default(), &Patch::Merge(release))
                        .await;
                }
            }
            let _ = namespaces.delete(&name, &DeleteParams::background()).await;
        }
    }

    /// Creates the ServiceAccount when missing and returns a client authenticated with a fresh token of it.
    pub async fn service_account_client(&self, namespace: &str, name: &str) -> Client {
        let accounts: Api<ServiceAccount> = Api::namespaced(self.admin(), namespace);
        if accounts
            .get_opt(name)
            .await
            .expect("reading ServiceAccount")
            .is_none()
        {
            let account: ServiceAccount =
                serde_json::from_value(serde_json::json!({ "metadata": { "name": name } }))
                    .expect("sa object");
            accounts
                .create(&PostParams::default(), &account)
                .await
                .expect("creating ServiceAccount");
        }
        let token = self.service_account_token(namespace, name).await;
        self.client_with_token(&format!("{namespace}/{name}"), &token)
            .await
    }

    /// A fresh token of a ServiceAccount (which must exist).
    pub async fn service_account_token(&self, namespace: &str, name: &str) -> String {
        let accounts: Api<ServiceAccount> = Api::namespaced(self.admin(), namespace);
        let request = TokenRequest {
            spec: Some(TokenRequestSpec {
                expiration_seconds: Some(3600),
                ..Default::default()
            }),
            ..Default::default()
        };
        accounts
            .create_token_request(name, &PostParams::default(), &request)
            .await
            .expect("requesting a ServiceAccount token")
            .status
            .expect("TokenRequest has a status")
            .token
            .expect("TokenRequest status carries a token")
    }

    /// Writes a kubeconfig file that authenticates with `token` only, for a daemon process.
    pub fn kubeconfig_file_with_token(&self, label: &str, token: &str) -> std::path::PathBuf {
        self.kubeconfig_file_via(label, token, None)
    }

    /// The API server's address (`127.0.0.1:<port>`).
    pub fn apiserver_addr(&self) -> std::net::SocketAddr {
        let server = self.kubeconfig.clusters[0]
            .cluster
            .as_ref()
            .and_then(|cluster| cluster.server.clone())
            .expect("the kubeconfig names the API server");
        server
            .trim_start_matches("https://")
            .parse()
            .unwrap_or_else(|e| panic!("the API server address {server}: {e}"))
    }

    /// As [`Cluster::kubeconfig_file_with_token`], reaching the API server through `via` (a proxy on
    /// 127.0.0.1) when given.
    pub fn kubeconfig_file_via(
        &self,
        label: &str,
        token: &str,
        via: Option<std::net::SocketAddr>,
    ) -> std::path::PathBuf {
        let mut kubeconfig = self.kubeconfig_with_token(label, token);
        if let Some(via) = via {
            for named in &mut kubeconfig.clusters {
                if let Some(cluster) = named.cluster.as_mut() {
                    cluster.server = Some(format!("https://{via}"));
                }
            }
        }
        let file = format!("{}.json", label.replace('/', "-"));
        let path = repo_root().join("target/test-kubeconfigs").join(file);
        std::fs::create_dir_all(path.parent().expect("folder")).expect("creating target/test-kubeconfigs");
        let json = serde_json::to_vec(&kubeconfig).expect("kubeconfig as JSON");
        std::fs::write(&path, json).expect("writing kubeconfig");
        path
    }

    /// A client for the same API server that authenticates with `token`.
    pub async fn client_with_token(&self, label: &str, token: &str) -> Client {
        client_for_context(&self.kubeconfig_with_token(label, token), label).await
    }

    /// The admin kubeconfig's cluster, with one user: `token`.
    fn kubeconfig_with_token(&self, label: &str, token: &str) -> Kubeconfig {
        let mut kubeconfig = self.kubeconfig.clone();
        let auth_info: NamedAuthInfo =
            serde_json::from_value(serde_json::json!({ "name": label, "user": { "token": token } }))
                .expect("auth info from token");
        let context: NamedContext = serde_json::from_value(
            serde_json::json!({ "name": label, "context": { "cluster": "local", "user": label } }),
        )
        .expect("context for token");
        kubeconfig.auth_infos = vec![auth_info];
        kubeconfig.contexts = vec![context];
        kubeconfig.current_context = Some(label.to_owned());
        kubeconfig
    }
}

async fn client_for_context(kubeconfig: &Kubeconfig, context: &str) -> Client {
    let options = KubeConfigOptions {
        context: Some(context.to_owned()),
        ..Default::default()
    };
    let config = Config::from_custom_kubeconfig(kubeconfig.clone(), &options)
        .await
        .unwrap_or_else(|e| panic!("kubeconfig context {context}: {e}"));
    Client::try_from(config).unwrap_or_else(|e| panic!("client for {context}: {e}"))
}

fn unique_suffix() -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let mixed =
        nanos ^ std::process::id().rotate_left(16) ^ COUNTER.fetch_add(1, Ordering::Relaxed).rotate_left(24);
    format!("{mixed:08x}")
}

/// A namespace owned by one test.
pub struct TestNamespace {
    pub name: String,
    client: Client,
}

impl std::fmt::Debug for TestNamespace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestNamespace")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl TestNamespace {
    /// An API for namespaced objects of this namespace, as the admin.
    pub fn api<K>(&self) -> Api<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as Resource>::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.name)
    }

    /// Sets a StatefulSet's `spec.replicas`, as an autoscaler (or an operator) would.
    pub async fn scale_statefulset(&self, name: &str, replicas: i32) {
        let sets: Api<k8s_openapi::api::apps::v1::StatefulSet> = self.api();
        sets.patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({ "spec": { "replicas": replicas } })),
        )
        .await
        .unwrap_or_else(|e| panic!("scaling {name} in {} to {replicas}: {e}", self.name));
    }

    /// Deletes the namespace (and with it everything the test made). Call at the end of a passing test;
    /// a failing test leaves its namespace for inspection.
    pub async fn delete(self) {
        match Api::<Namespace>::all(self.client)
            .delete(&self.name, &DeleteParams::background())
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            Err(error) => panic!("deleting namespace {}: {error}", self.name),
        }
    }
}

/// Polls `check` every 100 ms until it yields `Some`, and returns that; panics after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
