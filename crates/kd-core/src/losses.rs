//! Loss primitives shared by methods. Conventions follow RepDistiller: KL divergences are
//! summed over classes and averaged over the batch (`batchmean`).

use candle_core::{Result, Tensor, D};
use candle_nn::ops::{log_softmax, softmax_last_dim};

/// Mean cross-entropy of `(batch, classes)` logits against `(batch,)` u32 labels, with optional
/// label smoothing `eps` (PyTorch's definition: target = (1-eps)·onehot + eps/classes).
pub fn cross_entropy(logits: &Tensor, labels: &Tensor, label_smoothing: f64) -> Result<Tensor> {
    let logp = log_softmax(logits, D::Minus1)?;
    let nll = logp.gather(&labels.to_dtype(candle_core::DType::U32)?.unsqueeze(1)?, 1)?.squeeze(1)?.neg()?;
    let nll = nll.mean_all()?;
    if label_smoothing == 0.0 {
        return Ok(nll);
    }
    let smooth = logp.mean(D::Minus1)?.neg()?.mean_all()?;
    (nll * (1.0 - label_smoothing))? + (smooth * label_smoothing)?
}

/// Softmax of `logits / temperature` over the last dimension.
pub fn soft_targets(logits: &Tensor, temperature: f64) -> Result<Tensor> {
    softmax_last_dim(&(logits / temperature)?)
}

/// `KL(p_target ‖ softmax(student / T))`, summed over classes, averaged over the batch.
/// `target_probs` are treated as constants (detached). Zero-probability targets contribute 0.
pub fn kl_to_targets(student_logits: &Tensor, target_probs: &Tensor, temperature: f64) -> Result<Tensor> {
    let target = target_probs.detach();
    let log_ps = log_softmax(&(student_logits / temperature)?, D::Minus1)?;
    // p·log p with 0·log 0 = 0: clamp inside the log; the product is 0 where p is 0.
    let log_pt = target.clamp(1e-30, 1.0)?.log()?;
    let kl = (&target * (log_pt - log_ps)?)?.sum(D::Minus1)?;
    kl.mean_all()
}

/// Hinton's soft-target term `T²·KL(softmax(t/T) ‖ softmax(s/T))` (batch mean).
pub fn distill_kl(student_logits: &Tensor, teacher_logits: &Tensor, temperature: f64) -> Result<Tensor> {
    let pt = soft_targets(&teacher_logits.detach(), temperature)?;
    kl_to_targets(student_logits, &pt, temperature)? * (temperature * temperature)
}

/// The soft-target hyper-parameters every Hinton-style method shares (recipes' `[distill]`
/// `temperature`, `alpha`, `label_smoothing`). Method crates validate them with their own
/// error messages; the type lives here so that no method crate depends on another.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SoftTargetConfig {
    /// Softmax temperature `T` of the soft targets.
    pub temperature: f64,
    /// Weight `α` of the soft-target term; `1-α` weighs the hard-label cross-entropy.
    pub alpha: f64,
    /// Label smoothing of the hard-label term (0 = none, as in Hinton KD).
    #[serde(default)]
    pub label_smoothing: f64,
}

/// Hinton's loss on logits: `(1-α)·CE(y, s) + α·T²·KL(softmax(t/T) ‖ softmax(s/T))`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SoftTargetLoss {
    pub temperature: f64,
    pub alpha: f64,
    pub label_smoothing: f64,
}

/// The terms of one soft-target loss evaluation.
pub struct SoftTargetTerms {
    pub total: Tensor,
    pub ce: Tensor,
    /// `T²·KL`, before the `α` weight.
    pub kd: Tensor,
}

impl SoftTargetLoss {
    pub fn new(cfg: &SoftTargetConfig) -> Self {
        Self { temperature: cfg.temperature, alpha: cfg.alpha, label_smoothing: cfg.label_smoothing }
    }

    pub fn compute(&self, student: &Tensor, teacher: &Tensor, labels: &Tensor) -> Result<SoftTargetTerms> {
        let ce = cross_entropy(student, labels, self.label_smoothing)?;
        let kd = distill_kl(student, teacher, self.temperature)?;
        let total = ((&ce * (1.0 - self.alpha))? + (&kd * self.alpha)?)?;
        Ok(SoftTargetTerms { total, ce, kd })
    }
}

/// Mean squared error between a `(batch, 1)` or `(batch,)` prediction and `(batch,)` targets.
pub fn mse(pred: &Tensor, target: &Tensor) -> Result<Tensor> {
    let target = target.to_dtype(pred.dtype())?.flatten_all()?;
    (pred.flatten_all()? - target)?.sqr()?.mean_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn cross_entropy_matches_hand_value() {
        // logits [0, ln 3] with label 1: p = 3/4, CE = -ln(0.75)
        let logits = Tensor::new(&[[0f32, 3f32.ln()]], &Device::Cpu).unwrap();
        let labels = Tensor::new(&[1u32], &Device::Cpu).unwrap();
        let ce = cross_entropy(&logits, &labels, 0.0).unwrap().to_scalar::<f32>().unwrap();
        assert!((ce - (-(0.75f32).ln())).abs() < 1e-6, "{ce}");
        // smoothing 0.1 over 2 classes: 0.95·(-ln .75) + 0.05·(-ln .25)
        let ls = cross_entropy(&logits, &labels, 0.1).unwrap().to_scalar::<f32>().unwrap();
        let want = 0.95 * -(0.75f32).ln() + 0.05 * -(0.25f32).ln();
        assert!((ls - want).abs() < 1e-6, "{ls} vs {want}");
    }

    #[test]
    fn kl_is_zero_for_identical_logits_and_positive_otherwise() {
        let a = Tensor::new(&[[1f32, 2., 3.], [0., 0., 5.]], &Device::Cpu).unwrap();
        let z = distill_kl(&a, &a, 4.0).unwrap().to_scalar::<f32>().unwrap();
        assert!(z.abs() < 1e-6);
        let b = Tensor::new(&[[3f32, 2., 1.], [5., 0., 0.]], &Device::Cpu).unwrap();
        assert!(distill_kl(&a, &b, 4.0).unwrap().to_scalar::<f32>().unwrap() > 0.0);
    }
}
