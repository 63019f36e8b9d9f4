//! The real programs the tests and benchmarks run, from Debian's packages: installed when missing and
//! we are root (`apt-get update` first), otherwise named with the command that installs them.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result, bail, ensure};

/// Command the tests run → the Debian package that ships it.
const TEST_PROGRAMS: [(&str, &str); 4] = [
    ("promtool", "prometheus"),
    ("haproxy", "haproxy"),
    ("prosody", "prosody"),
    // The DNS server that answers the SRV records HAProxy discovers shards through.
    ("dnsmasq", "dnsmasq-base"),
];

/// What `cargo xtask test` needs.
pub fn ensure_installed() -> Result<()> {
    which("go").context("Go is not installed: the control plane is built from the Go module proxy")?;
    which("kubectl").context("kubectl is not installed")?;
    ensure_commands(&TEST_PROGRAMS)?;
    ensure_python_venv()
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
    let update = Command::new("apt-get")
        .args(["update", "-qq"])
        .status()
        .context("running apt-get update")?;
    ensure!(update.success(), "apt-get update failed ({update})");
    let install = Command::new("apt-get")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .args(["install", "-y", "-qq"])
        .args(packages)
        .status()
        .context("running apt-get install")?;
    ensure!(install.success(), "apt-get install {list} failed ({install})");
    Ok(())
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
