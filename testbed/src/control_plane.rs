//! Faults of the local control plane: kill one of its processes (as a crash would) and start it again
//! exactly as `cargo xtask cluster up` did — same program, arguments and log, from the cluster's state
//! file — recording the new PID there so that `cargo xtask cluster down` still stops it.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use local_cluster::process::{is_running, spawn_detached};
use local_cluster::{ClusterDir, State};

fn state(cluster: &ClusterDir) -> State {
    cluster.load().unwrap_or_else(|| {
        panic!(
            "no local cluster state in {}: start one with `cargo xtask cluster up`",
            cluster.path().display()
        )
    })
}

/// A control-plane process killed and not yet started again.
#[derive(Debug)]
pub struct Stopped {
    name: String,
    program: PathBuf,
    args: Vec<String>,
    log: PathBuf,
}

/// Kills `name` (`etcd`, `kube-apiserver`, ...) with SIGKILL and returns how to start it again.
pub fn kill(name: &str) -> Stopped {
    let cluster = ClusterDir::discover();
    let state = state(&cluster);
    let process = state
        .process(name)
        .unwrap_or_else(|| panic!("no {name} in the cluster state"));
    assert!(is_running(process.pid), "{name} ({}) is not running", process.pid);
    let status = Command::new("kill")
        .args(["-KILL", &process.pid.to_string()])
        .status()
        .expect("kill");
    assert!(status.success(), "kill -KILL {} failed", process.pid);
    let deadline = Instant::now() + Duration::from_secs(10);
    while is_running(process.pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    Stopped {
        name: name.to_owned(),
        program: process.program.clone(),
        args: process.args.clone(),
        log: process.log.clone(),
    }
}

impl Stopped {
    /// Starts the process again, detached like the original, and records its PID in the state.
    pub fn start(self) {
        let pid = spawn_detached(&self.program, &self.args, &self.log)
            .unwrap_or_else(|e| panic!("starting {} again: {e}", self.name));
        let cluster = ClusterDir::discover();
        let mut state = state(&cluster);
        if let Some(process) = state.process_mut(&self.name) {
            process.pid = pid;
        }
        cluster.save(&state).expect("writing the cluster's state file");
    }
}
