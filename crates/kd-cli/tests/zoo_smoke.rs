//! The method zoo through `kd reproduce`: `zoo-cifar100` (several methods compared in one
//! experiment, each variant trained by the method that offers it, each reading its own
//! `[distill.<method>]`) runs every variant for one epoch on the real CIFAR-100 data and the
//! real third-party ResNet-56 teacher; the rows name each variant's method; the methods that
//! own parameters (CC's embeddings, VID's regressors) checkpoint them.

mod common;

use std::collections::BTreeSet;

use common::{hf_home_with, kd, real_recipe, scratch_project, stderr};
use kd_core::checkpoint::load_checkpoint;
use kd_core::results::read_rows;

const EXP: &str = "zoo-cifar100";

#[test]
fn every_zoo_variant_trains_one_epoch_and_names_its_method() {
    let hf = hf_home_with(&["datasets--uoft-cs--cifar100"]);
    let recipe = real_recipe(EXP);
    let dir = scratch_project(&[(&format!("{EXP}.toml"), recipe.clone())]);
    let root = dir.path().join("proj");
    let out = kd(&["reproduce", EXP, "--profile", "smoke"], &root, &hf);
    assert!(out.status.success(), "{}", stderr(&out));

    let file = kd_core::recipe::RecipeFile::parse(format!("{EXP}.toml").into(), recipe).unwrap();
    let r = file.resolve(Some("smoke")).unwrap();
    let rows = read_rows(&common::smoke_results(&root).join(format!("{EXP}.csv"))).unwrap();
    let parsed = kd_run::registry::ParsedMethod::parse(&r).unwrap();
    for v in &r.experiment.variants {
        let student: Vec<_> = rows.iter().filter(|x| &x.variant == v && x.role == "student").collect();
        assert_eq!(student.len(), 2, "variant {v}: top1 and top5 of the student");
        for x in &student {
            assert!(x.value.is_finite() && (0.0..=100.0).contains(&x.value), "{v}: {}", x.value);
            assert_eq!(x.method, parsed.method_of(v), "variant {v}'s method column");
            // The student's size leaves every method's own parameters out.
            assert_eq!(x.params, 278_324, "{v}");
        }
        let teacher = rows.iter().any(|x| &x.variant == v && x.role == "teacher");
        assert_eq!(teacher, v != "plain", "{v}: teacher rows exactly when a teacher is used");
    }
    let methods: BTreeSet<&str> = rows.iter().map(|x| x.method.as_str()).collect();
    let mut expected: BTreeSet<&str> = r.experiment.methods.iter().map(String::as_str).collect();
    expected.insert("plain");
    assert_eq!(methods, expected);

    // The loss parts of the history name each feature term, and owned parameters are saved.
    let history =
        std::fs::read_to_string(common::smoke_results(&root).join(format!("{EXP}.history.jsonl"))).unwrap();
    for part in ["\"at\":", "\"sp\":", "\"cc\":", "\"vid\":", "\"rkd\":", "\"pkt\":", "\"nst\":"] {
        assert!(history.contains(part), "history has the loss part {part}");
    }
    // Each run logs its peak memory (Linux: the process's high-water mark while it trained).
    for line in history.lines() {
        let run: kd_core::history::RunHistory = serde_json::from_str(line).unwrap();
        if cfg!(target_os = "linux") {
            let mib = run.peak_rss_mib.unwrap_or_else(|| panic!("{}: no peak memory", run.variant));
            assert!(mib > 10.0 && mib < 64_000.0, "{}: {mib} MiB", run.variant);
        }
    }
    let hash = &rows[0].config_hash[..12];
    let run_dir = root.join("runs").join(EXP).join(hash);
    for (variant, owned) in [("cc", "method/embed_s."), ("vid", "method/0."), ("at", "")] {
        let (tensors, _) =
            load_checkpoint(&run_dir.join(format!("{variant}-seed0.ckpt.safetensors"))).unwrap();
        let mine: Vec<&String> = tensors.keys().filter(|k| k.contains("method/")).collect();
        if owned.is_empty() {
            assert!(mine.is_empty(), "{variant} owns nothing: {mine:?}");
        } else {
            assert!(mine.iter().any(|k| k.contains(owned)), "{variant} checkpoints {owned}*: {mine:?}");
        }
    }
}
