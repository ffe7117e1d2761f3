//! CIFAR-100's 20 coarse classes are a recipe change: `data.label_column = "coarse_label"` with
//! `data.num_classes = 20` trains on them; the 100-class teacher is then refused for KD, naming
//! both label spaces.

mod common;

use common::{hf_home_with, kd, real_recipe, scratch_project, stderr};

const EXP: &str = "vanilla-kd-cifar100";
const COARSE: [&str; 4] = ["--set", "data.label_column=\"coarse_label\"", "--set", "data.num_classes=20"];

#[test]
fn coarse_labels_train_a_20_class_student_and_refuse_the_100_class_teacher() {
    let hf = hf_home_with(&["datasets--uoft-cs--cifar100"]);
    let dir = scratch_project(&[(&format!("{EXP}.toml"), real_recipe(EXP))]);
    let root = dir.path().join("proj");
    let mut plain = vec!["reproduce", EXP, "--profile", "smoke", "--variants", "plain"];
    plain.extend(COARSE);
    let out = kd(&plain, &root, &hf);
    assert!(out.status.success(), "{}", stderr(&out));
    let rows = kd_core::results::read_rows(&common::smoke_results(&root).join(format!("{EXP}.csv"))).unwrap();
    let top5 = rows.iter().find(|r| r.metric == "top5").expect("a top-5 row");
    // 20 classes: a chance-level top-5 is 25%, far above the 100-class 5%.
    assert!(top5.value >= 15.0, "coarse top-5 {}", top5.value);
    // resnet20b's head has 20 outputs, 80 fewer than at 100 classes (64 weights + 1 bias each).
    assert_eq!(rows[0].params, 278_324 - 80 * 65, "{:?}", rows[0]);

    let mut kd_args = vec!["reproduce", EXP, "--profile", "smoke", "--variants", "kd"];
    kd_args.extend(COARSE);
    let out = kd(&kd_args, &root, &hf);
    assert!(!out.status.success(), "a 100-class teacher cannot teach 20 classes");
    let e = stderr(&out);
    assert!(e.contains("100") && e.contains("20"), "{e}");
}
