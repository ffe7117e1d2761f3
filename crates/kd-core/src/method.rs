//! The `Method` trait: a distillation method turns a batch into named losses and says which
//! models it evaluates. The trainer owns optimisation, schedules, evaluation and checkpoints.

use candle_core::{Result, Tensor};

use crate::batch::Batch;

/// Where training is when a loss is computed; methods with schedules (temperature, weights)
/// read their position from it.
#[derive(Debug, Clone, Copy)]
pub struct StepContext {
    pub epoch: usize,
    pub epochs: usize,
    pub step_in_epoch: usize,
    pub steps_per_epoch: usize,
}

impl StepContext {
    /// Fraction of training done, in `[0, 1]`.
    pub fn progress(&self) -> f64 {
        let total = (self.epochs * self.steps_per_epoch).max(1) as f64;
        ((self.epoch * self.steps_per_epoch + self.step_in_epoch) as f64 / total).clamp(0.0, 1.0)
    }

    pub fn global_step(&self) -> usize {
        self.epoch * self.steps_per_epoch + self.step_in_epoch
    }
}

/// The loss of one step: `total` is what gets back-propagated; `parts` are scalar terms for logs.
#[derive(Debug, Clone)]
pub struct Losses {
    pub total: Tensor,
    pub parts: Vec<(String, Tensor)>,
}

/// A model a method wants evaluated, as it appears in the results CSV.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct EvalEntry {
    /// `student`, `teacher`, `peer-1`, `exit-2`, `ensemble`, ...
    pub role: String,
    /// Architecture name, e.g. `resnet20`.
    pub model: String,
    /// Trainable parameters of that model.
    pub params: usize,
}

impl EvalEntry {
    /// The entry for `model` evaluated under `role`.
    pub fn of(role: &str, model: &dyn crate::model::Classifier) -> Self {
        EvalEntry { role: role.to_string(), model: model.arch().to_string(), params: model.num_params() }
    }
}

pub trait Method: Send {
    /// Method name as in recipes and the CSV `method` column, e.g. `vanilla`.
    fn name(&self) -> &str;
    /// Variant for the CSV `variant` column: `plain` for the baseline, otherwise e.g. `kd`.
    fn variant(&self) -> &str;
    /// Losses for one training batch (models in training mode).
    fn losses(&mut self, batch: &Batch, ctx: &StepContext) -> Result<Losses>;
    /// The models this method reports, in a fixed order.
    fn eval_entries(&self) -> Vec<EvalEntry>;
    /// Eval-mode logits for `inputs`, one tensor per entry of `eval_entries`, same order.
    fn eval_logits(&self, inputs: &Tensor) -> Result<Vec<Tensor>>;
    /// Trainable parameters the method owns (regressors, projections, embedding heads):
    /// optimised, checkpointed and resumed with the models, never counted in a model's
    /// parameters. Names are unique within the method and stable across runs (they key the
    /// checkpoint).
    fn parameters(&self) -> Vec<(String, candle_core::Var)> {
        Vec::new()
    }
    /// Non-trainable state the method owns (memory banks): checkpointed and restored, never
    /// optimised.
    fn buffers(&self) -> Vec<(String, candle_core::Var)> {
        Vec::new()
    }
}
