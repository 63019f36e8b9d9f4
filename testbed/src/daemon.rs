//! Our daemons run as real processes in the tests: the binaries `cargo xtask test` builds, started with
//! a kubeconfig that holds only their own ServiceAccount's token.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::{eventually, free_tcp_port, repo_root};

/// A built binary of this workspace: `target/debug/<name>`, or `target/<profile>/<name>` with
/// `JITSI_K8S_DAEMON_PROFILE=<profile>` (benchmarks run release builds).
pub fn binary(name: &str) -> PathBuf {
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| repo_root().join("target"), PathBuf::from);
    let profile = std::env::var("JITSI_K8S_DAEMON_PROFILE").unwrap_or_else(|_| "debug".to_owned());
    let path = target.join(&profile).join(name);
    assert!(
        path.is_file(),
        "{} is missing: run the tests through `cargo xtask test`, or `cargo build --bins{}` first",
        path.display(),
        if profile == "release" { " --release" } else { "" }
    );
    path
}

/// A running daemon; killed (SIGKILL, like a crash) when dropped.
#[derive(Debug)]
pub struct Daemon {
    child: Child,
    pub admin: SocketAddr,
    pub log: PathBuf,
}

impl Daemon {
    /// Starts `name` with `args` plus `--admin-addr` on a free port and `env`, logging to a file.
    pub fn start(name: &str, args: &[String], env: &[(&str, String)]) -> Self {
        Self::start_with_addr_flag(name, args, env, "--admin-addr")
    }

    /// As [`Daemon::start`], for daemons whose HTTP listener flag has another name (`--listen`).
    pub fn start_with_addr_flag(
        name: &str,
        args: &[String],
        env: &[(&str, String)],
        addr_flag: &str,
    ) -> Self {
        Self::start_program(name, &binary(name), args, env, addr_flag)
    }

    /// Starts a program that is not ours (`program`, logged as `name`), which serves `/readyz` on the
    /// address given with `addr_flag`: the programs the benchmarks compare us with.
    pub fn start_program(
        name: &str,
        program: &std::path::Path,
        args: &[String],
        env: &[(&str, String)],
        addr_flag: &str,
    ) -> Self {
        let admin = SocketAddr::from(([127, 0, 0, 1], free_tcp_port().expect("a free port")));
        let log = repo_root()
            .join("target/test-logs")
            .join(format!("{name}-{}.log", admin.port()));
        std::fs::create_dir_all(log.parent().expect("log folder")).expect("creating target/test-logs");
        let out = std::fs::File::create(&log).expect("creating the daemon log");
        let child = Command::new(program)
            .args(args)
            .arg(format!("{addr_flag}={admin}"))
            .env_remove("KUBECONFIG")
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log handle"))
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        Self { child, admin, log }
    }

    /// Waits until `/readyz` answers 200.
    pub async fn ready(&mut self) {
        let url = format!("http://{}/readyz", self.admin);
        let log = self.log.clone();
        let child = &mut self.child;
        eventually(
            &format!("{url} to answer 200 (log: {})", log.display()),
            Duration::from_secs(30),
            || {
                let exited = child.try_wait().ok().flatten();
                let url = url.clone();
                let log = log.clone();
                async move {
                    if let Some(status) = exited {
                        panic!(
                            "the daemon exited ({status}): {}",
                            std::fs::read_to_string(&log).unwrap_or_default()
                        );
                    }
                    let response = reqwest::get(&url).await.ok()?;
                    (response.status() == 200).then_some(())
                }
            },
        )
        .await;
    }

    /// The daemon's `/metrics` text.
    pub async fn metrics(&self) -> String {
        let response = reqwest::get(format!("http://{}/metrics", self.admin))
            .await
            .expect("scraping /metrics");
        response.text().await.expect("metrics body")
    }

    /// The value of one sample in `/metrics` (`name` with labels, as printed). Panics when the daemon
    /// does not export it: a test reading a metric that is gone must fail, not read 0.
    pub async fn metric(&self, sample: &str) -> f64 {
        let text = self.metrics().await;
        sample_value(&text, sample).unwrap_or_else(|| {
            panic!(
                "{} exports no sample {sample}; its /metrics:\n{text}",
                self.log.display()
            )
        })
    }

    /// The process id, to read its memory and open files from /proc.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process still runs.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Kills the process at once, as a crash would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The value of the sample printed exactly as `sample` (name with labels) in an exposition.
pub fn sample_value(text: &str, sample: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(sample).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|value| value.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sample_is_found_only_under_its_exact_name() {
        let text = "# TYPE x counter\nx_total{a=\"1\"} 3\nx_total 4\n";
        assert_eq!(sample_value(text, "x_total"), Some(4.0));
        assert_eq!(sample_value(text, "x_total{a=\"1\"}"), Some(3.0));
        assert_eq!(sample_value(text, "x"), None);
        assert_eq!(sample_value(text, "y_total"), None);
    }
}
