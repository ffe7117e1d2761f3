//! DESIGN.md's dependency rule, checked over `cargo metadata`: kd-core depends on no workspace
//! crate; method crates depend on kd-core (and kd-models only for special architectures),
//! never on another method crate and never on kd-data; data never depends on models.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

/// The method crates: each is one family of distillation methods.
const METHOD_CRATES: &[&str] = &[
    "kd-vanilla",
    "kd-self",
    "kd-multi-teacher",
    "kd-online",
    "kd-progressive",
    "kd-cross-modal",
    "kd-feature",
    "kd-logit",
];

/// Workspace crates each method crate may depend on (normal dependencies).
const METHOD_MAY_USE: &[&str] = &["kd-core", "kd-models"];

/// Method crates that see logits and features only, so need no model crate either.
const CORE_ONLY: &[&str] = &["kd-vanilla", "kd-multi-teacher", "kd-progressive", "kd-feature", "kd-logit"];

/// `crate -> its normal (non-dev, non-build) dependencies that are workspace crates`.
fn workspace_graph() -> BTreeMap<String, BTreeSet<String>> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/../../Cargo.toml");
    let out = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--no-deps", "--offline", "--manifest-path", manifest])
        .output()
        .expect("running cargo metadata");
    assert!(out.status.success(), "cargo metadata failed: {}", String::from_utf8_lossy(&out.stderr));
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).expect("cargo metadata JSON");
    let packages = meta["packages"].as_array().expect("packages");
    let names: BTreeSet<String> =
        packages.iter().map(|p| p["name"].as_str().unwrap_or_default().to_string()).collect();
    packages
        .iter()
        .map(|p| {
            let deps = p["dependencies"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|d| d["kind"].is_null())
                .filter_map(|d| d["name"].as_str())
                .filter(|n| names.contains(*n))
                .map(str::to_string)
                .collect();
            (p["name"].as_str().unwrap_or_default().to_string(), deps)
        })
        .collect()
}

#[test]
fn workspace_follows_the_dependency_rule() {
    let graph = workspace_graph();
    for m in METHOD_CRATES {
        assert!(graph.contains_key(*m), "method crate {m} is not in the workspace: update METHOD_CRATES");
    }
    let mut broken = Vec::new();
    if let Some(deps) = graph.get("kd-core").filter(|d| !d.is_empty()) {
        broken.push(format!("kd-core depends on workspace crates {deps:?}"));
    }
    if graph.get("kd-data").is_some_and(|d| d.contains("kd-models")) {
        broken.push("kd-data depends on kd-models".to_string());
    }
    for m in METHOD_CRATES {
        let allowed: &[&str] = if CORE_ONLY.contains(m) { &["kd-core"] } else { METHOD_MAY_USE };
        for d in &graph[*m] {
            if !allowed.contains(&d.as_str()) {
                broken.push(format!("method crate {m} depends on {d} (allowed: {allowed:?})"));
            }
        }
    }
    assert!(broken.is_empty(), "dependency rule broken:\n{}", broken.join("\n"));
}
