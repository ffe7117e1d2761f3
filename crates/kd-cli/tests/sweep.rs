//! `kd sweep`: plans are deterministic; a killed local sweep resumes without repeating finished
//! runs; the emitted Slurm array job runs task by task (sbatch is not needed: each task is a
//! bash script run with SLURM_ARRAY_TASK_ID set). Real data: smoke-sized runs on the shared
//! CIFAR-10 cache, in validation mode (never the test split).

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{kd, real_recipe, repo_root, scratch_project, shared_hf_home, stderr};
use kd_analysis::configs::read_configs;
use kd_cli::sweep::{parse_param, plan, Spec};
use kd_core::recipe::RecipeFile;
use kd_core::results::read_rows;

const EXP: &str = "vanilla-kd-cifar10";

fn recipe_file() -> RecipeFile {
    RecipeFile::load(repo_root().join("benchmarks").join(format!("{EXP}.toml"))).unwrap()
}

fn spec(grid: &[&str], random: Option<usize>, seed: u64) -> Spec {
    Spec {
        profile: "smoke".into(),
        params: grid.iter().map(|g| parse_param(g).unwrap()).collect(),
        random,
        seed,
        seeds: Some(vec![0, 1]),
        variants: None,
        fixed: vec![("data.validation_size".into(), toml::Value::Integer(100))],
    }
}

#[test]
fn grid_and_random_plans_are_deterministic_with_one_hash_per_point() {
    let file = recipe_file();
    let grid = spec(&["distill.temperature=1,2,4,8", "distill.alpha=0.5,0.9"], None, 0);
    let a = plan(&file, &grid).unwrap();
    assert_eq!(a.runs, plan(&file, &grid).unwrap().runs, "same spec, same runs");
    assert_eq!(a.points.len(), 8);
    // 8 KD points × 2 seeds, plus plain once per seed: it never reads [distill].
    let kd: Vec<_> = a.runs.iter().filter(|r| r.variant == "kd").collect();
    let plain: Vec<_> = a.runs.iter().filter(|r| r.variant == "plain").collect();
    assert_eq!((kd.len(), plain.len()), (16, 2));
    assert!(plain.iter().all(|r| r.point.is_empty()));
    let kd_hashes: BTreeSet<&str> = kd.iter().map(|r| r.config_hash.as_str()).collect();
    assert_eq!(kd_hashes.len(), 8, "one config hash per grid point");
    // Task ids are the manifest lines, in order.
    assert!(a.runs.iter().enumerate().all(|(i, r)| r.task == i));
    // Integer grid values for float keys are the same configuration as the float.
    let floats =
        plan(&file, &spec(&["distill.temperature=1.0,2.0,4.0,8.0", "distill.alpha=0.5,0.9"], None, 0))
            .unwrap();
    assert_eq!(floats.runs, a.runs);
    // The (4, 0.9) point is the profile itself (smoke: T = 4, alpha = 0.9) in validation mode.
    let base = file
        .resolve(Some("smoke"))
        .unwrap()
        .with_overrides(&file.path, &[("data.validation_size".into(), toml::Value::Integer(100))])
        .unwrap();
    let base_hash = kd_run::reproduce::recipe_hash(&base).unwrap();
    assert!(plain.iter().all(|r| r.config_hash == base_hash));
    assert_eq!(kd.iter().filter(|r| r.config_hash == base_hash).count(), 2);

    let space =
        ["train.optimizer.lr=log:1e-3..1e-1", "distill.alpha=0.1..0.9", "distill.temperature=1,2,4,8"];
    let r1 = plan(&file, &spec(&space, Some(6), 11)).unwrap();
    let r2 = plan(&file, &spec(&space, Some(6), 11)).unwrap();
    let r3 = plan(&file, &spec(&space, Some(6), 12)).unwrap();
    assert_eq!(r1.points, r2.points, "same seed, same samples");
    assert_eq!(r1.runs, r2.runs);
    assert_ne!(r1.points, r3.points, "another seed, other samples");
    assert_eq!(r1.points.len(), 6);
    // plain varies with the non-distill key (the learning rate) only.
    let plain_hashes: BTreeSet<&str> =
        r1.runs.iter().filter(|r| r.variant == "plain").map(|r| r.config_hash.as_str()).collect();
    assert_eq!(plain_hashes.len(), 6, "six distinct learning rates");
}

#[test]
fn a_sweep_refuses_to_tune_on_the_test_split_and_rejects_unknown_keys() {
    let file = recipe_file();
    let mut s = spec(&["distill.temperature=2,4"], None, 0);
    s.fixed.clear();
    let e = format!("{:#}", plan(&file, &s).unwrap_err());
    assert!(e.contains("validation split") && e.contains("--validation-size"), "{e}");
    let e = format!("{:#}", plan(&file, &spec(&["distill.temprature=2,4"], None, 0)).unwrap_err());
    assert!(e.contains("temprature"), "{e}");
    let e = format!("{:#}", plan(&file, &spec(&["train.epoch=2,4"], None, 0)).unwrap_err());
    assert!(e.contains("epoch"), "{e}");
}

fn wait_for_rows(csv: &Path, timeout: Duration) -> bool {
    let t0 = Instant::now();
    while t0.elapsed() < timeout {
        if csv.exists() && read_rows(csv).map(|r| !r.is_empty()).unwrap_or(false) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// (config hash, variant, seed) of every finished student run, with its count.
fn finished_runs(csv: &Path) -> Vec<(String, String, u64)> {
    let mut v: Vec<_> = read_rows(csv)
        .unwrap()
        .into_iter()
        .filter(|r| r.role == "student" && r.metric == "top1")
        .map(|r| (r.config_hash, r.variant, r.seed))
        .collect();
    v.sort();
    v
}

#[test]
fn killed_local_sweep_resumes_without_repeating_finished_runs() {
    let hf = shared_hf_home();
    let dir = scratch_project(&[(&format!("{EXP}.toml"), real_recipe(EXP))]);
    let root = dir.path().join("proj");
    let args = [
        "sweep",
        EXP,
        "--profile",
        "smoke",
        "--validation-size",
        "100",
        "--grid",
        "distill.temperature=1,4",
        "--grid",
        "distill.alpha=0.5,0.9",
    ];
    let csv = common::smoke_results(&root).join(format!("{EXP}.csv"));
    let mut child = Command::new(env!("CARGO_BIN_EXE_kd"))
        .args(args)
        .current_dir(&root)
        .env("HF_HOME", &hf)
        .env("HF_HUB_OFFLINE", "1")
        .env("KD_CACHE_DIR", root.join(".kd-cache"))
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    assert!(wait_for_rows(&csv, Duration::from_secs(300)), "no run finished");
    child.kill().unwrap();
    child.wait().unwrap();
    let before = finished_runs(&csv);
    assert!(!before.is_empty() && before.len() < 5, "killed mid-sweep: {} of 5 runs done", before.len());

    let out = kd(&args, &root, &hf);
    assert!(out.status.success(), "{}", stderr(&out));
    let e = stderr(&out);
    assert!(e.contains(&format!("5 run(s), {} already done", before.len())), "{e}");
    let after = finished_runs(&csv);
    let unique: BTreeSet<_> = after.iter().cloned().collect();
    assert_eq!(after.len(), 5, "every run once, none repeated: {after:?}");
    assert_eq!(unique.len(), 5);
    assert!(before.iter().all(|r| unique.contains(r)));
    let rows = read_rows(&csv).unwrap();
    assert!(rows
        .iter()
        .all(|r| r.split == "train[val]" && r.eval_examples == 100 && r.train_examples == 200));
    // Every configuration is recorded for kd compare / kd report.
    let configs = read_configs(&common::smoke_results(&root).join(format!("{EXP}.configs.jsonl"))).unwrap();
    let hashes: BTreeSet<&str> = configs.iter().map(|c| c.config_hash.as_str()).collect();
    assert!(after.iter().all(|(h, _, _)| hashes.contains(h.as_str())));
    // A third run has nothing to do.
    let again = kd(&args, &root, &hf);
    assert!(again.status.success());
    assert!(stderr(&again).contains("5 run(s), 5 already done"), "{}", stderr(&again));
    assert_eq!(read_rows(&csv).unwrap().len(), rows.len());

    // kd compare by recipe keys: one line per grid point, paired with the one plain run.
    let cmp = kd(
        &["compare", csv.to_str().unwrap(), "--by", "distill.temperature,distill.alpha", "--format", "csv"],
        &root,
        &hf,
    );
    assert!(cmp.status.success(), "{}", stderr(&cmp));
    let text = String::from_utf8_lossy(&cmp.stdout).into_owned();
    let mut lines = text.lines();
    assert!(lines
        .next()
        .unwrap()
        .starts_with("experiment,variant,role,distill.temperature,distill.alpha,metric,n"));
    let students: Vec<&str> = lines.filter(|l| l.contains(",student,")).collect();
    assert_eq!(students.len(), 5, "{text}");
    assert!(students[0].starts_with(&format!("{EXP},plain,student,—,—,top1,1,")), "{text}");
    let points: Vec<String> =
        students[1..].iter().map(|l| l.split(',').skip(3).take(2).collect::<Vec<_>>().join("/")).collect();
    assert_eq!(points, ["1.0/0.5", "1.0/0.9", "4.0/0.5", "4.0/0.9"]);
    for l in &students[1..] {
        let cols: Vec<&str> = l.split(',').collect();
        assert_eq!(cols[14], "1", "kd paired with the plain run: {l}");
    }

    // kd report draws the 2-D grid as a heat map with its table.
    let rep = kd(&["report", EXP, "--profile", "smoke"], &root, &hf);
    assert!(rep.status.success(), "{}", stderr(&rep));
    let listed = String::from_utf8_lossy(&rep.stdout).into_owned();
    let png = listed.lines().map(str::trim).find(|l| l.contains("-sweep-") && l.ends_with("-kd.png"));
    let png = png.unwrap_or_else(|| panic!("no heat map in {listed}"));
    assert!(std::fs::metadata(png).unwrap().len() > 1000);
    let md = listed.lines().map(str::trim).find(|l| l.contains("-sweep-") && l.ends_with(".md")).unwrap();
    let table = std::fs::read_to_string(md).unwrap();
    assert!(table.contains("| distill.temperature \\ distill.alpha | 0.5 | 0.9 |"), "{table}");
    assert!(table.contains("| 1.0 |") && table.contains("| 4.0 |"), "{table}");
}

#[test]
fn emitted_slurm_array_runs_task_by_task() {
    let hf = shared_hf_home();
    let dir = scratch_project(&[(&format!("{EXP}.toml"), real_recipe(EXP))]);
    let root = dir.path().join("proj");
    let slurm = dir.path().join("slurm");
    let out = kd(
        &[
            "sweep",
            EXP,
            "--profile",
            "smoke",
            "--validation-size",
            "100",
            "--grid",
            "distill.temperature=2,8",
            "--variants",
            "kd",
            "--emit",
            "slurm",
            slurm.to_str().unwrap(),
            "--sbatch=--time=00:10:00",
        ],
        &root,
        &hf,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("sbatch "), "{}", stderr(&out));
    let script = std::fs::read_to_string(slurm.join("sweep.sbatch")).unwrap();
    let manifest = std::fs::read_to_string(slurm.join("manifest.tsv")).unwrap();
    let lines: Vec<&str> = manifest.lines().collect();
    assert_eq!(lines.len(), 2);
    assert!(script.starts_with("#!/bin/bash\n"));
    assert!(script.contains(&format!("#SBATCH --array=0-{}\n", lines.len() - 1)), "{script}");
    assert!(script.contains("#SBATCH --time=00:10:00\n"));
    assert!(script.contains("#SBATCH --output="));
    for (i, l) in lines.iter().enumerate() {
        let cols: Vec<&str> = l.split('\t').collect();
        assert_eq!(cols.len(), 5, "{l}");
        assert_eq!(cols[0], i.to_string());
        assert_eq!(cols[1].len(), 64);
        assert_eq!((cols[2], cols[3]), ("kd", "0"));
        assert!(cols[4].starts_with("data.validation_size=100 distill.temperature="), "{l}");
    }
    assert!(!csv_exists(&root), "emitting runs nothing");

    let task = |id: Option<&str>| {
        let mut c = Command::new("bash");
        c.arg(slurm.join("sweep.sbatch"))
            .env("HF_HOME", &hf)
            .env("HF_HUB_OFFLINE", "1")
            .env("KD_CACHE_DIR", root.join(".kd-cache"))
            .env_remove("SLURM_ARRAY_TASK_ID");
        if let Some(id) = id {
            c.env("SLURM_ARRAY_TASK_ID", id);
        }
        let o = c.output().unwrap();
        eprintln!("--- task {id:?}\n{}", String::from_utf8_lossy(&o.stderr));
        o
    };
    let none = task(None);
    assert!(!none.status.success());
    assert!(String::from_utf8_lossy(&none.stderr).contains("SLURM_ARRAY_TASK_ID"));
    let beyond = task(Some("2"));
    assert_eq!(beyond.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&beyond.stderr).contains("no such line"));
    for i in 0..lines.len() {
        let o = task(Some(&i.to_string()));
        assert!(o.status.success(), "task {i} failed");
    }
    // Each task wrote exactly its run, under the hash the manifest names.
    let csv = common::smoke_results(&root).join(format!("{EXP}.csv"));
    let got = finished_runs(&csv);
    let want: Vec<(String, String, u64)> = {
        let mut w: Vec<_> = lines
            .iter()
            .map(|l| {
                let c: Vec<&str> = l.split('\t').collect();
                (c[1].to_string(), c[2].to_string(), c[3].parse().unwrap())
            })
            .collect();
        w.sort();
        w
    };
    assert_eq!(got, want);
    // A task run twice (a Slurm requeue) skips its finished run.
    assert!(task(Some("0")).status.success());
    assert_eq!(finished_runs(&csv), want);
}

fn csv_exists(root: &Path) -> bool {
    common::smoke_results(root).join(format!("{EXP}.csv")).exists()
}
