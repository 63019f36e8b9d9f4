//! Where the upstream sources of the Jitsi images come from. The contract reads them where they are and
//! never copies them into the repository.
//!
//! For each repository, at a given tag or branch, in this order:
//! 1. the environment variable of that repository (e.g. `JITSI_IMAGES_SRC`): a checkout the user made;
//!    when it is a git checkout it must be at the reference asked for;
//! 2. the cache, `~/.cache/jitsi-k8s/upstream/<repository>/<reference>/` (filled by step 3, or by
//!    `cargo xtask` from a folder of source snapshots);
//! 3. `git clone --depth 1 --branch <reference>` of the public repository, into the cache.

use std::path::{Path, PathBuf};
use std::process::Command;

/// An upstream repository the contract reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Repo {
    pub name: &'static str,
    pub url: &'static str,
    /// The environment variable naming a checkout of it.
    pub env: &'static str,
}

/// The images' own definitions: Dockerfiles, `rootfs/defaults` templates, s6 scripts.
pub const DOCKER_JITSI_MEET: Repo = Repo {
    name: "docker-jitsi-meet",
    url: "https://github.com/jitsi/docker-jitsi-meet",
    env: "JITSI_IMAGES_SRC",
};
/// The template tool the images render their configuration with (`tpl`).
pub const TPL: Repo = Repo {
    name: "tpl",
    url: "https://github.com/jitsi/tpl",
    env: "JITSI_TPL_SRC",
};
/// The init system of the images (its `preinit` checks `/run`).
pub const S6_OVERLAY: Repo = Repo {
    name: "s6-overlay",
    url: "https://github.com/just-containers/s6-overlay",
    env: "S6_OVERLAY_SRC",
};
/// Jicofo: its `reference.conf` files and its launch script.
pub const JICOFO: Repo = Repo {
    name: "jicofo",
    url: "https://github.com/jitsi/jicofo",
    env: "JICOFO_SRC",
};
/// The bridge: its `reference.conf` files and its launch script.
pub const JITSI_VIDEOBRIDGE: Repo = Repo {
    name: "jitsi-videobridge",
    url: "https://github.com/jitsi/jitsi-videobridge",
    env: "JVB_SRC",
};

pub const ALL: [Repo; 5] = [DOCKER_JITSI_MEET, TPL, S6_OVERLAY, JICOFO, JITSI_VIDEOBRIDGE];

/// A folder name for a reference (branches contain `/`).
pub fn reference_dir(reference: &str) -> String {
    reference.replace('/', "_")
}

/// Where the cache keeps `repo` at `reference`.
pub fn cached(cache: &Path, repo: &Repo, reference: &str) -> PathBuf {
    cache
        .join("upstream")
        .join(repo.name)
        .join(reference_dir(reference))
}

/// The file in a cached checkout that says where it came from.
pub const PROVENANCE_FILE: &str = ".jitsi-k8s-source";

/// A checkout of `repo` at `reference`, and how it was found (for the report).
#[derive(Clone, Debug)]
pub struct Checkout {
    pub path: PathBuf,
    pub origin: String,
}

/// Finds `repo` at `reference`: the environment, the cache, then a shallow clone into the cache.
pub fn checkout(repo: &Repo, reference: &str) -> Result<Checkout, String> {
    checkout_from(repo, reference, true)
}

/// As [`checkout`]; with `overrides` false the environment variable is not looked at (the release the
/// shards pin, when the variable names the checkout of another one).
pub fn checkout_from(repo: &Repo, reference: &str, overrides: bool) -> Result<Checkout, String> {
    if let Some(dir) = std::env::var_os(repo.env)
        .filter(|_| overrides)
        .map(PathBuf::from)
    {
        if !dir.is_dir() {
            return Err(format!(
                "{} names {}, which is not a folder",
                repo.env,
                dir.display()
            ));
        }
        if let Some(at) = git_reference(&dir)
            && !at.iter().any(|r| r == reference)
        {
            return Err(format!(
                "{} is a checkout of {} at {}, not at {reference}: check out {reference} there, or unset {}",
                repo.env,
                repo.name,
                at.join(", "),
                repo.env
            ));
        }
        return Ok(Checkout {
            path: dir.clone(),
            origin: format!("{} ({})", dir.display(), repo.env),
        });
    }
    let cache = local_cluster::cache_dir()?;
    let path = cached(&cache, repo, reference);
    if path.is_dir() {
        let origin = std::fs::read_to_string(path.join(PROVENANCE_FILE))
            .map(|o| o.trim().to_owned())
            .unwrap_or_else(|_| format!("the cache, {}", path.display()));
        return Ok(Checkout { path, origin });
    }
    clone(repo, reference, &path)?;
    Ok(Checkout {
        origin: format!("{} at {reference} (git clone)", repo.url),
        path,
    })
}

/// The tags and branch names a git checkout is at, or `None` when it is not a git checkout.
fn git_reference(dir: &Path) -> Option<Vec<String>> {
    let git = |args: &[&str]| {
        Command::new("git")
            .current_dir(dir)
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
    };
    // Only the top of a checkout counts: a folder inside another repository is not a checkout of its own.
    let top = git(&["rev-parse", "--show-toplevel"])?;
    if std::fs::canonicalize(top.trim()).ok()? != std::fs::canonicalize(dir).ok()? {
        return None;
    }
    let mut names: Vec<String> = git(&["tag", "--points-at", "HEAD"])
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect();
    if let Some(branch) = git(&["rev-parse", "--abbrev-ref", "HEAD"]) {
        names.push(branch.trim().to_owned());
    }
    Some(names)
}

fn clone(repo: &Repo, reference: &str, into: &Path) -> Result<(), String> {
    let partial = into.with_extension("cloning");
    let _ = std::fs::remove_dir_all(&partial);
    if let Some(parent) = partial.parent() {
        std::fs::create_dir_all(parent).map_err(|e| format!("creating {}: {e}", parent.display()))?;
    }
    println!("==> git clone --depth 1 --branch {reference} {}", repo.url);
    let output = Command::new("timeout")
        .args([
            "300", "git", "clone", "--quiet", "--depth", "1", "--branch", reference, repo.url,
        ])
        .arg(&partial)
        .env("GIT_TERMINAL_PROMPT", "0")
        .output()
        .map_err(|e| format!("running git: {e}"))?;
    if !output.status.success() {
        let _ = std::fs::remove_dir_all(&partial);
        return Err(format!(
            "no source of {} at {reference}: {} is unset, the cache has none and `git clone --branch {reference} {}` failed ({}). \
             Set {} to a checkout of {} at {reference}.",
            repo.name,
            repo.env,
            repo.url,
            String::from_utf8_lossy(&output.stderr).trim(),
            repo.env,
            repo.name
        ));
    }
    let commit = Command::new("git")
        .current_dir(&partial)
        .args(["rev-parse", "HEAD"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    std::fs::write(
        partial.join(PROVENANCE_FILE),
        format!("{} at {reference} (commit {commit}, git clone)\n", repo.url),
    )
    .map_err(|e| e.to_string())?;
    std::fs::rename(&partial, into).map_err(|e| format!("moving the clone into {}: {e}", into.display()))
}

/// The `tpl` binary of `reference` (the `TPL_VERSION` the base image's Dockerfile names), built from
/// source with Go and cached.
pub fn tpl(reference: &str, overrides: bool) -> Result<PathBuf, String> {
    let source = checkout_from(&TPL, reference, overrides)?;
    local_cluster::source::go_build(&source.path, ".", "tpl", &local_cluster::cache_dir()?)
}

/// Typesafe Config, the HOCON library Jitsi's Java programs load their configuration with (jicoco-config
/// depends on com.typesafe:config 1.4.2), from Maven Central, checked against its SHA-256.
pub const CONFIG_JAR: (&str, &str) = (
    "https://repo.maven.apache.org/maven2/com/typesafe/config/1.4.2/config-1.4.2.jar",
    "0076c249b4387d8369146528fd5dacb3efba098dc02ecf9ac81debdfc2e12fd5",
);

/// The Typesafe Config jar, downloaded once into the cache.
pub fn config_jar() -> Result<PathBuf, String> {
    let (url, sha256) = CONFIG_JAR;
    let path = local_cluster::cache_dir()?.join("maven/config-1.4.2.jar");
    if path.is_file() && file_sha256(&path)? == sha256 {
        return Ok(path);
    }
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| e.to_string())?;
    }
    let partial = path.with_extension("part");
    let status = Command::new("curl")
        .args([
            "--fail",
            "--silent",
            "--show-error",
            "--location",
            "--max-time",
            "120",
            "-o",
        ])
        .arg(&partial)
        .arg(url)
        .status()
        .map_err(|e| format!("running curl: {e}"))?;
    if !status.success() {
        return Err(format!("downloading {url} failed"));
    }
    let got = file_sha256(&partial)?;
    if got != sha256 {
        let _ = std::fs::remove_file(&partial);
        return Err(format!("{url} has SHA-256 {got}, expected {sha256}"));
    }
    std::fs::rename(&partial, &path).map_err(|e| e.to_string())?;
    Ok(path)
}

fn file_sha256(path: &Path) -> Result<String, String> {
    let output = Command::new("sha256sum")
        .arg(path)
        .output()
        .map_err(|e| format!("running sha256sum: {e}"))?;
    Ok(String::from_utf8_lossy(&output.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned())
}
