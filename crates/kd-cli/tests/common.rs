//! Helpers shared by the CLI integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The repository root (two levels above this crate).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

/// `$HF_HOME` when it holds the shared hub cache; `None` (test skipped) otherwise.
pub fn shared_hf_home() -> Option<PathBuf> {
    let home = std::env::var_os("HF_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("../shared/data/hf-cache"));
    if home.join("hub/datasets--uoft-cs--cifar10").is_dir() {
        Some(home)
    } else {
        eprintln!("skipped: no shared hub cache at {} (set HF_HOME)", home.display());
        None
    }
}

/// Runs the `kd` binary with the hub cache offline and a private kd-bench cache.
pub fn kd(args: &[&str], cwd: &Path, hf_home: &Path) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_kd"))
        .args(args)
        .current_dir(cwd)
        .env("HF_HOME", hf_home)
        .env("HF_HUB_OFFLINE", "1")
        .env("KD_CACHE_DIR", cwd.join(".kd-cache"))
        .output()
        .expect("kd runs");
    eprintln!("--- kd {}\n{}", args.join(" "), String::from_utf8_lossy(&out.stderr));
    out
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A scratch project: `benchmarks/` with the given recipe files, teachers reachable through a
/// `../shared` link like the real checkout's.
pub fn scratch_project(recipes: &[(&str, String)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("proj");
    std::fs::create_dir_all(root.join("benchmarks")).unwrap();
    for (name, text) in recipes {
        std::fs::write(root.join("benchmarks").join(name), text).unwrap();
    }
    let shared = repo_root().join("../shared");
    if shared.exists() {
        std::os::unix::fs::symlink(&shared, dir.path().join("shared")).unwrap();
    }
    dir
}

/// The real recipe text, for tests that tweak it.
pub fn real_recipe(name: &str) -> String {
    std::fs::read_to_string(repo_root().join("benchmarks").join(format!("{name}.toml"))).unwrap()
}
