//! The programs the benchmarks compare us with, built from source snapshots when the Go module proxy
//! refuses their module paths. `JITSI_K8S_ANCHORS` names a folder holding them (`systemli-exporter/`,
//! `metacontroller/`), each a `go build`-able module; without it, or when a snapshot is absent, the
//! benchmarks fall back to the Go module proxy and say plainly what they could not build.

use std::path::{Path, PathBuf};

use anyhow::Result;

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
    local_cluster::source::go_build(source, package, binary, cache).map_err(anyhow::Error::msg)
}

/// The row of the anchors' README that describes `folder`, e.g. "| `docker-jitsi-meet/` | … |".
fn readme_row(anchors: &Path, folder: &str) -> Option<String> {
    let readme = std::fs::read_to_string(anchors.join("README.md")).ok()?;
    readme
        .lines()
        .find(|l| l.starts_with(&format!("| `{folder}/`")))
        .map(str::to_owned)
}

/// The first "tag `X`" of a README row.
fn tag_in(row: &str) -> Option<String> {
    let at = row.find("tag `")? + 5;
    Some(row[at..].split('`').next()?.to_owned())
}

/// An `ARG NAME=value` of a Dockerfile.
fn dockerfile_arg(dockerfile: &Path, name: &str) -> Option<String> {
    let text = std::fs::read_to_string(dockerfile).ok()?;
    text.lines()
        .find_map(|l| l.trim().strip_prefix(&format!("ARG {name}=")))
        .map(|v| v.trim().trim_matches('"').to_owned())
}

fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    let status = std::process::Command::new("cp")
        .arg("-r")
        .arg(format!("{}/.", from.display()))
        .arg(to)
        .status()?;
    anyhow::ensure!(status.success(), "copying {} failed", from.display());
    Ok(())
}

/// One cache entry to seed: repository, reference, the snapshot, and files moved to where the upstream
/// repository keeps them (the snapshot's name → its path upstream).
type Seed = (String, String, PathBuf, Vec<(String, String)>);

/// Seeds the cache of upstream sources (`<cache>/upstream/<repository>/<reference>/`, the layout the
/// image contract reads, as a `git clone` would leave it) from the snapshots in `JITSI_K8S_ANCHORS`:
/// docker-jitsi-meet at the tag its README row names, the `tpl` and s6-overlay versions its base
/// Dockerfile pins, and Jicofo's and the bridge's reference configuration and launch scripts. Leaves
/// anything already cached alone. Returns what it seeded.
pub fn seed_upstream(cache: &Path) -> Result<Vec<String>> {
    let Some(anchors) = std::env::var_os(ANCHORS).map(PathBuf::from) else {
        return Ok(Vec::new());
    };
    let Some(tag) = readme_row(&anchors, "docker-jitsi-meet").and_then(|r| tag_in(&r)) else {
        return Ok(Vec::new());
    };
    let images = anchors.join("docker-jitsi-meet");
    let base = images.join("base/Dockerfile");
    let branch = readme_row(&anchors, "jitsi-reference-conf").and_then(|r| tag_in(&r));
    let mut plan: Vec<Seed> = vec![(
        "docker-jitsi-meet".into(),
        tag.clone(),
        images.clone(),
        Vec::new(),
    )];
    if let Some(version) = dockerfile_arg(&base, "TPL_VERSION") {
        plan.push(("tpl".into(), version, anchors.join("jitsi-tpl"), Vec::new()));
    }
    if let Some(version) = dockerfile_arg(&base, "S6_OVERLAY_VERSION") {
        plan.push((
            "s6-overlay".into(),
            version,
            anchors.join("s6-overlay"),
            vec![(
                "libexec-preinit".into(),
                "layout/rootfs-overlay/package/admin/s6-overlay-@VERSION@/libexec/preinit".into(),
            )],
        ));
    }
    if let Some(branch) = branch {
        let conf = anchors.join("jitsi-reference-conf");
        plan.push((
            "jicofo".into(),
            branch.clone(),
            conf.join("jicofo"),
            vec![("resources-jicofo.sh".into(), "resources/jicofo.sh".into())],
        ));
        plan.push((
            "jitsi-videobridge".into(),
            branch,
            conf.join("jitsi-videobridge"),
            vec![("resources-jvb.sh".into(), "jvb/resources/jvb.sh".into())],
        ));
    }
    let mut seeded = Vec::new();
    for (repository, reference, snapshot, moves) in plan {
        let target = cache
            .join("upstream")
            .join(&repository)
            .join(reference.replace('/', "_"));
        if target.is_dir() || !snapshot.is_dir() {
            continue;
        }
        let partial = target.with_extension("seeding");
        let _ = std::fs::remove_dir_all(&partial);
        copy_tree(&snapshot, &partial)?;
        for (from, to) in moves {
            let to = partial.join(to);
            if let Some(parent) = to.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::rename(partial.join(&from), &to)?;
        }
        std::fs::write(
            partial.join(".jitsi-k8s-source"),
            format!(
                "the snapshot {} ({repository} at {reference})\n",
                snapshot.display()
            ),
        )?;
        std::fs::rename(&partial, &target)?;
        seeded.push(format!("{repository} {reference}"));
    }
    Ok(seeded)
}
