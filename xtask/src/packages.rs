//! The real programs the tests and benchmarks run, from Debian's packages: installed when missing and
//! we are root (`apt-get update` first), otherwise named with the command that installs them.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result, bail, ensure};

/// Command the tests run → the Debian package that ships it.
const TEST_PROGRAMS: [(&str, &str); 7] = [
    ("promtool", "prometheus"),
    ("haproxy", "haproxy"),
    // The cluster DNS HAProxy resolves the shards' web Services through.
    ("dnsmasq", "dnsmasq-base"),
    // The TURN relay of components/turn (tests/turn.rs), and its test certificate.
    ("turnserver", "coturn"),
    ("openssl", "openssl"),
    // The relay's binary given the image's file capability, and started under its container's settings.
    ("setcap", "libcap2-bin"),
    ("setpriv", "util-linux"),
];

/// What the dataplane (`cluster up --dataplane`) runs: network namespaces and veths, kube-proxy's
/// nftables, kube-router's iptables and ipsets, the API server forwarder into the node namespaces,
/// per-namespace sysctls.
pub const DATAPLANE_PROGRAMS: [(&str, &str); 6] = [
    ("ip", "iproute2"),
    ("nft", "nftables"),
    ("iptables", "iptables"),
    ("ipset", "ipset"),
    ("socat", "socat"),
    ("sysctl", "procps"),
];

/// What `testbed::pod_runtime` runs a pod's containers with (mount namespace, bind mounts, the pod's
/// network namespace, the container's root).
pub const POD_RUNTIME_PROGRAMS: [(&str, &str); 4] = [
    ("unshare", "util-linux"),
    ("nsenter", "util-linux"),
    ("mount", "mount"),
    ("chroot", "coreutils"),
];

/// What the image contract runs: Typesafe Config on Java (the HOCON library of Jicofo and the bridge),
/// curl (its jar from Maven Central), git (upstream sources), openssl (the images' scripts make
/// certificates with it).
const IMAGE_CONTRACT_PROGRAMS: [(&str, &str); 4] = [
    ("java", "default-jre-headless"),
    ("curl", "curl"),
    ("git", "git"),
    ("openssl", "openssl"),
];

/// The Prosody the `jitsi/prosody` image runs; Debian bookworm carries it in bookworm-backports.
const PROSODY_MAJOR: &str = "13";
const BACKPORTS_SOURCE: &str = "/etc/apt/sources.list.d/bookworm-backports.sources";

/// What `cargo xtask test` needs.
pub fn ensure_installed() -> Result<()> {
    which("go").context("Go is not installed: the control plane is built from the Go module proxy")?;
    which("kubectl").context("kubectl is not installed")?;
    ensure_commands(&TEST_PROGRAMS)?;
    ensure_commands(&DATAPLANE_PROGRAMS)?;
    ensure_commands(&POD_RUNTIME_PROGRAMS)?;
    ensure_commands(&IMAGE_CONTRACT_PROGRAMS)?;
    ensure_prosody()?;
    ensure_python_venv()
}

/// Prosody 13, what ships: from bookworm-backports on Debian 12 (the suite added when missing).
pub fn ensure_prosody() -> Result<()> {
    let installed = Command::new("dpkg-query")
        .args(["-W", "-f=${Version}", "prosody"])
        .output()
        .ok()
        .filter(|out| out.status.success())
        .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned())
        .unwrap_or_default();
    if installed.starts_with(&format!("{PROSODY_MAJOR}.")) {
        return Ok(());
    }
    let codename = std::fs::read_to_string("/etc/os-release")
        .unwrap_or_default()
        .lines()
        .find_map(|line| line.strip_prefix("VERSION_CODENAME=").map(str::to_owned))
        .unwrap_or_default();
    let target = (codename == "bookworm").then_some("bookworm-backports");
    if !is_root() {
        let from = target.map(|suite| format!(" -t {suite}")).unwrap_or_default();
        bail!(
            "the tests run Prosody {PROSODY_MAJOR} (what the jitsi/prosody image ships), found {:?};              install it with `sudo apt-get install -y{from} prosody`{}",
            if installed.is_empty() {
                "none"
            } else {
                installed.as_str()
            },
            if target.is_some() {
                " after adding the bookworm-backports suite"
            } else {
                ""
            }
        );
    }
    if target.is_some() && !std::path::Path::new(BACKPORTS_SOURCE).exists() {
        println!("==> adding Debian's bookworm-backports suite (Prosody {PROSODY_MAJOR})");
        std::fs::write(
            BACKPORTS_SOURCE,
            "Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm-backports\nComponents: main\n\
             Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n",
        )
        .with_context(|| format!("writing {BACKPORTS_SOURCE}"))?;
    }
    println!("==> installing Prosody {PROSODY_MAJOR}");
    apt_get(&["update", "-qq"])?;
    let mut install = vec!["install", "-y", "-qq"];
    if let Some(suite) = target {
        install.extend(["-t", suite]);
    }
    install.push("prosody");
    apt_get(&install)
}

fn apt_get(args: &[&str]) -> Result<()> {
    let status = Command::new("apt-get")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .args(args)
        .status()
        .with_context(|| format!("running apt-get {}", args.join(" ")))?;
    ensure!(status.success(), "apt-get {} failed ({status})", args.join(" "));
    Ok(())
}

/// The XMPP test clients run in a virtualenv (slixmpp from PyPI): Debian's Python needs `python3-venv`.
pub fn ensure_python_venv() -> Result<()> {
    which("python3").context("Python 3 is not installed (the XMPP test clients need it)")?;
    let has_venv = Command::new("python3")
        .args(["-c", "import ensurepip, venv"])
        .output()
        .is_ok_and(|out| out.status.success());
    if has_venv {
        return Ok(());
    }
    install(&["python3-venv"])
}

/// Installs the Debian packages of `commands` (command → package) that are missing.
pub fn ensure_commands(commands: &[(&str, &str)]) -> Result<()> {
    let missing: Vec<&str> = commands
        .iter()
        .filter(|(command, _)| which(command).is_err())
        .map(|(_, package)| *package)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    install(&missing)
}

fn install(packages: &[&str]) -> Result<()> {
    let list = packages.join(" ");
    if !is_root() {
        bail!(
            "missing Debian packages: {list}; install them with `sudo apt-get update && sudo apt-get install -y {list}`"
        );
    }
    println!("==> installing Debian packages: {list}");
    apt_get(&["update", "-qq"])?;
    let mut args = vec!["install", "-y", "-qq"];
    args.extend_from_slice(packages);
    apt_get(&args)
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
}

/// The full path of `program` on PATH.
pub fn which(program: &str) -> Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
        .with_context(|| format!("`{program}` is not on PATH"))
}
