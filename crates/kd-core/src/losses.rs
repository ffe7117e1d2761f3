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
