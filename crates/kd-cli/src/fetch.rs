//! Pretrained checkpoints pinned by SHA-256: a local path first, then kd-bench's cache, then the
//! recipe's URL (never when `HF_HUB_OFFLINE=1`). Every file is checked against its hash.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use kd_core::hash::sha256_file;
use kd_core::recipe::CheckpointSource;

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
    }
    let name = src
        .url
        .as_deref()
        .and_then(|u| u.rsplit('/').next())
        .or_else(|| src.path.as_ref().and_then(|p| p.file_name()).and_then(|n| n.to_str()))
        .unwrap_or("checkpoint")
        .to_string();
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

fn verify(path: &Path, want: &str) -> Result<()> {
    let got = sha256_file(path)?;
    if !got.eq_ignore_ascii_case(want) {
        bail!("checkpoint {}: SHA-256 is {got}, the recipe pins {want}", path.display());
    }
    Ok(())
}

/// Downloads to a temporary file beside `dest`, checks the hash, then renames: never a
/// half-written checkpoint at `dest`.
fn download(url: &str, dest: &Path, sha256: &str) -> Result<()> {
    let dir = dest.parent().context("checkpoint cache path has no parent")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = dest.with_extension("part");
    eprintln!("downloading {url}");
    let resp = ureq::get(url).call().with_context(|| format!("downloading {url}"))?;
    let len = resp.header("Content-Length").and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    let pb = crate::progress::bar(len, "download");
    let mut reader = resp.into_reader();
    let mut file = std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = reader.read(&mut buf).with_context(|| format!("reading {url}"))?;
        if n == 0 {
            break;
        }
        file.write_all(&buf[..n])?;
        pb.inc(n as u64);
    }
    pb.finish_and_clear();
    file.sync_all()?;
    drop(file);
    if let Err(e) = verify(&tmp, sha256) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e.context(format!("downloaded from {url}")));
    }
    std::fs::rename(&tmp, dest).with_context(|| format!("moving {} into place", dest.display()))?;
    Ok(())
}
