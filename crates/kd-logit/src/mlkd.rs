//! Multi-Level Logit Distillation (Jin, Wang & Lin, CVPR 2023); reference
//! `Jin-Ying/Multi-Level-Logit-Distillation`, `mdistiller/distillers/KD_ours.py`
//! (`kd_loss`, `cc_loss`, `bc_loss`, `KD_ours.forward_train`).
//!
//! Student and teacher see a weakly and a strongly augmented view of each image; the loss
//! aligns them at three levels, each at several temperatures (`T` and 3, 5, 2, 6):
//! - instance level: `T²·KL` of the softmaxes (batch mean),
//! - batch level: the `(batch × batch)` Gram matrices `P·Pᵀ` of the softmaxes,
//!   `Σ (G_t − G_s)² / batch`,
//! - class level: the `(classes × classes)` Gram matrices `Pᵀ·P`, `Σ (G_t − G_s)² / classes`,
//!
//! plus `ce_weight·(CE(weak) + CE(strong))`. Defaults are mdistiller's `cfg.py`
//! (`KD.TEMPERATURE` 4, `KD.LOSS.CE_WEIGHT` 0.1, `KD.LOSS.KD_WEIGHT` 0.9), which
//! `configs/cifar100/ours/*.yaml` leave unchanged.
//!
//! Where the code differs from the paper, this follows the code:
//! - The confidence masks (samples whose teacher confidence on the weak view, `max softmax`,
//!   is at most the batch median; classes whose summed teacher probability is at most the
//!   median) are applied as `(scalar_loss * mask).mean()` — the per-sample reduction is
//!   commented out — so each masked term is only scaled by the *fraction* of entries inside the
//!   mask (≈ ½). The instance mask scales the weak-view KL and batch terms, the class mask the
//!   weak-view class term.
//! - The strong-view KL terms at temperatures 2 and 6 are computed on the *weak* view's logits.
//! - The strong-view batch and class terms are computed but not added to the loss; only the
//!   weak-view ones are. They are not computed here.
//! - The median is `np.percentile(·, 50)` (linear interpolation), compared with `<=`.
//!
//! With logit standardisation (`logit_stand`, as `sunshangquan/logit-standardization-KD`'s
//! `MLKD.py`), only the instance-level KL terms standardise their logits.

use candle_core::{DType, Result, Tensor, D};
use kd_core::losses::cross_entropy;
use serde::{Deserialize, Serialize};

use crate::standardize::standardized_kd;
use crate::{check_pair, non_negative, parse_table, positive, softmax_t, ConfigError};

/// The temperatures the reference adds after `temperature`, in its order (the order matters:
/// the 4th and 5th strong-view KL terms use the weak view).
pub const EXTRA_TEMPERATURES: [f64; 4] = [3.0, 5.0, 2.0, 6.0];

/// `[distill]` of `method = "mlkd"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MlkdConfig {
    /// Weight of each view's cross-entropy (`KD.LOSS.CE_WEIGHT`).
    pub ce_weight: f64,
    /// Weight of every alignment term (`KD.LOSS.KD_WEIGHT`).
    pub kd_weight: f64,
    /// The first temperature (`KD.TEMPERATURE`); 3, 5, 2 and 6 follow.
    pub temperature: f64,
    /// Z-score logits before the instance-level KL terms (logit standardisation).
    pub logit_stand: bool,
}

impl Default for MlkdConfig {
    fn default() -> Self {
        Self { ce_weight: 0.1, kd_weight: 0.9, temperature: 4.0, logit_stand: false }
    }
}

impl MlkdConfig {
    pub const METHOD: &'static str = "mlkd";

    /// MLKD with logit standardisation as `tools/train.py --logit-stand --base-temp 2
    /// --kd-weight 9` of `sunshangquan/logit-standardization-KD` sets it up.
    pub fn logit_standardized() -> Self {
        Self { kd_weight: 9.0, temperature: 2.0, logit_stand: true, ..Self::default() }
    }

    /// Parses and validates a `[distill]` table; missing keys take the reference defaults.
    pub fn from_table(table: &toml::Table) -> std::result::Result<Self, ConfigError> {
        let cfg: Self = parse_table(Self::METHOD, table)?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn validate(&self) -> std::result::Result<(), ConfigError> {
        non_negative(Self::METHOD, "ce_weight", self.ce_weight)?;
        non_negative(Self::METHOD, "kd_weight", self.kd_weight)?;
        positive(Self::METHOD, "temperature", self.temperature)
    }

    /// `[temperature, 3, 5, 2, 6]`.
    pub fn temperatures(&self) -> [f64; 5] {
        let [a, b, c, d] = EXTRA_TEMPERATURES;
        [self.temperature, a, b, c, d]
    }
}

/// The terms of one evaluation, as the reference's `losses_dict` names them.
#[derive(Debug, Clone)]
pub struct MlkdLosses {
    /// `ce_weight·(CE(weak) + CE(strong))` (`loss_ce`).
    pub ce: Tensor,
    /// Instance level, weak and strong views (`loss_kd`).
    pub kd: Tensor,
    /// Class level, weak view (`loss_cc`).
    pub cc: Tensor,
    /// Batch level, weak view (`loss_bc`).
    pub bc: Tensor,
    pub total: Tensor,
    /// Fraction of samples in the confidence mask.
    pub instance_mask_fraction: f64,
    /// Fraction of classes in the class-confidence mask.
    pub class_mask_fraction: f64,
}

#[derive(Debug, Clone)]
pub struct MlkdLoss {
    pub config: MlkdConfig,
}

/// The logits of one view.
#[derive(Debug, Clone, Copy)]
pub struct View<'a> {
    pub student: &'a Tensor,
    pub teacher: &'a Tensor,
}

impl MlkdLoss {
    pub fn new(config: MlkdConfig) -> Self {
        Self { config }
    }

    /// The MLKD objective from the logits of the weak and the strong view.
    pub fn loss(&self, weak: View, strong: View, labels: &Tensor) -> Result<MlkdLosses> {
        check_pair(weak.student, weak.teacher)?;
        check_pair(strong.student, strong.teacher)?;
        let c = &self.config;
        let (sw, tw) = (weak.student, &weak.teacher.detach());
        let (ss, ts) = (strong.student, &strong.teacher.detach());

        // Constants (teacher, no gradient): the fused softmax is fine here.
        let pt_weak = candle_nn::ops::softmax_last_dim(tw)?.to_dtype(DType::F64)?;
        let confidence = pt_weak.max(D::Minus1)?.to_vec1::<f64>()?;
        let class_confidence = pt_weak.sum(0)?.to_vec1::<f64>()?;
        let inst = fraction_at_most_median(&confidence);
        let class = fraction_at_most_median(&class_confidence);

        let ce = ((cross_entropy(sw, labels, 0.0)? + cross_entropy(ss, labels, 0.0)?)? * c.ce_weight)?;
        let temps = c.temperatures();
        let kd = |s: &Tensor, t: &Tensor, temp: f64| standardized_kd(s, t, temp, c.logit_stand);
        let sum = |terms: Vec<Tensor>| -> Result<Tensor> { Tensor::stack(&terms, 0)?.sum_all() };

        let kd_weak = sum(temps.iter().map(|&t| kd(sw, tw, t)).collect::<Result<_>>()?)?;
        let mut strong_terms = Vec::with_capacity(5);
        for (i, &t) in temps.iter().enumerate() {
            // The reference's 4th and 5th "strong" terms take the weak view.
            strong_terms.push(if i < 3 { kd(ss, ts, t)? } else { kd(sw, tw, t)? });
        }
        let kd_strong = sum(strong_terms)?;
        let kd_total = (((kd_weak * inst)? + kd_strong)? * c.kd_weight)?;

        let cc = (sum(temps.iter().map(|&t| class_consistency(sw, tw, t)).collect::<Result<_>>()?)?
            * (c.kd_weight * class))?;
        let bc = (sum(temps.iter().map(|&t| batch_consistency(sw, tw, t)).collect::<Result<_>>()?)?
            * (c.kd_weight * inst))?;
        let total = (((&ce + &kd_total)? + &cc)? + &bc)?;
        Ok(MlkdLosses {
            ce,
            kd: kd_total,
            cc,
            bc,
            total,
            instance_mask_fraction: inst,
            class_mask_fraction: class,
        })
    }
}

/// The reference's `cc_loss`: `Σ (PₜᵀPₜ − PₛᵀPₛ)² / classes`.
pub fn class_consistency(student: &Tensor, teacher: &Tensor, temperature: f64) -> Result<Tensor> {
    let classes = student.dim(1)?;
    let ps = softmax_t(student, temperature)?;
    let pt = softmax_t(&teacher.detach(), temperature)?;
    let gs = ps.t()?.matmul(&ps)?;
    let gt = pt.t()?.matmul(&pt)?;
    (gt - gs)?.sqr()?.sum_all()? / classes as f64
}

/// The reference's `bc_loss`: `Σ (PₜPₜᵀ − PₛPₛᵀ)² / batch`.
pub fn batch_consistency(student: &Tensor, teacher: &Tensor, temperature: f64) -> Result<Tensor> {
    let batch = student.dim(0)?;
    let ps = softmax_t(student, temperature)?;
    let pt = softmax_t(&teacher.detach(), temperature)?;
    let gs = ps.matmul(&ps.t()?)?;
    let gt = pt.matmul(&pt.t()?)?;
    (gt - gs)?.sqr()?.sum_all()? / batch as f64
}

/// `np.percentile(values, 50)` with numpy's default linear interpolation.
pub fn median_linear(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let pos = 0.5 * (v.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    v[lo] + (v[hi] - v[lo]) * (pos - lo as f64)
}

/// Mean of `values <= median(values)`: what `(loss * mask).mean()` multiplies a scalar loss by.
pub fn fraction_at_most_median(values: &[f64]) -> f64 {
    let m = median_linear(values);
    values.iter().filter(|&&v| v <= m).count() as f64 / values.len() as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_mask_fraction_follow_numpy() {
        assert_eq!(median_linear(&[3.0, 1.0, 2.0, 10.0]), 2.5);
        assert_eq!(median_linear(&[5.0, 1.0, 3.0]), 3.0);
        assert_eq!(fraction_at_most_median(&[3.0, 1.0, 2.0, 10.0]), 0.5);
        assert_eq!(fraction_at_most_median(&[5.0, 1.0, 3.0]), 2.0 / 3.0);
        // Ties at the median all fall inside the mask.
        assert_eq!(fraction_at_most_median(&[1.0, 1.0, 1.0, 2.0]), 0.75);
    }

    #[test]
    fn config_errors_name_the_key() {
        for (text, key) in [
            ("temperature = 0.0", "`temperature`"),
            ("kd_weight = -0.9", "`kd_weight`"),
            ("temperatures = [1.0]", "temperatures"),
        ] {
            let e = MlkdConfig::from_table(&toml::from_str(text).unwrap()).unwrap_err().to_string();
            assert!(e.contains(key) && e.contains("mlkd"), "{text}: {e}");
        }
        assert_eq!(MlkdConfig::from_table(&toml::Table::new()).unwrap(), MlkdConfig::default());
        assert_eq!(MlkdConfig::default().temperatures(), [4.0, 3.0, 5.0, 2.0, 6.0]);
    }
}
