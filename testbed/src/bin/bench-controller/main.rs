//! `cargo xtask bench controller`: service-per-pod side by side with the design it replaces
//! (metacontroller with the seed's jsonnet hooks, at its default client QPS and tuned) and with the
//! floor (the same Services created directly, no controller), on one fresh local control plane. Each
//! subject gets a fresh namespace, the previous one gone (every subject needs the whole NodePort range):
//! 1. warm-up: a 3-bridge StatefulSet `hold` (ports 32700–32702) gets its Services, so the clock starts
//!    with the controller live;
//! 2. bulk: 24 StatefulSets × 100 pods created at once: StatefulSet → all its Services; pod → Service;
//! 3. steady state (5 min; every StatefulSet touched once a minute so a controller re-syncs): the API
//!    server's own count of writes;
//! 4. with every pod in place, 20 bridges added one at a time: scale request → Service, pod → Service;
//! 5. correctness: `hold` scaled 3 → 1 while pod 2 is held Terminating (a draining bridge): does its
//!    Service survive until the pod is gone? Then the controller stopped and `hold` deleted: is it gone?
//!
//! The controllers' CPU time and peak RSS are read from /proc. Prints a markdown report. Needs a
//! cluster nothing else uses (the counts are cluster-wide). Environment: BENCH_SETS, BENCH_PODS,
//! BENCH_STEADY_SECS to try smaller sizes; BENCH_RUNS (medians of that many runs); BENCH_SUBJECTS (`ours,mc-tuned,mc-default,floor`, the
//! default) to run some; BENCH_METACONTROLLER, BENCH_METACONTROLLER_CRDS, BENCH_JSONNET_HOOKS (set by
//! xtask) or BENCH_METACONTROLLER_MISSING (why it could not be built).

mod phases;
mod report;
mod subject;

use std::path::PathBuf;

use subject::{Kind, Metacontroller, Running};
use testbed::measure::machine_line;

fn setting(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The sizes of one run.
#[derive(Clone, Copy, Debug)]
pub struct Sizes {
    pub sets: usize,
    pub pods: usize,
    pub steady: std::time::Duration,
}

fn metacontroller() -> Result<Metacontroller, String> {
    if let Ok(why) = std::env::var("BENCH_METACONTROLLER_MISSING") {
        return Err(why);
    }
    let path = |name: &str| {
        std::env::var_os(name)
            .map(PathBuf::from)
            .ok_or_else(|| format!("{name} is not set (run this through `cargo xtask bench controller`)"))
    };
    Ok(Metacontroller {
        binary: path("BENCH_METACONTROLLER")?,
        crds: path("BENCH_METACONTROLLER_CRDS")?,
        hooks: path("BENCH_JSONNET_HOOKS")?,
    })
}

#[tokio::main]
async fn main() {
    let sizes = Sizes {
        sets: setting("BENCH_SETS", 24) as usize,
        pods: setting("BENCH_PODS", 100) as usize,
        steady: std::time::Duration::from_secs(setting("BENCH_STEADY_SECS", 300)),
    };
    assert!(
        sizes.sets * 100 <= 2700 && sizes.pods <= 100,
        "the NodePort range holds 27 blocks of 100 below the warm-up's ports"
    );
    let wanted =
        std::env::var("BENCH_SUBJECTS").unwrap_or_else(|_| "ours,mc-tuned,mc-default,floor".to_owned());
    let metacontroller = metacontroller();
    let mut kinds = Vec::new();
    for name in wanted.split(',').map(str::trim) {
        match (name, &metacontroller) {
            ("ours", _) => kinds.push(Kind::Ours),
            ("floor", _) => kinds.push(Kind::Floor),
            ("mc-tuned" | "mc-default", Ok(build)) => kinds.push(Kind::Metacontroller {
                tuned: name == "mc-tuned",
                build: build.clone(),
            }),
            ("mc-tuned" | "mc-default", Err(_)) => {}
            (other, _) => panic!("BENCH_SUBJECTS: unknown subject {other:?}"),
        }
    }

    // BENCH_RUNS runs of every column, interleaved (the machine's drift is shared), then each figure's
    // median per column.
    let runs = setting("BENCH_RUNS", 1).max(1) as usize;
    let mut measured: Vec<(&str, Vec<phases::Figures>)> =
        kinds.iter().map(|kind| (kind.label(), Vec::new())).collect();
    for round in 0..runs {
        for (index, kind) in kinds.iter().enumerate() {
            // metacontroller (about 20 minutes a run at its default QPS) is the reference, measured once;
            // the targets are ours against the floor, both measured in every run.
            if round > 0 && matches!(kind, subject::Kind::Metacontroller { .. }) {
                continue;
            }
            eprintln!(
                "==> {} (run {} of {runs}): starting in a fresh namespace",
                kind.label(),
                round + 1
            );
            let mut run = Running::start(kind.clone()).await;
            let figures = phases::measure(&mut run, sizes).await;
            eprintln!("==> {}: done, removing its namespace", run.kind.label());
            run.remove().await;
            measured[index].1.push(figures);
        }
    }
    let columns: Vec<(&str, phases::Figures)> = measured
        .iter()
        .map(|(label, figures)| (*label, phases::Figures::median(figures)))
        .collect();

    println!(
        "# service-per-pod benchmark\n\nMachine: {}.\n\
         One local control plane (etcd, kube-apiserver, controller-manager, scheduler v1.36, KWOK nodes) for \
         every column, each in a fresh namespace after the previous one is gone. Command: \
         `cargo xtask bench controller`.\n\n\
         Columns: service-per-pod as the manifests run it (release build, its ServiceAccount and RBAC, \
         namespaced); metacontroller built from source (`pkg/cmd/metacontroller`, admin credentials as its \
         upstream RBAC grants, all namespaces) with the seed's DecoratorController and jsonnet hooks \
         (`bench/metacontroller/`, served by go-jsonnet), at its default client QPS 5 / burst 10 and at \
         QPS 1000 / burst 2000; the floor: the same Services created by the benchmark itself, 32 at a \
         time, while the StatefulSet controller creates the same pods. Ratios divide ours by the other \
         column (lower is better; for p50 / p99 / max rows, the p99). {}\n",
        machine_line(),
        if runs > 1 {
            format!(
                "Each figure of service-per-pod and of the floor is the median of {runs} runs, interleaved; \
                 metacontroller's columns are one run."
            )
        } else {
            "One run of each column.".to_owned()
        }
    );
    print!("{}", report::render(&columns, sizes));
    if let Err(why) = metacontroller {
        println!("\n## metacontroller: not measured\n\n{why}");
    }
}
