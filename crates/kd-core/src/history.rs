//! Per-epoch training history of each run, beside the results CSV:
//! `results/<experiment>.history.jsonl`, one JSON object per finished run (appended whole under
//! a lock, like the rows). `kd report` draws training curves from it.

use std::io::{BufRead, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::method::EvalEntry;
use crate::trainer::EpochRecord;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunHistory {
    pub experiment: String,
    pub method: String,
    pub variant: String,
    pub profile: String,
    pub seed: u64,
    pub config_hash: String,
    /// The evaluated models; `epochs[i].eval[j]` belongs to `entries[j]`.
    pub entries: Vec<EvalEntry>,
    pub epochs: Vec<EpochRecord>,
    /// Peak resident memory of the process while the run trained (MiB; Linux's VmHWM, reset
    /// when training starts), what a method's cost in memory is read from. Absent where not
    /// measured (other systems, histories recovered from a checkpoint, older lines).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peak_rss_mib: Option<f64>,
}

/// Appends one run's history as a single line, under an exclusive lock.
pub fn append_history(path: &Path, run: &RunHistory) -> Result<()> {
    if let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    let mut line = serde_json::to_string(run).map_err(|e| Error::Msg(format!("{}: {e}", path.display())))?;
    line.push('\n');
    let mut f =
        std::fs::OpenOptions::new().append(true).create(true).open(path).map_err(|e| Error::io(path, e))?;
    f.lock().map_err(|e| Error::io(path, e))?;
    f.write_all(line.as_bytes()).map_err(|e| Error::io(path, e))?;
    f.sync_all().map_err(|e| Error::io(path, e))
}

/// Every run's history; a corrupt line is an error naming file and line.
pub fn read_history(path: &Path) -> Result<Vec<RunHistory>> {
    if !path.exists() {
        return Ok(Vec::new());
    }
    let f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut out = Vec::new();
    for (i, line) in std::io::BufReader::new(f).lines().enumerate() {
        let line = line.map_err(|e| Error::io(path, e))?;
        if line.trim().is_empty() {
            continue;
        }
        out.push(serde_json::from_str(&line).map_err(|e| Error::Results {
            path: path.to_path_buf(),
            message: format!("line {}: {e}", i + 1),
        })?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trainer::EvalScores;

    #[test]
    fn round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("e.history.jsonl");
        let run = RunHistory {
            experiment: "e".into(),
            method: "vanilla".into(),
            variant: "kd".into(),
            profile: "cpu".into(),
            seed: 1,
            config_hash: "h".into(),
            entries: vec![EvalEntry { role: "student".into(), model: "resnet20".into(), params: 3 }],
            epochs: vec![EpochRecord {
                epoch: 1,
                lr: 0.1,
                train_loss: 2.0,
                loss_parts: Default::default(),
                eval: vec![EvalScores::new([("top1", Some(50.0)), ("top5", Some(90.0))])],
                train_seconds: 1.0,
                eval_seconds: 0.5,
                train_examples: 10,
            }],
            peak_rss_mib: None,
        };
        append_history(&p, &run).unwrap();
        append_history(&p, &run).unwrap();
        assert_eq!(read_history(&p).unwrap(), vec![run.clone(), run]);
        std::fs::write(&p, "{not json\n").unwrap();
        assert!(read_history(&p).unwrap_err().to_string().contains("line 1"));
    }

    #[test]
    fn a_line_an_older_version_wrote_reads_and_writes_back_byte_for_byte() {
        // The first line of results/vanilla-kd-sst2.history.jsonl (EvalScores was then a struct
        // `{ top1: f64, top5: Option<f64> }`).
        let old = r#"{"experiment":"vanilla-kd-sst2","method":"vanilla","variant":"plain","profile":"cpu","seed":0,"config_hash":"f1608e6f0a99e6cd841d55cbdfbae92e8f5f7a3a99b4c423443339b6d010d789","entries":[{"role":"student","model":"bert-L2","params":15468290}],"epochs":[{"epoch":1,"lr":0.000015873015873015872,"train_loss":0.5580671628316244,"loss_parts":{"ce":0.5580671628316244},"eval":[{"top1":77.40825688073394,"top5":null}],"train_seconds":32.137817485,"eval_seconds":2.640796827,"train_examples":2000},{"epoch":2,"lr":0.000052631578947368424,"train_loss":0.30082856284247506,"loss_parts":{"ce":0.30082856284247506},"eval":[{"top1":78.44036697247707,"top5":null}],"train_seconds":29.891979385,"eval_seconds":1.684171513,"train_examples":2000}]}"#;
        let run: RunHistory = serde_json::from_str(old).unwrap();
        assert_eq!(run.epochs[1].eval[0].get("top1"), Some(78.44036697247707));
        assert_eq!(run.epochs[1].eval[0].get("top5"), None);
        assert_eq!(serde_json::to_string(&run).unwrap(), old);
    }
}
