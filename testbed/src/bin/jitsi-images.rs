//! `cargo xtask jitsi-images --tag <stable-…>`: the image contract of our overlays against another
//! docker-jitsi-meet release, and what changed in the images since the release the shards pin — so that
//! a Jitsi upgrade is one command and one review.

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Command, ExitCode};

use clap::Parser;
use serde_json::Value;
use testbed::jitsi_images::{self, ShardReport, Sources};
use testbed::manifests;
use testbed::repo_root;

#[derive(Debug, Parser)]
#[command(
    name = "jitsi-images",
    about = "Checks the manifests against the Jitsi images of a release"
)]
struct Args {
    /// The docker-jitsi-meet release to check, e.g. stable-11146-2.
    #[arg(long, env = "JITSI_TAG")]
    tag: String,
    /// Overlays to render (paths relative to the repository).
    #[arg(long, default_values_t = ["manifests/overlays/dev".to_owned(), "manifests/overlays/production".to_owned()])]
    overlay: Vec<String>,
}

/// The overlay with every Jitsi image retagged to `tag` (a kustomization on top of it).
fn render_at(overlay: &str, tag: &str) -> Vec<Value> {
    let dir = repo_root()
        .join("target/jitsi-images-render")
        .join(overlay.replace('/', "_"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("creating a render folder");
    let images: Vec<Value> = ["web", "jicofo", "prosody", "jvb"]
        .iter()
        .map(|name| serde_json::json!({"name": format!("ghcr.io/jitsi/{name}"), "newTag": tag}))
        .collect();
    let kustomization = serde_json::json!({
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        // Relative: kustomize refuses a base outside the kustomization's root given absolutely.
        "resources": [format!("../../../{overlay}")],
        "images": images,
    });
    std::fs::write(dir.join("kustomization.yaml"), kustomization.to_string()).expect("writing");
    manifests::render_dir_offline(&dir)
}

fn pinned_tags(objects: &[Value]) -> BTreeSet<String> {
    objects
        .iter()
        .filter(|o| matches!(o["kind"].as_str(), Some("Deployment" | "StatefulSet")))
        .flat_map(|w| {
            ["initContainers", "containers"]
                .iter()
                .flat_map(|f| {
                    w["spec"]["template"]["spec"][f]
                        .as_array()
                        .cloned()
                        .unwrap_or_default()
                })
                .collect::<Vec<_>>()
        })
        .filter_map(|c| Some(jitsi_images::jitsi_image(c["image"].as_str()?)?.1.to_owned()))
        .collect()
}

fn print_fact_changes(old: &BTreeMap<String, String>, new: &BTreeMap<String, String>) -> usize {
    let mut changes = 0;
    for key in old.keys().chain(new.keys()).collect::<BTreeSet<_>>() {
        match (old.get(key), new.get(key)) {
            (Some(a), Some(b)) if a == b => {}
            (Some(a), Some(b)) if key.ends_with(": reads") => {
                let a: BTreeSet<&str> = a.split_whitespace().collect();
                let b: BTreeSet<&str> = b.split_whitespace().collect();
                let added: Vec<&str> = b.difference(&a).copied().collect();
                let removed: Vec<&str> = a.difference(&b).copied().collect();
                println!("  {key}: now also {added:?}; no longer {removed:?}");
                changes += 1;
            }
            (Some(a), Some(b)) => {
                println!("  {key}:\n    was {a}\n    now {b}");
                changes += 1;
            }
            (None, Some(b)) => {
                println!("  {key} (new): {b}");
                changes += 1;
            }
            (Some(a), None) => {
                println!("  {key} (gone): was {a}");
                changes += 1;
            }
            (None, None) => {}
        }
    }
    changes
}

fn main() -> ExitCode {
    let args = Args::parse();
    // The release asked for may come from JITSI_IMAGES_SRC (…); the one the shards pin comes from the
    // cache or a clone, so the two can be told apart.
    let wanted = args.tag.clone();
    let mut sources_for = |tag: &str| Sources::resolve_from(tag, tag == wanted);
    let mut broken = 0;
    for overlay in &args.overlay {
        let current = manifests::render_dir_offline(&repo_root().join(overlay));
        let pinned = pinned_tags(&current);
        println!(
            "==> {overlay}: shards pin {}",
            pinned.iter().cloned().collect::<Vec<_>>().join(", ")
        );
        let work = repo_root().join("target/jitsi-images");
        let now: Vec<ShardReport> = jitsi_images::check(&current, &work.join("pinned"), &mut sources_for);
        let next = render_at(overlay, &args.tag);
        let then: Vec<ShardReport> = jitsi_images::check(&next, &work.join(&args.tag), &mut sources_for);
        for report in &then {
            println!("\n--- {} at {}", report.shard, report.tag);
            for origin in &report.origins {
                println!("  source: {origin}");
            }
            if let Some(before) = now
                .iter()
                .find(|r| r.shard == report.shard && !report.origins.is_empty())
            {
                println!("  what the images do differently from {}:", before.tag);
                if print_fact_changes(&before.facts, &report.facts) == 0 {
                    println!("  nothing the contract looks at");
                }
                // The upstream files that changed, for the review.
                if let (Ok(a), Ok(b)) = (
                    Sources::resolve_from(&before.tag, before.tag == args.tag),
                    Sources::resolve_from(&report.tag, true),
                ) && a.images.path != b.images.path
                {
                    let diff = Command::new("diff")
                        .args(["-rq", "--exclude=.git", "--exclude=.jitsi-k8s-source"])
                        .arg(&a.images.path)
                        .arg(&b.images.path)
                        .output();
                    if let Ok(diff) = diff {
                        let text = String::from_utf8_lossy(&diff.stdout);
                        println!("  docker-jitsi-meet files changed: {}", text.lines().count());
                        for line in text.lines() {
                            println!("    {line}");
                        }
                    }
                }
            }
            if report.findings.is_empty() {
                println!("  the manifests keep the contract at {}", report.tag);
            } else {
                println!("  the manifests break the contract at {}:", report.tag);
                for finding in &report.findings {
                    println!("    {finding}");
                }
                broken += report.findings.len();
            }
        }
    }
    if broken > 0 {
        println!(
            "\n==> {broken} findings: fix the manifests (or the shard's components) before moving a shard to {}",
            args.tag
        );
        ExitCode::FAILURE
    } else {
        println!(
            "\n==> {} keeps the contract. Upgrade one shard at a time: add a shard whose folder pins it (docs/deploying.md, \"Upgrading Jitsi\").",
            args.tag
        );
        ExitCode::SUCCESS
    }
}
