//! `cargo xtask test`: the one command that checks everything, as CI runs it.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Result;

use crate::paths::Paths;
use crate::{anchors, cargo, cluster, gobuild, packages};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Leave the local cluster running afterwards, when this run started it.
    #[arg(long)]
    keep_cluster: bool,
}

/// One step's outcome, for the summary at the end.
struct Step {
    name: &'static str,
    passed: bool,
    took: Duration,
}

pub fn run(paths: &Paths, args: &Args) -> Result<ExitCode> {
    let mut steps = Vec::new();
    packages::ensure_installed()?;
    let checks: [(&'static str, &[&str]); 3] = [
        ("cargo fmt --check", &["fmt", "--all", "--check"]),
        (
            "cargo clippy",
            &[
                "clippy",
                "--workspace",
                "--all-targets",
                "--locked",
                "--",
                "-D",
                "warnings",
            ],
        ),
        (
            "unit tests",
            &[
                "test",
                "--workspace",
                "--exclude",
                "integration-tests",
                "--locked",
            ],
        ),
    ];
    for (name, cargo_args) in checks {
        if !step(&mut steps, name, || cargo::run(paths, cargo_args, &[]))? {
            return Ok(summary(&steps));
        }
    }

    // The image contract reads the Jitsi images' upstream sources from the cache (or clones them).
    for seeded in anchors::seed_upstream(&paths.cache)? {
        println!(
            "==> upstream source {seeded}: seeded into the cache from {}",
            anchors::ANCHORS
        );
    }
    // With the real dataplane: the tests of tests/dataplane.rs send packets through it.
    let started_cluster = cluster::up_with(paths, cluster::Extras::ALL)?;
    let kubeconfig = paths.kubeconfig().display().to_string();
    let netpol_verdicts = gobuild::NETPOL_VERDICTS
        .ensure_built(&paths.go_modules(), &paths.cache)?
        .join("netpol-verdicts")
        .display()
        .to_string();
    // The integration tests run our daemons as real processes: build them first.
    let integration = step(&mut steps, "integration tests", || {
        let built = cargo::run(paths, &["build", "--workspace", "--bins", "--locked"], &[])?;
        Ok(built
            && cargo::run(
                paths,
                // Every test binary, even after one fails: a CI run reports all failures at once.
                &[
                    "test",
                    "--package",
                    "integration-tests",
                    "--locked",
                    "--no-fail-fast",
                ],
                &[("KUBECONFIG", &kubeconfig), ("NETPOL_VERDICTS", &netpol_verdicts)],
            )?)
    });
    if started_cluster && !args.keep_cluster {
        cluster::down(paths)?;
    }
    integration?;
    Ok(summary(&steps))
}

fn step(steps: &mut Vec<Step>, name: &'static str, run: impl FnOnce() -> Result<bool>) -> Result<bool> {
    println!("==> {name}");
    let started = Instant::now();
    let passed = run()?;
    steps.push(Step {
        name,
        passed,
        took: started.elapsed(),
    });
    if !passed {
        println!("==> {name} FAILED");
    }
    Ok(passed)
}

fn summary(steps: &[Step]) -> ExitCode {
    println!("\n==> summary");
    for step in steps {
        println!(
            "    {:<20} {:<6} {:>8.1?}",
            step.name,
            if step.passed { "ok" } else { "FAILED" },
            step.took
        );
    }
    if steps.iter().all(|s| s.passed) {
        println!("==> all checks passed");
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
