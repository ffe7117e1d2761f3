//! Where the real-data tests find the shared data. They need it and FAIL (never skip) when it
//! is missing, naming what to set.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// The workspace root (two levels above this crate).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A data folder: `$var`, else `<workspace>/../shared/data/<default>` (the documented layout).
/// Test binaries run in their crate's folder, so a relative value is taken from the workspace
/// root, where the README's test command is typed.
pub fn data_dir(var: &str, default: &str) -> PathBuf {
    match std::env::var_os(var).map(PathBuf::from) {
        Some(dir) if dir.is_absolute() => dir,
        Some(dir) => workspace_root().join(dir),
        None => workspace_root().join("../shared/data").join(default),
    }
}

/// The shared hub cache (`$HF_HOME`, see [`data_dir`]).
pub fn hf_home() -> PathBuf {
    data_dir("HF_HOME", "hf-cache")
}

/// The shared teachers folder (`$KD_TEACHERS_DIR`, see [`data_dir`]); fails the test when missing.
pub fn teachers_dir() -> PathBuf {
    let dir = data_dir("KD_TEACHERS_DIR", "teachers");
    assert!(
        dir.is_dir(),
        "real-data test, data missing: no teachers folder {} (KD_TEACHERS_DIR={}). Set KD_TEACHERS_DIR \
         to the shared teachers, e.g. KD_TEACHERS_DIR=../shared/data/teachers from the repository root \
         (a relative value is taken from there; unset, it is <repo>/../shared/data/teachers)",
        dir.display(),
        std::env::var("KD_TEACHERS_DIR").unwrap_or_else(|_| "<unset>".into()),
    );
    dir
}

/// A repo's snapshot folder in the shared hub cache (`kind`: `datasets` or `models`), from its
/// `refs/main`; fails the test, naming the path and what to set, when it is missing.
pub fn hub_snapshot(kind: &str, repo: &str) -> PathBuf {
    let home = hf_home();
    let dir = home.join("hub").join(format!("{kind}--{}", repo.replace('/', "--")));
    let refs = dir.join("refs/main");
    let commit = std::fs::read_to_string(&refs).unwrap_or_else(|e| {
        panic!(
            "real-data test, data missing: cannot read {} ({e}; HF_HOME={}). Set HF_HOME to the shared \
             hub cache, e.g. HF_HOME=../shared/data/hf-cache from the repository root (a relative HF_HOME \
             is taken from there; unset, it is <repo>/../shared/data/hf-cache)",
            refs.display(),
            std::env::var("HF_HOME").unwrap_or_else(|_| "<unset>".into()),
        )
    });
    dir.join("snapshots").join(commit.trim())
}
