//! The trainer: epochs of `Method::losses` → backward → optimiser step, an LR schedule,
//! evaluation after every epoch (last and best epoch both kept), atomic checkpoints after every
//! epoch, and exact resume from the last completed epoch.
//!
//! Determinism: the data order and augmentation of epoch `e` depend only on `(seed, e)` (the
//! `BatchSource` contract), and the checkpoint holds every model variable (running statistics
//! included) and the optimiser state, so a resumed run continues exactly as an uninterrupted one.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{Tensor, Var};
use serde::{Deserialize, Serialize};

use crate::batch::Batch;
use crate::checkpoint;
use crate::error::{Error, Result};
use crate::method::{EvalEntry, Method, StepContext};
use crate::metrics::Accuracy;
use crate::optim::Optimizer;
use crate::schedule::LrSchedule;

/// Batches for one split. Epoch `e` must yield the same batches whenever it is asked for.
pub trait BatchSource {
    /// Batches per epoch.
    fn steps(&self) -> usize;
    /// Examples per epoch (what examples/s counts).
    fn examples(&self) -> usize;
    fn epoch(&self, epoch: usize) -> Box<dyn Iterator<Item = Result<Batch>> + '_>;
}

/// What the trainer needs beyond the method, models and data.
#[derive(Debug, Clone)]
pub struct TrainSpec {
    pub epochs: usize,
    pub base_lr: f64,
    pub lr_schedule: LrSchedule,
    /// Where the run's checkpoint lives; an existing one with the same `run_id` is resumed.
    pub checkpoint: Option<PathBuf>,
    /// Identifies the run (config hash, variant, seed); a checkpoint of another run is refused.
    pub run_id: String,
}

/// Scores of one evaluated model after one epoch (percentages).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EvalScores {
    pub top1: f64,
    pub top5: Option<f64>,
}

/// One epoch of history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    /// 1-based epoch number.
    pub epoch: usize,
    pub lr: f64,
    pub train_loss: f64,
    pub loss_parts: BTreeMap<String, f64>,
    /// One entry per `Method::eval_entries`, same order.
    pub eval: Vec<EvalScores>,
    pub train_seconds: f64,
    pub eval_seconds: f64,
    pub train_examples: usize,
}

/// The outcome of a training run.
#[derive(Debug, Clone)]
pub struct TrainReport {
    pub entries: Vec<EvalEntry>,
    pub history: Vec<EpochRecord>,
    /// Epochs restored from a checkpoint instead of trained in this process.
    pub resumed_epochs: usize,
}

impl TrainReport {
    /// Training time summed over epochs (resumed epochs included, as recorded).
    pub fn train_seconds(&self) -> f64 {
        self.history.iter().map(|r| r.train_seconds).sum()
    }

    pub fn wall_seconds(&self) -> f64 {
        self.history.iter().map(|r| r.train_seconds + r.eval_seconds).sum()
    }

    pub fn train_examples_per_second(&self) -> f64 {
        let n: usize = self.history.iter().map(|r| r.train_examples).sum();
        let s = self.train_seconds();
        if s > 0.0 {
            n as f64 / s
        } else {
            0.0
        }
    }

    /// `(last value, best value, best epoch)` of a metric (`top1`/`top5`) for entry `i`.
    pub fn summary(&self, i: usize, metric: &str) -> Option<(f64, f64, usize)> {
        let pick = |r: &EpochRecord| -> Option<f64> {
            let s = r.eval.get(i)?;
            match metric {
                "top1" => Some(s.top1),
                "top5" => s.top5,
                _ => None,
            }
        };
        let last = pick(self.history.last()?)?;
        let mut best = (f64::NEG_INFINITY, 0);
        for r in &self.history {
            if let Some(v) = pick(r) {
                if v > best.0 {
                    best = (v, r.epoch);
                }
            }
        }
        Some((last, best.0, best.1))
    }
}

/// Progress callbacks; the CLI draws bars, tests ignore them.
pub trait TrainObserver {
    fn on_resume(&mut self, _completed_epochs: usize) {}
    fn on_epoch_start(&mut self, _epoch: usize, _epochs: usize, _steps: usize) {}
    fn on_step(&mut self, _ctx: &StepContext, _loss: f32) {}
    fn on_eval_start(&mut self, _steps: usize) {}
    fn on_eval_step(&mut self) {}
    fn on_epoch_end(&mut self, _record: &EpochRecord) {}
}

/// An observer that does nothing.
pub struct Silent;
impl TrainObserver for Silent {}

const META_RUN_ID: &str = "run_id";
const META_EPOCH: &str = "completed_epochs";
const META_HISTORY: &str = "history";
const MODEL_PREFIX: &str = "model.";
const OPTIM_PREFIX: &str = "optim.";

/// Trains `method` for `spec.epochs`, evaluating after every epoch.
///
/// `state` holds every model variable to checkpoint (trainable and running statistics);
/// `optimizer` was built over the trainable subset.
pub fn train(
    method: &mut dyn Method,
    state: &[(String, Var)],
    optimizer: &mut dyn Optimizer,
    spec: &TrainSpec,
    train_data: &dyn BatchSource,
    eval_data: &dyn BatchSource,
    observer: &mut dyn TrainObserver,
) -> Result<TrainReport> {
    let entries = method.eval_entries();
    let mut history: Vec<EpochRecord> = Vec::new();
    if let Some(path) = spec.checkpoint.as_ref().filter(|p| p.exists()) {
        history = resume(path, &spec.run_id, state, optimizer)?;
        observer.on_resume(history.len());
    }
    let resumed_epochs = history.len();
    let steps = train_data.steps();

    for epoch in history.len()..spec.epochs {
        let lr_epoch = spec.lr_schedule.lr_at(spec.base_lr, epoch, 0, steps, spec.epochs);
        observer.on_epoch_start(epoch + 1, spec.epochs, steps);
        let t0 = Instant::now();
        let mut loss_sum = 0f64;
        let mut parts_sum: BTreeMap<String, f64> = BTreeMap::new();
        let mut n_steps = 0usize;
        let mut n_examples = 0usize;
        for (step, batch) in train_data.epoch(epoch).enumerate() {
            let batch = batch?;
            let ctx = StepContext { epoch, epochs: spec.epochs, step_in_epoch: step, steps_per_epoch: steps };
            optimizer.set_lr(spec.lr_schedule.lr_at(spec.base_lr, epoch, step, steps, spec.epochs));
            let losses = method.losses(&batch, &ctx)?;
            let loss = losses.total.to_dtype(candle_core::DType::F32)?.to_scalar::<f32>()?;
            if !loss.is_finite() {
                return Err(Error::NonFiniteLoss { value: loss, epoch: epoch + 1, step });
            }
            let grads = losses.total.backward()?;
            optimizer.step(&grads)?;
            for (name, t) in &losses.parts {
                let v = t.to_dtype(candle_core::DType::F32)?.to_scalar::<f32>()? as f64;
                *parts_sum.entry(name.clone()).or_default() += v;
            }
            loss_sum += loss as f64;
            n_steps += 1;
            n_examples += batch.len();
            observer.on_step(&ctx, loss);
        }
        let train_seconds = t0.elapsed().as_secs_f64();
        let t1 = Instant::now();
        observer.on_eval_start(eval_data.steps());
        let eval = evaluate_method(method, eval_data, &mut *observer)?;
        let denom = n_steps.max(1) as f64;
        let record = EpochRecord {
            epoch: epoch + 1,
            lr: lr_epoch,
            train_loss: loss_sum / denom,
            loss_parts: parts_sum.into_iter().map(|(k, v)| (k, v / denom)).collect(),
            eval,
            train_seconds,
            eval_seconds: t1.elapsed().as_secs_f64(),
            train_examples: n_examples,
        };
        observer.on_epoch_end(&record);
        history.push(record);
        if let Some(path) = &spec.checkpoint {
            save(path, &spec.run_id, state, optimizer, &history)?;
        }
    }
    Ok(TrainReport { entries, history, resumed_epochs })
}

/// Eval-mode scores of every model the method reports.
pub fn evaluate_method(
    method: &dyn Method,
    data: &dyn BatchSource,
    observer: &mut dyn TrainObserver,
) -> Result<Vec<EvalScores>> {
    let n = method.eval_entries().len();
    evaluate_with(data, n, observer, |inputs| method.eval_logits(inputs))
}

/// Scores of `n` logit producers over a split (`f` returns `n` logit tensors per batch).
pub fn evaluate_with(
    data: &dyn BatchSource,
    n: usize,
    observer: &mut dyn TrainObserver,
    mut f: impl FnMut(&Tensor) -> candle_core::Result<Vec<Tensor>>,
) -> Result<Vec<EvalScores>> {
    let mut acc: Vec<Accuracy> = (0..n).map(|_| Accuracy::default()).collect();
    for batch in data.epoch(0) {
        let batch = batch?;
        let logits = f(&batch.inputs)?;
        if logits.len() != n {
            return Err(Error::Msg(format!("evaluation produced {} outputs, expected {n}", logits.len())));
        }
        for (a, l) in acc.iter_mut().zip(&logits) {
            a.update(l, &batch.labels)?;
        }
        observer.on_eval_step();
    }
    Ok(acc
        .iter()
        .map(|a| {
            let (top1, top5) = a.finish();
            EvalScores { top1, top5 }
        })
        .collect())
}

fn save(
    path: &Path,
    run_id: &str,
    state: &[(String, Var)],
    optimizer: &dyn Optimizer,
    history: &[EpochRecord],
) -> Result<()> {
    let mut tensors: Vec<(String, Tensor)> =
        state.iter().map(|(n, v)| (format!("{MODEL_PREFIX}{n}"), v.as_tensor().clone())).collect();
    tensors.extend(optimizer.state().into_iter().map(|(n, t)| (format!("{OPTIM_PREFIX}{n}"), t)));
    let mut meta = BTreeMap::new();
    meta.insert(META_RUN_ID.to_string(), run_id.to_string());
    meta.insert(META_EPOCH.to_string(), history.len().to_string());
    meta.insert(
        META_HISTORY.to_string(),
        serde_json::to_string(history).map_err(|e| Error::Msg(e.to_string()))?,
    );
    checkpoint::save_checkpoint(path, &tensors, &meta)
}

fn resume(
    path: &Path,
    run_id: &str,
    state: &[(String, Var)],
    optimizer: &mut dyn Optimizer,
) -> Result<Vec<EpochRecord>> {
    let err = |message: String| Error::Checkpoint { path: path.to_path_buf(), message };
    let (tensors, meta) = checkpoint::load_checkpoint(path)?;
    let found = meta.get(META_RUN_ID).map(String::as_str).unwrap_or("");
    if found != run_id {
        return Err(err(format!(
            "belongs to run `{found}`, not `{run_id}`; remove it to start this run afresh"
        )));
    }
    let history: Vec<EpochRecord> = serde_json::from_str(
        meta.get(META_HISTORY).ok_or_else(|| err("no training history in metadata".into()))?,
    )
    .map_err(|e| err(format!("history: {e}")))?;
    for (name, var) in state {
        let key = format!("{MODEL_PREFIX}{name}");
        let t = tensors.get(&key).ok_or_else(|| err(format!("missing tensor `{key}`")))?;
        if t.dims() != var.dims() {
            return Err(err(format!(
                "tensor `{key}` has shape {:?}, the model needs {:?}",
                t.dims(),
                var.dims()
            )));
        }
        var.set(&t.to_device(var.device())?.to_dtype(var.dtype())?)?;
    }
    let optim_state: Vec<(String, Tensor)> = tensors
        .iter()
        .filter_map(|(k, t)| k.strip_prefix(OPTIM_PREFIX).map(|n| (n.to_string(), t.clone())))
        .collect();
    optimizer.load_state(&optim_state)?;
    Ok(history)
}
