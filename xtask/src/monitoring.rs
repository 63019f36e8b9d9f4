//! `cargo xtask cluster up --monitoring`: the real Prometheus Operator against the local cluster, and the
//! programs its Prometheus pods run. KWOK runs no container, so the operator's StatefulSet pods are
//! scheduled and Running but empty; the testbed runs what their containers would (`testbed::pod_runtime`):
//! Prometheus and the config reloader, in the pod's network namespace at its pod IP, with the pod's
//! volumes and service-account token where the pod spec mounts them.
//!
//! The operator runs as upstream's own example deploys it: its ServiceAccount `prometheus-operator` in
//! `default`, bound to the ClusterRole of the module's `example/rbac/prometheus-operator/`, through a
//! token of that ServiceAccount (TokenRequest) — not as cluster admin.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use local_cluster::monitoring::{OPERATOR_PROCESS, image_programs};
use local_cluster::process::{is_running, log_tail};
use local_cluster::{State, free_tcp_port};

use crate::cluster::{kubectl_owned, start};
use crate::gobuild::{self, module_source_dir, pinned_version};
use crate::paths::Paths;

/// CRDs the operator's Prometheus controller reads beyond those every local cluster has (PodMonitor,
/// ServiceMonitor, PrometheusRule): the Prometheus resource itself, Probe and ScrapeConfig.
const EXTRA_CRDS: [&str; 3] = [
    "monitoring.coreos.com_prometheuses.yaml",
    "monitoring.coreos.com_probes.yaml",
    "monitoring.coreos.com_scrapeconfigs.yaml",
];

/// Upstream's RBAC for the operator (namespace `default`), applied as it is.
const OPERATOR_RBAC: [&str; 3] = [
    "prometheus-operator-service-account.yaml",
    "prometheus-operator-cluster-role.yaml",
    "prometheus-operator-cluster-role-binding.yaml",
];

/// The image the operator writes into its pods for the reloader; only its name matters here (the
/// testbed runs the program linked under that name).
fn reloader_image(version: &str) -> String {
    format!("quay.io/prometheus-operator/prometheus-config-reloader:{version}")
}

/// Starts the operator next to a running control plane with a dataplane.
pub fn up(paths: &Paths, state: &mut State) -> Result<()> {
    crate::packages::ensure_commands(&crate::packages::POD_RUNTIME_PROGRAMS)?;
    let modules = paths.go_modules();
    let operator_bin = gobuild::PROMETHEUS_OPERATOR.ensure_built(&modules, &paths.cache)?;
    let prometheus_bin = gobuild::PROMETHEUS.ensure_built(&modules, &paths.cache)?;
    let started = Instant::now();
    let wrapper = modules.join(gobuild::PROMETHEUS_OPERATOR.wrapper);
    let version = pinned_version(&wrapper, gobuild::PROMETHEUS_OPERATOR.module)?;
    let source = module_source_dir(&wrapper, gobuild::PROMETHEUS_OPERATOR.module, &version)?;

    let crds = source.join("example/prometheus-operator-crd");
    let mut apply = server_side_apply();
    let mut wait = vec![
        "wait".to_owned(),
        "--for=condition=Established".to_owned(),
        "--timeout=60s".to_owned(),
    ];
    for file in EXTRA_CRDS {
        apply.push(format!("--filename={}", crds.join(file).display()));
        wait.push(crate::cluster::crd_name(file)?);
    }
    kubectl_owned(paths, &apply, None).context("installing the Prometheus and Probe CRDs")?;
    kubectl_owned(paths, &wait, None)?;

    let rbac = source.join("example/rbac/prometheus-operator");
    let mut apply = server_side_apply();
    apply.extend(
        OPERATOR_RBAC
            .iter()
            .map(|file| format!("--filename={}", rbac.join(file).display())),
    );
    kubectl_owned(paths, &apply, None).context("applying the operator's upstream RBAC")?;
    let namespace = format!(
        "{{\"apiVersion\":\"v1\",\"kind\":\"Namespace\",\"metadata\":{{\"name\":\"{}\"}}}}",
        local_cluster::monitoring::NAMESPACE
    );
    let mut apply = server_side_apply();
    apply.push("--filename=-".to_owned());
    kubectl_owned(paths, &apply, Some(&namespace))?;

    let dir = paths.cluster.path().join("monitoring");
    std::fs::create_dir_all(&dir)?;
    let kubeconfig = dir.join("prometheus-operator.kubeconfig");
    write_service_account_kubeconfig(paths, state, "default", "prometheus-operator", &kubeconfig)?;

    // Started through a link in the cluster folder: `cluster down` stops only processes whose command
    // line names that folder, and the operator's flags name no path.
    let operator = dir.join("operator");
    let _ = std::fs::remove_file(&operator);
    std::os::unix::fs::symlink(operator_bin.join("operator"), &operator)
        .with_context(|| format!("linking {}", operator.display()))?;
    let port = free_tcp_port()?;
    start(
        paths,
        state,
        OPERATOR_PROCESS,
        Path::new("/usr/bin/env"),
        &[
            format!("KUBECONFIG={}", kubeconfig.display()),
            operator.display().to_string(),
            format!("--web.listen-address=127.0.0.1:{port}"),
            format!("--prometheus-config-reloader={}", reloader_image(&version)),
            "--log-level=info".to_owned(),
        ],
    )?;
    wait_for_health(state, port)?;

    let images = image_programs(&paths.cluster);
    std::fs::create_dir_all(&images)?;
    for (name, program) in [
        ("prometheus", prometheus_bin.join("prometheus")),
        (
            "prometheus-config-reloader",
            operator_bin.join("prometheus-config-reloader"),
        ),
    ] {
        let link = images.join(name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&program, &link)
            .with_context(|| format!("linking {} to {}", link.display(), program.display()))?;
    }
    println!(
        "==> monitoring up in {:.1?}: Prometheus Operator {version} (its upstream RBAC), Prometheus {} for its pods",
        started.elapsed(),
        gobuild::prometheus_release(&gobuild::PROMETHEUS.version(&modules)?)
    );
    Ok(())
}

pub(crate) fn server_side_apply() -> Vec<String> {
    vec![
        "apply".to_owned(),
        "--server-side".to_owned(),
        "--field-manager=xtask".to_owned(),
    ]
}

/// A kubeconfig for a ServiceAccount, with a token from the TokenRequest API (as a projected token
/// would be, but long enough for any local session).
pub(crate) fn write_service_account_kubeconfig(
    paths: &Paths,
    state: &State,
    namespace: &str,
    account: &str,
    kubeconfig: &Path,
) -> Result<()> {
    let token = kubectl_owned(
        paths,
        &[
            "create".to_owned(),
            "token".to_owned(),
            account.to_owned(),
            format!("--namespace={namespace}"),
            "--duration=168h".to_owned(),
        ],
        None,
    )
    .with_context(|| format!("requesting a token for the ServiceAccount {namespace}/{account}"))?;
    let token = String::from_utf8_lossy(&token.stdout).trim().to_owned();
    let ca = paths.cluster.path().join("pki/ca.crt");
    std::fs::write(
        kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: local\n  cluster:\n    server: https://127.0.0.1:{}\n    certificate-authority: {}\nusers:\n- name: {account}\n  user:\n    token: {token}\ncontexts:\n- name: {account}\n  context:\n    cluster: local\n    user: {account}\ncurrent-context: {account}\n",
            state.apiserver_port,
            ca.display()
        ),
    )?;
    Ok(())
}

fn wait_for_health(state: &State, port: u16) -> Result<()> {
    let process = state
        .process(OPERATOR_PROCESS)
        .context("the operator was not started")?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if healthz_answers(port) {
            return Ok(());
        }
        if !is_running(process.pid) {
            bail!(
                "the Prometheus Operator exited during start-up:\n{}",
                log_tail(&process.log, 30)
            );
        }
        if Instant::now() > deadline {
            bail!(
                "the Prometheus Operator did not answer /healthz within 60 s:\n{}",
                log_tail(&process.log, 30)
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// `GET /healthz` on 127.0.0.1:`port` answered 200.
pub(crate) fn healthz_answers(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let request = format!("GET /healthz HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n");
    let mut answer = String::new();
    stream.write_all(request.as_bytes()).is_ok()
        && stream.read_to_string(&mut answer).is_ok()
        && answer.starts_with("HTTP/1.")
        && answer.split_whitespace().nth(1) == Some("200")
}
