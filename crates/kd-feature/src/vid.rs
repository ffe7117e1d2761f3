//! Variational information distillation (Ahn et al., *Variational Information Distillation for
//! Knowledge Transfer*, CVPR 2019) as RepDistiller's `distiller_zoo/VID.py` `VIDLoss` computes it,
//! one per stage (`feat[1:-1]`, train_student.py `vid`: `VIDLoss(s_C, t_C, t_C)`), summed, β = 1:
//! a 1×1-conv regressor `s_C → t_C → t_C → t_C` (ReLU between, no bias) predicts the teacher map's
//! mean, a learned per-channel variance `softplus(log_scale) + ε` its spread, and the loss is the
//! mean Gaussian negative log-likelihood `½((μ − t)²/σ² + log σ²)` (the constant `½log 2π`
//! dropped, as in the reference). `log_scale` starts at `log(exp(init_pred_var − ε) − 1)` so
//! that `σ² = init_pred_var` = 5.
//!
//! mdistiller differs: it keeps each stage's `log_scale` in a plain Python list, so the variance
//! is never optimised and stays at 5.0; RepDistiller registers it as a parameter and trains it.
//! We follow RepDistiller (the paper learns the variance too).

use candle_core::{Result, Tensor};
use candle_nn::{Init, VarBuilder};
use kd_core::ModelOutput;
use serde::{Deserialize, Serialize};

use crate::shapes::same_stage_count;
use crate::util::{pool_to_common, sum_over_stages, torch_default_init};
use crate::{config, FeatureError, FeatureLoss, FeatureShapes, Taps};

const METHOD: &str = "vid";

/// `[distill]` of `method = "vid"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VidConfig {
    /// Weight β (RepDistiller `-b 1`).
    pub beta: f64,
    /// Initial predicted variance (`init_pred_var=5.0`).
    pub init_pred_var: f64,
    /// Floor added to the variance (`eps=1e-5`).
    pub eps: f64,
}

impl Default for VidConfig {
    fn default() -> Self {
        Self { beta: 1.0, init_pred_var: 5.0, eps: 1e-5 }
    }
}

impl VidConfig {
    pub fn from_table(table: &toml::Table) -> std::result::Result<Self, FeatureError> {
        let cfg: Self = config::parse(METHOD, table)?;
        config::weight(METHOD, "beta", cfg.beta)?;
        config::positive(METHOD, "eps", cfg.eps)?;
        if !cfg.init_pred_var.is_finite() || cfg.init_pred_var <= cfg.eps {
            return Err(FeatureError::config(
                METHOD,
                format!("`init_pred_var` must be finite and > eps = {}, got {}", cfg.eps, cfg.init_pred_var),
            ));
        }
        Ok(cfg)
    }
}

/// One stage's `VIDLoss`: parameters `regressor.0.weight`, `regressor.2.weight`,
/// `regressor.4.weight` (1×1 convs) and `log_scale`, as in RepDistiller's state dict.
#[derive(Debug, Clone)]
pub struct VidStage {
    convs: [Tensor; 3],
    log_scale: Tensor,
    eps: f64,
}

impl VidStage {
    pub fn new(
        cfg: &VidConfig,
        in_channels: usize,
        mid_channels: usize,
        target_channels: usize,
        vb: VarBuilder,
    ) -> Result<Self> {
        let conv = |i: usize, c_in: usize, c_out: usize| {
            vb.get_with_hints((c_out, c_in, 1, 1), &format!("regressor.{i}.weight"), torch_default_init(c_in))
        };
        let convs = [
            conv(0, in_channels, mid_channels)?,
            conv(2, mid_channels, mid_channels)?,
            conv(4, mid_channels, target_channels)?,
        ];
        let init = ((cfg.init_pred_var - cfg.eps).exp() - 1.0).ln();
        let log_scale = vb.get_with_hints(target_channels, "log_scale", Init::Const(init))?;
        Ok(Self { convs, log_scale, eps: cfg.eps })
    }

    /// `VIDLoss.forward(student, teacher)`.
    pub fn loss(&self, student: &Tensor, teacher: &Tensor) -> Result<Tensor> {
        let (s, t) = pool_to_common(student, &teacher.detach())?;
        let [c0, c2, c4] = &self.convs;
        let mean =
            s.conv2d(c0, 0, 1, 1, 1)?.relu()?.conv2d(c2, 0, 1, 1, 1)?.relu()?.conv2d(c4, 0, 1, 1, 1)?;
        // softplus, written as the reference writes it: log(1 + exp(x)).
        let var = ((self.log_scale.exp()? + 1.0)?.log()? + self.eps)?;
        let var = var.reshape((1, var.dim(0)?, 1, 1))?;
        let nll = ((mean - t)?.sqr()?.broadcast_div(&var)?.broadcast_add(&var.log()?)? * 0.5)?;
        nll.mean_all()
    }
}

/// The VID criterion: one [`VidStage`] per stage, under `vb.pp(i)`.
#[derive(Debug, Clone)]
pub struct Vid {
    beta: f64,
    stages: Vec<VidStage>,
}

impl Vid {
    pub fn new(
        cfg: &VidConfig,
        student: &FeatureShapes,
        teacher: &FeatureShapes,
        vb: VarBuilder,
    ) -> std::result::Result<Self, FeatureError> {
        same_stage_count(METHOD, student, teacher)?;
        let stages = student
            .stages
            .iter()
            .zip(&teacher.stages)
            .enumerate()
            .map(|(i, (s, t))| VidStage::new(cfg, s.channels, t.channels, t.channels, vb.pp(i)))
            .collect::<Result<Vec<_>>>()
            .map_err(FeatureError::candle(METHOD))?;
        Ok(Self { beta: cfg.beta, stages })
    }
}

impl FeatureLoss for Vid {
    fn name(&self) -> &'static str {
        METHOD
    }

    fn beta(&self) -> f64 {
        self.beta
    }

    fn taps(&self) -> Taps {
        Taps { stages: (0..self.stages.len()).collect(), embedding: false }
    }

    fn loss(&self, student: &ModelOutput, teacher: &ModelOutput) -> Result<Tensor> {
        sum_over_stages(METHOD, self.stages.len(), student, teacher, |i, s, t| self.stages[i].loss(s, t))
    }
}
