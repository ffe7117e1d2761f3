//! A recipe-trained teacher (`teacher.train`): trained once on real Tiny-ImageNet images,
//! cached under the hash of its configuration, reused by later runs and seeds, retrained when
//! a teacher field changes; its accuracy is a `teacher` row.

mod common;

use common::{hf_home_with, kd, real_recipe, scratch_project, shared_hf_home, stderr};
use kd_core::results::read_rows;

const EXP: &str = "vanilla-kd-tiny-imagenet";

#[test]
fn teacher_is_trained_once_then_reused_and_retrained_when_its_config_changes() {
    let hf = hf_home_with(&["datasets--zh-plus--tiny-imagenet"]);
    let dir = scratch_project(&[(&format!("{EXP}.toml"), real_recipe(EXP))]);
    let root = dir.path().join("proj");
    let smoke = ["reproduce", EXP, "--profile", "smoke", "--variants", "kd"];

    let first = kd(&[&smoke[..], &["--seeds", "0"]].concat(), &root, &hf);
    assert!(first.status.success(), "{}", stderr(&first));
    assert!(stderr(&first).contains("not in the cache, training it"), "{}", stderr(&first));
    let teachers = root.join(".kd-cache/teachers");
    let files: Vec<_> = std::fs::read_dir(&teachers).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(files.len(), 1, "one trained teacher, no stray checkpoint: {files:?}");
    let mtime = std::fs::metadata(&files[0]).unwrap().modified().unwrap();

    // Another seed: the same teacher, from the cache, not retrained.
    let second = kd(&[&smoke[..], &["--seeds", "1"]].concat(), &root, &hf);
    assert!(second.status.success(), "{}", stderr(&second));
    assert!(stderr(&second).contains("reusing"), "{}", stderr(&second));
    assert!(!stderr(&second).contains("training it"));
    assert_eq!(std::fs::metadata(&files[0]).unwrap().modified().unwrap(), mtime);

    let rows = read_rows(&common::smoke_results(&root).join(format!("{EXP}.csv"))).unwrap();
    let teacher: Vec<_> = rows.iter().filter(|r| r.role == "teacher" && r.metric == "top1").collect();
    assert_eq!(teacher.len(), 2);
    assert_eq!(teacher[0].value, teacher[1].value, "both seeds saw the same teacher");
    assert_eq!(teacher[0].teacher_hash.len(), 64);
    assert_eq!(teacher[0].model, "resnet8");
    let student = rows.iter().find(|r| r.role == "student" && r.variant == "kd").unwrap();
    assert_eq!(student.teacher_hash, teacher[0].teacher_hash);

    // A teacher field changes: a new teacher is trained beside the old one.
    let third = kd(&[&smoke[..], &["--seeds", "0", "--set", "teacher.train.seed=7"]].concat(), &root, &hf);
    assert!(third.status.success(), "{}", stderr(&third));
    assert!(stderr(&third).contains("training it"), "{}", stderr(&third));
    assert_eq!(std::fs::read_dir(&teachers).unwrap().count(), 2);
}

#[test]
fn a_teacher_needs_exactly_one_source() {
    let hf = shared_hf_home();
    let both = real_recipe(EXP).replace(
        "train = { epochs = 200, seed = 0 }",
        "train = { epochs = 200, seed = 0 }\ncheckpoint = { sha256 = \"00\" }",
    );
    let neither = real_recipe(EXP).replace("train = { epochs = 200, seed = 0 }", "");
    for (text, want) in [(both, "both `checkpoint` and `train`"), (neither, "needs `checkpoint`")] {
        let dir = scratch_project(&[(&format!("{EXP}.toml"), text)]);
        let out = kd(&["reproduce", EXP, "--profile", "smoke"], &dir.path().join("proj"), &hf);
        assert!(!out.status.success());
        assert!(stderr(&out).contains(want), "{}", stderr(&out));
    }
}
