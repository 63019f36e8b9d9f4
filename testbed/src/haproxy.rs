//! HAProxy as `manifests/base/haproxy` runs it — the `haproxy.cfg` and `start.sh` of the rendered ConfigMap,
//! the environment of the rendered StatefulSet — with Debian's `haproxy`, and what it needs around it: web
//! stand-ins for the shards, and dnsmasq answering the SRV records of the `web` Service as the cluster DNS
//! would.

use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use axum::Router;
use axum::extract::State;
use tokio::sync::oneshot;

use local_cluster::{free_tcp_port, free_udp_port};

use crate::manifests::{self, kind};

/// The namespace the shard discovery name is resolved for.
pub const NAMESPACE: &str = "jitsi";

/// What the rendered manifests give HAProxy.
#[derive(Debug)]
pub struct Rendered {
    /// Folder holding `haproxy.cfg` and `start.sh` exactly as rendered.
    pub config_dir: PathBuf,
    /// The StatefulSet's `HAPROXY_REPLICAS`.
    pub replicas: usize,
    /// `HAPROXY_SHARD_SRV` with `$(POD_NAMESPACE)` resolved to [`NAMESPACE`].
    pub shard_srv: String,
}

/// Renders `overlay` and writes its HAProxy ConfigMap's files under `target/haproxy-tests/<label>/`.
pub fn render(overlay: &str, label: &str) -> Rendered {
    let objects = manifests::render_overlay(NAMESPACE, overlay, &[]);
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
    std::fs::create_dir_all(&config_dir).expect("creating the config folder");
    for file in ["haproxy.cfg", "start.sh"] {
        let text = config_map["data"][file]
            .as_str()
            .unwrap_or_else(|| panic!("the ConfigMap has no {file}"));
        std::fs::write(config_dir.join(file), text).expect("writing a rendered file");
    }
    let statefulset = manifests::named(&objects, "StatefulSet", "haproxy");
    let env = |name: &str| -> String {
        statefulset["spec"]["template"]["spec"]["containers"][0]["env"]
            .as_array()
            .and_then(|vars| vars.iter().find(|v| v["name"] == name))
            .and_then(|v| v["value"].as_str())
            .unwrap_or_else(|| panic!("the StatefulSet sets no {name}"))
            .to_owned()
    };
    Rendered {
        config_dir,
        replicas: env("HAPROXY_REPLICAS")
            .parse()
            .expect("HAPROXY_REPLICAS is a number"),
        shard_srv: env("HAPROXY_SHARD_SRV").replace("$(POD_NAMESPACE)", NAMESPACE),
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
        let file = std::fs::File::create(&log).expect("creating a log file");
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

/// One HAProxy replica started by the rendered `start.sh`.
#[derive(Debug)]
pub struct Replica {
    pub http: SocketAddr,
    pub metrics: SocketAddr,
    process: Group,
}

impl Replica {
    /// Replica `ordinal` of `rendered.replicas`; every replica of a test must get the same `peer_port`
    /// (peer i listens on 127.0.10i.1, a loopback address of its own).
    pub fn start(rendered: &Rendered, ordinal: usize, peer_port: u16, nameserver: SocketAddr) -> Self {
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
                format!("127.0.10{{ordinal}}.1:{peer_port}"),
            )
            .env("HAPROXY_LOCAL_PEER", format!("haproxy-{ordinal}"))
            .env("HAPROXY_RUNTIME_DIR", &runtime_dir)
            .env("HAPROXY_SHARD_SRV", &rendered.shard_srv)
            .env("HAPROXY_NAMESERVER", nameserver.to_string())
            .env("HAPROXY_HTTP_BIND", http.to_string())
            .env("HAPROXY_METRICS_BIND", metrics.to_string())
            // Debian installs haproxy in /usr/sbin.
            .env(
                "PATH",
                format!("/usr/sbin:/sbin:{}", std::env::var("PATH").unwrap_or_default()),
            );
        let process = Group::spawn(command, runtime_dir.join("haproxy.log"));
        Replica {
            http,
            metrics,
            process,
        }
    }

    pub fn log(&self) -> String {
        self.process.log_text()
    }
}

/// One shard's web, standing in for the jitsi/web image (which cannot run here): answers every request
/// with the shard's name.
#[derive(Debug)]
pub struct ShardWeb {
    pub name: String,
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
}

impl ShardWeb {
    pub async fn start(name: &str) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding a shard's port");
        let addr = listener.local_addr().expect("local address");
        let app = Router::new()
            .fallback(|State(name): State<String>| async move { name })
            .with_state(name.to_owned());
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await;
        });
        ShardWeb {
            name: name.to_owned(),
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

/// dnsmasq answering `srv_name` with one SRV record per shard (target `<shard>.web.<namespace>...`, the
/// shard's port) and the A records of those targets, as CoreDNS does for a headless Service.
#[derive(Debug)]
pub struct Dns {
    pub addr: SocketAddr,
    srv_name: String,
    work_dir: PathBuf,
    process: Option<Group>,
}

impl Dns {
    pub fn start(srv_name: &str, shards: &[&ShardWeb], work_dir: &Path) -> Self {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_udp_port().expect("a free port"))
            .parse()
            .expect("address");
        let mut dns = Dns {
            addr,
            srv_name: srv_name.to_owned(),
            work_dir: work_dir.to_owned(),
            process: None,
        };
        dns.serve(shards);
        dns
    }

    /// Restarts dnsmasq on the same port with these shards only.
    pub fn serve(&mut self, shards: &[&ShardWeb]) {
        if let Some(mut old) = self.process.take() {
            old.stop();
        }
        let weight = 100 / shards.len().max(1);
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
        let domain = self
            .srv_name
            .split_once("._tcp.")
            .map_or("", |(_, domain)| domain);
        for shard in shards {
            let target = format!("{}.{domain}", shard.name);
            command.arg(format!(
                "--srv-host={},{target},{},0,{weight}",
                self.srv_name,
                shard.addr.port()
            ));
            command.arg(format!("--host-record={target},{}", shard.addr.ip()));
        }
        command.env(
            "PATH",
            format!("/usr/sbin:/sbin:{}", std::env::var("PATH").unwrap_or_default()),
        );
        self.process = Some(Group::spawn(command, self.work_dir.join("dnsmasq.log")));
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
