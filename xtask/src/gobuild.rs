//! Builds Go programs from the wrapper modules under `xtask/go/` into the cache, keyed by the
//! pinned version, and finds files inside downloaded Go modules (KWOK stages, Prometheus Operator CRDs).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// One wrapper module and the commands it builds.
#[derive(Debug)]
pub struct GoProgram {
    /// Folder under `xtask/go/` holding the wrapper `go.mod`.
    pub wrapper: &'static str,
    /// The module whose pinned version keys the cache (`require <module> <version>` in the wrapper).
    pub module: &'static str,
    /// `(binary name, package path)`.
    pub commands: &'static [(&'static str, &'static str)],
    pub tags: &'static str,
    /// Extra `-ldflags`, given the version (e.g. so the apiserver reports its real version).
    pub ldflags: fn(&str) -> String,
}

pub const KUBERNETES: GoProgram = GoProgram {
    wrapper: "kubernetes",
    module: "k8s.io/kubernetes",
    commands: &[
        ("kube-apiserver", "k8s.io/kubernetes/cmd/kube-apiserver"),
        (
            "kube-controller-manager",
            "k8s.io/kubernetes/cmd/kube-controller-manager",
        ),
        ("kube-scheduler", "k8s.io/kubernetes/cmd/kube-scheduler"),
        ("kube-proxy", "k8s.io/kubernetes/cmd/kube-proxy"),
    ],
    tags: "selinux,notest",
    ldflags: kubernetes_ldflags,
};

pub const ETCD: GoProgram = GoProgram {
    wrapper: "etcd",
    module: "go.etcd.io/etcd/server/v3",
    commands: &[("etcd", "go.etcd.io/etcd/server/v3")],
    tags: "",
    ldflags: |_| String::new(),
};

pub const KWOK: GoProgram = GoProgram {
    wrapper: "kwok",
    module: "sigs.k8s.io/kwok",
    commands: &[("kwok", "sigs.k8s.io/kwok/cmd/kwok")],
    tags: "",
    ldflags: |_| String::new(),
};

/// The Prometheus Operator and its config reloader, for `cargo xtask cluster up --monitoring`: the operator
/// turns our PodMonitors and PrometheusRules into a Prometheus configuration, the reloader runs in the
/// Prometheus pod as the operator's StatefulSet says.
pub const PROMETHEUS_OPERATOR: GoProgram = GoProgram {
    wrapper: "prometheus-operator",
    module: "github.com/prometheus-operator/prometheus-operator",
    commands: &[
        (
            "operator",
            "github.com/prometheus-operator/prometheus-operator/cmd/operator",
        ),
        (
            "prometheus-config-reloader",
            "github.com/prometheus-operator/prometheus-operator/cmd/prometheus-config-reloader",
        ),
    ],
    tags: "",
    ldflags: |version| {
        format!(
            "-X github.com/prometheus/common/version.Version={} \
             -X github.com/prometheus/common/version.Branch=release",
            version.trim_start_matches('v')
        )
    },
};

/// Prometheus itself (module v0.3XX.Y is release v3.XX.Y), running the configuration the operator
/// generates. Built without its web UI's assets (`builtinassets`): the API and `/-/reload` are all the
/// tests use.
pub const PROMETHEUS: GoProgram = GoProgram {
    wrapper: "prometheus",
    module: "github.com/prometheus/prometheus",
    commands: &[("prometheus", "github.com/prometheus/prometheus/cmd/prometheus")],
    tags: "",
    // What `prometheus --version` and its build_info say.
    ldflags: |version| {
        format!(
            "-X github.com/prometheus/common/version.Version={}",
            prometheus_release(version)
        )
    },
};

/// KEDA's operator and metrics API server, for `cargo xtask cluster up --autoscaling`: the
/// ScaledObjects of our manifests become HPAs fed by KEDA's external metrics. Named as in KEDA's
/// images (`/keda`, `/keda-adapter`).
pub const KEDA: GoProgram = GoProgram {
    wrapper: "keda",
    module: "github.com/kedacore/keda/v2",
    commands: &[
        ("keda", "github.com/kedacore/keda/v2/cmd/operator"),
        ("keda-adapter", "github.com/kedacore/keda/v2/cmd/adapter"),
    ],
    tags: "",
    // What KEDA's welcome line and its build-info metric say.
    ldflags: |version| format!("-X github.com/kedacore/keda/v2/version.Version={version}"),
};

/// Prometheus's release for its module version: v0.305.0 → 3.5.0.
pub fn prometheus_release(version: &str) -> String {
    version
        .trim_start_matches("v0.")
        .split_once('.')
        .and_then(|(minor, patch)| {
            let minor = minor.parse::<u32>().ok()?.checked_sub(300)?;
            Some(format!("3.{minor}.{patch}"))
        })
        .unwrap_or_else(|| version.to_owned())
}

/// The Go exporter operators run today, for the exporter benchmark.
pub const JITSI_MEET_EXPORTER: GoProgram = GoProgram {
    wrapper: "prometheus-jitsi-meet-exporter",
    module: "github.com/systemli/prometheus-jitsi-meet-exporter",
    commands: &[(
        "prometheus-jitsi-meet-exporter",
        "github.com/systemli/prometheus-jitsi-meet-exporter",
    )],
    tags: "",
    ldflags: |_| String::new(),
};

/// A metacontroller webhook server evaluating the seed's jsonnet hooks with go-jsonnet (main.go of the
/// wrapper), for the controller benchmark's metacontroller columns.
pub const JSONNET_HOOKS: GoProgram = GoProgram {
    wrapper: "jsonnet-hooks",
    module: "github.com/google/go-jsonnet",
    commands: &[("jsonnet-hooks", "jitsi-k8s.local/tools/jsonnet-hooks")],
    tags: "",
    ldflags: |_| String::new(),
};

/// cyclonus's NetworkPolicy engine behind a JSON interface (main.go of the wrapper), for the tests that
/// check the rendered NetworkPolicies against SECURITY.md's matrix.
pub const NETPOL_VERDICTS: GoProgram = GoProgram {
    wrapper: "netpol-verdicts",
    module: "github.com/mattfenwick/cyclonus",
    commands: &[("netpol-verdicts", "jitsi-k8s.local/tools/netpol-verdicts")],
    tags: "",
    ldflags: |_| String::new(),
};

/// kube-router's NetworkPolicy controller, enforcing the manifests' policies in the local dataplane's
/// node namespaces. Test infrastructure only; the Go module proxy notes security reports for v2.1.0,
/// which concern its router and proxy roles we do not run, on a network that exists only in namespaces.
pub const KUBE_ROUTER: GoProgram = GoProgram {
    wrapper: "kube-router",
    module: "github.com/cloudnativelabs/kube-router/v2",
    commands: &[(
        "kube-router",
        "github.com/cloudnativelabs/kube-router/v2/cmd/kube-router",
    )],
    tags: "",
    ldflags: |version| format!("-X github.com/cloudnativelabs/kube-router/v2/pkg/version.Version={version}"),
};

fn kubernetes_ldflags(version: &str) -> String {
    let mut parts = version.trim_start_matches('v').split('.');
    let major = parts.next().unwrap_or("1");
    let minor = parts.next().unwrap_or("0");
    format!(
        "-X k8s.io/component-base/version.gitVersion={version} \
         -X k8s.io/component-base/version.gitMajor={major} \
         -X k8s.io/component-base/version.gitMinor={minor}"
    )
}

/// The version a wrapper `go.mod` pins for `module`.
pub fn pinned_version(wrapper_dir: &Path, module: &str) -> Result<String> {
    let go_mod = wrapper_dir.join("go.mod");
    let text = std::fs::read_to_string(&go_mod).with_context(|| format!("reading {}", go_mod.display()))?;
    text.lines()
        .map(str::trim)
        .map(|line| line.strip_prefix("require ").unwrap_or(line))
        .find_map(|line| {
            let mut words = line.split_whitespace();
            (words.next() == Some(module))
                .then(|| words.next().map(str::to_owned))
                .flatten()
        })
        .with_context(|| format!("{} does not require {module}", go_mod.display()))
}

impl GoProgram {
    pub fn wrapper_dir(&self, modules: &Path) -> PathBuf {
        modules.join(self.wrapper)
    }

    pub fn version(&self, modules: &Path) -> Result<String> {
        pinned_version(&self.wrapper_dir(modules), self.module)
    }

    /// The folder holding the built commands; builds them first if any is missing.
    pub fn ensure_built(&self, modules: &Path, cache: &Path) -> Result<PathBuf> {
        let version = self.version(modules)?;
        let bin_dir = cache.join("bin").join(format!("{}-{version}", self.wrapper));
        let missing: Vec<_> = self
            .commands
            .iter()
            .filter(|(name, _)| !bin_dir.join(name).is_file())
            .collect();
        if missing.is_empty() {
            return Ok(bin_dir);
        }
        let names: Vec<_> = missing.iter().map(|(name, _)| *name).collect();
        println!(
            "==> building {} {version} from the Go module proxy: {} (cold: a few minutes on 2 cores; cached in {})",
            self.module,
            names.join(", "),
            bin_dir.display()
        );
        let staging = cache.join("bin").join(format!(
            ".building-{}-{version}-{}",
            self.wrapper,
            std::process::id()
        ));
        std::fs::create_dir_all(&staging)?;
        let mut command = Command::new("go");
        command
            .current_dir(self.wrapper_dir(modules))
            .env("CGO_ENABLED", "0")
            .args(["build", "-trimpath"])
            .args(["-tags", self.tags])
            .arg(format!("-ldflags=-s -w {}", (self.ldflags)(&version)))
            .arg("-o")
            .arg(format!("{}/", staging.display()))
            .args(missing.iter().map(|(_, package)| *package));
        let started = Instant::now();
        // Go's own words go into the error, so a report can quote exactly what failed.
        let log_path = staging.join("go-build.log");
        command.stderr(std::fs::File::create(&log_path)?);
        let status = run_with_heartbeat(&mut command, "go build")?;
        if !status.success() {
            let said = std::fs::read_to_string(&log_path).unwrap_or_default();
            let _ = std::fs::remove_dir_all(&staging);
            bail!(
                "`go build` of {} {version} in {} failed ({status}):\n{}",
                self.module,
                self.wrapper_dir(modules).display(),
                said.trim()
            );
        }
        std::fs::create_dir_all(&bin_dir)?;
        for (name, package) in &missing {
            std::fs::rename(staging.join(go_output_name(package)), bin_dir.join(name))
                .with_context(|| format!("moving {name} into {}", bin_dir.display()))?;
        }
        let _ = std::fs::remove_dir_all(&staging);
        println!("==> built {} in {:.0?}", names.join(", "), started.elapsed());
        Ok(bin_dir)
    }

    /// The folder of the downloaded module source (downloads it when needed).
    pub fn module_dir(&self, modules: &Path) -> Result<PathBuf> {
        let version = self.version(modules)?;
        module_source_dir(&self.wrapper_dir(modules), self.module, &version)
    }
}

/// The file name `go build -o dir/` gives a main package: its last path element, or the one before a
/// major-version suffix (`go.etcd.io/etcd/server/v3` → `server`).
fn go_output_name(package: &str) -> &str {
    let mut elements = package.rsplit('/');
    let last = elements.next().unwrap_or(package);
    let is_major_suffix =
        last.len() > 1 && last.starts_with('v') && last[1..].bytes().all(|b| b.is_ascii_digit());
    match elements.next() {
        Some(previous) if is_major_suffix => previous,
        _ => last,
    }
}

/// `go mod download -json module@version` run in `wrapper_dir`, returning the module's source folder.
pub fn module_source_dir(wrapper_dir: &Path, module: &str, version: &str) -> Result<PathBuf> {
    let output = Command::new("go")
        .current_dir(wrapper_dir)
        .args(["mod", "download", "-json", &format!("{module}@{version}")])
        .output()
        .context("running `go mod download` (is Go installed?)")?;
    if !output.status.success() {
        bail!(
            "go mod download {module}@{version} failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let info: serde_json::Value =
        serde_json::from_slice(&output.stdout).context("parsing go mod download -json")?;
    let dir = info["Dir"]
        .as_str()
        .with_context(|| format!("go mod download gave no Dir for {module}"))?;
    Ok(PathBuf::from(dir))
}

/// Runs a long command, printing a line every minute so a cold build does not look hung.
fn run_with_heartbeat(command: &mut Command, what: &str) -> Result<std::process::ExitStatus> {
    let mut child = command
        .spawn()
        .with_context(|| format!("starting {what} (is Go installed?)"))?;
    let started = Instant::now();
    let mut last_report = Instant::now();
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if last_report.elapsed() >= Duration::from_secs(60) {
            println!("    ... {what} still running ({:.0?})", started.elapsed());
            last_report = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_module_versions_name_their_release() {
        assert_eq!(prometheus_release("v0.305.0"), "3.5.0");
        assert_eq!(prometheus_release("v0.316.1"), "3.16.1");
        assert_eq!(prometheus_release("v2.53.0"), "v2.53.0");
    }

    #[test]
    fn pinned_version_reads_single_and_block_requires() {
        let dir = std::env::temp_dir().join(format!("xtask-gomod-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("go.mod"),
            "module x\n\ngo 1.26.0\n\nrequire k8s.io/kubernetes v1.36.3\n\nrequire (\n\tsigs.k8s.io/kwok v0.8.0 // indirect\n)\n",
        )
        .unwrap();
        assert_eq!(pinned_version(&dir, "k8s.io/kubernetes").unwrap(), "v1.36.3");
        assert_eq!(pinned_version(&dir, "sigs.k8s.io/kwok").unwrap(), "v0.8.0");
        assert!(pinned_version(&dir, "k8s.io/api").is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn go_output_name_skips_major_version_suffixes() {
        assert_eq!(
            go_output_name("k8s.io/kubernetes/cmd/kube-apiserver"),
            "kube-apiserver"
        );
        assert_eq!(go_output_name("go.etcd.io/etcd/server/v3"), "server");
        assert_eq!(go_output_name("example.com/tool/v"), "v");
    }

    #[test]
    fn kubernetes_ldflags_carry_major_and_minor() {
        let flags = kubernetes_ldflags("v1.36.3");
        assert!(flags.contains("gitVersion=v1.36.3"));
        assert!(flags.contains("gitMajor=1 "));
        assert!(flags.contains("gitMinor=36"));
    }
}
