//! The project's own manifests, rendered with kustomize as users render them, for tests that must use
//! exactly what ships (RBAC above all).

use std::path::Path;
use std::process::Command;

use local_cluster::process::output_with_stdin;
use serde_json::Value;

pub use crate::repo_root;

/// Renders a kustomization made on the fly — `namespace`, plus `resources` and `components` given
/// relative to the repository root — and returns its objects as JSON.
pub fn render(namespace: &str, resources: &[&str], components: &[&str]) -> Vec<Value> {
    // One folder per call: tests render in parallel, often for the same namespace.
    static RENDERINGS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let call = RENDERINGS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = repo_root()
        .join("target/kustomize-tests")
        .join(format!("{namespace}-{}-{call}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("creating a kustomization folder");
    let relative = |path: &&str| format!("../../../{path}");
    let mut kustomization = serde_json::json!({
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "namespace": namespace,
        "resources": resources.iter().map(relative).collect::<Vec<_>>(),
        "components": components.iter().map(relative).collect::<Vec<_>>(),
    });
    // JSON is YAML, so kustomize reads it as it is.
    std::fs::write(dir.join("kustomization.yaml"), kustomization.to_string()).expect("writing kustomization");
    let mut objects = render_dir(&dir);
    // An overlay on top of an overlay, with its own namespace, copies the overlays' `replacements:`
    // block (docs/deploying.md, "Autoscaling"): so does this one when it carries ScaledObjects.
    if let Some(scaler) = objects.iter().find(|o| kind(o) == "ScaledObject") {
        let name = scaler["metadata"]["name"].as_str().unwrap_or_default().to_owned();
        kustomization["replacements"] = scaled_object_namespace_replacements(&name);
        std::fs::write(dir.join("kustomization.yaml"), kustomization.to_string())
            .expect("writing kustomization");
        objects = render_dir(&dir);
    }
    let _ = std::fs::remove_dir_all(&dir);
    objects
}

/// The overlays' replacements that put their namespace into the ScaledObjects' queries
/// (`manifests/overlays/*/kustomization.yaml`), taken here from the ScaledObject `source` (a rendering
/// may hold no Namespace).
fn scaled_object_namespace_replacements(source: &str) -> Value {
    let target = |index: u32| {
        serde_json::json!({
            "select": { "kind": "ScaledObject" },
            "fieldPaths": ["spec.triggers.0.metadata.query"],
            "options": { "delimiter": "\"", "index": index },
        })
    };
    serde_json::json!([{
        "source": { "kind": "ScaledObject", "name": source, "fieldPath": "metadata.namespace" },
        "targets": [target(1), target(5)],
    }])
}

/// Renders the kustomization in `dir` and returns its objects as JSON.
pub fn render_dir(dir: &Path) -> Vec<Value> {
    let yaml = run("kubectl", &["kustomize", &dir.to_string_lossy()], None);
    let list = run(
        "kubectl",
        &["create", "--dry-run=client", "--output=json", "--filename=-"],
        Some(&yaml),
    );
    json_documents(&list)
}

/// As [`render_dir`], with no cluster at all (for developer commands): kubectl prints each object as JSON
/// with `annotate --local`, removing an annotation no object has.
pub fn render_dir_offline(dir: &Path) -> Vec<Value> {
    let yaml = run_local("kubectl", &["kustomize", &dir.to_string_lossy()], None);
    let list = run_local(
        "kubectl",
        &[
            "annotate",
            "--local",
            "--output=json",
            "--filename=-",
            "jitsi-k8s.render-",
        ],
        Some(&yaml),
    );
    json_documents(&list)
}

/// One JSON document per object, one after the other (a List only when the input was one).
fn json_documents(text: &str) -> Vec<Value> {
    let mut objects = Vec::new();
    for document in serde_json::Deserializer::from_str(text).into_iter::<Value>() {
        let document = document.expect("kubectl printed JSON");
        match document.get("items") {
            Some(Value::Array(items)) => objects.extend(items.iter().cloned()),
            _ => objects.push(document),
        }
    }
    objects
}

/// Renders an overlay (a path relative to the repository root) as users do, with its namespace replaced
/// by `namespace` so tests do not collide.
pub fn render_overlay(namespace: &str, overlay: &str, components: &[&str]) -> Vec<Value> {
    render(namespace, &[overlay], components)
}

/// The objects of `kind` in a rendering.
pub fn of_kind<'a>(objects: &'a [Value], wanted: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
    objects.iter().filter(move |o| kind(o) == wanted)
}

/// The object of `kind` named `name`; panics when it is missing.
pub fn named<'a>(objects: &'a [Value], wanted: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| kind(o) == wanted && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("the rendering has no {wanted} {name}"))
}

/// Runs kubectl with `stdin` and returns whether it succeeded, its stdout and its stderr (where kubectl
/// prints the API server's warnings).
pub fn kubectl(args: &[&str], stdin: &str) -> (bool, String, String) {
    crate::use_cluster();
    let output =
        output_with_stdin(Command::new("kubectl").args(args), stdin.as_bytes()).expect("starting kubectl");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Applies objects (server-side, as the admin) and returns nothing; panics with kubectl's words on failure.
pub fn apply(objects: &[Value]) {
    let list = serde_json::json!({ "apiVersion": "v1", "kind": "List", "items": objects });
    run(
        "kubectl",
        &[
            "apply",
            "--server-side",
            "--field-manager=integration-tests",
            "--filename=-",
        ],
        Some(&list.to_string()),
    );
}

pub fn kind(object: &Value) -> &str {
    object["kind"].as_str().unwrap_or_default()
}

/// Runs `program` with `stdin` and returns its stdout; panics with its stderr when it fails.
fn run(program: &str, args: &[&str], stdin: Option<&str>) -> String {
    if program == "kubectl" {
        crate::use_cluster();
    }
    run_local(program, args, stdin)
}

/// As [`run`], for programs that reach no cluster.
fn run_local(program: &str, args: &[&str], stdin: Option<&str>) -> String {
    let output = output_with_stdin(
        Command::new(program).args(args),
        stdin.unwrap_or_default().as_bytes(),
    )
    .unwrap_or_else(|e| panic!("starting {program}: {e}"));
    assert!(
        output.status.success(),
        "{program} {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("UTF-8 output")
}

/// The command line and environment of `container` in a rendered Deployment, as the kubelet would
/// give them to a pod named `pod_name` in `namespace` (downward-API references resolved).
pub fn container_command(
    deployment: &Value,
    container: &str,
    pod_name: &str,
    namespace: &str,
) -> (Vec<String>, Vec<(String, String)>) {
    let containers = deployment["spec"]["template"]["spec"]["containers"]
        .as_array()
        .expect("containers");
    let container = containers
        .iter()
        .find(|c| c["name"] == container)
        .expect("the container is in the Deployment");
    let args = container["args"].as_array().map_or_else(Vec::new, |args| {
        args.iter()
            .map(|arg| arg.as_str().expect("string arg").to_owned())
            .collect()
    });
    let env = container["env"].as_array().map_or_else(Vec::new, |env| {
        env.iter()
            .map(|var| {
                let name = var["name"].as_str().expect("env name").to_owned();
                let value = match var["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
                    Some("metadata.name") => pod_name.to_owned(),
                    Some("metadata.namespace") => namespace.to_owned(),
                    Some(other) => panic!("no value for fieldRef {other} in tests"),
                    None => var["value"].as_str().unwrap_or_default().to_owned(),
                };
                (name, value)
            })
            .collect()
    });
    (args, env)
}

/// A scratch copy of `manifests/` under `target/` (as `<copy>/manifests`), for following the docs' edits
/// literally or breaking one thing on purpose.
pub fn copy_of_manifests(purpose: &str) -> std::path::PathBuf {
    static COPIES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let call = COPIES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let copy = repo_root().join(format!("target/{purpose}-{}-{call}", std::process::id()));
    let _ = std::fs::remove_dir_all(&copy);
    std::fs::create_dir_all(&copy).expect("creating a scratch folder");
    let status = Command::new("cp")
        .args(["-r", "manifests"])
        .arg(&copy)
        .current_dir(repo_root())
        .status();
    assert!(status.is_ok_and(|s| s.success()), "copying manifests/");
    copy
}

/// Replaces `from` by `to` in a file of a copy, and fails when `from` is not there (a test that edits
/// nothing proves nothing).
pub fn edit(file: &Path, from: &str, to: &str) {
    let text = std::fs::read_to_string(file).unwrap_or_else(|e| panic!("reading {}: {e}", file.display()));
    assert!(text.contains(from), "{} has no {from:?}", file.display());
    std::fs::write(file, text.replacen(from, to, 1)).expect("writing the copy");
}

/// The production overlay applied from a copy of `manifests/` into `namespace`, as docs/deploying.md
/// says; returns the copy's overlay folder.
pub fn render_copy(copy: &Path, namespace: &str) -> Vec<Value> {
    render_dir(&copy.join("manifests/overlays/production"))
        .into_iter()
        .map(|mut object| {
            if kind(&object) == "Namespace" {
                object["metadata"]["name"] = serde_json::json!(namespace);
            }
            object
        })
        .collect()
}

/// The copy rendered again and applied as docs/deploying.md says (the Namespace exists already).
pub fn reapply(copy: &Path, namespace: &str) {
    let objects: Vec<Value> = render_copy(copy, namespace)
        .into_iter()
        .filter(|o| kind(o) != "Namespace")
        .collect();
    apply_list(&objects);
}

pub fn apply_list(objects: &[Value]) {
    let list = serde_json::json!({ "apiVersion": "v1", "kind": "List", "items": objects }).to_string();
    let (ok, _, stderr) = kubectl(&["apply", "--server-side", "--filename=-"], &list);
    assert!(ok, "kubectl apply --server-side:\n{stderr}");
}

/// The production overlay of a copy applied into `namespace` as docs/deploying.md says: the Namespace, the
/// Secret `jitsi-secrets` created by hand (with values no Jitsi checks here), everything else. Returns
/// what was rendered.
pub fn deploy_copy(copy: &Path, namespace: &str) -> Vec<Value> {
    let objects = render_copy(copy, namespace);
    let (namespaces, rest): (Vec<Value>, Vec<Value>) =
        objects.iter().cloned().partition(|o| kind(o) == "Namespace");
    apply(&namespaces);
    create_jitsi_secrets(namespace);
    apply_list(&rest);
    objects
}

/// The Secret `jitsi-secrets` an operator creates by hand (docs/deploying.md), with values no Jitsi checks
/// here.
pub fn create_jitsi_secrets(namespace: &str) {
    let (ok, _, stderr) = kubectl(
        &[
            "--namespace",
            namespace,
            "create",
            "secret",
            "generic",
            "jitsi-secrets",
            "--from-literal=JICOFO_AUTH_PASSWORD=not-a-real-one",
            "--from-literal=JVB_AUTH_PASSWORD=not-a-real-one",
        ],
        "",
    );
    assert!(ok, "creating jitsi-secrets: {stderr}");
}
