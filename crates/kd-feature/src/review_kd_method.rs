//! ReviewKD (Chen, Liu, Zhao & Jia, CVPR 2021) as a [`Method`]: the student trained on
//! `γ·CE(y, s) + α·T²·KL(softmax(t/T) ‖ softmax(s/T)) + β·min(1, epoch / warmup)·HCL(ABF(s), t)`,
//! as dvlab-research/ReviewKD's `CIFAR-100/train.py` (commit `cede6ea`) trains
//! (`losses['review_kd_loss'] = hcl · min(1, epoch/kd_warm_up) · kd_loss_weight`, the optional
//! `kl_kd_loss` with `--use-kl`, `cls_loss · ce_loss_weight`, epochs from 0). Defaults are its
//! argparse defaults: `--ce-loss-weight 1`, `--kd-loss-weight 1`, `--kd-warm-up 20`, `-T 4`, no
//! `--use-kl` (α = 0; `--kl-loss-weight 1` when on). Its `script/reviewKD.sh` sets the weight per
//! pair: 0.6 for resnet56 → resnet20, 1.0 for resnet110 → resnet32, 5.0 for WRN-40-2 and
//! resnet32x4 teachers, 8.0 for ShuffleNetV2; a recipe sets `beta` accordingly. mdistiller
//! (commit `a08d46f`, `engine/cfg.py` `CFG.REVIEWKD`) agrees: CE_WEIGHT 1.0, REVIEWKD_WEIGHT 1.0,
//! WARMUP_EPOCHS 20 (5.0 in its resnet32x4 → resnet8x4 `reviewkd.yaml`), no KL term; its epochs
//! count from 1. The fusion and loss are [`crate::review_kd`]'s, checked against the reference.
//!
//! What the method owns and sees:
//! - parameters ([`Method::parameters`]): the ABF modules `abfs.{k}.*` (`k = 0` the deepest
//!   level; 1×1 and 3×3 convolutions, batch-norm affine weights, attention convolutions),
//!   initialised as the reference from `derive_seed(seed, "init/reviewkd-abf")`;
//! - buffers ([`Method::buffers`]): the ABF batch norms' running statistics
//!   `abfs.{k}.conv{1,2}.1.running_{mean,var}` (updated by every step, never optimised);
//! - the teacher's stage features and pooled embedding from [`TeacherLogits::outputs`] (eval
//!   mode, no gradient); a logits-only source is refused when the method is built.
//!
//! Levels: every stage feature of the student (shallowest first) and its pooled embedding as a
//! `(B, D, 1, 1)` map, against the teacher's same levels — the reference's `feats[1:]` for a
//! CIFAR ResNet. One difference remains: the reference reads the teacher's stage features
//! *before* each stage's last ReLU (`preact=True`), and kd-bench's models serve post-ReLU
//! stage features only, so the teacher maps here are post-ReLU (see [`crate::review_kd`]).

use std::sync::Arc;

use candle_core::{Result, Tensor, Var};
use candle_nn::VarMap;
use kd_core::losses::{cross_entropy, distill_kl};
use kd_core::recipe::Recipe;
use kd_core::registry::{method_error, one_teacher_trainee, BuildEnv, MethodFactory, MethodSetup, Trainee};
use kd_core::teacher::{FeatureRequest, TeacherLogits, TeacherOutputs};
use kd_core::{Batch, Classifier, EvalEntry, Losses, Method, Mode, ModelOutput, StepContext};
use serde::{Deserialize, Serialize};

use crate::feature_method::check_teacher;
use crate::review_kd::{hcl, ReviewKd, ReviewKdConfig, ReviewKdError};
use crate::{config, FeatureError};

const METHOD: &str = "reviewkd";
/// Purpose label of the ABF parameters' initial values in [`kd_core::seed::derive_seed`].
const INIT_PURPOSE: &str = "init/reviewkd-abf";
/// How many evaluation inputs size the ABFs (one eval forward of each model).
const PROBE: usize = 2;

/// `[distill]` of `method = "reviewkd"`: ReviewKD's CIFAR-100 defaults, unknown keys refused.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReviewKdMethodConfig {
    /// Weight γ of the cross-entropy (`--ce-loss-weight`, 1).
    pub gamma: f64,
    /// Weight α of the `T²·KL` term (0: `--use-kl` is off by default; `--kl-loss-weight 1`
    /// when on).
    pub alpha: f64,
    /// Temperature of the KL term (`-T`, 4).
    pub temperature: f64,
    /// Weight β of the HCL term after warm-up (`--kd-loss-weight`, 1; 0.6 in
    /// script/reviewKD.sh for resnet56 → resnet20).
    pub beta: f64,
    /// Epochs over which β ramps up linearly from 0, epochs counted from 0 (`--kd-warm-up`, 20);
    /// 0: no warm-up.
    pub warmup_epochs: f64,
}

impl Default for ReviewKdMethodConfig {
    fn default() -> Self {
        let r = ReviewKdConfig::default();
        Self {
            gamma: 1.0,
            alpha: 0.0,
            temperature: crate::REFERENCE_KD_TEMPERATURE,
            beta: r.weight,
            warmup_epochs: r.warmup_epochs,
        }
    }
}

fn review_error(e: ReviewKdError) -> FeatureError {
    match e {
        ReviewKdError::Config(m) | ReviewKdError::State(m) => FeatureError::shape(METHOD, m),
        ReviewKdError::Candle(e) => FeatureError::candle(METHOD)(e),
    }
}

impl ReviewKdMethodConfig {
    /// Parses and validates the recipe's `[distill]` table.
    pub fn from_table(table: &toml::Table) -> std::result::Result<Self, FeatureError> {
        let cfg: Self = config::parse(METHOD, table)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Weights finite and ≥ 0, temperature > 0, warm-up finite and ≥ 0.
    pub fn validate(&self) -> std::result::Result<(), FeatureError> {
        for (key, value) in [("gamma", self.gamma), ("alpha", self.alpha), ("beta", self.beta)] {
            config::weight(METHOD, key, value)?;
        }
        config::positive(METHOD, "temperature", self.temperature)?;
        if !(self.warmup_epochs.is_finite() && self.warmup_epochs >= 0.0) {
            return Err(FeatureError::config(
                METHOD,
                format!("`warmup_epochs` must be finite and >= 0, got {}", self.warmup_epochs),
            ));
        }
        Ok(())
    }

    /// The loss's own configuration (weight β, the warm-up).
    pub fn review_kd(&self) -> ReviewKdConfig {
        ReviewKdConfig { weight: self.beta, warmup_epochs: self.warmup_epochs }
    }
}

/// The levels of one output: stage features, then the embedding as `(B, D, 1, 1)`.
fn levels(stages: &[Tensor], embedding: &Tensor) -> Result<Vec<Tensor>> {
    let (b, d) = embedding.dims2()?;
    let mut v = stages.to_vec();
    v.push(embedding.reshape((b, d, 1, 1))?);
    Ok(v)
}

fn channels(out: &ModelOutput) -> std::result::Result<Vec<usize>, FeatureError> {
    let mut c = Vec::with_capacity(out.stage_features.len() + 1);
    for (i, f) in out.stage_features.iter().enumerate() {
        match f.dims() {
            [_, ch, _, _] => c.push(*ch),
            dims => {
                return Err(FeatureError::shape(
                    METHOD,
                    format!("stage {i} is {dims:?}, expected (B, C, H, W)"),
                ))
            }
        }
    }
    match out.embedding.dims() {
        [_, d] => c.push(*d),
        dims => return Err(FeatureError::shape(METHOD, format!("embedding is {dims:?}, expected (B, D)"))),
    }
    Ok(c)
}

/// ReviewKD distillation of one teacher into one student: variant `reviewkd`, evaluates the
/// student.
pub struct ReviewKdMethod {
    student: Arc<dyn Classifier>,
    teacher: Box<dyn TeacherLogits>,
    config: ReviewKdMethodConfig,
    /// The fusion modules; built with weight 1 and no warm-up, so that its loss is the raw HCL
    /// (β and the warm-up are applied here, as `ReviewKd::loss_from_features` would).
    review: ReviewKd,
    /// The ABF variables, sorted by name.
    parameters: Vec<(String, Var)>,
}

impl ReviewKdMethod {
    /// What the method asks its teacher for: stage features and the embedding.
    pub fn feature_request() -> FeatureRequest {
        FeatureRequest { stages: true, embedding: true }
    }

    /// Builds the method and its ABFs. `probe` is one input batch (values do not matter) run
    /// through each model in eval mode to read the level shapes (and once through the ABFs, in
    /// eval mode, to check they fit the teacher's maps); `seed` is the run's seed.
    ///
    /// Refuses an invalid config, a teacher source that cannot serve features, teacher and
    /// student with different label spaces or numbers of levels, and maps the ABFs cannot
    /// bring to the teacher's shapes.
    pub fn new(
        student: Arc<dyn Classifier>,
        teacher: Box<dyn TeacherLogits>,
        config: &ReviewKdMethodConfig,
        probe: &Tensor,
        seed: u64,
    ) -> std::result::Result<Self, FeatureError> {
        config.validate()?;
        check_teacher(
            METHOD,
            student.as_ref(),
            teacher.as_ref(),
            &Self::feature_request(),
            "the stage features and embedding",
        )?;
        let t_model = teacher.model().clone();
        let probe_out =
            |m: &dyn Classifier| m.forward(probe, Mode::Eval).map_err(FeatureError::candle(METHOD));
        let s_out = probe_out(student.as_ref())?;
        let t_out = probe_out(t_model.as_ref())?;
        let (s_ch, t_ch) = (channels(&s_out)?, channels(&t_out)?);
        if s_ch.len() != t_ch.len() {
            return Err(FeatureError::shape(
                METHOD,
                format!(
                    "student `{}` has {} stage features and teacher `{}` {}; ReviewKD pairs them level by level",
                    student.arch(),
                    s_ch.len() - 1,
                    t_model.arch(),
                    t_ch.len() - 1
                ),
            ));
        }
        let emb = &s_out.embedding;
        let varmap = VarMap::new();
        let vb = kd_core::init::seeded_var_builder(
            &varmap,
            kd_core::seed::derive_seed(seed, INIT_PURPOSE),
            emb.dtype(),
            emb.device(),
        );
        let raw = ReviewKdConfig { weight: 1.0, warmup_epochs: 0.0 };
        let mut review = ReviewKd::new(&raw, &s_ch, &t_ch, vb).map_err(review_error)?;
        // One eval-mode pass (running statistics untouched) checks the shapes end to end.
        let s_levels =
            levels(&s_out.stage_features, &s_out.embedding).map_err(FeatureError::candle(METHOD))?;
        let t_levels =
            levels(&t_out.stage_features, &t_out.embedding).map_err(FeatureError::candle(METHOD))?;
        let sizes: Vec<(usize, usize)> = t_levels.iter().map(|t| (t.dims()[2], t.dims()[3])).collect();
        review.fuse(&s_levels, &sizes, Mode::Eval).and_then(|fused| hcl(&fused, &t_levels)).map_err(|e| {
            FeatureError::shape(
                METHOD,
                format!(
                    "student `{}` levels {s_ch:?} do not fuse onto teacher `{}` levels {t_ch:?}: {e}",
                    student.arch(),
                    t_model.arch()
                ),
            )
        })?;
        let mut parameters: Vec<(String, Var)> = {
            let vars = varmap.data().lock().unwrap_or_else(|e| e.into_inner());
            vars.iter().map(|(n, v)| (n.clone(), v.clone())).collect()
        };
        parameters.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(Self { student, teacher, config: config.clone(), review, parameters })
    }

    pub fn config(&self) -> &ReviewKdMethodConfig {
        &self.config
    }

    /// The fusion modules (built with weight 1, no warm-up: their loss is the raw HCL).
    pub fn review(&self) -> &ReviewKd {
        &self.review
    }

    /// The raw HCL of a training step (ABFs in training mode: running statistics move).
    fn hcl(&mut self, student: &ModelOutput, teacher: &TeacherOutputs) -> Result<Tensor> {
        let Some(t_emb) = &teacher.embedding else {
            candle_core::bail!("{METHOD}: the teacher source served no embedding")
        };
        let t_levels = levels(&teacher.stage_features, t_emb)?;
        let s_levels = levels(&student.stage_features, &student.embedding)?;
        self.review.loss_from_features(&s_levels, &t_levels, 0, Mode::Train)
    }
}

impl Method for ReviewKdMethod {
    fn name(&self) -> &str {
        METHOD
    }

    fn variant(&self) -> &str {
        METHOD
    }

    /// Parts: `ce`, `kd` (`T²·KL`, logged even when α = 0) and `hcl` (before β and the warm-up).
    fn losses(&mut self, batch: &Batch, ctx: &StepContext) -> Result<Losses> {
        let teacher = self.teacher.outputs(batch, &Self::feature_request())?;
        let student = self.student.forward(&batch.inputs, Mode::Train)?;
        let c = &self.config;
        let ce = cross_entropy(&student.logits, &batch.labels, 0.0)?;
        let kd = distill_kl(&student.logits, &teacher.logits, c.temperature)?;
        let factor = c.review_kd().warmup_factor(ctx.epoch);
        let (gamma, alpha, beta) = (c.gamma, c.alpha, c.beta);
        let hcl = self.hcl(&student, &teacher)?;
        // As ReviewKd::loss_from_features weights it: hcl · (weight · warm-up factor).
        let review = (&hcl * (beta * factor))?;
        let total = (((&ce * gamma)? + (&kd * alpha)?)? + review)?;
        let parts = [("ce", ce), ("kd", kd), ("hcl", hcl)];
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

    fn buffers(&self) -> Vec<(String, Var)> {
        self.review.buffers()
    }
}

/// The registry's entry for `method = "reviewkd"`: variant `reviewkd`.
pub struct ReviewKdFactory;

/// What the registry lists.
pub static REVIEW_KD: ReviewKdFactory = ReviewKdFactory;

impl MethodFactory for ReviewKdFactory {
    fn name(&self) -> &'static str {
        METHOD
    }

    fn variants(&self) -> &'static [&'static str] {
        &[METHOD]
    }

    fn parse(&self, recipe: &Recipe) -> kd_core::Result<Box<dyn MethodSetup>> {
        Ok(Box::new(ReviewKdSetup(ReviewKdMethodConfig::from_table(&recipe.distill).map_err(method_error)?)))
    }
}

struct ReviewKdSetup(ReviewKdMethodConfig);

impl MethodSetup for ReviewKdSetup {
    fn needs_teachers(&self, _variant: &str) -> bool {
        true
    }

    fn build(&self, variant: &str, env: &dyn BuildEnv) -> kd_core::Result<Trainee> {
        one_teacher_trainee(env, variant, |student, source| {
            let probe = env.sample_inputs(PROBE)?;
            let method = ReviewKdMethod::new(student.model.clone(), source, &self.0, &probe, env.seed())
                .map_err(method_error)?;
            Ok(Box::new(method))
        })
    }
}
