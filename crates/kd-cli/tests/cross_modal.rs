//! `kd reproduce cross-modal-avmnist --profile smoke` end to end on the real shared hub cache
//! (MNIST images + FSDD recordings): the rows it writes, the cached teacher, the skip on re-run,
//! and a clear error for audio at an unexpected sample rate.

mod common;

use std::path::{Path, PathBuf};

const HEADER: &str =
    "experiment,method,variant,profile,seed,role,model,params,dataset,revision,train_examples,\
eval_examples,split,metric,value,best_value,best_epoch,epochs,wall_seconds,examples_per_second,device,\
config_hash,teacher_hash,git_commit,kd_bench_version,started_at";

/// The shared cache with both datasets; fails the test, naming what is missing, otherwise.
fn hf_home() -> PathBuf {
    common::hf_home_with(&["datasets--ylecun--mnist", "datasets--Jakobovski--free-spoken-digit-dataset"])
}

fn project() -> (tempfile::TempDir, PathBuf) {
    let dir =
        common::scratch_project(&[("cross-modal-avmnist.toml", common::real_recipe("cross-modal-avmnist"))]);
    let root = dir.path().join("proj");
    (dir, root)
}

fn rows(root: &Path) -> Vec<Vec<String>> {
    let text = std::fs::read_to_string(common::smoke_results(root).join("cross-modal-avmnist.csv")).unwrap();
    let mut lines = text.lines();
    assert_eq!(lines.next().unwrap(), HEADER);
    lines.map(|l| l.split(',').map(str::to_string).collect()).collect()
}

#[test]
fn smoke_profile_writes_teacher_student_and_fusion_rows() {
    let home = hf_home();
    let (_dir, root) = project();
    let out = common::kd(&["reproduce", "cross-modal-avmnist", "--profile", "smoke"], &root, &home);
    assert!(out.status.success(), "{}", common::stderr(&out));
    let rows = rows(&root);
    let col = |name: &str| HEADER.split(',').position(|c| c == name).unwrap();
    let (variant, role, model, metric, value) =
        (col("variant"), col("role"), col("model"), col("metric"), col("value"));
    let find = |v: &str, r: &str| -> Vec<&Vec<String>> {
        rows.iter().filter(|x| x[variant] == v && x[role] == r && x[metric] == "top1").collect()
    };
    for v in ["plain", "kd", "kd-feat"] {
        let s = find(v, "student");
        assert_eq!(s.len(), 1, "{v} student row");
        assert_eq!(s[0][model], "audio-cnn");
        let acc: f64 = s[0][value].parse().unwrap();
        assert!((0.0..=100.0).contains(&acc));
    }
    let f = find("fusion", "student");
    assert_eq!(f.len(), 1);
    assert_eq!(f[0][model], "lenet+audio-cnn");
    // The image teacher is reported with the runs it taught, not with plain or fusion.
    assert_eq!(find("kd", "teacher").len(), 1);
    assert_eq!(find("kd-feat", "teacher").len(), 1);
    assert!(find("plain", "teacher").is_empty() && find("fusion", "teacher").is_empty());
    let t = find("kd", "teacher")[0];
    assert_eq!(t[model], "lenet");
    assert_eq!(t[col("teacher_hash")].len(), 64, "SHA-256 of the teacher weights");
    // Smoke: 20 pairs per class to train, 5 per class to test.
    for r in rows.iter() {
        assert_eq!(r[col("train_examples")], "200");
        assert_eq!(r[col("eval_examples")], "50");
        assert_eq!(r[col("dataset")], "ylecun/mnist+Jakobovski/free-spoken-digit-dataset");
        assert_eq!(r[col("method")], "cross-modal");
    }
    // The trained teacher is cached by its config hash and reused; finished runs are skipped.
    let cached: Vec<_> = std::fs::read_dir(root.join(".kd-cache/cross-modal"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".safetensors"))
        .collect();
    assert_eq!(cached.len(), 1, "one cached teacher, no leftover epoch checkpoint");
    let again = common::kd(
        &["reproduce", "cross-modal-avmnist", "--profile", "smoke", "--variants", "kd", "--force"],
        &root,
        &home,
    );
    assert!(again.status.success());
    assert!(common::stderr(&again).contains("reusing"), "the cached teacher is reused");
    let again = common::kd(&["reproduce", "cross-modal-avmnist", "--profile", "smoke"], &root, &home);
    assert!(common::stderr(&again).contains("nothing to do"));
}

#[test]
fn audio_at_an_unexpected_sample_rate_is_a_clear_error() {
    let home = hf_home();
    let (_dir, root) = project();
    let out = common::kd(
        &[
            "reproduce",
            "cross-modal-avmnist",
            "--profile",
            "smoke",
            "--variants",
            "plain",
            "--set",
            "distill.audio.sample_rate=16000",
        ],
        &root,
        &home,
    );
    assert!(!out.status.success());
    let e = common::stderr(&out);
    assert!(e.contains("sample rate 8000 Hz") && e.contains("16000"), "{e}");
    assert!(e.contains("Jakobovski/free-spoken-digit-dataset") && e.contains("row "), "names the clip: {e}");
}
