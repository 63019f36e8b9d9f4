//! `install <dir>`: the init container copies this binary into an emptyDir the bridge container mounts.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
#[error("cannot install jvb-startup into {dir}: {source}")]
pub struct InstallError {
    dir: PathBuf,
    source: std::io::Error,
}

/// Copies the running executable to `<dir>/jvb-startup` (executable, atomically). Returns the path.
pub fn install(dir: &Path) -> Result<PathBuf, InstallError> {
    let fail = |source| InstallError {
        dir: dir.to_path_buf(),
        source,
    };
    let source = std::env::current_exe().map_err(fail)?;
    let target = dir.join("jvb-startup");
    let temporary = dir.join(format!(".jvb-startup.{}.tmp", std::process::id()));
    std::fs::copy(&source, &temporary).map_err(fail)?;
    std::fs::set_permissions(&temporary, std::fs::Permissions::from_mode(0o755)).map_err(fail)?;
    std::fs::rename(&temporary, &target).map_err(fail)?;
    Ok(target)
}
