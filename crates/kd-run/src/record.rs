//! What every task's runs write, written once: the experiment's files (results CSV, history,
//! run folder with checkpoints and final models), the fields every row of an invocation shares,
//! a run's history line, and the closing summary.

use std::collections::BTreeMap;
use std::path::PathBuf;

use kd_core::hash::short;
use kd_core::history::RunHistory;
use kd_core::recipe::Recipe;
use kd_core::recipe_hash::{legacy_recipe_hash, HashAliases};
use kd_core::results::ResultRow;
use kd_core::trainer::{EpochRecord, TrainReport};
use kd_core::EvalEntry;

use crate::registry::ParsedMethod;
use crate::reproduce::{mean_std, Paths};

/// A run claimed by this process ([`ExperimentFiles::claim`]); the lock goes with it.
pub struct RunClaim {
    _file: std::fs::File,
}

/// Where an experiment's configuration reads and writes.
pub struct ExperimentFiles {
    /// `results/<experiment>.csv`.
    pub csv: PathBuf,
    /// `results/<experiment>.history.jsonl`.
    pub history: PathBuf,
    /// `runs/<experiment>/<hash12>/`: epoch checkpoints and final models.
    pub run_dir: PathBuf,
    /// The configuration's hash before the current scheme (`kd_core::recipe_hash`): its rows,
    /// history lines and run folder are this configuration's.
    aliases: HashAliases,
    hash: String,
}

impl ExperimentFiles {
    /// The files of configuration `hash` (= `recipe_hash(recipe)`) of `recipe`'s experiment.
    pub fn new(paths: &Paths, recipe: &Recipe, hash: &str) -> anyhow::Result<Self> {
        let experiment = &recipe.experiment.name;
        let mut aliases = HashAliases::default();
        aliases.add(legacy_recipe_hash(recipe)?, hash.to_string());
        Ok(ExperimentFiles {
            csv: paths.results.join(format!("{experiment}.csv")),
            history: paths.results.join(format!("{experiment}.history.jsonl")),
            run_dir: paths.runs.join(experiment).join(short(hash)),
            aliases,
            hash: hash.to_string(),
        })
    }

    /// Checks, before any data is read, that the results folder, the run folder and kd-bench's
    /// cache can be written (created if missing, a file made and removed in each), so a
    /// read-only or mistyped folder fails now, naming it, not after training.
    pub fn check_writable(&self, cache: &std::path::Path) -> anyhow::Result<()> {
        let results = self.csv.parent().unwrap_or(std::path::Path::new("."));
        for (what, dir) in
            [("results", results), ("runs", self.run_dir.as_path()), ("cache (KD_CACHE_DIR)", cache)]
        {
            let probe = dir.join(format!(".kd-write-check-{}", std::process::id()));
            let tried = std::fs::create_dir_all(dir)
                .and_then(|()| std::fs::write(&probe, b""))
                .and_then(|()| std::fs::remove_file(&probe));
            if let Err(e) = tried {
                anyhow::bail!(
                    "the {what} folder {} cannot be written ({e}); nothing was run. Give a writable one",
                    dir.display()
                );
            }
        }
        Ok(())
    }

    /// The experiment's rows, those of this configuration's old hash renamed to its current one.
    pub fn rows(&self) -> anyhow::Result<Vec<ResultRow>> {
        let mut rows = if self.csv.exists() { kd_core::results::read_rows(&self.csv)? } else { Vec::new() };
        self.aliases.rename_rows(&mut rows);
        Ok(rows)
    }

    /// The experiment's history lines, renamed as [`ExperimentFiles::rows`].
    pub fn history_runs(&self) -> anyhow::Result<Vec<RunHistory>> {
        let mut runs = kd_core::history::read_history(&self.history)?;
        self.aliases.rename_history(&mut runs);
        Ok(runs)
    }

    /// A run folder made under the configuration's old hash becomes its folder (renamed, so
    /// checkpoints resume and final models stay beside the rows that name them).
    pub fn adopt_old_run_folder(&self) -> anyhow::Result<()> {
        let Some(parent) = self.run_dir.parent() else { return Ok(()) };
        for old in self.aliases.old_names(&self.hash) {
            let old_dir = parent.join(short(old));
            if old_dir.is_dir() && !self.run_dir.exists() {
                match std::fs::rename(&old_dir, &self.run_dir) {
                    Ok(()) => eprintln!(
                        "run folder {} (this configuration's hash before file paths left it) is now {}",
                        old_dir.display(),
                        self.run_dir.display()
                    ),
                    // Another process moved it first.
                    Err(_) if self.run_dir.exists() => {}
                    Err(e) => {
                        return Err(anyhow::anyhow!(
                            "renaming {} to {}: {e}",
                            old_dir.display(),
                            self.run_dir.display()
                        ))
                    }
                }
            }
        }
        Ok(())
    }

    /// The epoch checkpoint of a run (resumed when it exists).
    pub fn checkpoint(&self, variant: &str, seed: u64) -> PathBuf {
        self.run_dir.join(format!("{variant}-seed{seed}.ckpt.safetensors"))
    }

    /// The final model of a run (`kd eval` reads it).
    pub fn final_model(&self, variant: &str, seed: u64) -> PathBuf {
        self.run_dir.join(format!("{variant}-seed{seed}.safetensors"))
    }

    /// Records a finished run: its final model(s) first (`save_models` writes them, each
    /// atomically), then its rows, then its history line. A kill between two of them leaves what
    /// a re-run repairs: without rows the run is not done, resumes from its (complete) last
    /// checkpoint and records again; rows without a history line get it back from the
    /// checkpoint. Rows are never written for a run whose model is missing.
    pub fn record_run(
        &self,
        rows: &[ResultRow],
        history: &RunHistory,
        save_models: impl FnOnce() -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        save_models()?;
        kd_core::results::append_rows(&self.csv, rows)?;
        kd_core::history::append_history(&self.history, history)?;
        Ok(())
    }

    /// Removes what saves killed mid-write left in the run folder (temporary files of dead
    /// processes, a few MB each), saying so.
    pub fn remove_dead_temporaries(&self) {
        let removed = kd_core::checkpoint::remove_dead_temporaries(&self.run_dir);
        if !removed.is_empty() {
            eprintln!(
                "removed {} temporary file(s) that killed saves left in {}",
                removed.len(),
                self.run_dir.display()
            );
        }
    }

    /// Claims run `variant` seed `seed` of configuration `hash` for this process: an exclusive
    /// lock on `<run folder>/<variant>-seed<k>.lock`, held until the claim is dropped. `None`
    /// (with a message) when another process holds it, or, without `--force`, when its rows
    /// appeared since this invocation looked (another process finished it): two processes on
    /// one run never both train it and append its rows twice.
    pub fn claim(
        &self,
        variant: &str,
        seed: u64,
        hash: &str,
        force: bool,
    ) -> anyhow::Result<Option<RunClaim>> {
        use anyhow::Context;
        std::fs::create_dir_all(&self.run_dir)
            .with_context(|| format!("creating {}", self.run_dir.display()))?;
        let path = self.run_dir.join(format!("{variant}-seed{seed}.lock"));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("opening the run lock {}", path.display()))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                eprintln!(
                    "  {variant} seed {seed}: another kd process is running it (lock {}); skipped",
                    path.display()
                );
                return Ok(None);
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("locking {}", path.display()));
            }
        }
        if !force && crate::reproduce::run_is_recorded(&self.rows()?, hash, variant, seed) {
            eprintln!(
                "  {variant} seed {seed}: finished by another process meanwhile (rows in {})",
                self.csv.display()
            );
            return Ok(None);
        }
        Ok(Some(RunClaim { _file: file }))
    }

    /// With `--force`, a run's old checkpoint goes so that it starts afresh.
    pub fn discard_checkpoint(&self, variant: &str, seed: u64) -> anyhow::Result<()> {
        let ckpt = self.checkpoint(variant, seed);
        if ckpt.exists() {
            std::fs::remove_file(&ckpt).map_err(|e| anyhow::anyhow!("removing {}: {e}", ckpt.display()))?;
        }
        Ok(())
    }
}

/// The fields every row of one invocation shares; a task fills in its data's.
pub struct RowBase<'a> {
    pub recipe: &'a Recipe,
    /// Which method trains each variant (the rows' `method`).
    pub methods: &'a ParsedMethod,
    pub profile: &'a str,
    pub hash: &'a str,
    pub dataset: String,
    pub revision: String,
    pub train_examples: usize,
    pub eval_examples: usize,
    pub split: String,
    /// `env::device_label` of the run's device.
    pub device: String,
    pub git_commit: String,
}

impl RowBase<'_> {
    /// A row of run `(variant, seed)` with the shared fields; role, model, metric and values are
    /// the caller's (`kd_core::results::run_rows` fills them from a report).
    pub fn row(&self, variant: &str, seed: u64, started_at: &str) -> ResultRow {
        let r = self.recipe;
        ResultRow {
            experiment: r.experiment.name.clone(),
            method: self.methods.method_of(variant).to_string(),
            variant: variant.to_string(),
            profile: self.profile.to_string(),
            seed,
            role: String::new(),
            model: String::new(),
            params: 0,
            dataset: self.dataset.clone(),
            revision: self.revision.clone(),
            train_examples: self.train_examples,
            eval_examples: self.eval_examples,
            split: self.split.clone(),
            metric: String::new(),
            value: 0.0,
            best_value: 0.0,
            best_epoch: 0,
            epochs: r.train.epochs,
            wall_seconds: 0.0,
            examples_per_second: 0.0,
            device: self.device.clone(),
            config_hash: self.hash.to_string(),
            teacher_hash: String::new(),
            git_commit: self.git_commit.clone(),
            kd_bench_version: env!("CARGO_PKG_VERSION").to_string(),
            started_at: started_at.to_string(),
        }
    }

    /// The history line of run `(variant, seed)`.
    pub fn history(&self, variant: &str, seed: u64, report: &TrainReport) -> RunHistory {
        let method = self.methods.method_of(variant);
        let mut h = run_history(
            self.recipe,
            method,
            self.profile,
            self.hash,
            variant,
            seed,
            &report.entries,
            &report.history,
        );
        // Read right after training: the process's peak since `fit` reset it.
        h.peak_rss_mib = crate::memory::peak_rss_mib();
        h
    }
}

/// The history line of run `(variant, seed)` of `recipe` under `profile`, trained by `method`:
/// its evaluated models and every epoch's record.
#[allow(clippy::too_many_arguments)]
pub fn run_history(
    recipe: &Recipe,
    method: &str,
    profile: &str,
    hash: &str,
    variant: &str,
    seed: u64,
    entries: &[EvalEntry],
    epochs: &[EpochRecord],
) -> RunHistory {
    RunHistory {
        experiment: recipe.experiment.name.clone(),
        method: method.to_string(),
        variant: variant.to_string(),
        profile: profile.to_string(),
        seed,
        config_hash: hash.to_string(),
        entries: entries.to_vec(),
        epochs: epochs.to_vec(),
        peak_rss_mib: None,
    }
}

/// The closing summary: the headline metric of each variant (and evaluated model) over seeds.
#[derive(Default)]
pub struct Summary {
    values: BTreeMap<String, Vec<f64>>,
}

impl Summary {
    /// Records `value` of `label` (`kd`, or `byot exit-3` for a method reporting several models).
    pub fn add(&mut self, label: impl Into<String>, value: f64) {
        self.values.entry(label.into()).or_default().push(value);
    }

    /// Records the last value of `metric` of every model `report` evaluated, labelled by the
    /// variant (and the model's role when there are several).
    pub fn add_report(&mut self, variant: &str, report: &TrainReport, metric: &str) {
        for (i, entry) in report.entries.iter().enumerate() {
            if let Some((last, _, _)) = report.summary(i, metric) {
                let label = if report.entries.len() == 1 {
                    variant.to_string()
                } else {
                    format!("{variant} {}", entry.role)
                };
                self.add(label, last);
            }
        }
    }

    /// Prints one line per label: mean ± std over seeds with `decimals` digits.
    pub fn print(&self, width: usize, decimals: usize) {
        for (label, v) in &self.values {
            let (m, s) = mean_std(v);
            // One run has no spread to show.
            let spread = if v.len() > 1 { format!(" ± {s:.decimals$}") } else { String::new() };
            eprintln!("  {label:<width$} {m:.decimals$}{spread}  (n = {})", v.len());
        }
    }
}
