//! Self-distillation (BYOT) end to end: the smoke profiles of `self-distill-cifar10` (real
//! CIFAR-10 subset, ResNet-20, 3 exits) and `self-distill-cifar100` (generated CIFAR-100 in the
//! hub layout, ResNet-18, 4 exits) train the plain backbone and the multi-exit network and write
//! one row per exit and for the ensemble; a recipe asking for an exit count the backbone cannot
//! have is refused before anything trains.

mod common;

use common::{kd, real_recipe, scratch_project, shared_hf_home, stderr};
use kd_core::results::{read_rows, ResultRow};

/// Checks the rows of one smoke run: plain student, every exit and the ensemble.
fn check_rows(rows: &[ResultRow], arch: &str, exits: usize) {
    let find = |variant: &str, role: &str, metric: &str| {
        rows.iter()
            .find(|r| r.variant == variant && r.role == role && r.metric == metric)
            .unwrap_or_else(|| panic!("no {variant}/{role}/{metric} row"))
    };
    let plain = find("plain", "student", "top1");
    assert_eq!(plain.model, arch);
    let mut roles: Vec<&str> =
        rows.iter().filter(|r| r.variant == "byot" && r.metric == "top1").map(|r| r.role.as_str()).collect();
    let mut want: Vec<String> = (1..=exits).map(|i| format!("exit-{i}")).collect();
    want.push("ensemble".into());
    assert_eq!(roles.len(), want.len(), "{roles:?}");
    roles.sort();
    let mut want_sorted = want.clone();
    want_sorted.sort();
    assert_eq!(roles, want_sorted);
    // The deepest exit is the plain backbone's size; the ensemble counts every branch too and
    // is the largest. (Shallow exits need not grow with depth: ResNet-18's first branch has an
    // 8×8 convolution and outweighs the second exit.)
    let params: Vec<usize> = want.iter().map(|role| find("byot", role, "top1").params).collect();
    assert_eq!(params[exits - 1], plain.params);
    assert!(params[..exits].iter().all(|&p| p > 0 && p < params[exits]), "{params:?}");
    for role in &want {
        let r = find("byot", role, "top1");
        assert_eq!(r.model, format!("{arch}-byot"));
        assert_eq!(r.method, "self");
        assert_eq!(r.config_hash, plain.config_hash);
        assert!(r.teacher_hash.is_empty());
        assert!((0.0..=100.0).contains(&r.value) && r.best_value >= r.value);
        assert!(find("byot", role, "top5").value >= r.value);
    }
}

#[test]
fn cifar10_smoke_writes_a_row_per_exit_and_the_ensemble() {
    let hf = shared_hf_home();
    let exp = "self-distill-cifar10";
    let dir = scratch_project(&[(&format!("{exp}.toml"), real_recipe(exp))]);
    let root = dir.path().join("proj");
    let out = kd(&["reproduce", exp, "--profile", "smoke"], &root, &hf);
    assert!(out.status.success(), "{}", stderr(&out));
    let rows = read_rows(&common::smoke_results(&root).join(format!("{exp}.csv"))).unwrap();
    assert_eq!(rows.len(), 2 + 2 * 4, "plain top1/top5 + 4 byot roles x 2 metrics");
    check_rows(&rows, "resnet20", 3);
    // The per-epoch history names every exit's loss.
    let hist =
        kd_core::history::read_history(&common::smoke_results(&root).join(format!("{exp}.history.jsonl")))
            .unwrap();
    let byot = hist.iter().find(|h| h.variant == "byot").unwrap();
    let parts = &byot.epochs[0].loss_parts;
    for k in ["ce-exit-1", "ce-exit-2", "ce-exit-3", "kd", "feature"] {
        assert!(parts.contains_key(k), "{k} missing from {parts:?}");
    }
    // The saved multi-exit model evaluates as its deepest exit.
    let hash12 = &rows[0].config_hash[..12];
    let model = root.join("runs").join(exp).join(hash12).join("byot-seed0.safetensors");
    let ev = kd(
        &[
            "eval",
            "--checkpoint",
            model.to_str().unwrap(),
            "--dataset",
            "uoft-cs/cifar10",
            "--revision",
            "0b2714987fa478483af9968de7c934580d0bb9a2",
            "--split",
            "test",
            "--limit",
            "100",
        ],
        &root,
        &hf,
    );
    assert!(ev.status.success(), "{}", stderr(&ev));
    let deepest = rows.iter().find(|r| r.role == "exit-3" && r.metric == "top1").unwrap();
    let line = String::from_utf8_lossy(&ev.stdout);
    assert!(line.contains(&format!("top1 {:.2}", deepest.value)), "{line} vs exit-3 {}", deepest.value);
}

#[test]
fn cifar100_smoke_on_generated_fixtures_trains_resnet18_with_four_exits() {
    let hf = tempfile::tempdir().unwrap();
    let fixture = kd_fixtures::write_cifar100_hub(hf.path(), 1, 1).unwrap();
    let exp = "self-distill-cifar100";
    let dir = scratch_project(&[(&format!("{exp}.toml"), real_recipe(exp))]);
    let root = dir.path().join("proj");
    let out = kd(&["reproduce", exp, "--profile", "smoke"], &root, hf.path());
    assert!(out.status.success(), "{}", stderr(&out));
    let rows = read_rows(&common::smoke_results(&root).join(format!("{exp}.csv"))).unwrap();
    assert_eq!(rows.len(), 2 + 2 * 5, "plain top1/top5 + 5 byot roles x 2 metrics");
    check_rows(&rows, "resnet18", 4);
    assert!(rows
        .iter()
        .all(|r| r.revision == fixture.commit && r.train_examples == 100 && r.eval_examples == 100));
    // ResNet-18 for 100 classes.
    assert_eq!(rows.iter().find(|r| r.variant == "plain").unwrap().params, 11_220_132);
}

#[test]
fn an_exit_count_the_backbone_cannot_have_is_refused_before_training() {
    let hf = tempfile::tempdir().unwrap();
    let exp = "self-distill-cifar10";
    let dir = scratch_project(&[(&format!("{exp}.toml"), real_recipe(exp))]);
    let root = dir.path().join("proj");
    // ResNet-20 has 3 stages; the smoke profile asks for 4 exits.
    let out = kd(&["reproduce", exp, "--profile", "smoke", "--set", "distill.exits=4"], &root, hf.path());
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("exits = 4") && err.contains("resnet20") && err.contains("3 stages"), "{err}");
    assert!(!common::smoke_results(&root).join(format!("{exp}.csv")).exists(), "nothing ran");
}
