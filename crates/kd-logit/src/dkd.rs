//! Decoupled Knowledge Distillation (Zhao, Cui, Song, Qiu & Liang, CVPR 2022); reference
//! `megvii-research/mdistiller`, `mdistiller/distillers/DKD.py` (`dkd_loss`, `DKD`).
//!
//! The KL of classical KD splits into a target-class term (TCKD: the binary distribution
//! "target class vs all others") and a non-target term (NCKD: the distribution over the
//! non-target classes); DKD weighs them freely, `α·TCKD + β·NCKD`, both `T²`-scaled and
//! averaged over the batch, and ramps the whole KD term in over the first `warmup` epochs by
//! `min(epoch / warmup, 1)` (epochs counted from 1, as mdistiller's trainer counts them).
//!
//! As the reference computes it:
//! - TCKD is the KL between the two-bin distributions `[p_target, Σ p_others]` of teacher and
//!   student at temperature `T`, with the student's bins logged directly (`torch.log`).
//! - NCKD is the KL between softmaxes of `logits/T − 1000·onehot(target)`: the target class is
//!   masked by subtracting 1000, not removed, so its probability underflows to 0.
//! - KD = TCKD + (1 − p_target)·NCKD is the paper's decomposition; DKD (paper Eq. 7 and code)
//!   drops the `(1 − p_target)` factor, so `α = β = 1` is not vanilla KD.
//!
//! Defaults are mdistiller's `cfg.py` (CE weight 1, α 1, β 8, T 4, warm-up 20 epochs), the
//! value its `configs/cifar100/dkd/*.yaml` keep for res32x4→res8x4, res32x4→shuv1/shuv2,
//! res50→mv2 and wrn40_2→shuv1; β differs per pair: 2 for res56→res20 and res110→res32, 6 for
//! vgg13→vgg8, vgg13→mv2, wrn40_2→wrn16_2 and wrn40_2→wrn40_1.

use candle_core::{Result, Tensor, D};
use kd_core::losses::cross_entropy;
use serde::{Deserialize, Serialize};

use crate::standardize::standardize;
use crate::{
    check_pair, kl_div_sum, non_negative, one_hot, parse_table, positive, require, softmax, softmax_t,
    ConfigError,
};

/// `[distill]` of `method = "dkd"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DkdConfig {
    /// Weight of the hard-label cross-entropy (`DKD.CE_WEIGHT`).
    pub ce_weight: f64,
    /// Weight `α` of TCKD (`DKD.ALPHA`).
    pub alpha: f64,
    /// Weight `β` of NCKD (`DKD.BETA`; 8 by default, 2 or 6 for some CIFAR-100 pairs).
    pub beta: f64,
    /// Softmax temperature `T` (`DKD.T`).
    pub temperature: f64,
    /// Epochs over which the KD weight ramps linearly to 1 (`DKD.WARMUP`).
    pub warmup: usize,
    /// Z-score teacher and student logits first (logit standardisation, Sun et al. 2024).
    pub logit_stand: bool,
}

impl Default for DkdConfig {
    fn default() -> Self {
        Self { ce_weight: 1.0, alpha: 1.0, beta: 8.0, temperature: 4.0, warmup: 20, logit_stand: false }
    }
}

impl DkdConfig {
    pub const METHOD: &'static str = "dkd";

    /// DKD with logit standardisation as `sunshangquan/logit-standardization-KD`'s
    /// `tools/train.py --logit-stand --base-temp 2 --kd-weight 9` sets it up: `α` and `β` are
    /// multiplied by the KD weight (1·9, 8·9) and `T` becomes the base temperature.
    pub fn logit_standardized() -> Self {
        Self { alpha: 9.0, beta: 72.0, temperature: 2.0, logit_stand: true, ..Self::default() }
    }

    /// Parses and validates a `[distill]` table; missing keys take the reference defaults.
    pub fn from_table(table: &toml::Table) -> std::result::Result<Self, ConfigError> {
        let cfg: Self = parse_table(Self::METHOD, table)?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn validate(&self) -> std::result::Result<(), ConfigError> {
        non_negative(Self::METHOD, "ce_weight", self.ce_weight)?;
        non_negative(Self::METHOD, "alpha", self.alpha)?;
        non_negative(Self::METHOD, "beta", self.beta)?;
        positive(Self::METHOD, "temperature", self.temperature)?;
        // The reference divides by it.
        require(self.warmup >= 1, Self::METHOD, "warmup", ">= 1", self.warmup)
    }

    /// The factor of the KD term at `epoch` (counted from 1): `min(epoch / warmup, 1)`.
    pub fn warmup_factor(&self, epoch: usize) -> f64 {
        (epoch as f64 / self.warmup as f64).min(1.0)
    }
}

/// The terms of one evaluation. `tckd` and `nckd` are `T²`-scaled, unweighted, without the
/// warm-up; `kd` is what the reference logs as `loss_kd`.
#[derive(Debug, Clone)]
pub struct DkdLosses {
    /// `ce_weight · CE` (`loss_ce`).
    pub ce: Tensor,
    pub tckd: Tensor,
    pub nckd: Tensor,
    /// `warmup_factor(epoch) · (α·tckd + β·nckd)` (`loss_kd`).
    pub kd: Tensor,
    pub total: Tensor,
}

#[derive(Debug, Clone)]
pub struct DkdLoss {
    pub config: DkdConfig,
}

impl DkdLoss {
    pub fn new(config: DkdConfig) -> Self {
        Self { config }
    }

    /// The DKD objective at `epoch` (counted from 1, for the warm-up).
    pub fn loss(
        &self,
        student: &Tensor,
        teacher: &Tensor,
        labels: &Tensor,
        epoch: usize,
    ) -> Result<DkdLosses> {
        let c = &self.config;
        let ce = (cross_entropy(student, labels, 0.0)? * c.ce_weight)?;
        let (s, t) = if c.logit_stand {
            (standardize(student)?, standardize(&teacher.detach())?)
        } else {
            (student.clone(), teacher.detach())
        };
        let (tckd, nckd) = decoupled_kl(&s, &t, labels, c.temperature)?;
        let kd = (((&tckd * c.alpha)? + (&nckd * c.beta)?)? * c.warmup_factor(epoch))?;
        let total = (&ce + &kd)?;
        Ok(DkdLosses { ce, tckd, nckd, kd, total })
    }
}

/// mdistiller's `dkd_loss` split into its two terms `(TCKD, NCKD)`, each `Σ KL · T² / batch`.
pub fn decoupled_kl(
    student: &Tensor,
    teacher: &Tensor,
    labels: &Tensor,
    temperature: f64,
) -> Result<(Tensor, Tensor)> {
    let (batch, classes) = check_pair(student, teacher)?;
    let teacher = teacher.detach();
    let gt = one_hot(labels, classes, student.dtype())?;
    let other = (1.0 - &gt)?;
    let scale = temperature * temperature / batch as f64;

    // TCKD: binary [target, others] distributions.
    let bins = |p: &Tensor| -> Result<Tensor> {
        Tensor::cat(&[(p * &gt)?.sum_keepdim(D::Minus1)?, (p * &other)?.sum_keepdim(D::Minus1)?], 1)
    };
    let ps = bins(&softmax_t(student, temperature)?)?;
    let pt = bins(&softmax_t(&teacher, temperature)?)?;
    let tckd = (kl_div_sum(&ps.log()?, &pt)? * scale)?;

    // NCKD: the target class pushed out of the softmax by −1000.
    let mask = (&gt * 1000.0)?;
    let pt2 = softmax(&((&teacher / temperature)? - &mask)?)?;
    let log_ps2 = candle_nn::ops::log_softmax(&((student / temperature)? - &mask)?, D::Minus1)?;
    let nckd = (kl_div_sum(&log_ps2, &pt2)? * scale)?;
    Ok((tckd, nckd))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn warmup_factor_follows_min_epoch_over_warmup() {
        let c = DkdConfig::default();
        for (epoch, want) in
            [(0, 0.0), (1, 0.05), (5, 0.25), (10, 0.5), (19, 0.95), (20, 1.0), (21, 1.0), (240, 1.0)]
        {
            assert!((c.warmup_factor(epoch) - want).abs() < 1e-12, "epoch {epoch}");
        }
        let c = DkdConfig { warmup: 3, ..DkdConfig::default() };
        assert!((c.warmup_factor(2) - 2.0 / 3.0).abs() < 1e-12);
    }

    #[test]
    fn config_defaults_and_errors() {
        let c = DkdConfig::from_table(&toml::from_str("beta = 2.0").unwrap()).unwrap();
        assert_eq!(c, DkdConfig { beta: 2.0, ..DkdConfig::default() });
        for (text, key) in [
            ("warmup = 0", "`warmup`"),
            ("beta = -1.0", "`beta`"),
            ("temperature = -4.0", "`temperature`"),
            ("alpha = \"one\"", "`alpha`"),
            ("warmup = 2.5", "`warmup`"),
            ("gamma = 1.0", "gamma"),
        ] {
            let e = DkdConfig::from_table(&toml::from_str(text).unwrap()).unwrap_err().to_string();
            assert!(e.contains(key) && e.contains("dkd"), "{text}: {e}");
        }
    }

    #[test]
    fn tckd_plus_nckd_vanish_for_identical_logits_and_nckd_ignores_the_target_logit() {
        let dev = Device::Cpu;
        let s = Tensor::new(&[[1f64, 2., 0.5, -1.], [0., 3., 1., 1.]], &dev).unwrap();
        let labels = Tensor::new(&[1u32, 0], &dev).unwrap();
        let (tc, nc) = decoupled_kl(&s, &s, &labels, 4.0).unwrap();
        assert!(tc.to_scalar::<f64>().unwrap().abs() < 1e-12);
        assert!(nc.to_scalar::<f64>().unwrap().abs() < 1e-12);
        // Raising only the teacher's target logits changes TCKD, not NCKD.
        let bump = Tensor::new(&[[0f64, 5., 0., 0.], [5., 0., 0., 0.]], &dev).unwrap();
        let t = (&s + bump).unwrap();
        let (tc, nc) = decoupled_kl(&s, &t, &labels, 4.0).unwrap();
        assert!(tc.to_scalar::<f64>().unwrap() > 1e-3);
        assert!(nc.to_scalar::<f64>().unwrap().abs() < 1e-12);
    }
}
