//! Evaluation metrics: what the trainer measures on the evaluation split after every epoch, for
//! every model a method evaluates, and what the results rows' `metric` column names.
//!
//! A [`Metric`] names itself and makes a fresh [`MetricAccumulator`] for each evaluated model
//! and epoch; the accumulator sees every evaluation batch in order (`outputs` of the model,
//! the batch's `labels` as `targets`) and then gives the value. A task declares its metrics
//! (image recipes: [`top1_top5`]; a GLUE task: its official ones, by [`by_name`]); the trainer
//! records them in [`EvalScores`], in that order.
//!
//! What each built-in metric expects and returns, in the units the results rows use:
//!
//! | name | file | outputs | targets | value |
//! |---|---|---|---|---|
//! | `top1`, `top5`, `top<k>` | [`top_k`] | `(n, classes)` logits | `(n,)` class ids | percent (0–100); absent with fewer than `k` classes (except `top1`) |
//! | `accuracy` | [`accuracy`] | `(n, classes)` logits, arg-max | `(n,)` class ids | percent (0–100) |
//! | `f1` | [`f1`] | `(n, classes)` logits, arg-max | `(n,)` class ids | F1 of class 1, percent (0–100) |
//! | `mcc` | [`mcc`] | `(n, classes)` logits, arg-max | `(n,)` class ids | Matthews correlation in [−1, 1] |
//! | `pearson`, `spearman` | [`correlation`] | `(n,)` or `(n, 1)` predicted scores | `(n,)` f32 gold scores | correlation in [−1, 1] |
//!
//! Class ids may be any integer dtype (they are read as u32); a regression task's
//! `Batch.labels` are its f32 gold scores. An accumulator that saw no example gives 0 (`top1`,
//! `accuracy`, `f1`, `mcc`, correlations), as the functions below do on empty input.

use std::fmt;
use std::sync::Arc;

use candle_core::{Result, Tensor};

pub mod accuracy;
pub mod correlation;
pub mod f1;
pub mod mcc;
mod scores;
pub mod top_k;

pub use accuracy::{argmax, Accuracy};
pub use correlation::{average_ranks, pearson, spearman, Pearson, Spearman};
pub use f1::{f1_binary, F1};
pub use mcc::{matthews_corrcoef, Mcc};
pub use scores::EvalScores;
pub use top_k::{topk_correct, TopK};

/// A metric a task declares: a name and a way to accumulate it over an evaluation.
pub trait Metric: Send + Sync {
    /// The results CSV's `metric` column and the key in [`EvalScores`]: `top1`, `top5`,
    /// `accuracy`, `f1`, `mcc`, `pearson`, `spearman`, or a task's own.
    fn name(&self) -> &str;
    /// A fresh accumulator (one per evaluated model per evaluation).
    fn accumulator(&self) -> Box<dyn MetricAccumulator>;
}

/// One metric being computed over the batches of one evaluation.
pub trait MetricAccumulator: Send {
    /// Adds one batch: the model's `outputs` and the batch's `targets` (its labels).
    fn update(&mut self, outputs: &Tensor, targets: &Tensor) -> Result<()>;
    /// The value over every batch so far; `None` when the metric does not apply (top-5 of a
    /// model with fewer than 5 classes), which the results rows leave out.
    fn value(&self) -> Option<f64>;
}

impl fmt::Debug for dyn Metric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Metric({})", self.name())
    }
}

/// The metrics of image classification, what every image recipe records: `top1`, `top5`.
pub fn top1_top5() -> Vec<Arc<dyn Metric>> {
    vec![Arc::new(TopK::new(1)), Arc::new(TopK::new(5))]
}

/// The built-in metric called `name` (`top<k>` for any k ≥ 1, `accuracy`, `f1`, `mcc`,
/// `pearson`, `spearman`); an unknown name lists the known ones.
pub fn by_name(name: &str) -> crate::Result<Arc<dyn Metric>> {
    let k = name.strip_prefix("top").and_then(|k| k.parse::<usize>().ok()).filter(|&k| k >= 1);
    Ok(match (name, k) {
        (_, Some(k)) => Arc::new(TopK::new(k)),
        ("accuracy", _) => Arc::new(Accuracy),
        ("f1", _) => Arc::new(F1),
        ("mcc", _) => Arc::new(Mcc),
        ("pearson", _) => Arc::new(Pearson),
        ("spearman", _) => Arc::new(Spearman),
        _ => {
            return Err(crate::Error::Msg(format!(
                "unknown metric `{name}`; known: top1, top5 (top<k>), accuracy, f1, mcc, pearson, spearman"
            )))
        }
    })
}

/// Every metric of `metrics` over one `(outputs, targets)` pair (a whole split at once), in
/// order.
pub fn score(metrics: &[Arc<dyn Metric>], outputs: &Tensor, targets: &Tensor) -> Result<EvalScores> {
    let mut acc = Accumulators::new(metrics);
    acc.update(outputs, targets)?;
    Ok(acc.finish())
}

/// The accumulators of a list of metrics, for one evaluated model.
pub struct Accumulators {
    names: Vec<String>,
    acc: Vec<Box<dyn MetricAccumulator>>,
}

impl Accumulators {
    pub fn new(metrics: &[Arc<dyn Metric>]) -> Self {
        Self {
            names: metrics.iter().map(|m| m.name().to_string()).collect(),
            acc: metrics.iter().map(|m| m.accumulator()).collect(),
        }
    }

    pub fn update(&mut self, outputs: &Tensor, targets: &Tensor) -> Result<()> {
        self.acc.iter_mut().try_for_each(|a| a.update(outputs, targets))
    }

    pub fn finish(&self) -> EvalScores {
        EvalScores::new(self.names.iter().cloned().zip(self.acc.iter().map(|a| a.value())))
    }
}

/// The class ids of `targets`, checked against `n` rows of outputs.
fn class_ids(what: &str, targets: &Tensor, n: usize) -> Result<Vec<u32>> {
    let ids = targets.flatten_all()?.to_dtype(candle_core::DType::U32)?.to_vec1::<u32>()?;
    if ids.len() != n {
        candle_core::bail!("{what}: {n} rows of outputs but {} labels", ids.len());
    }
    Ok(ids)
}
