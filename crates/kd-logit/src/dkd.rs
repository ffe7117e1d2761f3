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
//!
//! As a method (`method = "dkd"`, variant `dkd`): the step is mdistiller's
//! `DKD.forward_train` summed as its trainer sums `losses_dict`, `loss_ce + loss_kd`
//! ([`crate::LogitMethod`]). `logit_stand = true` standardises the logits first and, for the
//! keys the table leaves out, takes the values the logit-standardisation repository's
//! `tools/train.py --logit-stand --base-temp 2 --kd-weight 9` gives DKD
//! ([`DkdConfig::logit_standardized`]: α 9, β 72, T 2).

use candle_core::{Device, Result, Tensor, D};
use kd_core::losses::cross_entropy;
use kd_core::Losses;
use serde::{Deserialize, Serialize};

use crate::method::{parts, LogitObjective};
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

    /// Parses and validates a `[distill]` table; missing keys take the reference defaults:
    /// mdistiller's, or with `logit_stand = true` those of [`Self::logit_standardized`].
    pub fn from_table(table: &toml::Table) -> std::result::Result<Self, ConfigError> {
        let mut cfg: Self = parse_table(Self::METHOD, table)?;
        if cfg.logit_stand {
            let defaults = toml::Table::try_from(Self::logit_standardized())
                .map_err(|e| ConfigError::Table { method: Self::METHOD, message: e.to_string() })?;
            let mut merged = defaults;
            merged.extend(table.clone());
            cfg = parse_table(Self::METHOD, &merged)?;
        }
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

impl LogitObjective for DkdLoss {
    type Config = DkdConfig;
    const METHOD: &'static str = DkdConfig::METHOD;

    fn parse(table: &toml::Table) -> std::result::Result<DkdConfig, ConfigError> {
        DkdConfig::from_table(table)
    }

    fn build(config: &DkdConfig, _device: &Device) -> Result<Self> {
        Ok(Self::new(config.clone()))
    }

    /// Parts: `ce` and `kd` as mdistiller logs `loss_ce` and `loss_kd` (weighted, `kd` with the
    /// warm-up), then `tckd` and `nckd` (`T²`-scaled, before their weights and the warm-up).
    fn losses(&self, student: &Tensor, teacher: &Tensor, labels: &Tensor, epoch: usize) -> Result<Losses> {
        let l = self.loss(student, teacher, labels, epoch)?;
        let parts = parts([("ce", &l.ce), ("kd", &l.kd), ("tckd", &l.tckd), ("nckd", &l.nckd)]);
        Ok(Losses { total: l.total, parts })
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
    use crate::method::testing::{at_epoch, check_total_is_ce_plus_kd, close, method, part, scalar};
    use kd_core::Method;

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

    fn table(text: &str) -> toml::Table {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn defaults_are_mdistillers_and_logit_stand_takes_the_logit_stand_repos_values() {
        let want = DkdConfig {
            ce_weight: 1.0,
            alpha: 1.0,
            beta: 8.0,
            temperature: 4.0,
            warmup: 20,
            logit_stand: false,
        };
        assert_eq!(DkdConfig::from_table(&toml::Table::new()).unwrap(), want);
        let ls = DkdConfig { alpha: 9.0, beta: 72.0, temperature: 2.0, logit_stand: true, ..want.clone() };
        assert_eq!(DkdConfig::from_table(&table("logit_stand = true")).unwrap(), ls);
        // Keys given win over the standardised defaults.
        let given = DkdConfig::from_table(&table("logit_stand = true\nbeta = 18.0")).unwrap();
        assert_eq!(given, DkdConfig { beta: 18.0, ..ls });
        for (text, key) in
            [("logit_stand = true\nstandardize = true", "standardize"), ("alpha = -0.5", "`alpha`")]
        {
            let e = DkdConfig::from_table(&table(text)).unwrap_err().to_string();
            assert!(e.contains(key) && e.contains("dkd"), "{text}: {e}");
        }
    }

    #[test]
    fn the_method_total_is_ce_plus_the_warmed_up_decoupled_kl() {
        for logit_stand in [false, true] {
            let cfg = DkdConfig { alpha: 0.7, beta: 3.0, warmup: 10, logit_stand, ..DkdConfig::default() };
            let (mut m, student, teacher, batch) = method(DkdLoss::build(&cfg, &Device::Cpu).unwrap());
            // 0-based epoch 3 is the reference's epoch 4: warm-up factor 4/10.
            let losses = m.losses(&batch, &at_epoch(3)).unwrap();
            let (s, t) = (student.logits.as_tensor(), teacher.logits.as_tensor());
            let (s, t) = if logit_stand {
                (standardize(s).unwrap(), standardize(t).unwrap())
            } else {
                (s.clone(), t.clone())
            };
            let ce = scalar(&cross_entropy(student.logits.as_tensor(), &batch.labels, 0.0).unwrap());
            let (tckd, nckd) = decoupled_kl(&s, &t, &batch.labels, cfg.temperature).unwrap();
            let (tckd, nckd) = (scalar(&tckd), scalar(&nckd));
            close("total", scalar(&losses.total), ce + 0.4 * (0.7 * tckd + 3.0 * nckd));
            close("tckd", part(&losses, "tckd"), tckd);
            close("nckd", part(&losses, "nckd"), nckd);
            check_total_is_ce_plus_kd(&losses, &student);
        }
    }
}
