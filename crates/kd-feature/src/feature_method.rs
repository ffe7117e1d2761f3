//! Any [`FeatureLoss`] as a training [`Method`]: the student is trained on
//! `γ·CE(y, s) + α·T²·KL(softmax(t/T) ‖ softmax(s/T)) + β·loss(s_feat, t_feat)`, RepDistiller's
//! step (train_student.py: `loss = gamma·loss_cls + alpha·loss_div + beta·loss_kd`) with its
//! defaults for every feature method: γ = 1, α = 0, T = 4 ([`StepWeights`]) and the loss's own β.
//!
//! The loss's trainable parts (CC's embeddings, VID's regressors and variances) are the
//! method's parameters ([`Method::parameters`]): built once from a probe forward of both models
//! (the feature shapes), initialised from `derive_seed(seed, "init/<method>")`, optimised,
//! checkpointed and resumed with the student, never counted in its parameters. The teacher's
//! features come from [`TeacherLogits::outputs`] (eval mode, no gradient), asking for exactly
//! the [`Taps`] the loss reads; a logits-only source is refused when the method is built.

use std::sync::Arc;

use candle_core::{Result, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use kd_core::losses::{cross_entropy, distill_kl};
use kd_core::teacher::{FeatureRequest, TeacherLogits};
use kd_core::{Batch, Classifier, EvalEntry, Losses, Method, Mode, ModelOutput, StepContext};
use serde::{Deserialize, Serialize};

use crate::{config, FeatureError, FeatureLoss, FeatureShapes, Taps};

/// The weights of the step around a feature loss, read from the same `[distill]` table as the
/// loss's own keys (`gamma`, `alpha`, `temperature`; RepDistiller's `-r`, `-a`, `--kd_T`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StepWeights {
    /// Weight γ of the hard-label cross-entropy (`-r`, 1).
    pub gamma: f64,
    /// Weight α of Hinton's `T²·KL` (`-a 0` in RepDistiller's feature-method runs).
    pub alpha: f64,
    /// Temperature of the Hinton term (`--kd_T`, 4).
    pub temperature: f64,
}

impl Default for StepWeights {
    fn default() -> Self {
        Self {
            gamma: crate::REFERENCE_CE_WEIGHT,
            alpha: crate::REFERENCE_KD_WEIGHT,
            temperature: crate::REFERENCE_KD_TEMPERATURE,
        }
    }
}

impl StepWeights {
    /// The step's keys of a method's `[distill]` table.
    pub const KEYS: [&'static str; 3] = ["gamma", "alpha", "temperature"];

    /// Splits `table` into the step's weights (validated) and the rest, the loss's own keys.
    pub fn split(
        method: &'static str,
        table: &toml::Table,
    ) -> std::result::Result<(Self, toml::Table), FeatureError> {
        let (mine, rest): (toml::Table, toml::Table) =
            table.clone().into_iter().partition(|(k, _)| Self::KEYS.contains(&k.as_str()));
        let weights: Self = config::parse(method, &mine)?;
        weights.validate(method)?;
        Ok((weights, rest))
    }

    /// Weights finite and ≥ 0, temperature finite and > 0.
    pub fn validate(&self, method: &'static str) -> std::result::Result<(), FeatureError> {
        config::weight(method, "gamma", self.gamma)?;
        config::weight(method, "alpha", self.alpha)?;
        config::positive(method, "temperature", self.temperature)
    }

    /// `γ·ce + α·kd + feature` (the feature term already weighted), in RepDistiller's order.
    pub fn total(&self, ce: &Tensor, kd: &Tensor, feature: &Tensor) -> Result<Tensor> {
        (((ce * self.gamma)? + (kd * self.alpha)?)? + feature)?.contiguous()
    }
}

/// What a method's build hands [`FeatureMethod::new`]: the loss made from the two models'
/// feature shapes, its parameters created through the given builder.
pub type BuildLoss<'a> = &'a dyn Fn(
    &FeatureShapes,
    &FeatureShapes,
    VarBuilder,
) -> std::result::Result<Box<dyn FeatureLoss>, FeatureError>;

/// A feature loss distilling one teacher into one student; evaluates the student.
pub struct FeatureMethod {
    student: Arc<dyn Classifier>,
    teacher: Box<dyn TeacherLogits>,
    weights: StepWeights,
    loss: Box<dyn FeatureLoss>,
    request: FeatureRequest,
    /// The loss's variables, sorted by name.
    parameters: Vec<(String, Var)>,
}

impl FeatureMethod {
    /// Builds the method: checks the teacher (features served, same label space), runs `probe`
    /// (one input batch, values irrelevant) through each model in eval mode for the feature
    /// shapes, and builds the loss with parameters seeded from `derive_seed(seed,
    /// "init/<method>")`. `method` is the loss's name (errors name it).
    pub fn new(
        method: &'static str,
        student: Arc<dyn Classifier>,
        teacher: Box<dyn TeacherLogits>,
        weights: StepWeights,
        probe: &Tensor,
        seed: u64,
        build: BuildLoss,
    ) -> std::result::Result<Self, FeatureError> {
        weights.validate(method)?;
        // What the teacher must serve is known only once the loss exists, but every loss
        // here reads stages or the embedding, so both are checked before anything is built.
        let full = FeatureRequest { stages: true, embedding: true };
        let (s_shapes, t_shapes) = probe_shapes(method, student.as_ref(), teacher.as_ref(), &full, probe)?;
        let varmap = VarMap::new();
        let vb = owned_builder(&varmap, seed, &format!("init/{method}"), probe);
        let loss = build(&s_shapes, &t_shapes, vb)?;
        let Taps { stages, embedding } = loss.taps();
        let request = FeatureRequest { stages: !stages.is_empty(), embedding };
        Ok(Self { student, teacher, weights, loss, request, parameters: sorted_vars(&varmap) })
    }

    pub fn weights(&self) -> &StepWeights {
        &self.weights
    }

    /// The number of values in the method's own parameters (never part of the student's count).
    pub fn own_params(&self) -> usize {
        self.parameters.iter().map(|(_, v)| v.elem_count()).sum()
    }
}

/// Refuses a teacher that cannot serve `request` (`what` it is, for the message) or predicts
/// another label space than the student.
pub(crate) fn check_teacher(
    method: &'static str,
    student: &dyn Classifier,
    teacher: &dyn TeacherLogits,
    request: &FeatureRequest,
    what: &str,
) -> std::result::Result<(), FeatureError> {
    let t_model = teacher.model().clone();
    if !teacher.serves(request) {
        return Err(FeatureError::teacher(
            method,
            format!(
                "needs {what} of teacher `{}`, but its source serves logits only \
                 (a soft-label cache?); run the teacher live",
                t_model.arch()
            ),
        ));
    }
    if t_model.num_classes() != student.num_classes() {
        return Err(FeatureError::teacher(
            method,
            format!(
                "teacher `{}` predicts {} classes but student `{}` predicts {}: they must share one label space",
                t_model.arch(),
                t_model.num_classes(),
                student.arch(),
                student.num_classes()
            ),
        ));
    }
    Ok(())
}

/// [`check_teacher`], then both models' feature shapes from one eval forward of `probe`.
pub(crate) fn probe_shapes(
    method: &'static str,
    student: &dyn Classifier,
    teacher: &dyn TeacherLogits,
    request: &FeatureRequest,
    probe: &Tensor,
) -> std::result::Result<(FeatureShapes, FeatureShapes), FeatureError> {
    check_teacher(method, student, teacher, request, "the features")?;
    let t_model = teacher.model().clone();
    let shapes = |m: &dyn Classifier| {
        let out = m.forward(probe, Mode::Eval).map_err(FeatureError::candle(method))?;
        FeatureShapes::of(&out)
    };
    Ok((shapes(student)?, shapes(t_model.as_ref())?))
}

/// The builder of a method's own parameters, on the probe's device and dtype, seeded from
/// `derive_seed(seed, purpose)` (the same values on every run of a seed).
pub(crate) fn owned_builder<'a>(varmap: &VarMap, seed: u64, purpose: &str, probe: &Tensor) -> VarBuilder<'a> {
    kd_core::init::seeded_var_builder(
        varmap,
        kd_core::seed::derive_seed(seed, purpose),
        probe.dtype(),
        probe.device(),
    )
}

/// A var map's variables sorted by name (the order the checkpoint and optimiser see).
pub(crate) fn sorted_vars(varmap: &VarMap) -> Vec<(String, Var)> {
    let vars = varmap.data().lock().unwrap_or_else(|e| e.into_inner());
    let mut out: Vec<(String, Var)> = vars.iter().map(|(n, v)| (n.clone(), v.clone())).collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

impl Method for FeatureMethod {
    fn name(&self) -> &str {
        self.loss.name()
    }

    fn variant(&self) -> &str {
        self.loss.name()
    }

    /// Parts: `ce`, `kd` (`T²·KL`, logged even when α = 0) and the loss under its method's
    /// name, each before its weight.
    fn losses(&mut self, batch: &Batch, _ctx: &StepContext) -> Result<Losses> {
        let t = self.teacher.outputs(batch, &self.request)?;
        let student = self.student.forward(&batch.inputs, Mode::Train)?;
        let teacher = ModelOutput {
            embedding: match t.embedding {
                Some(e) => e,
                // Not tapped: the loss never reads it.
                None => Tensor::zeros(0, t.logits.dtype(), t.logits.device())?,
            },
            logits: t.logits,
            stage_features: t.stage_features,
        };
        let ce = cross_entropy(&student.logits, &batch.labels, 0.0)?;
        let kd = distill_kl(&student.logits, &teacher.logits, self.weights.temperature)?;
        let feature = self.loss.loss(&student, &teacher)?;
        let total = self.weights.total(&ce, &kd, &(&feature * self.loss.beta())?)?;
        let parts = [("ce".to_string(), ce), ("kd".to_string(), kd), (self.loss.name().to_string(), feature)];
        Ok(Losses { total, parts: parts.into_iter().map(|(n, t)| (n, t.detach())).collect() })
    }

    fn eval_entries(&self) -> Vec<EvalEntry> {
        vec![EvalEntry::of("student", self.student.as_ref())]
    }

    fn eval_logits(&self, inputs: &Tensor) -> Result<Vec<Tensor>> {
        Ok(vec![self.student.forward(inputs, Mode::Eval)?.logits])
    }

    fn parameters(&self) -> Vec<(String, Var)> {
        self.parameters.clone()
    }
}
