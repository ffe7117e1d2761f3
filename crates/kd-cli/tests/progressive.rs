//! Progressive distillation end to end on real data (smoke-sized): TAKD with an empty chain is
//! vanilla KD to the bit; a chain's assistant is trained once, cached by its key, reported as
//! `assistant-1`, reused by a re-run and by a longer chain, and retrained when something that
//! determines it changes; the annealing recipe trains every variant with the scheduled values.

mod common;

use std::path::{Path, PathBuf};

use common::{kd, real_recipe, scratch_project, shared_hf_home, stderr};
use kd_core::results::{read_rows, ResultRow};

fn rows(root: &Path, exp: &str) -> Vec<ResultRow> {
    read_rows(&common::smoke_results(root).join(format!("{exp}.csv"))).unwrap()
}

fn student_values(rows: &[ResultRow], variant: &str) -> Vec<(String, f64, f64, usize)> {
    rows.iter()
        .filter(|r| r.variant == variant && r.role == "student")
        .map(|r| (r.metric.clone(), r.value, r.best_value, r.best_epoch))
        .collect()
}

/// Cached assistants (final files, not epoch checkpoints) with their modification times.
fn assistants(root: &Path) -> Vec<(PathBuf, std::time::SystemTime)> {
    let dir = root.join(".kd-cache").join("assistants");
    let mut v: Vec<_> = std::fs::read_dir(&dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| {
                    let n = p.file_name().unwrap().to_str().unwrap();
                    n.ends_with(".safetensors") && !n.ends_with(".ckpt.safetensors")
                })
                .map(|p| {
                    let t = std::fs::metadata(&p).unwrap().modified().unwrap();
                    (p, t)
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[test]
fn empty_chain_is_vanilla_kd_exactly() {
    let hf = shared_hf_home();
    // The vanilla recipe as method `takd` with no assistants: same data, teacher, student,
    // train section and (T, α).
    let vanilla = real_recipe("vanilla-kd-cifar10");
    let takd = vanilla
        .replace("name = \"vanilla-kd-cifar10\"", "name = \"takd-empty\"")
        .replace("method = \"vanilla\"", "method = \"takd\"")
        .replace("variants = [\"plain\", \"kd\"]", "variants = [\"plain\", \"direct\", \"chain\"]")
        .replace("\n[distill]\n", "\n[distill]\nchain = []\n");
    assert!(takd.contains("chain = []") && takd.contains("method = \"takd\""));
    let dir = scratch_project(&[("vanilla-kd-cifar10.toml", vanilla), ("takd-empty.toml", takd)]);
    let root = dir.path().join("proj");
    let a = kd(&["reproduce", "vanilla-kd-cifar10", "--profile", "smoke", "--variants", "kd"], &root, &hf);
    assert!(a.status.success(), "{}", stderr(&a));
    let b = kd(&["reproduce", "takd-empty", "--profile", "smoke", "--variants", "direct,chain"], &root, &hf);
    assert!(b.status.success(), "{}", stderr(&b));
    assert!(!stderr(&b).contains("assistant-1"), "no assistant with an empty chain");
    let want = student_values(&rows(&root, "vanilla-kd-cifar10"), "kd");
    assert_eq!(want.len(), 2, "top1 and top5");
    let got = rows(&root, "takd-empty");
    assert_eq!(student_values(&got, "chain"), want, "chain = [] reproduces vanilla KD exactly");
    assert_eq!(student_values(&got, "direct"), want, "direct is vanilla KD exactly");
    assert!(got.iter().all(|r| !r.role.starts_with("assistant")));
}

#[test]
fn assistant_is_trained_once_reported_reused_and_retrained_when_its_key_changes() {
    let hf = shared_hf_home();
    let exp = "takd-cifar10";
    let dir = scratch_project(&[(&format!("{exp}.toml"), real_recipe(exp))]);
    let root = dir.path().join("proj");
    let base = ["reproduce", exp, "--profile", "smoke", "--variants", "chain"];

    let first = kd(&base, &root, &hf);
    assert!(first.status.success(), "{}", stderr(&first));
    assert!(stderr(&first).contains("assistant-1 resnet20 seed 0: training"), "{}", stderr(&first));
    let cached = assistants(&root);
    assert_eq!(cached.len(), 1, "{cached:?}");
    let r1 = rows(&root, exp);
    let assistant =
        r1.iter().find(|r| r.role == "assistant-1" && r.metric == "top1").expect("assistant-1 row");
    assert_eq!(assistant.model, "resnet20");
    assert_eq!(assistant.variant, "chain");
    assert!(r1.iter().any(|r| r.role == "student" && r.model == "resnet8"));
    assert!(r1.iter().any(|r| r.role == "teacher" && r.model == "resnet56"));

    // Re-run: the assistant comes from the cache (file untouched), the student is the same.
    let mut again = base.to_vec();
    again.push("--force");
    let second = kd(&again, &root, &hf);
    assert!(second.status.success(), "{}", stderr(&second));
    assert!(stderr(&second).contains("reusing cached assistant"), "{}", stderr(&second));
    assert!(!stderr(&second).contains("seed 0: training"), "{}", stderr(&second));
    assert_eq!(assistants(&root), cached, "same file, same mtime");
    let r2 = rows(&root, exp);
    assert_eq!(r2.len(), 2 * r1.len());
    assert_eq!(student_values(&r2[r1.len()..], "chain"), student_values(&r1, "chain"));

    // A longer chain reuses its shared prefix and trains only the new link.
    let mut longer = again.clone();
    longer.extend(["--set", "distill.chain=[\"resnet20\", \"resnet14\"]"]);
    let third = kd(&longer, &root, &hf);
    assert!(third.status.success(), "{}", stderr(&third));
    let e = stderr(&third);
    assert!(
        e.contains("reusing cached assistant") && e.contains("assistant-2 resnet14 seed 0: training"),
        "{e}"
    );
    assert!(!e.contains("assistant-1 resnet20 seed 0: training"), "{e}");
    let now = assistants(&root);
    assert_eq!(now.len(), 2);
    assert!(now.contains(&cached[0]), "assistant-1 untouched");
    let r3 = rows(&root, exp);
    assert!(r3.iter().any(|r| r.role == "assistant-2" && r.model == "resnet14"));

    // A teacher field that changes the first link's teacher logits: retrained.
    let mut hot = again.clone();
    hot.extend(["--set", "teacher.soft_label_cache=true"]);
    let fourth = kd(&hot, &root, &hf);
    assert!(fourth.status.success(), "{}", stderr(&fourth));
    assert!(stderr(&fourth).contains("assistant-1 resnet20 seed 0: training"), "{}", stderr(&fourth));
    assert_eq!(assistants(&root).len(), 3);
}

#[test]
fn annealing_recipe_trains_every_variant_with_its_scheduled_values() {
    let hf = shared_hf_home();
    let exp = "annealing-kd-cifar10";
    let dir = scratch_project(&[(&format!("{exp}.toml"), real_recipe(exp))]);
    let root = dir.path().join("proj");
    let out = kd(&["reproduce", exp, "--profile", "smoke"], &root, &hf);
    assert!(out.status.success(), "{}", stderr(&out));
    let r = rows(&root, exp);
    for v in ["plain", "fixed", "annealed", "annealing-kd"] {
        assert!(r.iter().any(|x| x.variant == v && x.role == "student" && x.model == "resnet8"), "{v}");
    }
    let hist =
        kd_core::history::read_history(&common::smoke_results(&root).join(format!("{exp}.history.jsonl")))
            .unwrap();
    let part = |variant: &str, name: &str| {
        let h = hist.iter().find(|h| h.variant == variant).unwrap();
        h.epochs[0].loss_parts[name]
    };
    // Smoke: 200 examples, batch 50 → 4 steps at q = 0, 1/3, 2/3, 1. Linear T from 8 to 1:
    // 8, 17/3, 10/3, 1 → epoch mean 4.5; α constant 0.9.
    assert!((part("annealed", "temperature") - 4.5).abs() < 1e-5);
    assert!((part("annealed", "alpha") - 0.9).abs() < 1e-6);
    // Annealing-KD, τ_max = 10, phase1 = 2/3: round(8/3) = 3 phase-1 steps at q = 0, 1/2, 1 →
    // φ = 0.1, 0.6, 1.0, then one CE-only step (φ reported as 0) → mean 1.7/4 = 0.425.
    assert!((part("annealing-kd", "phi") - 0.425).abs() < 1e-6);
    assert!(!hist.iter().find(|h| h.variant == "fixed").unwrap().epochs[0]
        .loss_parts
        .contains_key("temperature"));
}
