//! Starting the control-plane processes detached from the terminal, and stopping them again.
//!
//! A process counts as ours only while its command line mentions the cluster's state folder, so a
//! recycled PID from a crashed earlier run is never signalled.

use std::fs::File;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

/// Starts `program` in its own process group (so Ctrl-C on `cargo xtask` does not reach it), with
/// stdout and stderr appended to `log`. Returns its PID.
pub fn spawn(program: &Path, args: &[String], log: &Path) -> Result<u32> {
    use std::os::unix::process::CommandExt;
    let out = File::options().create(true).append(true).open(log)?;
    let err = out.try_clone()?;
    let child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0)
        .spawn()
        .with_context(|| format!("starting {}", program.display()))?;
    Ok(child.id())
}

/// Whether `pid` is a live process of ours (its command line contains `marker`). Zombies do not count.
pub fn is_ours(pid: u32, marker: &Path) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let marker = marker.to_string_lossy();
    !cmdline.is_empty() && String::from_utf8_lossy(&cmdline).contains(marker.as_ref())
}

/// Whether `pid` runs (exists and is not a zombie). For a process we just spawned: right after
/// `spawn` returns, its `/proc/<pid>/cmdline` can still be empty (the kernel closes the close-on-exec
/// pipe that `spawn` waits on before it publishes the new argv), so `is_ours` would wrongly say no.
pub fn is_running(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The state letter follows the command name, which is in parentheses and may contain spaces.
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .is_some_and(|state| state != "Z")
}

/// SIGTERM, then SIGKILL after `grace`. Returns once the process is gone.
pub fn stop(pid: u32, marker: &Path, grace: Duration) {
    if !is_ours(pid, marker) {
        return;
    }
    signal(pid, "TERM");
    let deadline = Instant::now() + grace;
    while is_ours(pid, marker) {
        if Instant::now() >= deadline {
            signal(pid, "KILL");
            std::thread::sleep(Duration::from_millis(200));
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn signal(pid: u32, name: &str) {
    // `kill(1)` rather than libc: the workspace forbids unsafe code.
    let _ = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status();
}

/// The last `lines` lines of a log, for error messages.
pub fn log_tail(log: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A free TCP port on 127.0.0.1. The kernel hands out ephemeral ports in sequence, so a port that was
/// just free stays free long enough for the process we start next to bind it.
pub fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(listener.local_addr()?.port())
}

/// Waits until something accepts TCP connections on 127.0.0.1:`port`.
pub fn wait_for_port(port: u16, timeout: Duration, alive: impl Fn() -> bool) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        anyhow::ensure!(alive(), "the process exited before listening on port {port}");
        anyhow::ensure!(
            Instant::now() < deadline,
            "nothing listened on port {port} within {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
