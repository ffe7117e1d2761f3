//! DIST: distillation from a stronger teacher (Huang, You, Wang, Qian & Xu, NeurIPS 2022);
//! reference `hunto/DIST_KD`, whose classification code is the submodule
//! `hunto/image_classification_sota` (`lib/models/losses/dist_kd.py`, `kd_loss.py`).
//!
//! Instead of matching probabilities exactly (KL), DIST matches *relations*: with
//! `Y = softmax(z/τ)` of shape `(batch, classes)`,
//! - inter-class relation: `1 − mean_i pearson(Y_s[i,:], Y_t[i,:])` (each sample's ranking of
//!   the classes),
//! - intra-class relation: the same over columns, `1 − mean_c pearson(Y_s[:,c], Y_t[:,c])`
//!   (each class's ranking of the samples in the batch),
//!
//! and `L_kd = β·τ²·inter + γ·τ²·intra`. The Pearson correlation is the reference's: cosine
//! similarity of the mean-centred vectors, `a·b / (‖a‖·‖b‖ + 1e-8)`.
//!
//! CIFAR-100 defaults are `configs/strategies/distill/dist_cifar.yaml`: `kd: dist_t4` (τ = 4,
//! β = γ = 1) with `ori_loss_weight: 1` (cross-entropy) and `kd_loss_weight: 2`. (ImageNet
//! uses `dist`: τ = 1.)
//!
//! As a method (`method = "dist"`, variant `dist`): the step is `KDLoss.__call__`,
//! `ori_loss·ori_loss_weight + kd_loss·kd_loss_weight` ([`crate::LogitMethod`]).

use candle_core::{Device, Result, Tensor, D};
use kd_core::losses::cross_entropy;
use kd_core::Losses;
use serde::{Deserialize, Serialize};

use crate::method::{parts, LogitObjective};
use crate::{check_pair, non_negative, parse_table, positive, softmax_t, ConfigError};

/// `[distill]` of `method = "dist"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DistConfig {
    /// Weight of the cross-entropy (`ori_loss_weight`).
    pub ce_weight: f64,
    /// Weight of the DIST term (`kd_loss_weight`).
    pub kd_weight: f64,
    /// Weight `β` of the inter-class relation.
    pub beta: f64,
    /// Weight `γ` of the intra-class relation.
    pub gamma: f64,
    /// Softmax temperature `τ`.
    pub temperature: f64,
}

impl Default for DistConfig {
    fn default() -> Self {
        Self { ce_weight: 1.0, kd_weight: 2.0, beta: 1.0, gamma: 1.0, temperature: 4.0 }
    }
}

impl DistConfig {
    pub const METHOD: &'static str = "dist";

    /// Parses and validates a `[distill]` table; missing keys take the reference defaults.
    pub fn from_table(table: &toml::Table) -> std::result::Result<Self, ConfigError> {
        let cfg: Self = parse_table(Self::METHOD, table)?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn validate(&self) -> std::result::Result<(), ConfigError> {
        non_negative(Self::METHOD, "ce_weight", self.ce_weight)?;
        non_negative(Self::METHOD, "kd_weight", self.kd_weight)?;
        non_negative(Self::METHOD, "beta", self.beta)?;
        non_negative(Self::METHOD, "gamma", self.gamma)?;
        positive(Self::METHOD, "temperature", self.temperature)
    }
}

/// The terms of one evaluation; `inter` and `intra` are the raw relation losses (before `τ²`
/// and the weights).
#[derive(Debug, Clone)]
pub struct DistLosses {
    /// `ce_weight · CE`.
    pub ce: Tensor,
    pub inter: Tensor,
    pub intra: Tensor,
    /// `kd_weight · (β·τ²·inter + γ·τ²·intra)`.
    pub kd: Tensor,
    pub total: Tensor,
}

#[derive(Debug, Clone)]
pub struct DistLoss {
    pub config: DistConfig,
}

impl DistLoss {
    pub fn new(config: DistConfig) -> Self {
        Self { config }
    }

    pub fn loss(&self, student: &Tensor, teacher: &Tensor, labels: &Tensor) -> Result<DistLosses> {
        check_pair(student, teacher)?;
        let c = &self.config;
        let ce = (cross_entropy(student, labels, 0.0)? * c.ce_weight)?;
        let ys = softmax_t(student, c.temperature)?;
        let yt = softmax_t(&teacher.detach(), c.temperature)?;
        let inter = inter_class_relation(&ys, &yt)?;
        let intra = intra_class_relation(&ys, &yt)?;
        let t2 = c.temperature * c.temperature;
        let kd = (((&inter * (c.beta * t2))? + (&intra * (c.gamma * t2))?)? * c.kd_weight)?;
        let total = (&ce + &kd)?;
        Ok(DistLosses { ce, inter, intra, kd, total })
    }
}

impl LogitObjective for DistLoss {
    type Config = DistConfig;
    const METHOD: &'static str = DistConfig::METHOD;

    fn parse(table: &toml::Table) -> std::result::Result<DistConfig, ConfigError> {
        DistConfig::from_table(table)
    }

    fn build(config: &DistConfig, _device: &Device) -> Result<Self> {
        Ok(Self::new(config.clone()))
    }

    /// Parts: `ce` and `kd` (weighted, their sum the total), then the raw relation losses
    /// `inter` and `intra` (before `τ²` and the weights).
    fn losses(&self, student: &Tensor, teacher: &Tensor, labels: &Tensor, _epoch: usize) -> Result<Losses> {
        let l = self.loss(student, teacher, labels)?;
        let parts = parts([("ce", &l.ce), ("kd", &l.kd), ("inter", &l.inter), ("intra", &l.intra)]);
        Ok(Losses { total: l.total, parts })
    }
}

/// Row-wise Pearson correlation of two `(n, d)` matrices, as the reference computes it.
pub fn pearson_rows(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let a = a.broadcast_sub(&a.mean_keepdim(D::Minus1)?)?;
    let b = b.broadcast_sub(&b.mean_keepdim(D::Minus1)?)?;
    let dot = (&a * &b)?.sum(D::Minus1)?;
    let norms = (a.sqr()?.sum(D::Minus1)?.sqrt()? * b.sqr()?.sum(D::Minus1)?.sqrt()?)?;
    dot / (norms + 1e-8)?
}

/// `1 − mean_i pearson(y_s[i], y_t[i])`.
pub fn inter_class_relation(y_s: &Tensor, y_t: &Tensor) -> Result<Tensor> {
    1.0 - pearson_rows(y_s, y_t)?.mean_all()?
}

/// The inter-class relation of the transposes: correlations across the batch, per class.
pub fn intra_class_relation(y_s: &Tensor, y_t: &Tensor) -> Result<Tensor> {
    inter_class_relation(&y_s.t()?.contiguous()?, &y_t.t()?.contiguous()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::method::testing::{at_epoch, check_total_is_ce_plus_kd, close, method, part, scalar};
    use kd_core::Method;

    #[test]
    fn relations_are_zero_for_affinely_related_predictions_and_two_for_reversed() {
        let dev = Device::Cpu;
        let a = Tensor::new(&[[0.1f64, 0.2, 0.7], [0.5, 0.3, 0.2]], &dev).unwrap();
        // Pearson is invariant to a positive affine map of each row.
        let b = ((&a * 2.0).unwrap() + 1.0).unwrap();
        assert!(inter_class_relation(&a, &b).unwrap().to_scalar::<f64>().unwrap().abs() < 1e-7);
        let neg = (1.0 - &a).unwrap();
        let r = inter_class_relation(&a, &neg).unwrap().to_scalar::<f64>().unwrap();
        // Not exactly 2: the reference adds 1e-8 to the product of the norms.
        assert!((r - 2.0).abs() < 1e-6, "{r}");
    }

    #[test]
    fn config_errors_name_the_key() {
        for (text, key) in
            [("gamma = -1.0", "`gamma`"), ("temperature = 0.0", "`temperature`"), ("tau = 4.0", "tau")]
        {
            let e = DistConfig::from_table(&toml::from_str(text).unwrap()).unwrap_err().to_string();
            assert!(e.contains(key) && e.contains("dist"), "{text}: {e}");
        }
        assert_eq!(DistConfig::from_table(&toml::Table::new()).unwrap(), DistConfig::default());
    }

    #[test]
    fn defaults_are_dist_cifar_yaml() {
        let want = DistConfig { ce_weight: 1.0, kd_weight: 2.0, beta: 1.0, gamma: 1.0, temperature: 4.0 };
        assert_eq!(DistConfig::default(), want);
        let e = DistConfig::from_table(&toml::from_str("kd_weight = -2.0").unwrap()).unwrap_err();
        assert!(e.to_string().contains("`kd_weight`"), "{e}");
    }

    #[test]
    fn the_method_total_is_ce_plus_weighted_relations() {
        let cfg = DistConfig { ce_weight: 0.5, kd_weight: 2.0, beta: 1.5, gamma: 0.25, temperature: 3.0 };
        let (mut m, student, teacher, batch) = method(DistLoss::build(&cfg, &Device::Cpu).unwrap());
        let losses = m.losses(&batch, &at_epoch(7)).unwrap();
        let (s, t) = (student.logits.as_tensor(), teacher.logits.as_tensor());
        let ce = scalar(&cross_entropy(s, &batch.labels, 0.0).unwrap());
        let (ys, yt) = (softmax_t(s, 3.0).unwrap(), softmax_t(t, 3.0).unwrap());
        let inter = scalar(&inter_class_relation(&ys, &yt).unwrap());
        let intra = scalar(&intra_class_relation(&ys, &yt).unwrap());
        close("total", scalar(&losses.total), 0.5 * ce + 2.0 * 9.0 * (1.5 * inter + 0.25 * intra));
        close("inter", part(&losses, "inter"), inter);
        close("intra", part(&losses, "intra"), intra);
        check_total_is_ce_plus_kd(&losses, &student);
    }
}
