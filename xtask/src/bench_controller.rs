//! `cargo xtask bench controller`: service-per-pod with 24 StatefulSets × 100 pods on a fresh local control
//! plane (the measuring itself is `testbed/src/bin/bench-controller.rs`), and the approach we replace —
//! metacontroller with a hook deriving Services from `spec.replicas` — in the same run when it can be built.

use std::process::{Command, ExitCode};

use anyhow::{Result, bail};

use crate::bench::{build_release, run_program, without_hosts};
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
    build_release(paths, "bench-controller")?;
    println!("==> running (about 12 minutes: creation, 5 min steady state, 5 min churn)");
    let note = match metacontroller {
        Ok(version) => {
            format!("metacontroller {version} was fetched but is not wired into this benchmark yet.")
        }
        Err(why) => format!(
            "Not measured: metacontroller cannot be built here. Every release tried was refused by the Go \
             module proxy:\n\n```\n{why}\n```"
        ),
    };
    run_program(
        paths,
        "bench-controller",
        &[],
        &[
            ("KUBECONFIG", paths.kubeconfig().display().to_string()),
            ("BENCH_METACONTROLLER_NOTE", note),
        ],
        "controller.md",
    )?;
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
