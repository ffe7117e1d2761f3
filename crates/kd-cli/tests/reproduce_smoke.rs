//! End to end on real data: `kd reproduce vanilla-kd-cifar10 --profile smoke` trains the plain
//! and KD students, evaluates the real teacher, and appends whole rows; a second invocation
//! skips the finished runs; a run killed mid-way resumes from its checkpoint and ends with the
//! same numbers as an uninterrupted run.

mod common;

use common::{kd, real_recipe, scratch_project, shared_hf_home, stderr};
use kd_core::results::{read_rows, HEADER};

const EXP: &str = "vanilla-kd-cifar10";

#[test]
fn smoke_profile_writes_plain_kd_and_teacher_rows_then_skips() {
    let hf = shared_hf_home();
    let dir = scratch_project(&[(&format!("{EXP}.toml"), real_recipe(EXP))]);
    let root = dir.path().join("proj");
    std::fs::create_dir_all(root.join("results")).unwrap();
    let out = kd(&["reproduce", EXP, "--profile", "smoke"], &root, &hf);
    assert!(out.status.success(), "{}", stderr(&out));
    // Smoke rows are scratch: the committed results/ stays empty unless --results names it.
    let committed: Vec<_> = std::fs::read_dir(root.join("results")).unwrap().collect();
    assert!(committed.is_empty(), "a smoke run wrote into results/: {committed:?}");
    let csv = common::smoke_results(&root).join(format!("{EXP}.csv"));
    assert!(stderr(&out).contains(&csv.display().to_string()), "the run says where its rows went");
    let text = std::fs::read_to_string(&csv).unwrap();
    assert_eq!(text.lines().next().unwrap(), HEADER.join(","));
    let rows = read_rows(&csv).unwrap();
    let find = |variant: &str, role: &str, metric: &str| {
        rows.iter()
            .find(|r| r.variant == variant && r.role == role && r.metric == metric)
            .unwrap_or_else(|| panic!("no {variant}/{role}/{metric} row in {text}"))
    };
    let plain = find("plain", "student", "top1");
    let kd_row = find("kd", "student", "top1");
    let teacher = find("kd", "teacher", "top1");
    assert_eq!(plain.model, "resnet20");
    assert_eq!(teacher.model, "resnet56");
    assert_eq!(plain.params, 269_722);
    assert_eq!(plain.train_examples, 200);
    assert_eq!(plain.eval_examples, 100);
    assert_eq!(plain.revision, "0b2714987fa478483af9968de7c934580d0bb9a2");
    assert_eq!(plain.config_hash.len(), 64);
    assert_eq!(plain.config_hash, kd_row.config_hash);
    assert_eq!(kd_row.teacher_hash, "4bfd97631478d6b638d2764fd2baff3edb1d7d82252d54439343b6596b9b5367");
    assert!(plain.teacher_hash.is_empty());
    // The real teacher is far better than chance even on 100 images.
    assert!(teacher.value > 80.0, "teacher top1 {}", teacher.value);
    for r in [plain, kd_row] {
        assert!((0.0..=100.0).contains(&r.value) && r.best_value >= r.value && r.best_epoch >= 1);
    }
    // Per-epoch history beside the rows, one line per run.
    let hist =
        kd_core::history::read_history(&common::smoke_results(&root).join(format!("{EXP}.history.jsonl")))
            .unwrap();
    assert_eq!(hist.len(), 2);
    assert!(hist.iter().all(|h| h.epochs.len() == 1 && h.entries[0].role == "student"));
    assert_eq!(
        hist.iter().find(|h| h.variant == "kd").unwrap().epochs[0].eval[0].get("top1"),
        Some(kd_row.value)
    );
    // Final models are saved and evaluable.
    let hash12 = &plain.config_hash[..12];
    let model = root.join("runs").join(EXP).join(hash12).join("kd-seed0.safetensors");
    assert!(model.exists(), "{}", model.display());
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
    let line = String::from_utf8_lossy(&ev.stdout);
    assert!(
        line.contains(&format!("top1 {:.2}", kd_row.value)),
        "kd eval agrees with the CSV: {line} vs {}",
        kd_row.value
    );

    // Second invocation: nothing to do, no new rows.
    let again = kd(&["reproduce", EXP, "--profile", "smoke"], &root, &hf);
    assert!(again.status.success());
    assert!(stderr(&again).contains("already in"), "{}", stderr(&again));
    assert_eq!(read_rows(&csv).unwrap().len(), rows.len());
}

#[test]
fn killed_run_resumes_from_its_checkpoint_with_identical_results() {
    let hf = shared_hf_home();
    let args = ["reproduce", EXP, "--profile", "smoke", "--variants", "plain", "--set", "train.epochs=3"];
    // Uninterrupted, and killed after its first epoch checkpoint then resumed: the same rows.
    common::assert_resume_matches_uninterrupted(EXP, &real_recipe(EXP), &args, "plain", &hf);
}

#[test]
fn soft_label_cache_with_a_view_bank_serves_every_kd_step_and_changes_no_number() {
    let hf = shared_hf_home();
    let dir = scratch_project(&[(&format!("{EXP}.toml"), real_recipe(EXP))]);
    let root = dir.path().join("proj");
    let args = [
        "reproduce",
        EXP,
        "--profile",
        "smoke",
        "--set",
        "data.augment.bank=2",
        "--set",
        "teacher.soft_label_cache=true",
        "--force",
    ];
    let first = kd(&args, &root, &hf);
    assert!(first.status.success(), "{}", stderr(&first));
    let e = stderr(&first);
    assert!(e.contains("banked views (2 per example)"), "{e}");
    assert!(e.contains("0 teacher calls, 100.0% served from cache"), "{e}");
    // A second run reuses the stored soft labels and reproduces the same numbers.
    let second = kd(&args, &root, &hf);
    assert!(second.status.success());
    assert!(stderr(&second).contains("(0 new)"), "{}", stderr(&second));
    let rows = read_rows(&common::smoke_results(&root).join(format!("{EXP}.csv"))).unwrap();
    let half = rows.len() / 2;
    assert_eq!(rows.len(), 2 * half);
    for (a, b) in rows[..half].iter().zip(&rows[half..]) {
        assert_eq!(
            (a.variant.as_str(), a.role.as_str(), a.metric.as_str(), a.value),
            (b.variant.as_str(), b.role.as_str(), b.metric.as_str(), b.value)
        );
    }
}

/// A run another process holds (its lock file locked) is skipped with a message, not trained
/// and appended twice; once the lock is free, the run goes ahead.
#[test]
fn a_run_another_process_holds_is_skipped_not_duplicated() {
    let hf = shared_hf_home();
    let dir = scratch_project(&[(&format!("{EXP}.toml"), real_recipe(EXP))]);
    let root = dir.path().join("proj");
    let recipe = kd_run::reproduce::load_recipe_file(&root.join("benchmarks"), EXP)
        .unwrap()
        .resolve(Some("smoke"))
        .unwrap();
    let hash = kd_run::reproduce::recipe_hash(&recipe).unwrap();
    let run_dir = root.join("runs").join(EXP).join(&hash[..12]);
    std::fs::create_dir_all(&run_dir).unwrap();
    let lock = std::fs::File::create(run_dir.join("plain-seed0.lock")).unwrap();
    lock.lock().unwrap();
    let args = ["reproduce", EXP, "--profile", "smoke", "--seeds", "0", "--variants", "plain"];
    let out = kd(&args, &root, &hf);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("plain seed 0: another kd process is running it"), "{}", stderr(&out));
    let csv = common::smoke_results(&root).join(format!("{EXP}.csv"));
    assert!(!csv.exists(), "a held run wrote rows");
    drop(lock);
    let out = kd(&args, &root, &hf);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        read_rows(&csv).unwrap().iter().filter(|r| r.variant == "plain").count(),
        2,
        "top1 and top5, once"
    );
}
