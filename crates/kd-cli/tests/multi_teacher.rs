//! `kd reproduce multi-teacher-cifar10 --profile smoke` on the real data and the four real
//! teachers: one row per teacher, the plain student, single-teacher KD and every combination
//! rule; `weighted` with a one-hot weight reproduces single-teacher KD's numbers exactly.

mod common;

use common::{kd, real_recipe, scratch_project, shared_hf_home, stderr};
use kd_core::results::read_rows;

const EXP: &str = "multi-teacher-cifar10";

#[test]
fn smoke_profile_compares_rules_and_one_hot_weights_equal_single_teacher_kd() {
    let hf = shared_hf_home();
    let dir = scratch_project(&[(&format!("{EXP}.toml"), real_recipe(EXP))]);
    let root = dir.path().join("proj");
    let out = kd(&["reproduce", EXP, "--profile", "smoke"], &root, &hf);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("teacher resnet44:"), "teacher cost is reported");
    let csv = common::smoke_results(&root).join(format!("{EXP}.csv"));
    let rows = read_rows(&csv).unwrap();
    let top1 = |variant: &str, role: &str| {
        rows.iter()
            .filter(|r| r.variant == variant && r.role == role && r.metric == "top1")
            .collect::<Vec<_>>()
    };
    for v in ["plain", "single", "mean", "weighted", "confidence", "entropy"] {
        let s = top1(v, "student");
        assert_eq!(s.len(), 1, "{v}");
        assert_eq!(s[0].model, "resnet8");
        if v == "plain" {
            assert!(top1(v, "teacher").is_empty());
            assert!(s[0].teacher_hash.is_empty());
        } else {
            let teachers: Vec<&str> = top1(v, "teacher").iter().map(|r| r.model.as_str()).collect();
            let want: &[&str] =
                if v == "single" { &["resnet56"] } else { &["resnet20", "resnet32", "resnet44", "resnet56"] };
            assert_eq!(teachers, want, "{v}");
            assert!(top1(v, "teacher").iter().all(|r| r.value > 80.0));
        }
    }
    // `single` distils from resnet56 alone; the combination rules from all four.
    assert_eq!(top1("single", "student")[0].teacher_hash.len(), 64);
    assert_eq!(top1("mean", "student")[0].teacher_hash.split('+').count(), 4);

    // weighted = [0, 0, 0, 1] is vanilla KD from resnet56: the same numbers, to the bit.
    let out = kd(
        &[
            "reproduce",
            EXP,
            "--profile",
            "smoke",
            "--variants",
            "weighted",
            "--set",
            "distill.weights=[0.0, 0.0, 0.0, 1.0]",
        ],
        &root,
        &hf,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let rows = read_rows(&csv).unwrap();
    let single =
        rows.iter().find(|r| r.variant == "single" && r.role == "student" && r.metric == "top1").unwrap();
    let one_hot = rows
        .iter()
        .find(|r| {
            r.variant == "weighted"
                && r.role == "student"
                && r.metric == "top1"
                && r.config_hash != single.config_hash
        })
        .unwrap();
    assert_eq!(one_hot.value.to_bits(), single.value.to_bits(), "{} vs {}", one_hot.value, single.value);
    let hist =
        kd_core::history::read_history(&common::smoke_results(&root).join(format!("{EXP}.history.jsonl")))
            .unwrap();
    let loss = |hash: &str, variant: &str| {
        hist.iter().find(|h| h.config_hash == hash && h.variant == variant).unwrap().epochs[0].train_loss
    };
    assert_eq!(loss(&one_hot.config_hash, "weighted"), loss(&single.config_hash, "single"));
}

#[test]
fn bad_multi_teacher_recipes_are_refused_with_the_key() {
    let hf = shared_hf_home();
    let no_weights = real_recipe(EXP).replace("weights = [0.1, 0.2, 0.3, 0.4]\n", "");
    let bad_sum = real_recipe(EXP).replace("weights = [0.1, 0.2, 0.3, 0.4]", "weights = [0.5, 0.5, 0.5]");
    for (text, want) in
        [(no_weights, "variant `weighted` needs `weights`"), (bad_sum, "3 values for 4 teachers")]
    {
        let dir = scratch_project(&[(&format!("{EXP}.toml"), text)]);
        let root = dir.path().join("proj");
        let out = kd(&["reproduce", EXP, "--profile", "smoke"], &root, &hf);
        assert!(!out.status.success());
        assert!(stderr(&out).contains(want), "{}", stderr(&out));
    }
}
