//! GLUE (issue 9) on the real shared hub cache: tokenisation with all-MiniLM-L6-v2's
//! `tokenizer.json`, the smoke profiles of `vanilla-kd-sst2` / `vanilla-kd-cola` end to end
//! (teacher fine-tuned and cached, plain and KD students, rows with the task's metric), and
//! clear errors for a task, column or tokenizer that does not exist.

mod common;

use std::path::{Path, PathBuf};

use kd_core::results::read_rows;
use kd_data::glue::{load_text_split, model_file, pad_inputs, GlueTask, TextSource, TextTokenizer};
use kd_data::HubCache;

const MODEL: &str = "sentence-transformers/all-MiniLM-L6-v2";

/// The shared cache with GLUE and the MiniLM model; fails the test, naming what is missing,
/// otherwise.
fn glue_home() -> PathBuf {
    common::hf_home_with(&["datasets--nyu-mll--glue", "models--sentence-transformers--all-MiniLM-L6-v2"])
}

fn tokenizer(home: &Path, max_len: usize) -> TextTokenizer {
    let cache = HubCache::new(home.to_path_buf(), true);
    let (path, _) = model_file(&cache, MODEL, "main", "tokenizer.json").unwrap();
    TextTokenizer::from_file(&path, max_len).unwrap()
}

fn ds(first: &[&str], second: Option<&[&str]>) -> kd_data::glue::TextDataset {
    kd_data::glue::TextDataset {
        revision: String::new(),
        first: first.iter().map(|s| s.to_string()).collect(),
        second: second.map(|b| b.iter().map(|s| s.to_string()).collect()),
        labels: kd_data::glue::TextLabels::Classes(vec![0; first.len()]),
    }
}

#[test]
fn tokenizer_json_encodes_truncates_and_batches_pad_dynamically() {
    let home = glue_home();
    // Ids are line numbers − 1 in the repo's vocab.txt: [CLS] 101, [SEP] 102, [PAD] 0,
    // hello 7592, world 2088, the 1996, movie 3185, was 2001, great 2307 (uncased).
    let tok = tokenizer(&home, 16);
    assert_eq!(tok.pad_id, 0);
    let e = tok.encode(&ds(&["Hello World", "the movie was great"], None)).unwrap();
    assert_eq!(e.ids[0], vec![101, 7592, 2088, 102], "no padding to the file's 128");
    assert_eq!(e.ids[1], vec![101, 1996, 3185, 2001, 2307, 102]);
    let pair = tok.encode(&ds(&["the movie"], Some(&["was great"]))).unwrap();
    assert_eq!(pair.ids[0], vec![101, 1996, 3185, 102, 2001, 2307, 102]);
    assert_eq!(pair.type_ids[0], vec![0, 0, 0, 0, 1, 1, 1]);
    // Truncation to max_len, special tokens kept.
    let short = tokenizer(&home, 3).encode(&ds(&["the movie was great"], None)).unwrap();
    assert_eq!(short.ids[0], vec![101, 1996, 102]);
    let short_pair = tokenizer(&home, 5).encode(&ds(&["the movie"], Some(&["was great"]))).unwrap();
    assert_eq!(short_pair.ids[0].len(), 5);
    assert_eq!((short_pair.ids[0][0], short_pair.ids[0][4]), (101, 102));
    // A batch pads to its own longest sequence.
    let t = pad_inputs(&e, &[0, 1], tok.pad_id, &candle_core::Device::Cpu).unwrap();
    assert_eq!(t.dims(), &[2, 3, 6]);
    let v: Vec<Vec<Vec<u32>>> = t.to_vec3().unwrap();
    assert_eq!(v[0][0], vec![101, 7592, 2088, 102, 0, 0]);
    assert_eq!(v[0][2], vec![1, 1, 1, 1, 0, 0]);
}

#[test]
fn glue_splits_load_with_the_hub_schema_and_bad_names_are_clear() {
    let home = glue_home();
    let cache = HubCache::new(home, true);
    let src = |task: &str, cols: &[&str]| TextSource {
        repo: "nyu-mll/glue".into(),
        revision: "main".into(),
        config: Some(task.into()),
        text_columns: cols.iter().map(|c| c.to_string()).collect(),
        label_column: "label".into(),
        regression: false,
        num_labels: 2,
    };
    let sst2 = load_text_split(&cache, &src("sst2", &["sentence"]), "validation").unwrap();
    assert_eq!(sst2.len(), 872);
    match &sst2.labels {
        kd_data::glue::TextLabels::Classes(l) => assert_eq!(l.iter().filter(|&&x| x == 1).count(), 444),
        _ => panic!("classes"),
    }
    let wnli = load_text_split(&cache, &src("wnli", &["sentence1", "sentence2"]), "validation").unwrap();
    assert_eq!((wnli.len(), wnli.second.as_ref().map(Vec::len)), (71, Some(71)));
    let e = load_text_split(&cache, &src("sst2", &["sentense"]), "validation").unwrap_err().to_string();
    assert!(e.contains("sentense") && e.contains("sentence"), "{e}");
    let e = load_text_split(&cache, &src("sst2", &["sentence"]), "test").unwrap_err().to_string();
    assert!(e.contains("unlabelled"), "{e}");
    let e = model_file(&cache, "nobody/no-model", "main", "tokenizer.json").unwrap_err().to_string();
    assert!(
        e.contains("nobody/no-model") && e.contains("tokenizer.json") && e.contains("HF_HUB_OFFLINE"),
        "{e}"
    );
    assert!(GlueTask::by_name("sst3").is_err());
}

#[test]
fn smoke_profiles_write_teacher_plain_and_kd_rows_with_the_task_metric() {
    let home = glue_home();
    let dir = common::scratch_project(&[
        ("vanilla-kd-sst2.toml", common::real_recipe("vanilla-kd-sst2")),
        ("vanilla-kd-cola.toml", common::real_recipe("vanilla-kd-cola")),
    ]);
    let proj = dir.path().join("proj");
    for (exp, metrics) in
        [("vanilla-kd-sst2", vec!["accuracy"]), ("vanilla-kd-cola", vec!["mcc", "accuracy"])]
    {
        let out = common::kd(&["reproduce", exp, "--profile", "smoke"], &proj, &home);
        assert!(out.status.success(), "{exp}: {}", common::stderr(&out));
        let rows = read_rows(&common::smoke_results(&proj).join(format!("{exp}.csv"))).unwrap();
        for (variant, role) in [("plain", "student"), ("kd", "student"), ("kd", "teacher")] {
            for m in &metrics {
                let r = rows
                    .iter()
                    .find(|r| r.variant == variant && r.role == role && &r.metric == m)
                    .unwrap_or_else(|| panic!("{exp}: no {variant}/{role}/{m} row in {rows:?}"));
                let range = if *m == "mcc" { -1.0..=1.0 } else { 0.0..=100.0 };
                assert!(range.contains(&r.value), "{exp} {m} = {}", r.value);
                assert_eq!(r.eval_examples, 64);
                assert_eq!(r.train_examples, 64);
            }
        }
        let kd = rows.iter().find(|r| r.variant == "kd" && r.role == "student").unwrap();
        let teacher = rows.iter().find(|r| r.role == "teacher").unwrap();
        assert_eq!(kd.teacher_hash, teacher.teacher_hash);
        assert_eq!(teacher.model, "bert-L6");
        assert_eq!(kd.model, "bert-L1");
        assert!(teacher.params > kd.params, "teacher {} vs student {}", teacher.params, kd.params);
    }
    // The fine-tuned teachers are cached by config hash; a re-run (--force) reuses them.
    let cached: Vec<_> = std::fs::read_dir(proj.join(".kd-cache/glue-teachers"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".safetensors"))
        .collect();
    assert_eq!(cached.len(), 2, "one teacher per task");
    let out = common::kd(
        &["reproduce", "vanilla-kd-sst2", "--profile", "smoke", "--variants", "kd", "--force"],
        &proj,
        &home,
    );
    assert!(out.status.success());
    assert!(common::stderr(&out).contains("fine-tuned copy found"), "{}", common::stderr(&out));
}

#[test]
fn recipes_naming_a_missing_task_column_or_tokenizer_fail_clearly() {
    let home = glue_home();
    let base = common::real_recipe("vanilla-kd-sst2");
    let cases = [
        ("task = \"sst2\"", "task = \"sst3\"", "unknown GLUE task `sst3`"),
        ("pooling = \"mean\"", "pooling = \"mean\"\ncolumns = [\"sentense\"]", "no column `sentense`"),
        (
            "model = \"sentence-transformers/all-MiniLM-L6-v2\"",
            "model = \"nobody/no-model\"",
            "model nobody/no-model",
        ),
    ];
    for (from, to, want) in cases {
        assert!(base.contains(from), "{from}");
        let dir = common::scratch_project(&[("vanilla-kd-sst2.toml", base.replace(from, to))]);
        let proj = dir.path().join("proj");
        let out = common::kd(&["reproduce", "vanilla-kd-sst2", "--profile", "smoke"], &proj, &home);
        assert!(!out.status.success(), "{to}: should fail");
        let err = common::stderr(&out);
        assert!(err.contains(want), "{to}: error should say `{want}`:\n{err}");
    }
}

#[test]
fn stsb_smoke_trains_a_regression_teacher_and_students_with_correlation_rows() {
    let home = glue_home();
    let dir = common::scratch_project(&[("vanilla-kd-stsb.toml", common::real_recipe("vanilla-kd-stsb"))]);
    let proj = dir.path().join("proj");
    let out = common::kd(&["reproduce", "vanilla-kd-stsb", "--profile", "smoke"], &proj, &home);
    assert!(out.status.success(), "{}", common::stderr(&out));
    let rows = read_rows(&common::smoke_results(&proj).join("vanilla-kd-stsb.csv")).unwrap();
    for (variant, role) in [("plain", "student"), ("kd", "student"), ("kd", "teacher")] {
        for m in ["pearson", "spearman"] {
            let r = rows
                .iter()
                .find(|r| r.variant == variant && r.role == role && r.metric == m)
                .unwrap_or_else(|| panic!("no {variant}/{role}/{m} row in {rows:?}"));
            assert!((-1.0..=1.0).contains(&r.value), "{m} = {}", r.value);
            assert_eq!(r.eval_examples, 64);
        }
    }
    assert!(!rows.iter().any(|r| r.metric == "accuracy"), "no accuracy rows for a regression task");
    let err = common::stderr(&out);
    // Plain: MSE on the gold score; KD: MSE to the gold and to the teacher's score.
    assert!(err.contains("plain seed 0") && err.contains("kd seed 0"), "{err}");
    // A classification head count for STS-B is refused, naming the task.
    let bad = common::real_recipe("vanilla-kd-stsb").replace("num_classes = 1", "num_classes = 2");
    let dir = common::scratch_project(&[("vanilla-kd-stsb.toml", bad)]);
    let out =
        common::kd(&["reproduce", "vanilla-kd-stsb", "--profile", "smoke"], &dir.path().join("proj"), &home);
    assert!(!out.status.success());
    assert!(common::stderr(&out).contains("regression task"), "{}", common::stderr(&out));
}

#[test]
fn a_text_cnn_student_is_trained_and_distilled_from_the_bert_teacher() {
    let home = glue_home();
    let dir = common::scratch_project(&[("vanilla-kd-sst2.toml", common::real_recipe("vanilla-kd-sst2"))]);
    let proj = dir.path().join("proj");
    let out = common::kd(
        &["reproduce", "vanilla-kd-sst2", "--profile", "smoke", "--set", "student.arch=textcnn-F16"],
        &proj,
        &home,
    );
    assert!(out.status.success(), "{}", common::stderr(&out));
    let rows = read_rows(&common::smoke_results(&proj).join("vanilla-kd-sst2.csv")).unwrap();
    for variant in ["plain", "kd"] {
        let r = rows
            .iter()
            .find(|r| r.variant == variant && r.role == "student" && r.metric == "accuracy")
            .unwrap_or_else(|| panic!("no {variant} student row in {rows:?}"));
        assert_eq!(r.model, "textcnn-F16");
        // Pretrained 30522 x 384 embeddings + 3 widths x 16 filters + a 2-way head.
        assert_eq!(r.params, 30522 * 384 + 16 * 384 * (3 + 4 + 5) + 3 * 16 + 48 * 2 + 2);
        assert!((0.0..=100.0).contains(&r.value));
    }
    let teacher = rows.iter().find(|r| r.role == "teacher").unwrap();
    assert_eq!(teacher.model, "bert-L6");
}

/// A GLUE recipe runs any method whose inputs a text task serves, through the same pipeline:
/// multi-teacher (its `mean` rule over the one fine-tuned teacher) and annealing (scheduled
/// temperature and the fixed reference), each with its plain student, teacher rows and the
/// task's metric.
#[test]
fn glue_recipes_run_multi_teacher_and_annealing_through_the_registry() {
    let home = glue_home();
    let base = common::real_recipe("vanilla-kd-sst2");
    let with = |name: &str, method: &str, variants: &str, distill: &str| {
        let text = base
            .replace("name = \"vanilla-kd-sst2\"", &format!("name = \"{name}\""))
            .replace("method = \"vanilla\"", &format!("method = \"{method}\""))
            .replace("variants = [\"plain\", \"kd\"]", &format!("variants = {variants}"))
            .replace("[distill]\ntemperature = 2.0\nalpha = 0.5\n", &format!("[distill]\n{distill}\n"));
        assert!(text.contains(distill) && text.contains(method), "the sst2 recipe changed shape");
        (format!("{name}.toml"), text)
    };
    let recipes = [
        with("mt-sst2", "multi-teacher", "[\"plain\", \"mean\"]", "temperature = 2.0\nalpha = 0.5"),
        with(
            "anneal-sst2",
            "annealing",
            "[\"plain\", \"annealed\", \"fixed\"]",
            "temperature = { kind = \"linear\", start = 4.0, end = 1.0 }\nalpha = 0.5\nfixed = { temperature = 2.0, alpha = 0.5 }",
        ),
    ];
    let dir = common::scratch_project(&[
        (&recipes[0].0, recipes[0].1.clone()),
        (&recipes[1].0, recipes[1].1.clone()),
    ]);
    let proj = dir.path().join("proj");
    for (exp, variants) in
        [("mt-sst2", vec!["plain", "mean"]), ("anneal-sst2", vec!["plain", "annealed", "fixed"])]
    {
        let out = common::kd(&["reproduce", exp, "--profile", "smoke"], &proj, &home);
        assert!(out.status.success(), "{exp}: {}", common::stderr(&out));
        let rows = read_rows(&common::smoke_results(&proj).join(format!("{exp}.csv"))).unwrap();
        for v in &variants {
            let r = rows
                .iter()
                .find(|r| &r.variant == v && r.role == "student" && r.metric == "accuracy")
                .unwrap_or_else(|| panic!("{exp}: no {v} student accuracy row in {rows:?}"));
            assert!((0.0..=100.0).contains(&r.value) && r.model == "bert-L1");
            let teacher = rows.iter().find(|t| &t.variant == v && t.role == "teacher");
            assert_eq!(
                teacher.is_some(),
                *v != "plain",
                "{exp} {v}: teacher rows with distilling variants only"
            );
        }
        let distilled: Vec<f64> = rows
            .iter()
            .filter(|r| r.role == "student" && r.variant != "plain" && r.metric == "accuracy")
            .map(|r| r.value)
            .collect();
        assert_eq!(distilled.len(), variants.len() - 1);
    }
}
