//! `cargo xtask jitsi-images --tag <stable-…>`: the image contract against another Jitsi release and
//! what changed in the images since the one the shards pin (the testbed's `jitsi-images` program). The
//! upstream sources come from the environment (`JITSI_IMAGES_SRC`, …), the cache, or a `git clone`;
//! source snapshots in `JITSI_K8S_ANCHORS` are seeded into the cache first.

use std::process::{Command, ExitCode};

use anyhow::{Context, Result};

use crate::paths::Paths;
use crate::{anchors, cargo, packages};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The docker-jitsi-meet release to check the manifests against, e.g. stable-11146-2.
    #[arg(long)]
    tag: String,
}

pub fn run(paths: &Paths, args: &Args) -> Result<ExitCode> {
    packages::ensure_installed()?;
    for seeded in anchors::seed_upstream(&paths.cache)? {
        println!(
            "==> upstream source {seeded}: seeded into the cache from {}",
            anchors::ANCHORS
        );
    }
    // jvb-startup runs in front of the bridge, so the contract runs it too.
    cargo::require(
        paths,
        &[
            "build",
            "--locked",
            "-p",
            "jvb-startup",
            "-p",
            "testbed",
            "--bin",
            "jvb-startup",
            "--bin",
            "jitsi-images",
        ],
    )?;
    let status = Command::new(paths.built("debug", "jitsi-images"))
        .current_dir(&paths.repo)
        .args(["--tag", &args.tag])
        .status()
        .context("running jitsi-images")?;
    Ok(if status.success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
