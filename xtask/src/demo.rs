//! `cargo xtask demo`: builds everything, starts the local control plane, and runs the demo scenario
//! (`testbed/src/bin/demo.rs`): `manifests/overlays/dev` applied server-side, the bridges scaled 1 → 3 → 1 with
//! a live table. Ctrl-C tears everything down, the cluster included when this command started it.

use std::process::{Command, ExitCode};

use anyhow::{Context, Result};

use crate::paths::Paths;
use crate::{cargo, cluster, packages};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Run the scenario once and exit: 0 when every step held (the test suite runs this).
    #[arg(long)]
    once: bool,
    /// Leave the local cluster running afterwards, when this command started it.
    #[arg(long)]
    keep_cluster: bool,
    /// With the real dataplane (root): each bridge answers UDP on its node port, probed from a client
    /// namespace; the table gains a column "UDP".
    #[arg(long, env = "JITSI_K8S_DATAPLANE")]
    dataplane: bool,
    /// The shard's bridges behind one LoadBalancer Service (service-per-pod's LoadBalancer mode), the
    /// cloud's load balancer stood in for by an address kube-proxy serves (with --dataplane).
    #[arg(long)]
    load_balancer: bool,
}

pub fn run(paths: &Paths, args: &Args) -> Result<ExitCode> {
    println!("==> packages: haproxy, prosody, dnsmasq (Debian)");
    packages::ensure_commands(&[("haproxy", "haproxy"), ("dnsmasq", "dnsmasq-base")])?;
    packages::ensure_prosody()?;
    packages::ensure_python_venv()?;
    println!("==> local control plane (built from the Go module proxy the first time: a few minutes)");
    let started_cluster = cluster::up_with(
        paths,
        cluster::Extras {
            dataplane: args.dataplane,
            // With real packets, also a real Prometheus scraping the bridges in their pods, and KEDA
            // scaling them on what it reads.
            monitoring: args.dataplane,
            autoscaling: args.dataplane,
        },
    )?;
    println!("==> building the daemons and the demo (cargo; minutes when cold)");
    let built = cargo::run(paths, &["build", "--workspace", "--bins", "--locked"], &[])?;
    let outcome = if built {
        run_scenario(paths, args)
    } else {
        Ok(false)
    };
    if started_cluster && !args.keep_cluster {
        println!("==> stopping the local control plane");
        cluster::down(paths)?;
    }
    Ok(if outcome? {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Runs the demo binary. Ctrl-C reaches it too (same terminal process group); this process only waits
/// for it to finish tearing down, so the cluster can be stopped afterwards.
fn run_scenario(paths: &Paths, args: &Args) -> Result<bool> {
    let mut command = Command::new(paths.built("debug", "demo"));
    command.env("KUBECONFIG", paths.kubeconfig());
    for (flag, on) in [
        ("--once", args.once),
        ("--dataplane", args.dataplane),
        ("--load-balancer", args.load_balancer),
    ] {
        if on {
            command.arg(flag);
        }
    }
    let mut child = command.spawn().context("starting the demo")?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting a runtime to wait for Ctrl-C")?;
    let status = runtime.block_on(async {
        // From the first poll on, SIGINT no longer kills this process: it waits for the demo instead.
        let mut interrupted = std::pin::pin!(tokio::signal::ctrl_c());
        let mut waiting = tokio::task::spawn_blocking(move || child.wait());
        loop {
            tokio::select! {
                status = &mut waiting => break status,
                _ = &mut interrupted => {
                    println!("==> waiting for the demo to tear down");
                    interrupted.set(tokio::signal::ctrl_c());
                }
            }
        }
    });
    let status = status
        .context("waiting for the demo")?
        .context("waiting for the demo")?;
    Ok(status.success())
}
