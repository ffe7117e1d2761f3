//! A method that owns a trainable parameter and reads a teacher feature, through the whole
//! pipeline: `fitnet-cifar100` (FitNet's regressor on the real third-party CIFAR-100 teacher's
//! middle stage) trains, checkpoints its regressor beside the student, is killed after its
//! first epoch, resumes, and ends bit-identical to an uninterrupted run — rows, student and
//! regressor weights, and their optimiser state.

mod common;

use std::path::{Path, PathBuf};

use common::{hf_home_with, kd, kill_when_written, real_recipe, scratch_project, stderr};
use kd_core::checkpoint::load_checkpoint;
use kd_core::results::read_rows;

const EXP: &str = "fitnet-cifar100";
const ARGS: [&str; 8] =
    ["reproduce", EXP, "--profile", "smoke", "--variants", "fitnet", "--set", "train.epochs=3"];

fn run_dir(root: &Path, hash: &str) -> PathBuf {
    root.join("runs").join(EXP).join(&hash[..12])
}

/// Every tensor of a checkpoint as raw f32/f64 bits, by name.
fn tensors(path: &Path) -> Vec<(String, Vec<u8>)> {
    let (t, _) = load_checkpoint(path).unwrap();
    let mut v: Vec<(String, Vec<u8>)> = t
        .iter()
        .map(|(k, t)| {
            let flat = t.flatten_all().unwrap().to_dtype(candle_core::DType::F64).unwrap();
            let bits =
                flat.to_vec1::<f64>().unwrap().iter().flat_map(|x| x.to_bits().to_le_bytes()).collect();
            (k.clone(), bits)
        })
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

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
    let ckpt_a = run_dir(&ra, &student.config_hash).join("fitnet-seed0.ckpt.safetensors");
    let full = tensors(&ckpt_a);
    let owned: Vec<&String> =
        full.iter().map(|(k, _)| k).filter(|k| k.contains("method/regressor.")).collect();
    assert!(
        owned.iter().any(|k| k.starts_with("model.method/regressor.conv.weight"))
            && owned.iter().any(|k| k.starts_with("optim.") && k.contains("method/regressor.")),
        "the checkpoint holds the regressor and its momentum: {owned:?}"
    );

    // Killed after its first epoch checkpoint, then resumed.
    let b = scratch_project(&[(&format!("{EXP}.toml"), real_recipe(EXP))]);
    let rb = b.path().join("proj");
    let ckpt_b = run_dir(&rb, &student.config_hash).join("fitnet-seed0.ckpt.safetensors");
    kill_when_written(&ARGS, &rb, &hf, &ckpt_b);
    let csv = rb.join("results").join(format!("{EXP}.csv"));
    assert!(!csv.exists() || read_rows(&csv).unwrap().is_empty(), "a killed run writes no rows");
    let (_, meta) = load_checkpoint(&ckpt_b).unwrap();
    assert!(meta["completed_epochs"] != "3", "killed before the end");
    let out = kd(&ARGS, &rb, &hf);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("resuming after epoch"), "{}", stderr(&out));
    let got = read_rows(&csv).unwrap();
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(&want) {
        assert_eq!((g.role.as_str(), g.metric.as_str()), (w.role.as_str(), w.metric.as_str()));
        assert_eq!(g.value, w.value, "resumed {} {} differs", g.role, g.metric);
        assert_eq!(g.best_value, w.best_value);
        assert_eq!(g.best_epoch, w.best_epoch);
    }
    let resumed = tensors(&ckpt_b);
    assert_eq!(resumed.len(), full.len());
    for ((ka, va), (kb, vb)) in full.iter().zip(&resumed) {
        assert_eq!(ka, kb);
        assert!(va == vb, "tensor `{ka}` differs after the resume");
    }
}
