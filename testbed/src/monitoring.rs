//! A real Prometheus for the local cluster, set up the way a monitoring stack sets up its own: a
//! `Prometheus` resource as kube-prometheus or kube-prometheus-stack writes it, turned into a StatefulSet
//! and a configuration by the real Prometheus Operator (`cargo xtask cluster up --monitoring`), and its
//! pod's containers — Prometheus and the config reloader — run by [`PodRuntime`] in the pod's network
//! namespace. Discovery, relabeling, scraping and rule evaluation are Prometheus's own.
//!
//! Start it after the PodMonitors and PrometheusRules it should see exist: the operator mounts the rule
//! ConfigMaps that exist when it writes the StatefulSet, and a later change rolls the pod (which a
//! kubelet would restart; this runtime does not follow).

use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::core::{ApiResource, DynamicObject, GroupVersionKind};
use local_cluster::ClusterDir;
use serde_json::{Value, json};

use crate::pod_runtime::PodRuntime;
use crate::{Cluster, eventually};

/// The Prometheus version the operator is told to run (the newest its compatibility list names).
pub const PROMETHEUS_VERSION: &str = "v3.5.0";
const NAMESPACE: &str = local_cluster::monitoring::NAMESPACE;

/// A monitoring stack our components are written for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stack {
    /// prometheus-operator/kube-prometheus: `Prometheus` `monitoring/k8s`, ServiceAccount
    /// `prometheus-k8s`, every PodMonitor and rule of every namespace selected.
    KubePrometheus,
    /// The kube-prometheus-stack Helm chart, release `kube-prometheus-stack`: `Prometheus`
    /// `kube-prometheus-stack-prometheus`, selecting by the label `release: kube-prometheus-stack`.
    KubePrometheusStack,
}

impl Stack {
    /// The component of `manifests/components/` written for this stack.
    pub fn component(self) -> &'static str {
        match self {
            Stack::KubePrometheus => "manifests/components/kube-prometheus",
            Stack::KubePrometheusStack => "manifests/components/kube-prometheus-stack",
        }
    }

    pub fn prometheus_name(self) -> &'static str {
        match self {
            Stack::KubePrometheus => "k8s",
            Stack::KubePrometheusStack => "kube-prometheus-stack-prometheus",
        }
    }

    /// The stack's Prometheus Service, as our ScaledObjects name it (`serverAddress`).
    pub fn service_host(self) -> &'static str {
        match self {
            Stack::KubePrometheus => "prometheus-k8s.monitoring.svc",
            Stack::KubePrometheusStack => "kube-prometheus-stack-prometheus.monitoring.svc",
        }
    }

    pub fn service_account(self) -> &'static str {
        match self {
            Stack::KubePrometheus => "prometheus-k8s",
            Stack::KubePrometheusStack => "kube-prometheus-stack-prometheus",
        }
    }

    /// The `Prometheus` resource as the stack writes it (kube-prometheus v0.15's
    /// `manifests/prometheus-prometheus.yaml`; the chart's `templates/prometheus/prometheus.yaml` with
    /// its default values), with one replica, no Alertmanager (alerts are read from Prometheus's API)
    /// and the version pinned here.
    pub fn prometheus(self) -> Value {
        let (selector, security) = match self {
            Stack::KubePrometheus => (
                json!({}),
                json!({ "fsGroup": 2000, "runAsNonRoot": true, "runAsUser": 1000 }),
            ),
            Stack::KubePrometheusStack => (
                json!({ "matchLabels": { "release": "kube-prometheus-stack" } }),
                json!({ "fsGroup": 2000, "runAsGroup": 2000, "runAsNonRoot": true, "runAsUser": 1000 }),
            ),
        };
        json!({
            "apiVersion": "monitoring.coreos.com/v1",
            "kind": "Prometheus",
            "metadata": { "name": self.prometheus_name(), "namespace": NAMESPACE },
            "spec": {
                "image": format!("quay.io/prometheus/prometheus:{PROMETHEUS_VERSION}"),
                "version": PROMETHEUS_VERSION,
                "replicas": 1,
                "serviceAccountName": self.service_account(),
                "securityContext": security,
                "podMonitorSelector": selector,
                "podMonitorNamespaceSelector": {},
                "serviceMonitorSelector": selector,
                "serviceMonitorNamespaceSelector": {},
                "ruleSelector": selector,
                "ruleNamespaceSelector": {},
                "probeSelector": selector,
                "probeNamespaceSelector": {},
            }
        })
    }
}

/// A running Prometheus of `stack`, reachable from this host at `url`.
#[derive(Debug)]
pub struct PrometheusServer {
    pub stack: Stack,
    pub url: String,
    /// From the pod's containers started to Prometheus's `/-/ready`.
    pub ready_after: Duration,
    pub runtime: PodRuntime,
    http: reqwest::Client,
}

fn prometheus_api(cluster: &Cluster) -> Api<DynamicObject> {
    let resource = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("monitoring.coreos.com", "v1", "Prometheus"),
        "prometheuses",
    );
    Api::namespaced_with(cluster.admin(), NAMESPACE, &resource)
}

/// Panics with the command to run when the cluster has no monitoring.
pub fn require() {
    assert!(
        local_cluster::monitoring::is_up(&ClusterDir::discover()),
        "the local cluster has no monitoring: run the tests through `cargo xtask test`, or start \
         `cargo xtask cluster up --monitoring` (as root)"
    );
}

impl PrometheusServer {
    /// Creates the stack's `Prometheus` (and its ServiceAccount, with no rights of its own: our
    /// component's RoleBinding is what lets it discover our pods), waits for the operator's pod and
    /// configuration, and runs the pod's containers.
    pub async fn start(cluster: &Cluster, stack: Stack) -> Self {
        require();
        let apply = PatchParams::apply("jitsi-k8s-tests").force();
        let accounts: Api<k8s_openapi::api::core::v1::ServiceAccount> =
            Api::namespaced(cluster.admin(), NAMESPACE);
        accounts
            .patch(
                stack.service_account(),
                &apply,
                &Patch::Apply(json!({
                    "apiVersion": "v1", "kind": "ServiceAccount",
                    "metadata": { "name": stack.service_account(), "namespace": NAMESPACE },
                })),
            )
            .await
            .expect("creating the Prometheus ServiceAccount");
        prometheus_api(cluster)
            .patch(stack.prometheus_name(), &apply, &Patch::Apply(stack.prometheus()))
            .await
            .expect("applying the Prometheus resource");

        let pod_name = format!("prometheus-{}-0", stack.prometheus_name());
        let pods: Api<Pod> = Api::namespaced(cluster.admin(), NAMESPACE);
        let secrets: Api<Secret> = Api::namespaced(cluster.admin(), NAMESPACE);
        let config = format!("prometheus-{}", stack.prometheus_name());
        let pod = eventually(
            &format!("the operator's pod {pod_name} Running with its configuration"),
            Duration::from_secs(90),
            || async {
                let pod = pods.get_opt(&pod_name).await.ok()??;
                let has_ip = pod
                    .status
                    .as_ref()
                    .and_then(|status| status.pod_ip.as_ref())
                    .is_some_and(|ip| !ip.is_empty());
                let configured = secrets.get_opt(&config).await.ok()?.is_some();
                (has_ip && configured && pod.metadata.deletion_timestamp.is_none()).then_some(pod)
            },
        )
        .await;
        let programs = local_cluster::monitoring::image_programs(&ClusterDir::discover());
        let started = std::time::Instant::now();
        let mut runtime = PodRuntime::start(cluster, &pod, &programs).await;
        let url = format!("http://{}", runtime.expose(9090));
        // With KEDA on the cluster: where its operator resolves the stack's Service name.
        if local_cluster::autoscaling::is_up(&ClusterDir::discover()) {
            let stand_in = local_cluster::autoscaling::prometheus_stand_in(stack.service_host())
                .unwrap_or_else(|| panic!("no stand-in address for {}", stack.service_host()));
            runtime.expose_at(9090, stand_in);
        }
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .expect("an HTTP client");
        let mut server = Self {
            stack,
            url,
            ready_after: Duration::ZERO,
            runtime,
            http,
        };
        eventually(
            &format!("Prometheus {} ready", stack.prometheus_name()),
            Duration::from_secs(60),
            || async {
                let response = server
                    .http
                    .get(format!("{}/-/ready", server.url))
                    .send()
                    .await
                    .ok()?;
                response.status().is_success().then_some(())
            },
        )
        .await;
        server.ready_after = started.elapsed();
        server
    }

    /// `GET <path>` of Prometheus's HTTP API: its `data`.
    pub async fn api(&self, path: &str) -> Value {
        let body = self
            .http
            .get(format!("{}{path}", self.url))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"))
            .text()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        let response: Value =
            serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: not JSON ({e}): {body}"));
        assert_eq!(response["status"], "success", "GET {path}: {response}");
        response["data"].clone()
    }

    /// An instant query's result vector: `(labels, value)` per series.
    pub async fn query(&self, promql: &str) -> Vec<Series> {
        let data = self
            .api(&format!("/api/v1/query?query={}", url_encode(promql)))
            .await;
        vector(&data)
    }

    /// The active targets, as `/api/v1/targets` lists them.
    pub async fn active_targets(&self) -> Vec<Value> {
        self.api("/api/v1/targets?state=active").await["activeTargets"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// Every alert Prometheus holds (pending or firing).
    pub async fn alerts(&self) -> Vec<Value> {
        self.api("/api/v1/alerts").await["alerts"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// Every rule group Prometheus loaded.
    pub async fn rule_groups(&self) -> Vec<Value> {
        self.api("/api/v1/rules").await["groups"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// Deletes the `Prometheus` resource (the operator's StatefulSet and pod go with it) and stops the
    /// pod's processes.
    pub async fn stop(self, cluster: &Cluster) {
        let stack = self.stack;
        drop(self);
        remove(cluster, stack).await;
    }
}

/// Deletes the stack's `Prometheus` resource, if any (what [`PrometheusServer::stop`] does, for a run
/// that ended without stopping it).
pub async fn remove(cluster: &Cluster, stack: Stack) {
    let _ = prometheus_api(cluster)
        .delete(stack.prometheus_name(), &DeleteParams::default())
        .await;
}

/// One series of an instant query: its labels and its value.
pub type Series = (serde_json::Map<String, Value>, f64);

/// The series of an instant query's `data`.
fn vector(data: &Value) -> Vec<Series> {
    data["result"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|series| {
            let labels = series["metric"].as_object().cloned().unwrap_or_default();
            let value = series["value"][1]
                .as_str()
                .and_then(|v| v.parse().ok())
                .unwrap_or(f64::NAN);
            (labels, value)
        })
        .collect()
}

/// An instant query against the Prometheus at `url`, for a caller that holds only its address; `None`
/// when it did not answer with a result.
pub async fn query_at(http: &reqwest::Client, url: &str, promql: &str) -> Option<Vec<Series>> {
    let body = http
        .get(format!("{url}/api/v1/query?query={}", url_encode(promql)))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    let response: Value = serde_json::from_str(&body).ok()?;
    (response["status"] == "success").then(|| vector(&response["data"]))
}

/// Our daemons' programs (`target/<profile>/<name>`), by the last path element of their images' names,
/// for [`PodRuntime`] to run in their pods.
pub fn our_programs(names: &[&str]) -> std::path::PathBuf {
    let dir = ClusterDir::discover().path().join("monitoring/ours");
    std::fs::create_dir_all(&dir).expect("creating the folder of our programs");
    for name in names {
        let link = dir.join(name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(crate::daemon::binary(name), &link)
            .unwrap_or_else(|e| panic!("linking {}: {e}", link.display()));
    }
    dir
}

/// Percent-encodes a query parameter's value.
pub fn url_encode(text: &str) -> String {
    text.bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (byte as char).to_string(),
            other => format!("%{other:02X}"),
        })
        .collect()
}

/// The name of a pod's target label set: what our dashboards and alerts group by.
pub fn label<'a>(labels: &'a serde_json::Map<String, Value>, name: &str) -> Option<&'a str> {
    labels.get(name).and_then(Value::as_str)
}

/// Names of the pods a list of targets scrapes (their `pod` label).
pub fn target_pods(targets: &[Value]) -> Vec<String> {
    let mut pods: Vec<String> = targets
        .iter()
        .filter_map(|target| target["labels"]["pod"].as_str().map(str::to_owned))
        .collect();
    pods.sort();
    pods
}
