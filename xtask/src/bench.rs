//! `cargo xtask bench …`: builds what a benchmark measures (release builds of our daemons and the
//! testbed's benchmark programs, the programs we compare with from the Go module proxy), runs the
//! benchmark program, shows its report and writes it to `bench/results/`.

use std::io::{BufRead, BufReader};
use std::process::{Command, ExitCode, Stdio};

use anyhow::{Context, Result, bail};

use crate::paths::Paths;
use crate::{cargo, gobuild, packages};

#[derive(Debug, clap::Subcommand)]
pub enum Bench {
    /// jvb-exporter vs github.com/systemli/prometheus-jitsi-meet-exporter.
    Exporter {
        /// How long wrk scrapes each exporter, in seconds.
        #[arg(long, default_value_t = 20)]
        seconds: u64,
    },
    /// service-per-pod with 24 StatefulSets × 100 pods on a fresh local cluster (about 12 minutes).
    Controller,
    /// What prosody-exporter adds over fetching Prosody's /metrics directly, with 1 000 rooms.
    ProsodyExporter {
        /// How long wrk scrapes each side, in seconds.
        #[arg(long, default_value_t = 20)]
        seconds: u64,
    },
}

pub fn run(paths: &Paths, bench: Bench) -> Result<ExitCode> {
    match bench {
        Bench::Exporter { seconds } => exporter(paths, seconds),
        Bench::ProsodyExporter { seconds } => prosody_exporter(paths, seconds),
        Bench::Controller => crate::bench_controller::run(paths),
    }
}

/// The daemons, each built alone as the Dockerfile builds it: a workspace build unifies features
/// across every crate (kube's, the testbed's) and made jvb-exporter's binary half as large again.
const DAEMONS: [&str; 4] = [
    "service-per-pod",
    "jvb-startup",
    "jvb-exporter",
    "prosody-exporter",
];

/// Release builds of the daemons (as shipped) and of the testbed's benchmark program `program`.
pub fn build_release(paths: &Paths, program: &str) -> Result<()> {
    println!("==> building {program} and the daemons as the images build them (release)");
    cargo::require(
        paths,
        &[
            "build",
            "--release",
            "--locked",
            "-p",
            "testbed",
            "--bin",
            program,
        ],
    )?;
    for daemon in DAEMONS {
        cargo::require(
            paths,
            &["build", "--release", "--locked", "-p", daemon, "--bin", daemon],
        )?;
    }
    Ok(())
}

/// Runs a benchmark program of the testbed (release build): its progress (stderr) and report (stdout)
/// are shown as they come; the report is also written to `bench/results/<results>`.
pub fn run_program(
    paths: &Paths,
    program: &str,
    args: &[String],
    env: &[(&str, String)],
    results: &str,
) -> Result<()> {
    let mut child = Command::new(paths.built("release", program))
        .args(args)
        .env("JITSI_K8S_DAEMON_PROFILE", "release")
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {program}"))?;
    let mut report = String::new();
    if let Some(stdout) = child.stdout.take() {
        for line in BufReader::new(stdout).lines() {
            let line = line.context("reading the benchmark's report")?;
            println!("{line}");
            report.push_str(&line);
            report.push('\n');
        }
    }
    if !child.wait().context("waiting for the benchmark")?.success() {
        bail!("the benchmark {program} failed");
    }
    let file = paths.repo.join("bench/results").join(results);
    std::fs::create_dir_all(file.parent().context("results folder")?)?;
    std::fs::write(&file, report.trim_start()).with_context(|| format!("writing {}", file.display()))?;
    println!("==> written to {}", file.display());
    Ok(())
}

fn exporter(paths: &Paths, seconds: u64) -> Result<ExitCode> {
    packages::ensure_commands(&[("wrk", "wrk")])?;
    build_release(paths, "bench-exporter")?;
    let go_program = &gobuild::JITSI_MEET_EXPORTER;
    let modules = paths.go_modules();
    let go_bin = match crate::anchors::source("systemli-exporter") {
        // A source snapshot (JITSI_K8S_ANCHORS): the module proxy refuses the module path here.
        Some(source) => crate::anchors::build(&source, ".", "prometheus-jitsi-meet-exporter", &paths.cache),
        None => go_program
            .ensure_built(&modules, &paths.cache)
            .map(|dir| dir.join("prometheus-jitsi-meet-exporter"))
            // A failed build usually means the module cannot be downloaded: quote the proxy's own answer.
            .map_err(|build| match go_program.module_dir(&modules) {
                Err(download) => download.context(build.to_string()),
                Ok(_) => build,
            }),
    };
    let mut args = vec!["jvb".to_owned(), format!("--seconds={seconds}")];
    match go_bin {
        Ok(bin) => args.push(format!("--go-exporter={}", bin.display())),
        Err(error) => {
            println!("==> the Go exporter could not be built, so it is not measured: {error:#}");
            args.push(format!(
                "--go-exporter-missing={}",
                without_hosts(&format!("{error:#}"))
            ));
        }
    }
    run_program(paths, "bench-exporter", &args, &[], "exporter.md")?;
    Ok(ExitCode::SUCCESS)
}

fn prosody_exporter(paths: &Paths, seconds: u64) -> Result<ExitCode> {
    packages::ensure_commands(&[("wrk", "wrk")])?;
    build_release(paths, "bench-exporter")?;
    let args = vec!["prosody".to_owned(), format!("--seconds={seconds}")];
    run_program(paths, "bench-exporter", &args, &[], "prosody-exporter.md")?;
    Ok(ExitCode::SUCCESS)
}

/// Registries are named, never their addresses: `https://<host>/path` becomes `<registry>/path`.
pub fn without_hosts(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("https://") {
        out.push_str(&rest[..start]);
        let after = &rest[start + "https://".len()..];
        let host_end = after.find('/').unwrap_or(after.len());
        out.push_str("<registry>");
        rest = &after[host_end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_are_left_out() {
        assert_eq!(
            without_hosts("reading https://example.org/a/b: 403"),
            "reading <registry>/a/b: 403"
        );
        assert_eq!(without_hosts("no address"), "no address");
    }
}
