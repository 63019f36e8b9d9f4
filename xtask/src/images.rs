//! `cargo xtask images`: builds the container image of each daemon from the one `Dockerfile` (build
//! argument `DAEMON`), where a Docker engine is reachable; says so plainly and builds nothing where there
//! is none.

use std::process::{Command, ExitCode};

use anyhow::{Context, Result};

use crate::paths::Paths;

/// The daemons that ship as images, each built by `Dockerfile` with `--build-arg DAEMON=<name>`.
pub const DAEMONS: [&str; 4] = [
    "service-per-pod",
    "jvb-startup",
    "jvb-exporter",
    "prosody-exporter",
];

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Registry and namespace of the image names.
    #[arg(long, env = "IMAGE_REGISTRY", default_value = "ghcr.io/jitsi-k8s")]
    registry: String,
    /// Image tag; the manifests pin the workspace version.
    #[arg(long, env = "IMAGE_TAG", default_value = env!("CARGO_PKG_VERSION"))]
    tag: String,
    /// Push each image after building it.
    #[arg(long)]
    push: bool,
}

pub fn run(paths: &Paths, args: &Args) -> Result<ExitCode> {
    let images: Vec<(&str, String)> = DAEMONS
        .iter()
        .map(|daemon| (*daemon, format!("{}/{daemon}:{}", args.registry, args.tag)))
        .collect();
    if let Err(reason) = engine() {
        println!("No Docker engine here: {reason}. Nothing was built.");
        println!("The images build with the repository root as context, on a machine with an engine:");
        for (daemon, image) in &images {
            println!("  docker build --build-arg DAEMON={daemon} -t {image} .");
        }
        return Ok(ExitCode::FAILURE);
    }
    for (daemon, image) in &images {
        println!("==> {image}");
        let built = Command::new("docker")
            .current_dir(&paths.repo)
            .env("DOCKER_BUILDKIT", "1")
            .args([
                "build",
                "--build-arg",
                &format!("DAEMON={daemon}"),
                "--tag",
                image,
                ".",
            ])
            .status()
            .context("running docker build")?;
        if !built.success() {
            println!("==> {image} FAILED");
            return Ok(ExitCode::FAILURE);
        }
        if args.push {
            let pushed = Command::new("docker")
                .args(["push", image])
                .status()
                .context("running docker push")?;
            if !pushed.success() {
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Ok when a Docker engine answers; otherwise why not, in a few words.
fn engine() -> Result<(), String> {
    let output = Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .output()
        .map_err(|e| format!("the `docker` command cannot be run ({e})"))?;
    if output.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    let first = stderr
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("no answer");
    Err(format!(
        "the docker CLI is installed but reaches no daemon ({})",
        first.trim()
    ))
}
