//! The repository stands on its own and its test files all run: checks on the tree itself.

// Test code: a failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used)]

use std::process::Command;

use testbed::repo_root;

/// Files git tracks (the repository as a clone has it).
fn tracked_files() -> Vec<String> {
    let output = Command::new("git")
        .args(["ls-files", "-z"])
        .current_dir(repo_root())
        .output()
        .unwrap();
    assert!(output.status.success(), "git ls-files failed");
    String::from_utf8(output.stdout)
        .unwrap()
        .split('\0')
        .filter(|name| !name.is_empty())
        .map(str::to_owned)
        .collect()
}

#[test]
fn every_test_file_is_a_test_target() {
    let manifest = std::fs::read_to_string(repo_root().join("tests/Cargo.toml")).unwrap();
    let files = std::fs::read_dir(repo_root().join("tests")).unwrap();
    for file in files {
        let name = file.unwrap().file_name().into_string().unwrap();
        if let Some(stem) = name.strip_suffix(".rs") {
            assert!(
                manifest.contains(&format!("name = \"{stem}\"\npath = \"{name}\"")),
                "tests/{name} is not listed as a [[test]] in tests/Cargo.toml, so it never runs"
            );
        }
    }
}

#[test]
fn nothing_reads_outside_the_repository() {
    // The exceptions: CI and the xtask anchor resolver may look up source snapshots of upstream programs
    // next to the clone (GitHub is out of reach there); users' machines clone the public repositories.
    let allowed = [".ci/run", "xtask/src/anchors.rs"];
    let outside = format!("{}/shared", "..");
    for file in tracked_files() {
        if allowed.contains(&file.as_str()) || file.starts_with("bench/results/") {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(repo_root().join(&file)) else {
            continue;
        };
        assert!(
            !text.contains(&outside),
            "{file} refers to {outside}: users have only this repository"
        );
    }
}

#[test]
fn every_recorded_output_has_its_provenance() {
    let readme = std::fs::read_to_string(repo_root().join("testdata/README.md")).unwrap();
    for file in tracked_files() {
        if let Some(name) = file.strip_prefix("testdata/")
            && name != "README.md"
        {
            let base = name.rsplit('/').next().unwrap();
            assert!(
                readme.contains(&format!("`{base}`")),
                "testdata/README.md says nothing of {name}"
            );
        }
    }
}
