//! Faults of the local control plane: kill one of its processes (as a crash would) and start it again
//! exactly as `cargo xtask cluster up` did — same command line, same log — recording the new PID in the
//! cluster's state so that `cargo xtask cluster down` still stops it.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::manifests::repo_root;

fn state_file() -> PathBuf {
    let dir = std::env::var_os("JITSI_K8S_CLUSTER_DIR")
        .map_or_else(|| repo_root().join("target/local-cluster"), PathBuf::from);
    dir.join("state.json")
}

fn read_state() -> Value {
    let path = state_file();
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_json::from_str(&text).expect("state.json is JSON")
}

/// A control-plane process killed and not yet started again.
#[derive(Debug)]
pub struct Stopped {
    name: String,
    argv: Vec<String>,
    log: PathBuf,
}

/// Kills `name` (`etcd`, `kube-apiserver`, ...) with SIGKILL and returns how to start it again.
pub fn kill(name: &str) -> Stopped {
    let state = read_state();
    let process = state["processes"]
        .as_array()
        .and_then(|list| list.iter().find(|p| p["name"] == name))
        .unwrap_or_else(|| panic!("no {name} in the cluster state"));
    let pid = process["pid"].as_u64().expect("pid");
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))
        .unwrap_or_else(|e| panic!("{name} ({pid}) is not running: {e}"));
    let argv: Vec<String> = cmdline
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let status = Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(status.success(), "kill -KILL {pid} failed");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| !c.is_empty())
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    Stopped {
        name: name.to_owned(),
        argv,
        log: PathBuf::from(process["log"].as_str().expect("log path")),
    }
}

impl Stopped {
    /// Starts the process again, detached like the original, and records its PID in the state.
    pub fn start(self) {
        use std::os::unix::process::CommandExt;
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("opening the log");
        let mut child = Command::new(&self.argv[0])
            .args(&self.argv[1..])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {} again: {e}", self.name));
        let mut state = read_state();
        if let Some(process) = state["processes"]
            .as_array_mut()
            .and_then(|list| list.iter_mut().find(|p| p["name"] == self.name.as_str()))
        {
            process["pid"] = child.id().into();
        }
        std::fs::write(state_file(), serde_json::to_vec_pretty(&state).expect("state"))
            .expect("writing state.json");
        // Reap it when it ends (`cargo xtask cluster down` stops it), so it never lingers as a zombie.
        std::thread::spawn(move || child.wait());
    }
}
