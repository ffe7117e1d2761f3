//! `kd reproduce <experiment>`: resolve the recipe and profile, load data and teacher, train
//! every variant for every seed, append whole rows to `results/<experiment>.csv`.
//!
//! Runs are the unit of work (experiment × variant × seed). A run whose rows already exist for
//! the same config hash is skipped; a run killed mid-way resumes from its last epoch checkpoint.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::Device;
use kd_core::hash::short;
use kd_core::history::append_history;
use kd_core::recipe::{Recipe, RecipeFile};
use kd_core::results::{run_rows, teacher_rows, ResultRow, TeacherScore};
use kd_core::seed::derive_seed;
use kd_core::trainer::TrainReport;

use crate::build_env::ImageBuildEnv;
use crate::data::{Loader, Split};
use crate::env;
use crate::models;
use crate::record::{run_history, ExperimentFiles, RowBase, Summary};
use crate::registry::{cross_entropy_plain, ParsedMethod};
use crate::teacher::Teacher;
use crate::train::{fit, Fit};
use kd_core::registry::Trainee;

/// What `kd reproduce` asks for (the binary parses it from the command line).
#[derive(Debug, Clone)]
pub struct Args {
    /// Experiment name: benchmarks/<experiment>.toml.
    pub experiment: String,
    /// Profile: smoke (seconds), cpu (one 2-core machine, under an hour), paper (GPU).
    pub profile: String,
    /// Seeds to run (default: the recipe's), e.g. `--seeds 0,1,2`.
    pub seeds: Option<Vec<u64>>,
    /// Variants to run (default: the recipe's), e.g. `--variants plain,kd`.
    pub variants: Option<Vec<String>>,
    /// Override recipe values, e.g. `--set distill.temperature=2 --set train.epochs=3`.
    pub overrides: Vec<(String, toml::Value)>,
    /// Folder of recipes (default: <root>/benchmarks).
    pub recipes: Option<PathBuf>,
    /// Folder of results CSVs (default: <root>/results).
    pub results: Option<PathBuf>,
    /// Folder of run checkpoints and final models (default: <root>/runs).
    pub runs: Option<PathBuf>,
    /// Re-run runs whose rows already exist (their old checkpoints are discarded).
    pub force: bool,
    /// Where models and tensors live: `cpu`, `cuda`, `cuda:N` ([`env::device`]).
    pub device: String,
}

impl Args {
    /// The seeds and variants to run: `--seeds`/`--variants` or the recipe's, each once, in the
    /// order given (a repeated one would train twice and append duplicate rows); a variant the
    /// recipe lacks is an error.
    pub fn selection(&self, recipe: &Recipe) -> Result<(Vec<u64>, Vec<String>)> {
        let seeds = once_each(self.seeds.clone().unwrap_or_else(|| recipe.experiment.seeds.clone()));
        let variants = once_each(self.variants.clone().unwrap_or_else(|| recipe.experiment.variants.clone()));
        for v in &variants {
            if !recipe.experiment.variants.contains(v) {
                bail!("variant `{v}` is not in the recipe's variants {:?}", recipe.experiment.variants);
            }
        }
        Ok((seeds, variants))
    }
}

/// `items` with repeats dropped, first occurrences in order.
fn once_each<T: PartialEq>(items: Vec<T>) -> Vec<T> {
    let mut out: Vec<T> = Vec::with_capacity(items.len());
    for x in items {
        if !out.contains(&x) {
            out.push(x);
        }
    }
    out
}

pub fn parse_override(s: &str) -> std::result::Result<(String, toml::Value), String> {
    let (k, v) = s.split_once('=').ok_or_else(|| format!("`{s}` is not key=value"))?;
    let value: toml::Value = toml::from_str::<toml::Table>(&format!("v = {v}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(v.to_string()));
    Ok((k.trim().to_string(), value))
}

/// Profiles whose rows are scratch: without `--results` they go to [`SCRATCH_RESULTS`] under the
/// runs folder, never into the committed `results/` (a smoke run leaves `git status` clean).
pub const SCRATCH_PROFILES: &[&str] = &["smoke"];

/// The results folder of a scratch profile's runs, inside the (git-ignored) runs folder; the
/// leading dot keeps it apart from experiment folders, whose names cannot start with one.
pub const SCRATCH_RESULTS: &str = ".scratch-results";

/// Where a reproduce invocation reads and writes.
pub struct Paths {
    pub root: PathBuf,
    pub recipes: PathBuf,
    pub results: PathBuf,
    pub runs: PathBuf,
    /// Whether this invocation's rows are scratch ([`Paths::for_profile`]): its tables and
    /// plots then stay beside them too, out of the committed folders.
    pub scratch: bool,
}

impl Paths {
    pub fn from_args(
        recipes: Option<PathBuf>,
        results: Option<PathBuf>,
        runs: Option<PathBuf>,
    ) -> Result<Self> {
        let root = match &recipes {
            Some(r) => r.parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from(".")),
            None => env::project_root()?,
        };
        Ok(Paths {
            recipes: recipes.unwrap_or_else(|| root.join("benchmarks")),
            results: results.unwrap_or_else(|| root.join("results")),
            runs: runs.unwrap_or_else(|| root.join("runs")),
            root,
            scratch: false,
        })
    }

    /// [`Paths::from_args`] for runs of `profile`: a scratch profile ([`SCRATCH_PROFILES`])
    /// without an explicit `--results` reads and writes `<runs>/.scratch-results/`.
    pub fn for_profile(
        recipes: Option<PathBuf>,
        results: Option<PathBuf>,
        runs: Option<PathBuf>,
        profile: &str,
    ) -> Result<Self> {
        let scratch = results.is_none() && SCRATCH_PROFILES.contains(&profile);
        let mut paths = Self::from_args(recipes, results, runs)?;
        if scratch {
            paths.results = paths.runs.join(SCRATCH_RESULTS);
            paths.scratch = true;
        }
        Ok(paths)
    }
}

/// Loads `benchmarks/<experiment>.toml`, naming the available experiments when it is absent.
pub fn load_recipe_file(recipes: &Path, experiment: &str) -> Result<RecipeFile> {
    let path = recipes.join(format!("{experiment}.toml"));
    if !path.exists() {
        let mut known: Vec<String> = std::fs::read_dir(recipes)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .filter_map(|e| e.file_name().to_str()?.strip_suffix(".toml").map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        known.sort();
        bail!("no recipe {}; experiments: {}", path.display(), known.join(", "));
    }
    Ok(RecipeFile::load(&path)?)
}

/// The hash that names a configuration: what determines its numbers, not where its files lie
/// (see `kd_core::recipe_hash`).
pub fn recipe_hash(recipe: &Recipe) -> Result<String> {
    Ok(kd_core::recipe_hash::recipe_hash(recipe)?)
}

pub fn run(args: Args) -> Result<()> {
    let paths =
        Paths::for_profile(args.recipes.clone(), args.results.clone(), args.runs.clone(), &args.profile)?;
    let file = load_recipe_file(&paths.recipes, &args.experiment)?;
    let mut recipe = file.resolve(Some(&args.profile))?;
    if !args.overrides.is_empty() {
        recipe = recipe.with_overrides(&file.path, &args.overrides)?;
    }
    let hash = recipe_hash(&recipe)?;
    let (seeds, variants) = args.selection(&recipe)?;
    if recipe.text.is_some() {
        // Text tasks (GLUE): tokenised batches, a fine-tuned BERT teacher (issue 9).
        return crate::glue::run(&args, &paths, &recipe, &hash);
    }
    let method_cfg =
        ParsedMethod::parse(&recipe).with_context(|| format!("recipe {}", file.path.display()))?;
    if method_cfg.name() == kd_core::registry::MethodFactory::name(&kd_cross_modal::factory::FACTORY) {
        // Paired image/audio data: its own task runner (the paired task).
        let cfg = kd_cross_modal::CrossModalConfig::from_table(&recipe.distill)?;
        return crate::cross_modal::run(&args, &paths, &recipe, &hash, &cfg, &seeds, &variants);
    }
    let exp = &recipe.experiment.name;
    let files = ExperimentFiles::new(&paths, &recipe, &hash)?;
    files.adopt_old_run_folder()?;
    files.remove_dead_temporaries();
    let (csv, run_dir) = (&files.csv, &files.run_dir);
    let device = env::device(&args.device)?;
    eprintln!(
        "{exp} (profile {}, config {}): {} → {} on {}, variants {:?}, seeds {:?}",
        args.profile,
        short(&hash),
        teacher_archs(&recipe),
        recipe.student.arch,
        recipe.data.hub,
        variants,
        seeds
    );

    // Which runs are already done?
    let existing = files.rows()?;
    let todo = runs_to_do(&existing, &hash, &seeds, &variants, args.force, csv);
    backfill_history(&recipe, &method_cfg, &args.profile, &hash, &existing, &files)?;
    if todo.is_empty() {
        eprintln!("nothing to do; results in {}", csv.display());
        return Ok(());
    }
    // Before any data is read: a folder that cannot be written fails now, not after training.
    files.check_writable(&crate::env::cache_dir(&paths.root))?;

    let hub = kd_data::HubCache::from_env();
    let t_load = Instant::now();
    // Validation mode (data.validation_size, issue 12): both splits come from the training split.
    let (train_split, eval_split) = crate::validation::load_splits(&hub, &recipe.data)?;
    eprintln!(
        "data: {} @ {}: {} train ({} used), {} {} ({} used), {:.1}s",
        recipe.data.hub,
        short(&train_split.dataset.revision),
        train_split.dataset.labels.len(),
        train_split.indices.len(),
        eval_split.dataset.labels.len(),
        crate::validation::eval_split_name(&recipe.data),
        eval_split.indices.len(),
        t_load.elapsed().as_secs_f64()
    );
    let eval_loader = Loader::eval(&eval_split, &recipe.data, recipe.train.eval_batch_size, &device);

    let mut teachers = Vec::new();
    if variants.iter().any(|v| method_cfg.needs_teachers(v)) {
        for t in recipe.teacher_sections() {
            let mut teacher = Teacher::load(&paths.root, t, &recipe, &train_split, &eval_loader, &device)?;
            if t.soft_label_cache {
                teacher.prepare_cache(&paths.root, &recipe, &train_split, &device)?;
            }
            teachers.push(teacher);
        }
    }

    let ctx = RunContext {
        root: &paths.root,
        recipe: &recipe,
        hash: &hash,
        train_split: &train_split,
        eval_loader: &eval_loader,
        device: &device,
        rows: RowBase {
            recipe: &recipe,
            methods: &method_cfg,
            profile: &args.profile,
            hash: &hash,
            dataset: recipe.data.hub.clone(),
            revision: train_split.dataset.revision.clone(),
            train_examples: train_split.indices.len(),
            eval_examples: eval_loader.split.indices.len(),
            split: crate::validation::eval_split_name(&recipe.data),
            device: env::device_label(&device),
            git_commit: env::git_commit(&paths.root),
        },
    };
    let mut summary = Summary::default();
    for (seed, variant) in &todo {
        let Some(_claim) = files.claim(variant, *seed, &hash, args.force)? else {
            continue;
        };
        let ckpt = files.checkpoint(variant, *seed);
        if args.force {
            files.discard_checkpoint(variant, *seed)?;
        }
        let started_at = env::now_rfc3339();
        let (report, trainee) = ctx.train_one(&method_cfg, variant, *seed, &teachers, &ckpt)?;
        for t in &teachers {
            t.after_run()?;
        }
        let used: Vec<&Teacher> = trainee.teachers.iter().filter_map(|&i| teachers.get(i)).collect();
        let teacher_hash = used.iter().map(|t| t.hash.as_str()).collect::<Vec<_>>().join("+");
        let mut rows = run_rows(&ctx.rows.row(variant, *seed, &started_at), &report, &teacher_hash);
        for t in &used {
            rows.extend(ctx.teacher_rows(variant, *seed, t, &started_at));
        }
        let final_path = files.final_model(variant, *seed);
        files.record_run(&rows, &ctx.rows.history(variant, *seed, &report), || {
            for (i, (name, model)) in trainee.models.iter().enumerate() {
                // The primary model keeps the plain name `kd eval` documents; others add theirs.
                let path = if i == 0 {
                    final_path.clone()
                } else {
                    run_dir.join(format!("{variant}-seed{seed}-{name}.safetensors"))
                };
                models::save_final(model, &path, &recipe, &hash)?;
            }
            Ok(())
        })?;
        // Every model the run evaluated: `kd` (one student) or `byot exit-3`, `dml peer-1`, ...
        summary.add_report(variant, &report, "top1");
        eprintln!(
            "  {variant} seed {seed}: {} rows → {}; model → {}",
            rows.len(),
            csv.display(),
            final_path.display()
        );
    }
    eprintln!(
        "\n{exp}: student top-1 on {} ({} examples), last epoch:",
        crate::validation::eval_split_name(&recipe.data),
        eval_split.indices.len()
    );
    for t in &teachers {
        eprintln!("  teacher {:<10} {:.2}", t.arch, t.top1());
    }
    summary.print(18, 2);
    eprintln!("rows: {}\ncheckpoints and final models: {}", csv.display(), run_dir.display());
    Ok(())
}

/// Finished runs whose history line is missing (written by an older kd-bench) get it from
/// their checkpoint, which records every epoch.
fn backfill_history(
    recipe: &Recipe,
    methods: &ParsedMethod,
    profile: &str,
    hash: &str,
    rows: &[ResultRow],
    files: &ExperimentFiles,
) -> Result<()> {
    let have = files.history_runs()?;
    let mut finished: Vec<(String, u64)> = rows
        .iter()
        .filter(|r| r.config_hash == hash && r.role != "teacher")
        .map(|r| (r.variant.clone(), r.seed))
        .collect();
    finished.dedup();
    for (variant, seed) in finished {
        if have.iter().any(|h| h.config_hash == hash && h.variant == variant && h.seed == seed) {
            continue;
        }
        let ckpt = files.checkpoint(&variant, seed);
        if !ckpt.exists() {
            continue;
        }
        let (_, meta) = kd_core::checkpoint::load_checkpoint(&ckpt)?;
        let Some(epochs) = meta
            .get("history")
            .and_then(|h| serde_json::from_str::<Vec<kd_core::trainer::EpochRecord>>(h).ok())
        else {
            continue;
        };
        let entries: Vec<kd_core::EvalEntry> = rows
            .iter()
            .filter(|r| {
                r.config_hash == hash
                    && r.variant == variant
                    && r.seed == seed
                    && r.role != "teacher"
                    && r.metric == "top1"
            })
            .map(|r| kd_core::EvalEntry { role: r.role.clone(), model: r.model.clone(), params: r.params })
            .collect();
        let method = methods.method_of(&variant);
        append_history(
            &files.history,
            &run_history(recipe, method, profile, hash, &variant, seed, &entries, &epochs),
        )?;
        eprintln!("  {variant} seed {seed}: history recovered from {}", ckpt.display());
    }
    Ok(())
}

/// The (seed, variant) runs without rows for `hash` in `existing` (all of them with `force`);
/// the skipped ones are named on stderr.
/// Whether `rows` hold run `variant` seed `seed` of configuration `hash` (a model's row other
/// than a teacher's: teachers' rows alone do not make a run).
pub fn run_is_recorded(rows: &[ResultRow], hash: &str, variant: &str, seed: u64) -> bool {
    rows.iter()
        .any(|r| r.config_hash == hash && r.variant == variant && r.seed == seed && r.role != "teacher")
}

pub fn runs_to_do(
    existing: &[ResultRow],
    hash: &str,
    seeds: &[u64],
    variants: &[String],
    force: bool,
    csv: &Path,
) -> Vec<(u64, String)> {
    let done = |variant: &str, seed: u64| run_is_recorded(existing, hash, variant, seed);
    seeds
        .iter()
        .flat_map(|&s| variants.iter().map(move |v| (s, v.clone())))
        .filter(|(s, v)| {
            let skip = !force && done(v, *s);
            if skip {
                eprintln!("  {v} seed {s}: rows already in {} (use --force to re-run)", csv.display());
            }
            !skip
        })
        .collect()
}

/// The teachers' archs for logs: `resnet56`, `resnet20+resnet56`, or `-`.
pub fn teacher_archs(recipe: &Recipe) -> String {
    let archs: Vec<&str> = recipe.teacher_sections().iter().map(|t| t.arch.as_str()).collect();
    if archs.is_empty() {
        "-".to_string()
    } else {
        archs.join("+")
    }
}

pub fn mean_std(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let m = v.iter().sum::<f64>() / n.max(1.0);
    let var = if v.len() > 1 { v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1.0) } else { 0.0 };
    (m, var.sqrt())
}

struct RunContext<'a> {
    root: &'a Path,
    recipe: &'a Recipe,
    hash: &'a str,
    train_split: &'a Split,
    eval_loader: &'a Loader,
    device: &'a Device,
    rows: RowBase<'a>,
}

impl RunContext<'_> {
    fn train_one(
        &self,
        method_cfg: &ParsedMethod,
        variant: &str,
        seed: u64,
        teachers: &[Teacher],
        ckpt: &Path,
    ) -> Result<(TrainReport, Trainee)> {
        let r = self.recipe;
        let env = ImageBuildEnv {
            recipe: r,
            seed,
            device: self.device,
            teachers,
            root: self.root,
            train_split: self.train_split,
            eval_loader: self.eval_loader,
        };
        let mut trainee = method_cfg.build(variant, &env, &cross_entropy_plain)?;
        let mut train_loader = Loader::train(
            self.train_split,
            &r.data,
            r.train.batch_size,
            r.train.drop_last,
            derive_seed(seed, "data"),
            self.device,
        );
        if method_cfg.strong_view(variant) {
            train_loader.cfg.strong = Some(kd_data::RandAugment::MLKD);
        }
        let (state, trainable) = trainee.variables()?;
        let entries = trainee.method.eval_entries();
        let report = fit(Fit {
            method: trainee.method.as_mut(),
            state: &state,
            trainable,
            optimizer: &r.train.optimizer,
            epochs: r.train.epochs,
            lr_schedule: &r.train.lr_schedule,
            checkpoint: ckpt,
            run_id: &format!("{}/{variant}/seed{seed}/{}", r.experiment.name, self.hash),
            train_data: &train_loader,
            eval_data: self.eval_loader,
            label: &format!("{variant} s{seed}"),
            metrics: kd_core::metric::top1_top5(),
            entries,
        })
        .with_context(|| format!("training {variant} seed {seed} (checkpoint {})", ckpt.display()))?;
        Ok((report, trainee))
    }

    fn teacher_rows(&self, variant: &str, seed: u64, t: &Teacher, started_at: &str) -> Vec<ResultRow> {
        let score = TeacherScore {
            model: &t.arch,
            params: t.model.num_params(),
            scores: &t.scores,
            epochs: 0,
            eval_seconds: t.eval_seconds,
            eval_examples: self.eval_loader.split.indices.len(),
            hash: &t.hash,
        };
        teacher_rows(&self.rows.row(variant, seed, started_at), &score)
    }
}

#[cfg(test)]
mod tests {
    use super::once_each;

    #[test]
    fn a_seed_or_variant_given_twice_runs_once() {
        assert_eq!(once_each(vec![1u64, 1, 0, 1, 2]), [1, 0, 2]);
        assert_eq!(once_each(vec!["kd", "plain", "kd"]), ["kd", "plain"]);
    }
}
