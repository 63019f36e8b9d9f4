//! The one way xtask runs cargo: the same cargo that runs xtask, in the repository, inheriting the
//! terminal so its progress is seen.

use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::paths::Paths;

/// Runs `cargo <args>` with `env`; whether it succeeded.
pub fn run(paths: &Paths, args: &[&str], env: &[(&str, &str)]) -> Result<bool> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let status = Command::new(cargo)
        .current_dir(&paths.repo)
        .args(args)
        .envs(env.iter().copied())
        .status()
        .with_context(|| format!("running cargo {}", args.join(" ")))?;
    Ok(status.success())
}

/// As [`run`], failing when cargo does.
pub fn require(paths: &Paths, args: &[&str]) -> Result<()> {
    if !run(paths, args, &[])? {
        bail!("cargo {} failed", args.join(" "));
    }
    Ok(())
}
