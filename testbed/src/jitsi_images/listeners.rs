//! What each program of an image listens on, read from the configuration its own start script loads
//! (the path is taken from that script: `nginx -c …`, `prosody --config …`, `-Dconfig.file=…`).

use std::fmt;

use serde_json::Value;

use super::hocon;
use super::image::Image;
use super::sandbox::Outcome;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Bind {
    /// Every address of the pod (`0.0.0.0`, `*`, `::`): the pod IP and loopback.
    All,
    /// The IPv6 wildcard alone (`[::]` in nginx, where ipv6only is on by default; `::` in Prosody, which
    /// binds it apart from `*`): not the pod's IPv4 address, which probes, Services and Prometheus use.
    Ipv6Only,
    /// 127.0.0.1 or ::1 only: reachable from the pod's own containers, never from the kubelet's probes,
    /// a Service or Prometheus.
    Loopback,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Listener {
    pub protocol: &'static str,
    pub port: u16,
    pub bind: Bind,
    /// Where the program is told so, e.g. `/run/web/config/nginx/site-confs/default: listen 8000`.
    pub stated: String,
}

impl fmt::Display for Listener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bind = match self.bind {
            Bind::All => "all addresses",
            Bind::Ipv6Only => "IPv6 addresses only",
            Bind::Loopback => "loopback only",
        };
        write!(f, "{}/{} on {} ({})", self.port, self.protocol, bind, self.stated)
    }
}

fn bind_of(address: &str) -> Bind {
    match address.trim_matches(|c| c == '"' || c == '[' || c == ']') {
        "127.0.0.1" | "::1" | "localhost" => Bind::Loopback,
        "::" => Bind::Ipv6Only,
        _ => Bind::All,
    }
}

/// The argument following `flag` (`-c`, `--config`) or after `prefix=` in the image's start scripts.
fn start_argument(image: &Image, pattern: &str) -> Option<String> {
    for (_, script) in image.longruns() {
        let Some(text) = image.file(&script) else {
            continue;
        };
        if let Some(at) = text.find(pattern) {
            let rest = &text[at + pattern.len()..];
            let value: String = rest
                .trim_start()
                .chars()
                .take_while(|c| !c.is_whitespace() && *c != '"' && *c != '\\')
                .collect();
            if !value.is_empty() {
                return Some(value);
            }
        }
    }
    None
}

/// The path of the configuration file the image's Java program loads (`-Dconfig.file=`).
pub fn java_config_path(image: &Image) -> Option<String> {
    start_argument(image, "-Dconfig.file=")
}

/// nginx: `listen` directives of the file its start script names and of everything it includes.
pub fn nginx(image: &Image, outcome: &Outcome) -> Result<Vec<Listener>, String> {
    let main =
        start_argument(image, "nginx -c").ok_or("the web image's start script runs no `nginx -c <file>`")?;
    let mut listeners = Vec::new();
    let mut pending = vec![main.clone()];
    let mut seen = Vec::new();
    while let Some(path) = pending.pop() {
        if seen.contains(&path) {
            continue;
        }
        seen.push(path.clone());
        let Some(text) = outcome.file(&path) else {
            continue;
        };
        for line in text.lines() {
            let line = line.split('#').next().unwrap_or_default().trim();
            let mut words = line.trim_end_matches(';').split_whitespace();
            match words.next() {
                Some("include") => {
                    if let Some(pattern) = words.next() {
                        pending.extend(outcome.glob(pattern));
                    }
                }
                Some("listen") => {
                    let Some(address) = words.next() else { continue };
                    let (host, port) = match address.rsplit_once(':') {
                        Some((host, port)) => (host, port),
                        None => ("*", address),
                    };
                    let Ok(port) = port.parse() else { continue };
                    listeners.push(Listener {
                        protocol: "TCP",
                        port,
                        bind: bind_of(host),
                        stated: format!("{path}: {line}"),
                    });
                }
                _ => {}
            }
        }
    }
    if seen.len() == 1 && outcome.file(&main).is_none() {
        return Err(format!("nginx's configuration {main} was not rendered"));
    }
    Ok(listeners)
}

/// A Prosody setting's list of numbers or strings (`c2s_ports = { 5222 }`, over several lines, `--`
/// comments left out), from the global section (before the first VirtualHost or Component).
fn prosody_list(text: &str, key: &str) -> Option<Vec<String>> {
    let global: String = text
        .lines()
        .take_while(|l| {
            !l.trim_start().starts_with("VirtualHost") && !l.trim_start().starts_with("Component")
        })
        .map(|l| l.split("--").next().unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\n");
    let mut search = global.as_str();
    while let Some(at) = search.find(key) {
        let before = search[..at].chars().next_back();
        let rest = &search[at + key.len()..];
        search = rest;
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        let Some(rest) = rest.trim_start().strip_prefix('=') else {
            continue;
        };
        let Some(rest) = rest.trim_start().strip_prefix('{') else {
            continue;
        };
        let inner = rest.split('}').next().unwrap_or_default();
        return Some(
            inner
                .split([',', ';', '\n'])
                .map(|v| v.trim().trim_matches('"').to_owned())
                .filter(|v| !v.is_empty())
                .collect(),
        );
    }
    None
}

/// Prosody: its c2s and HTTP ports and interfaces (Prosody's defaults where the file says nothing).
pub fn prosody(image: &Image, outcome: &Outcome) -> Result<Vec<Listener>, String> {
    let path = start_argument(image, "--config")
        .ok_or("the prosody image's start script runs no `prosody --config <file>`")?;
    let text = outcome
        .file(&path)
        .ok_or_else(|| format!("Prosody's configuration {path} was not rendered"))?;
    let mut listeners = Vec::new();
    for (service, default_port) in [
        ("c2s", "5222"),
        ("http", "5280"),
        ("https", "5281"),
        ("s2s", "5269"),
    ] {
        let ports = prosody_list(&text, &format!("{service}_ports"));
        // No c2s or http setting: Prosody's own defaults; https and s2s only when configured.
        let ports = match (ports, service) {
            (Some(ports), _) => ports,
            (None, "c2s" | "http" | "s2s") => vec![default_port.to_owned()],
            (None, _) => continue,
        };
        let disabled = prosody_list(&text, "modules_disabled").unwrap_or_default();
        if disabled.iter().any(|m| m == service) {
            continue;
        }
        let interfaces = prosody_list(&text, &format!("{service}_interfaces"))
            .or_else(|| prosody_list(&text, "interfaces"))
            .unwrap_or_else(|| vec!["*".to_owned()]);
        for port in ports {
            let Ok(port) = port.parse() else { continue };
            // The widest of the interfaces it binds.
            let bind = interfaces
                .iter()
                .map(|i| bind_of(i))
                .min()
                .unwrap_or(Bind::Loopback);
            listeners.push(Listener {
                protocol: "TCP",
                port,
                bind,
                stated: format!(
                    "{path}: {service}_ports {port}, interfaces {}",
                    interfaces.join(" ")
                ),
            });
        }
    }
    Ok(listeners)
}

/// Jicofo: its REST API (`jicofo.rest`), from the resolved configuration.
pub fn jicofo(config: &Value, path: &str) -> Vec<Listener> {
    let enabled = hocon::at(config, "jicofo.rest.enabled")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let port = hocon::at(config, "jicofo.rest.port").and_then(Value::as_u64);
    let host = hocon::at(config, "jicofo.rest.host")
        .and_then(Value::as_str)
        .unwrap_or("0.0.0.0");
    match (enabled, port.and_then(|p| u16::try_from(p).ok())) {
        (true, Some(port)) => vec![Listener {
            protocol: "TCP",
            port,
            bind: bind_of(host),
            stated: format!("{path}: jicofo.rest host {host} port {port}"),
        }],
        _ => Vec::new(),
    }
}

/// The bridge: its private HTTP server and its one ICE/UDP port. The private server's port is not in
/// any configuration file (jicoco's default); the image's own health check names it.
pub fn jvb(config: &Value, path: &str, image: &Image) -> Vec<Listener> {
    let mut listeners = Vec::new();
    let host = hocon::at(config, "videobridge.http-servers.private.host")
        .and_then(Value::as_str)
        .unwrap_or("127.0.0.1");
    let configured = hocon::at(config, "videobridge.http-servers.private.port").and_then(Value::as_u64);
    let from_health_check = image.file("/usr/local/bin/healthcheck.sh").and_then(|t| {
        let at = t.find("127.0.0.1:")? + "127.0.0.1:".len();
        t[at..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect::<String>()
            .parse::<u64>()
            .ok()
    });
    if let Some(port) = configured
        .or(from_health_check)
        .and_then(|p| u16::try_from(p).ok())
    {
        listeners.push(Listener {
            protocol: "TCP",
            port,
            bind: bind_of(host),
            stated: if configured.is_some() {
                format!("{path}: videobridge.http-servers.private host {host} port {port}")
            } else {
                format!(
                    "{path}: videobridge.http-servers.private host {host}; port {port} as the image's /usr/local/bin/healthcheck.sh asks it"
                )
            },
        });
    }
    if let Some(port) = hocon::at(config, "videobridge.ice.udp.port")
        .and_then(Value::as_u64)
        .and_then(|p| u16::try_from(p).ok())
    {
        listeners.push(Listener {
            protocol: "UDP",
            port,
            bind: Bind::All,
            stated: format!("{path}: videobridge.ice.udp.port {port}"),
        });
    }
    listeners
}
