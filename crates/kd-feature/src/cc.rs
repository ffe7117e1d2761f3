//! Correlation congruence (Peng et al., *Correlation Congruence for Knowledge Distillation*,
//! ICCV 2019) as RepDistiller runs it: student and teacher embeddings (`feat[-1]`) each go
//! through a trainable [`LinearEmbed`] to `feat_dim = 128` (`models/util.py`, train_student.py
//! `correlation`; both heads are in its `trainable_list`), then `distiller_zoo/CC.py`
//! `Correlation`: with `δ = |e_s − e_t|`, the loss is `mean_i Σ_d δ[i]·δ[i+1]` over consecutive
//! batch pairs, β = 0.02.
//!
//! Paper and code differ, and we follow the code: the paper matches correlation matrices under
//! a Gaussian RBF kernel approximated by its Taylor expansion; the code RepDistiller carries
//! (restructured from the authors' own, its docstring says) has no kernel at all — the formula
//! above. Also, the head is `LinearEmbed` (a linear layer), not `Embed` (linear + L2 norm, which
//! CRD uses). mdistiller has no CC.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;
use kd_core::ModelOutput;
use serde::{Deserialize, Serialize};

use crate::util::torch_default_init;
use crate::{config, FeatureError, FeatureLoss, FeatureShapes, Taps};

const METHOD: &str = "cc";

/// `[distill]` of `method = "cc"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CorrelationConfig {
    /// Weight β (RepDistiller `-b 0.02`).
    pub beta: f64,
    /// Width of both embedding heads (`--feat_dim 128`).
    pub feat_dim: usize,
}

impl Default for CorrelationConfig {
    fn default() -> Self {
        Self { beta: 0.02, feat_dim: 128 }
    }
}

impl CorrelationConfig {
    pub fn from_table(table: &toml::Table) -> std::result::Result<Self, FeatureError> {
        let cfg: Self = config::parse(METHOD, table)?;
        config::weight(METHOD, "beta", cfg.beta)?;
        if cfg.feat_dim == 0 {
            return Err(FeatureError::config(METHOD, "`feat_dim` must be >= 1, got 0"));
        }
        Ok(cfg)
    }
}

/// RepDistiller's `LinearEmbed`: flatten, then `nn.Linear(dim_in, dim_out)` (parameters
/// `linear.weight`, `linear.bias`, PyTorch's default initialisation).
#[derive(Debug, Clone)]
pub struct LinearEmbed {
    weight: Tensor,
    bias: Tensor,
}

impl LinearEmbed {
    pub fn new(dim_in: usize, dim_out: usize, vb: VarBuilder) -> Result<Self> {
        let init = torch_default_init(dim_in);
        let weight = vb.get_with_hints((dim_out, dim_in), "linear.weight", init)?;
        let bias = vb.get_with_hints(dim_out, "linear.bias", init)?;
        Ok(Self { weight, bias })
    }
}

impl Module for LinearEmbed {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.flatten_from(1)?.matmul(&self.weight.t()?)?.broadcast_add(&self.bias)
    }
}

/// The CC criterion with its two embedding heads (`embed_s`, `embed_t` under the given `vb`).
#[derive(Debug, Clone)]
pub struct Correlation {
    beta: f64,
    embed_s: LinearEmbed,
    embed_t: LinearEmbed,
}

impl Correlation {
    pub fn new(
        cfg: &CorrelationConfig,
        student: &FeatureShapes,
        teacher: &FeatureShapes,
        vb: VarBuilder,
    ) -> std::result::Result<Self, FeatureError> {
        if student.embedding == 0 || teacher.embedding == 0 {
            return Err(FeatureError::shape(METHOD, "needs a non-empty embedding from student and teacher"));
        }
        let embed_s = LinearEmbed::new(student.embedding, cfg.feat_dim, vb.pp("embed_s"))
            .map_err(FeatureError::candle(METHOD))?;
        let embed_t = LinearEmbed::new(teacher.embedding, cfg.feat_dim, vb.pp("embed_t"))
            .map_err(FeatureError::candle(METHOD))?;
        Ok(Self { beta: cfg.beta, embed_s, embed_t })
    }

    /// `Correlation.forward` on already embedded `(B, D)` features.
    pub fn correlation(f_s: &Tensor, f_t: &Tensor) -> Result<Tensor> {
        let b = f_s.dim(0)?;
        if b < 2 {
            candle_core::bail!("{METHOD}: needs a batch of at least 2, got {b}");
        }
        let delta = (f_s - f_t)?.abs()?;
        (delta.narrow(0, 0, b - 1)? * delta.narrow(0, 1, b - 1)?)?.sum(1)?.mean_all()
    }
}

impl FeatureLoss for Correlation {
    fn name(&self) -> &'static str {
        METHOD
    }

    fn beta(&self) -> f64 {
        self.beta
    }

    fn taps(&self) -> Taps {
        Taps { stages: vec![], embedding: true }
    }

    /// The teacher's embedding is a constant, its head `embed_t` is trained.
    fn loss(&self, student: &ModelOutput, teacher: &ModelOutput) -> Result<Tensor> {
        let f_s = self.embed_s.forward(&student.embedding)?;
        let f_t = self.embed_t.forward(&teacher.embedding.detach())?;
        Self::correlation(&f_s, &f_t)
    }
}
