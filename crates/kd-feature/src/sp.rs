//! Similarity-preserving KD (Tung & Mori, *Similarity-Preserving Knowledge Distillation*,
//! ICCV 2019) as RepDistiller's `distiller_zoo/SP.py` `Similarity` computes it on the last stage
//! (`feat[-2]`): the batch Gram matrices `G = F·Fᵀ` of the flattened features, each row
//! L2-normalised, and `‖G_t − G_s‖²_F / B²`, β = 3000. Student and teacher widths may differ:
//! only the `B×B` Grams are compared. mdistiller: same function on `feats[-1]` (the same last
//! stage), weight 3000.

use candle_core::{Result, Tensor};
use kd_core::ModelOutput;
use serde::{Deserialize, Serialize};

use crate::util::{l2_normalize, stage};
use crate::{config, FeatureError, FeatureLoss, FeatureShapes, Taps};

const METHOD: &str = "sp";

/// `[distill]` of `method = "sp"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SimilarityConfig {
    /// Weight β (RepDistiller `-b 3000`).
    pub beta: f64,
}

impl Default for SimilarityConfig {
    fn default() -> Self {
        Self { beta: 3000.0 }
    }
}

impl SimilarityConfig {
    pub fn from_table(table: &toml::Table) -> std::result::Result<Self, FeatureError> {
        let cfg: Self = config::parse(METHOD, table)?;
        config::weight(METHOD, "beta", cfg.beta)?;
        Ok(cfg)
    }
}

/// The SP criterion on the last stage.
#[derive(Debug, Clone)]
pub struct Similarity {
    beta: f64,
    student_stage: usize,
    teacher_stage: usize,
}

impl Similarity {
    pub fn new(
        cfg: &SimilarityConfig,
        student: &FeatureShapes,
        teacher: &FeatureShapes,
    ) -> std::result::Result<Self, FeatureError> {
        if student.stages.is_empty() || teacher.stages.is_empty() {
            return Err(FeatureError::shape(METHOD, "needs the last stage feature of student and teacher"));
        }
        Ok(Self {
            beta: cfg.beta,
            student_stage: student.stages.len() - 1,
            teacher_stage: teacher.stages.len() - 1,
        })
    }

    /// `normalize(F·Fᵀ)` of `(B, ...)` features flattened to `(B, D)`.
    fn gram(f: &Tensor) -> Result<Tensor> {
        let f = f.flatten_from(1)?;
        l2_normalize(&f.matmul(&f.t()?)?, 1)
    }
}

impl FeatureLoss for Similarity {
    fn name(&self) -> &'static str {
        METHOD
    }

    fn beta(&self) -> f64 {
        self.beta
    }

    fn taps(&self) -> Taps {
        Taps { stages: vec![self.student_stage], embedding: false }
    }

    fn loss(&self, student: &ModelOutput, teacher: &ModelOutput) -> Result<Tensor> {
        let s = stage(METHOD, "student", student, self.student_stage)?;
        let t = stage(METHOD, "teacher", teacher, self.teacher_stage)?.detach();
        let b = s.dim(0)?;
        let diff = (Self::gram(&t)? - Self::gram(s)?)?;
        diff.sqr()?.sum_all()? / (b * b) as f64
    }
}
