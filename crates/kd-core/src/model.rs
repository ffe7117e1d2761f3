//! The contract between models (kd-models) and methods (kd-vanilla, kd-self, ...).
//! Methods see logits and features, never pixels or tokens.

use candle_core::{Result, Tensor};

/// Whether a forward pass trains (batch statistics, updates running stats) or evaluates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Train,
    Eval,
}

impl Mode {
    pub fn is_train(self) -> bool {
        matches!(self, Mode::Train)
    }
}

/// What a classifier returns: logits plus the intermediate features later methods need.
#[derive(Debug, Clone)]
pub struct ModelOutput {
    /// `(batch, classes)` pre-softmax scores.
    pub logits: Tensor,
    /// Feature map after each stage, shallowest first (`(batch, C, H, W)` for CNNs).
    pub stage_features: Vec<Tensor>,
    /// The penultimate representation the linear head sees (`(batch, D)`).
    pub embedding: Tensor,
}

/// A trainable or frozen classifier. Implemented by every model in kd-models.
pub trait Classifier: Send + Sync {
    fn forward(&self, input: &Tensor, mode: Mode) -> Result<ModelOutput>;
    /// Size of the label space (teacher and student must agree).
    fn num_classes(&self) -> usize;
    /// Architecture name as written in recipes, e.g. `resnet20`.
    fn arch(&self) -> &str;
    /// Number of trainable parameters (running statistics excluded).
    fn num_params(&self) -> usize;
}
