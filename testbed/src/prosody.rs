//! A real Prosody (Debian's 13, from bookworm-backports: what the `jitsi/prosody` image runs) configured
//! like that image — internal statistics,
//! `mod_http_openmetrics`, a MUC component without room locking, a stand-in for Jitsi's `mod_muc_census`
//! (`testbed/prosody/mod_muc_census.lua`: Debian's Prosody has no Jitsi plugins) — and real XMPP
//! clients (slixmpp, from PyPI) that join its rooms.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use local_cluster::free_tcp_port;

use crate::repo_root;

pub const DOMAIN: &str = "meet.test";
pub const MUC: &str = "conference.meet.test";

#[derive(Clone, Debug)]
pub struct ProsodyOptions {
    /// `statistics = "internal"`; without it `/metrics` answers 404.
    pub statistics: bool,
    /// `openmetrics_allow_ips`; `None` keeps Prosody's default (localhost only).
    pub openmetrics_allow_ips: Option<Vec<String>>,
    /// Accounts and guests as the jitsi/prosody image configures them; `None`: anonymous logins on
    /// [`DOMAIN`], rooms on [`MUC`].
    pub auth: Option<Auth>,
    /// More global settings, verbatim (e.g. the image's rendered `external_services`), and the modules
    /// they need.
    pub global: String,
    pub modules: Vec<String>,
}

/// The hosts and settings of the jitsi/prosody image's rendered configuration that decide who logs in
/// and who opens a room (tests/image_contract.rs takes them from the image's own templates).
#[derive(Clone, Debug, Default)]
pub struct Auth {
    /// `admins`: the accounts that may create rooms where `restrict_room_creation` is set (Jicofo's).
    pub admins: Vec<String>,
    /// The users' VirtualHost and its authentication settings.
    pub domain: String,
    pub domain_settings: Vec<String>,
    /// The guests' VirtualHost and its settings, when guests are allowed.
    pub guest: Option<(String, Vec<String>)>,
    /// The internal VirtualHost where Jicofo's and the bridges' accounts live, and its settings.
    pub auth_domain: String,
    pub auth_domain_settings: Vec<String>,
    /// The conference MUC and its settings.
    pub muc: String,
    pub muc_settings: Vec<String>,
}

impl Auth {
    fn config(&self) -> String {
        let lines = |settings: &[String]| {
            settings
                .iter()
                .map(|line| format!("  {line}\n"))
                .collect::<String>()
        };
        let quoted = |names: &[String]| {
            names
                .iter()
                .map(|n| format!("{n:?}"))
                .collect::<Vec<_>>()
                .join("; ")
        };
        let mut config = format!(
            "admins = {{ {} }}\n\nVirtualHost \"{}\"\n{}  modules_enabled = {{ \"muc_census\" }}\n\n",
            quoted(&self.admins),
            self.domain,
            lines(&self.domain_settings)
        );
        if let Some((guest, settings)) = &self.guest {
            config.push_str(&format!("VirtualHost \"{guest}\"\n{}\n", lines(settings)));
        }
        config.push_str(&format!(
            "VirtualHost \"{}\"\n{}\nComponent \"{}\" \"muc\"\n{}",
            self.auth_domain,
            lines(&self.auth_domain_settings),
            self.muc,
            lines(&self.muc_settings)
        ));
        config
    }
}

impl Default for ProsodyOptions {
    fn default() -> Self {
        Self {
            statistics: true,
            openmetrics_allow_ips: None,
            auth: None,
            global: String::new(),
            modules: Vec::new(),
        }
    }
}

/// A running Prosody; killed when dropped.
#[derive(Debug)]
pub struct Prosody {
    child: Option<Child>,
    pub dir: PathBuf,
    pub c2s_port: u16,
    pub http_port: u16,
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
}

impl Prosody {
    pub fn start(options: ProsodyOptions) -> Self {
        let (c2s_port, http_port) = (
            free_tcp_port().expect("a free port"),
            free_tcp_port().expect("a free port"),
        );
        let dir = repo_root().join("target/prosody").join(format!("{http_port}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("data")).expect("creating the Prosody folder");
        let modules = repo_root().join("testbed/prosody");
        let allow = options
            .openmetrics_allow_ips
            .map(|ips| {
                format!(
                    "openmetrics_allow_ips = {{ {} }}\n",
                    ips.iter()
                        .map(|ip| format!("{ip:?}"))
                        .collect::<Vec<_>>()
                        .join("; ")
                )
            })
            .unwrap_or_default();
        let statistics = if options.statistics {
            "statistics = \"internal\"\nstatistics_interval = \"manual\"\n"
        } else {
            ""
        };
        let hosts = options.auth.as_ref().map_or_else(
            || {
                format!(
                    r#"VirtualHost "{DOMAIN}"
  authentication = "anonymous"
  modules_enabled = {{ "muc_census" }}

Component "{MUC}" "muc"
  muc_room_locking = false
"#
                )
            },
            Auth::config,
        );
        let http_host = options.auth.as_ref().map_or(DOMAIN, |auth| auth.domain.as_str());
        let modules_more: String = options.modules.iter().map(|m| format!(" {m:?};")).collect();
        let global = &options.global;
        let config = format!(
            r#"-- Written by the integration tests: like the jitsi/prosody image, on loopback and free ports.
pidfile = "{dir}/prosody.pid"
data_path = "{dir}/data"
plugin_paths = {{ "{modules}" }}
interfaces = {{ "127.0.0.1" }}
c2s_ports = {{ {c2s_port} }}
s2s_ports = {{ }}
component_ports = {{ }}
http_ports = {{ {http_port} }}
http_interfaces = {{ "127.0.0.1" }}
https_ports = {{ }}
http_default_host = "{http_host}"
log = {{ info = "{dir}/prosody.log" }}
{statistics}{allow}modules_enabled = {{ "roster"; "saslauth"; "disco"; "ping"; "http_openmetrics"; "bosh"; "admin_shell";{modules_more} }}
admin_socket = "{dir}/prosody.sock"
c2s_require_encryption = false
allow_unencrypted_plain_auth = true
{global}
{hosts}"#,
            dir = dir.display(),
            modules = modules.display(),
        );
        let config_path = dir.join("prosody.cfg.lua");
        std::fs::write(&config_path, config).expect("writing the Prosody config");
        let mut prosody = Self {
            child: None,
            dir,
            c2s_port,
            http_port,
        };
        prosody.spawn();
        prosody
    }

    /// Stops Prosody and starts it again on the same configuration and data (an account created before
    /// is still there).
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    fn spawn(&mut self) {
        let config_path = self.dir.join("prosody.cfg.lua");
        let mut command = self.as_prosody_user("prosody");
        let log = std::fs::File::create(self.dir.join("stdout.log")).expect("log file");
        let child = command
            .args(["-F", "--config"])
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            // Its own process group: a Ctrl-C at the terminal (the demo) is for us to handle; drop stops it.
            .process_group(0)
            .spawn()
            .expect("starting prosody (Debian package prosody; cargo xtask test installs it)");
        self.child = Some(child);
        self.wait_listening();
    }

    fn wait_listening(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let up = [self.c2s_port, self.http_port]
                .iter()
                .all(|port| std::net::TcpStream::connect(("127.0.0.1", *port)).is_ok());
            if up {
                return;
            }
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("prosody exited ({status}): {}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "prosody did not listen within 20 s: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    /// The version Prosody says it is, from its first log line (`Hello and welcome to Prosody version …`).
    pub fn version(&self) -> String {
        self.log()
            .lines()
            .find_map(|line| line.split("Prosody version ").nth(1))
            .unwrap_or_default()
            .trim()
            .to_owned()
    }

    pub fn log(&self) -> String {
        let read = |name: &str| std::fs::read_to_string(self.dir.join(name)).unwrap_or_default();
        format!("{}{}", read("stdout.log"), read("prosody.log"))
    }

    /// `prosodyctl --config <this Prosody's config> <args>`, as Prosody's user (as the image runs it, in
    /// the pod: `kubectl exec … prosodyctl --config /run/prosody/config/prosody.cfg.lua …`): whether it
    /// succeeded, and what it said.
    pub fn prosodyctl(&self, args: &[&str]) -> (bool, String) {
        let config = self.dir.join("prosody.cfg.lua");
        let mut command = self.as_prosody_user("prosodyctl");
        let output = command
            .arg("--config")
            .arg(&config)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("running prosodyctl");
        (
            output.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ),
        )
    }

    /// `program` (`prosody`, `prosodyctl`) as Prosody's own user when we are root: Prosody run as root
    /// breaks modules, and its files must stay its own (setpriv execs, so the child is the program itself
    /// and killing it stops it).
    fn as_prosody_user(&self, program: &str) -> Command {
        if !is_root() {
            return Command::new(program);
        }
        let status = Command::new("chown")
            .args(["-R", "prosody:"])
            .arg(&self.dir)
            .status()
            .expect("chown");
        assert!(status.success(), "chown of {} failed", self.dir.display());
        let mut command = Command::new("setpriv");
        command.args([
            "--reuid=prosody",
            "--regid=prosody",
            "--clear-groups",
            "--",
            program,
        ]);
        command
    }

    /// Kills Prosody at once, as a crash would.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Prosody {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The Python with slixmpp installed (a virtualenv under `target/`, made once).
pub fn xmpp_python() -> PathBuf {
    static MADE: Mutex<()> = Mutex::new(());
    let _guard = MADE.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let venv = repo_root().join("target/xmpp-venv");
    let python = venv.join("bin/python");
    // aioice: the TURN client of tests/turn.rs (TURN over TLS, RFC 5766 allocations and channels).
    let ready = venv.join(".slixmpp-1.17.0-aioice-0.10.1");
    if !ready.exists() {
        let status = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .expect("python3 -m venv");
        assert!(status.success(), "creating {} failed", venv.display());
        let status = Command::new(&python)
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "slixmpp==1.17.0",
                "aioice==0.10.1",
            ])
            .status()
            .expect("pip install slixmpp aioice");
        assert!(
            status.success(),
            "pip install slixmpp==1.17.0 aioice==0.10.1 failed"
        );
        std::fs::write(&ready, "").expect("marker");
    }
    python
}

/// Anonymous XMPP users sitting in rooms (`testbed/xmpp/occupants.py`); they leave when dropped.
#[derive(Debug)]
pub struct Occupants {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Occupants {
    /// Joins `rooms` (`(name, occupants)`) and returns once everyone is in.
    pub fn join(prosody: &Prosody, rooms: &[(&str, usize)]) -> Self {
        let spec = rooms
            .iter()
            .map(|(room, count)| format!("{room}={count}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut child = Command::new(xmpp_python())
            .arg(repo_root().join("testbed/xmpp/occupants.py"))
            .args([
                "--port",
                &prosody.c2s_port.to_string(),
                "--domain",
                DOMAIN,
                "--muc",
                MUC,
                "--rooms",
                &spec,
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .process_group(0)
            .spawn()
            .expect("starting the XMPP clients");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut occupants = Self { child, stdin, stdout };
        occupants.expect_line("ready");
        occupants
    }

    fn expect_line(&mut self, wanted: &str) {
        let mut line = String::new();
        loop {
            line.clear();
            let read = self
                .stdout
                .read_line(&mut line)
                .expect("reading the XMPP clients");
            assert!(read > 0, "the XMPP clients exited before saying {wanted:?}");
            if line.trim() == wanted {
                return;
            }
        }
    }

    /// Every occupant of `room` disconnects; returns once they have.
    pub fn leave(&mut self, room: &str) {
        writeln!(self.stdin, "leave {room}").expect("telling the XMPP clients");
        self.expect_line(&format!("left {room}"));
    }
}

impl Drop for Occupants {
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "quit");
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.child.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How an XMPP client proves who it is.
#[derive(Clone, Copy, Debug)]
pub enum Credentials<'a> {
    Password(&'a str),
    /// SASL ANONYMOUS on the host named by the JID (Jitsi's guests).
    Anonymous,
}

/// One real XMPP client (`testbed/xmpp/login.py`): logs in as `jid` and, when given, joins `room`
/// (creating it if Prosody lets this user). Returns whether every step succeeded and what it printed
/// ("authenticated <jid>" or "auth-failed …", "joined <room>" or "join-refused <condition>").
pub fn login(prosody: &Prosody, jid: &str, credentials: Credentials, room: Option<&str>) -> (bool, String) {
    let mut command = login_command(prosody, jid, credentials, room);
    let output = command.stdin(Stdio::null()).output().expect("running login.py");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).trim().to_owned(),
    )
}

/// A client logged in and sitting in `room` until dropped (a room lives while someone is in it).
#[derive(Debug)]
pub struct InRoom {
    child: Child,
    stdin: Option<ChildStdin>,
}

impl InRoom {
    pub fn join(prosody: &Prosody, jid: &str, credentials: Credentials, room: &str) -> Self {
        let mut child = login_command(prosody, jid, credentials, Some(room))
            .arg("--hold")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("starting login.py");
        let stdin = child.stdin.take();
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut said = String::new();
        loop {
            let mut line = String::new();
            let read = stdout.read_line(&mut line).expect("reading login.py");
            said.push_str(&line);
            assert!(read > 0, "{jid} did not get into {room}: {said}");
            if line.trim() == "holding" {
                break;
            }
        }
        Self { child, stdin }
    }
}

impl Drop for InRoom {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.wait();
    }
}

fn login_command(prosody: &Prosody, jid: &str, credentials: Credentials, room: Option<&str>) -> Command {
    let mut command = Command::new(xmpp_python());
    command.arg(repo_root().join("testbed/xmpp/login.py")).args([
        "--port",
        &prosody.c2s_port.to_string(),
        "--jid",
        jid,
    ]);
    match credentials {
        Credentials::Password(password) => command.args(["--password", password]),
        Credentials::Anonymous => command.arg("--anonymous"),
    };
    if let Some(room) = room {
        command.args(["--room", room]);
    }
    command.stderr(Stdio::inherit());
    command
}

/// The external services (XEP-0215) Prosody hands an anonymous participant of `domain`, as
/// `testbed/xmpp/external_services.py` reads them: one JSON object of attributes per service.
pub fn external_services(prosody: &Prosody, domain: &str) -> Result<Vec<serde_json::Value>, String> {
    let output = Command::new(xmpp_python())
        .arg(repo_root().join("testbed/xmpp/external_services.py"))
        .args(["--port", &prosody.c2s_port.to_string(), "--domain", domain])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("running external_services.py: {e}"))?;
    let said = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    if !output.status.success() {
        return Err(format!("{said} {}", String::from_utf8_lossy(&output.stderr)));
    }
    serde_json::from_str(&said).map_err(|e| format!("{e}: {said}"))
}
