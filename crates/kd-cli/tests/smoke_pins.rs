//! Nothing changes for users' numbers: every recipe's smoke profile, run by this `kd`, writes
//! the values pinned in `benchmarks/pins/smoke-*.csv` (written by earlier binaries, named by
//! their commit), value for value — config hashes, parameter counts, example counts, scores,
//! best epochs and teacher hashes. Timing and provenance columns are not compared. The pinned
//! rows carry v1 configuration hashes (written before hashes left out file paths): each must be
//! the v1 name, in `benchmarks/pins/config-hashes.csv`, of the hash the run writes now.
//!
//! Runs go into a scratch folder (never `results/` or `runs/`); the recipes are the checkout's,
//! run from the repository root so their `../shared` teacher paths resolve as in a checkout.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

use common::{repo_root, shared_hf_home};

const KEY: [&str; 7] = ["experiment", "profile", "variant", "seed", "role", "model", "metric"];
const VALUES: [&str; 9] = [
    "params",
    "train_examples",
    "eval_examples",
    "split",
    "value",
    "best_value",
    "best_epoch",
    "config_hash",
    "teacher_hash",
];

type Rows = BTreeMap<Vec<String>, BTreeMap<String, String>>;

/// The rows of a CSV keyed by [`KEY`], with the [`VALUES`] columns.
fn read(path: &Path) -> Rows {
    let mut r = csv::Reader::from_path(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let header = r.headers().unwrap().clone();
    let col = |name: &str| header.iter().position(|h| h == name).unwrap_or_else(|| panic!("{name} column"));
    let mut rows = Rows::new();
    for rec in r.records() {
        let rec = rec.unwrap();
        let key = KEY.iter().map(|k| rec[col(k)].to_string()).collect();
        let values = VALUES.iter().map(|v| (v.to_string(), rec[col(v)].to_string())).collect();
        rows.insert(key, values);
    }
    rows
}

#[test]
fn every_recipes_smoke_values_equal_the_pinned_ones() {
    let hf = shared_hf_home();
    let root = repo_root();
    let mut pinned = Rows::new();
    let pins = root.join("benchmarks/pins");
    for f in std::fs::read_dir(&pins).unwrap() {
        let p = f.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().to_string();
        if name.starts_with("smoke-") && name.ends_with(".csv") {
            pinned.extend(read(&p));
        }
    }
    assert!(pinned.len() > 100, "pins in {}", pins.display());
    // v1 hash -> current hash, per `benchmarks/pins/config-hashes.csv` (tests/config_hash.rs
    // checks that file against the recipes).
    let mut current_of_v1 = BTreeMap::new();
    let mut hashes = csv::Reader::from_path(pins.join("config-hashes.csv")).expect("config-hashes.csv");
    for rec in hashes.records() {
        let rec = rec.unwrap();
        current_of_v1.insert(rec[3].to_string(), rec[2].to_string());
    }
    for values in pinned.values_mut() {
        let h = values.get_mut("config_hash").unwrap();
        if let Some(current) = current_of_v1.get(h.as_str()) {
            *h = current.clone();
        }
    }
    let experiments: BTreeSet<String> = pinned.keys().map(|k| k[0].clone()).collect();
    let out = tempfile::tempdir().unwrap();
    let mut failures = Vec::new();
    for exp in &experiments {
        let status = Command::new(env!("CARGO_BIN_EXE_kd"))
            .args(["reproduce", exp, "--profile", "smoke", "--recipes"])
            .arg(root.join("benchmarks"))
            .arg("--results")
            .arg(out.path().join("results"))
            .arg("--runs")
            .arg(out.path().join("runs"))
            .current_dir(&root)
            .env("HF_HOME", &hf)
            .env("HF_HUB_OFFLINE", "1")
            .env("KD_TEACHERS_DIR", root.join("../shared/data/teachers"))
            .env("KD_CACHE_DIR", out.path().join("cache"))
            .output()
            .expect("kd runs");
        if !status.status.success() {
            failures.push(format!("{exp}: kd failed:\n{}", String::from_utf8_lossy(&status.stderr)));
        }
    }
    let mut got = Rows::new();
    for exp in &experiments {
        let csv = out.path().join("results").join(format!("{exp}.csv"));
        if csv.exists() {
            got.extend(read(&csv));
        }
    }
    for (key, want) in &pinned {
        match got.get(key) {
            None => failures.push(format!("missing row {key:?}")),
            Some(have) => {
                let diff: Vec<String> = VALUES
                    .iter()
                    .filter(|v| want[**v] != have[**v])
                    .map(|v| format!("{v}: pinned {} now {}", want[*v], have[*v]))
                    .collect();
                if !diff.is_empty() {
                    failures.push(format!("{key:?}: {}", diff.join(", ")));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} pinned rows differ:\n{}",
        failures.len(),
        pinned.len(),
        failures.join("\n")
    );
}
