//! From a recipe's `experiment.method` and `[distill]` table to a `Method` per variant, with
//! the models it trains. The only place that knows every method crate.

use anyhow::{anyhow, bail, Result};
use candle_core::Device;
use kd_core::plain::PlainTraining;
use kd_core::recipe::Recipe;
use kd_core::seed::derive_seed;
use kd_core::Method;
use kd_multi_teacher::{MultiTeacherConfig, MultiTeacherKd};
use kd_vanilla::{VanillaConfig, VanillaKd};

use crate::models::{self, BuiltModel};
use crate::teacher::Teacher;

/// A method's parsed and validated hyper-parameters.
pub enum MethodConfig {
    Vanilla(VanillaConfig),
    Dml(kd_online::DmlConfig),
    One(kd_online::OneConfig),
    SelfDistill(kd_self::SelfDistillConfig),
    MultiTeacher(MultiTeacherConfig),
    Takd(kd_progressive::TakdConfig),
    Annealing(kd_progressive::AnnealConfig),
    /// Runs through its own runner (`crate::cross_modal`): paired image/audio data.
    CrossModal(kd_cross_modal::CrossModalConfig),
}

/// Methods and the variants each trains (besides `plain`).
pub const METHODS: &[(&str, &[&str])] = &[
    ("vanilla", &["kd"]),
    ("multi-teacher", &["single", "mean", "weighted", "confidence", "entropy"]),
    ("takd", &["direct", "chain"]),
    ("dml", &["dml"]),
    ("one", &["one"]),
    ("annealing", &["fixed", "annealed", "annealing-kd"]),
    ("self", &["byot"]),
    ("cross-modal", &["kd", "kd-feat", "fusion"]),
];

/// What one run needs to build its method: the recipe, the run seed, the device and the
/// pretrained teachers (empty for methods without one).
pub struct BuildContext<'a> {
    pub recipe: &'a Recipe,
    pub seed: u64,
    pub device: &'a Device,
    pub teachers: &'a [Teacher],
    /// Project root (the kd-bench cache lives under it unless `KD_CACHE_DIR` says otherwise).
    pub root: &'a std::path::Path,
    /// The run's training data and evaluation batches (methods that train extra models, e.g.
    /// TAKD's assistants, train them on the same data).
    pub train_split: &'a crate::data::Split,
    pub eval_loader: &'a crate::data::Loader,
}

impl BuildContext<'_> {
    /// The recipe's student, initialised from the run seed. Every variant of a seed starts from
    /// these same weights, so variants compare pairwise.
    pub fn student(&self) -> Result<BuiltModel> {
        self.model(&self.recipe.student.arch, "init/student")
    }

    /// A freshly initialised `arch` for the run's data (input size, classes), its weights
    /// seeded from the run seed and `purpose` (e.g. `init/peer-2`).
    pub fn model(&self, arch: &str, purpose: &str) -> Result<BuiltModel> {
        let options = models::input_options(&self.train_split.dataset);
        let seed = derive_seed(self.seed, purpose);
        models::build_with(arch, self.recipe.data.num_classes, seed, options, self.device)
    }

    /// The single pretrained teacher a method needs, or an error naming the variant.
    pub fn one_teacher(&self, variant: &str) -> Result<&Teacher> {
        match self.teachers {
            [t] => Ok(t),
            [] => Err(anyhow!("variant `{variant}` needs a [teacher] in the recipe")),
            many => {
                Err(anyhow!("variant `{variant}` distils from one teacher; the recipe has {}", many.len()))
            }
        }
    }
}

/// A built method and the models whose variables the trainer optimises and checkpoints.
/// The first model is the run's primary model (saved as the run's final model).
pub struct Trainee {
    pub method: Box<dyn Method>,
    /// `(name, model)`; names prefix variables in checkpoints when there is more than one.
    pub models: Vec<(String, BuiltModel)>,
    /// Indices into `BuildContext::teachers` of the teachers this run distils from (their
    /// rows and hashes go into the CSV).
    pub teachers: Vec<usize>,
}

impl Trainee {
    fn student(method: Box<dyn Method>, student: BuiltModel) -> Self {
        Trainee { method, models: vec![("student".to_string(), student)], teachers: Vec::new() }
    }

    /// Records the teachers (indices into the context's) this run distils from.
    pub fn with_teachers(mut self, teachers: impl IntoIterator<Item = usize>) -> Self {
        self.teachers = teachers.into_iter().collect();
        self
    }

    /// Every variable to checkpoint, sorted, prefixed by model name when there are several.
    pub fn state(&self) -> Vec<(String, candle_core::Var)> {
        self.collect(|m| &m.state)
    }

    /// The variables the optimiser updates.
    pub fn trainable(&self) -> Vec<(String, candle_core::Var)> {
        self.collect(|m| &m.trainable)
    }

    fn collect(
        &self,
        pick: impl Fn(&BuiltModel) -> &Vec<(String, candle_core::Var)>,
    ) -> Vec<(String, candle_core::Var)> {
        let prefix = self.models.len() > 1;
        self.models
            .iter()
            .flat_map(|(name, m)| {
                pick(m)
                    .iter()
                    .map(move |(n, v)| (if prefix { format!("{name}/{n}") } else { n.clone() }, v.clone()))
            })
            .collect()
    }
}

impl MethodConfig {
    pub fn parse(recipe: &Recipe) -> Result<Self> {
        let method = recipe.experiment.method.as_str();
        let cfg = match method {
            "vanilla" => MethodConfig::Vanilla(kd_vanilla::parse_config(&recipe.distill)?),
            "dml" => MethodConfig::Dml(kd_online::DmlConfig::from_table(&recipe.distill)?),
            "self" => {
                // Refuses an exit count the student's stages cannot give, before any run.
                let cfg = kd_self::SelfDistillConfig::from_table(&recipe.distill)?;
                cfg.check_backbone(&recipe.student.arch)?;
                MethodConfig::SelfDistill(cfg)
            }
            "one" => MethodConfig::One(kd_online::OneConfig::from_table(&recipe.distill)?),
            "takd" => MethodConfig::Takd(kd_progressive::TakdConfig::from_table(&recipe.distill)?),
            "annealing" => {
                let cfg = kd_progressive::AnnealConfig::from_table(&recipe.distill)?;
                cfg.require_variants(&recipe.experiment.variants)?;
                MethodConfig::Annealing(cfg)
            }
            "multi-teacher" => {
                let archs: Vec<String> = recipe.teacher_sections().iter().map(|t| t.arch.clone()).collect();
                let cfg = MultiTeacherConfig::from_table(&recipe.distill, &archs)?;
                let v = &recipe.experiment.variants;
                if v.iter().any(|v| v == "weighted") && cfg.weights.is_none() {
                    bail!("[distill] for method `multi-teacher`: variant `weighted` needs `weights`, one per teacher");
                }
                if v.iter().any(|v| v == "single") && cfg.single_teacher.is_none() {
                    bail!("[distill] for method `multi-teacher`: variant `single` needs `single_teacher` (a teacher arch)");
                }
                MethodConfig::MultiTeacher(cfg)
            }
            "cross-modal" => {
                let cfg = kd_cross_modal::CrossModalConfig::from_table(&recipe.distill)?;
                cfg.check_variants(&recipe.experiment.variants)?;
                MethodConfig::CrossModal(cfg)
            }
            other => bail!(
                "unknown method `{other}` in experiment.method; known: {}",
                METHODS.iter().map(|(m, _)| *m).collect::<Vec<_>>().join(", ")
            ),
        };
        let known = METHODS.iter().find(|(m, _)| *m == method).map(|(_, v)| *v).unwrap_or(&[]);
        for v in &recipe.experiment.variants {
            if v != "plain" && !known.contains(&v.as_str()) {
                bail!("method `{method}` has no variant `{v}`; it has: plain, {}", known.join(", "));
            }
        }
        Ok(cfg)
    }

    /// Whether `variant` needs the recipe's pretrained teachers loaded.
    pub fn needs_teachers(&self, variant: &str) -> bool {
        match self {
            MethodConfig::Vanilla(_)
            | MethodConfig::MultiTeacher(_)
            | MethodConfig::Takd(_)
            | MethodConfig::Annealing(_) => variant != "plain",
            // Online KD: the peers / branches teach each other; no pretrained teacher.
            MethodConfig::Dml(_) | MethodConfig::One(_) => false,
            // Self-distillation: the network's deepest exit teaches its shallow ones.
            MethodConfig::SelfDistill(_) => false,
            // Its runner loads (or trains) its own image teacher.
            MethodConfig::CrossModal(_) => false,
        }
    }

    pub fn build(&self, variant: &str, ctx: &BuildContext) -> Result<Trainee> {
        let method_name = ctx.recipe.experiment.method.as_str();
        if variant == "plain" {
            let student = ctx.student()?;
            let method = Box::new(PlainTraining::new(method_name, student.model.clone(), 0.0));
            return Ok(Trainee::student(method, student));
        }
        match (self, variant) {
            (MethodConfig::Vanilla(cfg), "kd") => {
                let teacher = ctx.one_teacher(variant)?;
                let student = ctx.student()?;
                let method = Box::new(VanillaKd::new(student.model.clone(), teacher.logits_source()?, cfg)?);
                Ok(Trainee::student(method, student).with_teachers([0]))
            }
            (MethodConfig::MultiTeacher(cfg), "single") => {
                // Vanilla KD from one of the teachers: the single-teacher reference, exactly.
                let name = cfg.single_teacher.as_deref().unwrap_or_default();
                let (index, teacher) =
                    ctx.teachers.iter().enumerate().find(|(_, t)| t.arch == name).ok_or_else(|| {
                        anyhow!("single_teacher `{name}` is not among the recipe's teachers")
                    })?;
                let vanilla = VanillaConfig {
                    temperature: cfg.temperature,
                    alpha: cfg.alpha,
                    label_smoothing: cfg.label_smoothing,
                };
                let student = ctx.student()?;
                let method =
                    Box::new(VanillaKd::new(student.model.clone(), teacher.logits_source()?, &vanilla)?);
                Ok(Trainee::student(method, student).with_teachers([index]))
            }
            (MethodConfig::MultiTeacher(cfg), rule) => {
                if ctx.teachers.is_empty() {
                    bail!("variant `{rule}` needs [[teachers]] in the recipe");
                }
                let sources = ctx.teachers.iter().map(|t| t.logits_source()).collect::<Result<Vec<_>>>()?;
                let student = ctx.student()?;
                let method = Box::new(MultiTeacherKd::new(rule, student.model.clone(), sources, cfg)?);
                Ok(Trainee::student(method, student).with_teachers(0..ctx.teachers.len()))
            }
            (MethodConfig::Takd(cfg), v) => crate::assistants::build_takd(ctx, cfg, v),
            (MethodConfig::Annealing(cfg), v) => crate::assistants::build_annealing(ctx, cfg, v),
            (MethodConfig::Dml(cfg), "dml") => {
                // K peers, each initialised from its own seed; trained by one optimiser whose
                // per-variable state keeps the peers' momenta apart.
                let (r, mut models) = (ctx.recipe, Vec::new());
                for (k, arch) in cfg.peers.iter().enumerate() {
                    let seed = derive_seed(ctx.seed, &format!("init/peer-{}", k + 1));
                    let peer = models::build(arch, r.data.num_classes, seed, ctx.device)?;
                    models.push((format!("peer-{}", k + 1), peer));
                }
                let peers = models.iter().map(|(_, m)| m.model.clone()).collect();
                let method = Box::new(kd_online::DeepMutualLearning::new(peers, cfg)?);
                Ok(Trainee { method, models, teachers: Vec::new() })
            }
            (MethodConfig::One(cfg), "one") => {
                // The ONE model on the student's backbone (`plain` trains that backbone alone).
                let (r, seed) = (ctx.recipe, derive_seed(ctx.seed, "init/one"));
                let (varmap, net) =
                    kd_online::new_one_model(cfg, &r.student.arch, r.data.num_classes, seed, ctx.device)?;
                let mut state: Vec<(String, candle_core::Var)> = {
                    let vars = varmap.data().lock().expect("varmap lock");
                    vars.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
                };
                state.sort_by(|a, b| a.0.cmp(&b.0));
                let trainable = kd_models::trainable_vars(&varmap);
                let method = Box::new(kd_online::OnTheFlyNativeEnsemble::new(net.clone(), cfg));
                let arch = kd_core::Classifier::arch(net.as_ref()).to_string();
                let classes = r.data.num_classes;
                let model = BuiltModel { arch, num_classes: classes, model: net, varmap, state, trainable };
                Ok(Trainee { method, models: vec![("one".to_string(), model)], teachers: Vec::new() })
            }
            (MethodConfig::SelfDistill(cfg), "byot") => {
                // The student's backbone with BYOT exits; the backbone's initial weights are the
                // plain run's (same seed, same variable names).
                let r = ctx.recipe;
                let seed = derive_seed(ctx.seed, "init/student");
                let (varmap, net) = kd_models::new_multi_exit_model(
                    &r.student.arch,
                    r.data.num_classes,
                    seed,
                    models::input_options(&ctx.train_split.dataset),
                    ctx.device,
                )?;
                let net = std::sync::Arc::new(net);
                let method = Box::new(kd_self::SelfDistill::new(net.clone(), cfg)?);
                let mut state: Vec<(String, candle_core::Var)> = varmap
                    .data()
                    .lock()
                    .expect("varmap lock")
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                state.sort_by(|a, b| a.0.cmp(&b.0));
                let trainable = state.iter().filter(|(n, _)| kd_models::is_trainable(n)).cloned().collect();
                let built = BuiltModel {
                    arch: kd_core::Classifier::arch(net.as_ref()).to_string(),
                    num_classes: r.data.num_classes,
                    model: net,
                    varmap,
                    state,
                    trainable,
                };
                Ok(Trainee::student(method, built))
            }
            (_, v) => bail!("variant `{v}` is not built by method `{method_name}`"),
        }
    }
}
