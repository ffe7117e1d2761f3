//! A method that owns a trainable parameter and reads a teacher feature, through the whole
//! pipeline: `fitnet-cifar100` (FitNet's regressor on the real third-party CIFAR-100 teacher's
//! middle stage) trains, checkpoints its regressor beside the student, is killed after its
//! first epoch, resumes, and ends bit-identical to an uninterrupted run — rows, student and
//! regressor weights, and their optimiser state.

mod common;

use common::{assert_resume_matches_uninterrupted, hf_home_with, real_recipe};

const EXP: &str = "fitnet-cifar100";
const ARGS: [&str; 8] =
    ["reproduce", EXP, "--profile", "smoke", "--variants", "fitnet", "--set", "train.epochs=3"];

#[test]
fn fitnet_owns_its_regressor_reads_teacher_features_and_resumes_bit_identically() {
    let hf = hf_home_with(&["datasets--uoft-cs--cifar100"]);
    let run = assert_resume_matches_uninterrupted(EXP, &real_recipe(EXP), &ARGS, "fitnet", &hf);
    let student = run.rows.iter().find(|r| r.role == "student" && r.metric == "top1").expect("a student row");
    // The student's reported size leaves the regressor out (resnet20b at 100 classes).
    assert_eq!(student.params, 278_324);
    assert!(run.rows.iter().any(|r| r.role == "teacher"), "the teacher's rows are written");
    let owned: Vec<&String> =
        run.checkpoint.iter().map(|(k, _)| k).filter(|k| k.contains("method/regressor.")).collect();
    assert!(
        owned.iter().any(|k| k.starts_with("model.method/regressor.conv.weight"))
            && owned.iter().any(|k| k.starts_with("optim.") && k.contains("method/regressor.")),
        "the checkpoint holds the regressor and its momentum: {owned:?}"
    );
}
