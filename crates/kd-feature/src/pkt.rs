//! Probabilistic knowledge transfer (Passalis & Tefas, *Learning Deep Representations with
//! Probabilistic Knowledge Transfer*, ECCV 2018) as RepDistiller's `distiller_zoo/PKT.py` `PKT`
//! computes it on the embeddings (`feat[-1]`): cosine similarities of the L2-normalised rows,
//! shifted to `[0, 1]`, normalised per row into conditional probabilities, and
//! `mean(P_t · log((P_t + ε)/(P_s + ε)))` over all `B×B` entries, ε = 1e-7, β = 30000.
//! mdistiller: the same function on `pooled_feat`, weight 30000.

use candle_core::{Result, Tensor};
use kd_core::ModelOutput;
use serde::{Deserialize, Serialize};

use crate::{config, FeatureError, FeatureLoss, FeatureShapes, Taps};

const METHOD: &str = "pkt";
/// `eps` of `PKT.cosine_similarity_loss`.
const EPS: f64 = 1e-7;

/// `[distill]` of `method = "pkt"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PktConfig {
    /// Weight β (RepDistiller `-b 30000`).
    pub beta: f64,
}

impl Default for PktConfig {
    fn default() -> Self {
        Self { beta: 30000.0 }
    }
}

impl PktConfig {
    pub fn from_table(table: &toml::Table) -> std::result::Result<Self, FeatureError> {
        let cfg: Self = config::parse(METHOD, table)?;
        config::weight(METHOD, "beta", cfg.beta)?;
        Ok(cfg)
    }
}

/// The PKT criterion (cosine kernel) on the embeddings.
#[derive(Debug, Clone)]
pub struct Pkt {
    beta: f64,
}

impl Pkt {
    pub fn new(
        cfg: &PktConfig,
        student: &FeatureShapes,
        teacher: &FeatureShapes,
    ) -> std::result::Result<Self, FeatureError> {
        if student.embedding == 0 || teacher.embedding == 0 {
            return Err(FeatureError::shape(METHOD, "needs a non-empty embedding from student and teacher"));
        }
        Ok(Self { beta: cfg.beta })
    }

    /// Row-stochastic matrix of `(cos + 1)/2` between the rows of `(B, D)` features.
    fn conditional_probabilities(f: &Tensor) -> Result<Tensor> {
        let norm = f.sqr()?.sum_keepdim(1)?.sqrt()?;
        let f = f.broadcast_div(&(norm + EPS)?)?;
        // The reference zeroes NaNs (`x[x != x] = 0`).
        let f = f.eq(&f)?.where_cond(&f, &f.zeros_like()?)?;
        let similarity = ((f.matmul(&f.t()?)? + 1.0)? / 2.0)?;
        similarity.broadcast_div(&similarity.sum_keepdim(1)?)
    }

    /// `PKT.cosine_similarity_loss(student, teacher)` on `(B, D)` features.
    pub fn cosine_similarity_loss(student: &Tensor, teacher: &Tensor) -> Result<Tensor> {
        let p_s = Self::conditional_probabilities(student)?;
        let p_t = Self::conditional_probabilities(teacher)?;
        let ratio = ((&p_t + EPS)? / (p_s + EPS)?)?;
        (p_t * ratio.log()?)?.mean_all()
    }
}

impl FeatureLoss for Pkt {
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
        Self::cosine_similarity_loss(&student.embedding, &teacher.embedding.detach())
    }
}
