//! The manifests against the Jitsi images' own source, at the tag each shard pins: every Jitsi container
//! of every overlay (and of each component that touches one) is started as the kubelet would start it —
//! jvb-startup, s6-overlay's preinit, the image's configuration script rendering its templates with its
//! own `tpl` — and everything that reaches it is checked against what it then listens on
//! (testbed/src/jitsi_images). Negative controls break one thing each on a copy and expect the one
//! finding that names it.
//!
//! Upstream sources: `JITSI_IMAGES_SRC` (and `JICOFO_SRC`, `JVB_SRC`, `JITSI_TPL_SRC`, `S6_OVERLAY_SRC`),
//! else the cache `~/.cache/jitsi-k8s/upstream/`, else `git clone`. A shard whose tag has no source fails.

// Test code: a failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde_json::Value;
use testbed::jitsi_images::{self, ShardReport, Sources};
use testbed::manifests::{self, edit, render_dir, render_overlay};
use testbed::repo_root;

/// Sources found once per tag for the whole test binary (resolving builds `tpl`).
fn sources(tag: &str) -> Result<Sources, String> {
    static FOUND: Mutex<BTreeMap<String, Result<Sources, String>>> = Mutex::new(BTreeMap::new());
    FOUND
        .lock()
        .unwrap()
        .entry(tag.to_owned())
        .or_insert_with(|| Sources::resolve(tag))
        .clone()
}

fn contract(objects: &[Value], purpose: &str) -> Vec<ShardReport> {
    let work = repo_root().join("target/image-contract").join(purpose);
    jitsi_images::check(objects, &work, &mut sources)
}

fn findings(reports: &[ShardReport]) -> Vec<String> {
    reports
        .iter()
        .flat_map(|r| r.findings.iter().map(ToString::to_string))
        .collect()
}

fn assert_kept(reports: &[ShardReport], what: &str) {
    assert!(!reports.is_empty(), "{what}: no shard found");
    let found = findings(reports);
    assert!(
        found.is_empty(),
        "{what} breaks the images' contract:\n  {}\n(sources: {})",
        found.join("\n  "),
        reports[0].origins.join("; ")
    );
}

#[test]
fn the_dev_overlay_keeps_the_images_contract() {
    let objects = render_overlay("jitsi-dev", "manifests/overlays/dev", &[]);
    let reports = contract(&objects, "dev");
    assert_eq!(reports.len(), 1);
    assert_kept(&reports, "overlays/dev");
}

#[test]
fn the_production_overlay_keeps_the_images_contract() {
    let objects = render_overlay("jitsi", "manifests/overlays/production", &[]);
    let reports = contract(&objects, "production");
    assert_eq!(reports.len(), 2);
    assert_kept(&reports, "overlays/production");
}

/// Adds `component` to the `components` of a shard folder of a copy.
fn with_shard_component(folder: &Path, component: &str) {
    edit(
        &folder.join("kustomization.yaml"),
        "  - ../../../base/shard\n",
        &format!("  - ../../../base/shard\ncomponents:\n  - ../../../components/{component}\n"),
    );
}

#[test]
fn the_components_that_touch_jitsi_containers_keep_the_contract() {
    let copy = manifests::copy_of_manifests("contract-components");
    let production = copy.join("manifests/overlays/production");
    with_shard_component(&production.join("shard-0"), "jvb-advertise-from-node");
    with_shard_component(&production.join("shard-1"), "jvb-load-balancer");
    edit(
        &production.join("kustomization.yaml"),
        "  - ../../components/kube-prometheus\n",
        "  - ../../components/kube-prometheus-stack\n",
    );
    let objects = render_dir(&production);
    let reports = contract(&objects, "components");
    std::fs::remove_dir_all(&copy).unwrap();
    assert_eq!(reports.len(), 2);
    assert_kept(
        &reports,
        "production with jvb-advertise-from-node, jvb-load-balancer and kube-prometheus-stack",
    );
}

/// The fixed overlay rendered from a copy after `break_it`, and the contract's findings.
fn broken(purpose: &str, break_it: impl FnOnce(&Path)) -> Vec<String> {
    let copy = manifests::copy_of_manifests(purpose);
    let manifests_dir: PathBuf = copy.join("manifests");
    break_it(&manifests_dir);
    let objects = render_dir(&manifests_dir.join("overlays/dev"));
    let found = findings(&contract(&objects, purpose));
    std::fs::remove_dir_all(&copy).unwrap();
    found
}

fn assert_named(found: &[String], needles: &[&str]) {
    assert!(
        found.iter().any(|f| needles.iter().all(|n| f.contains(n))),
        "no finding says {needles:?}; the contract found:\n  {}",
        found.join("\n  ")
    );
}

#[test]
fn a_flipped_port_is_named() {
    let found = broken("contract-flipped-port", |m| {
        edit(
            &m.join("base/shard/web.yaml"),
            "containerPort: 8000",
            "containerPort: 8001",
        );
    });
    assert_named(
        &found,
        &[
            "container web",
            "containerPort http 8001/TCP: nothing listens there",
        ],
    );
    assert_named(
        &found,
        &["readinessProbe on port 8001/TCP: nothing listens there"],
    );
    assert_named(
        &found,
        &["Service shard-0-web targets 8001/TCP: nothing listens there"],
    );
    let found = broken("contract-flipped-haproxy-port", |m| {
        edit(
            &m.join("base/haproxy/statefulset.yaml"),
            "value: \"8000\"",
            "value: \"80\"",
        );
    });
    assert_named(
        &found,
        &[
            "container web",
            "HAPROXY_SHARD_PORT 80/TCP: nothing listens there",
        ],
    );
}

#[test]
fn without_the_kubernetes_run_switch_s6_overlay_refuses_to_start() {
    let found = broken("contract-run-rule", |m| {
        for file in ["web.yaml", "jicofo.yaml", "prosody.yaml", "jvb.yaml"] {
            edit(
                &m.join("base/shard").join(file),
                "- name: S6_YES_I_WANT_A_WORLD_WRITABLE_RUN_BECAUSE_KUBERNETES\n",
                "- name: S6_WORLD_WRITABLE_RUN_SWITCH_REMOVED\n",
            );
        }
    });
    for container in ["web", "jicofo", "prosody", "jvb"] {
        assert_named(
            &found,
            &[
                &format!("container {container}:"),
                "s6-overlay preinit exits 100",
                "/run belongs to uid 0",
            ],
        );
    }
}

#[test]
fn jicofo_without_its_rest_api_on_the_pod_network_is_never_probed() {
    let found = broken("contract-jicofo-rest", |m| {
        edit(
            &m.join("base/shard/jicofo.yaml"),
            "- name: JICOFO_ENABLE_REST\n              value: \"1\"",
            "- name: JICOFO_ENABLE_REST\n              value: \"0\"",
        );
    });
    assert_named(
        &found,
        &[
            "container jicofo",
            "startupProbe on port 8888/TCP",
            "loopback only",
        ],
    );
    assert_named(&found, &["PodMonitor", "8888/TCP", "loopback only"]);
}

#[test]
fn a_value_in_a_form_the_image_misreads_is_named() {
    let found = broken("contract-value-form", |m| {
        edit(
            &m.join("base/shard/web.yaml"),
            "- name: DISABLE_HTTPS\n              value: \"1\"",
            "- name: DISABLE_HTTPS\n              value: \"true\"",
        );
    });
    assert_named(&found, &["DISABLE_HTTPS=\"true\"", "compare it as a number"]);
}

#[test]
fn a_heap_too_large_for_its_limit_is_named() {
    let found = broken("contract-heap", |m| {
        edit(
            &m.join("overlays/dev/kustomization.yaml"),
            "VIDEOBRIDGE_MAX_MEMORY, value: 768m",
            "VIDEOBRIDGE_MAX_MEMORY, value: 1000m",
        );
    });
    assert_named(&found, &["container jvb", "JVM heap is 1000 MiB"]);
}

#[test]
fn a_variable_no_image_reads_is_named() {
    let found = broken("contract-unread", |m| {
        edit(
            &m.join("base/shard/web.yaml"),
            "- name: DISABLE_HTTPS\n",
            "- name: JITSI_UNREAD_SETTING\n              value: \"x\"\n            - name: DISABLE_HTTPS\n",
        );
    });
    assert_named(
        &found,
        &["JITSI_UNREAD_SETTING (set in env) is read by neither the web image"],
    );
}

#[test]
fn a_shard_whose_release_has_no_source_fails() {
    let found = broken("contract-unknown-tag", |m| {
        edit(
            &m.join("overlays/dev/shard-0/kustomization.yaml"),
            "  - name: ghcr.io/jitsi/web\n    newTag: stable-11146-2",
            "  - name: ghcr.io/jitsi/web\n    newTag: stable-1-nowhere",
        );
    });
    assert_named(&found, &["several tags (stable-1-nowhere, stable-11146-2)"]);
    // Every tag of the shard is checked in turn; the first one without a source is named.
    let found = broken("contract-unknown-release", |m| {
        let file = m.join("overlays/dev/shard-0/kustomization.yaml");
        let text = std::fs::read_to_string(&file).unwrap();
        std::fs::write(
            &file,
            text.replace("newTag: stable-11146-2", "newTag: stable-1-nowhere"),
        )
        .unwrap();
    });
    assert_named(
        &found,
        &[
            "upstream sources of stable-1-nowhere",
            "no source of docker-jitsi-meet at stable-1-nowhere",
        ],
    );
}

/// `cargo xtask jitsi-images --tag <next>` against a release whose web image moved its port and reads a
/// new variable: a copy of the pinned release's source, changed, given as JITSI_IMAGES_SRC.
#[test]
fn the_upgrade_command_names_what_changed_and_what_it_breaks() {
    let pinned = sources("stable-11146-2").unwrap();
    let next = repo_root().join(format!(
        "target/image-contract/next-release-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&next);
    std::fs::create_dir_all(&next).unwrap();
    let copied = std::process::Command::new("cp")
        .arg("-r")
        .arg(format!("{}/.", pinned.images.path.display()))
        .arg(&next)
        .status()
        .unwrap();
    assert!(copied.success());
    let default = next.join("web/rootfs/defaults/default");
    edit(
        &default,
        "listen 8000 default_server;",
        "listen 8001 default_server;",
    );
    edit(
        &default,
        "listen [::]:8000 default_server;",
        "listen [::]:8001 default_server;",
    );
    edit(
        &next.join("web/rootfs/defaults/meet.conf"),
        "server_name _;",
        "server_name {{ .Env.WEB_SERVER_NAME | default \"_\" }};",
    );
    let output = std::process::Command::new(testbed::daemon::binary("jitsi-images"))
        .args(["--tag", "stable-11146-3", "--overlay", "manifests/overlays/dev"])
        .env("JITSI_IMAGES_SRC", &next)
        .current_dir(repo_root())
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&output.stdout);
    std::fs::remove_dir_all(&next).unwrap();
    assert!(
        !output.status.success(),
        "the upgrade breaks the contract:\n{report}"
    );
    for needle in [
        "shard-0 at stable-11146-3",
        "what the images do differently from stable-11146-2",
        "listen 8001 default_server",
        "now also [\"WEB_SERVER_NAME\"]",
        "docker-jitsi-meet files changed: 2",
        "web/rootfs/defaults/default",
        "containerPort http 8000/TCP: nothing listens there",
        "HAPROXY_SHARD_PORT 8000/TCP: nothing listens there",
    ] {
        assert!(report.contains(needle), "the report lacks {needle:?}:\n{report}");
    }
}
