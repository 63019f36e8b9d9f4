//! The contract between our manifests and the Jitsi images they run, checked against the images' own
//! source at the tag each shard pins: for every Jitsi container of a rendering, the container is built
//! as the kubelet would build it ([`pod`]), jvb-startup runs as it runs in front of the bridge, then the
//! image's own s6-overlay `preinit` and configuration scripts run ([`sandbox`]), rendering the image's
//! templates with the image's own `tpl`. What they produce is checked ([`checks`]): what each program
//! listens on against every probe, Service, HAProxy backend, PodMonitor and NetworkPolicy; the `/run`
//! rule; heaps against limits; the form of every value the image tests; that every variable we set is
//! read by someone.
//!
//! Upstream sources are found by [`upstream`] (a checkout, the cache, or a clone) and never copied into
//! the repository; facts no configuration states are in `testdata/jitsi-images/facts.json`, each with its
//! upstream file and revision.

pub mod checks;
pub mod hocon;
pub mod image;
pub mod listeners;
pub mod pod;
pub mod readers;
pub mod sandbox;
pub mod upstream;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

pub use checks::{Finding, ShardReport};
use image::Image;
use upstream::Checkout;

/// Everything upstream that the contract of one Jitsi release reads.
#[derive(Clone, Debug)]
pub struct Sources {
    /// The docker-jitsi-meet tag, e.g. `stable-11146-2`.
    pub tag: String,
    pub images: Checkout,
    pub jicofo: Checkout,
    pub jvb: Checkout,
    pub s6_overlay: Checkout,
    pub s6_overlay_version: String,
    pub tpl_version: String,
    pub tpl: PathBuf,
    pub config_jar: PathBuf,
}

/// The Jicofo and bridge branch a docker-jitsi-meet release is built from: `stable-11146-2` →
/// `stable/jitsi-meet_11146`.
pub fn jitsi_branch(tag: &str) -> Option<String> {
    let build = tag.strip_prefix("stable-")?.split('-').next()?;
    build
        .chars()
        .all(|c| c.is_ascii_digit())
        .then(|| format!("stable/jitsi-meet_{build}"))
}

impl Sources {
    /// Finds (or clones) everything for `tag` and builds its `tpl`.
    pub fn resolve(tag: &str) -> Result<Self, String> {
        Self::resolve_from(tag, true)
    }

    /// As [`Sources::resolve`], once per tag for the whole process (a test binary's tests share it:
    /// resolving builds `tpl`).
    pub fn resolve_once(tag: &str) -> Result<Self, String> {
        static FOUND: std::sync::Mutex<BTreeMap<String, Result<Sources, String>>> =
            std::sync::Mutex::new(BTreeMap::new());
        FOUND
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(tag.to_owned())
            .or_insert_with(|| Self::resolve(tag))
            .clone()
    }

    /// As [`Sources::resolve`]; with `overrides` false, the environment variables naming checkouts
    /// (`JITSI_IMAGES_SRC`, …) are not looked at: for the release the shards pin, when those name the
    /// checkouts of the release an upgrade moves to.
    pub fn resolve_from(tag: &str, overrides: bool) -> Result<Self, String> {
        let checkout =
            |repo: &upstream::Repo, reference: &str| upstream::checkout_from(repo, reference, overrides);
        let images = checkout(&upstream::DOCKER_JITSI_MEET, tag)?;
        let base = Image::read(&images.path, "base")?;
        let s6_overlay_version = base
            .s6_overlay_version()
            .ok_or("base/Dockerfile declares no S6_OVERLAY_VERSION")?
            .to_owned();
        let tpl_version = base
            .tpl_version()
            .ok_or("base/Dockerfile declares no TPL_VERSION")?
            .to_owned();
        let branch = jitsi_branch(tag).ok_or_else(|| {
            format!(
                "cannot tell which Jicofo and bridge branch {tag} is built from: set {} and {}",
                upstream::JICOFO.env,
                upstream::JITSI_VIDEOBRIDGE.env
            )
        })?;
        Ok(Self {
            tag: tag.to_owned(),
            jicofo: checkout(&upstream::JICOFO, &branch)?,
            jvb: checkout(&upstream::JITSI_VIDEOBRIDGE, &branch)?,
            s6_overlay: checkout(&upstream::S6_OVERLAY, &s6_overlay_version)?,
            tpl: upstream::tpl(&tpl_version, overrides)?,
            config_jar: upstream::config_jar()?,
            images,
            s6_overlay_version,
            tpl_version,
        })
    }

    pub fn image(&self, name: &str) -> Result<Image, String> {
        Image::read(&self.images.path, name)
    }

    /// s6-overlay's `preinit`, where its source keeps it.
    pub fn preinit(&self) -> PathBuf {
        self.s6_overlay
            .path
            .join("layout/rootfs-overlay/package/admin/s6-overlay-@VERSION@/libexec/preinit")
    }

    /// The checkout of the Java program an image runs.
    pub fn program_checkout(&self, image: &str) -> Option<&Checkout> {
        match image {
            "jicofo" => Some(&self.jicofo),
            "jvb" => Some(&self.jvb),
            _ => None,
        }
    }

    /// Where each source came from, for reports.
    pub fn origins(&self) -> Vec<String> {
        vec![
            format!("docker-jitsi-meet {}: {}", self.tag, self.images.origin),
            format!("jicofo: {}", self.jicofo.origin),
            format!("jitsi-videobridge: {}", self.jvb.origin),
            format!(
                "s6-overlay {}: {}",
                self.s6_overlay_version, self.s6_overlay.origin
            ),
            format!("tpl {}: {}", self.tpl_version, self.tpl.display()),
        ]
    }
}

/// The facts of `testdata/jitsi-images/facts.json`.
pub fn facts() -> Value {
    serde_json::from_str(&crate::testdata("jitsi-images/facts.json")).expect("facts.json is JSON")
}

/// The Jitsi image name and tag of a container image reference (`ghcr.io/jitsi/jvb:stable-11146-2`).
pub fn jitsi_image(reference: &str) -> Option<(&str, &str)> {
    let rest = reference.strip_prefix("ghcr.io/jitsi/")?;
    let (name, tag) = rest.split_once(':').unwrap_or((rest, ""));
    image::JITSI_IMAGES.contains(&name).then_some((name, tag))
}

/// The shards of a rendering: the `jitsi.org/shard` label of the pod templates → their workloads.
pub fn shards(objects: &[Value]) -> BTreeMap<String, Vec<&Value>> {
    let mut shards: BTreeMap<String, Vec<&Value>> = BTreeMap::new();
    for object in objects {
        if !matches!(object["kind"].as_str(), Some("Deployment" | "StatefulSet")) {
            continue;
        }
        if let Some(shard) = object["spec"]["template"]["metadata"]["labels"]["jitsi.org/shard"].as_str() {
            shards.entry(shard.to_owned()).or_default().push(object);
        }
    }
    shards
}

/// Checks every shard of a rendering against the sources of the tag it pins (`sources_for` finds them,
/// once per tag). `work` is a scratch folder for the sandboxes.
pub fn check(
    objects: &[Value],
    work: &Path,
    sources_for: &mut dyn FnMut(&str) -> Result<Sources, String>,
) -> Vec<ShardReport> {
    let mut cache: BTreeMap<String, Result<Sources, String>> = BTreeMap::new();
    shards(objects)
        .into_iter()
        .map(|(shard, workloads)| {
            let tags: std::collections::BTreeSet<&str> = workloads
                .iter()
                .flat_map(|w| checks::containers_of(w))
                .filter_map(|c| c["image"].as_str().and_then(jitsi_image).map(|(_, tag)| tag))
                .collect();
            let tag = tags.iter().next().copied().unwrap_or_default().to_owned();
            let sources = cache
                .entry(tag.clone())
                .or_insert_with(|| sources_for(&tag))
                .clone();
            checks::check_shard(objects, &shard, &workloads, &tags, sources, &work.join(&shard))
        })
        .collect()
}
