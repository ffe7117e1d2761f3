//! `kd sweep <experiment>`: hyper-parameter sweeps, run here or as a Slurm array job.
//!
//! A sweep expands the recipe (under a profile) into runs: every point of a grid
//! (`--grid distill.temperature=1,2,4,8 --grid distill.alpha=0.5,0.9`) or `--random N` points
//! sampled from lists and ranges (`--grid train.optimizer.lr=log:1e-3..1e-1`), times every seed
//! and variant. Each point is the recipe with `--set`-style overrides, so it has its own config
//! hash; a run is exactly `kd reproduce <exp> --profile P --seeds S --variants V --set k=v …`.
//!
//! - Locally (the default) the runs go through `kd reproduce`'s code path, one point after
//!   another (`--jobs N`: N `kd reproduce` processes at once). Finished runs (rows with the same
//!   config hash, variant and seed) are skipped and a killed run resumes from its checkpoint, so
//!   an interrupted sweep continues where it stopped.
//! - `--emit slurm DIR` writes `DIR/manifest.tsv` (one line per run) and `DIR/sweep.sbatch`, an
//!   array job whose task `i` runs line `i`; rows land in the same CSV under its file lock. Slurm
//!   is the scheduler; kd-bench does not ship one.
//!
//! Tuning never reads the test split: a sweep always runs in validation mode
//! (`data.validation_size`, see [`kd_run::validation`]), from the profile or `--validation-size`,
//! and refuses to run without it. The `plain` variant does not read `[distill]`, so it is run
//! once per distinct point of the other keys, not once per distillation setting.
//!
//! Every configuration a sweep expands is recorded in `results/<experiment>.configs.jsonl`
//! (config hash → overrides and resolved recipe), which `kd compare --by distill.temperature`
//! and `kd report`'s heat maps read.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use kd_core::hash::{config_hash, short};
use kd_core::recipe::{Recipe, RecipeFile};
use kd_core::results::read_rows;
use kd_core::seed::derive_seed;
use serde::Serialize;

use crate::reproduce;
use kd_analysis::configs::{configs_path, record_configs, ConfigLine};
use kd_run::reproduce::{load_recipe_file, recipe_hash, Paths};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Experiment name: benchmarks/<experiment>.toml.
    pub experiment: String,
    /// Profile the sweep scales from.
    #[arg(long, default_value = kd_core::recipe::DEFAULT_PROFILE)]
    pub profile: String,
    /// A swept key: `key=v1,v2,…` (grid values), `key=lo..hi` (uniform), `key=log:lo..hi`
    /// (log-uniform) or `key=int:lo..hi` (integers, inclusive). Ranges need --random. Repeat
    /// for more keys; the grid is their product, the first key varying slowest.
    #[arg(long = "grid", visible_alias = "param", value_name = "KEY=VALUES")]
    pub grid: Vec<String>,
    /// Random search: sample this many points (lists uniformly, ranges as given).
    #[arg(long, value_name = "N")]
    pub random: Option<usize>,
    /// Seed of the random search (the same seed gives the same points).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Seeds of every point (default: the profile's).
    #[arg(long, value_delimiter = ',')]
    pub seeds: Option<Vec<u64>>,
    /// Variants of every point (default: the recipe's).
    #[arg(long, value_delimiter = ',')]
    pub variants: Option<Vec<String>>,
    /// Fixed overrides applied to every run, as in `kd reproduce --set`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Held-out validation examples carved from the training split (default: the profile's
    /// `data.validation_size`; a sweep needs one).
    #[arg(long)]
    pub validation_size: Option<usize>,
    /// Seed of the held-out choice (default: the profile's, else `data.subset_seed`).
    #[arg(long)]
    pub validation_seed: Option<u64>,
    /// Local runs at once (each a `kd reproduce` process); with --emit slurm, the array's
    /// concurrency limit (`--array=0-N%J`).
    #[arg(long, default_value_t = 1)]
    pub jobs: usize,
    /// `--emit slurm DIR`: write DIR/sweep.sbatch and DIR/manifest.tsv instead of running.
    #[arg(long, num_args = 2, value_names = ["KIND", "DIR"])]
    pub emit: Vec<String>,
    /// Extra `#SBATCH` options for --emit slurm, e.g. `--sbatch=--time=02:00:00`.
    #[arg(long = "sbatch", value_name = "OPTION", allow_hyphen_values = true)]
    pub sbatch: Vec<String>,
    /// Print the runs and stop.
    #[arg(long)]
    pub dry_run: bool,
    /// Folder of recipes (default: <root>/benchmarks).
    #[arg(long)]
    pub recipes: Option<PathBuf>,
    /// Folder of results CSVs (default: <root>/results).
    #[arg(long)]
    pub results: Option<PathBuf>,
    /// Folder of run checkpoints and final models (default: <root>/runs).
    #[arg(long)]
    pub runs: Option<PathBuf>,
}

// ---------------------------------------------------------------------------------------------
// The search space

/// How a range is sampled.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scale {
    Linear,
    Log,
    Int,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Axis {
    /// Grid values (sampled uniformly by random search).
    Values(Vec<toml::Value>),
    /// A range, for random search only.
    Range { lo: f64, hi: f64, scale: Scale },
}

/// One swept key.
#[derive(Debug, Clone, PartialEq)]
pub struct Param {
    pub key: String,
    pub axis: Axis,
}

/// A point of the space: overrides in `--grid` order.
pub type Point = Vec<(String, toml::Value)>;

/// A TOML value as `--set` writes it (and parses it back to the same value).
pub fn value_text(v: &toml::Value) -> String {
    v.to_string()
}

/// Parses a `--set`/grid value the way `kd reproduce --set` does: TOML, else a bare string.
pub fn parse_value(s: &str) -> toml::Value {
    toml::from_str::<toml::Table>(&format!("v = {s}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(s.to_string()))
}

fn check_key(key: &str, what: &str) -> std::result::Result<(), String> {
    if key.is_empty() {
        return Err(format!("`{what}`: the key before `=` is empty"));
    }
    if key.split('.').any(str::is_empty)
        || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
    {
        return Err(format!("`{what}`: `{key}` is not a dotted recipe key such as distill.temperature"));
    }
    Ok(())
}

/// Splits at commas outside brackets, braces and quotes (so `[1,2]` stays one value).
fn split_values(s: &str) -> Vec<&str> {
    let (mut depth, mut quote, mut start) = (0i32, None::<char>, 0);
    let mut out = Vec::new();
    for (i, c) in s.char_indices() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '"' | '\'') => quote = Some(c),
            (None, '[' | '{') => depth += 1,
            (None, ']' | '}') => depth -= 1,
            (None, ',') if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

fn parse_bound(text: &str, what: &str) -> std::result::Result<f64, String> {
    let t = text.trim();
    t.parse::<f64>()
        .ok()
        .filter(|x| x.is_finite())
        .ok_or_else(|| format!("`{what}`: range bound `{t}` is not a finite number"))
}

/// Parses one `--grid` argument.
pub fn parse_param(s: &str) -> std::result::Result<Param, String> {
    let (key, spec) = s
        .split_once('=')
        .ok_or_else(|| format!("`{s}` is not KEY=VALUES (e.g. distill.temperature=1,2,4,8)"))?;
    let key = key.trim();
    check_key(key, s)?;
    let spec = spec.trim();
    if spec.is_empty() {
        return Err(format!("`{s}`: no values after `=`"));
    }
    let (scale, body) = if let Some(b) = spec.strip_prefix("log:") {
        (Some(Scale::Log), b)
    } else if let Some(b) = spec.strip_prefix("int:") {
        (Some(Scale::Int), b)
    } else if spec.contains("..") && !spec.starts_with(['[', '"', '\'', '{']) {
        (Some(Scale::Linear), spec)
    } else {
        (None, spec)
    };
    if let Some(scale) = scale {
        let (lo, hi) = body
            .split_once("..")
            .ok_or_else(|| format!("`{s}`: a range is written lo..hi (e.g. log:1e-3..1e-1)"))?;
        let (lo, hi) = (parse_bound(lo, s)?, parse_bound(hi, s)?);
        if lo >= hi {
            return Err(format!("`{s}`: the range is empty or reversed ({lo} >= {hi})"));
        }
        if scale == Scale::Log && lo <= 0.0 {
            return Err(format!("`{s}`: a log range needs positive bounds"));
        }
        if scale == Scale::Int && (lo.fract() != 0.0 || hi.fract() != 0.0) {
            return Err(format!("`{s}`: an int range needs integer bounds"));
        }
        return Ok(Param { key: key.to_string(), axis: Axis::Range { lo, hi, scale } });
    }
    let mut values: Vec<toml::Value> = Vec::new();
    for v in split_values(body) {
        let v = v.trim();
        if v.is_empty() {
            return Err(format!("`{s}`: an empty value in the list"));
        }
        let value = parse_value(v);
        if values.contains(&value) {
            return Err(format!("`{s}`: the value `{v}` is listed twice"));
        }
        values.push(value);
    }
    Ok(Param { key: key.to_string(), axis: Axis::Values(values) })
}

/// Four significant digits: sampled values stay readable in tables and manifests.
fn round_sig(x: f64) -> f64 {
    if x == 0.0 {
        return 0.0;
    }
    let digits = 3 - x.abs().log10().floor() as i32;
    let f = 10f64.powi(digits);
    (x * f).round() / f
}

/// A uniform number in [0, 1) for `(seed, purpose)`; stable across platforms and versions.
fn uniform(seed: u64, purpose: &str) -> f64 {
    (derive_seed(seed, purpose) >> 11) as f64 / (1u64 << 53) as f64
}

fn sample(p: &Param, u: f64) -> toml::Value {
    match &p.axis {
        Axis::Values(v) => v[((u * v.len() as f64) as usize).min(v.len() - 1)].clone(),
        Axis::Range { lo, hi, scale: Scale::Linear } => {
            toml::Value::Float(round_sig(lo + u * (hi - lo)).clamp(*lo, *hi))
        }
        Axis::Range { lo, hi, scale: Scale::Log } => {
            toml::Value::Float(round_sig((lo.ln() + u * (hi.ln() - lo.ln())).exp()).clamp(*lo, *hi))
        }
        Axis::Range { lo, hi, scale: Scale::Int } => {
            let n = (hi - lo) as i64 + 1;
            toml::Value::Integer(*lo as i64 + ((u * n as f64) as i64).min(n - 1))
        }
    }
}

/// The points of the space: the grid (every combination, the first key varying slowest), or
/// `random` points sampled with `seed` (duplicates dropped, order kept).
pub fn points(params: &[Param], random: Option<usize>, seed: u64) -> Result<Vec<Point>> {
    if params.is_empty() {
        bail!("nothing to sweep: give at least one --grid KEY=VALUES");
    }
    let mut keys = BTreeSet::new();
    for p in params {
        if !keys.insert(p.key.as_str()) {
            bail!("--grid {}: the key is swept twice", p.key);
        }
    }
    match random {
        None => {
            if let Some(p) = params.iter().find(|p| matches!(p.axis, Axis::Range { .. })) {
                bail!("--grid {}: a range can only be sampled; add --random N, or list grid values", p.key);
            }
            let mut out: Vec<Point> = vec![Vec::new()];
            for p in params {
                let Axis::Values(values) = &p.axis else { unreachable!() };
                out = out
                    .into_iter()
                    .flat_map(|pt| {
                        values.iter().map(move |v| {
                            let mut q = pt.clone();
                            q.push((p.key.clone(), v.clone()));
                            q
                        })
                    })
                    .collect();
            }
            Ok(out)
        }
        Some(0) => bail!("--random 0: sample at least one point"),
        Some(n) => {
            let mut out: Vec<Point> = Vec::new();
            for i in 0..n {
                let pt: Point = params
                    .iter()
                    .map(|p| (p.key.clone(), sample(p, uniform(seed, &format!("sweep/{i}/{}", p.key)))))
                    .collect();
                if !out.contains(&pt) {
                    out.push(pt);
                }
            }
            Ok(out)
        }
    }
}

/// The value at a dotted key of a table, if any.
fn lookup<'a>(t: &'a toml::Table, key: &str) -> Option<&'a toml::Value> {
    let mut parts = key.split('.');
    let mut v = t.get(parts.next()?)?;
    for p in parts {
        v = v.as_table()?.get(p)?;
    }
    Some(v)
}

/// An integer given for a key the recipe holds as a float becomes that float, so `T=4` and
/// `T=4.0` are one configuration (one hash).
fn coerce(base: &toml::Table, key: &str, v: toml::Value) -> toml::Value {
    match (lookup(base, key), v) {
        (Some(toml::Value::Float(_)), toml::Value::Integer(i)) => toml::Value::Float(i as f64),
        (_, v) => v,
    }
}

// ---------------------------------------------------------------------------------------------
// The plan

/// What to sweep, independent of where it runs.
#[derive(Debug, Clone)]
pub struct Spec {
    pub profile: String,
    pub params: Vec<Param>,
    pub random: Option<usize>,
    pub seed: u64,
    pub seeds: Option<Vec<u64>>,
    pub variants: Option<Vec<String>>,
    /// Overrides of every run (`--set`, validation size and seed).
    pub fixed: Vec<(String, toml::Value)>,
}

/// One run: a point's overrides, a seed and a variant.
#[derive(Debug, Clone, PartialEq)]
pub struct Run {
    /// The array task id (0-based), the manifest line.
    pub task: usize,
    /// The overrides after the fixed ones (for `plain`, without `distill.*`).
    pub point: Point,
    pub seed: u64,
    pub variant: String,
    pub config_hash: String,
}

#[derive(Debug, Clone)]
pub struct Plan {
    pub experiment: String,
    pub profile: String,
    pub sweep_id: String,
    pub fixed: Vec<(String, toml::Value)>,
    pub points: Vec<Point>,
    pub runs: Vec<Run>,
    pub configs: Vec<ConfigLine>,
}

impl Plan {
    /// The rows of the sweep's experiment, those written under a configuration's old (v1) hash
    /// renamed to its current one.
    pub fn rows(&self, csv: &Path) -> Result<Vec<kd_core::results::ResultRow>> {
        let mut rows = if csv.exists() { read_rows(csv)? } else { Vec::new() };
        let mut aliases = kd_core::recipe_hash::HashAliases::default();
        for c in &self.configs {
            aliases.add(kd_core::recipe_hash::legacy_recipe_hash_of(&c.recipe)?, c.config_hash.clone());
        }
        aliases.rename_rows(&mut rows);
        Ok(rows)
    }

    /// The `--set` overrides of a run (fixed first, then the point), as `key=value` texts.
    pub fn sets(&self, run: &Run) -> Vec<String> {
        self.fixed.iter().chain(&run.point).map(|(k, v)| format!("{k}={}", value_text(v))).collect()
    }
}

fn to_json(v: &toml::Value) -> serde_json::Value {
    serde_json::to_value(v).unwrap_or(serde_json::Value::Null)
}

/// Expands `spec` over the recipe `file`: the runs with their config hashes, each checked to be a
/// valid recipe for its method.
pub fn plan(file: &RecipeFile, spec: &Spec) -> Result<Plan> {
    let resolved = file.resolve(Some(&spec.profile))?;
    let base_table = toml::Table::try_from(&resolved).context("recipe as a table")?;
    let fixed: Vec<(String, toml::Value)> =
        spec.fixed.iter().map(|(k, v)| (k.clone(), coerce(&base_table, k, v.clone()))).collect();
    let base = resolved.with_overrides(&file.path, &fixed)?;
    if base.data.validation_size.is_none() {
        bail!(
            "a sweep tunes on a validation split carved from the training data, never on `{}`: set \
             data.validation_size in profile `{}` of {} or pass --validation-size N",
            base.data.eval_split,
            spec.profile,
            file.path.display()
        );
    }
    let exp = base.experiment.name.clone();
    let seeds = spec.seeds.clone().unwrap_or_else(|| base.experiment.seeds.clone());
    let variants = spec.variants.clone().unwrap_or_else(|| base.experiment.variants.clone());
    if seeds.is_empty() || variants.is_empty() {
        bail!("a sweep needs at least one seed and one variant");
    }
    for v in &variants {
        if !base.experiment.variants.contains(v) {
            bail!("variant `{v}` is not in the recipe's variants {:?}", base.experiment.variants);
        }
    }
    let raw_points = points(&spec.params, spec.random, spec.seed)?;
    let points: Vec<Point> = raw_points
        .into_iter()
        .map(|pt| pt.into_iter().map(|(k, v)| (k.clone(), coerce(&base_table, &k, v))).collect())
        .collect();
    let swept: Vec<String> = spec.params.iter().map(|p| p.key.clone()).collect();
    let mode = if spec.random.is_some() { "random" } else { "grid" };
    let sweep_id = short(&config_hash(&serde_json::json!({
        "experiment": exp,
        "profile": spec.profile,
        "fixed": fixed.iter().map(|(k, v)| (k.clone(), to_json(v))).collect::<Vec<_>>(),
        "points": points.iter().map(|p| p.iter().map(|(k, v)| (k.clone(), to_json(v))).collect::<Vec<_>>()).collect::<Vec<_>>(),
    }))?)
    .to_string();

    let mut runs = Vec::new();
    let mut configs: Vec<ConfigLine> = Vec::new();
    let mut recipes: BTreeMap<String, (Recipe, String)> = BTreeMap::new(); // point text -> recipe, hash
    let mut seen = BTreeSet::new();
    for pt in &points {
        for &seed in &seeds {
            for variant in &variants {
                // `plain` is CE-only: it never reads [distill], so distill.* points share its run.
                let point: Point = if variant == "plain" {
                    pt.iter().filter(|(k, _)| !k.starts_with("distill.")).cloned().collect()
                } else {
                    pt.clone()
                };
                let sets: Vec<(String, toml::Value)> = fixed.iter().chain(&point).cloned().collect();
                let text =
                    sets.iter().map(|(k, v)| format!("{k}={}", value_text(v))).collect::<Vec<_>>().join(" ");
                if !recipes.contains_key(&text) {
                    // Exactly what `kd reproduce --profile P --set …` resolves.
                    let recipe = resolved
                        .with_overrides(&file.path, &sets)
                        .with_context(|| format!("sweep point {text}"))?;
                    kd_run::registry::ParsedMethod::parse(&recipe)
                        .with_context(|| format!("sweep point {text}"))?;
                    let hash = recipe_hash(&recipe)?;
                    let mut cleared = recipe.clone();
                    cleared.experiment.seeds.clear();
                    configs.push(ConfigLine {
                        config_hash: hash.clone(),
                        experiment: exp.clone(),
                        profile: spec.profile.clone(),
                        sweep: sweep_id.clone(),
                        mode: mode.to_string(),
                        swept: swept.clone(),
                        overrides: point.iter().map(|(k, v)| (k.clone(), to_json(v))).collect(),
                        set: sets.iter().map(|(k, v)| format!("{k}={}", value_text(v))).collect(),
                        recipe: serde_json::to_value(&cleared)?,
                    });
                    recipes.insert(text.clone(), (recipe, hash));
                }
                let hash = recipes[&text].1.clone();
                if seen.insert((hash.clone(), variant.clone(), seed)) {
                    runs.push(Run {
                        task: runs.len(),
                        point,
                        seed,
                        variant: variant.clone(),
                        config_hash: hash,
                    });
                }
            }
        }
    }
    Ok(Plan { experiment: exp, profile: spec.profile.clone(), sweep_id, fixed, points, runs, configs })
}

// ---------------------------------------------------------------------------------------------
// Slurm

/// Writes `dir/manifest.tsv` (one line per run: task, config hash, variant, seed, the `--set`
/// overrides separated by spaces) and `dir/sweep.sbatch`. Returns the script's path.
pub fn emit_slurm(
    plan: &Plan,
    dir: &Path,
    paths: &Paths,
    explicit: &[(&str, &Path)],
    jobs: usize,
    sbatch: &[String],
) -> Result<PathBuf> {
    std::fs::create_dir_all(dir.join("logs")).with_context(|| format!("creating {}", dir.display()))?;
    let dir = dir.canonicalize()?;
    let mut manifest = String::new();
    for r in &plan.runs {
        let sets = plan.sets(r);
        if let Some(s) = sets.iter().find(|s| s.chars().any(char::is_whitespace)) {
            bail!("--emit slurm: the override `{s}` contains whitespace, which the manifest cannot hold");
        }
        writeln!(manifest, "{}\t{}\t{}\t{}\t{}", r.task, r.config_hash, r.variant, r.seed, sets.join(" "))?;
    }
    let manifest_path = dir.join("manifest.tsv");
    std::fs::write(&manifest_path, &manifest)
        .with_context(|| format!("writing {}", manifest_path.display()))?;

    let q = |s: &str| format!("'{}'", s.replace('\'', "'\\''"));
    let n = plan.runs.len();
    let exe = std::env::current_exe().context("locating the kd binary")?;
    let root = paths.root.canonicalize().unwrap_or_else(|_| paths.root.clone());
    let mut s = String::new();
    writeln!(s, "#!/bin/bash")?;
    writeln!(
        s,
        "# kd sweep {} --profile {}: {n} runs, one array task per line of manifest.tsv",
        plan.experiment, plan.profile
    )?;
    writeln!(
        s,
        "# (task id, config hash, variant, seed, --set overrides). Written by kd sweep --emit slurm."
    )?;
    writeln!(s, "#   submit:        sbatch {}", dir.join("sweep.sbatch").display())?;
    writeln!(s, "#   one task here: SLURM_ARRAY_TASK_ID=0 bash {}", dir.join("sweep.sbatch").display())?;
    writeln!(
        s,
        "# Each task is `kd reproduce`: rows are appended to results/{}.csv under its file lock,",
        plan.experiment
    )?;
    writeln!(s, "# a finished run is skipped and a requeued one resumes from its checkpoint.")?;
    writeln!(s, "#SBATCH --job-name=kd-sweep-{}", plan.experiment)?;
    if jobs > 1 {
        writeln!(s, "#SBATCH --array=0-{}%{jobs}", n - 1)?;
    } else {
        writeln!(s, "#SBATCH --array=0-{}", n - 1)?;
    }
    writeln!(s, "#SBATCH --output={}/logs/%A_%a.out", dir.display())?;
    for o in sbatch {
        writeln!(s, "#SBATCH {o}")?;
    }
    writeln!(s, "set -euo pipefail")?;
    writeln!(s, "set -f  # overrides are literal text, never globs")?;
    writeln!(s, "ROOT=\"${{KD_ROOT:-{}}}\"", root.display())?;
    writeln!(s, "KD=\"${{KD_BIN:-{}}}\"", exe.display())?;
    writeln!(s, "MANIFEST=\"${{KD_MANIFEST:-{}}}\"", manifest_path.display())?;
    for var in ["HF_HOME", "HF_HUB_OFFLINE", "KD_CACHE_DIR", "KD_TEACHERS_DIR"] {
        if let Ok(v) = std::env::var(var) {
            writeln!(s, "export {var}=\"${{{var}:-{v}}}\"")?;
        }
    }
    writeln!(s, ": \"${{SLURM_ARRAY_TASK_ID:?is not set: submit with sbatch, or set it to run one task}}\"")?;
    writeln!(s, "LINE=\"$(awk -F'\\t' -v t=\"$SLURM_ARRAY_TASK_ID\" '$1 == t' \"$MANIFEST\")\"")?;
    writeln!(s, "if [ -z \"$LINE\" ]; then echo \"task $SLURM_ARRAY_TASK_ID: no such line in $MANIFEST\" >&2; exit 2; fi")?;
    writeln!(s, "IFS=$'\\t' read -r TASK HASH VARIANT SEED SETS <<< \"$LINE\"")?;
    writeln!(s, "ARGS=()")?;
    writeln!(s, "for kv in $SETS; do ARGS+=(--set \"$kv\"); done")?;
    writeln!(s, "cd \"$ROOT\"")?;
    writeln!(s, "echo \"task $TASK: config ${{HASH:0:12}} $VARIANT seed $SEED\" >&2")?;
    let mut extra = String::new();
    for (flag, p) in explicit {
        write!(extra, " {flag} {}", q(&p.display().to_string()))?;
    }
    writeln!(
        s,
        "exec \"$KD\" reproduce {} --profile {} --seeds \"$SEED\" --variants \"$VARIANT\"{extra} \"${{ARGS[@]}}\"",
        q(&plan.experiment),
        q(&plan.profile)
    )?;
    let script = dir.join("sweep.sbatch");
    std::fs::write(&script, s).with_context(|| format!("writing {}", script.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))?;
    }
    Ok(script)
}

// ---------------------------------------------------------------------------------------------
// Running

#[derive(Parser)]
struct ReproduceCli {
    #[command(flatten)]
    args: reproduce::Args,
}

/// `kd reproduce` arguments for the runs of one configuration.
fn reproduce_argv(
    plan: &Plan,
    sets: &[String],
    seeds: &[u64],
    variants: &[String],
    explicit: &[(&str, &Path)],
) -> Vec<String> {
    let mut a = vec![
        "reproduce".to_string(),
        plan.experiment.clone(),
        "--profile".into(),
        plan.profile.clone(),
        "--seeds".into(),
        seeds.iter().map(u64::to_string).collect::<Vec<_>>().join(","),
        "--variants".into(),
        variants.join(","),
    ];
    for (flag, p) in explicit {
        a.push(flag.to_string());
        a.push(p.display().to_string());
    }
    for s in sets {
        a.push("--set".into());
        a.push(s.clone());
    }
    a
}

pub fn run(args: Args) -> Result<()> {
    let t0 = Instant::now();
    let paths =
        Paths::for_profile(args.recipes.clone(), args.results.clone(), args.runs.clone(), &args.profile)?;
    let file = load_recipe_file(&paths.recipes, &args.experiment)?;
    let params: Vec<Param> = args
        .grid
        .iter()
        .map(|g| parse_param(g).map_err(|e| anyhow::anyhow!("--grid {e}")))
        .collect::<Result<_>>()?;
    let mut fixed = Vec::new();
    for s in &args.set {
        let (k, v) = s.split_once('=').with_context(|| format!("--set `{s}` is not key=value"))?;
        check_key(k.trim(), s).map_err(|e| anyhow::anyhow!("--set {e}"))?;
        fixed.push((k.trim().to_string(), parse_value(v.trim())));
    }
    if let Some(n) = args.validation_size {
        fixed.push(("data.validation_size".into(), toml::Value::Integer(n as i64)));
    }
    if let Some(s) = args.validation_seed {
        fixed.push(("data.validation_seed".into(), toml::Value::Integer(s as i64)));
    }
    let spec = Spec {
        profile: args.profile.clone(),
        params,
        random: args.random,
        seed: args.seed,
        seeds: args.seeds.clone(),
        variants: args.variants.clone(),
        fixed,
    };
    let plan = plan(&file, &spec)?;
    let csv = paths.results.join(format!("{}.csv", plan.experiment));
    let existing = plan.rows(&csv)?;
    let done = |r: &Run| {
        existing.iter().any(|x| {
            x.config_hash == r.config_hash
                && x.variant == r.variant
                && x.seed == r.seed
                && x.role != "teacher"
        })
    };
    let n_done = plan.runs.iter().filter(|r| done(r)).count();
    eprintln!(
        "sweep {} of {} (profile {}): {} point(s) × seeds × variants = {} run(s), {} already done",
        plan.sweep_id,
        plan.experiment,
        plan.profile,
        plan.points.len(),
        plan.runs.len(),
        n_done
    );
    for r in &plan.runs {
        let pt = r.point.iter().map(|(k, v)| format!("{k}={}", value_text(v))).collect::<Vec<_>>().join(" ");
        eprintln!(
            "  [{:>3}] {} {:<6} seed {:<3} {}{}",
            r.task,
            short(&r.config_hash),
            r.variant,
            r.seed,
            if pt.is_empty() { "(base)".to_string() } else { pt },
            if done(r) { "  done" } else { "" }
        );
    }
    if args.dry_run {
        return Ok(());
    }
    let explicit_owned: Vec<(&str, PathBuf)> =
        [("--recipes", &args.recipes), ("--results", &args.results), ("--runs", &args.runs)]
            .into_iter()
            .filter_map(|(f, p)| {
                p.as_ref().map(|p| (f, std::path::absolute(p).unwrap_or_else(|_| p.clone())))
            })
            .collect();
    let explicit: Vec<(&str, &Path)> = explicit_owned.iter().map(|(f, p)| (*f, p.as_path())).collect();
    let configs = configs_path(&paths.results, &plan.experiment);
    record_configs(&configs, &plan.configs)?;

    match args.emit.as_slice() {
        [] => {}
        [kind, dir] if kind == "slurm" => {
            let script = emit_slurm(&plan, Path::new(dir), &paths, &explicit, args.jobs, &args.sbatch)?;
            eprintln!(
                "wrote {} ({} array tasks) and {}; configurations in {}\nsubmit with: sbatch {}",
                script.display(),
                plan.runs.len(),
                script.with_file_name("manifest.tsv").display(),
                configs.display(),
                script.display()
            );
            return Ok(());
        }
        [kind, _] => bail!("--emit {kind}: the only kind is `slurm` (--emit slurm DIR)"),
        _ => bail!("--emit takes a kind and a folder: --emit slurm DIR"),
    }

    // One `kd reproduce` per configuration, with that configuration's seeds and variants
    // (reproduce skips the finished ones itself and resumes a killed one).
    // (config hash, --set texts, seeds, variants)
    type Group = (String, Vec<String>, BTreeSet<u64>, Vec<String>);
    let mut groups: Vec<Group> = Vec::new();
    for r in plan.runs.iter().filter(|r| !done(r)) {
        let sets = plan.sets(r);
        match groups.iter_mut().find(|g| g.0 == r.config_hash) {
            Some(g) => {
                g.2.insert(r.seed);
                if !g.3.contains(&r.variant) {
                    g.3.push(r.variant.clone());
                }
            }
            None => groups.push((r.config_hash.clone(), sets, [r.seed].into(), vec![r.variant.clone()])),
        }
    }
    let mut failed: Vec<String> = Vec::new();
    if args.jobs <= 1 {
        for (i, (hash, sets, seeds, variants)) in groups.iter().enumerate() {
            eprintln!(
                "\n=== sweep point {}/{}: config {} {}",
                i + 1,
                groups.len(),
                short(hash),
                sets.join(" ")
            );
            let seeds: Vec<u64> = seeds.iter().copied().collect();
            let argv = reproduce_argv(&plan, sets, &seeds, variants, &explicit);
            let cli = ReproduceCli::try_parse_from(
                std::iter::once("kd reproduce".to_string()).chain(argv[1..].iter().cloned()),
            )
            .map_err(|e| anyhow::anyhow!("kd {}: {e}", argv.join(" ")))?;
            if let Err(e) = reproduce::run(cli.args) {
                eprintln!("sweep point {} failed: {e:#}", short(hash));
                failed.push(format!("{} ({e:#})", short(hash)));
            }
        }
    } else {
        let exe = std::env::current_exe().context("locating the kd binary")?;
        let mut queue: std::collections::VecDeque<_> = groups.iter().collect();
        let mut running: Vec<(Child, String, PathBuf)> = Vec::new();
        while !queue.is_empty() || !running.is_empty() {
            while running.len() < args.jobs {
                let Some((hash, sets, seeds, variants)) = queue.pop_front() else { break };
                let seeds: Vec<u64> = seeds.iter().copied().collect();
                let argv = reproduce_argv(&plan, sets, &seeds, variants, &explicit);
                let log_dir = paths.runs.join(&plan.experiment).join(short(hash));
                std::fs::create_dir_all(&log_dir)?;
                let log = log_dir.join("sweep.log");
                let out =
                    std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
                let child = Command::new(&exe)
                    .args(&argv)
                    .current_dir(&paths.root)
                    .stdout(out.try_clone()?)
                    .stderr(out)
                    .stdin(Stdio::null())
                    .spawn()
                    .with_context(|| format!("starting {} {}", exe.display(), argv.join(" ")))?;
                eprintln!("started config {} ({}), log {}", short(hash), sets.join(" "), log.display());
                running.push((child, hash.clone(), log));
            }
            std::thread::sleep(Duration::from_millis(200));
            let mut i = 0;
            while i < running.len() {
                if let Some(status) = running[i].0.try_wait()? {
                    let (_, hash, log) = running.remove(i);
                    if status.success() {
                        eprintln!("finished config {}", short(&hash));
                    } else {
                        eprintln!("config {} failed ({status}); see {}", short(&hash), log.display());
                        failed.push(format!("{} (log {})", short(&hash), log.display()));
                    }
                } else {
                    i += 1;
                }
            }
        }
    }
    let rows = plan.rows(&csv)?;
    let finished = plan
        .runs
        .iter()
        .filter(|r| {
            rows.iter().any(|x| {
                x.config_hash == r.config_hash
                    && x.variant == r.variant
                    && x.seed == r.seed
                    && x.role != "teacher"
            })
        })
        .count();
    eprintln!(
        "\nsweep {}: {finished}/{} runs have rows in {} ({:.0}s). Read it with:\n  kd compare {} --profile {} --split '{}' --by {}",
        plan.sweep_id,
        plan.runs.len(),
        csv.display(),
        t0.elapsed().as_secs_f64(),
        csv.display(),
        plan.profile,
        kd_run::validation::VALIDATION_SPLIT,
        spec.params.iter().map(|p| p.key.as_str()).collect::<Vec<_>>().join(",")
    );
    if !failed.is_empty() {
        bail!("{} sweep configuration(s) failed: {}", failed.len(), failed.join("; "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(p: &Param) -> Vec<String> {
        match &p.axis {
            Axis::Values(v) => v.iter().map(value_text).collect(),
            Axis::Range { .. } => panic!("a range"),
        }
    }

    #[test]
    fn parses_value_lists() {
        let p = parse_param("distill.temperature=1,2,4,8").unwrap();
        assert_eq!(p.key, "distill.temperature");
        assert_eq!(values(&p), ["1", "2", "4", "8"]);
        let p = parse_param(" distill.alpha = 0.5, 0.9 ").unwrap();
        assert_eq!(p.axis, Axis::Values(vec![toml::Value::Float(0.5), toml::Value::Float(0.9)]));
        // Arrays and strings stay whole; bare words are strings, as with --set.
        let p = parse_param("train.lr_schedule.milestones=[2,4],[3,5]").unwrap();
        assert_eq!(values(&p), ["[2, 4]", "[3, 5]"]);
        let p = parse_param("student.arch=resnet8,\"resnet20\"").unwrap();
        assert_eq!(values(&p), ["\"resnet8\"", "\"resnet20\""]);
    }

    #[test]
    fn parses_ranges() {
        assert_eq!(
            parse_param("train.optimizer.lr=log:1e-3..1e-1").unwrap().axis,
            Axis::Range { lo: 1e-3, hi: 1e-1, scale: Scale::Log }
        );
        assert_eq!(
            parse_param("distill.alpha=0.1..0.9").unwrap().axis,
            Axis::Range { lo: 0.1, hi: 0.9, scale: Scale::Linear }
        );
        assert_eq!(
            parse_param("train.epochs=int:2..5").unwrap().axis,
            Axis::Range { lo: 2.0, hi: 5.0, scale: Scale::Int }
        );
    }

    #[test]
    fn bad_input_gets_a_clear_error() {
        let cases = [
            ("distill.temperature", "is not KEY=VALUES"),
            ("=1,2", "key before `=` is empty"),
            ("distill..alpha=1", "not a dotted recipe key"),
            ("distill.alpha=", "no values"),
            ("distill.alpha=0.5,,0.9", "empty value"),
            ("distill.alpha=0.5,0.5", "listed twice"),
            ("distill.alpha=0.9..0.1", "empty or reversed"),
            ("lr=log:0..1", "positive bounds"),
            ("lr=log:1e-3", "lo..hi"),
            ("lr=0.1..x", "`x` is not a finite number"),
            ("train.epochs=int:1.5..3", "integer bounds"),
        ];
        for (input, want) in cases {
            let e = parse_param(input).unwrap_err();
            assert!(e.contains(want), "{input}: {e}");
        }
        let range = parse_param("distill.alpha=0.1..0.9").unwrap();
        let e = points(std::slice::from_ref(&range), None, 0).unwrap_err().to_string();
        assert!(e.contains("--random N"), "{e}");
        let e = points(&[range.clone(), range.clone()], Some(3), 0).unwrap_err().to_string();
        assert!(e.contains("swept twice"), "{e}");
        assert!(points(&[range], Some(0), 0).unwrap_err().to_string().contains("--random 0"));
        assert!(points(&[], None, 0).unwrap_err().to_string().contains("nothing to sweep"));
    }

    #[test]
    fn grid_is_the_product_with_the_first_key_slowest() {
        let a = parse_param("a.x=1,2").unwrap();
        let b = parse_param("a.y=0.5,0.9,1.0").unwrap();
        let pts = points(&[a, b], None, 0).unwrap();
        let text: Vec<String> =
            pts.iter().map(|p| p.iter().map(|(_, v)| value_text(v)).collect::<Vec<_>>().join("/")).collect();
        assert_eq!(text, ["1/0.5", "1/0.9", "1/1.0", "2/0.5", "2/0.9", "2/1.0"]);
    }

    #[test]
    fn random_samples_are_seeded_in_range_and_round_trip() {
        let params = [
            parse_param("train.optimizer.lr=log:1e-3..1e-1").unwrap(),
            parse_param("distill.alpha=0.1..0.9").unwrap(),
            parse_param("train.epochs=int:2..4").unwrap(),
            parse_param("distill.temperature=1,2,4,8").unwrap(),
        ];
        let a = points(&params, Some(40), 7).unwrap();
        assert_eq!(a, points(&params, Some(40), 7).unwrap(), "same seed, same points");
        assert_ne!(a, points(&params, Some(40), 8).unwrap(), "another seed, other points");
        let mut temps = BTreeSet::new();
        let mut epochs = BTreeSet::new();
        for p in &a {
            let lr = p[0].1.as_float().unwrap();
            let alpha = p[1].1.as_float().unwrap();
            assert!((1e-3..=1e-1).contains(&lr) && (0.1..=0.9).contains(&alpha), "{p:?}");
            // Four significant digits.
            assert_eq!(lr, round_sig(lr));
            epochs.insert(p[2].1.as_integer().unwrap());
            temps.insert(value_text(&p[3].1));
            // What the manifest writes, `kd reproduce --set` reads back as the same value.
            for (_, v) in p {
                assert_eq!(&parse_value(&value_text(v)), v);
            }
        }
        assert_eq!(epochs, [2, 3, 4].into(), "int range covers both ends");
        assert_eq!(temps.len(), 4, "every listed value drawn in 40 samples");
        // Log-uniform: about half the samples below the geometric middle 1e-2.
        let below = a.iter().filter(|p| p[0].1.as_float().unwrap() < 1e-2).count();
        assert!((10..=30).contains(&below), "{below} of 40 below 1e-2");
    }

    #[test]
    fn integers_become_floats_where_the_recipe_has_floats() {
        let t: toml::Table = toml::from_str("[distill]\ntemperature = 4.0\n[train]\nepochs = 3").unwrap();
        assert_eq!(coerce(&t, "distill.temperature", toml::Value::Integer(2)), toml::Value::Float(2.0));
        assert_eq!(coerce(&t, "train.epochs", toml::Value::Integer(2)), toml::Value::Integer(2));
        assert_eq!(coerce(&t, "distill.new_key", toml::Value::Integer(2)), toml::Value::Integer(2));
    }
}
