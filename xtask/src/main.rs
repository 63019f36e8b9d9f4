//! Developer commands for this repository. `cargo xtask --help` lists them.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod anchors;
mod autoscaling;
mod bench;
mod bench_controller;
mod cargo;
mod cluster;
mod dataplane;
mod demo;
mod gobuild;
mod images;
mod jitsi_images;
mod monitoring;
mod packages;
mod paths;
mod pki;
mod process;
mod test;

#[derive(Debug, Parser)]
#[command(
    name = "cargo xtask",
    about = "Developer commands: demo, local control plane, tests, benchmarks"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// A local Kubernetes control plane (etcd, kube-apiserver, controller-manager, scheduler, KWOK).
    Cluster {
        #[command(subcommand)]
        action: cluster::Action,
    },
    /// THE test command: packages, fmt, clippy, unit tests, the local cluster, integration tests.
    Test(test::Args),
    /// THE main job: a sharded Jitsi simulated on this machine (manifests/overlays/dev on the local
    /// control plane), bridges scaled 1 → 3 → 1 with a live table. Ctrl-C tears it all down.
    Demo(demo::Args),
    /// Builds the daemons' container images (needs a Docker engine; says so when there is none).
    Images(images::Args),
    /// Checks the manifests against the Jitsi images of a release (their own source) and prints what
    /// changed since the release the shards pin: a Jitsi upgrade is this command and one review.
    JitsiImages(jitsi_images::Args),
    /// Benchmarks that print a table and write it to bench/results/.
    Bench {
        #[command(subcommand)]
        bench: bench::Bench,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let paths = match paths::Paths::discover() {
        Ok(paths) => paths,
        Err(error) => {
            eprintln!("xtask: {error:#}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        Command::Cluster { action } => cluster::run(&paths, action),
        Command::Test(args) => test::run(&paths, &args),
        Command::Demo(args) => demo::run(&paths, &args),
        Command::Images(args) => images::run(&paths, &args),
        Command::JitsiImages(args) => jitsi_images::run(&paths, &args),
        Command::Bench { bench } => bench::run(&paths, bench),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("xtask: {error:#}");
            ExitCode::FAILURE
        }
    }
}
