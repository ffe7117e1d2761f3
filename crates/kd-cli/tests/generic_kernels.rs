//! `kd reproduce --kernels generic` runs the code a GPU runs (candle's generic ops, no
//! kd-kernels) end to end on the CPU: teacher import, soft targets, a feature method with its
//! regressor and memory bank, the BERT students of GLUE and the paired-input runner. Each run is
//! compared with the same run on the fast kernels: same configuration hash, parameter and
//! example counts; every epoch's training loss within 1% (the two paths differ by rounding,
//! and a ReLU whose input is within rounding of zero can go either way; measured 2026-12-02:
//! ≤ 1.5e-3 after one smoke epoch for the CNNs, equal for the BERT student, 2e-7 for the
//! paired-input MLPs, which use no kd-kernels op); rows record the device as `cpu-<n>t-generic`.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::{repo_root, shared_hf_home};

/// (experiment, variants): one recipe per runner and kind of method.
const RUNS: [(&str, &str); 4] = [
    ("vanilla-kd-cifar10", "plain,kd"),
    ("zoo-cifar100", "fitnet,crd"),
    ("vanilla-kd-sst2", "kd"),
    ("cross-modal-avmnist", "kd-feat"),
];

/// Per (variant, seed): config hash, the rows' (role, model, params, train, eval examples,
/// device), and each epoch's training loss.
type Runs = BTreeMap<(String, String), (String, Vec<[String; 6]>, Vec<f64>)>;

fn run(exp: &str, variants: &str, kernels: &str, out: &Path) -> Runs {
    let root = repo_root();
    let dir = out.join(kernels);
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_kd"))
        .args(["reproduce", exp, "--profile", "smoke", "--variants", variants, "--kernels", kernels])
        .arg("--results")
        .arg(dir.join("results"))
        .arg("--runs")
        .arg(dir.join("runs"))
        .current_dir(&root)
        .env("HF_HOME", shared_hf_home())
        .env("HF_HUB_OFFLINE", "1")
        .env("KD_TEACHERS_DIR", root.join("../shared/data/teachers"))
        .env("KD_CACHE_DIR", dir.join("cache"))
        .output()
        .expect("kd runs");
    assert!(o.status.success(), "{exp} --kernels {kernels}:\n{}", String::from_utf8_lossy(&o.stderr));

    let mut runs = Runs::new();
    let csv_path = dir.join("results").join(format!("{exp}.csv"));
    let mut r = csv::Reader::from_path(&csv_path).unwrap();
    let h = r.headers().unwrap().clone();
    let col = |n: &str| h.iter().position(|c| c == n).unwrap_or_else(|| panic!("column {n}"));
    for rec in r.records() {
        let rec = rec.unwrap();
        let entry = runs.entry((rec[col("variant")].to_string(), rec[col("seed")].to_string())).or_default();
        entry.0 = rec[col("config_hash")].to_string();
        let row = ["role", "model", "params", "train_examples", "eval_examples", "device"]
            .map(|c| rec[col(c)].to_string());
        if !entry.1.contains(&row) {
            entry.1.push(row);
        }
    }
    let history = std::fs::read_to_string(dir.join("results").join(format!("{exp}.history.jsonl"))).unwrap();
    for line in history.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let key = (v["variant"].as_str().unwrap().to_string(), v["seed"].to_string());
        let losses =
            v["epochs"].as_array().unwrap().iter().map(|e| e["train_loss"].as_f64().unwrap()).collect();
        runs.get_mut(&key).unwrap_or_else(|| panic!("{exp}: history of {key:?} without rows")).2 = losses;
    }
    runs
}

#[test]
fn the_generic_path_trains_every_runner_as_the_fast_kernels_do() {
    let out = tempfile::tempdir().unwrap();
    let mut failures = Vec::new();
    for (exp, variants) in RUNS {
        let dir = out.path().join(exp);
        let fast = run(exp, variants, "fast", &dir);
        let generic = run(exp, variants, "generic", &dir);
        assert_eq!(fast.len(), variants.split(',').count(), "{exp}: runs {:?}", fast.keys());
        assert_eq!(fast.keys().collect::<Vec<_>>(), generic.keys().collect::<Vec<_>>(), "{exp}");
        for (key, (hash, rows, losses)) in &fast {
            let (g_hash, g_rows, g_losses) = &generic[key];
            assert_eq!(hash, g_hash, "{exp} {key:?}: the kernels are not part of the configuration");
            let strip = |rows: &[[String; 6]]| rows.iter().map(|r| r[..5].to_vec()).collect::<Vec<_>>();
            assert_eq!(strip(rows), strip(g_rows), "{exp} {key:?}: rows");
            for r in g_rows {
                assert!(
                    r[5].starts_with("cpu-") && r[5].ends_with("t-generic"),
                    "{exp} {key:?}: device {}",
                    r[5]
                );
            }
            for r in rows {
                assert!(!r[5].contains("generic"), "{exp} {key:?}: device {}", r[5]);
            }
            assert!(!losses.is_empty() && losses.len() == g_losses.len(), "{exp} {key:?}: epochs");
            for (e, (f, g)) in losses.iter().zip(g_losses).enumerate() {
                let rel = (f - g).abs() / f.abs().max(1e-12);
                eprintln!("{exp} {key:?} epoch {}: fast {f:.6} generic {g:.6} rel {rel:.2e}", e + 1);
                if !f.is_finite() || rel > 1e-2 {
                    failures.push(format!("{exp} {key:?} epoch {}: fast {f} generic {g} ({rel:.2e})", e + 1));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn fast_kernels_are_refused_off_the_cpu() {
    let root = repo_root();
    let o = common::kd(
        &["reproduce", "vanilla-kd-cifar10", "--profile", "smoke", "--kernels", "fast", "--device", "cuda"],
        &root,
        &shared_hf_home(),
    );
    assert!(!o.status.success());
    let e = common::stderr(&o);
    assert!(e.contains("--device cuda") || e.contains("--kernels fast"), "{e}");
    let o = common::kd(&["bench", "--kernels", "gpu"], &root, &shared_hf_home());
    assert!(!o.status.success());
    assert!(common::stderr(&o).contains("--kernels gpu"), "{}", common::stderr(&o));
}
