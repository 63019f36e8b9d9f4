//! Upstream source trees built or read from the cache: a content key over a tree, and `go build` of a
//! snapshot into the cache (the snapshot itself is never written to). Shared by `xtask` (the benchmarks'
//! compared programs) and the testbed (the Jitsi images' template tool).

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::process::Command;

/// A key over every file's path and content under `dir` (`.git` left out), stable across runs.
pub fn content_key(dir: &Path) -> Result<u64, String> {
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

fn collect(root: &Path, dir: &Path, files: &mut Vec<(String, Vec<u8>)>) -> Result<(), String> {
    let entries = std::fs::read_dir(dir).map_err(|e| format!("reading {}: {e}", dir.display()))?;
    for entry in entries {
        let path = entry.map_err(|e| e.to_string())?.path();
        if path.file_name().is_some_and(|name| name == ".git") {
            continue;
        }
        if path.is_dir() {
            collect(root, &path, files)?;
        } else {
            let relative = path.strip_prefix(root).unwrap_or(&path).display().to_string();
            let content = std::fs::read(&path).map_err(|e| format!("reading {}: {e}", path.display()))?;
            files.push((relative, content));
        }
    }
    Ok(())
}

/// Builds `package` (relative to the module at `source`) into `cache/bin/<name>-<key>/<binary>`, keyed by
/// the source's content, and returns the binary; a build already there is reused. The source is copied
/// first: nothing is written into it. Dependencies come from the Go module proxy.
pub fn go_build(source: &Path, package: &str, binary: &str, cache: &Path) -> Result<PathBuf, String> {
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
    std::fs::create_dir_all(&work).map_err(|e| format!("creating {}: {e}", work.display()))?;
    let copied = Command::new("cp")
        .arg("-r")
        .arg(format!("{}/.", source.display()))
        .arg(&work)
        .status()
        .map_err(|e| format!("running cp: {e}"))?;
    if !copied.success() {
        return Err(format!("copying {} failed", source.display()));
    }
    let _ = std::fs::remove_dir_all(work.join(".git"));
    println!(
        "==> building {binary} from {} (Go dependencies from the module proxy)",
        source.display()
    );
    let output = Command::new("go")
        .current_dir(&work)
        .env("CGO_ENABLED", "0")
        .args(["build", "-trimpath", "-mod=mod", "-o"])
        .arg(&built)
        .arg(package)
        .output()
        .map_err(|e| format!("running go build (is Go installed?): {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "`go build {package}` of {} failed:\n{}",
            source.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    Ok(built)
}
