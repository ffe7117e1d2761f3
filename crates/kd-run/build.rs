//! Records the commit the run pipeline is built from (`KD_BUILD_COMMIT`, `-dirty` when tracked
//! files differ from it), so result rows name the code that produced them rather than whatever
//! the checkout holds when the binary runs. It lives in kd-run because `env::git_commit` reads
//! it there: a `rustc-env` reaches only the crate whose build script prints it.

use std::path::Path;
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok().filter(|o| o.status.success())?;
    Some(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn main() {
    let Some(head) = git(&["rev-parse", "HEAD"]) else {
        println!("cargo:rustc-env=KD_BUILD_COMMIT=");
        return;
    };
    let dirty = git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
    let commit = if dirty { format!("{head}-dirty") } else { head };
    println!("cargo:rustc-env=KD_BUILD_COMMIT={commit}");
    // Rebuild when HEAD moves or the index changes (a commit, a checkout, staged edits).
    if let Some(dir) = git(&["rev-parse", "--git-dir"]) {
        let dir = Path::new(&dir);
        for f in ["HEAD", "index", "packed-refs"] {
            println!("cargo:rerun-if-changed={}", dir.join(f).display());
        }
        if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
            println!("cargo:rerun-if-changed={}", dir.join(branch).display());
        }
    }
    // ... and when any workspace source changes, so that `-dirty` is current.
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    for p in ["crates", "Cargo.toml", "Cargo.lock"] {
        println!("cargo:rerun-if-changed={}", root.join(p).display());
    }
    println!("cargo:rerun-if-changed=build.rs");
}
