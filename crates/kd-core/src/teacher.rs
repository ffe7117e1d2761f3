//! Where a distilling method gets its teacher's logits: from the teacher itself, run in eval
//! mode without gradient, or (performance issue) from a soft-label cache keyed by example and
//! augmentation view.

use std::sync::Arc;

use candle_core::{Result, Tensor};

use crate::batch::Batch;
use crate::model::{Classifier, Mode};

/// Supplies teacher logits `(batch, classes)` for a training batch. Never carries gradient.
pub trait TeacherLogits: Send {
    fn logits(&mut self, batch: &Batch) -> Result<Tensor>;
    /// The teacher model (for evaluation rows and label-space checks).
    fn model(&self) -> &Arc<dyn Classifier>;
}

/// Runs the teacher on every batch (eval mode, detached).
pub struct LiveTeacher {
    model: Arc<dyn Classifier>,
}

impl LiveTeacher {
    pub fn new(model: Arc<dyn Classifier>) -> Self {
        Self { model }
    }
}

impl TeacherLogits for LiveTeacher {
    fn logits(&mut self, batch: &Batch) -> Result<Tensor> {
        Ok(self.model.forward(&batch.inputs, Mode::Eval)?.logits.detach())
    }

    fn model(&self) -> &Arc<dyn Classifier> {
        &self.model
    }
}
