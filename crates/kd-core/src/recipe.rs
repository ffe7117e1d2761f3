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
    /// What a paper reports for this experiment, shown beside the measured numbers by `kd
    /// report`. Not configuration: never serialised, so never in the config hash.
    #[serde(default, skip_serializing)]
    pub published: Option<Published>,
}

/// `[published]`: a paper's numbers for the teacher, `plain` and the variants, in one metric.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Published {
    /// Key into `papers/references.bib` (one of `experiment.cite`).
    pub source: String,
    /// Where in the paper and under which setting, e.g. "Table 1, 240 epochs, full CIFAR-100".
    pub setting: String,
    /// The metric of the values (the task's headline metric; `top1` for images).
    #[serde(default = "default_published_metric")]
    pub metric: String,
    /// A line of the results table → the published value: `teacher`, `plain`, a variant (its
    /// student) or `<variant> <role>` for runs with several models (`dml peer-1`).
    pub values: BTreeMap<String, f64>,
}

fn default_published_metric() -> String {
    "top1".into()
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
    /// Method that trains the non-plain variants, e.g. `vanilla`. A comparison of several
    /// methods names them in `methods` instead and leaves this out.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub method: String,
    /// Several methods compared in one experiment (e.g. `["vanilla", "fitnet", "at"]`): each
    /// variant is trained by the one method that offers it, and `[distill.<method>]` holds each
    /// method's keys. Empty for a one-method recipe (whose config hash it leaves unchanged).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
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
                return Err(err("key `profiles`: must be a table of tables".into()));
            };
            for (name, value) in raw {
                let toml::Value::Table(t) = value else {
                    return Err(err(format!("key `profiles.{name}`: a profile must be a table")));
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
            let message = first_line(&e.inner().to_string());
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
            Error::Recipe {
                path: self.path.clone(),
                message: format!("{}: {message}", self.locate(profile, &key)),
            }
        })?;
        recipe.validate(&self.path).map_err(|Invalid { key, message }| Error::Recipe {
            path: self.path.clone(),
            message: format!("{}: {message}", self.locate(profile, &key)),
        })?;
        Ok(recipe)
    }

    /// `key `k` (line n)`, with the profile when one is applied. A key the profile does not set
    /// is looked up in the base (where the value it inherits is written).
    fn locate(&self, profile: Option<&str>, key: &str) -> String {
        let in_profile = profile.and_then(|p| self.line_of(Some(p), key));
        let in_base = || self.line_of(None, key);
        match (profile, in_profile) {
            (Some(p), Some(l)) => format!("profile `{p}`, key `{key}` (line {l})"),
            (Some(p), None) => match in_base() {
                Some(l) => format!("profile `{p}`, key `{key}` (line {l}, in the base recipe)"),
                None => format!("profile `{p}`, key `{key}`"),
            },
            (None, _) => match in_base() {
                Some(l) => format!("key `{key}` (line {l})"),
                None => format!("key `{key}`"),
            },
        }
    }

    /// Line of a dotted key (`train.optimizer.lr`, `teachers[1].arch`, `experiment.variants[0]`)
    /// in the base (`profile = None`) or in one profile. Section headers (`[a.b]`, `[[a]]`, the
    /// n-th `[[a]]` is `a[n]`) and dotted keys are followed; a key inside an inline table or
    /// array is found at the line of the table or array that holds it.
    fn line_of(&self, profile: Option<&str>, key: &str) -> Option<usize> {
        let root = profile.map(|p| format!("profiles.{p}")).unwrap_or_default();
        let target = if root.is_empty() { key.to_string() } else { format!("{root}.{key}") };
        let clean =
            |s: &str| s.chars().filter(|c| !c.is_whitespace() && *c != '"' && *c != '\'').collect::<String>();
        let mut section = String::new();
        let mut arrays: BTreeMap<String, usize> = BTreeMap::new();
        let mut best: Option<(usize, usize)> = None;
        for (i, raw) in self.source.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let full = if let Some(h) = line.strip_prefix("[[") {
                let name = clean(h.split("]]").next().unwrap_or(""));
                let n = arrays.entry(name.clone()).or_insert(0);
                section = format!("{name}[{n}]");
                *n += 1;
                section.clone()
            } else if let Some(h) = line.strip_prefix('[') {
                section = clean(h.split(']').next().unwrap_or(""));
                section.clone()
            } else if let Some((k, _)) = line.split_once('=') {
                let k = clean(k);
                if section.is_empty() {
                    k
                } else {
                    format!("{section}.{k}")
                }
            } else {
                continue;
            };
            if full == target {
                return Some(i + 1);
            }
            let holds = target.starts_with(&full)
                && matches!(target.as_bytes().get(full.len()), Some(b'.') | Some(b'['))
                && full.len() > root.len();
            if holds && best.is_none_or(|(len, _)| full.len() > len) {
                best = Some((full.len(), i + 1));
            }
        }
        best.map(|(_, line)| line)
    }
}

/// toml's messages end in "\nin `key`", which the key we print already says.
fn first_line(message: &str) -> String {
    message.lines().next().unwrap_or("").trim_end().to_string()
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

/// A value recipe validation refused: the dotted key (as serde paths print it) and why.
#[derive(Debug)]
struct Invalid {
    key: String,
    message: String,
}

type Checked = std::result::Result<(), Invalid>;

fn invalid(key: impl Into<String>, message: impl Into<String>) -> Invalid {
    Invalid { key: key.into(), message: message.into() }
}

/// `[a-z0-9][a-z0-9._-]*`: what an experiment name (a file stem under `results/`, `runs/`) may be.
pub fn is_plain_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c.is_ascii_digit())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-'))
}

/// One path component: not empty, not `.` or `..`, no separator or control character.
fn check_component(key: &str, value: &str) -> Checked {
    if value.is_empty() {
        return Err(invalid(key, "must not be empty"));
    }
    if value == "." || value == ".." || value.contains(['/', '\\']) || value.chars().any(char::is_control) {
        return Err(invalid(
            key,
            format!("`{value}` is path-like; it becomes part of a file name, so it must be a plain name"),
        ));
    }
    Ok(())
}

/// A hub repo id, `owner/name` (or a bare `name`), each part a plain component.
fn check_repo_id(key: &str, value: &str) -> Checked {
    let parts: Vec<&str> = value.split('/').collect();
    if parts.len() > 2 || value.starts_with('/') || parts.iter().any(|p| check_component(key, p).is_err()) {
        return Err(invalid(key, format!("`{value}` is not a hub repo id (`owner/name`)")));
    }
    Ok(())
}

/// A hub revision (branch, tag, `refs/pr/1`, commit sha): the cache stores it as
/// `refs/<revision>`, so it must stay a relative path without `.` or `..` parts.
fn check_revision(key: &str, value: &str) -> Checked {
    if value.starts_with('/') || value.split('/').any(|p| check_component(key, p).is_err()) {
        return Err(invalid(
            key,
            format!("`{value}` is not a hub revision (a branch, tag or commit; no absolute or `..` parts)"),
        ));
    }
    Ok(())
}

/// The file name a checkpoint URL is cached under: its last path segment, without a query or
/// fragment. `None` when that is not a plain file name (`https://host/`, `…/..`).
pub fn url_file_name(url: &str) -> Option<&str> {
    let path = url.split(['?', '#']).next().unwrap_or("");
    let name = path.rsplit('/').next()?;
    check_component("", name).is_ok().then_some(name)
}

fn positive_usize(key: &str, v: usize) -> Checked {
    if v == 0 {
        return Err(invalid(key, "must be at least 1 (0 leaves nothing to train or evaluate)"));
    }
    Ok(())
}

fn finite_at_least(key: &str, v: f64, min: f64, strict: bool) -> Checked {
    let ok = v.is_finite() && if strict { v > min } else { v >= min };
    if !ok {
        let op = if strict { ">" } else { "≥" };
        return Err(invalid(key, format!("must be a finite number {op} {min}, got {v}")));
    }
    Ok(())
}

fn unit_interval(key: &str, v: f64) -> Checked {
    if !(0.0..1.0).contains(&v) {
        return Err(invalid(key, format!("must be in [0, 1), got {v}")));
    }
    Ok(())
}

impl OptimizerSpec {
    /// Values the optimiser constructors would refuse later (or silently train badly with),
    /// checked before any data is read. `prefix` is the key of the table (`train.optimizer`).
    fn validate(&self, prefix: &str) -> Checked {
        let k = |f: &str| format!("{prefix}.{f}");
        match *self {
            OptimizerSpec::Sgd { lr, momentum, nesterov, weight_decay } => {
                finite_at_least(&k("lr"), lr, 0.0, true)?;
                unit_interval(&k("momentum"), momentum)?;
                finite_at_least(&k("weight_decay"), weight_decay, 0.0, false)?;
                if nesterov && momentum == 0.0 {
                    return Err(invalid(k("nesterov"), "Nesterov momentum needs `momentum` > 0"));
                }
            }
            OptimizerSpec::Adamw { lr, beta1, beta2, eps, weight_decay } => {
                finite_at_least(&k("lr"), lr, 0.0, true)?;
                unit_interval(&k("beta1"), beta1)?;
                unit_interval(&k("beta2"), beta2)?;
                finite_at_least(&k("eps"), eps, 0.0, true)?;
                finite_at_least(&k("weight_decay"), weight_decay, 0.0, false)?;
            }
        }
        Ok(())
    }
}

/// The schedule's numbers: finite warm-up ≥ 0, `gamma` finite > 0, `min_lr` finite ≥ 0.
fn validate_schedule(prefix: &str, s: &LrSchedule) -> Checked {
    finite_at_least(&format!("{prefix}.warmup_epochs"), s.warmup_epochs(), 0.0, false)?;
    match *s {
        LrSchedule::Multistep { gamma, .. } => finite_at_least(&format!("{prefix}.gamma"), gamma, 0.0, true),
        LrSchedule::Cosine { min_lr, .. } | LrSchedule::CosinePerEpoch { min_lr, .. } => {
            finite_at_least(&format!("{prefix}.min_lr"), min_lr, 0.0, false)
        }
        LrSchedule::Constant { .. } | LrSchedule::Linear { .. } => Ok(()),
    }
}

fn no_duplicates<T: PartialEq + std::fmt::Display>(key: &str, values: &[T]) -> Checked {
    for (i, v) in values.iter().enumerate() {
        if values[..i].contains(v) {
            return Err(invalid(format!("{key}[{i}]"), format!("`{v}` is listed twice")));
        }
    }
    Ok(())
}

impl Recipe {
    /// The methods this recipe runs: `[method]`, or `methods` for a comparison.
    pub fn method_names(&self) -> Vec<&str> {
        let e = &self.experiment;
        if e.methods.is_empty() {
            vec![e.method.as_str()]
        } else {
            e.methods.iter().map(String::as_str).collect()
        }
    }

    /// The recipe as method `method` sees it: a one-method recipe itself; in a comparison,
    /// `experiment.method = method` and `[distill]` = its `[distill.<method>]` table (empty
    /// when absent: the method's defaults). Methods parse their `[distill]` from this.
    pub fn for_method(&self, method: &str) -> Recipe {
        if self.experiment.methods.is_empty() {
            return self.clone();
        }
        let mut r = self.clone();
        r.experiment.method = method.to_string();
        r.experiment.methods.clear();
        r.distill = match self.distill.get(method) {
            Some(toml::Value::Table(t)) => t.clone(),
            _ => toml::Table::new(),
        };
        r
    }

    /// Checks what serde cannot: names that become file names, budgets, optimiser and schedule
    /// numbers, teacher sources. `path` is the recipe file, whose stem the experiment name must
    /// equal (results, histories and checkpoints are named after it).
    fn validate(&self, path: &Path) -> Checked {
        let e = &self.experiment;
        let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("");
        if !is_plain_name(&e.name) {
            return Err(invalid(
                "experiment.name",
                format!(
                    "`{}` is not a plain name (`[a-z0-9][a-z0-9._-]*`); it names files under results/ and runs/",
                    e.name
                ),
            ));
        }
        if e.name != stem {
            return Err(invalid(
                "experiment.name",
                format!("`{}` must equal the recipe file's name `{stem}` (without `.toml`)", e.name),
            ));
        }
        match (e.method.is_empty(), e.methods.is_empty()) {
            (false, true) => check_component("experiment.method", &e.method)?,
            (true, false) => {
                for (i, m) in e.methods.iter().enumerate() {
                    check_component(&format!("experiment.methods[{i}]"), m)?;
                }
                no_duplicates("experiment.methods", &e.methods)?;
                for (key, value) in &self.distill {
                    if !e.methods.contains(key) {
                        return Err(invalid(
                            format!("distill.{key}"),
                            format!(
                                "with several methods, [distill] holds one table per method of \
                                 experiment.methods ({}); `{key}` is none of them",
                                e.methods.join(", ")
                            ),
                        ));
                    }
                    if !value.is_table() {
                        return Err(invalid(
                            format!("distill.{key}"),
                            "must be a table of that method's keys",
                        ));
                    }
                }
            }
            (false, false) => {
                return Err(invalid("experiment.methods", "give either `method` or `methods`, not both"))
            }
            (true, true) => return Err(invalid("experiment.method", "is missing (or list `methods`)")),
        }
        if e.variants.is_empty() {
            return Err(invalid("experiment.variants", "is empty"));
        }
        for (i, v) in e.variants.iter().enumerate() {
            check_component(&format!("experiment.variants[{i}]"), v)?;
        }
        no_duplicates("experiment.variants", &e.variants)?;
        if e.seeds.is_empty() {
            return Err(invalid("experiment.seeds", "is empty"));
        }
        no_duplicates("experiment.seeds", &e.seeds)?;

        let d = &self.data;
        check_repo_id("data.hub", &d.hub)?;
        check_revision("data.revision", &d.revision)?;
        if let Some(c) = &d.config {
            check_component("data.config", c)?;
        }
        check_component("data.train_split", &d.train_split)?;
        check_component("data.eval_split", &d.eval_split)?;
        // One output is a regression head (a text recipe's GLUE STS-B); classifiers need two.
        let min_classes = if self.text.is_some() { 1 } else { 2 };
        if d.num_classes < min_classes {
            return Err(invalid("data.num_classes", format!("must be at least {min_classes}")));
        }
        if let Some(n) = d.train_limit {
            positive_usize("data.train_limit", n)?;
        }
        if let Some(n) = d.eval_limit {
            positive_usize("data.eval_limit", n)?;
        }
        for (i, (m, s)) in d.normalize.mean.iter().zip(&d.normalize.std).enumerate() {
            if !m.is_finite() {
                return Err(invalid(format!("data.normalize.mean[{i}]"), format!("must be finite, got {m}")));
            }
            if !(s.is_finite() && *s > 0.0) {
                return Err(invalid(
                    format!("data.normalize.std[{i}]"),
                    format!("must be a finite number > 0, got {s}"),
                ));
            }
        }
        if let Some(a) = &d.augment {
            if let Some(bank) = a.bank {
                positive_usize("data.augment.bank", bank)?;
            }
        }
        if let Some([h, w]) = d.resize {
            positive_usize("data.resize[0]", h)?;
            positive_usize("data.resize[1]", w)?;
        }
        match (d.validation_size, d.validation_seed) {
            (Some(n), _) => positive_usize("data.validation_size", n)?,
            (None, Some(_)) => {
                return Err(invalid("data.validation_seed", "needs `data.validation_size` (validation mode)"))
            }
            _ => {}
        }

        if let Some(p) = &self.published {
            if !e.cite.contains(&p.source) {
                return Err(invalid(
                    "published.source",
                    format!("`{}` must be one of experiment.cite ({})", p.source, e.cite.join(", ")),
                ));
            }
            for (key, value) in &p.values {
                // A line of the results table: `teacher`, a variant's student, or `<variant>
                // <role>` for a run with several models (`dml peer-1`, `byot exit-4`).
                let variant = match key.split_once(' ') {
                    Some((v, role)) if !role.is_empty() && !role.contains(' ') => v,
                    _ => key.as_str(),
                };
                if key != "teacher" && !e.variants.iter().any(|v| v == variant) {
                    return Err(invalid(
                        format!("published.values.{key}"),
                        format!(
                            "names neither `teacher`, a variant ({}) nor `<variant> <role>`",
                            e.variants.join(", ")
                        ),
                    ));
                }
                if !value.is_finite() {
                    return Err(invalid(
                        format!("published.values.{key}"),
                        format!("must be finite, got {value}"),
                    ));
                }
            }
        }
        if let Some(t) = &self.text {
            check_component("text.task", &t.task)?;
            check_repo_id("text.model", &t.model)?;
            check_revision("text.model_revision", &t.model_revision)?;
            positive_usize("text.max_len", t.max_len)?;
            if !matches!(t.pooling.as_str(), "mean" | "cls") {
                return Err(invalid("text.pooling", format!("`{}`: use `mean` or `cls`", t.pooling)));
            }
            if !matches!(t.student_init.as_str(), "pretrained" | "random") {
                return Err(invalid(
                    "text.student_init",
                    format!("`{}`: use `pretrained` or `random`", t.student_init),
                ));
            }
        }

        check_component("student.arch", &self.student.arch)?;
        let t = &self.train;
        positive_usize("train.epochs", t.epochs)?;
        positive_usize("train.batch_size", t.batch_size)?;
        positive_usize("train.eval_batch_size", t.eval_batch_size)?;
        t.optimizer.validate("train.optimizer")?;
        validate_schedule("train.lr_schedule", &t.lr_schedule)?;

        if self.teacher.is_some() && !self.teachers.is_empty() {
            return Err(invalid("teachers", "a recipe has either `[teacher]` or `[[teachers]]`, not both"));
        }
        for (i, teacher) in self.teacher_sections().into_iter().enumerate() {
            let key = if self.teachers.is_empty() { "teacher".to_string() } else { format!("teachers[{i}]") };
            check_component(&format!("{key}.arch"), &teacher.arch)?;
            match (&teacher.checkpoint, &teacher.train) {
                (Some(c), None) => {
                    let sha = &c.sha256;
                    if sha.len() != 64 || !sha.chars().all(|c| c.is_ascii_hexdigit()) {
                        return Err(invalid(
                            format!("{key}.checkpoint.sha256"),
                            format!("is not a SHA-256 hex digest: {sha}"),
                        ));
                    }
                    if let Some(url) = &c.url {
                        let k = format!("{key}.checkpoint.url");
                        if !(url.starts_with("https://") || url.starts_with("http://")) {
                            return Err(invalid(k, format!("`{url}` is not an http(s) URL")));
                        }
                        if url_file_name(url).is_none() {
                            return Err(invalid(
                                k,
                                format!(
                                    "`{url}` does not end in a file name (the download is cached under it)"
                                ),
                            ));
                        }
                    }
                }
                (None, Some(t)) => {
                    positive_usize(&format!("{key}.train.epochs"), t.epochs)?;
                    if let Some(b) = t.batch_size {
                        positive_usize(&format!("{key}.train.batch_size"), b)?;
                    }
                    if let Some(o) = &t.optimizer {
                        o.validate(&format!("{key}.train.optimizer"))?;
                    }
                    if let Some(s) = &t.lr_schedule {
                        validate_schedule(&format!("{key}.train.lr_schedule"), s)?;
                    }
                }
                (Some(_), Some(_)) => {
                    return Err(invalid(key, "has both `checkpoint` and `train`: give one"));
                }
                (None, None) => {
                    return Err(invalid(
                        key,
                        "needs `checkpoint` (pretrained weights) or `train` (train it in the recipe)",
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
        let mut recipe: Recipe =
            serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
                err(format!("override key `{}`: {}", e.path(), first_line(&e.inner().to_string())))
            })?;
        // Never serialised (not configuration), so carried over rather than round-tripped.
        recipe.published = self.published.clone();
        recipe.validate(path).map_err(|Invalid { key, message }| {
            let set = overrides.iter().find(|(k, _)| *k == key || key.starts_with(&format!("{k}.")));
            match set {
                Some((k, v)) => err(format!("key `{key}` (set by the override `{k}={v}`): {message}")),
                None => err(format!("key `{key}`: {message}")),
            }
        })?;
        Ok(recipe)
    }
}
