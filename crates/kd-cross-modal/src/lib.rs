//! Cross-modal knowledge distillation (Gupta, Hoffman & Malik, 2016): a teacher trained on
//! modality A of paired samples teaches a student that sees only modality B.
//!
//! Losses of the student (`kd`): Hinton's soft-target loss on the teacher's logits for the
//! *other* modality of the same pair, `(1-α)·CE(y, s) + α·T²·KL(softmax(t/T) ‖ softmax(s/T))`
//! (kd-core's [`SoftTargetLoss`], shared with kd-vanilla); `kd-feat` adds a feature-alignment term
//! `β·d(P·e_s, e_t)` between the student's embedding, mapped by a learned linear projection `P`,
//! and the teacher's (detached) embedding, with `d` the cosine distance `1 − cos` (batch mean) or
//! the mean squared error (mean over batch and features). `plain` trains the student with CE
//! only; `fusion` trains a two-modality late-fusion model (the upper reference): both unimodal
//! encoders, their embeddings concatenated, one linear head (MultiBench's "LF").
//!
//! Methods see tensors, never pixels or waveforms: a batch's `inputs` is a *packed* row per pair,
//! modality A's values then modality B's ([`PackedLayout`]), which keeps kd-core's `Batch`
//! unchanged and lets evaluation (which only gets `inputs`) reach both modalities.

pub mod factory;

// The packed two-modality input and the late-fusion model are models' business (kd-models);
// re-exported for this method's users.
pub use kd_models::late_fusion::{LateFusion, PackedLayout};
use std::sync::Arc;

use candle_core::{Result, Tensor, Var, D};
use candle_nn::{Linear, VarBuilder};
use kd_core::losses::cross_entropy;
use kd_core::losses::SoftTargetLoss;
use kd_core::{Batch, Classifier, EvalEntry, Losses, Method, Mode, StepContext};
use kd_models::layers::torch_default_linear;
use serde::{Deserialize, Serialize};

/// Method name in recipes and the CSV.
pub const METHOD: &str = "cross-modal";
/// Variants this method trains.
pub const VARIANTS: [&str; 4] = ["plain", "kd", "kd-feat", "fusion"];

/// The feature-alignment distance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FeatureLoss {
    /// `1 − cos(P·e_s, e_t)`, averaged over the batch.
    Cosine,
    /// `mean((P·e_s − e_t)²)` over batch and features.
    Mse,
}

fn default_feature_loss() -> FeatureLoss {
    FeatureLoss::Cosine
}

/// Audio features and source of the student's modality (`[distill.audio]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AudioSection {
    pub hub: String,
    #[serde(default = "default_revision")]
    pub revision: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<String>,
    pub train_split: String,
    pub eval_split: String,
    pub audio_column: String,
    pub label_column: String,
    /// Every clip must have this rate (no resampling).
    pub sample_rate: u32,
    pub n_fft: usize,
    pub hop: usize,
    pub n_mels: usize,
    /// Frames per spectrogram (pad with silence / keep the first).
    pub frames: usize,
    #[serde(default)]
    pub f_min: f64,
    /// Default: the Nyquist frequency.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub f_max: Option<f64>,
    #[serde(default = "default_log_offset")]
    pub log_offset: f64,
}

fn default_revision() -> String {
    "main".into()
}
fn default_log_offset() -> f64 {
    1e-6
}

/// How the two datasets are paired (`[distill.pairing]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PairingSection {
    /// Training pairs per class (default: the smaller modality's count of that class).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_per_class: Option<usize>,
    /// Test pairs per class (default as above).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_per_class: Option<usize>,
    /// Pairing seed, fixed across run seeds.
    #[serde(default)]
    pub seed: u64,
}

/// `[distill]` of `method = "cross-modal"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CrossModalConfig {
    /// Softmax temperature of the soft targets.
    pub temperature: f64,
    /// Weight of the soft-target term; `1-α` weighs CE.
    pub alpha: f64,
    /// Weight `β` of the feature-alignment term (variant `kd-feat`).
    #[serde(default)]
    pub feature_weight: f64,
    #[serde(default = "default_feature_loss")]
    pub feature_loss: FeatureLoss,
    /// Channels of the student's (audio CNN's) conv blocks.
    #[serde(default = "default_student_channels")]
    pub student_channels: Vec<usize>,
    pub audio: AudioSection,
    pub pairing: PairingSection,
}

fn default_student_channels() -> Vec<usize> {
    vec![16, 32, 64]
}

#[derive(Debug, thiserror::Error)]
pub enum CrossModalError {
    #[error("[distill] for method `cross-modal`: {0}")]
    Config(String),
    #[error(
        "teacher `{teacher}` predicts {teacher_classes} classes but student `{student}` predicts {student_classes}: they must share one label space"
    )]
    LabelSpace { teacher: String, teacher_classes: usize, student: String, student_classes: usize },
    #[error("variant `{variant}` of method `cross-modal` {message}")]
    Variant { variant: String, message: String },
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

impl CrossModalConfig {
    /// Parses and validates the recipe's `[distill]` table.
    pub fn from_table(table: &toml::Table) -> std::result::Result<Self, CrossModalError> {
        let cfg: CrossModalConfig = toml::Value::Table(table.clone())
            .try_into()
            .map_err(|e: toml::de::Error| CrossModalError::Config(e.message().to_string()))?;
        let bad = |m: String| Err(CrossModalError::Config(m));
        if cfg.temperature.is_nan() || cfg.temperature <= 0.0 {
            return bad(format!("temperature must be > 0, got {}", cfg.temperature));
        }
        if !(0.0..=1.0).contains(&cfg.alpha) {
            return bad(format!("alpha must be in [0, 1], got {}", cfg.alpha));
        }
        if cfg.feature_weight.is_nan() || cfg.feature_weight < 0.0 {
            return bad(format!("feature_weight must be ≥ 0, got {}", cfg.feature_weight));
        }
        if cfg.student_channels.is_empty() || cfg.student_channels.contains(&0) {
            return bad(format!(
                "student_channels must be non-empty and positive, got {:?}",
                cfg.student_channels
            ));
        }
        let a = &cfg.audio;
        if a.sample_rate == 0 || a.n_fft < 2 || a.hop == 0 || a.n_mels == 0 || a.frames == 0 {
            return bad("audio: sample_rate, hop, n_mels, frames must be > 0 and n_fft ≥ 2".into());
        }
        Ok(cfg)
    }

    /// Refuses variants this method does not have, and `kd-feat` without a feature weight.
    pub fn check_variants(&self, variants: &[String]) -> std::result::Result<(), CrossModalError> {
        for v in variants {
            if !VARIANTS.contains(&v.as_str()) {
                return Err(CrossModalError::Variant {
                    variant: v.clone(),
                    message: format!("does not exist; it has: {}", VARIANTS.join(", ")),
                });
            }
            if v == "kd-feat" && self.feature_weight <= 0.0 {
                return Err(CrossModalError::Variant {
                    variant: v.clone(),
                    message: "needs distill.feature_weight > 0".into(),
                });
            }
        }
        Ok(())
    }

    /// The effective upper filterbank edge.
    pub fn f_max(&self) -> f64 {
        self.audio.f_max.unwrap_or(self.audio.sample_rate as f64 / 2.0)
    }
}

/// Feature-alignment distance between projected student and (detached) teacher embeddings.
pub fn feature_distance(kind: FeatureLoss, projected: &Tensor, teacher: &Tensor) -> Result<Tensor> {
    let t = teacher.detach();
    match kind {
        FeatureLoss::Mse => (projected - &t)?.sqr()?.mean_all(),
        FeatureLoss::Cosine => {
            let dot = (projected * &t)?.sum(D::Minus1)?;
            let np = projected.sqr()?.sum(D::Minus1)?.sqrt()?;
            let nt = t.sqr()?.sum(D::Minus1)?.sqrt()?;
            let cos = (dot / ((np * nt)? + 1e-8)?)?;
            cos.affine(-1.0, 1.0)?.mean_all()
        }
    }
}

/// The feature-alignment part of `kd-feat`: a learned projection of the student's embedding
/// into the teacher's embedding space, its distance and weight.
pub struct FeatureAlignment {
    pub projection: Linear,
    pub kind: FeatureLoss,
    pub weight: f64,
}

impl FeatureAlignment {
    /// A projection `student_dim → teacher_dim` (PyTorch's default linear init) from `vb`.
    pub fn new(
        student_dim: usize,
        teacher_dim: usize,
        kind: FeatureLoss,
        weight: f64,
        vb: VarBuilder,
    ) -> Result<Self> {
        Ok(Self { projection: torch_default_linear(student_dim, teacher_dim, vb)?, kind, weight })
    }
}

enum Kind {
    /// CE on modality B.
    Plain,
    /// Soft targets from the teacher on modality A (+ feature alignment).
    Distill { teacher: Arc<dyn Classifier>, loss: SoftTargetLoss, align: Option<FeatureAlignment> },
    /// CE of the fusion model on both modalities.
    Fusion,
}

/// Cross-modal KD as a [`Method`]; the model it trains and evaluates is the student (for
/// `fusion`, the fusion model), reported with role `student`.
pub struct CrossModal {
    variant: String,
    model: Arc<dyn Classifier>,
    layout: PackedLayout,
    kind: Kind,
    /// Trainable variables the method owns (`kd-feat`'s projection), see [`Method::parameters`].
    owned: Vec<(String, Var)>,
}

impl CrossModal {
    /// `plain`: the student alone on modality B.
    pub fn plain(student: Arc<dyn Classifier>, layout: PackedLayout) -> Self {
        Self { variant: "plain".into(), model: student, layout, kind: Kind::Plain, owned: Vec::new() }
    }

    /// `kd` (no `align`) or `kd-feat` (with `align`): the student on B distilled from the frozen
    /// teacher on A. Refuses different label spaces.
    pub fn distill(
        student: Arc<dyn Classifier>,
        teacher: Arc<dyn Classifier>,
        layout: PackedLayout,
        cfg: &CrossModalConfig,
        align: Option<FeatureAlignment>,
    ) -> std::result::Result<Self, CrossModalError> {
        if teacher.num_classes() != student.num_classes() {
            return Err(CrossModalError::LabelSpace {
                teacher: teacher.arch().to_string(),
                teacher_classes: teacher.num_classes(),
                student: student.arch().to_string(),
                student_classes: student.num_classes(),
            });
        }
        let loss = SoftTargetLoss { temperature: cfg.temperature, alpha: cfg.alpha, label_smoothing: 0.0 };
        let variant = if align.is_some() { "kd-feat" } else { "kd" };
        Ok(Self {
            variant: variant.into(),
            model: student,
            layout,
            kind: Kind::Distill { teacher, loss, align },
            owned: Vec::new(),
        })
    }

    /// Declares the variables behind `kd-feat`'s projection, so that the pipeline optimises,
    /// checkpoints and resumes them with the student.
    pub fn with_parameters(mut self, owned: Vec<(String, Var)>) -> Self {
        self.owned = owned;
        self
    }

    /// `fusion`: the late-fusion model on both modalities, CE only.
    pub fn fusion(model: Arc<LateFusion>, layout: PackedLayout) -> Self {
        Self { variant: "fusion".into(), model, layout, kind: Kind::Fusion, owned: Vec::new() }
    }

    fn student_input(&self, inputs: &Tensor) -> Result<Tensor> {
        match self.kind {
            Kind::Fusion => Ok(inputs.clone()),
            _ => self.layout.modality_b(inputs),
        }
    }
}

impl Method for CrossModal {
    fn name(&self) -> &str {
        METHOD
    }

    fn variant(&self) -> &str {
        &self.variant
    }

    fn losses(&mut self, batch: &Batch, _ctx: &StepContext) -> Result<Losses> {
        let out = self.model.forward(&self.student_input(&batch.inputs)?, Mode::Train)?;
        match &self.kind {
            Kind::Plain | Kind::Fusion => {
                let ce = cross_entropy(&out.logits, &batch.labels, 0.0)?;
                Ok(Losses { total: ce.clone(), parts: vec![("ce".into(), ce.detach())] })
            }
            Kind::Distill { teacher, loss, align } => {
                let t = teacher.forward(&self.layout.modality_a(&batch.inputs)?, Mode::Eval)?;
                let terms = loss.compute(&out.logits, &t.logits.detach(), &batch.labels)?;
                let mut parts = vec![("ce".into(), terms.ce.detach()), ("kd".into(), terms.kd.detach())];
                let mut total = terms.total;
                if let Some(al) = align {
                    let projected = candle_core::Module::forward(&al.projection, &out.embedding)?;
                    let d = feature_distance(al.kind, &projected, &t.embedding)?;
                    total = (total + (&d * al.weight)?)?;
                    parts.push(("feat".into(), d.detach()));
                }
                Ok(Losses { total, parts })
            }
        }
    }

    fn eval_entries(&self) -> Vec<EvalEntry> {
        vec![EvalEntry::of("student", self.model.as_ref())]
    }

    fn eval_logits(&self, inputs: &Tensor) -> Result<Vec<Tensor>> {
        Ok(vec![self.model.forward(&self.student_input(inputs)?, Mode::Eval)?.logits])
    }

    fn parameters(&self) -> Vec<(String, Var)> {
        self.owned.clone()
    }
}

#[cfg(test)]
mod tests;
