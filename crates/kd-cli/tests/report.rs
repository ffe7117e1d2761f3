//! `kd report` on a synthetic configuration: tables with the expected numbers, well-formed
//! booktabs LaTeX, and non-empty PNG/SVG plots.

use std::path::PathBuf;

use kd_analysis::report::{report, tex_escape};
use kd_core::history::{append_history, RunHistory};
use kd_core::recipe::RecipeFile;
use kd_core::results::{append_rows, ResultRow};
use kd_core::trainer::{EpochRecord, EvalScores};
use kd_core::EvalEntry;
use kd_run::reproduce::{load_recipe_file, recipe_hash, Paths};

const EXP: &str = "vanilla-kd-cifar10";

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

fn row(variant: &str, role: &str, seed: u64, metric: &str, value: f64, hash: &str) -> ResultRow {
    ResultRow {
        experiment: EXP.into(),
        method: "vanilla".into(),
        variant: variant.into(),
        profile: "cpu".into(),
        seed,
        role: role.into(),
        model: if role == "teacher" { "resnet56".into() } else { "resnet20".into() },
        params: 1,
        dataset: "uoft-cs/cifar10".into(),
        revision: "r".into(),
        train_examples: 10000,
        eval_examples: 2000,
        split: "test".into(),
        metric: metric.into(),
        value,
        best_value: value + 0.5,
        best_epoch: 3,
        epochs: 4,
        // A distilled run costs 2.5 times a plain one.
        wall_seconds: if variant == "kd" { 2.5 } else { 1.0 },
        examples_per_second: 1.0,
        device: "cpu-2t".into(),
        config_hash: hash.into(),
        teacher_hash: "t".into(),
        git_commit: "c".into(),
        kd_bench_version: "0.1.0".into(),
        started_at: "2026-11-28T00:00:00Z".into(),
    }
}

fn history(variant: &str, seed: u64, hash: &str, finals: f64) -> RunHistory {
    RunHistory {
        experiment: EXP.into(),
        method: "vanilla".into(),
        variant: variant.into(),
        profile: "cpu".into(),
        seed,
        config_hash: hash.into(),
        entries: vec![EvalEntry { role: "student".into(), model: "resnet20".into(), params: 1 }],
        epochs: (1..=4)
            .map(|e| EpochRecord {
                epoch: e,
                lr: 0.1,
                train_loss: 1.0,
                loss_parts: Default::default(),
                eval: vec![EvalScores::new([
                    ("top1", Some(finals - 10.0 * (4 - e) as f64)),
                    ("top5", Some(99.0)),
                ])],
                train_seconds: 1.0,
                eval_seconds: 1.0,
                train_examples: 10000,
            })
            .collect(),
        peak_rss_mib: None,
    }
}

#[test]
fn writes_tables_and_plots_with_the_expected_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let recipes = root.join("benchmarks");
    std::fs::create_dir_all(&recipes).unwrap();
    // The committed recipe with a [published] table (never part of the config hash).
    let recipe = std::fs::read_to_string(repo_root().join(format!("benchmarks/{EXP}.toml"))).unwrap();
    let published = "\n[published]\nsource = \"tian2020crd\"\nsetting = \"Table 1\"\nvalues = { teacher = 93.0, kd = 72.5 }\n";
    let plain_hash = recipe_hash(
        &RecipeFile::parse(format!("{EXP}.toml").into(), recipe.clone())
            .unwrap()
            .resolve(Some("cpu"))
            .unwrap(),
    )
    .unwrap();
    std::fs::write(recipes.join(format!("{EXP}.toml")), recipe + published).unwrap();
    let hash = recipe_hash(&load_recipe_file(&recipes, EXP).unwrap().resolve(Some("cpu")).unwrap()).unwrap();
    assert_eq!(hash, plain_hash, "published numbers are not configuration");
    let results = root.join("results");
    let mut rows = Vec::new();
    for (seed, (p, k)) in [(70.0, 71.0), (71.0, 73.0), (72.0, 75.0)].into_iter().enumerate() {
        let seed = seed as u64;
        rows.push(row("plain", "student", seed, "top1", p, &hash));
        rows.push(row("plain", "student", seed, "top5", 98.0, &hash));
        rows.push(row("kd", "student", seed, "top1", k, &hash));
        rows.push(row("kd", "student", seed, "top5", 99.0, &hash));
        rows.push(row("kd", "teacher", seed, "top1", 93.39, &hash));
        rows.push(row("kd", "teacher", seed, "top5", 99.8, &hash));
        append_history(&results.join(format!("{EXP}.history.jsonl")), &history("plain", seed, &hash, p))
            .unwrap();
        append_history(&results.join(format!("{EXP}.history.jsonl")), &history("kd", seed, &hash, k))
            .unwrap();
    }
    // A row of another configuration is left out, with a warning.
    rows.push(row("kd", "student", 9, "top1", 10.0, "0ther"));
    append_rows(&results.join(format!("{EXP}.csv")), &rows).unwrap();

    let paths = Paths {
        root: root.clone(),
        recipes,
        results: results.clone(),
        runs: root.join("runs"),
        scratch: false,
    };
    let r = report(&paths, &root.join("papers/tables"), &results.join("plots"), EXP, "cpu", None).unwrap();
    assert_eq!(r.config_hash, hash);
    assert!(r.warnings.iter().any(|w| w.contains("0ther")), "{:?}", r.warnings);
    let labels: Vec<&str> = r.lines.iter().map(|l| l.label.as_str()).collect();
    assert_eq!(labels, ["teacher", "plain", "kd"]);

    let md = std::fs::read_to_string(&r.markdown).unwrap();
    let short = &hash[..12];
    assert!(
        md.contains(&format!(
            "| teacher | resnet56 | 93.39 ± 0.00 | 99.80 ± 0.00 | — | — | — | 3 | 93.00 | — | `{short}` |"
        )),
        "{md}"
    );
    assert!(
        md.contains(&format!(
            "| plain | resnet20 | 71.00 ± 1.00 | 98.00 ± 0.00 | 71.50 ± 1.00 | — | — | 3 | — | 1.00× | `{short}` |"
        )),
        "{md}"
    );
    assert!(
        md.contains(&format!(
            "| kd | resnet20 | 73.00 ± 2.00 | 99.00 ± 0.00 | 73.50 ± 2.00 | +2.00 | 0.074 | 3 | 72.50 | 2.50× | `{short}` |"
        )),
        "{md}"
    );

    assert!(md.contains("Published: top-1 from `tian2020crd` (Table 1)"), "{md}");

    // LaTeX: booktabs rules in order, 11 columns in every row, every row ended.
    let tex = std::fs::read_to_string(&r.latex).unwrap();
    let pos = |s: &str| tex.find(s).unwrap_or_else(|| panic!("{s} missing:\n{tex}"));
    assert!(pos("\\begin{table}") < pos("\\begin{tabular}{llrrrrrrrrl}"));
    assert!(pos("\\toprule") < pos("\\midrule") && pos("\\midrule") < pos("\\bottomrule"));
    assert!(pos("\\bottomrule") < pos("\\end{tabular}") && pos("\\end{tabular}") < pos("\\end{table}"));
    let body: Vec<&str> = tex.lines().filter(|l| l.trim_end().ends_with("\\\\")).collect();
    assert_eq!(body.len(), 4, "{tex}");
    for l in &body {
        assert_eq!(l.matches('&').count() - l.matches("\\&").count(), 10, "{l}");
    }
    assert!(
        tex.contains(
            "kd & resnet20 & 73.00 $\\pm$ 2.00 & 99.00 $\\pm$ 0.00 & 73.50 $\\pm$ 2.00 & $+2.00$ & 0.074 & 3 & 72.50 & 2.50$\\times$"
        ),
        "{tex}"
    );
    assert_eq!(tex.matches('{').count(), tex.matches('}').count());

    // Plots: both kinds, both formats, non-empty and of the right type.
    assert_eq!(r.plots.len(), 4, "{:?}", r.plots);
    for p in &r.plots {
        let bytes = std::fs::read(p).unwrap();
        assert!(bytes.len() > 500, "{} is {} bytes", p.display(), bytes.len());
        match p.extension().and_then(|e| e.to_str()) {
            Some("png") => assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n"),
            Some("svg") => assert!(String::from_utf8_lossy(&bytes).contains("<svg")),
            other => panic!("unexpected plot {other:?}"),
        }
    }
    assert!(r.plots.iter().any(|p| p.ends_with(format!("plots/{EXP}-curves.png"))));
    assert!(r.plots.iter().any(|p| p.ends_with(format!("plots/{EXP}-final.svg"))));

    // An explicit configuration that has no rows is an error naming what there is.
    let e = report(&paths, &root.join("t"), &root.join("p"), EXP, "cpu", Some("zzz")).unwrap_err();
    assert!(format!("{e:#}").contains("zzz"), "{e:#}");
    let e = report(&paths, &root.join("t"), &root.join("p"), EXP, "paper", None).unwrap_err();
    assert!(e.to_string().contains("cpu"), "{e}");
}

#[test]
fn latex_escaping() {
    assert_eq!(tex_escape("a_b & 5% #1"), "a\\_b \\& 5\\% \\#1");
    assert_eq!(tex_escape("ResNet-56 -> ResNet-20"), "ResNet-56 $\\rightarrow$ ResNet-20");
}
