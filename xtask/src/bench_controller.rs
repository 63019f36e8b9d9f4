//! `cargo xtask bench controller`: service-per-pod, metacontroller (the design we replace, default and
//! tuned) and the floor (Services created directly) with 24 StatefulSets × 100 pods each, on one fresh
//! local control plane. The measuring is `testbed/src/bin/bench-controller/`; this builds what it runs.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Result, bail};

use crate::bench::{build_release, run_program, without_hosts};
use crate::paths::Paths;
use crate::{anchors, cluster, gobuild};

/// metacontroller's module path upstream (its go.mod names it `metacontroller`, so `go install` of it
/// cannot work either way: the module is downloaded and built in place).
const METACONTROLLER: &str = "github.com/metacontroller/metacontroller";

/// What the benchmark needs to run metacontroller.
struct Metacontroller {
    binary: PathBuf,
    crds: PathBuf,
    hooks: PathBuf,
}

pub fn run(paths: &Paths) -> Result<ExitCode> {
    let metacontroller = metacontroller(paths);
    if let Err(why) = &metacontroller {
        println!("==> metacontroller is not measured: {why}");
    }
    build_release(paths, "bench-controller")?;
    if !cluster::up(paths)? {
        bail!(
            "the benchmark needs the local cluster to itself (the API server's request counts are \
             cluster-wide): stop it with `cargo xtask cluster down`, then run this again"
        );
    }
    let outcome = measure(paths, metacontroller);
    cluster::down(paths)?;
    outcome
}

fn measure(paths: &Paths, metacontroller: Result<Metacontroller, String>) -> Result<ExitCode> {
    println!(
        "==> running (about 90 minutes: per column 24 × 100 bridges, 5 min steady state, 20 bridges added \
         one by one, 5 API server restarts, the correctness checks, and the namespace removed before the \
         next; ours and the floor 3 times, metacontroller once)"
    );
    let mut env = vec![("KUBECONFIG", paths.kubeconfig().display().to_string())];
    // The targets are medians of 3 runs (ours and the floor; metacontroller once).
    if std::env::var_os("BENCH_RUNS").is_none() {
        env.push(("BENCH_RUNS", "3".to_owned()));
    }
    match metacontroller {
        Ok(built) => {
            env.push(("BENCH_METACONTROLLER", built.binary.display().to_string()));
            env.push(("BENCH_METACONTROLLER_CRDS", built.crds.display().to_string()));
            env.push(("BENCH_JSONNET_HOOKS", built.hooks.display().to_string()));
        }
        Err(why) => env.push(("BENCH_METACONTROLLER_MISSING", why)),
    }
    run_program(paths, "bench-controller", &[], &env, "controller.md")?;
    Ok(ExitCode::SUCCESS)
}

/// metacontroller and its CRDs from the snapshot `JITSI_K8S_ANCHORS` names, else from the Go module
/// proxy; the hook server from its wrapper module. Why not, in words for the report.
fn metacontroller(paths: &Paths) -> Result<Metacontroller, String> {
    let (source, crds) = match anchors::source("metacontroller") {
        Some(source) => {
            let crds = source.join("metacontroller-crds-v1.yaml");
            (source, crds)
        }
        None => {
            let scratch = std::env::temp_dir().join("jitsi-k8s-go-download");
            let _ = std::fs::create_dir_all(&scratch);
            let source = gobuild::module_source_dir(&scratch, METACONTROLLER, "latest").map_err(|e| {
                format!(
                    "no source snapshot ({} is not set) and the Go module proxy refused the module:\n\n```\n{}\n```",
                    anchors::ANCHORS,
                    without_hosts(&format!("{e:#}"))
                )
            })?;
            let crds = source.join("manifests/production/metacontroller-crds-v1.yaml");
            (source, crds)
        }
    };
    if !crds.is_file() {
        return Err(format!("its CRDs are not where expected: {}", crds.display()));
    }
    let binary = anchors::build(
        &source,
        "./pkg/cmd/metacontroller",
        "metacontroller",
        &paths.cache,
    )
    .map_err(|e| format!("{e:#}"))?;
    let hooks = gobuild::JSONNET_HOOKS
        .ensure_built(&paths.go_modules(), &paths.cache)
        .map(|dir| dir.join("jsonnet-hooks"))
        .map_err(|e| format!("the jsonnet hook server could not be built: {e:#}"))?;
    Ok(Metacontroller { binary, crds, hooks })
}
