//! HAProxy as `manifests/base/haproxy` runs it — the `haproxy.cfg` and `start.sh` of the rendered ConfigMap,
//! the environment of the rendered StatefulSet — with Debian's `haproxy`, and what it needs around it: web
//! stand-ins for the shards' web pods, each on a loopback address of its own, and dnsmasq answering the
//! A records of each shard's headless `<shard>-web` Service as the cluster DNS would.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use tokio::sync::oneshot;

use local_cluster::{free_tcp_port, free_udp_port};

use crate::manifests::{self, kind};

/// The namespace the shards' names are resolved for.
pub const NAMESPACE: &str = "jitsi";

/// What the rendered manifests give HAProxy.
#[derive(Debug)]
pub struct Rendered {
    /// Folder holding `haproxy.cfg`, `start.sh` and `forget-ended-rooms.sh` exactly as rendered.
    pub config_dir: PathBuf,
    /// The StatefulSet's `HAPROXY_DRAINING_SHARDS`.
    pub draining_shards: String,
    /// The StatefulSet's `HAPROXY_REPLICAS`.
    pub replicas: usize,
    /// `HAPROXY_SHARD_DOMAIN` with `$(POD_NAMESPACE)` resolved to [`NAMESPACE`].
    pub shard_domain: String,
    /// `HAPROXY_SHARD_PORT`: the web pods' port in the cluster (tests replace it with their own).
    pub shard_port: u16,
    /// How long a terminating web pod keeps serving after it left DNS (its preStop sleep).
    pub web_pre_stop: Duration,
}

/// Renders `overlay` and writes its HAProxy ConfigMap's files under `target/haproxy-tests/<label>/`.
pub fn render(overlay: &str, label: &str) -> Rendered {
    of_objects(&manifests::render_overlay(NAMESPACE, overlay, &[]), label)
}

/// As [`render`], for an overlay folder anywhere (a test's copy of `manifests/`).
pub fn render_dir(overlay: &Path, label: &str) -> Rendered {
    of_objects(&manifests::render_dir(overlay), label)
}

fn of_objects(objects: &[serde_json::Value], label: &str) -> Rendered {
    let config_map = objects
        .iter()
        .find(|o| {
            kind(o) == "ConfigMap"
                && o["metadata"]["name"]
                    .as_str()
                    .is_some_and(|n| n.starts_with("haproxy-config"))
        })
        .expect("the overlay carries the HAProxy ConfigMap");
    let config_dir = crate::repo_root().join("target/haproxy-tests").join(label);
    // Logs of an earlier run would be mistaken for this one's.
    let _ = std::fs::remove_dir_all(&config_dir);
    std::fs::create_dir_all(&config_dir).expect("creating the config folder");
    for file in ["haproxy.cfg", "start.sh", FORGET_ENDED_ROOMS] {
        let text = config_map["data"][file]
            .as_str()
            .unwrap_or_else(|| panic!("the ConfigMap has no {file}"));
        std::fs::write(config_dir.join(file), text).expect("writing a rendered file");
    }
    let statefulset = manifests::named(objects, "StatefulSet", "haproxy");
    let env = |name: &str| -> String {
        statefulset["spec"]["template"]["spec"]["containers"][0]["env"]
            .as_array()
            .and_then(|vars| vars.iter().find(|v| v["name"] == name))
            .and_then(|v| v["value"].as_str())
            .unwrap_or_else(|| panic!("the StatefulSet sets no {name}"))
            .to_owned()
    };
    let web = objects
        .iter()
        .find(|o| {
            kind(o) == "Deployment"
                && o["metadata"]["name"]
                    .as_str()
                    .is_some_and(|n| n.ends_with("-web"))
        })
        .expect("the overlay has a web Deployment");
    let pre_stop =
        &web["spec"]["template"]["spec"]["containers"][0]["lifecycle"]["preStop"]["exec"]["command"];
    let web_pre_stop = match pre_stop
        .as_array()
        .map(|c| c.iter().filter_map(|a| a.as_str()).collect::<Vec<_>>())
    {
        Some(command) if command.len() == 2 && command[0] == "/bin/sleep" => {
            Duration::from_secs(command[1].parse().expect("the web preStop sleeps whole seconds"))
        }
        _ => panic!("the web container's preStop is not `/bin/sleep <seconds>`: {pre_stop}"),
    };
    Rendered {
        web_pre_stop,
        draining_shards: env("HAPROXY_DRAINING_SHARDS"),
        config_dir,
        replicas: env("HAPROXY_REPLICAS")
            .parse()
            .expect("HAPROXY_REPLICAS is a number"),
        shard_domain: env("HAPROXY_SHARD_DOMAIN").replace("$(POD_NAMESPACE)", NAMESPACE),
        shard_port: env("HAPROXY_SHARD_PORT")
            .parse()
            .expect("HAPROXY_SHARD_PORT is a port"),
    }
}

/// A process group killed on drop (`start.sh` execs `haproxy -W`, whose workers are its children).
#[derive(Debug)]
struct Group {
    child: Child,
    log: PathBuf,
}

impl Group {
    fn spawn(mut command: Command, log: PathBuf) -> Self {
        // Appended to: a restarted process keeps what its predecessor logged.
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("opening a log file");
        let child = command
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log file"))
            .stderr(file)
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {command:?}: {e}"));
        Group { child, log }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Whether the process ended within `grace` (a server that cannot bind its port exits at once).
    fn exits_within(&mut self, grace: Duration) -> bool {
        let deadline = std::time::Instant::now() + grace;
        while std::time::Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    fn stop(&mut self) {
        let group = format!("-{}", self.child.id());
        // The group may be gone already (dnsmasq restarted): nothing to report then.
        let _ = Command::new("kill")
            .args(["-KILL", "--", &group])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.wait();
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The script that forgets a draining shard's ended rooms (in the HAProxy ConfigMap).
pub const FORGET_ENDED_ROOMS: &str = "forget-ended-rooms.sh";

/// One HAProxy replica started by the rendered `start.sh`.
#[derive(Debug)]
pub struct Replica {
    pub http: SocketAddr,
    pub metrics: SocketAddr,
    /// `haproxy-<ordinal>`, as the pod is named.
    pub name: String,
    runtime_dir: PathBuf,
    config_dir: PathBuf,
    process: Group,
}

/// What the replicas of one test share: where peers listen (peer i on 127.0.10i.1, a loopback address of
/// its own, at `peer_port`), the DNS server, and the port every web pod listens on.
#[derive(Debug, Clone, Copy)]
pub struct Wiring {
    pub peer_port: u16,
    pub nameserver: SocketAddr,
    pub web_port: u16,
}

impl Replica {
    /// Replica `ordinal` of `rendered.replicas`.
    pub fn start(rendered: &Rendered, ordinal: usize, wiring: Wiring) -> Self {
        let http: SocketAddr = format!("127.0.0.1:{}", free_tcp_port().expect("a free port"))
            .parse()
            .expect("address");
        let metrics: SocketAddr = format!("127.0.0.1:{}", free_tcp_port().expect("a free port"))
            .parse()
            .expect("address");
        let runtime_dir = rendered.config_dir.join(format!("haproxy-{ordinal}"));
        std::fs::create_dir_all(&runtime_dir).expect("creating the runtime folder");
        let mut command = Command::new("sh");
        command
            .arg(rendered.config_dir.join("start.sh"))
            .env("HAPROXY_REPLICAS", rendered.replicas.to_string())
            .env(
                "HAPROXY_PEER_ADDRESS",
                format!("127.0.10{{ordinal}}.1:{}", wiring.peer_port),
            )
            .env("HAPROXY_LOCAL_PEER", format!("haproxy-{ordinal}"))
            .env("HAPROXY_RUNTIME_DIR", &runtime_dir)
            .env("HAPROXY_SHARD_DOMAIN", &rendered.shard_domain)
            .env("HAPROXY_SHARD_PORT", wiring.web_port.to_string())
            .env("HAPROXY_NAMESERVER", wiring.nameserver.to_string())
            .env("HAPROXY_HTTP_BIND", http.to_string())
            .env("HAPROXY_METRICS_BIND", metrics.to_string())
            .env("HAPROXY_DRAINING_SHARDS", &rendered.draining_shards)
            // Debian installs haproxy in /usr/sbin.
            .env(
                "PATH",
                format!("/usr/sbin:/sbin:{}", std::env::var("PATH").unwrap_or_default()),
            );
        let process = Group::spawn(command, runtime_dir.join("haproxy.log"));
        Replica {
            http,
            metrics,
            name: format!("haproxy-{ordinal}"),
            runtime_dir,
            config_dir: rendered.config_dir.clone(),
            process,
        }
    }

    /// One command to the runtime API on the admin socket (as `kubectl exec … socat` would send it).
    pub fn runtime(&self, command: &str) -> String {
        let (ok, stdout, stderr) = run_with_stdin(
            Command::new("socat").args([
                "-t",
                "5",
                "-",
                &format!("UNIX-CONNECT:{}", self.runtime_dir.join("admin.sock").display()),
            ]),
            &format!("{command}\n"),
        );
        assert!(ok, "socat to {}'s admin socket: {stderr}", self.name);
        stdout
    }

    /// The room → shard entries of the stick table, as the runtime API lists them.
    pub fn rooms(&self) -> BTreeMap<String, String> {
        self.runtime("show table shards")
            .lines()
            .filter_map(|line| {
                let field = |name: &str| {
                    line.split(' ')
                        .find_map(|f| f.strip_prefix(name))
                        .map(str::to_owned)
                };
                Some((field("key=")?, field("server_key=")?))
            })
            .collect()
    }

    /// Runs the rendered `forget-ended-rooms.sh` as `kubectl exec -i haproxy-N -- sh …` would, with
    /// `census` on its stdin: whether it succeeded, its stdout and stderr.
    pub fn forget_ended_rooms(
        &self,
        shard: &str,
        census: &str,
        env: &[(&str, &str)],
    ) -> (bool, String, String) {
        let mut command = Command::new("sh");
        command
            .arg(self.config_dir.join(FORGET_ENDED_ROOMS))
            .arg(shard)
            .env("HAPROXY_RUNTIME_DIR", &self.runtime_dir)
            .env("HOSTNAME", &self.name);
        for (name, value) in env {
            command.env(name, value);
        }
        run_with_stdin(&mut command, census)
    }

    pub fn log(&self) -> String {
        self.process.log_text()
    }
}

/// Every replica of `rendered`, with dnsmasq answering for `web_pods` (all on `web_port`).
pub fn start_replicas(
    rendered: &Rendered,
    web_pods: &[&ShardWeb],
    web_port: u16,
) -> (Dns, Wiring, Vec<Replica>) {
    let dns = Dns::start(&rendered.shard_domain, web_pods, &rendered.config_dir);
    let wiring = Wiring {
        peer_port: free_tcp_port().expect("a free port"),
        nameserver: dns.addr,
        web_port,
    };
    let replicas = (0..rendered.replicas)
        .map(|ordinal| Replica::start(rendered, ordinal, wiring))
        .collect();
    (dns, wiring, replicas)
}

/// One web pod of a shard, standing in for the jitsi/web image (which cannot run here): answers every
/// request with the shard's name, and says which pod answered in the `x-web-pod` header.
#[derive(Debug)]
pub struct ShardWeb {
    pub shard: String,
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
}

/// The response header naming the web pod (its address) that answered.
pub const WEB_POD_HEADER: &str = "x-web-pod";

impl ShardWeb {
    /// Web pod `pod` of shard number `shard_index`, on 127.0.(20 + shard_index).(1 + pod) at `port`: like
    /// pods, every web pod has an address of its own and they all use the same port.
    pub async fn start(shard_index: u8, pod: u8, port: u16) -> Self {
        let shard = format!("shard-{shard_index}");
        let addr = SocketAddr::from(([127, 0, 20 + shard_index, 1 + pod], port));
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .unwrap_or_else(|e| panic!("binding web pod {pod} of {shard} to {addr}: {e}"));
        let app = Router::new()
            .fallback(|State((shard, pod)): State<(String, String)>| async move {
                ([(WEB_POD_HEADER, pod)], shard)
            })
            .with_state((shard.clone(), addr.ip().to_string()));
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await;
        });
        ShardWeb {
            shard,
            addr,
            stop: Some(stop),
        }
    }
}

impl Drop for ShardWeb {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// dnsmasq answering `<shard>-web.<domain>` with the addresses of that shard's web pods, as CoreDNS does
/// for the shard's headless Service (only the pods it is given: the ready ones).
#[derive(Debug)]
pub struct Dns {
    pub addr: SocketAddr,
    domain: String,
    work_dir: PathBuf,
    process: Option<Group>,
}

impl Dns {
    pub fn start(domain: &str, web_pods: &[&ShardWeb], work_dir: &Path) -> Self {
        let mut dns = Dns {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            domain: domain.to_owned(),
            work_dir: work_dir.to_owned(),
            process: None,
        };
        // dnsmasq listens on TCP and UDP at its port: a port free for UDP may be taken for TCP, or
        // taken by another test between our look and dnsmasq's bind. It exits at once then: try another.
        for _ in 0..10 {
            dns.addr = SocketAddr::from(([127, 0, 0, 1], free_tcp_and_udp_port()));
            if dns.try_serve(web_pods) {
                return dns;
            }
        }
        panic!(
            "dnsmasq could not listen on any of 10 ports: {}",
            std::fs::read_to_string(work_dir.join("dnsmasq.log")).unwrap_or_default()
        );
    }

    /// Restarts dnsmasq on the same port with these web pods only.
    pub fn serve(&mut self, web_pods: &[&ShardWeb]) {
        // The port was ours a moment ago; another test may take it in between, rarely: try a few times.
        for _ in 0..5 {
            if self.try_serve(web_pods) {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!("dnsmasq could not listen on {} again", self.addr);
    }

    /// Starts dnsmasq; false when it exited at once (its port taken).
    fn try_serve(&mut self, web_pods: &[&ShardWeb]) -> bool {
        if let Some(mut old) = self.process.take() {
            old.stop();
        }
        let mut command = Command::new("dnsmasq");
        command.args([
            "--keep-in-foreground",
            "--no-resolv",
            "--no-hosts",
            "--bind-interfaces",
            "--listen-address=127.0.0.1",
            "--pid-file=",
            "--log-facility=-",
            "--log-queries",
            &format!("--port={}", self.addr.port()),
        ]);
        for pod in web_pods {
            command.arg(format!(
                "--host-record={}-web.{},{}",
                pod.shard,
                self.domain,
                pod.addr.ip()
            ));
        }
        command.env(
            "PATH",
            format!("/usr/sbin:/sbin:{}", std::env::var("PATH").unwrap_or_default()),
        );
        let mut process = Group::spawn(command, self.work_dir.join("dnsmasq.log"));
        if process.exits_within(Duration::from_millis(300)) {
            return false;
        }
        self.process = Some(process);
        true
    }
}

/// Runs `command` with `stdin` written to it: whether it succeeded, its stdout and stderr.
fn run_with_stdin(command: &mut Command, stdin: &str) -> (bool, String, String) {
    let output = local_cluster::process::output_with_stdin(command, stdin.as_bytes())
        .unwrap_or_else(|e| panic!("running {command:?}: {e}"));
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// A loopback port free for both TCP and UDP at the time of asking.
fn free_tcp_and_udp_port() -> u16 {
    loop {
        let port = free_udp_port().expect("a free port");
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// Every sample of `name` in a Prometheus text exposition whose labels contain `label` (e.g.
/// `proxy="shards"`), summed.
pub fn sample_sum(exposition: &str, name: &str, label: &str) -> Option<f64> {
    let mut found = None;
    for line in exposition.lines() {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        if !(rest.starts_with('{') || rest.starts_with(' ')) || !rest.contains(label) {
            continue;
        }
        let value: f64 = rest.rsplit(' ').next()?.parse().ok()?;
        *found.get_or_insert(0.0) += value;
    }
    found
}

/// The participants of live rooms: each room asked for (`/http-bind?room=<room>`, as BOSH does) round and
/// round through the HAProxy replicas in service, until finished. Every answer from another shard than
/// the room's is a room moved while live; every error a failed request.
#[derive(Debug)]
pub struct RoomTraffic {
    stop: Arc<AtomicBool>,
    in_service: Arc<Mutex<Vec<String>>>,
    rooms: Arc<Mutex<BTreeMap<String, String>>>,
    task: tokio::task::JoinHandle<TrafficOutcome>,
}

/// What the participants saw.
#[derive(Debug, Default)]
pub struct TrafficOutcome {
    pub asked: usize,
    /// `room: shard → other shard via replica`.
    pub moved: Vec<String>,
    pub failed: Vec<String>,
}

impl RoomTraffic {
    /// `rooms`: room → the shard it lives on; `in_service`: the replicas' base URLs.
    pub fn start(client: &reqwest::Client, in_service: Vec<String>, rooms: BTreeMap<String, String>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let in_service = Arc::new(Mutex::new(in_service));
        let rooms = Arc::new(Mutex::new(rooms));
        let task = tokio::spawn({
            let (client, stop, in_service, rooms) =
                (client.clone(), stop.clone(), in_service.clone(), rooms.clone());
            async move {
                let mut outcome = TrafficOutcome::default();
                while !stop.load(Ordering::Relaxed) {
                    let round: Vec<(String, String)> = lock(&rooms).clone().into_iter().collect();
                    let urls = lock(&in_service).clone();
                    if round.is_empty() || urls.is_empty() {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                    for (room, shard) in round {
                        for url in &urls {
                            // A room that ended meanwhile is nobody's to ask for.
                            if stop.load(Ordering::Relaxed) || !lock(&rooms).contains_key(&room) {
                                break;
                            }
                            outcome.asked += 1;
                            let answer = client.get(format!("{url}/http-bind?room={room}")).send().await;
                            match answer {
                                Ok(response) if response.status().is_success() => {
                                    let now = response.text().await.unwrap_or_default();
                                    if now != shard {
                                        outcome.moved.push(format!("{room}: {shard} → {now} via {url}"));
                                    }
                                }
                                Ok(response) => outcome
                                    .failed
                                    .push(format!("{room} via {url}: {}", response.status())),
                                Err(e) => outcome.failed.push(format!("{room} via {url}: {e}")),
                            }
                        }
                    }
                }
                outcome
            }
        });
        RoomTraffic {
            stop,
            in_service,
            rooms,
            task,
        }
    }

    /// The replicas the Service sends to now (a replica leaves before it stops, returns once ready).
    pub fn set_in_service(&self, urls: Vec<String>) {
        *lock(&self.in_service) = urls;
    }

    pub fn add_room(&self, room: &str, shard: &str) {
        lock(&self.rooms).insert(room.to_owned(), shard.to_owned());
    }

    /// The room's participants left: nobody asks for it any more.
    pub fn end_room(&self, room: &str) {
        lock(&self.rooms).remove(room);
    }

    pub async fn finish(self) -> TrafficOutcome {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.expect("the traffic task")
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
