//! Relational KD (Park et al., *Relational Knowledge Distillation*, CVPR 2019) as RepDistiller's
//! `distiller_zoo/RKD.py` `RKDLoss` computes it on the embeddings (`feat[-1]`):
//! `w_d·smooth_l1(ψ_D(s), ψ_D(t)) + w_a·smooth_l1(ψ_A(s), ψ_A(t))` with `w_d = 25`, `w_a = 50`,
//! β = 1. `ψ_D` is the pairwise Euclidean distance matrix divided by the mean of its positive
//! entries; `ψ_A` the cosines of the angles `∠(e_j − e_i, e_k − e_i)` for all triplets. The
//! distance is RepDistiller's `pdist(squared=False, eps=1e-12)` (squared distances clamped at
//! eps, diagonal zeroed). mdistiller: the same function on `pooled_feat`, weights 25 / 50 / 1,
//! with `squared` and `eps` configurable (same defaults).

use candle_core::{Result, Tensor};
use kd_core::ModelOutput;
use serde::{Deserialize, Serialize};

use crate::util::l2_normalize;
use crate::{config, FeatureError, FeatureLoss, FeatureShapes, Taps};

const METHOD: &str = "rkd";
/// `pdist`'s clamp of squared distances.
const PDIST_EPS: f64 = 1e-12;

/// `[distill]` of `method = "rkd"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RkdConfig {
    /// Weight β of the whole RKD loss (RepDistiller `-b 1`).
    pub beta: f64,
    /// Weight of the distance term inside the loss (`w_d=25`).
    pub distance_weight: f64,
    /// Weight of the angle term inside the loss (`w_a=50`).
    pub angle_weight: f64,
}

impl Default for RkdConfig {
    fn default() -> Self {
        Self { beta: 1.0, distance_weight: 25.0, angle_weight: 50.0 }
    }
}

impl RkdConfig {
    pub fn from_table(table: &toml::Table) -> std::result::Result<Self, FeatureError> {
        let cfg: Self = config::parse(METHOD, table)?;
        config::weight(METHOD, "beta", cfg.beta)?;
        config::weight(METHOD, "distance_weight", cfg.distance_weight)?;
        config::weight(METHOD, "angle_weight", cfg.angle_weight)?;
        Ok(cfg)
    }
}

/// The RKD criterion (distance + angle) on the embeddings.
#[derive(Debug, Clone)]
pub struct Rkd {
    beta: f64,
    distance_weight: f64,
    angle_weight: f64,
}

impl Rkd {
    pub fn new(
        cfg: &RkdConfig,
        student: &FeatureShapes,
        teacher: &FeatureShapes,
    ) -> std::result::Result<Self, FeatureError> {
        if student.embedding == 0 || teacher.embedding == 0 {
            return Err(FeatureError::shape(METHOD, "needs a non-empty embedding from student and teacher"));
        }
        Ok(Self { beta: cfg.beta, distance_weight: cfg.distance_weight, angle_weight: cfg.angle_weight })
    }

    /// `RKDLoss.pdist(e, squared=False)`: `(B, B)` Euclidean distances, diagonal 0.
    pub fn pairwise_distances(e: &Tensor) -> Result<Tensor> {
        let b = e.dim(0)?;
        let sq = e.sqr()?.sum(1)?;
        let prod = e.matmul(&e.t()?)?;
        let d2 = (sq.unsqueeze(1)?.broadcast_add(&sq.unsqueeze(0)?)? - (prod * 2.0)?)?;
        let off_diagonal = (1.0 - Tensor::eye(b, e.dtype(), e.device())?)?;
        d2.maximum(PDIST_EPS)?.sqrt()? * off_diagonal
    }

    /// `d / d[d > 0].mean()`.
    fn normalised_distances(e: &Tensor) -> Result<Tensor> {
        let d = Self::pairwise_distances(e)?;
        let positive = d.gt(0.0)?.to_dtype(d.dtype())?;
        let mean = ((&d * &positive)?.sum_all()? / positive.sum_all()?)?;
        d.broadcast_div(&mean)
    }

    /// Cosines of all `∠(e_j − e_i, e_k − e_i)`, flattened (`B³`).
    fn angles(e: &Tensor) -> Result<Tensor> {
        let diff = e.unsqueeze(0)?.broadcast_sub(&e.unsqueeze(1)?)?;
        let unit = l2_normalize(&diff, 2)?;
        unit.matmul(&unit.transpose(1, 2)?)?.flatten_all()
    }

    /// `RKDLoss.forward(student, teacher)` on `(B, ...)` features.
    pub fn rkd_loss(&self, student: &Tensor, teacher: &Tensor) -> Result<Tensor> {
        let s = student.flatten_from(1)?;
        let t = teacher.detach().flatten_from(1)?;
        let distance = smooth_l1(&Self::normalised_distances(&s)?, &Self::normalised_distances(&t)?)?;
        let angle = smooth_l1(&Self::angles(&s)?, &Self::angles(&t)?)?;
        (distance * self.distance_weight)? + (angle * self.angle_weight)?
    }
}

/// `F.smooth_l1_loss(a, b)` (β = 1, mean): `½x²` where `|x| < 1`, else `|x| − ½`.
fn smooth_l1(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let x = (a - b)?;
    let abs = x.abs()?;
    abs.lt(1.0)?.where_cond(&(x.sqr()? * 0.5)?, &(&abs - 0.5)?)?.mean_all()
}

impl FeatureLoss for Rkd {
    fn name(&self) -> &'static str {
        METHOD
    }

    fn beta(&self) -> f64 {
        self.beta
    }

    fn taps(&self) -> Taps {
        Taps { stages: vec![], embedding: true }
    }

    fn loss(&self, student: &ModelOutput, teacher: &ModelOutput) -> Result<Tensor> {
        self.rkd_loss(&student.embedding, &teacher.embedding)
    }
}
