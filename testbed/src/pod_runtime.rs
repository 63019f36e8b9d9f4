//! What a kubelet would do for a pod whose containers are programs we can run for real (Prometheus and
//! the operator's config reloader): KWOK schedules the pod and marks it Running but starts nothing, so
//! this runs each container's program as the pod spec says.
//!
//! - Network: the pod's own network namespace at its pod IP, wired to its node ([`PodNet`]); the API
//!   server, which listens on the host's loopback only, appears at `127.0.0.1:<port>` inside the pod
//!   (a forwarder through the dataplane's Unix socket) and `KUBERNETES_SERVICE_HOST`/`_PORT` say so —
//!   where a kubelet would give the `kubernetes` Service's address, which the local cluster does not
//!   route (`--endpoint-reconciler-type=none`).
//! - Files: each container gets its own root (`chroot`), holding its image's program at the path of
//!   the image's entrypoint, `/etc/hosts` as the kubelet writes it, and every volume at its
//!   `mountPath` (bind mounts in a mount namespace of its own, so containers share a volume as they
//!   would). Secrets, ConfigMaps, projected service-account tokens (TokenRequest bound to the pod, the
//!   cluster's CA, the namespace) and emptyDirs are written as the kubelet writes them, and Secrets
//!   and ConfigMaps are re-read every two seconds, as the kubelet refreshes mounted volumes.
//! - Process: init containers to completion first, then the containers, as the pod's user and group,
//!   with the container's environment (values, field references) and `$(VAR)` expanded in its args.
//!
//! Anything else a pod spec may ask for is refused with a panic that names it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, Secret, ServiceAccount, Volume};
use kube::api::PostParams;
use kube::{Api, Client, ResourceExt};
use local_cluster::ClusterDir;
use local_cluster::dataplane;

use crate::Cluster;
use crate::dataplane::PodNet;

/// How often mounted Secrets and ConfigMaps are re-read (the kubelet's sync period is about a minute;
/// tests wait for changes, so this is quicker).
const VOLUME_SYNC: Duration = Duration::from_secs(2);

/// A pod whose containers run here; stopped, unmounted and removed when dropped.
pub struct PodRuntime {
    pub net: PodNet,
    dir: PathBuf,
    containers: Vec<(String, Child)>,
    forwarders: Vec<Child>,
    stop_sync: Arc<AtomicBool>,
}

impl std::fmt::Debug for PodRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PodRuntime")
            .field("pod", &self.net.name)
            .field("ip", &self.net.ip)
            .finish_non_exhaustive()
    }
}

/// Where a volume's files are written, and what it is made of.
#[derive(Clone, Debug)]
struct VolumeFiles {
    name: String,
    dir: PathBuf,
    source: VolumeSource,
}

#[derive(Clone, Debug)]
enum VolumeSource {
    EmptyDir,
    /// Files re-read from the API: Secret and ConfigMap volumes, projected volumes.
    Api(Vec<ApiFiles>),
}

/// One source of files from the API, with the key → path mapping of its `items` (all keys when none).
#[derive(Clone, Debug)]
enum ApiFiles {
    Secret {
        name: String,
        items: Option<Vec<(String, String)>>,
        optional: bool,
    },
    ConfigMap {
        name: String,
        items: Option<Vec<(String, String)>>,
        optional: bool,
    },
    /// A service-account token bound to the pod, written once (it outlives any test).
    Token { path: String, expiration: i64 },
    /// A downward API item: `metadata.namespace` and the like.
    Field { path: String, field: String },
}

impl PodRuntime {
    /// Runs `pod`'s containers, their programs found in `programs` by the last path element of each
    /// container's image repository (`quay.io/prometheus/prometheus:v3.5.0` → `programs/prometheus`).
    /// Returns once every init container has completed and every container has started.
    pub async fn start(cluster: &Cluster, pod: &Pod, programs: &Path) -> Self {
        Self::start_containers(cluster, pod, programs, None).await
    }

    /// As [`PodRuntime::start`], running only the containers named in `only` when given (the others
    /// are stood in for by the caller, e.g. with [`PodRuntime::forward_in`]).
    pub async fn start_containers(
        cluster: &Cluster,
        pod: &Pod,
        programs: &Path,
        only: Option<&[&str]>,
    ) -> Self {
        let name = pod.name_any();
        let namespace = pod.namespace().unwrap_or_default();
        let uid = pod.uid().unwrap_or_else(|| panic!("{name} has no UID"));
        let spec = pod.spec.clone().unwrap_or_else(|| panic!("{name} has no spec"));
        let net = PodNet::attach(pod);
        let dir = ClusterDir::discover().path().join("pods").join(&uid);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("volumes")).expect("creating the pod's folder");

        let volumes: Vec<VolumeFiles> = spec
            .volumes
            .iter()
            .flatten()
            .map(|volume| volume_files(&dir, volume, &name))
            .collect();
        let client = cluster.admin();
        for volume in &volumes {
            write_volume(&client, &namespace, pod, volume, true).await;
        }
        let stop_sync = Arc::new(AtomicBool::new(false));
        {
            let stop = stop_sync.clone();
            let (client, namespace, pod, volumes) =
                (client.clone(), namespace.clone(), pod.clone(), volumes.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    tokio::time::sleep(VOLUME_SYNC).await;
                    for volume in &volumes {
                        write_volume(&client, &namespace, &pod, volume, false).await;
                    }
                }
            });
        }

        let apiserver = cluster.apiserver_addr();
        let socket = ClusterDir::discover().path().join("dataplane/apiserver.sock");
        let forwarder = socat(
            Some(&dataplane::pod_namespace(&uid)),
            format!("TCP-LISTEN:{},bind=127.0.0.1,fork,reuseaddr", apiserver.port()),
            format!("UNIX-CONNECT:{}", socket.display()),
            "starting the API server's forwarder in the pod",
        );

        let mut runtime = Self {
            net,
            dir,
            containers: Vec::new(),
            forwarders: vec![forwarder],
            stop_sync,
        };
        let context = Context {
            pod,
            volumes: &volumes,
            programs,
            apiserver_port: apiserver.port(),
        };
        let chosen = |container: &&Container| only.is_none_or(|only| only.contains(&container.name.as_str()));
        for container in spec.init_containers.iter().flatten().filter(chosen) {
            if container.restart_policy.as_deref() == Some("Always") {
                // A sidecar: started in order, kept running.
                let child = runtime.spawn(&context, container);
                runtime.containers.push((container.name.clone(), child));
                continue;
            }
            let mut child = runtime.spawn(&context, container);
            let deadline = Instant::now() + Duration::from_secs(60);
            let status = loop {
                if let Some(status) = child.try_wait().expect("waiting for an init container") {
                    break status;
                }
                assert!(
                    Instant::now() < deadline,
                    "{name}: init container {} did not complete within 60 s:\n{}",
                    container.name,
                    runtime.log(&container.name)
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            };
            assert!(
                status.success(),
                "{name}: init container {} failed ({status}):\n{}",
                container.name,
                runtime.log(&container.name)
            );
        }
        for container in spec.containers.iter().filter(chosen) {
            let child = runtime.spawn(&context, container);
            runtime.containers.push((container.name.clone(), child));
        }
        runtime
    }

    /// What a container printed so far.
    pub fn log(&self, container: &str) -> String {
        std::fs::read_to_string(self.log_path(container)).unwrap_or_default()
    }

    /// The file a container's output goes to.
    pub fn log_path(&self, container: &str) -> PathBuf {
        self.dir.join(format!("{container}.log"))
    }

    /// Makes `port` of the pod reachable from this host at the returned address (a forwarder through
    /// a Unix socket: the pod network exists only inside the dataplane's namespaces).
    pub fn expose(&mut self, port: u16) -> std::net::SocketAddr {
        let host_port = crate::free_tcp_port().expect("a free port");
        let address = std::net::SocketAddr::from(([127, 0, 0, 1], host_port));
        self.expose_at(port, address);
        address
    }

    /// As [`PodRuntime::expose`], at `address` of this host (a loopback address standing for a Service).
    pub fn expose_at(&mut self, port: u16, address: std::net::SocketAddr) {
        let socket = self.dir.join(format!("port-{port}.sock"));
        if !socket.exists() {
            let inside = socat(
                Some(&self.netns()),
                format!("UNIX-LISTEN:{},fork,unlink-early", socket.display()),
                format!("TCP:127.0.0.1:{port}"),
                "starting a forwarder in the pod",
            );
            self.forwarders.push(inside);
        }
        let outside = socat(
            None,
            format!(
                "TCP-LISTEN:{},bind={},fork,reuseaddr",
                address.port(),
                address.ip()
            ),
            format!("UNIX-CONNECT:{}", socket.display()),
            "starting a forwarder on the host",
        );
        self.forwarders.push(outside);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(address).is_err() {
            assert!(Instant::now() < deadline, "the forwarder to {port} did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Makes `target` on this host reachable inside the pod at `127.0.0.1:port`: what a container the
    /// caller stands in for would serve there (a bridge's colibri API, Prosody's HTTP port).
    pub fn forward_in(&mut self, port: u16, target: std::net::SocketAddr) {
        let socket = self.dir.join(format!("in-{port}.sock"));
        let outside = socat(
            None,
            format!("UNIX-LISTEN:{},fork,unlink-early", socket.display()),
            format!("TCP:{target}"),
            "starting a forwarder on the host",
        );
        self.forwarders.push(outside);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !socket.exists() {
            assert!(
                Instant::now() < deadline,
                "the forwarder to {target} did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let inside = socat(
            Some(&self.netns()),
            format!("TCP-LISTEN:{port},bind=127.0.0.1,fork,reuseaddr"),
            format!("UNIX-CONNECT:{}", socket.display()),
            "starting a forwarder in the pod",
        );
        self.forwarders.push(inside);
    }

    /// Stops one container (its process killed, as a crashed or OOM-killed container).
    pub fn kill(&mut self, container: &str) {
        for (_, child) in self.containers.iter_mut().filter(|(name, _)| name == container) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The resident memory of a running container's process, in bytes (`VmRSS`).
    pub fn rss_bytes(&self, container: &str) -> Option<u64> {
        let (_, child) = self.containers.iter().find(|(name, _)| name == container)?;
        let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).ok()?;
        let kib: u64 = status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))?
            .split_whitespace()
            .next()?
            .parse()
            .ok()?;
        Some(kib * 1024)
    }

    /// Whether the container is still running.
    pub fn is_running(&mut self, container: &str) -> bool {
        self.containers
            .iter_mut()
            .find(|(name, _)| name == container)
            .is_some_and(|(_, child)| child.try_wait().ok().flatten().is_none())
    }

    fn netns(&self) -> String {
        dataplane::pod_namespace(self.uid())
    }

    fn uid(&self) -> &str {
        self.dir
            .file_name()
            .and_then(|name| name.to_str())
            .unwrap_or_default()
    }

    /// Starts one container: its root, its mounts in a mount namespace of its own, then its program
    /// in the pod's network namespace, chrooted, as the pod's user.
    fn spawn(&self, context: &Context<'_>, container: &Container) -> Child {
        let pod_name = context.pod.name_any();
        let image = container.image.clone().unwrap_or_default();
        let program_name = image_program(&image);
        let program = context.programs.join(&program_name);
        assert!(
            program.is_file(),
            "{pod_name}/{}: no program for image {image} ({} is missing)",
            container.name,
            program.display()
        );
        let root = self.dir.join("roots").join(&container.name);
        let _ = std::fs::remove_dir_all(&root);
        for folder in ["bin", "etc", "tmp", "dev", "usr", "proc"] {
            std::fs::create_dir_all(root.join(folder)).expect("creating a container root");
        }
        // The host's /usr, read-only, with /lib and /lib64 into it (merged /usr): the dynamic loader and
        // libc a program built here links against. The images' static programs do not look.
        for link in ["lib", "lib64"] {
            std::os::unix::fs::symlink(format!("usr/{link}"), root.join(link)).expect("linking into /usr");
        }
        set_mode(&root.join("tmp"), 0o1777);
        // The images' entrypoints: /bin/prometheus, /bin/prometheus-config-reloader.
        let entrypoint = format!("/bin/{program_name}");
        std::fs::write(root.join(entrypoint.trim_start_matches('/')), b"").expect("a mount point");
        std::fs::write(root.join("dev/null"), b"").expect("a mount point");
        std::fs::write(
            root.join("etc/hosts"),
            format!(
                "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n{}\t{pod_name}\n",
                self.net.ip
            ),
        )
        .expect("writing /etc/hosts");

        let mut script = String::from("set -e\n");
        let bind = |script: &mut String, source: &Path, target: &str| {
            script.push_str(&format!(
                "mount --bind '{}' '{}/{}'\n",
                source.display(),
                root.display(),
                target.trim_start_matches('/')
            ));
        };
        bind(&mut script, &program, &entrypoint);
        bind(&mut script, Path::new("/dev/null"), "/dev/null");
        bind(&mut script, Path::new("/usr"), "/usr");
        // What a process reads of itself (/proc/self): the host's, as no PID namespace is made.
        bind(&mut script, Path::new("/proc"), "/proc");
        script.push_str(&format!("mount -o remount,bind,ro '{}/usr'\n", root.display()));
        for mount in container.volume_mounts.iter().flatten() {
            let volume = context
                .volumes
                .iter()
                .find(|volume| volume.name == mount.name)
                .unwrap_or_else(|| panic!("{pod_name}: no volume {}", mount.name));
            let target = root.join(mount.mount_path.trim_start_matches('/'));
            let source = match mount.sub_path.as_deref().filter(|path| !path.is_empty()) {
                Some(sub_path) => {
                    let source = volume.dir.join(sub_path);
                    if !source.exists() {
                        // The kubelet creates a missing subPath as a folder.
                        std::fs::create_dir_all(&source).expect("creating a subPath folder");
                        set_mode(&source, 0o1777);
                    }
                    if let Some(parent) = target.parent() {
                        std::fs::create_dir_all(parent).expect("creating a mount point's folder");
                    }
                    if source.is_dir() {
                        std::fs::create_dir_all(&target).expect("creating a mount point");
                    } else {
                        std::fs::write(&target, b"").expect("creating a mount point");
                    }
                    source
                }
                None => {
                    std::fs::create_dir_all(&target).expect("creating a mount point");
                    volume.dir.clone()
                }
            };
            bind(&mut script, &source, &mount.mount_path);
            if mount.read_only == Some(true) {
                script.push_str(&format!("mount -o remount,bind,ro '{}'\n", target.display()));
            }
        }

        let env = environment(context, container);
        let args: Vec<String> = container
            .command
            .iter()
            .flatten()
            .skip(1)
            .chain(container.args.iter().flatten())
            .map(|arg| expand(arg, &env))
            .collect();
        let security = container.security_context.as_ref();
        let pod_security = context
            .pod
            .spec
            .as_ref()
            .and_then(|spec| spec.security_context.as_ref());
        let user = security
            .and_then(|s| s.run_as_user)
            .or_else(|| pod_security.and_then(|s| s.run_as_user))
            .unwrap_or(0);
        let group = security
            .and_then(|s| s.run_as_group)
            .or_else(|| pod_security.and_then(|s| s.run_as_group))
            .unwrap_or(0);
        script.push_str(&format!(
            "exec nsenter --net=/run/netns/{} -- chroot --userspec={user}:{group} '{}' \"$@\"\n",
            dataplane::pod_namespace(self.uid()),
            root.display()
        ));
        let log = std::fs::File::create(self.dir.join(format!("{}.log", container.name)))
            .expect("creating a container log");
        Command::new("unshare")
            .args([
                "--mount",
                "--propagation",
                "private",
                "--",
                "sh",
                "-c",
                &script,
                "sh",
            ])
            .arg(&entrypoint)
            .args(&args)
            .env_clear()
            .envs(&env)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("a log handle"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {pod_name}/{}: {e}", container.name))
    }
}

impl Drop for PodRuntime {
    fn drop(&mut self) {
        self.stop_sync.store(true, Ordering::Relaxed);
        for (_, child) in &mut self.containers {
            let _ = child.kill();
            let _ = child.wait();
        }
        for child in &mut self.forwarders {
            let _ = child.kill();
            let _ = child.wait();
        }
        // The mounts lived in the containers' own mount namespaces: gone with them.
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

struct Context<'a> {
    pod: &'a Pod,
    volumes: &'a [VolumeFiles],
    programs: &'a Path,
    apiserver_port: u16,
}

/// A socat forwarder from `listen` to `connect`, in the network namespace `netns` when given.
fn socat(netns: Option<&str>, listen: String, connect: String, what: &str) -> Child {
    let mut command = match netns {
        Some(netns) => {
            let mut command = Command::new("ip");
            command.args(["netns", "exec", netns, "socat"]);
            command
        }
        None => Command::new("socat"),
    };
    command
        .args([listen, connect])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{what}: {e}"))
}

/// `quay.io/prometheus/prometheus:v3.5.0` → `prometheus`.
fn image_program(image: &str) -> String {
    let without_digest = image.split('@').next().unwrap_or(image);
    let repository = match without_digest.rsplit_once(':') {
        Some((repository, tag)) if !tag.contains('/') => repository,
        _ => without_digest,
    };
    repository.rsplit('/').next().unwrap_or(repository).to_owned()
}

/// The container's environment as the kubelet builds it: the API server's location, then the
/// container's `env` (values with `$(VAR)` expanded, field references).
fn environment(context: &Context<'_>, container: &Container) -> BTreeMap<String, String> {
    let pod = context.pod;
    let mut env = BTreeMap::from([
        // The tools that set the container up (mount, nsenter, chroot) are found on it too.
        (
            "PATH".to_owned(),
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_owned(),
        ),
        ("HOSTNAME".to_owned(), pod.name_any()),
        ("KUBERNETES_SERVICE_HOST".to_owned(), "127.0.0.1".to_owned()),
        (
            "KUBERNETES_SERVICE_PORT".to_owned(),
            context.apiserver_port.to_string(),
        ),
    ]);
    for var in container.env.iter().flatten() {
        let value = match (&var.value, &var.value_from) {
            (Some(value), _) => expand(value, &env),
            (None, Some(from)) => {
                let field = from
                    .field_ref
                    .as_ref()
                    .map(|field| field.field_path.as_str())
                    .unwrap_or_else(|| panic!("env {}: only fieldRef is supported here", var.name));
                field_value(pod, field)
            }
            (None, None) => String::new(),
        };
        env.insert(var.name.clone(), value);
    }
    env
}

fn field_value(pod: &Pod, field: &str) -> String {
    match field {
        "metadata.name" => pod.name_any(),
        "metadata.namespace" => pod.namespace().unwrap_or_default(),
        "metadata.uid" => pod.uid().unwrap_or_default(),
        "spec.nodeName" => pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_default(),
        "spec.serviceAccountName" => pod
            .spec
            .as_ref()
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_default(),
        "status.podIP" => pod
            .status
            .as_ref()
            .and_then(|s| s.pod_ip.clone())
            .unwrap_or_default(),
        other => panic!("field reference {other} is not supported here"),
    }
}

/// `$(VAR)` → its value when defined (left as it is otherwise); `$$` → `$`, as the kubelet expands.
fn expand(text: &str, env: &BTreeMap<String, String>) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(inner) = after.strip_prefix('(')
            && let Some(end) = inner.find(')')
            && let Some(value) = env.get(&inner[..end])
        {
            out.push_str(value);
            rest = &inner[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

fn items(items: Option<&Vec<k8s_openapi::api::core::v1::KeyToPath>>) -> Option<Vec<(String, String)>> {
    items.map(|items| {
        items
            .iter()
            .map(|item| (item.key.clone(), item.path.clone()))
            .collect()
    })
}

fn volume_files(dir: &Path, volume: &Volume, pod: &str) -> VolumeFiles {
    let source = if volume.empty_dir.is_some() {
        VolumeSource::EmptyDir
    } else if let Some(secret) = &volume.secret {
        VolumeSource::Api(vec![ApiFiles::Secret {
            name: secret.secret_name.clone().unwrap_or_default(),
            items: items(secret.items.as_ref()),
            optional: secret.optional == Some(true),
        }])
    } else if let Some(config_map) = &volume.config_map {
        VolumeSource::Api(vec![ApiFiles::ConfigMap {
            name: config_map.name.clone(),
            items: items(config_map.items.as_ref()),
            optional: config_map.optional == Some(true),
        }])
    } else if let Some(projected) = &volume.projected {
        let mut sources = Vec::new();
        for source in projected.sources.iter().flatten() {
            if let Some(token) = &source.service_account_token {
                sources.push(ApiFiles::Token {
                    path: token.path.clone(),
                    expiration: token.expiration_seconds.unwrap_or(3600),
                });
            } else if let Some(config_map) = &source.config_map {
                sources.push(ApiFiles::ConfigMap {
                    name: config_map.name.clone(),
                    items: items(config_map.items.as_ref()),
                    optional: config_map.optional == Some(true),
                });
            } else if let Some(secret) = &source.secret {
                sources.push(ApiFiles::Secret {
                    name: secret.name.clone(),
                    items: items(secret.items.as_ref()),
                    optional: secret.optional == Some(true),
                });
            } else if let Some(downward) = &source.downward_api {
                for item in downward.items.iter().flatten() {
                    let field = item
                        .field_ref
                        .as_ref()
                        .map(|field| field.field_path.clone())
                        .unwrap_or_else(|| panic!("{pod}: volume {}: only fieldRef items", volume.name));
                    sources.push(ApiFiles::Field {
                        path: item.path.clone(),
                        field,
                    });
                }
            } else {
                panic!(
                    "{pod}: volume {}: a projected source this runtime does not know",
                    volume.name
                );
            }
        }
        VolumeSource::Api(sources)
    } else {
        panic!(
            "{pod}: volume {} is of a kind this runtime does not provide (emptyDir, secret, configMap, projected)",
            volume.name
        );
    };
    let dir = dir.join("volumes").join(&volume.name);
    std::fs::create_dir_all(&dir).expect("creating a volume folder");
    // Writable by the pod's user, as an emptyDir with an fsGroup is.
    set_mode(&dir, 0o1777);
    VolumeFiles {
        name: volume.name.clone(),
        dir,
        source,
    }
}

/// Writes (or refreshes) a volume's files; each file replaced in one rename, so a reader never sees
/// half of one. The token is written only `first`: it lives longer than any test.
async fn write_volume(client: &Client, namespace: &str, pod: &Pod, volume: &VolumeFiles, first: bool) {
    let VolumeSource::Api(sources) = &volume.source else {
        return;
    };
    for source in sources {
        let files: Vec<(String, Vec<u8>)> = match source {
            ApiFiles::Secret {
                name,
                items,
                optional,
            }
            | ApiFiles::ConfigMap {
                name,
                items,
                optional,
            } => {
                let Some(data) = object_data(client, namespace, source).await else {
                    assert!(
                        *optional || !first,
                        "{}: {name} of volume {} does not exist",
                        pod.name_any(),
                        volume.name
                    );
                    continue;
                };
                select(data, items.as_ref())
            }
            ApiFiles::Token { path, expiration } => {
                if !first {
                    continue;
                }
                vec![(
                    path.clone(),
                    pod_token(client, namespace, pod, *expiration).await.into_bytes(),
                )]
            }
            ApiFiles::Field { path, field } => {
                if !first {
                    continue;
                }
                vec![(path.clone(), field_value(pod, field).into_bytes())]
            }
        };
        for (path, content) in files {
            let written = write_file(&volume.dir, &path, &content);
            // A refresh may race the pod's removal; the first write may not fail.
            if let Err(error) = written {
                assert!(
                    !first,
                    "{}: writing {path} of volume {}: {error}",
                    pod.name_any(),
                    volume.name
                );
                return;
            }
        }
    }
}

/// The keys and values of the Secret or ConfigMap a source names, `None` when it does not exist.
async fn object_data(
    client: &Client,
    namespace: &str,
    source: &ApiFiles,
) -> Option<BTreeMap<String, Vec<u8>>> {
    match source {
        ApiFiles::Secret { name, .. } => {
            let secret = Api::<Secret>::namespaced(client.clone(), namespace)
                .get_opt(name)
                .await
                .ok()??;
            let strings = secret.string_data.unwrap_or_default();
            let bytes = secret.data.unwrap_or_default().into_iter().map(|(k, v)| (k, v.0));
            Some(
                bytes
                    .chain(strings.into_iter().map(|(k, v)| (k, v.into_bytes())))
                    .collect(),
            )
        }
        ApiFiles::ConfigMap { name, .. } => {
            let config_map = Api::<ConfigMap>::namespaced(client.clone(), namespace)
                .get_opt(name)
                .await
                .ok()??;
            let binary = config_map.binary_data.unwrap_or_default();
            let strings = config_map
                .data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.into_bytes()));
            Some(strings.chain(binary.into_iter().map(|(k, v)| (k, v.0))).collect())
        }
        ApiFiles::Token { .. } | ApiFiles::Field { .. } => None,
    }
}

/// Replaces `dir/path` with `content` in one rename, unless it holds that already.
fn write_file(dir: &Path, path: &str, content: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let target = dir.join(path);
    if std::fs::read(&target).ok().as_deref() == Some(content) {
        return Ok(());
    }
    if let Some(parent) = target.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let staging = dir.join(format!(".{}.tmp", path.replace('/', "_")));
    std::fs::write(&staging, content)?;
    std::fs::set_permissions(&staging, std::fs::Permissions::from_mode(0o644))?;
    std::fs::rename(&staging, &target)
}

fn select(data: BTreeMap<String, Vec<u8>>, items: Option<&Vec<(String, String)>>) -> Vec<(String, Vec<u8>)> {
    match items {
        None => data.into_iter().collect(),
        Some(items) => items
            .iter()
            .filter_map(|(key, path)| data.get(key).map(|value| (path.clone(), value.clone())))
            .collect(),
    }
}

/// A token of the pod's ServiceAccount, bound to the pod, as a projected volume holds.
async fn pod_token(client: &Client, namespace: &str, pod: &Pod, expiration: i64) -> String {
    let account = pod
        .spec
        .as_ref()
        .and_then(|spec| spec.service_account_name.clone())
        .unwrap_or_else(|| "default".to_owned());
    let request = TokenRequest {
        spec: Some(TokenRequestSpec {
            expiration_seconds: Some(expiration.max(3600)),
            bound_object_ref: Some(BoundObjectReference {
                api_version: Some("v1".to_owned()),
                kind: Some("Pod".to_owned()),
                name: Some(pod.name_any()),
                uid: pod.uid(),
            }),
            ..TokenRequestSpec::default()
        }),
        ..TokenRequest::default()
    };
    Api::<ServiceAccount>::namespaced(client.clone(), namespace)
        .create_token_request(&account, &PostParams::default(), &request)
        .await
        .unwrap_or_else(|e| panic!("a token of ServiceAccount {namespace}/{account}: {e}"))
        .status
        .and_then(|status| status.token)
        .unwrap_or_else(|| panic!("TokenRequest for {namespace}/{account} has no token"))
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_image_names_its_program() {
        assert_eq!(
            image_program("quay.io/prometheus/prometheus:v3.5.0"),
            "prometheus"
        );
        assert_eq!(
            image_program("quay.io/prometheus-operator/prometheus-config-reloader:v0.85.0"),
            "prometheus-config-reloader"
        );
        assert_eq!(
            image_program("localhost:5000/jvb-exporter@sha256:ab"),
            "jvb-exporter"
        );
        assert_eq!(image_program("localhost:5000/jvb-exporter"), "jvb-exporter");
    }

    #[test]
    fn variables_expand_as_the_kubelet_expands_them() {
        let env = BTreeMap::from([("POD_NAME".to_owned(), "prometheus-k8s-0".to_owned())]);
        assert_eq!(expand("--name=$(POD_NAME)", &env), "--name=prometheus-k8s-0");
        assert_eq!(
            expand("$(UNSET) $$(POD_NAME) $5", &env),
            "$(UNSET) $(POD_NAME) $5"
        );
    }
}
