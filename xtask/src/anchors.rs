//! The programs the benchmarks compare us with, built from source snapshots when the Go module proxy
//! refuses their module paths. `JITSI_K8S_ANCHORS` names a folder holding them (`systemli-exporter/`,
//! `metacontroller/`), each a `go build`-able module; without it, or when a snapshot is absent, the
//! benchmarks fall back to the Go module proxy and say plainly what they could not build.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

/// The environment variable naming the folder of source snapshots.
pub const ANCHORS: &str = "JITSI_K8S_ANCHORS";

/// The snapshot of `name`, when `JITSI_K8S_ANCHORS` names a folder that holds it.
pub fn source(name: &str) -> Option<PathBuf> {
    let dir = PathBuf::from(std::env::var_os(ANCHORS)?).join(name);
    dir.join("go.mod").is_file().then_some(dir)
}

/// Builds `package` (relative to the snapshot) of the snapshot `source` into the cache, keyed by the
/// snapshot's content, and returns the binary. The snapshot is copied first: nothing is written into it.
pub fn build(source: &Path, package: &str, binary: &str, cache: &Path) -> Result<PathBuf> {
    let key = content_key(source)?;
    let name = source
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let out = cache.join("bin").join(format!("{name}-{key:016x}"));
    let built = out.join(binary);
    if built.is_file() {
        return Ok(built);
    }
    let work = cache.join("src").join(format!("{name}-{key:016x}"));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    let copied = Command::new("cp")
        .arg("-r")
        .arg(format!("{}/.", source.display()))
        .arg(&work)
        .status()
        .context("copying the snapshot")?;
    if !copied.success() {
        bail!("copying {} failed", source.display());
    }
    println!(
        "==> building {binary} from the snapshot {} (Go dependencies from the module proxy)",
        source.display()
    );
    let output = Command::new("go")
        .current_dir(&work)
        .env("CGO_ENABLED", "0")
        .args(["build", "-trimpath", "-mod=mod", "-o"])
        .arg(&built)
        .arg(package)
        .output()
        .context("running go build (is Go installed?)")?;
    if !output.status.success() {
        bail!(
            "`go build {package}` of the snapshot {} failed:\n{}",
            source.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(built)
}

/// A key over every file's path and content in the snapshot.
fn content_key(dir: &Path) -> Result<u64> {
    let mut files = Vec::new();
    collect(dir, dir, &mut files)?;
    files.sort();
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    for (relative, content) in files {
        relative.hash(&mut hasher);
        content.hash(&mut hasher);
    }
    Ok(hasher.finish())
}

fn collect(root: &Path, dir: &Path, files: &mut Vec<(String, Vec<u8>)>) -> Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            collect(root, &path, files)?;
        } else {
            let relative = path.strip_prefix(root).unwrap_or(&path).display().to_string();
            files.push((relative, std::fs::read(&path)?));
        }
    }
    Ok(())
}
