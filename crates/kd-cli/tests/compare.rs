//! `kd compare` on synthetic results with numbers worked out by hand.

use std::path::Path;

use kd_analysis::compare::{compare, newest_configs, Format};
use kd_core::results::{append_rows, ResultRow};

fn row(variant: &str, role: &str, seed: u64, value: f64, best: f64, hash: &str) -> ResultRow {
    ResultRow {
        experiment: "toy".into(),
        method: "vanilla".into(),
        variant: variant.into(),
        profile: "cpu".into(),
        seed,
        role: role.into(),
        model: if role == "teacher" { "resnet56".into() } else { "resnet20".into() },
        params: 1,
        dataset: "uoft-cs/cifar10".into(),
        revision: "r".into(),
        train_examples: 100,
        eval_examples: 50,
        split: "test".into(),
        metric: "top1".into(),
        value,
        best_value: best,
        best_epoch: 3,
        epochs: 4,
        wall_seconds: 1.0,
        examples_per_second: 1.0,
        device: "cpu-2t".into(),
        config_hash: hash.into(),
        teacher_hash: "t".into(),
        git_commit: "c".into(),
        kd_bench_version: "0.1.0".into(),
        started_at: "2026-11-28T00:00:00Z".into(),
    }
}

/// plain: 70, 71, 72 (best +1); kd: 71, 73, 75 (differences 1, 2, 3); teacher 93.39 per kd run.
pub fn toy_rows(hash: &str) -> Vec<ResultRow> {
    let mut rows = Vec::new();
    for (seed, (p, k)) in [(70.0, 71.0), (71.0, 73.0), (72.0, 75.0)].into_iter().enumerate() {
        let seed = seed as u64;
        rows.push(row("plain", "student", seed, p, p + 1.0, hash));
        rows.push(row("kd", "student", seed, k, k + 0.5, hash));
        rows.push(row("kd", "teacher", seed, 93.39, 93.39, hash));
        let mut top5 = row("kd", "student", seed, 99.0, 99.0, hash);
        top5.metric = "top5".into();
        rows.push(top5);
    }
    rows
}

fn by(s: &str) -> Vec<String> {
    s.split(',').map(String::from).collect()
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-6
}

#[test]
fn means_std_ci_and_paired_gain_by_hand() {
    let cmp = compare(&toy_rows("h1"), &by("method,variant,role"), "top1", None).unwrap();
    let labels: Vec<String> = cmp.groups.iter().map(|g| g.keys.join(" ")).collect();
    assert_eq!(labels, ["vanilla kd teacher", "vanilla plain student", "vanilla kd student"]);
    let (teacher, plain, kd) = (&cmp.groups[0], &cmp.groups[1], &cmp.groups[2]);
    assert_eq!(teacher.last.n, 3);
    assert!(close(teacher.last.mean, 93.39) && close(teacher.last.std, 0.0));
    assert!(teacher.gain.is_none() && plain.gain.is_none());
    // plain: mean 71, sd 1, best mean 72.
    assert!(close(plain.last.mean, 71.0) && close(plain.last.std, 1.0) && close(plain.best.mean, 72.0));
    // kd: mean 73, sd 2; 95% CI half-width t(0.975, 2) * 2 / sqrt(3) = 4.302653 * 1.154701.
    assert!(close(kd.last.mean, 73.0) && close(kd.last.std, 2.0) && close(kd.best.mean, 73.5));
    assert!((kd.last.ci95 - 4.968_275).abs() < 1e-5, "{}", kd.last.ci95);
    // Paired differences 1, 2, 3: gain 2, t = 2 / (1 / sqrt 3) = 3.4641, df 2,
    // p = 1 - t / sqrt(2 + t^2) = 1 - 3.4641 / 3.741657 = 0.074180.
    let g = kd.gain.expect("kd has a gain over plain");
    assert_eq!(g.n, 3);
    assert!(close(g.mean_diff, 2.0));
    assert!((g.p - 0.074_180).abs() < 1e-6, "p = {}", g.p);
    assert!(!cmp.groups.iter().any(|g| g.mixed()));

    let table = cmp.render(Format::Table).unwrap();
    assert!(table.contains("73.00 ± 2.00") && table.contains("[68.03, 77.97]"), "{table}");
    assert!(table.contains("+2.00 (n=3)") && table.contains("0.074"), "{table}");
    let md = cmp.render(Format::Md).unwrap();
    assert!(md.lines().nth(1).unwrap().starts_with("|---|"), "{md}");
    let csv = cmp.render(Format::Csv).unwrap();
    assert_eq!(csv.lines().count(), 4);
    assert!(csv.lines().last().unwrap().starts_with("toy,vanilla,kd,student,top1,3,73,2,"), "{csv}");
}

#[test]
fn mixed_config_hashes_are_flagged_not_hidden() {
    let mut rows = toy_rows("aaaaaaaaaaaaaaaa");
    rows.extend(toy_rows("bbbbbbbbbbbbbbbb").into_iter().map(|mut r| {
        r.seed += 10;
        r
    }));
    let cmp = compare(&rows, &by("variant,role"), "top1", None).unwrap();
    assert!(cmp.groups.iter().all(|g| g.mixed()));
    let table = cmp.render(Format::Table).unwrap();
    assert!(table.contains("! [1]"), "{table}");
    assert!(table.contains("aaaaaaaaaaaa (3 rows), bbbbbbbbbbbb (3 rows)"), "{table}");
    // Pairs never cross configurations: kd of hash a pairs with plain of hash a only.
    let kd = cmp.groups.iter().find(|g| g.keys == ["kd", "student"]).unwrap();
    assert_eq!(kd.gain.unwrap().n, 6);
    assert!(close(kd.gain.unwrap().mean_diff, 2.0));
    // Grouping by the hash separates them.
    let cmp = compare(&rows, &by("variant,role,config_hash"), "top1", None).unwrap();
    assert_eq!(cmp.groups.len(), 6);
    assert!(cmp.groups.iter().all(|g| !g.mixed()));
}

/// The toy rows of `hash`, started at `when`, with other values for the kd student.
fn rows_at(hash: &str, when: &str, kd_offset: f64) -> Vec<ResultRow> {
    toy_rows(hash)
        .into_iter()
        .map(|mut r| {
            r.started_at = when.into();
            if r.variant == "kd" && r.role == "student" && r.metric == "top1" {
                r.value += kd_offset;
            }
            r
        })
        .collect()
}

#[test]
fn newest_configuration_per_experiment_is_kept_and_the_rest_listed() {
    let mut rows = rows_at("old0000000000000", "2026-11-28T10:00:00Z", 0.0);
    rows.extend(rows_at("new0000000000000", "2026-11-28T12:00:00Z", 10.0));
    // Another experiment whose only configuration is older than both: kept.
    rows.extend(rows_at("other00000000000", "2026-11-27T09:00:00Z", 0.0).into_iter().map(|mut r| {
        r.experiment = "toy2".into();
        r
    }));
    let (kept, left) = newest_configs(rows.clone());
    assert_eq!(kept.len(), 24);
    assert!(kept.iter().all(|r| r.config_hash != "old0000000000000"));
    assert_eq!(left.len(), 1);
    assert_eq!((left[0].experiment.as_str(), left[0].rows), ("toy", 12));
    assert_eq!(left[0].last_started, "2026-11-28T10:00:00Z");
    let cmp = compare(&kept, &by("variant,role"), "top1", None).unwrap();
    let kd = cmp.groups.iter().find(|g| g.experiment == "toy" && g.keys == ["kd", "student"]).unwrap();
    assert!(!kd.mixed());
    assert!(close(kd.last.mean, 83.0), "{}", kd.last.mean);
    assert!(close(kd.gain.unwrap().mean_diff, 12.0));
}

#[test]
fn cli_shows_the_newest_configuration_unless_asked_for_all() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("toy.csv");
    append_rows(&csv, &rows_at("old0000000000000", "2026-11-28T10:00:00Z", 0.0)).unwrap();
    append_rows(&csv, &rows_at("new0000000000000", "2026-11-28T12:00:00Z", 10.0)).unwrap();
    let out = kd(&["compare", csv.to_str().unwrap(), "--format", "md"], dir.path());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("| toy | vanilla | kd | student | 3 | 83.00 ± 2.00 |"), "{text}");
    assert!(
        text.contains(
            "toy: newest configuration of each profile and split shown; 1 older one left out (12 rows): old000000000 (12 rows"
        ),
        "{text}"
    );
    let out = kd(&["compare", csv.to_str().unwrap(), "--configs", "all"], dir.path());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("2 configuration hashes averaged together"), "{text}");
    let out = kd(&["compare", csv.to_str().unwrap(), "--by", "variant,role,config_hash"], dir.path());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("old0000000000000") && !text.contains("left out"), "{text}");
}

#[test]
fn rerun_rows_replace_earlier_ones_and_bad_keys_are_errors() {
    let mut rows = toy_rows("h");
    rows.push(row("kd", "student", 0, 80.0, 80.0, "h"));
    let cmp = compare(&rows, &by("variant,role"), "top1", None).unwrap();
    assert_eq!(cmp.duplicates_dropped, 1);
    let kd = cmp.groups.iter().find(|g| g.keys == ["kd", "student"]).unwrap();
    assert!(close(kd.last.mean, (80.0 + 73.0 + 75.0) / 3.0));
    assert!(cmp.render(Format::Table).unwrap().contains("1 duplicate row"));
    let e = compare(&rows, &by("variant,colour"), "top1", None).unwrap_err().to_string();
    assert!(e.contains("colour") && e.contains("config_hash"), "{e}");
    let top5 = compare(&rows, &by("variant,role"), "top5", None).unwrap();
    assert_eq!(top5.groups.len(), 1);
}

fn kd(args: &[&str], cwd: &Path) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_kd")).args(args).current_dir(cwd).output().unwrap()
}

#[test]
fn cli_reads_files_and_names_a_malformed_line() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("toy.csv");
    append_rows(&csv, &toy_rows("h1")).unwrap();
    let out = kd(&["compare", csv.to_str().unwrap(), "--format", "md"], dir.path());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("| toy | vanilla | kd | student | 3 | 73.00 ± 2.00 |"), "{text}");

    let mut bad = std::fs::read_to_string(&csv).unwrap();
    let lines = bad.lines().count();
    bad.push_str("toy,vanilla,kd,cpu,notaseed,student\n");
    std::fs::write(&csv, bad).unwrap();
    let out = kd(&["compare", csv.to_str().unwrap()], dir.path());
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("toy.csv") && err.contains(&format!("line {}", lines + 1)), "{err}");
}

#[test]
fn one_seed_prints_no_spread_and_an_experiment_without_the_metric_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let one_seed: Vec<ResultRow> = toy_rows("h1").into_iter().filter(|r| r.seed == 0).collect();
    append_rows(&dir.path().join("toy.csv"), &one_seed).unwrap();
    let glue = ResultRow { experiment: "glue-toy".into(), metric: "accuracy".into(), ..one_seed[0].clone() };
    append_rows(&dir.path().join("glue-toy.csv"), &[glue]).unwrap();
    let out = kd(
        &[
            "compare",
            dir.path().join("toy.csv").to_str().unwrap(),
            dir.path().join("glue-toy.csv").to_str().unwrap(),
        ],
        dir.path(),
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(" ± —") && !text.contains("± 0.00"), "n = 1 has no spread: {text}");
    assert!(
        text.contains("glue-toy: no `top1` rows (its metrics: accuracy); --metric accuracy shows it"),
        "{text}"
    );
}

#[test]
fn a_newer_sweep_never_hides_the_cpu_headline_and_each_is_labelled() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("toy.csv");
    append_rows(&csv, &rows_at("cpu0000000000000", "2026-11-28T10:00:00Z", 0.0)).unwrap();
    let sweep: Vec<ResultRow> = rows_at("swp0000000000000", "2026-11-28T12:00:00Z", 20.0)
        .into_iter()
        .map(|mut r| {
            r.profile = "sweep".into();
            r.split = "train[val]".into();
            r
        })
        .collect();
    append_rows(&csv, &sweep).unwrap();
    let (kept, left) = newest_configs(kd_core::results::read_rows(&csv).unwrap());
    assert_eq!((kept.len(), left.len()), (24, 0), "one configuration per profile and split is kept");
    let out = kd(&["compare", csv.to_str().unwrap(), "--format", "md"], dir.path());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("| profile | split |"), "profile and split get columns: {text}");
    assert!(text.contains("| toy | vanilla | kd | student | cpu | test | 3 | 73.00 ± 2.00 |"), "{text}");
    assert!(
        text.contains("| toy | vanilla | kd | student | sweep | train[val] | 3 | 93.00 ± 2.00 |"),
        "{text}"
    );
}

#[test]
fn a_recipes_published_numbers_stand_beside_the_measured_ones() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("vanilla-kd-cifar100.csv");
    let rows: Vec<ResultRow> = toy_rows("h1")
        .into_iter()
        .map(|r| ResultRow { experiment: "vanilla-kd-cifar100".into(), ..r })
        .collect();
    append_rows(&csv, &rows).unwrap();
    let recipes = concat!(env!("CARGO_MANIFEST_DIR"), "/../../benchmarks");
    let out = kd(&["compare", csv.to_str().unwrap(), "--recipes", recipes, "--format", "md"], dir.path());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    // CRD's Table 1, from the recipe's [published]: teacher 72.34, plain 69.06, KD 70.66.
    assert!(text.contains("| p | published | config |"), "{text}");
    assert!(text.contains("| 93.39 ± 0.00 | — | — | 72.34 |"), "teacher: {text}");
    assert!(text.contains("| — | — | 69.06 |"), "plain: {text}");
    assert!(text.contains("| 70.66 |"), "kd: {text}");
    assert!(text.contains("vanilla-kd-cifar100: published = tian2020crd (Table 1"), "{text}");
    // A metric the paper does not report gets no column.
    let top5 = kd(&["compare", csv.to_str().unwrap(), "--recipes", recipes, "--metric", "top5"], dir.path());
    assert!(!String::from_utf8_lossy(&top5.stdout).contains("published"));
}

/// A run with several models (DML's peers) gets its published number on each model's line,
/// named `<variant> <role>` in the recipe as `kd report` labels the line.
#[test]
fn published_numbers_reach_the_models_of_a_multi_model_run() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("dml-cifar100.csv");
    let mut rows = Vec::new();
    for seed in 0..2u64 {
        let s = seed as f64;
        rows.push(row("plain", "student", seed, 20.0 + s, 20.0 + s, "h1"));
        for (role, v) in [("peer-1", 22.0), ("peer-2", 23.0), ("ensemble", 24.0)] {
            rows.push(row("dml", role, seed, v + s, v + s, "h1"));
        }
    }
    let rows: Vec<ResultRow> =
        rows.into_iter().map(|r| ResultRow { experiment: "dml-cifar100".into(), ..r }).collect();
    append_rows(&csv, &rows).unwrap();
    let recipes = concat!(env!("CARGO_MANIFEST_DIR"), "/../../benchmarks");
    let out = kd(&["compare", csv.to_str().unwrap(), "--recipes", recipes, "--format", "md"], dir.path());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    // DML's Table 1: ResNet-32 alone 68.99, with DML 71.19 (each peer); no number for the ensemble.
    let line = |role: &str| {
        let cell = format!("| {role} |");
        text.lines().find(|l| l.contains(&cell)).unwrap_or_else(|| panic!("{role}: {text}"))
    };
    assert!(line("student").contains("| 68.99 |"), "{text}");
    assert!(line("peer-1").contains("| 71.19 |") && line("peer-2").contains("| 71.19 |"), "{text}");
    assert!(!line("ensemble").contains("71.19"), "{text}");
}
