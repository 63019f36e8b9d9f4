//! Where things live: the repository, the cache of built binaries, the Go wrapper modules, the local
//! cluster's state.

use std::path::PathBuf;

use anyhow::Result;
use local_cluster::ClusterDir;

#[derive(Debug, Clone)]
pub struct Paths {
    /// The repository root (the workspace).
    pub repo: PathBuf,
    /// Built binaries, outside the work tree so every clone and CI run on this machine share them.
    pub cache: PathBuf,
    /// The local cluster's state (PKI, kubeconfig, etcd data, logs); removed by `cluster down`.
    pub cluster: ClusterDir,
}

impl Paths {
    pub fn discover() -> Result<Self> {
        let repo = local_cluster::repo_root();
        let cache = local_cluster::cache_dir().map_err(anyhow::Error::msg)?;
        Ok(Self {
            repo,
            cache,
            cluster: ClusterDir::discover(),
        })
    }

    /// The Go wrapper modules (`go.mod` + `go.sum` pinning what the control plane and the benchmarks
    /// build from the Go module proxy).
    pub fn go_modules(&self) -> PathBuf {
        self.repo.join("xtask/go")
    }

    pub fn kubeconfig(&self) -> PathBuf {
        self.cluster.kubeconfig()
    }

    /// A binary of this workspace built by cargo in `profile` (`debug` or `release`).
    pub fn built(&self, profile: &str, name: &str) -> PathBuf {
        let target =
            std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| self.repo.join("target"), PathBuf::from);
        target.join(profile).join(name)
    }
}
