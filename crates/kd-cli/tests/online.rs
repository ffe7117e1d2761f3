//! Online distillation end to end: `kd reproduce` of the DML and ONE recipes' smoke profiles
//! writes one row per peer / branch and for the ensemble, next to the plain network. The
//! CIFAR-100 recipes run on a generated CIFAR-100 in the hub layout (no copy of the real one is
//! reachable here); their CIFAR-10 twins run on the real shared cache.

mod common;

use std::path::Path;

use common::{kd, real_recipe, scratch_project, shared_hf_home, stderr};
use kd_core::results::{read_rows, ResultRow};
use kd_fixtures::{write_cifar100_hub, CIFAR100_COMMIT};

const CIFAR10_REVISION: &str = "0b2714987fa478483af9968de7c934580d0bb9a2";

/// Runs the smoke profile of `exp` in a scratch project and returns its rows.
fn smoke(exp: &str, hf_home: &Path) -> (tempfile::TempDir, Vec<ResultRow>) {
    let dir = scratch_project(&[(&format!("{exp}.toml"), real_recipe(exp))]);
    let root = dir.path().join("proj");
    let out = kd(&["reproduce", exp, "--profile", "smoke"], &root, hf_home);
    assert!(out.status.success(), "{}", stderr(&out));
    let rows = read_rows(&common::smoke_results(&root).join(format!("{exp}.csv"))).unwrap();
    (dir, rows)
}

/// The top-1 row of `variant`/`role`, checked for sanity.
fn row<'a>(rows: &'a [ResultRow], variant: &str, role: &str) -> &'a ResultRow {
    let r = rows
        .iter()
        .find(|r| r.variant == variant && r.role == role && r.metric == "top1")
        .unwrap_or_else(|| panic!("no {variant}/{role}/top1 row among {rows:#?}"));
    assert!((0.0..=100.0).contains(&r.value) && r.best_value >= r.value && r.best_epoch >= 1, "{r:?}");
    assert!(r.teacher_hash.is_empty(), "online KD has no teacher: {r:?}");
    assert!(
        rows.iter().any(|t| t.variant == variant && t.role == role && t.metric == "top5"),
        "no top5 row for {variant}/{role}"
    );
    r
}

/// The roles of `variant`'s top-1 rows, in CSV order.
fn roles(rows: &[ResultRow], variant: &str) -> Vec<String> {
    rows.iter().filter(|r| r.variant == variant && r.metric == "top1").map(|r| r.role.clone()).collect()
}

fn check_dml(rows: &[ResultRow], arch: &str, train: usize, eval: usize, revision: &str) {
    assert_eq!(roles(rows, "plain"), ["student"]);
    assert_eq!(roles(rows, "dml"), ["peer-1", "peer-2", "ensemble"]);
    let plain = row(rows, "plain", "student");
    let (p1, p2, ens) =
        (row(rows, "dml", "peer-1"), row(rows, "dml", "peer-2"), row(rows, "dml", "ensemble"));
    assert_eq!((plain.model.as_str(), p1.model.as_str(), p2.model.as_str()), (arch, arch, arch));
    assert_eq!(ens.model, format!("{arch}+{arch}"));
    assert_eq!((p1.params, p2.params, ens.params), (plain.params, plain.params, 2 * plain.params));
    assert_eq!((plain.train_examples, plain.eval_examples), (train, eval));
    assert_eq!((p1.train_examples, p1.revision.as_str()), (train, revision));
    assert_eq!(plain.config_hash, p1.config_hash);
    assert_eq!(p1.method, "dml");
}

fn check_one(rows: &[ResultRow], arch: &str, classes: usize, train: usize, revision: &str) {
    assert_eq!(roles(rows, "plain"), ["student"]);
    assert_eq!(roles(rows, "one"), ["branch-1", "branch-2", "branch-3", "ensemble"]);
    let plain = row(rows, "plain", "student");
    let ens = row(rows, "one", "ensemble");
    for i in 1..=3 {
        let b = row(rows, "one", &format!("branch-{i}"));
        // Each branch with the shared trunk is exactly the backbone trained alone.
        assert_eq!((b.model.as_str(), b.params), (arch, plain.params));
    }
    assert_eq!(ens.model, format!("one-{arch}-m3"));
    // Trunk + 3 branches + gate: more than one network, less than three (the trunk is shared).
    assert!(ens.params > plain.params + 2 * 64 * classes && ens.params < 3 * plain.params, "{}", ens.params);
    assert_eq!((ens.train_examples, ens.revision.as_str(), ens.method.as_str()), (train, revision, "one"));
}

fn cifar100_home() -> tempfile::TempDir {
    let hf = tempfile::tempdir().unwrap();
    // 2 train / 1 test image per class: the smoke profile's 200 / 100 class-balanced subsets.
    let fx = write_cifar100_hub(hf.path(), 2, 1).unwrap();
    assert_eq!((fx.train_examples, fx.test_examples), (200, 100));
    hf
}

#[test]
fn dml_cifar100_smoke_on_generated_cifar100() {
    let hf = cifar100_home();
    let (dir, rows) = smoke("dml-cifar100", hf.path());
    check_dml(&rows, "resnet32", 200, 100, CIFAR100_COMMIT);
    // Every peer is saved; the first under the run's plain name (evaluable by `kd eval`).
    let hash12 = &rows[0].config_hash[..12];
    let run_dir = dir.path().join("proj/runs/dml-cifar100").join(hash12);
    assert!(run_dir.join("dml-seed0.safetensors").exists());
    assert!(run_dir.join("dml-seed0-peer-2.safetensors").exists());
}

#[test]
fn one_cifar100_smoke_on_generated_cifar100() {
    let hf = cifar100_home();
    let (_dir, rows) = smoke("one-cifar100", hf.path());
    check_one(&rows, "resnet32", 100, 200, CIFAR100_COMMIT);
}

#[test]
fn dml_cifar10_smoke_on_real_data() {
    let hf = shared_hf_home();
    let (_dir, rows) = smoke("dml-cifar10", &hf);
    check_dml(&rows, "resnet8", 200, 100, CIFAR10_REVISION);
}

#[test]
fn one_cifar10_smoke_on_real_data() {
    let hf = shared_hf_home();
    let (_dir, rows) = smoke("one-cifar10", &hf);
    check_one(&rows, "resnet8", 10, 200, CIFAR10_REVISION);
}
