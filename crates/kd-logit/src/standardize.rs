//! Logit standardisation (Sun et al., "Logit Standardization in Knowledge Distillation",
//! CVPR 2024; reference `sunshangquan/logit-standardization-KD`,
//! `mdistiller/distillers/KD.py`): each sample's logits are Z-scored before the temperature,
//! `z ↦ (z − mean(z)) / (1e-7 + std(z))`, for teacher and student alike; the softmax then
//! uses a small *base* temperature.
//!
//! Conventions of the reference code, followed here:
//! - `std` is PyTorch's default, the unbiased (n−1) standard deviation, and the `1e-7` is
//!   added to the standard deviation, not to the variance.
//! - The KD term keeps mdistiller's `T²` factor and is weighted by `kd_weight = 9`, with
//!   `ce_weight = 0.1` and base temperature 2 (`tools/train.py --logit-stand --base-temp 2
//!   --kd-weight 9`, the README's command for every CIFAR-100 pair; the logged runs use base
//!   temperatures 2–4 and weights 1–18 per pair). The 9 multiplies an already `T²`-scaled KL.
//! - For DKD, `train.py` multiplies `α` and `β` by the KD weight and sets `T` to the base
//!   temperature ([`crate::DkdConfig::logit_standardized`]); for MLKD it sets the KD weight
//!   and the first temperature, and standardises only the instance-level KL terms
//!   ([`crate::MlkdConfig::logit_stand`]).
//!
//! As a method, vanilla KD with logit standardisation is `method = "kd-logit-stand"` (variant
//! of the same name): the reference's own name for it (`--logit-stand`, its project page
//! `logit-stand-KD`) and the config key `logit_stand`; "LS" alone would read as label
//! smoothing, which vanilla KD's `[distill]` has. The step is the reference's
//! `KD.forward_train` summed as mdistiller's trainer sums `losses_dict`, `loss_ce + loss_kd`
//! ([`crate::LogitMethod`]).

use candle_core::{Device, Result, Tensor, D};
use kd_core::losses::{cross_entropy, distill_kl};
use kd_core::Losses;
use serde::{Deserialize, Serialize};

use crate::method::{parts, LogitObjective};
use crate::{non_negative, parse_table, positive, ConfigError};

/// The reference's `normalize`: per-sample Z-score over the last dimension, unbiased standard
/// deviation, `1e-7` added to it.
pub fn standardize(logits: &Tensor) -> Result<Tensor> {
    let mean = logits.mean_keepdim(D::Minus1)?;
    let std = logits.var_keepdim(D::Minus1)?.sqrt()?;
    logits.broadcast_sub(&mean)?.broadcast_div(&(std + 1e-7)?)
}

/// `[distill]` of vanilla KD with logit standardisation (`method = "kd-logit-stand"`); defaults are the
/// reference's CIFAR-100 command. With `logit_stand = false` this is mdistiller's KD with the
/// given weights.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StandardizedKdConfig {
    /// Weight of the hard-label cross-entropy (`KD.LOSS.CE_WEIGHT`, 0.1).
    pub ce_weight: f64,
    /// Weight of the `T²`-scaled KL (`--kd-weight`, 9).
    pub kd_weight: f64,
    /// Base temperature applied after standardisation (`--base-temp`, 2).
    pub temperature: f64,
    /// Z-score both logits before the temperature (`--logit-stand`).
    pub logit_stand: bool,
}

impl Default for StandardizedKdConfig {
    fn default() -> Self {
        Self { ce_weight: 0.1, kd_weight: 9.0, temperature: 2.0, logit_stand: true }
    }
}

impl StandardizedKdConfig {
    pub const METHOD: &'static str = "kd-logit-stand";

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
}

/// The terms of one evaluation, as the reference's `losses_dict` names them.
#[derive(Debug, Clone)]
pub struct StandardizedKdLosses {
    /// `ce_weight · CE(student, labels)` (`loss_ce`).
    pub ce: Tensor,
    /// `kd_weight · T² · KL(softmax(t̂/T) ‖ softmax(ŝ/T))` (`loss_kd`).
    pub kd: Tensor,
    pub total: Tensor,
}

/// Vanilla KD on (optionally) standardised logits.
#[derive(Debug, Clone)]
pub struct StandardizedKdLoss {
    pub config: StandardizedKdConfig,
}

impl StandardizedKdLoss {
    pub fn new(config: StandardizedKdConfig) -> Self {
        Self { config }
    }

    pub fn loss(&self, student: &Tensor, teacher: &Tensor, labels: &Tensor) -> Result<StandardizedKdLosses> {
        crate::check_pair(student, teacher)?;
        let c = &self.config;
        let ce = (cross_entropy(student, labels, 0.0)? * c.ce_weight)?;
        let kd = (standardized_kd(student, teacher, c.temperature, c.logit_stand)? * c.kd_weight)?;
        let total = (&ce + &kd)?;
        Ok(StandardizedKdLosses { ce, kd, total })
    }
}

impl LogitObjective for StandardizedKdLoss {
    type Config = StandardizedKdConfig;
    const METHOD: &'static str = StandardizedKdConfig::METHOD;

    fn parse(table: &toml::Table) -> std::result::Result<StandardizedKdConfig, ConfigError> {
        StandardizedKdConfig::from_table(table)
    }

    fn build(config: &StandardizedKdConfig, _device: &Device) -> Result<Self> {
        Ok(Self::new(config.clone()))
    }

    /// Parts: `ce` and `kd` as the reference logs `loss_ce` and `loss_kd` (both weighted).
    fn losses(&self, student: &Tensor, teacher: &Tensor, labels: &Tensor, _epoch: usize) -> Result<Losses> {
        let l = self.loss(student, teacher, labels)?;
        Ok(Losses { total: l.total, parts: parts([("ce", &l.ce), ("kd", &l.kd)]) })
    }
}

/// The reference's `kd_loss(s, t, T, logit_stand)`: `T²·KL` (batch mean), after the Z-score
/// when `logit_stand`.
pub fn standardized_kd(
    student: &Tensor,
    teacher: &Tensor,
    temperature: f64,
    logit_stand: bool,
) -> Result<Tensor> {
    if logit_stand {
        distill_kl(&standardize(student)?, &standardize(&teacher.detach())?, temperature)
    } else {
        distill_kl(student, teacher, temperature)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::method::testing::{at_epoch, check_total_is_ce_plus_kd, close, method, scalar};
    use kd_core::Method;

    #[test]
    fn standardized_rows_have_zero_mean_and_unit_unbiased_std() {
        let z = Tensor::new(&[[1f64, 2., 3., 10.], [-5., 0., 5., 0.]], &Device::Cpu).unwrap();
        let s = standardize(&z).unwrap();
        let mean = s.mean(1).unwrap().to_vec1::<f64>().unwrap();
        let var = s.var(1).unwrap().to_vec1::<f64>().unwrap();
        for (m, v) in mean.iter().zip(&var) {
            assert!(m.abs() < 1e-12, "{m}");
            assert!((v - 1.0).abs() < 1e-6, "{v}");
        }
        // Invariant to shift and positive scale of a row: what lets the student match relations.
        let shifted = ((&z * 3.0).unwrap() + 7.0).unwrap();
        let d = (standardize(&shifted).unwrap() - &s).unwrap().abs().unwrap().max_all().unwrap();
        assert!(d.to_scalar::<f64>().unwrap() < 1e-6);
    }

    #[test]
    fn config_rejects_bad_values_and_names_the_key() {
        let t: toml::Table = toml::from_str("temperature = 0.0").unwrap();
        let e = StandardizedKdConfig::from_table(&t).unwrap_err().to_string();
        assert!(e.contains("`temperature`") && e.contains("kd-logit-stand"), "{e}");
        let t: toml::Table = toml::from_str("kd_weigth = 9.0").unwrap();
        let e = StandardizedKdConfig::from_table(&t).unwrap_err().to_string();
        assert!(e.contains("kd_weigth"), "{e}");
        let t: toml::Table = toml::from_str("logit_stand = 1").unwrap();
        let e = StandardizedKdConfig::from_table(&t).unwrap_err().to_string();
        assert!(e.contains("`logit_stand`"), "{e}");
        assert_eq!(
            StandardizedKdConfig::from_table(&toml::Table::new()).unwrap(),
            StandardizedKdConfig::default()
        );
    }

    #[test]
    fn defaults_are_the_reference_commands_and_negative_weights_are_refused() {
        let want =
            StandardizedKdConfig { ce_weight: 0.1, kd_weight: 9.0, temperature: 2.0, logit_stand: true };
        assert_eq!(StandardizedKdConfig::default(), want);
        let e = StandardizedKdConfig::from_table(&toml::from_str("ce_weight = -0.1").unwrap()).unwrap_err();
        assert!(e.to_string().contains("`ce_weight`"), "{e}");
    }

    #[test]
    fn the_method_total_is_weighted_ce_plus_weighted_standardized_kd() {
        for logit_stand in [true, false] {
            let cfg = StandardizedKdConfig { logit_stand, ..StandardizedKdConfig::default() };
            let (mut m, student, teacher, batch) =
                method(StandardizedKdLoss::build(&cfg, &Device::Cpu).unwrap());
            let losses = m.losses(&batch, &at_epoch(0)).unwrap();
            let (s, t) = (student.logits.as_tensor(), teacher.logits.as_tensor());
            let ce = scalar(&cross_entropy(s, &batch.labels, 0.0).unwrap());
            let kd = scalar(&standardized_kd(s, t, 2.0, logit_stand).unwrap());
            close("total", scalar(&losses.total), 0.1 * ce + 9.0 * kd);
            check_total_is_ce_plus_kd(&losses, &student);
        }
    }
}
