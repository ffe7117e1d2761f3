//! `results/<experiment>.csv`: append-only, long format, one row per evaluated model per metric
//! per run. Rows are appended whole under an exclusive file lock, in one write.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::metric::EvalScores;

/// The header, exactly and in this order (new columns only ever at the end).
pub const HEADER: &[&str] = &[
    "experiment",
    "method",
    "variant",
    "profile",
    "seed",
    "role",
    "model",
    "params",
    "dataset",
    "revision",
    "train_examples",
    "eval_examples",
    "split",
    "metric",
    "value",
    "best_value",
    "best_epoch",
    "epochs",
    "wall_seconds",
    "examples_per_second",
    "device",
    "config_hash",
    "teacher_hash",
    "git_commit",
    "kd_bench_version",
    "started_at",
];

/// One results row; field order is the header's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResultRow {
    pub experiment: String,
    pub method: String,
    pub variant: String,
    pub profile: String,
    pub seed: u64,
    pub role: String,
    pub model: String,
    pub params: usize,
    pub dataset: String,
    pub revision: String,
    pub train_examples: usize,
    pub eval_examples: usize,
    pub split: String,
    pub metric: String,
    pub value: f64,
    pub best_value: f64,
    pub best_epoch: usize,
    pub epochs: usize,
    pub wall_seconds: f64,
    pub examples_per_second: f64,
    pub device: String,
    pub config_hash: String,
    pub teacher_hash: String,
    pub git_commit: String,
    pub kd_bench_version: String,
    pub started_at: String,
}

fn results_err(path: &Path, message: String) -> Error {
    Error::Results { path: path.to_path_buf(), message }
}

/// What to do about a last line cut short by a killed writer.
const TORN_ADVICE: &str = "a writer was probably killed mid-row; delete that partial line (the rows \
     above it are whole) and re-run `kd reproduce`, which re-runs only the runs without rows";

/// The rows of a finished run: per evaluated entry, in order, one row per metric of the run
/// (the task's metrics in the task's order; `top1`, `top5` for image recipes), leaving out a
/// metric the last epoch has no value for (`top5` of a model with fewer than 5 classes).
/// `template` supplies the run's identity (experiment, variant, seed, hashes, commit, …); role,
/// model, metric, values, timing and `teacher_hash` come from the report.
pub fn run_rows(
    template: &ResultRow,
    report: &crate::trainer::TrainReport,
    teacher_hash: &str,
) -> Vec<ResultRow> {
    let mut rows = Vec::new();
    for (i, entry) in report.entries.iter().enumerate() {
        for metric in &report.metrics {
            let Some((value, best_value, best_epoch)) = report.summary(i, metric) else { continue };
            rows.push(ResultRow {
                role: entry.role.clone(),
                model: entry.model.clone(),
                params: entry.params,
                metric: metric.to_string(),
                value,
                best_value,
                best_epoch,
                wall_seconds: report.wall_seconds(),
                examples_per_second: report.train_examples_per_second(),
                teacher_hash: teacher_hash.to_string(),
                ..template.clone()
            });
        }
    }
    rows
}

/// A teacher not trained in this run (pretrained, or fine-tuned once and cached), evaluated on
/// `eval_examples` examples in `eval_seconds`.
pub struct TeacherScore<'a> {
    pub model: &'a str,
    pub params: usize,
    /// Its values of the task's metrics.
    pub scores: &'a EvalScores,
    /// The `epochs` column: 0 for a given teacher, the fine-tuning epochs of one trained for
    /// the task.
    pub epochs: usize,
    pub eval_seconds: f64,
    pub eval_examples: usize,
    pub hash: &'a str,
}

/// The rows of a teacher's scores, one per metric with a value, in order; `template` as in
/// [`run_rows`].
pub fn teacher_rows(template: &ResultRow, t: &TeacherScore) -> Vec<ResultRow> {
    t.scores
        .values()
        .map(|(metric, v)| ResultRow {
            role: "teacher".into(),
            model: t.model.to_string(),
            params: t.params,
            metric: metric.into(),
            value: v,
            best_value: v,
            best_epoch: 0,
            epochs: t.epochs,
            wall_seconds: t.eval_seconds,
            examples_per_second: t.eval_examples as f64 / t.eval_seconds.max(1e-9),
            teacher_hash: t.hash.to_string(),
            ..template.clone()
        })
        .collect()
}

/// Appends `rows` to `path` (creating it and its folder, with the header), whole, under an
/// exclusive lock, in one write followed by an fsync. An existing file must start with the
/// known header (extra columns at the end are allowed) and end with a newline: a torn last
/// line is reported with its line number, never appended to.
pub fn append_rows(path: &Path, rows: &[ResultRow]) -> Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    if let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .open(path)
        .map_err(|e| Error::io(path, e))?;
    // Held until `file` drops: other writers (threads or processes) wait; readers take a
    // shared lock and so never see half a batch.
    file.lock().map_err(|e| Error::io(path, e))?;
    let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
    let mut w = csv::WriterBuilder::new().has_headers(false).from_writer(Vec::new());
    if len == 0 {
        w.write_record(HEADER).map_err(|e| results_err(path, e.to_string()))?;
    } else {
        check_header(path, &first_line(&mut file, path)?)?;
        let mut last = [0u8; 1];
        file.seek(SeekFrom::End(-1)).map_err(|e| Error::io(path, e))?;
        file.read_exact(&mut last).map_err(|e| Error::io(path, e))?;
        if last[0] != b'\n' {
            file.seek(SeekFrom::Start(0)).map_err(|e| Error::io(path, e))?;
            let mut text = Vec::new();
            file.read_to_end(&mut text).map_err(|e| Error::io(path, e))?;
            let line = text.iter().filter(|&&b| b == b'\n').count() + 1;
            return Err(results_err(path, format!("line {line} is incomplete: {TORN_ADVICE}")));
        }
    }
    for r in rows {
        w.serialize(r).map_err(|e| results_err(path, e.to_string()))?;
    }
    let buf = w.into_inner().map_err(|e| results_err(path, e.to_string()))?;
    file.write_all(&buf).map_err(|e| Error::io(path, e))?;
    file.sync_all().map_err(|e| Error::io(path, e))?;
    Ok(())
}

/// The first line of `file` (without its line ending), read from the start.
fn first_line(file: &mut std::fs::File, path: &Path) -> Result<String> {
    file.seek(SeekFrom::Start(0)).map_err(|e| Error::io(path, e))?;
    let mut line = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        let n = file.read(&mut chunk).map_err(|e| Error::io(path, e))?;
        match chunk[..n].iter().position(|&b| b == b'\n') {
            Some(i) => {
                line.extend_from_slice(&chunk[..i]);
                break;
            }
            None if n == 0 => break,
            None => line.extend_from_slice(&chunk[..n]),
        }
    }
    Ok(String::from_utf8_lossy(&line).trim_end_matches('\r').to_string())
}

fn check_header(path: &Path, line: &str) -> Result<()> {
    let cols: Vec<&str> = line.split(',').collect();
    if cols.len() < HEADER.len() || cols[..HEADER.len()] != *HEADER {
        let first_bad =
            cols.iter().zip(HEADER).position(|(a, b)| a != b).unwrap_or(cols.len().min(HEADER.len()));
        return Err(results_err(
            path,
            format!(
                "line 1 is not the kd-bench results header (column {} should be `{}`); expected it to \
                 start with: {}",
                first_bad + 1,
                HEADER[first_bad],
                HEADER.join(",")
            ),
        ));
    }
    Ok(())
}

/// Reads every row (under a shared lock, so a concurrent append is seen whole or not at all).
/// A corrupt row (wrong column count, a number that does not parse, a torn last line) is an
/// error naming the file, the line and the column.
pub fn read_rows(path: &Path) -> Result<Vec<ResultRow>> {
    let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    file.lock_shared().map_err(|e| Error::io(path, e))?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).map_err(|e| Error::io(path, e))?;
    drop(file);
    if bytes.is_empty() {
        return Ok(Vec::new());
    }
    let header_end = bytes.iter().position(|&b| b == b'\n').unwrap_or(bytes.len());
    check_header(path, String::from_utf8_lossy(&bytes[..header_end]).trim_end_matches('\r'))?;
    if bytes.last() != Some(&b'\n') {
        let line = bytes.iter().filter(|&&b| b == b'\n').count() + 1;
        return Err(results_err(path, format!("line {line} is incomplete: {TORN_ADVICE}")));
    }
    let mut rdr = csv::ReaderBuilder::new().has_headers(true).flexible(true).from_reader(bytes.as_slice());
    let columns = rdr.headers().map_err(|e| results_err(path, format!("line 1: {e}")))?.len();
    let header = csv::StringRecord::from(HEADER.to_vec());
    let mut rows = Vec::new();
    let mut rec = csv::StringRecord::new();
    loop {
        let line_before = rdr.position().line();
        let more = rdr.read_record(&mut rec).map_err(|e| {
            let line = e.position().map_or(line_before, |p| p.line());
            results_err(path, format!("line {line}: {e}"))
        })?;
        if !more {
            break;
        }
        let line = rec.position().map_or(line_before, |p| p.line());
        if rec.len() != columns {
            return Err(results_err(
                path,
                format!("line {line}: {} columns, the header has {columns}", rec.len()),
            ));
        }
        let known: csv::StringRecord = rec.iter().take(HEADER.len()).collect();
        let row: ResultRow = known.deserialize(Some(&header)).map_err(|e| {
            let detail = match e.kind() {
                csv::ErrorKind::Deserialize { err, .. } => match err.field() {
                    Some(i) => format!(
                        "column `{}` = {:?}: {}",
                        HEADER.get(i as usize).copied().unwrap_or("?"),
                        known.get(i as usize).unwrap_or(""),
                        err.kind()
                    ),
                    None => err.kind().to_string(),
                },
                _ => e.to_string(),
            };
            results_err(path, format!("line {line}: {detail}"))
        })?;
        rows.push(row);
    }
    Ok(rows)
}

/// Whether `path` holds a row satisfying `predicate` (false when the file does not exist), for
/// skipping runs a sweep or a resumed `kd reproduce` has already recorded.
pub fn rows_exist(path: &Path, predicate: impl Fn(&ResultRow) -> bool) -> Result<bool> {
    if !path.exists() {
        return Ok(false);
    }
    Ok(read_rows(path)?.iter().any(predicate))
}
