//! A method that owns a trainable parameter and reads a teacher feature, through the whole
//! pipeline: `fitnet-cifar100` (FitNet's regressor on the real third-party CIFAR-100 teacher's
//! middle stage) trains, checkpoints its regressor beside the student, is killed after its
//! first epoch, resumes, and ends bit-identical to an uninterrupted run — rows, student and
//! regressor weights, and their optimiser state.

mod common;

use common::{
    assert_same_rows, assert_same_tensors, checkpoint_bits, hf_home_with, kd, killed_then_resumed,
    real_recipe, run_dir, scratch_project, stderr,
};
use kd_core::results::read_rows;

const EXP: &str = "fitnet-cifar100";
const ARGS: [&str; 8] =
    ["reproduce", EXP, "--profile", "smoke", "--variants", "fitnet", "--set", "train.epochs=3"];

#[test]
fn fitnet_owns_its_regressor_reads_teacher_features_and_resumes_bit_identically() {
    let hf = hf_home_with(&["datasets--uoft-cs--cifar100"]);
    // Uninterrupted reference.
    let a = scratch_project(&[(&format!("{EXP}.toml"), real_recipe(EXP))]);
    let ra = a.path().join("proj");
    let out = kd(&ARGS, &ra, &hf);
    assert!(out.status.success(), "{}", stderr(&out));
    let want = read_rows(&ra.join("results").join(format!("{EXP}.csv"))).unwrap();
    let student = want.iter().find(|r| r.role == "student" && r.metric == "top1").expect("a student row");
    // The student's reported size leaves the regressor out (resnet20b at 100 classes).
    assert_eq!(student.params, 278_324);
    assert!(want.iter().any(|r| r.role == "teacher"), "the teacher's rows are written");
    let ckpt = |root: &std::path::Path| {
        run_dir(root, EXP, &student.config_hash).join("fitnet-seed0.ckpt.safetensors")
    };
    let full = checkpoint_bits(&ckpt(&ra));
    let owned: Vec<&String> =
        full.iter().map(|(k, _)| k).filter(|k| k.contains("method/regressor.")).collect();
    assert!(
        owned.iter().any(|k| k.starts_with("model.method/regressor.conv.weight"))
            && owned.iter().any(|k| k.starts_with("optim.") && k.contains("method/regressor.")),
        "the checkpoint holds the regressor and its momentum: {owned:?}"
    );

    // Killed after its first epoch checkpoint, then resumed.
    let file = format!("{EXP}.toml");
    let recipes = [(file.as_str(), real_recipe(EXP))];
    let (_b, rb) = killed_then_resumed(&recipes, &ARGS, &hf, &format!("{EXP}.csv"), &ckpt, 3);
    let got = read_rows(&rb.join("results").join(format!("{EXP}.csv"))).unwrap();
    assert_same_rows(&got, &want);
    assert_same_tensors(&checkpoint_bits(&ckpt(&rb)), &full);
}
