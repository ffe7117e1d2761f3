//! CRD and ReviewKD through the whole pipeline on real data: recipes derived from
//! `fitnet-cifar100`'s smoke profile (CIFAR-100, 200 train / 100 eval images, the real
//! third-party ResNet-56 teacher, a ResNet-20 student) run with `kd reproduce` and write finite
//! rows. CRD's memory bank (both banks, its normalisers and the negative sampler's state) is
//! checkpointed as method buffers: a run killed after its first epoch resumes and ends
//! bit-identical to an uninterrupted one. A bank that cannot supply `nce_k` negatives from the
//! 200-image subset is refused with a message saying what to set.

mod common;

use std::path::Path;

use common::{
    assert_resume_matches_uninterrupted, checkpoint_bits, hf_home_with, kd, real_recipe, scratch_project,
    stderr,
};

/// The run folder of experiment `exp` whose config hash is `hash`, under project `root`.
fn run_dir(root: &Path, exp: &str, hash: &str) -> std::path::PathBuf {
    root.join("runs").join(exp).join(&hash[..12])
}
use kd_core::results::{read_rows, ResultRow};

/// `fitnet-cifar100` (data, teacher, student, schedule and profiles) as experiment `exp` of
/// `method`, with `distill` as its `[distill]` table and `smoke` appended to its smoke profile.
fn derived_recipe(exp: &str, method: &str, distill: &str, smoke: &str) -> String {
    let base = real_recipe("fitnet-cifar100");
    let start = base.find("\n[distill]\n").expect("fitnet-cifar100 has a [distill] table");
    let end = base.find("\n[profiles.paper]").expect("fitnet-cifar100 has a paper profile");
    let head = base[..start]
        .replace("name = \"fitnet-cifar100\"", &format!("name = \"{exp}\""))
        .replace("method = \"fitnet\"", &format!("method = \"{method}\""))
        .replace("variants = [\"plain\", \"fitnet\"]", &format!("variants = [\"plain\", \"{method}\"]"));
    assert!(head.contains(&format!("method = \"{method}\"")), "the base recipe changed: {head}");
    let tail = &base[end..];
    assert!(tail.trim_end().ends_with("experiment.seeds = [0]"), "the smoke profile is no longer last");
    format!("{head}\n[distill]\n{distill}\n{tail}{smoke}")
}

const CRD_EXP: &str = "crd-cifar100";
/// RepDistiller's CRD weights (`-a 0 -b 0.8`) and bank settings, its default nce_k = 16384
/// replaced in the smoke profile: 200 examples cannot supply more than 199 negatives.
const CRD_DISTILL: &str = "gamma = 1.0\nalpha = 0.0\nbeta = 0.8\nfeat_dim = 128\nnce_t = 0.07\nnce_m = 0.5\n";
const CRD_SMOKE: &str = "distill.nce_k = 64\n";
const CRD_ARGS: [&str; 6] = ["reproduce", CRD_EXP, "--profile", "smoke", "--variants", "crd"];

const REVIEW_EXP: &str = "reviewkd-cifar100";
/// ReviewKD's resnet56 → resnet20 weight (script/reviewKD.sh `--kd-loss-weight 0.6`); the smoke
/// profile shortens the 20-epoch warm-up so that the second epoch has the full HCL term.
const REVIEW_DISTILL: &str = "gamma = 1.0\nbeta = 0.6\nwarmup_epochs = 20.0\n";
const REVIEW_SMOKE: &str = "distill.warmup_epochs = 1.0\n";

fn hf() -> std::path::PathBuf {
    hf_home_with(&["datasets--uoft-cs--cifar100"])
}

/// The student's and teacher's rows, finite; returns the student's top-1 row.
fn check_rows(rows: &[ResultRow], method: &str) -> ResultRow {
    let student = rows
        .iter()
        .find(|r| r.role == "student" && r.metric == "top1" && r.variant == method)
        .unwrap_or_else(|| panic!("no {method} student row in {rows:?}"))
        .clone();
    assert_eq!((student.method.as_str(), student.model.as_str()), (method, "resnet20b"));
    // The student's reported size leaves the method's own parameters out.
    assert_eq!(student.params, 278_324);
    assert_eq!((student.train_examples, student.eval_examples), (200, 100));
    assert!(rows.iter().any(|r| r.role == "teacher"), "the teacher's rows are written");
    for r in rows {
        assert!(r.value.is_finite() && r.best_value.is_finite(), "{r:?}");
        assert!((0.0..=100.0).contains(&r.value), "{r:?}");
    }
    student
}

#[test]
fn crd_runs_checkpoints_its_memory_bank_and_resumes_bit_identically() {
    let hf = hf();
    let file = format!("{CRD_EXP}.toml");
    let recipe = derived_recipe(CRD_EXP, "crd", CRD_DISTILL, CRD_SMOKE);
    let recipes = [(file.as_str(), recipe.clone())];

    // Uninterrupted, and killed after its first epoch then resumed: the same rows and the same
    // checkpoint, memory bank and sampler state included.
    let run = assert_resume_matches_uninterrupted(CRD_EXP, &recipe, &CRD_ARGS, "crd", &hf);
    let student = check_rows(&run.rows, "crd");
    let full = checkpoint_bits(
        &run_dir(&run.root(), CRD_EXP, &student.config_hash).join("crd-seed0.ckpt.safetensors"),
    );
    let has = |name: &str| full.iter().any(|(k, _)| k == name);
    for buffer in ["contrast.memory_v1", "contrast.memory_v2", "contrast.params", "sampler.state"] {
        assert!(has(&format!("model.method/{buffer}")), "no buffer {buffer} in the checkpoint");
        assert!(
            !full.iter().any(|(k, _)| k.starts_with("optim.") && k.contains(buffer)),
            "{buffer} optimised"
        );
    }
    for head in ["embed_s.linear.weight", "embed_t.linear.bias"] {
        assert!(has(&format!("model.method/{head}")), "no head {head} in the checkpoint");
        assert!(
            full.iter().any(|(k, _)| k.starts_with("optim.") && k.ends_with(&format!("method/{head}"))),
            "{head} has no momentum"
        );
    }
    let bank = &full.iter().find(|(k, _)| k == "model.method/contrast.memory_v1").unwrap().1;
    assert_eq!(bank.len(), 200 * 128 * 8, "one bank row per training example");

    // RepDistiller's nce_k on the 200-image subset: refused, saying what to set.
    let c = scratch_project(&recipes);
    let rc = c.path().join("proj");
    let mut args = CRD_ARGS.to_vec();
    args.extend(["--set", "distill.nce_k=16384"]);
    let out = kd(&args, &rc, &hf);
    assert!(!out.status.success(), "an nce_k of 16384 on 200 examples must be refused");
    let e = stderr(&out);
    assert!(
        e.contains("nce_k = 16384")
            && e.contains("memory bank")
            && e.contains("200")
            && e.contains("[distill]"),
        "{e}"
    );
}

#[test]
fn reviewkd_runs_and_checkpoints_its_abfs_and_running_statistics() {
    let hf = hf();
    let file = format!("{REVIEW_EXP}.toml");
    let recipes = [(file.as_str(), derived_recipe(REVIEW_EXP, "reviewkd", REVIEW_DISTILL, REVIEW_SMOKE))];
    let dir = scratch_project(&recipes);
    let root = dir.path().join("proj");
    let out = kd(&["reproduce", REVIEW_EXP, "--profile", "smoke", "--variants", "reviewkd"], &root, &hf);
    assert!(out.status.success(), "{}", stderr(&out));
    let rows = read_rows(&common::smoke_results(&root).join(format!("{REVIEW_EXP}.csv"))).unwrap();
    let student = check_rows(&rows, "reviewkd");
    let ckpt = run_dir(&root, REVIEW_EXP, &student.config_hash).join("reviewkd-seed0.ckpt.safetensors");
    let tensors = checkpoint_bits(&ckpt);
    let has = |name: &str| tensors.iter().any(|(k, _)| k == name);
    assert!(has("model.method/abfs.0.conv1.0.weight") && has("model.method/abfs.3.att_conv.0.weight"));
    assert!(
        tensors.iter().any(|(k, _)| k.starts_with("optim.") && k.ends_with("method/abfs.0.conv1.0.weight")),
        "the ABFs have no momentum"
    );
    assert!(
        has("model.method/abfs.0.conv1.1.running_mean") && has("model.method/abfs.3.conv2.1.running_var")
    );
    assert!(
        !tensors.iter().any(|(k, _)| k.starts_with("optim.") && k.contains("running_")),
        "statistics optimised"
    );
    // The history logs the raw HCL beside CE and KD.
    let hist = kd_core::history::read_history(
        &common::smoke_results(&root).join(format!("{REVIEW_EXP}.history.jsonl")),
    )
    .unwrap();
    assert_eq!(hist.len(), 1);
    assert_eq!(hist[0].epochs.len(), 2);
    for e in &hist[0].epochs {
        let parts: Vec<&str> = e.loss_parts.keys().map(String::as_str).collect();
        assert_eq!(parts, ["ce", "hcl", "kd"]);
        assert!(e.loss_parts.values().all(|v| v.is_finite()) && e.train_loss.is_finite(), "{e:?}");
    }
}
