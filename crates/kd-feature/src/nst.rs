//! Neuron selectivity transfer (Huang & Wang, *Like What You Like: Knowledge Distill via Neuron
//! Selectivity Transfer*, 2017) as RepDistiller's `distiller_zoo/NST.py` `NSTLoss` computes it:
//! per stage (`feat[1:-1]`, all), the maps pooled to a common size, each channel's spatial map
//! L2-normalised, and the squared MMD with the polynomial kernel `k(x, y) = (xᵀy)²`:
//! `mean k(t, t) + mean k(s, s) − 2·mean k(s, t)`, summed over stages, β = 50 (the `full_loss`
//! branch the reference takes; the teacher–teacher term is a constant). mdistiller: the same
//! function on `feats[1:]`, weight 50.

use candle_core::{Result, Tensor};
use kd_core::ModelOutput;
use serde::{Deserialize, Serialize};

use crate::shapes::same_stage_count;
use crate::util::{l2_normalize, pool_to_common, sum_over_stages};
use crate::{config, FeatureError, FeatureLoss, FeatureShapes, Taps};

const METHOD: &str = "nst";

/// `[distill]` of `method = "nst"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NstConfig {
    /// Weight β (RepDistiller `-b 50`).
    pub beta: f64,
}

impl Default for NstConfig {
    fn default() -> Self {
        Self { beta: 50.0 }
    }
}

impl NstConfig {
    pub fn from_table(table: &toml::Table) -> std::result::Result<Self, FeatureError> {
        let cfg: Self = config::parse(METHOD, table)?;
        config::weight(METHOD, "beta", cfg.beta)?;
        Ok(cfg)
    }
}

/// The NST criterion over every stage.
#[derive(Debug, Clone)]
pub struct NeuronSelectivity {
    beta: f64,
    stages: usize,
}

impl NeuronSelectivity {
    pub fn new(
        cfg: &NstConfig,
        student: &FeatureShapes,
        teacher: &FeatureShapes,
    ) -> std::result::Result<Self, FeatureError> {
        same_stage_count(METHOD, student, teacher)?;
        Ok(Self { beta: cfg.beta, stages: student.stages.len() })
    }

    /// Mean of `poly_kernel(a, b)`: `(b·aᵀ)²` per sample, `(B, C_b, C_a)`.
    fn mean_kernel(a: &Tensor, b: &Tensor) -> Result<Tensor> {
        b.matmul(&a.transpose(1, 2)?)?.sqr()?.mean_all()
    }

    /// One stage's `NSTLoss.nst_loss`.
    pub fn stage_loss(student: &Tensor, teacher: &Tensor) -> Result<Tensor> {
        let (s, t) = pool_to_common(student, &teacher.detach())?;
        let s = l2_normalize(&s.flatten_from(2)?, 2)?;
        let t = l2_normalize(&t.flatten_from(2)?, 2)?;
        let tt = Self::mean_kernel(&t, &t)?.detach();
        let ss = Self::mean_kernel(&s, &s)?;
        let st = Self::mean_kernel(&s, &t)?;
        (tt + ss)? - (st * 2.0)?
    }
}

impl FeatureLoss for NeuronSelectivity {
    fn name(&self) -> &'static str {
        METHOD
    }

    fn beta(&self) -> f64 {
        self.beta
    }

    fn taps(&self) -> Taps {
        Taps { stages: (0..self.stages).collect(), embedding: false }
    }

    fn loss(&self, student: &ModelOutput, teacher: &ModelOutput) -> Result<Tensor> {
        sum_over_stages(METHOD, self.stages, student, teacher, |_, s, t| Self::stage_loss(s, t))
    }
}
