//! Pretrained checkpoints pinned by SHA-256: the recipe's local path first, then the same file
//! in `$KD_TEACHERS_DIR` (a teachers folder elsewhere: `<dir>/<path's folder>/<file>` or
//! `<dir>/<file>`), then kd-bench's cache, then the recipe's URL (never when
//! `HF_HUB_OFFLINE=1`). Every file is checked against its hash, so where it was found never
//! changes a number (nor the configuration hash, which holds no path).
//!
//! Downloads use kd-data's [`HttpPolicy`] (connect and read timeouts, bounded retries with
//! back-off, from `KD_HTTP_*`), into a temporary file in the cache folder that is renamed into
//! place only after its SHA-256 matched.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use kd_core::hash::sha256_file;
use kd_core::recipe::{url_file_name, CheckpointSource};
use kd_data::hub::{download_to, HttpPolicy};

pub fn resolve_checkpoint(
    src: &CheckpointSource,
    root: &Path,
    cache: &Path,
    offline: bool,
) -> Result<PathBuf> {
    let mut looked = Vec::new();
    if let Some(p) = &src.path {
        let p = if p.is_absolute() { p.clone() } else { root.join(p) };
        if p.exists() {
            verify(&p, &src.sha256)?;
            return Ok(p);
        }
        looked.push(p.display().to_string());
        if let Some(dir) = teachers_dir(root) {
            let file = p.file_name().map(PathBuf::from);
            let folder = p.parent().and_then(|d| d.file_name()).map(PathBuf::from);
            let candidates =
                [folder.zip(file.clone()).map(|(d, f)| dir.join(d).join(f)), file.map(|f| dir.join(f))];
            for c in candidates.into_iter().flatten() {
                if c.exists() {
                    verify(&c, &src.sha256)?;
                    return Ok(c);
                }
                looked.push(c.display().to_string());
            }
        }
    }
    // Recipe validation refuses URLs without a plain file name; `url_file_name` checks again.
    let name = src
        .url
        .as_deref()
        .and_then(url_file_name)
        .or_else(|| src.path.as_ref().and_then(|p| p.file_name()).and_then(|n| n.to_str()))
        .filter(|n| *n != ".." && *n != ".")
        .unwrap_or("checkpoint")
        .to_string();
    if src.sha256.len() != 64 || !src.sha256.chars().all(|c| c.is_ascii_hexdigit()) {
        bail!("checkpoint sha256 `{}` is not a SHA-256 hex digest", src.sha256);
    }
    let cached = cache.join("weights").join(&src.sha256).join(&name);
    if cached.exists() {
        verify(&cached, &src.sha256)?;
        return Ok(cached);
    }
    looked.push(cached.display().to_string());
    match (&src.url, offline) {
        (Some(url), false) => {
            download(url, &cached, &src.sha256)?;
            Ok(cached)
        }
        (Some(url), true) => bail!(
            "checkpoint {} not found (looked at: {}); HF_HUB_OFFLINE=1 forbids downloading {url}. \
             Get it on a machine with network: curl -L -o {} {url}",
            src.sha256,
            looked.join(", "),
            cached.display()
        ),
        (None, _) => bail!(
            "checkpoint {} not found (looked at: {}) and the recipe gives no url",
            src.sha256,
            looked.join(", ")
        ),
    }
}

/// `$KD_TEACHERS_DIR` (relative: from the repository root), when set and not empty.
fn teachers_dir(root: &Path) -> Option<PathBuf> {
    let d = PathBuf::from(std::env::var_os("KD_TEACHERS_DIR").filter(|v| !v.is_empty())?);
    Some(if d.is_absolute() { d } else { root.join(d) })
}

fn verify(path: &Path, want: &str) -> Result<()> {
    let got = sha256_file(path)?;
    if !got.eq_ignore_ascii_case(want) {
        bail!("checkpoint {}: SHA-256 is {got}, the recipe pins {want}", path.display());
    }
    Ok(())
}

/// Downloads `url` to `dest` through a temporary file beside it, verified before the rename:
/// never a half-written or unverified checkpoint at `dest`, nothing left behind on failure.
/// A transfer that breaks or times out is retried; a wrong hash is not.
fn download(url: &str, dest: &Path, sha256: &str) -> Result<()> {
    let offline_hint = || {
        format!(
            "to work without the network, put the file (SHA-256 {sha256}) at {} (e.g. `curl -L -o {} {url}` \
             on a machine with network) and run with HF_HUB_OFFLINE=1",
            dest.display(),
            dest.display()
        )
    };
    let policy = HttpPolicy::from_env().map_err(|m| anyhow::anyhow!("downloading {url}: {m}"))?;
    eprintln!("downloading {url}");
    download_to(&policy, url, &[], dest, |tmp| {
        let got = sha256_file(tmp).map_err(|e| e.to_string())?;
        if got.eq_ignore_ascii_case(sha256) {
            Ok(())
        } else {
            Err(format!("the downloaded file's SHA-256 is {got}, the recipe pins {sha256}; nothing was kept"))
        }
    })
    .map_err(|e| anyhow::anyhow!("teacher checkpoint: {e}; {}", offline_hint()))?;
    Ok(())
}
