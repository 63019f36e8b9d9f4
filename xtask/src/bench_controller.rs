//! `cargo xtask bench controller`: service-per-pod with 24 StatefulSets × 100 pods on a fresh local control
//! plane (the measuring itself is `tests/examples/controller_bench.rs`), and the approach we replace —
//! metacontroller with a hook deriving Services from `spec.replicas` — in the same run when it can be built.

use std::io::{BufRead, BufReader};
use std::process::{Command, ExitCode, Stdio};

use anyhow::{Context, Result, bail};

use crate::bench::{machine_line, without_hosts};
use crate::cluster;
use crate::paths::Paths;

/// The metacontroller releases tried, newest first (module path of the project's repository).
const METACONTROLLER: &str = "github.com/metacontroller/metacontroller";
const METACONTROLLER_VERSIONS: [&str; 2] = ["latest", "v4.12.3+incompatible"];

pub fn run(paths: &Paths) -> Result<ExitCode> {
    if !cluster::up(paths)? {
        bail!(
            "the benchmark needs the local cluster to itself (the API server's request counts are \
             cluster-wide): stop it with `cargo xtask cluster down`, then run this again"
        );
    }
    let outcome = measure(paths);
    cluster::down(paths)?;
    outcome
}

fn measure(paths: &Paths) -> Result<ExitCode> {
    let metacontroller = try_metacontroller();
    println!("==> building service-per-pod and the benchmark (release)");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    for args in [
        &["build", "--release", "--locked", "--bins"][..],
        &[
            "build",
            "--release",
            "--locked",
            "-p",
            "integration-tests",
            "--example",
            "controller_bench",
        ][..],
    ] {
        let status = Command::new(&cargo)
            .current_dir(&paths.repo)
            .args(args)
            .status()?;
        if !status.success() {
            bail!("cargo {} failed", args.join(" "));
        }
    }
    println!("==> running (about 12 minutes: creation, 5 min steady state, 5 min churn)");
    // Rows are printed as each phase ends, and kept for the results file.
    let mut child = Command::new(paths.repo.join("target/release/examples/controller_bench"))
        .env("KUBECONFIG", paths.kubeconfig())
        .env("JITSI_K8S_DAEMON_PROFILE", "release")
        .stdout(Stdio::piped())
        .spawn()
        .context("running the benchmark")?;
    let mut table = String::new();
    if let Some(stdout) = child.stdout.take() {
        for line in BufReader::new(stdout).lines() {
            let line = line.context("reading the benchmark's output")?;
            println!("{line}");
            table.push_str(&line);
            table.push('\n');
        }
    }
    if !child.wait().context("waiting for the benchmark")?.success() {
        bail!("the benchmark failed");
    }
    let mut text = format!("# service-per-pod benchmark\n\nMachine: {}.\n", machine_line());
    text.push_str(
        "Local control plane (etcd, kube-apiserver, controller-manager, scheduler v1.36, KWOK nodes); \
         the controller as a release build under its own ServiceAccount and RBAC from `manifests/`. \
         Command: `cargo xtask bench controller`.\n",
    );
    text.push_str(table.trim_start());
    text.push_str("\n\n## The approach we replace: metacontroller\n\n");
    match metacontroller {
        Ok(version) => text.push_str(&format!("metacontroller {version} was fetched but is not wired into this benchmark yet.\n")),
        Err(why) => text.push_str(&format!(
            "Not measured: metacontroller cannot be built here. Every release tried was refused by the Go \
             module proxy (the only source of Go code this machine reaches):\n\n```\n{why}\n```\n\n\
             So the targets \"faster than the approach we replace on every latency figure\" cannot be checked \
             in this run. What the old design does by construction is in docs/architecture.md: Services from \
             `spec.replicas` (so the Service of a draining bridge is deleted at scale-down), a hand-deleted \
             Service noticed only at the next resync.\n"
        )),
    }
    let file = paths.repo.join("bench/results/controller.md");
    std::fs::write(&file, &text).with_context(|| format!("writing {}", file.display()))?;
    println!("==> written to {}", file.display());
    Ok(ExitCode::SUCCESS)
}

/// Fetches metacontroller's module; the exact refusal when no version can be had.
fn try_metacontroller() -> Result<String, String> {
    let scratch = std::env::temp_dir().join("jitsi-k8s-metacontroller");
    let _ = std::fs::create_dir_all(&scratch);
    let mut refusals = Vec::new();
    for version in METACONTROLLER_VERSIONS {
        let output = Command::new("go")
            .current_dir(&scratch)
            .args(["mod", "download", "-json", &format!("{METACONTROLLER}@{version}")])
            .output();
        match output {
            Ok(out) if out.status.success() => return Ok(version.to_owned()),
            Ok(out) => {
                let text = String::from_utf8_lossy(&out.stdout);
                let error = text
                    .lines()
                    .find_map(|l| l.trim().strip_prefix("\"Error\": "))
                    .unwrap_or("no error text")
                    .trim_end_matches(',')
                    .replace("\\n", "\n")
                    .replace("\\t", "  ");
                refusals.push(format!(
                    "go mod download {METACONTROLLER}@{version}\n{}",
                    without_hosts(&error)
                ));
            }
            Err(error) => refusals.push(format!("go: {error}")),
        }
    }
    Err(refusals.join("\n\n"))
}
