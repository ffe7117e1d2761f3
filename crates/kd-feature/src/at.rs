//! Attention transfer (Zagoruyko & Komodakis, *Paying More Attention to Attention*, ICLR 2017)
//! as RepDistiller's `distiller_zoo/AT.py` `Attention` computes it: per stage, the attention map
//! `normalize(mean_c f^p)` flattened over space, the loss the mean squared difference of the
//! student's and teacher's maps, summed over every stage (`feat[1:-1]`), p = 2, β = 1000.
//! A map with a larger resolution is average-pooled to the other's first.
//!
//! mdistiller's AT is the same function on the same stages with the same weight 1000.

use candle_core::{Result, Tensor};
use kd_core::ModelOutput;
use serde::{Deserialize, Serialize};

use crate::shapes::same_stage_count;
use crate::util::{l2_normalize, pool_to_common, sum_over_stages};
use crate::{config, FeatureError, FeatureLoss, FeatureShapes, Taps};

const METHOD: &str = "at";

/// `[distill]` of `method = "at"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AttentionConfig {
    /// Weight β (RepDistiller `-b 1000`).
    pub beta: f64,
    /// Power `p` of the activations in the attention map (`Attention(p=2)`).
    pub p: u32,
}

impl Default for AttentionConfig {
    fn default() -> Self {
        Self { beta: 1000.0, p: 2 }
    }
}

impl AttentionConfig {
    pub fn from_table(table: &toml::Table) -> std::result::Result<Self, FeatureError> {
        let cfg: Self = config::parse(METHOD, table)?;
        config::weight(METHOD, "beta", cfg.beta)?;
        if cfg.p == 0 {
            return Err(FeatureError::config(METHOD, "`p` must be >= 1, got 0"));
        }
        Ok(cfg)
    }
}

/// The AT criterion over every stage.
#[derive(Debug, Clone)]
pub struct Attention {
    beta: f64,
    p: u32,
    stages: usize,
}

impl Attention {
    pub fn new(
        cfg: &AttentionConfig,
        student: &FeatureShapes,
        teacher: &FeatureShapes,
    ) -> std::result::Result<Self, FeatureError> {
        same_stage_count(METHOD, student, teacher)?;
        Ok(Self { beta: cfg.beta, p: cfg.p, stages: student.stages.len() })
    }

    /// `F.normalize(f.pow(p).mean(1).view(B, -1))`.
    fn attention_map(&self, f: &Tensor) -> Result<Tensor> {
        let mut power = f.clone();
        for _ in 1..self.p {
            power = (power * f)?;
        }
        l2_normalize(&power.mean(1)?.flatten_from(1)?, 1)
    }

    /// One stage's `(at(s) − at(t))².mean()`.
    pub fn stage_loss(&self, student: &Tensor, teacher: &Tensor) -> Result<Tensor> {
        let (s, t) = pool_to_common(student, &teacher.detach())?;
        (self.attention_map(&s)? - self.attention_map(&t)?)?.sqr()?.mean_all()
    }
}

impl FeatureLoss for Attention {
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
        sum_over_stages(METHOD, self.stages, student, teacher, |_, s, t| self.stage_loss(s, t))
    }
}
