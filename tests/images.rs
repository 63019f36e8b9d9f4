//! The Dockerfile and the manifests agree: every daemon's image is built static on distroless "static"
//! as the numeric nonroot user the manifests run it as, the entrypoint is the daemon, and the manifests
//! pin the workspace's version of it.

// Test code: a failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used)]

use serde_json::Value;
use testbed::manifests::{self, repo_root};

const DAEMONS: [&str; 4] = [
    "service-per-pod",
    "jvb-startup",
    "jvb-exporter",
    "prosody-exporter",
];
const REGISTRY: &str = "ghcr.io/jitsi-k8s";

/// Every container and init container of the rendered production overlay.
fn containers(objects: &[Value]) -> Vec<Value> {
    objects
        .iter()
        .filter(|o| matches!(manifests::kind(o), "Deployment" | "StatefulSet"))
        .flat_map(|w| {
            let spec = &w["spec"]["template"]["spec"];
            ["initContainers", "containers"]
                .iter()
                .flat_map(|field| spec[field].as_array().cloned().unwrap_or_default())
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn each_daemon_image_is_static_distroless_nonroot_and_pinned_at_the_workspace_version() {
    let objects = manifests::render_overlay("render-only", "manifests/overlays/production", &[]);
    let containers = containers(&objects);
    let dockerfile = std::fs::read_to_string(repo_root().join("Dockerfile")).unwrap();
    for needle in [
        "FROM gcr.io/distroless/static-debian12:nonroot",
        "USER 65532:65532",
        "ENTRYPOINT [\"/usr/local/bin/entrypoint\"]",
        "ln -s \"${DAEMON}\" /out/usr/local/bin/entrypoint",
        "-p \"${DAEMON}\" --bin \"${DAEMON}\"",
        "unknown-linux-musl",
    ] {
        assert!(dockerfile.contains(needle), "the Dockerfile lacks {needle}");
    }
    for daemon in DAEMONS {
        // The build refuses any other name.
        assert!(
            dockerfile.contains(&format!("{daemon}|")) || dockerfile.contains(&format!("|{daemon})")),
            "{daemon} is not among the Dockerfile's daemons"
        );
        let image = format!("{REGISTRY}/{daemon}:{}", env!("CARGO_PKG_VERSION"));
        let users: Vec<&Value> = containers
            .iter()
            .filter(|c| c["image"] == image.as_str())
            .collect();
        assert!(!users.is_empty(), "no container runs {image}");
        for container in users {
            // Commands name the binary only where the image's entrypoint is not used.
            assert!(
                container["command"].is_null(),
                "{}: {}",
                container["name"],
                container["command"]
            );
            assert_eq!(
                container["securityContext"]["readOnlyRootFilesystem"], true,
                "{}",
                container["name"]
            );
        }
    }
    // No other image of ours, and no other tag.
    for container in &containers {
        let image = container["image"].as_str().unwrap();
        if let Some(rest) = image.strip_prefix(&format!("{REGISTRY}/")) {
            let (name, tag) = rest.split_once(':').unwrap();
            assert!(DAEMONS.contains(&name), "{image} has no Dockerfile");
            assert_eq!(tag, env!("CARGO_PKG_VERSION"), "{image}");
        }
    }
}

#[test]
fn the_image_build_context_keeps_what_the_build_needs() {
    let ignore = std::fs::read_to_string(repo_root().join(".dockerignore")).unwrap();
    let ignored: Vec<&str> = ignore
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| l.trim().trim_end_matches('/'))
        .collect();
    // Every workspace member must be in the context, or cargo cannot load the workspace.
    let workspace = std::fs::read_to_string(repo_root().join("Cargo.toml")).unwrap();
    let members = workspace
        .split("members")
        .nth(1)
        .unwrap()
        .split(']')
        .next()
        .unwrap();
    for member in members.split('"').skip(1).step_by(2) {
        assert!(
            !ignored.contains(&member),
            ".dockerignore drops the workspace member {member}"
        );
    }
    assert!(ignored.contains(&"target"));
}
