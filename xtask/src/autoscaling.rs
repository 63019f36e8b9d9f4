//! `cargo xtask cluster up --autoscaling`: KEDA against the local cluster, so our ScaledObjects drive
//! kube-controller-manager's HPA controller as on any cluster. KEDA's operator turns each ScaledObject
//! into an HPA and evaluates its Prometheus trigger; its metrics API server answers the HPA controller
//! through the API server's aggregation layer (`external.metrics.k8s.io`).
//!
//! Installed from KEDA's own module, as its release manifests install it: the CRDs (`config/crd`), the
//! ServiceAccount `keda/keda-operator` with its upstream RBAC (`config/rbac`, and the metrics server's
//! auth-delegator, auth-reader and HPA-controller bindings of `config/metrics-server`), the APIService.
//! Both programs run on this host under that ServiceAccount's token, with the certificates KEDA's
//! certificate rotation would make (`pki::keda_certificates`). What a cluster network would give them
//! is described in `local_cluster::autoscaling`.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use local_cluster::autoscaling::{
    API_SERVICE, METRICS_SERVER_PROCESS, NAMESPACE, OPERATOR_PROCESS, hosts_file,
};
use local_cluster::process::{is_running, log_tail};
use local_cluster::{State, free_tcp_port};

use crate::cluster::{kubectl_owned, start};
use crate::gobuild::{self, module_source_dir, pinned_version};
use crate::monitoring::{healthz_answers, server_side_apply, write_service_account_kubeconfig};
use crate::paths::Paths;
use crate::pki;

/// KEDA's manifests applied as they are, from its module: kustomizations (`-k`) and files (`-f`).
const UPSTREAM: [(&str, &str); 6] = [
    ("-f", "config/general/namespace.yaml"),
    ("-f", "config/service_account/service_account.yaml"),
    ("-k", "config/crd"),
    ("-k", "config/rbac"),
    ("-f", "config/metrics-server/role.yaml"),
    ("-f", "config/metrics-server/role_binding.yaml"),
];

/// KEDA's ServiceAccount, for both programs (as upstream's two Deployments run them).
const SERVICE_ACCOUNT: &str = "keda-operator";
/// The Service the APIService names.
const METRICS_SERVICE: &str = "keda-metrics-apiserver";

/// Starts KEDA next to a running control plane; the monitoring stack is started by the caller.
pub fn up(paths: &Paths, state: &mut State) -> Result<()> {
    let modules = paths.go_modules();
    let bin = gobuild::KEDA.ensure_built(&modules, &paths.cache)?;
    forget_earlier_start(paths, state)?;
    let started = Instant::now();
    let wrapper = modules.join(gobuild::KEDA.wrapper);
    let version = pinned_version(&wrapper, gobuild::KEDA.module)?;
    let source = module_source_dir(&wrapper, gobuild::KEDA.module, &version)?;

    for (how, path) in UPSTREAM {
        let mut apply = server_side_apply();
        apply.push(format!("{how}{}", source.join(path).display()));
        kubectl_owned(paths, &apply, None).with_context(|| format!("applying KEDA's {path}"))?;
    }
    kubectl_owned(
        paths,
        &[
            "wait".to_owned(),
            "--for=condition=Established".to_owned(),
            "--timeout=60s".to_owned(),
            "crd/scaledobjects.keda.sh".to_owned(),
            "crd/triggerauthentications.keda.sh".to_owned(),
        ],
        None,
    )?;

    let dir = paths.cluster.path().join("autoscaling");
    let certs = dir.join("certs");
    let ca = pki::keda_certificates(&certs, NAMESPACE)?;
    let kubeconfig = dir.join("keda.kubeconfig");
    write_service_account_kubeconfig(paths, state, NAMESPACE, SERVICE_ACCOUNT, &kubeconfig)?;

    // The metrics server first: the operator's gRPC server is what it then connects to.
    let secure_port = free_tcp_port()?;
    let grpc_port = free_tcp_port()?;
    register_api_service(paths, &source, secure_port, &ca)?;
    let adapter = link(&dir, "keda-adapter", &bin)?;
    let kubeconfig_flag = |flag: &str| format!("--{flag}={}", kubeconfig.display());
    start(
        paths,
        state,
        METRICS_SERVER_PROCESS,
        Path::new("/usr/bin/env"),
        &[
            format!("KUBECONFIG={}", kubeconfig.display()),
            format!("POD_NAMESPACE={NAMESPACE}"),
            // What KEDA otherwise reads from its pod's service-account mount.
            format!("KEDA_CLUSTER_OBJECT_NAMESPACE={NAMESPACE}"),
            "WATCH_NAMESPACE=".to_owned(),
            adapter.display().to_string(),
            "--bind-address=127.0.0.1".to_owned(),
            format!("--secure-port={secure_port}"),
            format!("--cert-dir={}", certs.display()),
            format!("--tls-cert-file={}", certs.join("tls.crt").display()),
            format!("--tls-private-key-file={}", certs.join("tls.key").display()),
            format!("--client-ca-file={}", certs.join("ca.crt").display()),
            kubeconfig_flag("kubeconfig"),
            kubeconfig_flag("lister-kubeconfig"),
            kubeconfig_flag("authentication-kubeconfig"),
            kubeconfig_flag("authorization-kubeconfig"),
            format!("--metrics-service-address=127.0.0.1:{grpc_port}"),
            format!("--port={}", free_tcp_port()?),
            "--zap-log-level=info".to_owned(),
        ],
    )?;

    // The operator sees the monitoring stacks' Prometheus Services through a hosts file of its own,
    // bind-mounted over /etc/hosts in a mount namespace of its own.
    let hosts = dir.join("hosts");
    let host_hosts = std::fs::read_to_string("/etc/hosts").unwrap_or_default();
    std::fs::write(&hosts, hosts_file(&host_hosts))?;
    let operator = link(&dir, "keda", &bin)?;
    let health_port = free_tcp_port()?;
    let mut command = vec![
        "--mount".to_owned(),
        "--propagation=private".to_owned(),
        "--".to_owned(),
        "/bin/sh".to_owned(),
        "-c".to_owned(),
        "mount --bind \"$0\" /etc/hosts && exec /usr/bin/env \"$@\"".to_owned(),
        hosts.display().to_string(),
        format!("KUBECONFIG={}", kubeconfig.display()),
        format!("POD_NAMESPACE={NAMESPACE}"),
        format!("KEDA_CLUSTER_OBJECT_NAMESPACE={NAMESPACE}"),
        "WATCH_NAMESPACE=".to_owned(),
        operator.display().to_string(),
    ];
    command.extend([
        "--leader-elect=false".to_owned(),
        "--enable-cert-rotation=false".to_owned(),
        format!("--cert-dir={}", certs.display()),
        format!("--metrics-service-bind-address=127.0.0.1:{grpc_port}"),
        format!("--health-probe-bind-address=127.0.0.1:{health_port}"),
        format!("--metrics-bind-address=127.0.0.1:{}", free_tcp_port()?),
        "--zap-log-level=info".to_owned(),
        "--zap-encoder=console".to_owned(),
    ]);
    start(
        paths,
        state,
        OPERATOR_PROCESS,
        Path::new("/usr/bin/unshare"),
        &command,
    )?;
    wait_for(state, OPERATOR_PROCESS, "answer /healthz", || {
        healthz_answers(health_port)
    })?;
    wait_for(
        state,
        METRICS_SERVER_PROCESS,
        &format!("make {API_SERVICE} Available"),
        || api_service_available(paths),
    )?;
    println!(
        "==> autoscaling up in {:.1?}: KEDA {version} (operator and metrics API server, its upstream RBAC), \
         {API_SERVICE} Available through the aggregation layer",
        started.elapsed()
    );
    Ok(())
}

/// Stops what an earlier, failed `up` left of KEDA, so this one starts both afresh.
fn forget_earlier_start(paths: &Paths, state: &mut State) -> Result<()> {
    for name in [OPERATOR_PROCESS, METRICS_SERVER_PROCESS] {
        if let Some(process) = state.process(name)
            && is_running(process.pid)
            && local_cluster::process::is_ours(process.pid, paths.cluster.path())
        {
            let _ = std::process::Command::new("kill")
                .arg(process.pid.to_string())
                .status();
        }
    }
    state
        .processes
        .retain(|p| p.name != OPERATOR_PROCESS && p.name != METRICS_SERVER_PROCESS);
    crate::cluster::save_state(paths, state)
}

/// The programs are started through links in the cluster folder: `cluster down` stops only processes
/// whose command line names that folder.
fn link(dir: &Path, name: &str, bin: &Path) -> Result<std::path::PathBuf> {
    std::fs::create_dir_all(dir)?;
    let link = dir.join(name);
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(bin.join(name), &link)
        .with_context(|| format!("linking {}", link.display()))?;
    Ok(link)
}

/// Upstream's APIService, trusting KEDA's CA (what the operator's certificate rotation patches in),
/// and the Service it names, an `ExternalName` for this host's loopback: the aggregator connects to
/// `<externalName>:<port>` and checks the certificate against `keda-metrics-apiserver.keda.svc`.
fn register_api_service(paths: &Paths, source: &Path, port: u16, ca: &str) -> Result<()> {
    let service = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": METRICS_SERVICE,
            "namespace": NAMESPACE,
            "annotations": {
                "jitsi-k8s.dev/local-cluster": "the metrics server runs on the API server's host: a cluster routes to a ClusterIP Service instead"
            }
        },
        "spec": {
            "type": "ExternalName",
            "externalName": "127.0.0.1",
            "ports": [{ "name": "https", "port": port, "protocol": "TCP" }]
        }
    });
    let mut apply = server_side_apply();
    apply.push("--filename=-".to_owned());
    kubectl_owned(paths, &apply, Some(&service.to_string())).context("creating KEDA's metrics Service")?;

    let mut apply = server_side_apply();
    apply.push(format!(
        "--filename={}",
        source.join("config/metrics-server/api_service.yaml").display()
    ));
    kubectl_owned(paths, &apply, None).context("applying KEDA's APIService")?;
    use base64::Engine as _;
    let patch = serde_json::json!({
        "spec": {
            "caBundle": base64::engine::general_purpose::STANDARD.encode(ca),
            "service": { "name": METRICS_SERVICE, "namespace": NAMESPACE, "port": port }
        }
    });
    kubectl_owned(
        paths,
        &[
            "patch".to_owned(),
            "apiservice".to_owned(),
            API_SERVICE.to_owned(),
            "--type=merge".to_owned(),
            format!("--patch={patch}"),
        ],
        None,
    )
    .context("pointing the APIService at KEDA's metrics server")?;
    Ok(())
}

fn api_service_available(paths: &Paths) -> bool {
    kubectl_owned(
        paths,
        &[
            "get".to_owned(),
            "apiservice".to_owned(),
            API_SERVICE.to_owned(),
            "--output=jsonpath={.status.conditions[?(@.type==\"Available\")].status}".to_owned(),
        ],
        None,
    )
    .is_ok_and(|output| output.stdout == b"True")
}

fn wait_for(state: &State, name: &str, what: &str, mut ready: impl FnMut() -> bool) -> Result<()> {
    let process = state
        .process(name)
        .with_context(|| format!("{name} was not started"))?;
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        if ready() {
            return Ok(());
        }
        if !is_running(process.pid) {
            bail!("{name} exited during start-up:\n{}", log_tail(&process.log, 30));
        }
        if Instant::now() > deadline {
            bail!(
                "{name} did not {what} within 90 s:\n{}",
                log_tail(&process.log, 30)
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}
