//! `cargo xtask cluster up | down | status | env`: a real Kubernetes control plane on 127.0.0.1.
//!
//! etcd, kube-apiserver, kube-controller-manager and kube-scheduler (built
//! from the Kubernetes Go modules), and KWOK pretending to be the kubelets of a few fake Nodes. Every
//! process listens on loopback only, on ports picked free at start; everything the cluster writes lives
//! in one state folder that `down` removes.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Output};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

use local_cluster::process::{is_ours, is_running, log_tail, output_with_stdin, spawn_detached};
use local_cluster::{
    KUBERNETES_SERVICE_IP, NODE_PORT_RANGE, NODES, POD_CIDR, Process, SERVICE_CIDR, State, free_tcp_port,
};

use crate::gobuild::{self, GoProgram};
use crate::packages::which;
use crate::paths::Paths;
use crate::{pki, process};

#[derive(Debug, clap::Subcommand)]
pub enum Action {
    /// Start the cluster (reuses a healthy running one; cleans up after a crashed one).
    Up {
        /// Also a real dataplane: node network namespaces with kube-proxy, a client namespace (root).
        #[arg(long, env = "JITSI_K8S_DATAPLANE")]
        dataplane: bool,
        /// Also the Prometheus Operator, and Prometheus for the pods it creates (implies --dataplane).
        #[arg(long, env = "JITSI_K8S_MONITORING")]
        monitoring: bool,
        /// Also KEDA (operator and metrics API server, through the aggregation layer) feeding the HPA
        /// controller (implies --monitoring).
        #[arg(long, env = "JITSI_K8S_AUTOSCALING")]
        autoscaling: bool,
    },
    /// Stop every process the cluster started and remove its state.
    Down,
    /// Say what runs: processes, memory, apiserver readiness, nodes.
    Status,
    /// Print `export KUBECONFIG=...` for the running cluster.
    Env,
}

pub fn run(paths: &Paths, action: Action) -> Result<ExitCode> {
    match action {
        Action::Up {
            dataplane,
            monitoring,
            autoscaling,
        } => {
            up_with(
                paths,
                Extras {
                    dataplane: dataplane || monitoring || autoscaling,
                    monitoring: monitoring || autoscaling,
                    autoscaling,
                },
            )?;
            println!("export KUBECONFIG={}", paths.kubeconfig().display());
        }
        Action::Down => down(paths)?,
        Action::Status => return status(paths),
        Action::Env => {
            ensure!(
                load_state(paths).is_some(),
                "no local cluster is running; start one with `cargo xtask cluster up`"
            );
            println!("export KUBECONFIG={}", paths.kubeconfig().display());
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// CRDs the manifests use, installed from pinned Go modules (no downloads beyond the module proxy): the
/// wrapper folder under `xtask/go/`, the module, the folder of its CRDs, the files, and their names.
struct CrdSource {
    wrapper: &'static str,
    module: &'static str,
    dir: &'static str,
    files: &'static [&'static str],
    what: &'static str,
}

const CRD_SOURCES: [CrdSource; 3] = [
    CrdSource {
        wrapper: "prometheus-operator",
        module: "github.com/prometheus-operator/prometheus-operator",
        dir: "example/prometheus-operator-crd",
        files: &[
            "monitoring.coreos.com_podmonitors.yaml",
            "monitoring.coreos.com_servicemonitors.yaml",
            "monitoring.coreos.com_prometheusrules.yaml",
        ],
        what: "Prometheus Operator CRDs: PodMonitor, ServiceMonitor, PrometheusRule",
    },
    CrdSource {
        wrapper: "gateway-api",
        module: "sigs.k8s.io/gateway-api",
        dir: "config/crd/standard",
        files: &[
            "gateway.networking.k8s.io_gatewayclasses.yaml",
            "gateway.networking.k8s.io_gateways.yaml",
            "gateway.networking.k8s.io_httproutes.yaml",
            "gateway.networking.k8s.io_referencegrants.yaml",
        ],
        what: "Gateway API CRDs (standard channel): GatewayClass, Gateway, HTTPRoute, ReferenceGrant",
    },
    // On every cluster, KEDA running or not: the overlays carry ScaledObjects.
    CrdSource {
        wrapper: "keda",
        module: "github.com/kedacore/keda/v2",
        dir: "config/crd/bases",
        files: &[
            "keda.sh_scaledobjects.yaml",
            "keda.sh_triggerauthentications.yaml",
        ],
        what: "KEDA CRDs: ScaledObject, TriggerAuthentication",
    },
];

/// The API server's audit log records who wrote Services and Leases, and when (with the client's
/// User-Agent): how the tests prove that two controller replicas never write at once.
const AUDIT_POLICY: &str = "apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [\"RequestReceived\"]
rules:
  - level: Metadata
    verbs: [\"create\", \"update\", \"patch\", \"delete\"]
    resources:
      - group: \"\"
        resources: [\"services\"]
      - group: \"coordination.k8s.io\"
        resources: [\"leases\"]
  - level: None
";

/// Users of the token file. `system:masters` members are cluster admins; the others start with no
/// rights at all, for RBAC tests.
const USERS: [(&str, &str); 9] = [
    ("admin", "system:masters"),
    ("system:kube-controller-manager", "system:masters"),
    ("system:kube-scheduler", "system:masters"),
    ("kwok", "system:masters"),
    // Bound to system:node-proxier by the API server's default RBAC, as on a real cluster.
    (crate::dataplane::KUBE_PROXY_USER, ""),
    // Read-only on what a NetworkPolicy controller watches (crate::dataplane::KUBE_ROUTER_RBAC).
    (crate::dataplane::KUBE_ROUTER_USER, ""),
    ("alice", ""),
    ("bob", ""),
    ("carol", ""),
];

fn load_state(paths: &Paths) -> Option<State> {
    paths.cluster.load()
}

pub(crate) fn save_state(paths: &Paths, state: &State) -> Result<()> {
    paths
        .cluster
        .save(state)
        .context("writing the cluster's state file")
}

/// Whether the cluster described by the state file is up and answering.
fn is_healthy(paths: &Paths, state: &State) -> bool {
    state
        .processes
        .iter()
        .all(|p| is_ours(p.pid, paths.cluster.path()))
        && kubectl(paths, &["get", "--raw=/readyz", "--request-timeout=5s"]).is_ok()
}

/// Starts the cluster unless a healthy one runs. Returns true when this call started it.
pub fn up(paths: &Paths) -> Result<bool> {
    up_with(paths, Extras::default())
}

/// What a cluster may have beyond the control plane and its KWOK nodes.
#[derive(Clone, Copy, Debug, Default)]
pub struct Extras {
    /// Node network namespaces with kube-proxy and kube-router, a client namespace (`dataplane.rs`).
    pub dataplane: bool,
    /// The Prometheus Operator and the programs of its pods (`monitoring.rs`); needs the dataplane.
    pub monitoring: bool,
    /// KEDA, registered with the aggregation layer (`autoscaling.rs`); needs the monitoring.
    pub autoscaling: bool,
}

impl Extras {
    /// Everything: what the tests run on.
    pub const ALL: Extras = Extras {
        dataplane: true,
        monitoring: true,
        autoscaling: true,
    };
}

/// As [`up`], with the extras asked for (added to a running cluster that lacks them).
pub fn up_with(paths: &Paths, extras: Extras) -> Result<bool> {
    let monitoring = extras.monitoring || extras.autoscaling;
    let dataplane = extras.dataplane || monitoring;
    if let Some(mut state) = load_state(paths) {
        if is_healthy(paths, &state) {
            println!(
                "==> the local cluster is already running (Kubernetes {})",
                state.kubernetes_version
            );
            if dataplane && !local_cluster::dataplane::is_up() {
                let kubernetes_bin = gobuild::KUBERNETES.ensure_built(&paths.go_modules(), &paths.cache)?;
                crate::dataplane::up(paths, &mut state, &kubernetes_bin)?;
            }
            if monitoring && !local_cluster::monitoring::is_up(&paths.cluster) {
                crate::monitoring::up(paths, &mut state)?;
            }
            if extras.autoscaling && !local_cluster::autoscaling::is_up(&paths.cluster) {
                crate::autoscaling::up(paths, &mut state)?;
            }
            return Ok(false);
        }
        println!("==> found a local cluster that is not healthy (a crashed earlier run?): cleaning it up");
    }
    down_quietly(paths)?;

    let modules = paths.go_modules();
    let kubernetes_bin = gobuild::KUBERNETES.ensure_built(&modules, &paths.cache)?;
    let kwok_bin = gobuild::KWOK.ensure_built(&modules, &paths.cache)?;
    let etcd = gobuild::ETCD.ensure_built(&modules, &paths.cache)?.join("etcd");
    // Timed from here: start-up alone, whether or not the binaries had to be built first.
    let started = Instant::now();
    which("kubectl").context("kubectl is not installed")?;

    let dir = paths.cluster.path();
    std::fs::create_dir_all(paths.cluster.logs())?;
    let pki = pki::generate(&dir.join("pki"), KUBERNETES_SERVICE_IP)?;

    let mut state = State {
        kubernetes_version: gobuild::KUBERNETES.version(&modules)?,
        kwok_version: gobuild::KWOK.version(&modules)?,
        apiserver_port: free_tcp_port()?,
        etcd_client_port: free_tcp_port()?,
        scheduler_port: free_tcp_port()?,
        processes: Vec::new(),
    };
    let etcd_peer_port = free_tcp_port()?;
    let tokens = write_credentials(paths, &pki, state.apiserver_port)?;
    let audit_policy = dir.join("audit-policy.yaml");
    std::fs::write(&audit_policy, AUDIT_POLICY)?;
    println!(
        "==> starting Kubernetes {} on https://127.0.0.1:{}",
        state.kubernetes_version, state.apiserver_port
    );

    let etcd_client = format!("http://127.0.0.1:{}", state.etcd_client_port);
    let etcd_peer = format!("http://127.0.0.1:{etcd_peer_port}");
    let etcd_args = args(&[
        "--name=default",
        &format!("--data-dir={}", dir.join("etcd").display()),
        &format!("--listen-client-urls={etcd_client}"),
        &format!("--advertise-client-urls={etcd_client}"),
        &format!("--listen-peer-urls={etcd_peer}"),
        &format!("--initial-advertise-peer-urls={etcd_peer}"),
        &format!("--initial-cluster=default={etcd_peer}"),
        "--log-level=warn",
        // A throw-away test cluster: losing the last writes on a machine crash does not matter.
        "--unsafe-no-fsync",
    ]);
    start(paths, &mut state, "etcd", &etcd, &etcd_args)?;
    let etcd_alive = state.processes[0].clone();
    process::wait_for_port(state.etcd_client_port, Duration::from_secs(30), || {
        is_running(etcd_alive.pid)
    })
    .with_context(|| format!("etcd did not start:\n{}", log_tail(&etcd_alive.log, 20)))?;

    let apiserver_args = args(&[
        &format!("--etcd-servers={etcd_client}"),
        "--bind-address=127.0.0.1",
        "--advertise-address=127.0.0.1",
        &format!("--secure-port={}", state.apiserver_port),
        &format!("--tls-cert-file={}", pki.serving_cert.display()),
        &format!("--tls-private-key-file={}", pki.serving_key.display()),
        &format!("--client-ca-file={}", pki.ca_cert.display()),
        &format!("--token-auth-file={}", tokens.display()),
        "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
        &format!("--service-account-key-file={}", pki.service_account_pub.display()),
        &format!(
            "--service-account-signing-key-file={}",
            pki.service_account_key.display()
        ),
        &format!("--service-cluster-ip-range={SERVICE_CIDR}"),
        &format!(
            "--service-node-port-range={}-{}",
            NODE_PORT_RANGE.0, NODE_PORT_RANGE.1
        ),
        "--authorization-mode=RBAC",
        // The aggregation layer, as kubeadm configures it: extension API servers (KEDA's metrics
        // server) trust the headers of whoever presents the front-proxy client certificate.
        &format!("--requestheader-client-ca-file={}", pki.front_proxy_ca.display()),
        &format!("--requestheader-allowed-names={}", pki::FRONT_PROXY_CLIENT),
        "--requestheader-username-headers=X-Remote-User",
        "--requestheader-group-headers=X-Remote-Group",
        "--requestheader-extra-headers-prefix=X-Remote-Extra-",
        &format!(
            "--proxy-client-cert-file={}",
            pki.front_proxy_client_cert.display()
        ),
        &format!("--proxy-client-key-file={}", pki.front_proxy_client_key.display()),
        "--allow-privileged=true",
        "--endpoint-reconciler-type=none",
        "--profiling=false",
        &format!("--cert-dir={}", dir.join("pki").display()),
        &format!("--audit-policy-file={}", audit_policy.display()),
        &format!(
            "--audit-log-path={}",
            paths.cluster.logs().join("audit.log").display()
        ),
        "--audit-log-format=json",
    ]);
    start(
        paths,
        &mut state,
        "kube-apiserver",
        &kubernetes_bin.join("kube-apiserver"),
        &apiserver_args,
    )?;
    wait_until_ready(paths, &state, "kube-apiserver", Duration::from_secs(180))?;
    println!("==> kube-apiserver ready after {:.1?}", started.elapsed());

    install_crds(paths)?;

    let controller_manager_args = args(&[
        &format!(
            "--kubeconfig={}",
            dir.join("kube-controller-manager.kubeconfig").display()
        ),
        "--leader-elect=false",
        "--bind-address=127.0.0.1",
        "--secure-port=0",
        &format!("--root-ca-file={}", pki.ca_cert.display()),
        &format!(
            "--service-account-private-key-file={}",
            pki.service_account_key.display()
        ),
        // Each controller under its own ServiceAccount, as on kubeadm clusters: the HPA controller
        // reads external metrics as `kube-system/horizontal-pod-autoscaler`, which KEDA's RBAC binds.
        "--use-service-account-credentials=true",
        "--kube-api-qps=200",
        "--kube-api-burst=400",
        "--concurrent-statefulset-syncs=10",
        "--profiling=false",
    ]);
    start(
        paths,
        &mut state,
        "kube-controller-manager",
        &kubernetes_bin.join("kube-controller-manager"),
        &controller_manager_args,
    )?;

    let scheduler_kubeconfig = dir.join("kube-scheduler.kubeconfig");
    let scheduler_args = args(&[
        &format!("--kubeconfig={}", scheduler_kubeconfig.display()),
        &format!("--authentication-kubeconfig={}", scheduler_kubeconfig.display()),
        &format!("--authorization-kubeconfig={}", scheduler_kubeconfig.display()),
        "--leader-elect=false",
        "--bind-address=127.0.0.1",
        &format!("--secure-port={}", state.scheduler_port),
        "--kube-api-qps=200",
        "--kube-api-burst=400",
        "--profiling=false",
    ]);
    start(
        paths,
        &mut state,
        "kube-scheduler",
        &kubernetes_bin.join("kube-scheduler"),
        &scheduler_args,
    )?;

    let stages = write_kwok_stages(paths, &gobuild::KWOK)?;
    let mut kwok_args = args(&[
        &format!("--kubeconfig={}", dir.join("kwok.kubeconfig").display()),
        "--manage-all-nodes=false",
        "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
        "--node-lease-duration-seconds=40",
        &format!("--cidr={POD_CIDR}"),
        &format!("--node-ip={}", NODES[0].ip),
    ]);
    kwok_args.extend(stages.iter().map(|stage| format!("--config={}", stage.display())));
    start(paths, &mut state, "kwok", &kwok_bin.join("kwok"), &kwok_args)?;

    create_nodes(paths)?;
    wait_for_nodes(paths, &state)?;
    println!(
        "==> local cluster up in {:.1?}: {} KWOK nodes Ready, kubeconfig {}",
        started.elapsed(),
        NODES.len(),
        paths.kubeconfig().display()
    );
    if dataplane {
        crate::dataplane::up(paths, &mut state, &kubernetes_bin)?;
    }
    if monitoring {
        crate::monitoring::up(paths, &mut state)?;
    }
    if extras.autoscaling {
        crate::autoscaling::up(paths, &mut state)?;
    }
    Ok(true)
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|arg| (*arg).to_owned()).collect()
}

pub(crate) fn start(
    paths: &Paths,
    state: &mut State,
    name: &str,
    program: &Path,
    args: &[String],
) -> Result<()> {
    let log = paths.cluster.logs().join(format!("{name}.log"));
    let pid =
        spawn_detached(program, args, &log).with_context(|| format!("starting {}", program.display()))?;
    state.processes.push(Process {
        name: name.to_owned(),
        pid,
        program: program.to_path_buf(),
        args: args.to_vec(),
        log,
    });
    // Saved after every start, so a crash half-way through `up` still lets the next run stop these.
    save_state(paths, state)
}

fn wait_until_ready(paths: &Paths, state: &State, name: &str, timeout: Duration) -> Result<()> {
    let running = state.process(name).context("process not started")?;
    let deadline = Instant::now() + timeout;
    loop {
        if kubectl(paths, &["get", "--raw=/readyz", "--request-timeout=5s"]).is_ok() {
            return Ok(());
        }
        if !is_running(running.pid) {
            bail!("{name} exited during start-up:\n{}", log_tail(&running.log, 30));
        }
        if Instant::now() >= deadline {
            bail!(
                "{name} was not ready within {timeout:?}:\n{}",
                log_tail(&running.log, 30)
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Writes the token file and a kubeconfig per user; returns the token file's path.
fn write_credentials(paths: &Paths, pki: &pki::Pki, apiserver_port: u16) -> Result<PathBuf> {
    let dir = paths.cluster.path();
    let server = format!("https://127.0.0.1:{apiserver_port}");
    let mut token_file = String::new();
    let mut users = Vec::new();
    for (index, (user, groups)) in USERS.iter().enumerate() {
        let token = random_token()?;
        writeln!(token_file, "{token},{user},uid-{index},\"{groups}\"")?;
        users.push((*user, token));
    }
    let tokens = dir.join("pki/tokens.csv");
    std::fs::write(&tokens, token_file)?;
    let kubeconfig = |entries: &[(&str, String)], current: &str| -> String {
        let mut text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: local\n  cluster:\n    server: {server}\n    certificate-authority: {}\n",
            pki.ca_cert.display()
        );
        text.push_str("users:\n");
        for (user, token) in entries {
            text.push_str(&format!("- name: {user}\n  user:\n    token: {token}\n"));
        }
        text.push_str("contexts:\n");
        for (user, _) in entries {
            let context = context_name(user);
            text.push_str(&format!(
                "- name: {context}\n  context:\n    cluster: local\n    user: {user}\n"
            ));
        }
        text.push_str(&format!("current-context: {}\n", context_name(current)));
        text
    };
    let humans: Vec<(&str, String)> = users
        .iter()
        .filter(|(user, _)| !user.starts_with("system:") && *user != "kwok")
        .cloned()
        .collect();
    std::fs::write(paths.kubeconfig(), kubeconfig(&humans, "admin"))?;
    for (user, file) in [
        (
            "system:kube-controller-manager",
            "kube-controller-manager.kubeconfig",
        ),
        ("system:kube-scheduler", "kube-scheduler.kubeconfig"),
        ("kwok", "kwok.kubeconfig"),
        (
            crate::dataplane::KUBE_PROXY_USER,
            crate::dataplane::KUBE_PROXY_KUBECONFIG,
        ),
        (
            crate::dataplane::KUBE_ROUTER_USER,
            crate::dataplane::KUBE_ROUTER_KUBECONFIG,
        ),
    ] {
        let entry: Vec<(&str, String)> = users.iter().filter(|(u, _)| *u == user).cloned().collect();
        std::fs::write(dir.join(file), kubeconfig(&entry, user))?;
    }
    Ok(tokens)
}

fn context_name(user: &str) -> String {
    user.trim_start_matches("system:").to_owned()
}

fn random_token() -> Result<String> {
    let mut bytes = [0u8; 16];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

fn install_crds(paths: &Paths) -> Result<()> {
    for source in &CRD_SOURCES {
        let wrapper = paths.go_modules().join(source.wrapper);
        let version = gobuild::pinned_version(&wrapper, source.module)?;
        let crd_dir = gobuild::module_source_dir(&wrapper, source.module, &version)?.join(source.dir);
        let mut apply = vec![
            "apply".to_owned(),
            "--server-side".to_owned(),
            "--field-manager=xtask".to_owned(),
        ];
        let mut names = vec![
            "wait".to_owned(),
            "--for=condition=Established".to_owned(),
            "--timeout=60s".to_owned(),
        ];
        for file in source.files {
            apply.push(format!("--filename={}", crd_dir.join(file).display()));
            names.push(crd_name(file)?);
        }
        kubectl_owned(paths, &apply, None).with_context(|| format!("installing the {}", source.what))?;
        kubectl_owned(paths, &names, None)?;
        println!("==> {} {version}: {}", source.module, source.what);
    }
    Ok(())
}

/// The resource name of the CRD a file holds, as `kubectl wait` takes it:
/// gateway.networking.k8s.io_httproutes.yaml → crd/httproutes.gateway.networking.k8s.io
pub(crate) fn crd_name(file: &str) -> Result<String> {
    let (group, plural) = file
        .trim_end_matches(".yaml")
        .split_once('_')
        .with_context(|| format!("CRD file name {file} is not <group>_<plural>.yaml"))?;
    Ok(format!("crd/{plural}.{group}"))
}

/// KWOK has no built-in stages. We use its `general` pod stages — which, like a kubelet, delete a pod
/// only once its finalizers are gone — and take out their artificial 1–6 s delays so tests run fast.
/// A test can still slow one pod down with KWOK's per-pod delay annotations.
fn write_kwok_stages(paths: &Paths, kwok: &GoProgram) -> Result<Vec<PathBuf>> {
    let source = kwok.module_dir(&paths.go_modules())?.join("kustomize/stage");
    let out = paths.cluster.path().join("kwok-stages");
    std::fs::create_dir_all(&out)?;
    let mut written = Vec::new();
    let pod_stages = [
        "pod-create.yaml",
        "pod-init-container-running.yaml",
        "pod-init-container-completed.yaml",
        "pod-ready.yaml",
        "pod-complete.yaml",
        "pod-delete.yaml",
    ];
    for name in pod_stages {
        let text = std::fs::read_to_string(source.join("pod/general").join(name))
            .with_context(|| format!("reading KWOK stage {name}"))?;
        let target = out.join(name);
        std::fs::write(&target, without_delays(&text))?;
        written.push(target);
    }
    for (folder, name) in [
        ("node/fast", "node-initialize.yaml"),
        ("node/heartbeat-with-lease", "node-heartbeat-with-lease.yaml"),
    ] {
        let target = out.join(name);
        std::fs::copy(source.join(folder).join(name), &target)
            .with_context(|| format!("copying KWOK stage {name}"))?;
        written.push(target);
    }
    Ok(written)
}

/// Sets a stage's fixed delays and jitter to zero and drops the jitter "until the deletion timestamp"
/// (which makes a deleted pod linger for a random part of its grace period). The per-pod annotation
/// overrides (`durationFrom`, `jitterDurationFrom` on annotations) stay.
fn without_delays(stage: &str) -> String {
    let lines: Vec<&str> = stage.lines().collect();
    let mut out = String::with_capacity(stage.len());
    let mut skip_next = false;
    for (index, line) in lines.iter().enumerate() {
        if std::mem::take(&mut skip_next) {
            continue;
        }
        let trimmed = line.trim_start();
        let indent = &line[..line.len() - trimmed.len()];
        if trimmed.starts_with("jitterDurationFrom:")
            && lines
                .get(index + 1)
                .is_some_and(|next| next.contains("'.metadata.deletionTimestamp'"))
        {
            skip_next = true;
            continue;
        }
        if let Some(key) = ["durationMilliseconds:", "jitterDurationMilliseconds:"]
            .iter()
            .find(|key| trimmed.starts_with(**key))
        {
            out.push_str(&format!("{indent}{key} 0\n"));
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

fn nodes_yaml() -> String {
    let mut yaml = String::new();
    for node in NODES {
        let (name, zone, ip) = (node.name, node.zone, node.ip);
        yaml.push_str(&format!(
            "---
apiVersion: v1
kind: Node
metadata:
  name: {name}
  annotations:
    kwok.x-k8s.io/node: fake
    node.alpha.kubernetes.io/ttl: \"0\"
  labels:
    kubernetes.io/hostname: {name}
    kubernetes.io/os: linux
    kubernetes.io/arch: amd64
    type: kwok
    topology.kubernetes.io/region: local
    topology.kubernetes.io/zone: {zone}
status:
  addresses:
  - type: InternalIP
    address: {ip}
  - type: Hostname
    address: {name}
  allocatable: {{cpu: \"32\", memory: 128Gi, pods: \"1000\"}}
  capacity: {{cpu: \"32\", memory: 128Gi, pods: \"1000\"}}
"
        ));
    }
    yaml
}

fn create_nodes(paths: &Paths) -> Result<()> {
    // `create`, not `apply`: a Node's status is kept on create only, and KWOK keeps the capacity it
    // finds there. Both addresses must be there from the start: KWOK's node-initialize stage renders
    // a node that lacks one of them into a patch that wipes `status.addresses` (seen: kube-router
    // then found no InternalIP and exited), and that patch may land after any repair of ours.
    kubectl_owned(
        paths,
        &["create".to_owned(), "--filename=-".to_owned()],
        Some(&nodes_yaml()),
    )
    .context("creating the fake Nodes")?;
    Ok(())
}

fn wait_for_nodes(paths: &Paths, state: &State) -> Result<()> {
    let kwok = state.process("kwok").context("kwok not started")?;
    let result = kubectl(
        paths,
        &["wait", "--for=condition=Ready", "--timeout=90s", "node", "--all"],
    );
    result.with_context(|| {
        format!(
            "the KWOK nodes did not become Ready:\n{}",
            log_tail(&kwok.log, 20)
        )
    })?;
    // kube-proxy, kube-router, the pods' hostIP and jvb-startup all read the InternalIP.
    let listed = kubectl(
        paths,
        &[
            "get",
            "nodes",
            "--output=jsonpath={range .items[*]}{.metadata.name}={.status.addresses[?(@.type==\"InternalIP\")].address}{\"\\n\"}{end}",
        ],
    )?;
    let listed = String::from_utf8_lossy(&listed.stdout);
    for node in NODES {
        let expected = format!("{}={}", node.name, node.ip);
        ensure!(
            listed.lines().any(|line| line == expected),
            "node {} does not carry its InternalIP {} after start-up (nodes: {})",
            node.name,
            node.ip,
            listed.trim().replace('\n', ", ")
        );
    }
    Ok(())
}

/// Stops everything and removes the state; says what it did.
pub fn down(paths: &Paths) -> Result<()> {
    let dir = paths.cluster.path();
    if !dir.exists() {
        println!("==> no local cluster state at {}: nothing to stop", dir.display());
        return Ok(());
    }
    let stopped = down_quietly(paths)?;
    println!("==> stopped {stopped} processes and removed {}", dir.display());
    Ok(())
}

fn down_quietly(paths: &Paths) -> Result<usize> {
    let dir = paths.cluster.path();
    let mut stopped = 0;
    if let Some(state) = load_state(paths) {
        // Reverse start order: the apiserver's clients first, etcd last.
        for running in state.processes.iter().rev() {
            if is_ours(running.pid, dir) {
                process::stop(running.pid, dir, Duration::from_secs(10));
                stopped += 1;
            }
        }
    }
    crate::dataplane::remove_all();
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    Ok(stopped)
}

fn status(paths: &Paths) -> Result<ExitCode> {
    let Some(state) = load_state(paths) else {
        println!(
            "no local cluster (state folder {} absent)",
            paths.cluster.path().display()
        );
        return Ok(ExitCode::FAILURE);
    };
    println!(
        "Kubernetes {} (KWOK {}), API https://127.0.0.1:{}",
        state.kubernetes_version, state.kwok_version, state.apiserver_port
    );
    println!(
        "{:<26} {:>8} {:>8} {:>10}  log",
        "process", "pid", "state", "RSS MiB"
    );
    let mut all_running = true;
    for running in &state.processes {
        let alive = is_ours(running.pid, paths.cluster.path());
        all_running &= alive;
        let rss = if alive {
            rss_mib(running.pid)
                .map(|m| format!("{m:.1}"))
                .unwrap_or_default()
        } else {
            String::new()
        };
        println!(
            "{:<26} {:>8} {:>8} {:>10}  {}",
            running.name,
            running.pid,
            if alive { "running" } else { "DEAD" },
            rss,
            running.log.display()
        );
    }
    let ready = kubectl(paths, &["get", "--raw=/readyz", "--request-timeout=5s"]).is_ok();
    println!("apiserver /readyz: {}", if ready { "ok" } else { "NOT READY" });
    if ready
        && let Ok(out) = kubectl(
            paths,
            &["get", "nodes", "--label-columns=topology.kubernetes.io/zone"],
        )
    {
        print!("{}", String::from_utf8_lossy(&out.stdout));
    }
    println!("export KUBECONFIG={}", paths.kubeconfig().display());
    Ok(if all_running && ready {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib / 1024.0)
}

fn kubectl(paths: &Paths, args: &[&str]) -> Result<Output> {
    let owned: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    kubectl_owned(paths, &owned, None)
}

pub(crate) fn kubectl_owned(paths: &Paths, args: &[String], stdin: Option<&str>) -> Result<Output> {
    let mut command = Command::new("kubectl");
    command
        .arg(format!("--kubeconfig={}", paths.kubeconfig().display()))
        .args(args);
    let output =
        output_with_stdin(&mut command, stdin.unwrap_or_default().as_bytes()).context("running kubectl")?;
    ensure!(
        output.status.success(),
        "kubectl {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr).trim()
    );
    Ok(output)
}

#[cfg(test)]
mod tests {
    use super::*;

    const POD_DELETE: &str = "spec:
  delay:
    durationMilliseconds: 1000
    durationFrom:
      expressionFrom: '.metadata.annotations[\"pod-delete.stage.kwok.x-k8s.io/delay\"]'
    jitterDurationFrom:
      expressionFrom: '.metadata.deletionTimestamp'
  next:
    delete: true
";

    #[test]
    fn without_delays_zeroes_delays_and_drops_grace_period_jitter() {
        let quick = without_delays(POD_DELETE);
        assert!(quick.contains("    durationMilliseconds: 0\n"), "{quick}");
        assert!(!quick.contains("deletionTimestamp"), "{quick}");
        assert!(!quick.contains("jitterDurationFrom"), "{quick}");
        assert!(
            quick.contains("pod-delete.stage.kwok.x-k8s.io/delay"),
            "annotation override kept: {quick}"
        );
        assert!(quick.contains("    delete: true"), "{quick}");
    }

    #[test]
    fn without_delays_keeps_annotation_jitter_and_zeroes_fixed_jitter() {
        let stage = "  delay:\n    jitterDurationMilliseconds: 5000\n    jitterDurationFrom:\n      expressionFrom: '.metadata.annotations[\"x\"]'\n";
        let quick = without_delays(stage);
        assert!(quick.contains("jitterDurationMilliseconds: 0"));
        assert!(quick.contains("jitterDurationFrom:\n      expressionFrom: '.metadata.annotations[\"x\"]'"));
    }

    #[test]
    fn every_node_is_a_kwok_node() {
        let yaml = nodes_yaml();
        assert_eq!(yaml.matches("kwok.x-k8s.io/node: fake").count(), NODES.len());
    }
}
