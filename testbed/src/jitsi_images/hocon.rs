//! HOCON resolved by Typesafe Config, the library Jicofo and the bridge load their configuration with
//! (through jicoco): the application file with every `reference.conf` as fallback. Run on the machine's
//! Java with `testbed/java/HoconResolve.java`.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use crate::repo_root;

/// One configuration to resolve.
#[derive(Clone, Debug)]
pub struct Job {
    pub name: String,
    /// `false`: leave substitutions that cannot be resolved (a lone override file).
    pub strict: bool,
    pub application: Option<PathBuf>,
    pub references: Vec<PathBuf>,
}

/// Resolves every job in one JVM; each answer is the configuration as JSON, or `{"error": ...}`.
pub fn resolve(jar: &Path, jobs: &[Job]) -> Result<serde_json::Map<String, Value>, String> {
    let helper = repo_root().join("testbed/java/HoconResolve.java");
    let specs: Vec<String> = jobs
        .iter()
        .map(|job| {
            let mut parts = vec![
                job.name.clone(),
                if job.strict { "strict" } else { "lenient" }.to_owned(),
                job.application
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default(),
            ];
            parts.extend(job.references.iter().map(|p| p.display().to_string()));
            parts.join("|")
        })
        .collect();
    let output = Command::new("java")
        .arg("-cp")
        .arg(jar)
        .arg(&helper)
        .args(&specs)
        .output()
        .map_err(|e| format!("running java (the machine's JDK): {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "java {} failed: {}",
            helper.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    match serde_json::from_slice(&output.stdout) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(format!(
            "HoconResolve printed no JSON object: {}",
            String::from_utf8_lossy(&output.stdout)
        )),
    }
}

/// The value at a dotted path (`jicofo.rest.host`).
pub fn at<'a>(config: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(config, |value, key| value.get(key))
}

/// Every leaf path of a configuration (lists and scalars are leaves).
pub fn leaf_paths(config: &Value) -> Vec<String> {
    fn walk(value: &Value, prefix: &str, out: &mut Vec<String>) {
        match value.as_object() {
            Some(map) if !map.is_empty() => {
                for (key, child) in map {
                    let path = if prefix.is_empty() {
                        key.clone()
                    } else {
                        format!("{prefix}.{key}")
                    };
                    walk(child, &path, out);
                }
            }
            _ => out.push(prefix.to_owned()),
        }
    }
    let mut out = Vec::new();
    walk(config, "", &mut out);
    out
}

/// Whether `path` names a value or a section of `config`.
pub fn has_path(config: &Value, path: &str) -> bool {
    at(config, path).is_some()
}

/// The `reference.conf` files of a Java program's checkout (`*/src/main/resources/reference.conf`).
pub fn reference_files(checkout: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(checkout) else {
        return found;
    };
    for entry in entries.filter_map(Result::ok) {
        let candidate = entry.path().join("src/main/resources/reference.conf");
        if candidate.is_file() {
            found.push(candidate);
        }
    }
    found.sort();
    found
}
