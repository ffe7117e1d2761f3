//! The one place the pipeline calls the trainer: a run, a recipe-trained teacher, a TAKD
//! assistant, a GLUE teacher's fine-tuning and a cross-modal teacher all train through [`fit`],
//! with the recipe's optimiser over the trainable variables, a resumable checkpoint and the
//! installed progress observer.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use candle_core::Var;
use kd_core::metric::Metric;
use kd_core::recipe::OptimizerSpec;
use kd_core::schedule::LrSchedule;
use kd_core::trainer::{self, BatchSource, TrainReport, TrainSpec};
use kd_core::{EvalEntry, Method};

use crate::models;

/// One training: what to train, how, on what, and how it is reported.
pub struct Fit<'a> {
    pub method: &'a mut dyn Method,
    /// Every variable the checkpoint holds (trainable and running statistics).
    pub state: &'a [(String, Var)],
    /// The variables the optimiser updates.
    pub trainable: Vec<(String, Var)>,
    pub optimizer: &'a OptimizerSpec,
    pub epochs: usize,
    pub lr_schedule: &'a LrSchedule,
    /// The epoch checkpoint; an existing one of the same `run_id` is resumed.
    pub checkpoint: &'a Path,
    pub run_id: &'a str,
    pub train_data: &'a dyn BatchSource,
    pub eval_data: &'a dyn BatchSource,
    /// What every evaluation measures: the task's metrics.
    pub metrics: Vec<Arc<dyn Metric>>,
    /// Progress label (e.g. `kd s0`) and the entries as they are reported.
    pub label: &'a str,
    pub entries: Vec<EvalEntry>,
}

/// Trains `f.method` for `f.epochs`, resuming from `f.checkpoint` when it holds this run.
pub fn fit(f: Fit) -> Result<TrainReport> {
    let mut optimizer = models::optimizer(f.optimizer, f.trainable)?;
    let spec = TrainSpec {
        epochs: f.epochs,
        base_lr: f.optimizer.lr(),
        lr_schedule: f.lr_schedule.clone(),
        checkpoint: Some(f.checkpoint.to_path_buf()),
        run_id: f.run_id.to_string(),
        metrics: f.metrics,
    };
    if let Some(dir) = f.checkpoint.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut observer = crate::progress::training(f.label, f.entries);
    // The run's peak memory is measured from here (read when its history line is written).
    crate::memory::reset_peak();
    Ok(trainer::train(
        f.method,
        f.state,
        optimizer.as_mut(),
        &spec,
        f.train_data,
        f.eval_data,
        observer.as_mut(),
    )?)
}
