//! `results/<experiment>.csv`: append-only, long format, one row per evaluated model per metric
//! per run. Rows are appended whole under an exclusive file lock, in one write.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

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

/// Appends `rows` to `path` (creating it with the header), whole, under an exclusive lock.
/// An existing file must start with the known header and end with a newline (a torn last line
/// is reported, not appended to).
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
    file.lock().map_err(|e| Error::io(path, e))?;
    let mut existing = String::new();
    file.seek(SeekFrom::Start(0)).map_err(|e| Error::io(path, e))?;
    file.read_to_string(&mut existing).map_err(|e| Error::io(path, e))?;
    let mut w = csv::WriterBuilder::new().has_headers(false).from_writer(Vec::new());
    if existing.is_empty() {
        w.write_record(HEADER).map_err(|e| results_err(path, e.to_string()))?;
    } else {
        check_header(path, existing.lines().next().unwrap_or(""))?;
        if !existing.ends_with('\n') {
            let line = existing.lines().count();
            return Err(results_err(
                path,
                format!(
                    "line {line} is incomplete (a writer was killed mid-row?): remove that line, then re-run"
                ),
            ));
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

fn check_header(path: &Path, line: &str) -> Result<()> {
    let cols: Vec<&str> = line.split(',').collect();
    if cols.len() < HEADER.len() || cols[..HEADER.len()] != *HEADER {
        return Err(results_err(
            path,
            format!("line 1 is not the kd-bench header; expected it to start with: {}", HEADER.join(",")),
        ));
    }
    Ok(())
}

/// Reads every row; a corrupt row is an error naming the file and line.
pub fn read_rows(path: &Path) -> Result<Vec<ResultRow>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    if text.is_empty() {
        return Ok(Vec::new());
    }
    check_header(path, text.lines().next().unwrap_or(""))?;
    let mut rdr = csv::ReaderBuilder::new().has_headers(true).flexible(false).from_reader(text.as_bytes());
    let mut rows = Vec::new();
    for (i, rec) in rdr.records().enumerate() {
        let line = i + 2;
        let rec = rec.map_err(|e| results_err(path, format!("line {line}: {e}")))?;
        if rec.len() < HEADER.len() {
            return Err(results_err(
                path,
                format!("line {line}: {} columns, expected {}", rec.len(), HEADER.len()),
            ));
        }
        let trimmed: csv::StringRecord = rec.iter().take(HEADER.len()).collect();
        let row: ResultRow = trimmed
            .deserialize(Some(&csv::StringRecord::from(HEADER.to_vec())))
            .map_err(|e| results_err(path, format!("line {line}: {e}")))?;
        rows.push(row);
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn row(seed: u64) -> ResultRow {
        ResultRow {
            experiment: "e".into(),
            method: "vanilla".into(),
            variant: "kd".into(),
            profile: "smoke".into(),
            seed,
            role: "student".into(),
            model: "resnet20".into(),
            params: 269722,
            dataset: "uoft-cs/cifar10".into(),
            revision: "abc".into(),
            train_examples: 200,
            eval_examples: 100,
            split: "test".into(),
            metric: "top1".into(),
            value: 12.5,
            best_value: 13.0,
            best_epoch: 1,
            epochs: 1,
            wall_seconds: 1.25,
            examples_per_second: 160.0,
            device: "cpu".into(),
            config_hash: "h".into(),
            teacher_hash: "".into(),
            git_commit: "c".into(),
            kd_bench_version: "0.1.0".into(),
            started_at: "2026-11-28T00:00:00Z".into(),
        }
    }

    #[test]
    fn header_round_trip_and_exact_header() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("r/e.csv");
        append_rows(&p, &[row(0), row(1)]).unwrap();
        append_rows(&p, &[row(2)]).unwrap();
        let text = std::fs::read_to_string(&p).unwrap();
        assert_eq!(text.lines().next().unwrap(), HEADER.join(","));
        let rows = read_rows(&p).unwrap();
        assert_eq!(rows, vec![row(0), row(1), row(2)]);
    }

    #[test]
    fn concurrent_appends_write_whole_rows() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("e.csv");
        std::thread::scope(|s| {
            for t in 0..4u64 {
                let p = p.clone();
                s.spawn(move || {
                    for i in 0..50 {
                        append_rows(&p, &[row(t * 1000 + i), row(t * 1000 + i)]).unwrap();
                    }
                });
            }
        });
        let rows = read_rows(&p).unwrap();
        assert_eq!(rows.len(), 400);
        let text = std::fs::read_to_string(&p).unwrap();
        assert_eq!(text.matches("experiment,").count(), 1, "one header");
    }

    #[test]
    fn corrupt_and_torn_rows_name_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("e.csv");
        append_rows(&p, &[row(0)]).unwrap();
        let mut text = std::fs::read_to_string(&p).unwrap();
        text.push_str("e,vanilla,kd,smoke,notanumber,student\n");
        std::fs::write(&p, &text).unwrap();
        let e = read_rows(&p).unwrap_err().to_string();
        assert!(e.contains("e.csv") && e.contains("line 3"), "{e}");
        // A torn last line (no newline) refuses further appends instead of gluing onto it.
        text.push_str("e,vanilla,kd");
        std::fs::write(&p, &text).unwrap();
        let e = append_rows(&p, &[row(1)]).unwrap_err().to_string();
        assert!(e.contains("incomplete"), "{e}");
    }
}
