//! `results/<experiment>.configs.jsonl`: every configuration a sweep expands (config hash →
//! overrides and resolved recipe), which `kd compare --by <recipe key>` and the heat maps read.

use std::collections::BTreeSet;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

/// A configuration of the sweep (one per distinct overridden recipe).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConfigLine {
    pub config_hash: String,
    pub experiment: String,
    pub profile: String,
    /// Identifies the sweep (its space, profile and fixed overrides).
    pub sweep: String,
    /// `grid` or `random`.
    pub mode: String,
    /// The swept keys, in `--grid` order.
    pub swept: Vec<String>,
    /// This configuration's values of the swept keys (a `plain` configuration has no
    /// `distill.*` values).
    pub overrides: serde_json::Map<String, serde_json::Value>,
    /// Every override applied to the profile, as `--set key=value` texts.
    pub set: Vec<String>,
    /// The resolved recipe (seed list cleared), whose canonical hash is `config_hash`.
    pub recipe: serde_json::Value,
}

/// `results/<experiment>.configs.jsonl`.
pub fn configs_path(results: &Path, experiment: &str) -> PathBuf {
    results.join(format!("{experiment}.configs.jsonl"))
}

/// Appends the lines not yet in the file (by sweep and hash), under an exclusive lock.
pub fn record_configs(path: &Path, lines: &[ConfigLine]) -> Result<usize> {
    if let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    f.lock().with_context(|| format!("locking {}", path.display()))?;
    let mut text = String::new();
    f.seek(std::io::SeekFrom::Start(0))?;
    f.read_to_string(&mut text).with_context(|| format!("reading {}", path.display()))?;
    let have: BTreeSet<(String, String)> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<ConfigLine>(l).ok())
        .map(|c| (c.sweep, c.config_hash))
        .collect();
    let mut out = String::new();
    let mut n = 0;
    for c in lines {
        if !have.contains(&(c.sweep.clone(), c.config_hash.clone())) {
            out.push_str(&serde_json::to_string(c)?);
            out.push('\n');
            n += 1;
        }
    }
    f.write_all(out.as_bytes()).with_context(|| format!("writing {}", path.display()))?;
    f.sync_all()?;
    Ok(n)
}

/// Every configuration line of a file (none when it does not exist); a corrupt line is an error
/// naming file and line.
pub fn read_configs(path: &Path) -> Result<Vec<ConfigLine>> {
    if !path.exists() {
        return Ok(Vec::new());
    }
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l)
                .with_context(|| format!("{} line {}: not a sweep configuration", path.display(), i + 1))
        })
        .collect()
}
