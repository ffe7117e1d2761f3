//! CRD (Tian, Krishnan & Isola, ICLR 2020) as a [`Method`]: the student trained on
//! `γ·CE(y, s) + α·T²·KL(softmax(t/T) ‖ softmax(s/T)) + β·CRD(f_s, f_t)`, as RepDistiller's
//! train_student.py runs `--distill crd` (`loss = gamma·loss_cls + alpha·loss_div +
//! beta·loss_kd`), with the weights of its README's and scripts/run_cifar_distill.sh's CRD
//! command (`-a 0 -b 0.8`, `-r` default 1, `--kd_T` default 4) and train_student.py's CRD
//! defaults (`--feat_dim 128 --nce_k 16384 --nce_t 0.07 --nce_m 0.5 --mode exact`;
//! HobbitLong/RepDistiller commit `b84f547`). The loss, heads, bank and sampler are
//! [`crate::crd`]'s and [`crate::memory_bank`]'s, checked against RepDistiller's code.
//!
//! What the method owns and sees:
//! - parameters ([`Method::parameters`]): the two embedding heads `embed_s.linear.{weight,bias}`
//!   and `embed_t.linear.{weight,bias}` (RepDistiller's `trainable_list` holds both), initialised
//!   like `nn.Linear` from `derive_seed(seed, "init/crd-embed")`;
//! - buffers ([`Method::buffers`]): both memory banks `contrast.memory_v1` / `contrast.memory_v2`
//!   (one row per training example), `contrast.params` (`[nce_k, nce_t, Z_v1, Z_v2, nce_m]`, the
//!   normalisers fixed on the first batch) and the negative sampler's generator `sampler.state`.
//!   The pipeline checkpoints and restores them and never optimises them; every step reads them,
//!   so a resumed run continues bit-identically. The banks start from
//!   `derive_seed(seed, "crd/memory-init")`, the negatives from `derive_seed(seed, "crd/negatives")`.
//! - the teacher's pooled embedding (RepDistiller's `feat_t[-1]`) from
//!   [`TeacherLogits::outputs`] (eval mode, no gradient); a logits-only source is refused when the
//!   method is built.
//! - the training set ([`BuildEnv::train_set`]): bank row `i` belongs to example
//!   `example_ids[i]` (the batches' ids are dataset positions, not `0..n` on a subset) and, for
//!   `negatives = "other_class"` (RepDistiller's `mode='exact'`: `nce_k` negatives of other
//!   classes, drawn without replacement when there are enough), their labels.
//!
//! RepDistiller's data loader draws each step's negatives in its worker processes
//! (`CIFAR100InstanceSample`, NumPy's global generator); here a seeded generator draws them,
//! with the same distribution, so runs are deterministic but not the reference's exact draws.

use std::collections::HashMap;
use std::sync::Arc;

use candle_core::{Result, Tensor, Var};
use candle_nn::VarMap;
use kd_core::losses::{cross_entropy, distill_kl};
use kd_core::recipe::Recipe;
use kd_core::registry::{
    method_error, one_teacher_trainee, BuildEnv, MethodFactory, MethodSetup, TrainSet, Trainee,
};
use kd_core::teacher::{FeatureRequest, TeacherLogits};
use kd_core::{Batch, Classifier, EvalEntry, Losses, Method, Mode, StepContext};
use serde::{Deserialize, Serialize};

use crate::crd::{Crd, CrdConfig, CrdError, NegativeSampling};
use crate::feature_method::check_teacher;
use crate::{config, FeatureError};

const METHOD: &str = "crd";
/// Purpose label of the embedding heads' initial values in [`kd_core::seed::derive_seed`]
/// (the bank and the sampler derive theirs inside [`Crd::new`]: `crd/memory-init`,
/// `crd/negatives`).
const INIT_PURPOSE: &str = "init/crd-embed";
/// How many evaluation inputs size the heads (one eval forward of each model).
const PROBE: usize = 2;

/// `[distill]` of `method = "crd"`: RepDistiller's values as defaults, unknown keys refused.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CrdMethodConfig {
    /// Weight γ of the hard-label cross-entropy (`-r`, default 1).
    pub gamma: f64,
    /// Weight α of Hinton's `T²·KL` term (`-a 0` in the README's CRD command; `-a 1` is its
    /// "CRD+KD").
    pub alpha: f64,
    /// Weight β of the CRD loss (`-b 0.8`).
    pub beta: f64,
    /// Temperature of the KL term (`--kd_T`, 4).
    pub temperature: f64,
    /// Width of the contrastive embedding (`--feat_dim`, 128).
    pub feat_dim: usize,
    /// Negatives per positive (`--nce_k`, 16384); must be below the number of training examples.
    pub nce_k: usize,
    /// Temperature of the contrastive scores (`--nce_t`, 0.07).
    pub nce_t: f64,
    /// Momentum of the memory-bank update (`--nce_m`, 0.5).
    pub nce_m: f64,
    /// Where negatives come from: `other_class` (`--mode exact`, default) or `uniform`
    /// (`ContrastMemory`'s own fallback).
    pub negatives: NegativeSampling,
}

impl Default for CrdMethodConfig {
    fn default() -> Self {
        let crd = CrdConfig::default();
        Self {
            gamma: crate::REFERENCE_CE_WEIGHT,
            alpha: crate::REFERENCE_KD_WEIGHT,
            beta: crd.weight,
            temperature: crate::REFERENCE_KD_TEMPERATURE,
            feat_dim: crd.feat_dim,
            nce_k: crd.nce_k,
            nce_t: crd.nce_t,
            nce_m: crd.nce_m,
            negatives: crd.negatives,
        }
    }
}

fn crd_error(e: CrdError) -> FeatureError {
    match e {
        CrdError::Config(m) | CrdError::State(m) => FeatureError::config(METHOD, m),
        CrdError::Candle(e) => FeatureError::candle(METHOD)(e),
    }
}

impl CrdMethodConfig {
    /// Parses and validates the recipe's `[distill]` table.
    pub fn from_table(table: &toml::Table) -> std::result::Result<Self, FeatureError> {
        let cfg: Self = config::parse(METHOD, table)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Weights finite and ≥ 0, temperatures > 0, `feat_dim`, `nce_k` > 0, `nce_m` in `[0, 1)`.
    pub fn validate(&self) -> std::result::Result<(), FeatureError> {
        for (key, value) in [("gamma", self.gamma), ("alpha", self.alpha), ("beta", self.beta)] {
            config::weight(METHOD, key, value)?;
        }
        config::positive(METHOD, "temperature", self.temperature)?;
        self.crd().validate().map_err(crd_error)
    }

    /// The loss's own configuration (its `weight` is β).
    pub fn crd(&self) -> CrdConfig {
        CrdConfig {
            feat_dim: self.feat_dim,
            nce_k: self.nce_k,
            nce_t: self.nce_t,
            nce_m: self.nce_m,
            weight: self.beta,
            negatives: self.negatives,
        }
    }
}

/// CRD distillation of one teacher into one student: variant `crd`, evaluates the student.
pub struct CrdMethod {
    student: Arc<dyn Classifier>,
    teacher: Box<dyn TeacherLogits>,
    config: CrdMethodConfig,
    crd: Crd,
    /// Bank row of each training example id.
    rows: HashMap<u32, u32>,
    /// The heads' variables, sorted by name.
    parameters: Vec<(String, Var)>,
}

impl CrdMethod {
    /// What the method asks its teacher for: the pooled embedding (the logits come with it).
    pub fn feature_request() -> FeatureRequest {
        FeatureRequest { stages: false, embedding: true }
    }

    /// Builds the method, its heads, bank and sampler. `probe` is one input batch (values do
    /// not matter) run once through each model in eval mode to read the embedding widths, as
    /// RepDistiller's train_student.py does; `train_set` is what the batches will name; `seed`
    /// is the run's seed (see the module docs for what derives from it).
    ///
    /// Refuses an invalid config, a teacher source that cannot serve embeddings, teacher and
    /// student with different label spaces, a training set with repeated ids or not larger than
    /// `nce_k`, and `negatives = "other_class"` without labels.
    pub fn new(
        student: Arc<dyn Classifier>,
        teacher: Box<dyn TeacherLogits>,
        config: &CrdMethodConfig,
        train_set: &TrainSet,
        probe: &Tensor,
        seed: u64,
    ) -> std::result::Result<Self, FeatureError> {
        config.validate()?;
        check_teacher(
            METHOD,
            student.as_ref(),
            teacher.as_ref(),
            &Self::feature_request(),
            "the pooled embedding",
        )?;
        let t_model = teacher.model().clone();
        let n_data = train_set.len();
        let crd_cfg = config.crd();
        crd_cfg.check_train_set(n_data).map_err(crd_error)?;
        let mut rows = HashMap::with_capacity(n_data);
        for (row, &id) in train_set.example_ids.iter().enumerate() {
            if rows.insert(id, row as u32).is_some() {
                return Err(FeatureError::config(
                    METHOD,
                    format!("the training set names example {id} twice; the memory bank needs one row per example"),
                ));
            }
        }
        let labels = match (&train_set.labels, config.negatives) {
            (Some(l), _) if l.len() != n_data => {
                return Err(FeatureError::config(
                    METHOD,
                    format!("the training set has {} labels for {n_data} examples", l.len()),
                ))
            }
            (None, NegativeSampling::OtherClass) => {
                return Err(FeatureError::config(
                    METHOD,
                    "negatives = \"other_class\" needs class labels, but this task's targets are not \
                     classes; set negatives = \"uniform\"",
                ))
            }
            (l, _) => l.as_deref(),
        };
        let probe_out =
            |m: &dyn Classifier| m.forward(probe, Mode::Eval).map_err(FeatureError::candle(METHOD));
        let s_out = probe_out(student.as_ref())?;
        let t_out = probe_out(t_model.as_ref())?;
        let width = |role: &str, model: &dyn Classifier, e: &Tensor| match e.dims() {
            [_, d] => Ok(*d),
            dims => Err(FeatureError::shape(
                METHOD,
                format!(
                    "the {role} `{}` has an embedding of shape {dims:?}, expected (batch, width)",
                    model.arch()
                ),
            )),
        };
        let s_dim = width("student", student.as_ref(), &s_out.embedding)?;
        let t_dim = width("teacher", t_model.as_ref(), &t_out.embedding)?;
        let emb = &s_out.embedding;
        let varmap = VarMap::new();
        let vb = kd_core::init::seeded_var_builder(
            &varmap,
            kd_core::seed::derive_seed(seed, INIT_PURPOSE),
            emb.dtype(),
            emb.device(),
        );
        let crd = Crd::new(&crd_cfg, s_dim, t_dim, n_data, labels, seed, vb).map_err(crd_error)?;
        let mut parameters: Vec<(String, Var)> = {
            let vars = varmap.data().lock().unwrap_or_else(|e| e.into_inner());
            vars.iter().map(|(n, v)| (n.clone(), v.clone())).collect()
        };
        parameters.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(Self { student, teacher, config: config.clone(), crd, rows, parameters })
    }

    pub fn config(&self) -> &CrdMethodConfig {
        &self.config
    }

    /// The loss, heads, bank and sampler.
    pub fn crd(&self) -> &Crd {
        &self.crd
    }

    /// The bank rows of a batch's example ids; an id outside the training set is an error.
    pub fn rows_of(&self, example_ids: &[u32]) -> Result<Vec<u32>> {
        example_ids
            .iter()
            .map(|id| match self.rows.get(id) {
                Some(&r) => Ok(r),
                None => candle_core::bail!(
                    "{METHOD}: batch example {id} is not in the training set the memory bank was built for ({} examples)",
                    self.rows.len()
                ),
            })
            .collect()
    }
}

impl Method for CrdMethod {
    fn name(&self) -> &str {
        METHOD
    }

    fn variant(&self) -> &str {
        METHOD
    }

    /// Parts: `ce`, `kd` (`T²·KL`, logged even when α = 0) and `crd` (the contrastive loss),
    /// each before its weight. Updates the bank rows of the batch's examples.
    fn losses(&mut self, batch: &Batch, _ctx: &StepContext) -> Result<Losses> {
        let rows = self.rows_of(&batch.example_ids)?;
        let teacher = self.teacher.outputs(batch, &Self::feature_request())?;
        let Some(f_t) = teacher.embedding else {
            candle_core::bail!("{METHOD}: the teacher source served no embedding")
        };
        let student = self.student.forward(&batch.inputs, Mode::Train)?;
        let c = &self.config;
        let ce = cross_entropy(&student.logits, &batch.labels, 0.0)?;
        let kd = distill_kl(&student.logits, &teacher.logits, c.temperature)?;
        let crd = self.crd.loss(&student.embedding, &f_t, &rows, None)?;
        // RepDistiller's order: gamma·loss_cls + alpha·loss_div + beta·loss_kd.
        let total = (((&ce * c.gamma)? + (&kd * c.alpha)?)? + (&crd * c.beta)?)?;
        let parts = [("ce", ce), ("kd", kd), ("crd", crd)];
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
        self.crd.buffers()
    }
}

/// The registry's entry for `method = "crd"`: variant `crd`.
pub struct CrdFactory;

/// What the registry lists.
pub static CRD: CrdFactory = CrdFactory;

impl MethodFactory for CrdFactory {
    fn name(&self) -> &'static str {
        METHOD
    }

    fn variants(&self) -> &'static [&'static str] {
        &[METHOD]
    }

    fn parse(&self, recipe: &Recipe) -> kd_core::Result<Box<dyn MethodSetup>> {
        Ok(Box::new(CrdSetup(CrdMethodConfig::from_table(&recipe.distill).map_err(method_error)?)))
    }
}

struct CrdSetup(CrdMethodConfig);

impl MethodSetup for CrdSetup {
    fn needs_teachers(&self, _variant: &str) -> bool {
        true
    }

    fn build(&self, variant: &str, env: &dyn BuildEnv) -> kd_core::Result<Trainee> {
        let train_set = env.train_set()?;
        // Before building anything: the most common mistake (a subset smaller than nce_k).
        self.0.crd().check_train_set(train_set.len()).map_err(|e| method_error(crd_error(e)))?;
        one_teacher_trainee(env, variant, |student, source| {
            let probe = env.sample_inputs(PROBE)?;
            let method =
                CrdMethod::new(student.model.clone(), source, &self.0, &train_set, &probe, env.seed())
                    .map_err(method_error)?;
            Ok(Box::new(method))
        })
    }
}
