//! Where things live: the repository, the cache of built binaries, the running cluster's state.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

#[derive(Debug, Clone)]
pub struct Paths {
    /// The repository root (the workspace).
    pub repo: PathBuf,
    /// Built binaries, outside the work tree so every clone and CI run on this machine share them.
    pub cache: PathBuf,
    /// The local cluster's state (PKI, kubeconfig, etcd data, logs); removed by `cluster down`.
    pub cluster: PathBuf,
}

impl Paths {
    pub fn discover() -> Result<Self> {
        let repo = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .context("xtask is not inside the workspace")?
            .to_path_buf();
        let cache = match std::env::var_os("JITSI_K8S_CACHE") {
            Some(dir) => PathBuf::from(dir),
            None => match std::env::var_os("XDG_CACHE_HOME") {
                Some(dir) => PathBuf::from(dir).join("jitsi-k8s"),
                None => PathBuf::from(std::env::var_os("HOME").context("HOME is not set")?)
                    .join(".cache/jitsi-k8s"),
            },
        };
        let cluster = match std::env::var_os("JITSI_K8S_CLUSTER_DIR") {
            Some(dir) => PathBuf::from(dir),
            None => repo.join("target/local-cluster"),
        };
        Ok(Self { repo, cache, cluster })
    }

    pub fn control_plane_modules(&self) -> PathBuf {
        self.repo.join("tests/control-plane")
    }

    /// Wrapper modules of Go programs used by benchmarks.
    pub fn go_tools(&self) -> PathBuf {
        self.repo.join("tests/go-tools")
    }

    pub fn kubeconfig(&self) -> PathBuf {
        self.cluster.join("kubeconfig")
    }
}
