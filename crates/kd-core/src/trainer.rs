//! The trainer: epochs of `Method::losses` → backward → optimiser step, an LR schedule,
//! evaluation after every epoch (last and best epoch both kept), atomic checkpoints after every
//! epoch, and exact resume from the last completed epoch.
//!
//! Determinism: the data order and augmentation of epoch `e` depend only on `(seed, e)` (the
//! `BatchSource` contract), and the checkpoint holds every model variable (running statistics
//! included) and the optimiser state, so a resumed run continues exactly as an uninterrupted one.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use candle_core::{Tensor, Var};
use serde::{Deserialize, Serialize};

use crate::batch::Batch;
use crate::checkpoint;
use crate::error::{Error, Result};
use crate::method::{EvalEntry, Method, StepContext};
use crate::metric::{Accumulators, Metric};
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
    /// What every evaluation measures, in this order: the task's metrics
    /// ([`crate::metric::top1_top5`] for image classification).
    pub metrics: Vec<Arc<dyn Metric>>,
}

pub use crate::metric::EvalScores;

/// One epoch of history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    /// 1-based epoch number.
    pub epoch: usize,
    pub lr: f64,
    pub train_loss: f64,
    pub loss_parts: BTreeMap<String, f64>,
    /// One entry per `Method::eval_entries`, same order; each holds the run's metrics.
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
    /// The names of the run's metrics (`TrainSpec.metrics`), in order: what the rows report.
    pub metrics: Vec<String>,
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

    /// `(last value, best value, best epoch)` of `metric` (any recorded name: `top1`, `f1`, …)
    /// for entry `i`; `None` when the last epoch has no value for it. Best is the highest value
    /// (the first epoch reaching it) over the epochs that have one.
    pub fn summary(&self, i: usize, metric: &str) -> Option<(f64, f64, usize)> {
        let pick = |r: &EpochRecord| -> Option<f64> { r.eval.get(i)?.get(metric) };
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
        // A checkpoint that recorded other metrics (an older version scored text tasks by
        // top-1 only): the restored weights are its last epoch's, so evaluating them now gives
        // that epoch's values of this run's metrics, and the rows can report them.
        let names: Vec<&str> = spec.metrics.iter().map(|m| m.name()).collect();
        if let Some(last) = history.last_mut() {
            if last.eval.iter().any(|s| s.names().ne(names.iter().copied())) {
                observer.on_eval_start(eval_data.steps());
                last.eval = evaluate_method(method, eval_data, &spec.metrics, &mut *observer)?;
            }
        }
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
        let eval = evaluate_method(method, eval_data, &spec.metrics, &mut *observer)?;
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
    let metrics = spec.metrics.iter().map(|m| m.name().to_string()).collect();
    Ok(TrainReport { entries, history, resumed_epochs, metrics })
}

/// Eval-mode scores of every model the method reports, one [`EvalScores`] of `metrics` each.
pub fn evaluate_method(
    method: &dyn Method,
    data: &dyn BatchSource,
    metrics: &[Arc<dyn Metric>],
    observer: &mut dyn TrainObserver,
) -> Result<Vec<EvalScores>> {
    let n = method.eval_entries().len();
    evaluate_with(data, n, metrics, observer, |inputs| method.eval_logits(inputs))
}

/// Scores (`metrics`, in order) of `n` output producers over a split: `f` returns `n` output
/// tensors per batch, each scored against the batch's labels.
pub fn evaluate_with(
    data: &dyn BatchSource,
    n: usize,
    metrics: &[Arc<dyn Metric>],
    observer: &mut dyn TrainObserver,
    mut f: impl FnMut(&Tensor) -> candle_core::Result<Vec<Tensor>>,
) -> Result<Vec<EvalScores>> {
    let mut acc: Vec<Accumulators> = (0..n).map(|_| Accumulators::new(metrics)).collect();
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
    Ok(acc.iter().map(Accumulators::finish).collect())
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::method::Losses;
    use crate::optim::Sgd;
    use crate::schedule::LrSchedule;
    use candle_core::{Device, Tensor};

    /// One weight `w`; loss = w² per step, except that it turns NaN at `nan_epoch`.
    struct Toy {
        w: Var,
        nan_epoch: Option<usize>,
    }

    impl Method for Toy {
        fn name(&self) -> &str {
            "toy"
        }
        fn variant(&self) -> &str {
            "plain"
        }
        fn losses(&mut self, _b: &Batch, ctx: &StepContext) -> candle_core::Result<Losses> {
            let l = self.w.as_tensor().sqr()?.sum_all()?;
            let l = if Some(ctx.epoch) == self.nan_epoch { (l * f64::NAN)? } else { l };
            Ok(Losses { total: l, parts: vec![] })
        }
        fn eval_entries(&self) -> Vec<EvalEntry> {
            vec![EvalEntry { role: "student".into(), model: "toy".into(), params: 1 }]
        }
        fn eval_logits(&self, inputs: &Tensor) -> candle_core::Result<Vec<Tensor>> {
            // Two classes; class 0 wins while w > 0.
            let n = inputs.dim(0)?;
            let w = self.w.as_tensor().reshape((1, 1))?.broadcast_as((n, 1))?;
            Ok(vec![Tensor::cat(&[w.clone(), w.neg()?], 1)?])
        }
    }

    struct TwoBatches;
    impl BatchSource for TwoBatches {
        fn steps(&self) -> usize {
            2
        }
        fn examples(&self) -> usize {
            4
        }
        fn epoch(&self, _e: usize) -> Box<dyn Iterator<Item = Result<Batch>> + '_> {
            let b = Batch {
                inputs: Tensor::zeros((2, 1), candle_core::DType::F32, &Device::Cpu).unwrap(),
                labels: Tensor::new(&[0u32, 0], &Device::Cpu).unwrap(),
                example_ids: vec![0, 1],
                views: vec![0, 0],
                strong: None,
            };
            Box::new(vec![Ok(b.clone()), Ok(b)].into_iter())
        }
    }

    fn run(dir: &Path, epochs: usize, nan_epoch: Option<usize>) -> (Result<TrainReport>, f32) {
        let w = Var::new(&[1f32], &Device::Cpu).unwrap();
        let state = vec![("w".to_string(), w.clone())];
        let mut opt = Sgd::new(state.clone(), 0.1, 0.9, false, 0.0).unwrap();
        let spec = TrainSpec {
            epochs,
            base_lr: 0.1,
            lr_schedule: LrSchedule::Constant { warmup_epochs: 0.0 },
            checkpoint: Some(dir.join("ckpt.safetensors")),
            run_id: "toy".into(),
            metrics: crate::metric::top1_top5(),
        };
        let mut m = Toy { w: w.clone(), nan_epoch };
        let r = train(&mut m, &state, &mut opt, &spec, &TwoBatches, &TwoBatches, &mut Silent);
        (r, w.as_tensor().to_vec1::<f32>().unwrap()[0])
    }

    /// A regression head `w·x` trained with MSE on gold scores (f32 labels).
    struct ToyRegression {
        w: Var,
    }

    impl Method for ToyRegression {
        fn name(&self) -> &str {
            "toy"
        }
        fn variant(&self) -> &str {
            "plain"
        }
        fn losses(&mut self, b: &Batch, _ctx: &StepContext) -> candle_core::Result<Losses> {
            let pred = self.eval_logits(&b.inputs)?.remove(0).flatten_all()?;
            let l = (pred - &b.labels)?.sqr()?.mean_all()?;
            Ok(Losses { total: l.clone(), parts: vec![("mse".into(), l.detach())] })
        }
        fn eval_entries(&self) -> Vec<EvalEntry> {
            vec![EvalEntry { role: "student".into(), model: "toy".into(), params: 1 }]
        }
        fn eval_logits(&self, inputs: &Tensor) -> candle_core::Result<Vec<Tensor>> {
            Ok(vec![inputs.broadcast_mul(&self.w.as_tensor().reshape((1, 1))?)?])
        }
    }

    /// x = [1, 2, 3, 4] in two batches, gold scores [1, 3, 2, 5].
    struct Scores;
    impl BatchSource for Scores {
        fn steps(&self) -> usize {
            2
        }
        fn examples(&self) -> usize {
            4
        }
        fn epoch(&self, _e: usize) -> Box<dyn Iterator<Item = Result<Batch>> + '_> {
            let b = |x: [f32; 2], y: [f32; 2], ids: [u32; 2]| Batch {
                inputs: Tensor::new(&[[x[0]], [x[1]]], &Device::Cpu).unwrap(),
                labels: Tensor::new(&y, &Device::Cpu).unwrap(),
                example_ids: ids.to_vec(),
                views: vec![0, 0],
                strong: None,
            };
            Box::new(
                vec![Ok(b([1.0, 2.0], [1.0, 3.0], [0, 1])), Ok(b([3.0, 4.0], [2.0, 5.0], [2, 3]))]
                    .into_iter(),
            )
        }
    }

    #[test]
    fn a_regression_task_records_its_correlations_every_epoch() {
        let w = Var::new(&[0.5f32], &Device::Cpu).unwrap();
        let state = vec![("w".to_string(), w.clone())];
        let mut opt = Sgd::new(state.clone(), 0.01, 0.0, false, 0.0).unwrap();
        let metrics: Vec<Arc<dyn Metric>> =
            ["pearson", "spearman"].iter().map(|n| crate::metric::by_name(n).unwrap()).collect();
        let spec = TrainSpec {
            epochs: 3,
            base_lr: 0.01,
            lr_schedule: LrSchedule::Constant { warmup_epochs: 0.0 },
            checkpoint: None,
            run_id: "toy".into(),
            metrics,
        };
        let r =
            train(&mut ToyRegression { w }, &state, &mut opt, &spec, &Scores, &Scores, &mut Silent).unwrap();
        assert_eq!(r.history.len(), 3);
        // w stays positive, so the predictions rank as x: SciPy's pearsonr(x, gold) =
        // 5.5/sqrt(5·8.75) = 0.8315218406202999 and spearmanr = 0.8, every epoch.
        for rec in &r.history {
            let s = &rec.eval[0];
            assert_eq!(s.names().collect::<Vec<_>>(), ["pearson", "spearman"]);
            assert!((s.get("pearson").unwrap() - 0.8315218406202999).abs() < 1e-6, "{s:?}");
            assert!((s.get("spearman").unwrap() - 0.8).abs() < 1e-12, "{s:?}");
            assert_eq!(s.get("top1"), None, "only the task's metrics");
        }
        let (last, best, _) = r.summary(0, "pearson").unwrap();
        assert!(best >= last && (last - 0.8315218406202999).abs() < 1e-6);
        let template = crate::results::ResultRow {
            experiment: "e".into(),
            method: "toy".into(),
            variant: "plain".into(),
            profile: "p".into(),
            seed: 0,
            role: String::new(),
            model: String::new(),
            params: 0,
            dataset: "d".into(),
            revision: "r".into(),
            train_examples: 4,
            eval_examples: 4,
            split: "s".into(),
            metric: String::new(),
            value: 0.0,
            best_value: 0.0,
            best_epoch: 0,
            epochs: 3,
            wall_seconds: 0.0,
            examples_per_second: 0.0,
            device: "cpu".into(),
            config_hash: "h".into(),
            teacher_hash: String::new(),
            git_commit: String::new(),
            kd_bench_version: String::new(),
            started_at: String::new(),
        };
        let rows = crate::results::run_rows(&template, &r, "");
        let got: Vec<(&str, &str)> = rows.iter().map(|r| (r.role.as_str(), r.metric.as_str())).collect();
        assert_eq!(got, [("student", "pearson"), ("student", "spearman")]);
        assert_eq!(rows[1].value, 0.8);
    }

    #[test]
    fn a_checkpoint_with_other_metrics_has_its_last_epoch_rescored_on_resume() {
        let dir = tempfile::tempdir().unwrap();
        let before = run(dir.path(), 2, None).0.unwrap();
        let top1 = before.summary(0, "top1").unwrap().0;
        let w = Var::new(&[1f32], &Device::Cpu).unwrap();
        let state = vec![("w".to_string(), w.clone())];
        let mut opt = Sgd::new(state.clone(), 0.1, 0.9, false, 0.0).unwrap();
        let spec = TrainSpec {
            epochs: 2,
            base_lr: 0.1,
            lr_schedule: LrSchedule::Constant { warmup_epochs: 0.0 },
            checkpoint: Some(dir.path().join("ckpt.safetensors")),
            run_id: "toy".into(),
            metrics: vec![crate::metric::by_name("accuracy").unwrap()],
        };
        let mut m = Toy { w, nan_epoch: None };
        let r = train(&mut m, &state, &mut opt, &spec, &TwoBatches, &TwoBatches, &mut Silent).unwrap();
        assert_eq!(r.resumed_epochs, 2);
        assert_eq!(r.history[0].eval[0].names().collect::<Vec<_>>(), ["top1", "top5"], "kept as recorded");
        assert_eq!(r.history[1].eval[0].names().collect::<Vec<_>>(), ["accuracy"]);
        // The same weights as when epoch 2 recorded its top-1 (= arg-max accuracy).
        assert_eq!(r.summary(0, "accuracy"), Some((top1, top1, 2)));
        assert_eq!(r.summary(0, "top1"), None, "the last epoch has no top-1 any more");
    }

    #[test]
    fn nan_loss_stops_naming_epoch_and_step_and_keeps_the_last_good_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let (r, _) = run(dir.path(), 3, Some(1));
        let e = r.unwrap_err();
        assert!(matches!(e, Error::NonFiniteLoss { epoch: 2, step: 0, .. }), "{e}");
        let (_, meta) = checkpoint::load_checkpoint(&dir.path().join("ckpt.safetensors")).unwrap();
        assert_eq!(meta[META_EPOCH], "1", "epoch 1's checkpoint is intact");
    }

    #[test]
    fn resumed_training_ends_exactly_where_an_uninterrupted_one_does() {
        let a = tempfile::tempdir().unwrap();
        let (full, w_full) = run(a.path(), 3, None);
        let full = full.unwrap();
        let b = tempfile::tempdir().unwrap();
        run(b.path(), 1, None).0.unwrap();
        let (resumed, w_resumed) = run(b.path(), 3, None);
        let resumed = resumed.unwrap();
        assert_eq!(resumed.resumed_epochs, 1);
        assert_eq!(w_full, w_resumed, "momentum buffers and weights restored exactly");
        assert_eq!(full.summary(0, "top1"), resumed.summary(0, "top1"));
        // A checkpoint of another run is refused.
        let w = Var::new(&[1f32], &Device::Cpu).unwrap();
        let state = vec![("w".to_string(), w.clone())];
        let mut opt = Sgd::new(state.clone(), 0.1, 0.9, false, 0.0).unwrap();
        let spec = TrainSpec {
            epochs: 4,
            base_lr: 0.1,
            lr_schedule: LrSchedule::Constant { warmup_epochs: 0.0 },
            checkpoint: Some(b.path().join("ckpt.safetensors")),
            run_id: "other".into(),
            metrics: crate::metric::top1_top5(),
        };
        let e = train(
            &mut Toy { w, nan_epoch: None },
            &state,
            &mut opt,
            &spec,
            &TwoBatches,
            &TwoBatches,
            &mut Silent,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("belongs to run `toy`"), "{e}");
    }
}
