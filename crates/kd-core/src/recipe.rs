//! Recipes: one TOML file per experiment (`benchmarks/<experiment>.toml`), with profiles
//! (`smoke`, `cpu`, `paper`) that override fields of the same file.
//!
//! Unknown keys are errors that name the file, the key and its line, in the base recipe and in
//! every profile (all profiles are checked on load, not just the one selected). The resolved
//! configuration is hashed by [`crate::hash::config_hash`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::schedule::LrSchedule;

/// Profiles every recipe is expected to define.
pub const STANDARD_PROFILES: [&str; 3] = ["smoke", "cpu", "paper"];
/// The profile used when none is given.
pub const DEFAULT_PROFILE: &str = "cpu";

/// A fully resolved recipe: the base file with one profile applied.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    pub experiment: ExperimentSection,
    pub data: DataSection,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub teacher: Option<TeacherSection>,
    /// Several pretrained teachers (`[[teachers]]`), for methods that combine them; a recipe
    /// has either `[teacher]` or `[[teachers]]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub teachers: Vec<TeacherSection>,
    pub student: StudentSection,
    pub train: TrainSection,
    /// Method-specific hyper-parameters; the method crate parses and validates them.
    #[serde(default)]
    pub distill: toml::Table,
    /// Text tasks (GLUE): task, tokenizer / pretrained model repo, sequence length. Absent for
    /// image recipes (whose config hashes it leaves unchanged).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<TextSection>,
}

/// `[text]`: a tokenised text task (kd-cli's GLUE runner reads it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TextSection {
    /// GLUE task name (`sst2`, `cola`, `mrpc`, `qqp`, `stsb`, `mnli`, `qnli`, `rte`, `wnli`).
    pub task: String,
    /// Hub model repo with `tokenizer.json`, `config.json` and `model.safetensors` (the
    /// pretrained encoder the teacher is fine-tuned from and the student may start from).
    pub model: String,
    #[serde(default = "default_revision")]
    pub model_revision: String,
    /// Truncation length in tokens, special tokens included; batches pad to their longest.
    pub max_len: usize,
    /// Text columns (default: the task's).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub columns: Vec<String>,
    /// `mean` (masked mean of the last layer) or `cls`.
    #[serde(default = "default_pooling")]
    pub pooling: String,
    /// Student initialisation: `pretrained` (embeddings and the layers in `student_layers`
    /// of the pretrained model; widths must match) or `random` (seeded).
    #[serde(default = "default_student_init")]
    pub student_init: String,
    /// Pretrained layers the student's layers start from (default: the lowest ones).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub student_layers: Vec<usize>,
}

fn default_pooling() -> String {
    "mean".to_string()
}

fn default_student_init() -> String {
    "pretrained".to_string()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExperimentSection {
    pub name: String,
    #[serde(default)]
    pub title: String,
    /// Method crate that trains the non-plain variants, e.g. `vanilla`.
    pub method: String,
    /// Variants trained per seed; `plain` is the CE-only baseline under the same budget.
    pub variants: Vec<String>,
    /// Keys into `papers/references.bib`.
    #[serde(default)]
    pub cite: Vec<String>,
    pub seeds: Vec<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSection {
    /// Hub dataset id, `owner/name`.
    pub hub: String,
    /// Hub revision (a commit sha pins the data exactly; `main` follows the hub).
    #[serde(default = "default_revision")]
    pub revision: String,
    /// Dataset config (card `config_name`), e.g. `plain_text`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<String>,
    pub train_split: String,
    pub eval_split: String,
    /// Image recipes only (text recipes name their columns in `[text]`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub image_column: String,
    pub label_column: String,
    pub num_classes: usize,
    /// Class-balanced training subset size (all examples when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_limit: Option<usize>,
    /// Class-balanced evaluation subset size (all examples when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_limit: Option<usize>,
    /// Seed of the subset choice; fixed across run seeds so every seed sees the same data.
    #[serde(default)]
    pub subset_seed: u64,
    /// Image recipes only; defaults to the identity (mean 0, std 1).
    #[serde(default, skip_serializing_if = "NormalizeSpec::is_identity")]
    pub normalize: NormalizeSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub augment: Option<AugmentSpec>,
    /// Resize every image to `[height, width]` on load (bilinear, as torchvision's `Resize`),
    /// for datasets whose images differ in size (e.g. Imagenette); absent: all images must
    /// share the first one's size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resize: Option<[usize; 2]>,
    /// Validation mode (`kd sweep` turns it on): hold out this many class-balanced examples of
    /// the training split, train on the rest and evaluate on them; the eval split is not read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validation_size: Option<usize>,
    /// Seed of the held-out choice (default: `subset_seed`); only with `validation_size`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validation_seed: Option<u64>,
}

fn default_revision() -> String {
    "main".to_string()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NormalizeSpec {
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

impl Default for NormalizeSpec {
    fn default() -> Self {
        NormalizeSpec { mean: [0.0; 3], std: [1.0; 3] }
    }
}

impl NormalizeSpec {
    pub fn is_identity(&self) -> bool {
        *self == NormalizeSpec::default()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AugmentSpec {
    /// Zero padding before the random crop back to the image size (torchvision RandomCrop).
    pub pad: usize,
    pub hflip: bool,
    /// Draw each example's view from a fixed bank of this many views per example (seeded by
    /// `data.subset_seed`, so shared by every run seed and variant) instead of from all
    /// `(2·pad+1)²·2` crops and flips. With a teacher soft-label cache the bank makes every
    /// teacher output reusable: the teacher runs once per banked view, not once per step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bank: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TeacherSection {
    pub arch: String,
    /// A pretrained teacher's weights. A recipe gives either this or `train`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<CheckpointSource>,
    /// Train the teacher in the recipe (on the recipe's training data) instead of loading one.
    /// The trained teacher is cached under the hash of everything that determines its weights
    /// and reused by every later run, variant and seed that needs the same teacher.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train: Option<TeacherTraining>,
    /// Cache the teacher's logits per (example, view) under the kd-bench cache and reuse them
    /// across epochs, variants and seeds. Exact: a cached logit is the teacher's output on that
    /// very view. Pays off with `data.augment.bank` (views repeat) or without augmentation.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub soft_label_cache: bool,
}

/// How a recipe-trained teacher is trained: the recipe's `[train]` settings unless overridden
/// here, with its own seed (independent of the run seeds, so every run shares one teacher).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TeacherTraining {
    pub epochs: usize,
    #[serde(default)]
    pub seed: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_size: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub optimizer: Option<OptimizerSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lr_schedule: Option<LrSchedule>,
}

/// Where a pretrained checkpoint comes from. Looked up in order: `path` (if it exists),
/// the kd-bench cache by `sha256`, then `url` (unless offline). The file's SHA-256 must match.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointSource {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    pub sha256: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StudentSection {
    pub arch: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainSection {
    pub epochs: usize,
    pub batch_size: usize,
    #[serde(default = "default_eval_batch_size")]
    pub eval_batch_size: usize,
    pub optimizer: OptimizerSpec,
    pub lr_schedule: LrSchedule,
    /// Drop the last incomplete batch (as RepDistiller's loaders do not; default false).
    #[serde(default)]
    pub drop_last: bool,
}

fn default_eval_batch_size() -> usize {
    256
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum OptimizerSpec {
    Sgd {
        lr: f64,
        #[serde(default)]
        momentum: f64,
        #[serde(default)]
        nesterov: bool,
        #[serde(default)]
        weight_decay: f64,
    },
    Adamw {
        lr: f64,
        #[serde(default = "default_beta1")]
        beta1: f64,
        #[serde(default = "default_beta2")]
        beta2: f64,
        #[serde(default = "default_adam_eps")]
        eps: f64,
        #[serde(default)]
        weight_decay: f64,
    },
}

fn default_beta1() -> f64 {
    0.9
}
fn default_beta2() -> f64 {
    0.999
}
fn default_adam_eps() -> f64 {
    1e-8
}

impl OptimizerSpec {
    pub fn lr(&self) -> f64 {
        match self {
            OptimizerSpec::Sgd { lr, .. } | OptimizerSpec::Adamw { lr, .. } => *lr,
        }
    }
}

/// A recipe file as written: the base recipe and its named profiles (raw override tables).
#[derive(Debug, Clone)]
pub struct RecipeFile {
    pub path: PathBuf,
    source: String,
    base: toml::Table,
    pub profiles: BTreeMap<String, toml::Table>,
}

impl RecipeFile {
    /// Reads and validates a recipe file: the base and every profile must deserialise.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let source = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        Self::parse(path, source)
    }

    /// Parses recipe text; `path` is used in error messages.
    pub fn parse(path: PathBuf, source: String) -> Result<Self> {
        let err = |message: String| Error::Recipe { path: path.clone(), message };
        let mut base: toml::Table = toml::from_str(&source).map_err(|e| err(e.to_string()))?;
        let mut profiles = BTreeMap::new();
        if let Some(raw) = base.remove("profiles") {
            let toml::Value::Table(raw) = raw else {
                return Err(err("`profiles` must be a table of tables".into()));
            };
            for (name, value) in raw {
                let toml::Value::Table(t) = value else {
                    return Err(err(format!("profile `{name}` must be a table")));
                };
                profiles.insert(name, t);
            }
        }
        let file = RecipeFile { path, source, base, profiles };
        // Check the base on its own (with line numbers from the parser) and each profile.
        file.resolve_table(None)?;
        for name in file.profiles.keys() {
            file.resolve_table(Some(name))?;
        }
        Ok(file)
    }

    /// The recipe with `profile` applied (`None`: the base as written).
    pub fn resolve(&self, profile: Option<&str>) -> Result<Recipe> {
        self.resolve_table(profile)
    }

    /// Experiment name as the file states it.
    pub fn name(&self) -> Option<&str> {
        self.base.get("experiment")?.get("name")?.as_str()
    }

    fn resolve_table(&self, profile: Option<&str>) -> Result<Recipe> {
        let mut table = self.base.clone();
        if let Some(name) = profile {
            let overrides = self.profiles.get(name).ok_or_else(|| Error::Recipe {
                path: self.path.clone(),
                message: format!(
                    "no profile `{name}`; this recipe defines: {}",
                    self.profiles.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
            })?;
            merge_into(&mut table, overrides);
        }
        let de = toml::Value::Table(table);
        let recipe: Recipe = serde_path_to_error::deserialize(de).map_err(|e| {
            let mut key = e.path().to_string();
            let message = e.inner().to_string();
            // For an unknown field the path stops at its table: name the field itself.
            if let Some(field) = message.strip_prefix("unknown field `").and_then(|m| m.split('`').next()) {
                if !key.ends_with(field) {
                    key = if key == "." || key.is_empty() {
                        field.to_string()
                    } else {
                        format!("{key}.{field}")
                    };
                }
            }
            let line = self.line_of(profile, &key);
            let where_ = match (profile, line) {
                (Some(p), Some(l)) => format!("profile `{p}`, key `{key}` (line {l})"),
                (Some(p), None) => format!("profile `{p}`, key `{key}`"),
                (None, Some(l)) => format!("key `{key}` (line {l})"),
                (None, None) => format!("key `{key}`"),
            };
            Error::Recipe { path: self.path.clone(), message: format!("{where_}: {message}") }
        })?;
        recipe.validate().map_err(|message| Error::Recipe { path: self.path.clone(), message })?;
        Ok(recipe)
    }

    /// Best-effort line of a dotted key: the last segment's first assignment after the
    /// section header that owns it.
    fn line_of(&self, profile: Option<&str>, key: &str) -> Option<usize> {
        let segments: Vec<&str> = key.split('.').filter(|s| !s.is_empty()).collect();
        let leaf = *segments.last()?;
        let start = match profile {
            Some(p) => self.source.find(&format!("[profiles.{p}"))?,
            None => 0,
        };
        let text = &self.source[start..];
        let offset = text
            .lines()
            .scan(0usize, |pos, line| {
                let here = *pos;
                *pos += line.len() + 1;
                Some((here, line))
            })
            .find(|(_, line)| {
                let t = line.trim_start();
                let bare = t.split('=').next().unwrap_or("").trim();
                bare == leaf || bare.ends_with(&format!(".{leaf}")) || t.contains(&format!("{leaf} ="))
            })
            .map(|(pos, _)| start + pos)?;
        Some(self.source[..offset].lines().count() + 1)
    }
}

/// Deep merge: tables merge key by key, everything else is replaced. A table with a `kind`
/// (a tagged choice such as an LR schedule) replaces the base's table whole.
fn merge_into(base: &mut toml::Table, overrides: &toml::Table) {
    for (k, v) in overrides {
        match (base.get_mut(k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) if !o.contains_key("kind") => {
                merge_into(b, o)
            }
            _ => {
                base.insert(k.clone(), v.clone());
            }
        }
    }
}

impl Recipe {
    fn validate(&self) -> std::result::Result<(), String> {
        let e = &self.experiment;
        if e.variants.is_empty() {
            return Err("`experiment.variants` is empty".into());
        }
        if e.seeds.is_empty() {
            return Err("`experiment.seeds` is empty".into());
        }
        let t = &self.train;
        if t.batch_size == 0 || t.eval_batch_size == 0 {
            return Err("`train.batch_size` and `train.eval_batch_size` must be positive".into());
        }
        // One output is a regression head (a text recipe's GLUE STS-B); classifiers need two.
        let min_classes = if self.text.is_some() { 1 } else { 2 };
        if self.data.num_classes < min_classes {
            return Err(format!("`data.num_classes` must be at least {min_classes}"));
        }
        if self.data.normalize.std.iter().any(|s| *s <= 0.0) {
            return Err("`data.normalize.std` must be positive".into());
        }
        if let Some(a) = &self.data.augment {
            if a.bank == Some(0) {
                return Err("`data.augment.bank` must be at least 1".into());
            }
        }
        match (self.data.validation_size, self.data.validation_seed) {
            (Some(0), _) => return Err("`data.validation_size` must be at least 1".into()),
            (None, Some(_)) => {
                return Err("`data.validation_seed` needs `data.validation_size` (validation mode)".into())
            }
            _ => {}
        }
        if self.teacher.is_some() && !self.teachers.is_empty() {
            return Err("a recipe has either `[teacher]` or `[[teachers]]`, not both".into());
        }
        for (i, teacher) in self.teacher_sections().into_iter().enumerate() {
            let key = if self.teachers.is_empty() { "teacher".to_string() } else { format!("teachers[{i}]") };
            match (&teacher.checkpoint, &teacher.train) {
                (Some(c), None) => {
                    let sha = &c.sha256;
                    if sha.len() != 64 || !sha.chars().all(|c| c.is_ascii_hexdigit()) {
                        return Err(format!("`{key}.checkpoint.sha256` is not a SHA-256 hex digest: {sha}"));
                    }
                }
                (None, Some(t)) => {
                    if t.epochs == 0 || t.batch_size == Some(0) {
                        return Err(format!("`{key}.train`: epochs and batch_size must be positive"));
                    }
                }
                (Some(_), Some(_)) => {
                    return Err(format!("`{key}` has both `checkpoint` and `train`: give one"));
                }
                (None, None) => {
                    return Err(format!(
                        "`{key}` needs `checkpoint` (pretrained weights) or `train` (train it in the recipe)"
                    ));
                }
            }
        }
        Ok(())
    }

    /// Every pretrained teacher of the recipe, in order: `[teacher]` or the `[[teachers]]`.
    pub fn teacher_sections(&self) -> Vec<&TeacherSection> {
        self.teacher.iter().chain(self.teachers.iter()).collect()
    }

    /// Applies `key=value` overrides (TOML values, dotted keys), as sweeps and `--set` do.
    pub fn with_overrides(&self, path: &Path, overrides: &[(String, toml::Value)]) -> Result<Recipe> {
        let err = |message: String| Error::Recipe { path: path.to_path_buf(), message };
        let mut table = toml::Table::try_from(self).map_err(|e| err(e.to_string()))?;
        for (key, value) in overrides {
            let mut cursor = &mut table;
            let parts: Vec<&str> = key.split('.').collect();
            for part in &parts[..parts.len() - 1] {
                let entry =
                    cursor.entry(part.to_string()).or_insert_with(|| toml::Value::Table(Default::default()));
                cursor = match entry {
                    toml::Value::Table(t) => t,
                    _ => return Err(err(format!("override `{key}`: `{part}` is not a table"))),
                };
            }
            cursor.insert(parts[parts.len() - 1].to_string(), value.clone());
        }
        let recipe: Recipe = serde_path_to_error::deserialize(toml::Value::Table(table))
            .map_err(|e| err(format!("override key `{}`: {}", e.path(), e.inner())))?;
        recipe.validate().map_err(err)?;
        Ok(recipe)
    }
}
