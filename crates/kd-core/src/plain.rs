//! The `plain` baseline: the student trained with cross-entropy only, under the same budget,
//! data and seed as the distilled variants, so every CSV compares like with like.

use std::sync::Arc;

use candle_core::{Result, Tensor};

use crate::batch::Batch;
use crate::losses::cross_entropy;
use crate::method::{EvalEntry, Losses, Method, StepContext};
use crate::model::{Classifier, Mode};

pub struct PlainTraining {
    method: String,
    model: Arc<dyn Classifier>,
    label_smoothing: f64,
}

impl PlainTraining {
    /// `method` is the experiment's method name, reported with variant `plain`.
    pub fn new(method: impl Into<String>, model: Arc<dyn Classifier>, label_smoothing: f64) -> Self {
        Self { method: method.into(), model, label_smoothing }
    }
}

impl Method for PlainTraining {
    fn name(&self) -> &str {
        &self.method
    }

    fn variant(&self) -> &str {
        "plain"
    }

    fn losses(&mut self, batch: &Batch, _ctx: &StepContext) -> Result<Losses> {
        let out = self.model.forward(&batch.inputs, Mode::Train)?;
        let ce = cross_entropy(&out.logits, &batch.labels, self.label_smoothing)?;
        Ok(Losses { total: ce.clone(), parts: vec![("ce".into(), ce.detach())] })
    }

    fn eval_entries(&self) -> Vec<EvalEntry> {
        vec![EvalEntry::of("student", self.model.as_ref())]
    }

    fn eval_logits(&self, inputs: &Tensor) -> Result<Vec<Tensor>> {
        Ok(vec![self.model.forward(inputs, Mode::Eval)?.logits])
    }
}
