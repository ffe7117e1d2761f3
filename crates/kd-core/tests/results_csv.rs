//! The results CSV contract: exact header, whole rows under concurrent appends (threads and
//! processes), errors naming file and line, round trip of every field.

use std::path::{Path, PathBuf};

use kd_core::results::{append_rows, read_rows, rows_exist, ResultRow, HEADER};

fn row(seed: u64) -> ResultRow {
    ResultRow {
        experiment: "vanilla-kd-cifar10".into(),
        method: "vanilla".into(),
        variant: "kd".into(),
        profile: "smoke".into(),
        seed,
        role: "student".into(),
        model: "resnet20".into(),
        params: 269722,
        dataset: "uoft-cs/cifar10".into(),
        revision: "0b2714987fa478483af9968de7c934580d0bb9a2".into(),
        train_examples: 200,
        eval_examples: 100,
        split: "test".into(),
        metric: "top1".into(),
        value: 0.1 + 0.2, // 0.30000000000000004: must survive the round trip
        best_value: 13.0,
        best_epoch: 1,
        epochs: 1,
        wall_seconds: 1.25e-7,
        examples_per_second: 160.0,
        device: "cpu, 2 threads".into(), // a comma: quoted
        config_hash: "h".into(),
        teacher_hash: "".into(),
        git_commit: "c".into(),
        kd_bench_version: "0.1.0".into(),
        started_at: "2026-11-28T00:00:00Z".into(),
    }
}

#[test]
fn header_is_exactly_the_design_one() {
    let design = "experiment,method,variant,profile,seed,role,model,params,dataset,revision,train_examples,\
                  eval_examples,split,metric,value,best_value,best_epoch,epochs,wall_seconds,\
                  examples_per_second,device,config_hash,teacher_hash,git_commit,kd_bench_version,started_at";
    assert_eq!(HEADER.join(","), design);
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("results/sub/e.csv");
    append_rows(&p, &[row(0)]).unwrap();
    let text = std::fs::read_to_string(&p).unwrap();
    assert_eq!(text.lines().next().unwrap(), design);
    // The struct serialises its fields in header order.
    assert!(text.lines().nth(1).unwrap().starts_with("vanilla-kd-cifar10,vanilla,kd,smoke,0,student,"));
}

#[test]
fn rows_round_trip_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("e.csv");
    let mut odd = row(7);
    odd.value = f64::NAN;
    odd.best_value = 99.99999999999999;
    odd.model = "line\nbreak \"quoted\"".into();
    append_rows(&p, &[row(0), row(1)]).unwrap();
    append_rows(&p, &[odd.clone()]).unwrap();
    append_rows(&p, &[]).unwrap();
    let rows = read_rows(&p).unwrap();
    assert_eq!(rows.len(), 3);
    assert_eq!(rows[..2], [row(0), row(1)]);
    assert!(rows[2].value.is_nan());
    assert_eq!(rows[2].best_value.to_bits(), odd.best_value.to_bits());
    assert_eq!(rows[2].model, odd.model);
    assert_eq!(std::fs::read_to_string(&p).unwrap().matches("experiment,").count(), 1, "one header");

    assert!(rows_exist(&p, |r| r.seed == 7).unwrap());
    assert!(!rows_exist(&p, |r| r.seed == 8).unwrap());
    assert!(!rows_exist(&dir.path().join("absent.csv"), |_| true).unwrap());
}

#[test]
fn new_columns_at_the_end_are_tolerated_and_a_foreign_header_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("e.csv");
    append_rows(&p, &[row(0)]).unwrap();
    // A later version added a column; this version still reads its own columns.
    let text = std::fs::read_to_string(&p).unwrap().replace('\n', ",extra\n");
    std::fs::write(&p, text).unwrap();
    assert_eq!(read_rows(&p).unwrap(), vec![row(0)]);

    let q = dir.path().join("foreign.csv");
    std::fs::write(&q, "experiment,method,seed\n").unwrap();
    let e = append_rows(&q, &[row(0)]).unwrap_err().to_string();
    assert!(e.contains("foreign.csv") && e.contains("line 1") && e.contains("`variant`"), "{e}");
    assert!(read_rows(&q).is_err());
}

fn lines_all_parse(p: &Path, want_rows: usize) {
    let rows = read_rows(p).unwrap();
    assert_eq!(rows.len(), want_rows);
    let text = std::fs::read_to_string(p).unwrap();
    assert_eq!(text.lines().count(), want_rows + 1);
    assert!(text.lines().skip(1).all(|l| l.starts_with("vanilla-kd-cifar10,") && l.ends_with("Z")));
}

#[test]
fn concurrent_appends_from_threads_write_whole_rows() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("e.csv");
    std::thread::scope(|s| {
        for t in 0..4u64 {
            let p = p.clone();
            s.spawn(move || {
                for i in 0..40 {
                    append_rows(&p, &[row(t * 1000 + i), row(t * 1000 + i)]).unwrap();
                }
            });
        }
    });
    lines_all_parse(&p, 320);
    // Each batch of two stayed together.
    let rows = read_rows(&p).unwrap();
    assert!(rows.chunks(2).all(|c| c[0].seed == c[1].seed));
}

const CHILD_PATH: &str = "KD_RESULTS_TEST_CHILD_PATH";

/// Worker for the multi-process test: does nothing unless started by it.
#[test]
fn child_appender() {
    let Some(p) = std::env::var_os(CHILD_PATH) else { return };
    let p = PathBuf::from(p);
    for i in 0..30 {
        append_rows(&p, &[row(i), row(i), row(i)]).unwrap();
    }
}

#[test]
fn concurrent_appends_from_processes_write_whole_rows() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("e.csv");
    let exe = std::env::current_exe().unwrap();
    let children: Vec<_> = (0..3)
        .map(|_| {
            std::process::Command::new(&exe)
                .args(["--exact", "child_appender", "--test-threads=1"])
                .env(CHILD_PATH, &p)
                .stdout(std::process::Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    for mut c in children {
        assert!(c.wait().unwrap().success());
    }
    lines_all_parse(&p, 3 * 30 * 3);
}

#[test]
fn corrupt_rows_name_file_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("e.csv");
    append_rows(&p, &[row(0), row(1)]).unwrap();
    let good = std::fs::read_to_string(&p).unwrap();

    std::fs::write(&p, format!("{good}e,vanilla,kd,smoke,1,student\n")).unwrap();
    let e = read_rows(&p).unwrap_err().to_string();
    assert!(e.contains("e.csv") && e.contains("line 4") && e.contains("6 columns"), "{e}");

    let bad_number = good.replacen(",smoke,1,", ",smoke,one,", 1);
    std::fs::write(&p, bad_number).unwrap();
    let e = read_rows(&p).unwrap_err().to_string();
    assert!(e.contains("e.csv") && e.contains("line 3") && e.contains("`seed`"), "{e}");
}

#[test]
fn a_torn_last_line_is_refused_not_appended_to() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("e.csv");
    append_rows(&p, &[row(0), row(1)]).unwrap();
    let mut text = std::fs::read_to_string(&p).unwrap();
    text.push_str("vanilla-kd-cifar10,vanilla,kd");
    std::fs::write(&p, &text).unwrap();
    let e = append_rows(&p, &[row(2)]).unwrap_err().to_string();
    assert!(e.contains("e.csv") && e.contains("line 4") && e.contains("incomplete"), "{e}");
    assert_eq!(std::fs::read_to_string(&p).unwrap(), text, "nothing was written");
    let e = read_rows(&p).unwrap_err().to_string();
    assert!(e.contains("line 4"), "{e}");
    // Removing the partial line, as the message advises, makes the file usable again.
    std::fs::write(&p, &text[..text.rfind('\n').unwrap() + 1]).unwrap();
    append_rows(&p, &[row(2)]).unwrap();
    assert_eq!(read_rows(&p).unwrap().len(), 3);
}
