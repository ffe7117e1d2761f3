//! FitNet (Romero et al. 2015) as a [`Method`]: the student trained on
//! `γ·CE(y, s) + α·T²·KL(softmax(t/T) ‖ softmax(s/T)) + β·MSE(ConvReg(s_hint), t_hint)`, as
//! RepDistiller's train_student.py runs `--distill hint` (`loss = gamma·loss_cls +
//! alpha·loss_div + beta·loss_kd`; scripts/run_cifar_distill.sh: `-r 1 -a 0 -b 100`, `--kd_T 4`).
//! The hint loss and its regressor are [`crate::fitnet`]'s, checked against RepDistiller's code.
//!
//! What the method owns and sees:
//! - the regressor [`ConvReg`] is its own: [`Method::parameters`] hands out its variables
//!   (`regressor.conv.weight`, `regressor.conv.bias`, `regressor.bn.weight`, `regressor.bn.bias`),
//!   so the pipeline optimises, checkpoints and resumes them with the student
//!   ([`kd_core::method::owned_state`]) while the student's parameter count leaves them out (as in
//!   RepDistiller, whose `trainable_list` holds the regressor but whose reported model is the
//!   student alone). It is initialised like PyTorch's `nn.Conv2d`/`nn.BatchNorm2d` from a seed, the
//!   same on every run ([`kd_core::init::seeded_var_builder`]).
//! - the teacher's stage features come from [`TeacherLogits::outputs`] with
//!   [`FitNetMethod::feature_request`] (an eval-mode forward without gradient); a logits-only
//!   source (soft-label cache) is refused when the method is built.
//!
//! **Which stage is the hint.** RepDistiller's `--hint_layer` (default 2) indexes the list its
//! models return with `is_feat=True`. For its CIFAR ResNets that list is `[f0, f1, f2, f3, f4]`:
//! the stem output, the three stage outputs and the pooled vector; kd-models' CIFAR ResNets
//! expose `stage_features = [f1, f2, f3]` (no stem), so `feat[k]` is our stage `k − 1` and the
//! default `hint_layer = 2` (the middle stage) is `hint_stage = 1`. kd-models' WRN, VGG,
//! MobileNetV2 and ShuffleNetV2 *do* put their first map (stem conv / first block) in
//! `stage_features`, so for them `feat[k]` is our stage `k` and RepDistiller's `hint_layer = 2`
//! is `hint_stage = 2`. The index is therefore the model's own (0-based into its
//! `stage_features`), and student and teacher may differ ([`FitNetMethodConfig::teacher_stage`]),
//! e.g. a ResNet student (`hint_stage = 1`) under a WRN teacher (`teacher_stage = 2`).

use std::sync::Arc;

use candle_core::{Result, Tensor, Var};
use candle_nn::VarMap;
use kd_core::losses::{cross_entropy, distill_kl};
use kd_core::teacher::{FeatureRequest, TeacherLogits};
use kd_core::{Batch, Classifier, EvalEntry, Losses, Method, Mode, StepContext};
use serde::{Deserialize, Serialize};

use crate::feature_method::{owned_builder, probe_shapes, sorted_vars, StepWeights};
use crate::util::stage;
use crate::{config, ConvReg, FeatureError};

const METHOD: &str = "fitnet";
/// Name prefix of the regressor's variables (before the pipeline's `method/`).
const REGRESSOR: &str = "regressor";
/// Purpose label of the regressor's initial values in [`kd_core::seed::derive_seed`].
const INIT_PURPOSE: &str = "init/fitnet-regressor";

/// `[distill]` of `method = "fitnet"` run as a method: RepDistiller's weights as defaults,
/// unknown keys refused.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FitNetMethodConfig {
    /// Weight γ of the hard-label cross-entropy (RepDistiller `-r`, 1).
    pub gamma: f64,
    /// Weight α of Hinton's soft-target term `T²·KL` (`-a 0` in RepDistiller's FitNet runs).
    pub alpha: f64,
    /// Weight β of the hint loss (`-b 100`).
    pub beta: f64,
    /// Temperature `T` of the soft-target term (`--kd_T`, 4).
    pub temperature: f64,
    /// The student's hint stage, 0-based into its `stage_features` (default 1: RepDistiller's
    /// `--hint_layer 2` on CIFAR ResNets, whose stage features leave out the stem; see the
    /// module docs for the families that include it).
    pub hint_stage: usize,
    /// The teacher's hint stage, 0-based into its `stage_features`; absent: `hint_stage`
    /// (RepDistiller uses one index for both).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub teacher_stage: Option<usize>,
}

impl Default for FitNetMethodConfig {
    fn default() -> Self {
        Self {
            gamma: crate::REFERENCE_CE_WEIGHT,
            alpha: crate::REFERENCE_KD_WEIGHT,
            beta: 100.0,
            temperature: crate::REFERENCE_KD_TEMPERATURE,
            hint_stage: 1,
            teacher_stage: None,
        }
    }
}

impl FitNetMethodConfig {
    /// Parses and validates the recipe's `[distill]` table.
    pub fn from_table(table: &toml::Table) -> std::result::Result<Self, FeatureError> {
        let cfg: Self = config::parse(METHOD, table)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Weights finite and ≥ 0, temperature finite and > 0.
    pub fn validate(&self) -> std::result::Result<(), FeatureError> {
        for (key, value) in [("gamma", self.gamma), ("alpha", self.alpha), ("beta", self.beta)] {
            config::weight(METHOD, key, value)?;
        }
        config::positive(METHOD, "temperature", self.temperature)
    }

    /// The teacher's hint stage.
    pub fn teacher_stage(&self) -> usize {
        self.teacher_stage.unwrap_or(self.hint_stage)
    }
}

/// FitNet distillation of one teacher into one student: variant `fitnet`, evaluates the student.
pub struct FitNetMethod {
    student: Arc<dyn Classifier>,
    teacher: Box<dyn TeacherLogits>,
    config: FitNetMethodConfig,
    regressor: ConvReg,
    /// The regressor's variables, sorted by name.
    parameters: Vec<(String, Var)>,
}

impl FitNetMethod {
    /// What the method asks its teacher for: the stage features (the logits come with them).
    pub fn feature_request() -> FeatureRequest {
        FeatureRequest { stages: true, embedding: false }
    }

    /// Builds the method and its regressor. `probe` is one input batch (any size; its values do
    /// not matter) run once through each model in eval mode to read the hint shapes, as
    /// RepDistiller's train_student.py does with a random batch; the regressor lives on the
    /// student's hint device and dtype. `seed` is the run's seed: the regressor's initial values
    /// come from `derive_seed(seed, "init/fitnet-regressor")` and its variable names.
    ///
    /// Refuses an invalid config, a teacher source that cannot serve stage features, teacher and student with
    /// different label spaces, a hint stage a model does not have, and hint shapes no
    /// [`ConvReg`] maps onto each other.
    pub fn new(
        student: Arc<dyn Classifier>,
        teacher: Box<dyn TeacherLogits>,
        config: &FitNetMethodConfig,
        probe: &Tensor,
        seed: u64,
    ) -> std::result::Result<Self, FeatureError> {
        config.validate()?;
        let (s_shapes, t_shapes) =
            probe_shapes(METHOD, student.as_ref(), teacher.as_ref(), &Self::feature_request(), probe)?;
        let (hs, ht) = (config.hint_stage, config.teacher_stage());
        let t_model = teacher.model().clone();
        for (role, key, model, shapes, i) in [
            ("student", "hint_stage", &student, &s_shapes, hs),
            ("teacher", "teacher_stage", &t_model, &t_shapes, ht),
        ] {
            if i >= shapes.stages.len() {
                return Err(FeatureError::shape(
                    METHOD,
                    format!(
                        "{key} = {i}, but the {role} `{}` has {} stage features (0-based)",
                        model.arch(),
                        shapes.stages.len()
                    ),
                ));
            }
        }
        let varmap = VarMap::new();
        let vb = owned_builder(&varmap, seed, INIT_PURPOSE, probe);
        let regressor = ConvReg::new(s_shapes.stages[hs], t_shapes.stages[ht], vb.pp(REGRESSOR))?;
        let parameters = sorted_vars(&varmap);
        Ok(Self { student, teacher, config: config.clone(), regressor, parameters })
    }

    pub fn config(&self) -> &FitNetMethodConfig {
        &self.config
    }

    pub fn regressor(&self) -> &ConvReg {
        &self.regressor
    }

    /// The number of values in the regressor (for logs; never part of the student's count).
    pub fn regressor_params(&self) -> usize {
        self.parameters.iter().map(|(_, v)| v.elem_count()).sum()
    }
}

impl Method for FitNetMethod {
    fn name(&self) -> &str {
        METHOD
    }

    fn variant(&self) -> &str {
        METHOD
    }

    /// Parts: `ce`, `kd` (`T²·KL`, logged even when α = 0) and `hint` (the MSE), each before its
    /// weight.
    fn losses(&mut self, batch: &Batch, _ctx: &StepContext) -> Result<Losses> {
        let c = &self.config;
        let teacher = self.teacher.outputs(batch, &Self::feature_request())?;
        let student = self.student.forward(&batch.inputs, Mode::Train)?;
        let t_hint = match teacher.stage_features.get(c.teacher_stage()) {
            Some(t) => t,
            None => candle_core::bail!(
                "{METHOD}: the teacher served {} stage features, stage {} is needed",
                teacher.stage_features.len(),
                c.teacher_stage()
            ),
        };
        let s_hint = stage(METHOD, "student", &student, c.hint_stage)?;
        let ce = cross_entropy(&student.logits, &batch.labels, 0.0)?;
        let kd = distill_kl(&student.logits, &teacher.logits, c.temperature)?;
        let hint = self.regressor.hint_loss(s_hint, t_hint)?;
        let weights = StepWeights { gamma: c.gamma, alpha: c.alpha, temperature: c.temperature };
        let total = weights.total(&ce, &kd, &(&hint * c.beta)?)?;
        let parts = [("ce", ce), ("kd", kd), ("hint", hint)];
        Ok(Losses { total, parts: parts.into_iter().map(|(n, t)| (n.to_string(), t.detach())).collect() })
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
