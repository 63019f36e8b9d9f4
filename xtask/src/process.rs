//! Stopping the local environment's processes and waiting for them to listen.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Result;
use local_cluster::process::is_ours;

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
