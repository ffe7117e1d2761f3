//! The method registry's contract. Each method crate exports one [`MethodFactory`]; kd-run
//! holds the one list of them. A factory names its method and variants and parses the recipe's
//! `[distill]` table into a typed configuration (unknown keys refused), which says what each
//! variant needs and builds it from what the pipeline offers ([`BuildEnv`]): the student and
//! other fresh models, the recipe's pretrained teachers, and stages trained once and cached.
//!
//! The `plain` variant (the student alone, on the task's loss) belongs to every method and is
//! built by the pipeline, so that every method's baseline is the same run.

use std::path::PathBuf;
use std::sync::Arc;

use candle_core::{Device, Var};
use candle_nn::VarMap;

use crate::error::{Error, Result};
use crate::method::{owned_state, Method, NamedVars};
use crate::model::Classifier;
use crate::recipe::Recipe;
use crate::teacher::TeacherLogits;

/// A model with the variables it owns.
pub struct BuiltModel {
    pub arch: String,
    pub num_classes: usize,
    pub model: Arc<dyn Classifier>,
    pub varmap: VarMap,
    /// Every variable, sorted by name (what checkpoints hold).
    pub state: Vec<(String, Var)>,
    /// The trainable subset (running statistics excluded).
    pub trainable: Vec<(String, Var)>,
}

impl BuiltModel {
    /// `model` with the variables of `varmap`; `trainable` tells parameters from running
    /// statistics by name.
    pub fn from_varmap(
        arch: impl Into<String>,
        num_classes: usize,
        model: Arc<dyn Classifier>,
        varmap: VarMap,
        trainable: impl Fn(&str) -> bool,
    ) -> Self {
        let state = sorted_vars(&varmap);
        let trainable = state.iter().filter(|(n, _)| trainable(n)).cloned().collect();
        BuiltModel { arch: arch.into(), num_classes, model, varmap, state, trainable }
    }
}

/// Every variable of `varmap`, sorted by name (the order checkpoints and optimisers see).
pub fn sorted_vars(varmap: &VarMap) -> Vec<(String, Var)> {
    let mut vars: Vec<(String, Var)> = varmap
        .data()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    vars
}

/// A built method and the models whose variables the trainer optimises and checkpoints.
/// The first model is the run's primary model (saved as the run's final model).
pub struct Trainee {
    pub method: Box<dyn Method>,
    /// `(name, model)`; names prefix variables in checkpoints when there is more than one.
    pub models: Vec<(String, BuiltModel)>,
    /// Indices into the recipe's teachers of those this run distils from (their rows and
    /// hashes go into the CSV).
    pub teachers: Vec<usize>,
}

impl Trainee {
    /// A method that trains one model, the student.
    pub fn student(method: Box<dyn Method>, student: BuiltModel) -> Self {
        Trainee { method, models: vec![("student".to_string(), student)], teachers: Vec::new() }
    }

    /// Records the teachers (indices into the recipe's) this run distils from.
    pub fn with_teachers(mut self, teachers: impl IntoIterator<Item = usize>) -> Self {
        self.teachers = teachers.into_iter().collect();
        self
    }

    /// `(state, trainable)`: every variable to checkpoint, and the ones the optimiser updates.
    /// The models' come first (sorted, prefixed by model name when there are several), then
    /// the method's own parameters and buffers under `method/` ([`owned_state`]).
    pub fn variables(&self) -> Result<(NamedVars, NamedVars)> {
        let (owned_state, owned_trainable) = owned_state(self.method.as_ref())?;
        let mut state = self.collect(|m| &m.state);
        state.extend(owned_state);
        let mut trainable = self.collect(|m| &m.trainable);
        trainable.extend(owned_trainable);
        Ok((state, trainable))
    }

    fn collect(&self, pick: impl Fn(&BuiltModel) -> &Vec<(String, Var)>) -> Vec<(String, Var)> {
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

/// What a recipe's pretrained teacher is, as a method's build sees it.
#[derive(Debug, Clone)]
pub struct TeacherInfo {
    pub arch: String,
    /// SHA-256 of its weights file.
    pub sha256: String,
    /// Whether its logits come from the soft-label cache.
    pub soft_label_cache: bool,
}

/// A model trained once as a stage of a run (a TAKD assistant) and cached by its key.
pub struct StageSpec<'a> {
    /// How it is reported, e.g. `assistant-1`.
    pub role: &'a str,
    pub arch: &'a str,
    /// SHA-256 of everything that determines its weights, and that material as JSON.
    pub key: &'a str,
    pub key_json: &'a str,
    /// Seed purposes of its initialisation and its data order (e.g. `init/assistant-1`).
    pub init: &'a str,
    pub data: &'a str,
}

/// A stage's model, frozen, with its last-epoch top-1 when it was trained.
pub struct TrainedStage {
    pub model: Arc<dyn Classifier>,
    pub path: PathBuf,
    pub top1: f64,
    /// Loaded from the cache rather than trained by this call.
    pub reused: bool,
}

/// What the pipeline offers a method's build.
pub trait BuildEnv {
    fn recipe(&self) -> &Recipe;
    /// The run's seed; every initialisation derives from it.
    fn seed(&self) -> u64;
    fn device(&self) -> &Device;
    /// The side of the task's images, for special image architectures (multi-exit, ONE);
    /// `None` for inputs that are not images.
    fn image_size(&self) -> Option<usize>;
    /// A freshly initialised `arch` for the task's inputs and classes, its weights seeded from
    /// the run seed and `purpose` (e.g. `init/peer-2`).
    fn model(&self, arch: &str, purpose: &str) -> Result<BuiltModel>;
    /// The recipe's student from `init/student`: every variant of a seed starts from these
    /// same weights, so variants compare pairwise.
    fn student(&self) -> Result<BuiltModel> {
        let arch = self.recipe().student.arch.clone();
        self.model(&arch, "init/student")
    }
    /// The recipe's pretrained teachers, in recipe order (empty when no variant needs them).
    fn teachers(&self) -> Vec<TeacherInfo>;
    /// A few of the task's evaluation inputs (un-augmented), for methods that size their own
    /// parameters from the models' feature shapes.
    fn sample_inputs(&self, n: usize) -> Result<candle_core::Tensor>;
    /// A fresh source of teacher `index`'s outputs (eval mode, no gradient).
    fn teacher(&self, index: usize) -> Result<Box<dyn TeacherLogits>>;
    /// Trains `stage` once on the run's data and `[train]` settings with the method `make`
    /// builds around the fresh model, or loads it from the stage cache.
    fn train_stage(
        &self,
        stage: &StageSpec,
        make: &mut dyn FnMut(&BuiltModel) -> Result<Box<dyn Method>>,
    ) -> Result<TrainedStage>;
    /// The single pretrained teacher a variant needs, or an error naming the variant.
    fn one_teacher(&self, variant: &str) -> Result<usize> {
        match self.teachers().len() {
            1 => Ok(0),
            0 => Err(Error::Msg(format!("variant `{variant}` needs a [teacher] in the recipe"))),
            n => Err(Error::Msg(format!("variant `{variant}` distils from one teacher; the recipe has {n}"))),
        }
    }
    /// The examples this run trains on, as its batches name them, for methods that keep
    /// per-example state (CRD's memory bank: one row per training example, negatives drawn by
    /// class). The default is an error: a task offers it by overriding this.
    fn train_set(&self) -> Result<TrainSet> {
        Err(Error::Msg(
            "this task does not describe its training set to methods (example ids and labels), \
             which a method with per-example state (CRD) needs"
                .into(),
        ))
    }
}

/// The training examples of a run ([`BuildEnv::train_set`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrainSet {
    /// The [`crate::Batch::example_ids`] of the training examples, each once, in an order fixed
    /// by the recipe (the same on every run and resume): row `i` of a per-example table belongs
    /// to example `example_ids[i]`. Ids are positions in the split, so a run on a subset
    /// (`data.train_limit`) has ids that are not `0..n`; every training batch's ids are among
    /// them, in every epoch.
    pub example_ids: Vec<u32>,
    /// The class of each example, in the same order; `None` when the targets are not classes
    /// (a regression task).
    pub labels: Option<Vec<u32>>,
}

impl TrainSet {
    /// The number of training examples.
    pub fn len(&self) -> usize {
        self.example_ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.example_ids.is_empty()
    }
}

/// A method's parsed `[distill]` configuration: what its variants need, and their builds.
pub trait MethodSetup: Send + Sync {
    /// Whether `variant` (never `plain`) needs the recipe's pretrained teachers loaded.
    fn needs_teachers(&self, variant: &str) -> bool;
    /// Whether `variant`'s batches must carry [`crate::Batch::strong`], a strongly augmented
    /// second view of each image (MLKD). Only image tasks can render one; the others refuse
    /// such a variant before training. No by default.
    fn strong_view(&self, _variant: &str) -> bool {
        false
    }
    /// Builds `variant` (never `plain`) for one run.
    fn build(&self, variant: &str, env: &dyn BuildEnv) -> Result<Trainee>;
}

/// One method family, as the registry lists it.
pub trait MethodFactory: Sync {
    /// The name in recipes and the CSV `method` column, e.g. `vanilla`.
    fn name(&self) -> &'static str;
    /// The variants it trains besides `plain`.
    fn variants(&self) -> &'static [&'static str];
    /// Parses and validates the recipe's `[distill]` table (and whatever else of the recipe
    /// the method constrains) before any run starts.
    fn parse(&self, recipe: &Recipe) -> Result<Box<dyn MethodSetup>>;
}

/// The build of a method that distils the recipe's single teacher into the student: the teacher
/// as a fresh source, the student from `init/student`, and `make(student, teacher)` the method
/// around them; the trainee reports that teacher.
pub fn one_teacher_trainee(
    env: &dyn BuildEnv,
    variant: &str,
    make: impl FnOnce(&BuiltModel, Box<dyn TeacherLogits>) -> Result<Box<dyn Method>>,
) -> Result<Trainee> {
    let teacher = env.one_teacher(variant)?;
    let source = env.teacher(teacher)?;
    let student = env.student()?;
    let method = make(&student, source)?;
    Ok(Trainee::student(method, student).with_teachers([teacher]))
}

/// Turns a method crate's error into kd-core's, keeping its message.
pub fn method_error(e: impl std::fmt::Display) -> Error {
    Error::Msg(e.to_string())
}
