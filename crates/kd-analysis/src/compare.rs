//! `kd compare [CSV…]`: one line per group of results rows (by default method × variant × role
//! within each experiment) with n, mean ± sample std and 95% CI of the last-epoch value, the
//! best-epoch mean, and for distilled groups the gain over the plain student of the same
//! experiment and configuration, with a paired t-test across the seeds both have.
//!
//! By default each experiment shows only its newest configuration (the config hash of its most
//! recently started run): a re-sized profile's runs sit beside the old ones in the same CSV, and
//! the old ones are listed as left out, not averaged in. `--configs all`, or `config_hash` or a
//! recipe key in `--by`, keeps every configuration. A group whose rows still come from several
//! configuration hashes is flagged and its hashes listed: averaging runs of different
//! configurations is how irreproducible numbers are born.
//!
//! `--by` also takes recipe keys (`--by distill.temperature,distill.alpha`), read from the
//! configuration each row's hash names: a sweep records its configurations in
//! `results/<experiment>.configs.jsonl`, and the current recipe's profiles resolve to theirs.
//! Grouping by recipe keys always separates variants and roles; a `plain` row has no
//! `distill.*` value (—), and a distilled row is paired with the plain run whose configuration
//! is the same apart from `[distill]`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use kd_core::hash::short;
use kd_core::recipe_hash::HashAliases;
use kd_core::results::{read_rows, ResultRow};

use crate::stats::{paired_t_test, PairedTest, Summary};

/// Columns a group can be keyed by.
pub const GROUP_KEYS: &[&str] = &[
    "experiment",
    "method",
    "variant",
    "role",
    "model",
    "profile",
    "dataset",
    "config_hash",
    "split",
    "device",
];

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// An aligned text table.
    Table,
    /// CSV with full-precision numbers.
    Csv,
    /// A Markdown table.
    Md,
}

/// Which configurations of an experiment `kd compare` shows.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Configs {
    /// Only the configuration of the experiment's most recently started run.
    Newest,
    /// Every configuration (groups that mix them are flagged).
    All,
}

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Results CSVs (default: every results/*.csv).
    pub csv: Vec<PathBuf>,
    /// Columns to group by, within each experiment: any of experiment, method, variant, role,
    /// model, profile, dataset, config_hash, split, device, or dotted recipe keys such as
    /// distill.temperature (variant and role are then added).
    #[arg(long, value_delimiter = ',', default_value = "method,variant,role")]
    pub by: Vec<String>,
    /// Only rows of this profile (e.g. `sweep`).
    #[arg(long)]
    pub profile: Option<String>,
    /// Per experiment, only its newest configuration (default) or all of them; `--by
    /// config_hash` or a recipe key implies `all`.
    #[arg(long, value_enum, default_value_t = Configs::Newest)]
    pub configs: Configs,
    /// Folder of recipes whose profiles give recipe-key values (default: <root>/benchmarks).
    #[arg(long)]
    pub recipes: Option<PathBuf>,
    /// The metric to compare (top1, top5, accuracy, f1, mcc, pearson, spearman); default top1,
    /// or for experiments without it (GLUE) their first metric.
    #[arg(long)]
    pub metric: Option<String>,
    /// Only rows evaluated on this split.
    #[arg(long)]
    pub split: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// Folder of results CSVs used when none are given (default: <root>/results).
    #[arg(long)]
    pub results: Option<PathBuf>,
}

/// One line of the comparison.
#[derive(Debug, Clone)]
pub struct Group {
    pub experiment: String,
    /// The `--by` columns' values, in `--by` order.
    pub keys: Vec<String>,
    /// Last-epoch values (`value`), one per row.
    pub last: Summary,
    /// Best-epoch values (`best_value`).
    pub best: Summary,
    /// The configuration hashes in the group with their row counts; more than one is flagged.
    pub config_hashes: Vec<(String, usize)>,
    /// Gain over the plain student of the same experiment and configuration, paired by seed.
    pub gain: Option<PairedTest>,
    /// The group's rows (after duplicates were dropped).
    pub rows: Vec<ResultRow>,
}

impl Group {
    pub fn mixed(&self) -> bool {
        self.config_hashes.len() > 1
    }
    fn is_teacher(&self) -> bool {
        self.rows.iter().all(|r| r.role == "teacher")
    }
    fn is_plain(&self) -> bool {
        self.rows.iter().all(|r| r.variant == "plain")
    }
    /// The key of a recipe's `[published]` values this group stands for, as `kd report`
    /// labels its lines: `teacher`, `plain`, a distilled student's variant, or `<variant>
    /// <role>` for one model of a run with several (`dml peer-1`, `byot exit-4`).
    fn published_label(&self) -> Option<String> {
        if self.is_teacher() {
            return Some("teacher".into());
        }
        if self.is_plain() {
            return Some("plain".into());
        }
        let first = self.rows.first()?;
        let one_line = self.rows.iter().all(|r| r.variant == first.variant && r.role == first.role);
        one_line.then(|| {
            if first.role == "student" {
                first.variant.clone()
            } else {
                format!("{} {}", first.variant, first.role)
            }
        })
    }
    /// Teachers first, then plain students, then the rest.
    fn rank(&self) -> u8 {
        if self.is_teacher() {
            0
        } else if self.is_plain() {
            1
        } else {
            2
        }
    }
}

/// The result of grouping: the groups and how many duplicate rows (a run re-done with `--force`)
/// were dropped in favour of the later row.
#[derive(Debug, Clone)]
pub struct Comparison {
    pub by: Vec<String>,
    pub metric: String,
    pub groups: Vec<Group>,
    pub duplicates_dropped: usize,
    /// Older configurations left out by [`newest_configs`], listed under the table.
    pub left_out: Vec<LeftOut>,
    /// Experiments whose rows lack the compared metric, with the metrics they have (a GLUE
    /// task's `accuracy`, `mcc`, …): named under the table, never dropped silently.
    pub other_metrics: Vec<(String, Vec<String>)>,
    /// Each experiment's recipe `[published]` table, when it has one: a `published` column
    /// beside the measured numbers, and a note naming the paper and its setting.
    pub published: BTreeMap<String, kd_core::recipe::Published>,
}

/// `profile` and/or `split`, when some experiment's rows span several of them and `by` does not
/// already group by them (so groups never mix a headline with validation rows).
pub fn distinguishing_keys(rows: &[ResultRow], by: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    for (key, value) in [
        ("profile", (|r: &ResultRow| r.profile.as_str()) as fn(&ResultRow) -> &str),
        ("split", |r| r.split.as_str()),
    ] {
        if by.iter().any(|b| b == key) {
            continue;
        }
        let mut seen: BTreeMap<&str, &str> = BTreeMap::new();
        if rows.iter().any(|r| *seen.entry(&r.experiment).or_insert(value(r)) != value(r)) {
            out.push(key.to_string());
        }
    }
    out
}

/// The `[published]` table of each experiment of `rows` whose recipe (in `recipes`, or the
/// project's benchmarks/) has one. A recipe that is missing or does not parse has none here
/// (`kd reproduce` is where its errors belong).
pub fn published_tables(
    recipes: Option<&std::path::Path>,
    rows: &[ResultRow],
) -> BTreeMap<String, kd_core::recipe::Published> {
    let dir = match recipes {
        Some(d) => d.to_path_buf(),
        None => match kd_run::env::project_root() {
            Ok(root) => root.join("benchmarks"),
            Err(_) => return BTreeMap::new(),
        },
    };
    let experiments: std::collections::BTreeSet<&str> = rows.iter().map(|r| r.experiment.as_str()).collect();
    experiments
        .into_iter()
        .filter_map(|e| {
            let file = kd_core::recipe::RecipeFile::load(dir.join(format!("{e}.toml"))).ok()?;
            Some((e.to_string(), file.resolve(None).ok()?.published?))
        })
        .collect()
}

/// The experiments of `rows` with no row of `metric`, each with the metrics it has (sorted).
pub fn without_metric(rows: &[ResultRow], metric: &str) -> Vec<(String, Vec<String>)> {
    let mut metrics: BTreeMap<&str, std::collections::BTreeSet<&str>> = BTreeMap::new();
    for r in rows {
        metrics.entry(&r.experiment).or_default().insert(&r.metric);
    }
    metrics
        .into_iter()
        .filter(|(_, m)| !m.contains(metric))
        .map(|(e, m)| (e.to_string(), m.into_iter().map(str::to_string).collect()))
        .collect()
}

/// A sample standard deviation as printed: `—` when fewer than two values give none.
fn fmt_spread(n: usize, std: f64, decimals: usize) -> String {
    if n < 2 {
        "—".into()
    } else {
        fmt_num(std, decimals)
    }
}

/// An experiment's configuration that [`newest_configs`] left out.
#[derive(Debug, Clone, PartialEq)]
pub struct LeftOut {
    pub experiment: String,
    pub config_hash: String,
    pub rows: usize,
    /// When its newest run started (the CSV's `started_at`).
    pub last_started: String,
}

/// Keeps, per experiment, profile and split, the rows of its newest configuration: the config
/// hash of the row with the latest `started_at` (ties: the later row in the input), so a sweep's
/// validation rows or a smoke run never hide the `cpu` headline on the test split. Returns the
/// kept rows, in input order, and what was left out per experiment and configuration.
pub fn newest_configs(rows: Vec<ResultRow>) -> (Vec<ResultRow>, Vec<LeftOut>) {
    type Slot<'a> = (&'a str, &'a str, &'a str);
    let mut newest: BTreeMap<Slot, (&str, &str)> = BTreeMap::new();
    for r in &rows {
        let slot = (r.experiment.as_str(), r.profile.as_str(), r.split.as_str());
        let e = newest.entry(slot).or_insert((&r.started_at, &r.config_hash));
        if r.started_at.as_str() >= e.0 {
            *e = (&r.started_at, &r.config_hash);
        }
    }
    let newest: BTreeMap<(String, String, String), String> = newest
        .into_iter()
        .map(|((e, p, s), (_, h))| ((e.to_string(), p.to_string(), s.to_string()), h.to_string()))
        .collect();
    let mut left: BTreeMap<(String, String), LeftOut> = BTreeMap::new();
    let mut kept = Vec::with_capacity(rows.len());
    for r in rows {
        let slot = (r.experiment.clone(), r.profile.clone(), r.split.clone());
        if newest.get(&slot) == Some(&r.config_hash) {
            kept.push(r);
            continue;
        }
        let l = left.entry((r.experiment.clone(), r.config_hash.clone())).or_insert_with(|| LeftOut {
            experiment: r.experiment.clone(),
            config_hash: r.config_hash.clone(),
            rows: 0,
            last_started: String::new(),
        });
        l.rows += 1;
        if r.started_at > l.last_started {
            l.last_started = r.started_at.clone();
        }
    }
    (kept, left.into_values().collect())
}

pub fn key_value<'a>(row: &'a ResultRow, key: &str) -> Option<&'a str> {
    Some(match key {
        "experiment" => &row.experiment,
        "method" => &row.method,
        "variant" => &row.variant,
        "role" => &row.role,
        "model" => &row.model,
        "profile" => &row.profile,
        "dataset" => &row.dataset,
        "config_hash" => &row.config_hash,
        "split" => &row.split,
        "device" => &row.device,
        _ => return None,
    })
}

/// Reads every row of `paths`; a malformed row is an error naming its file and line.
pub fn load_rows(paths: &[PathBuf]) -> Result<Vec<ResultRow>> {
    let mut rows = Vec::new();
    for p in paths {
        rows.extend(read_rows(p).with_context(|| format!("reading results {}", p.display()))?);
    }
    Ok(rows)
}

/// `dir/*.csv`, sorted.
pub fn csvs_in(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "csv"))
        .collect();
    v.sort();
    Ok(v)
}

/// A dotted recipe key (`distill.temperature`) rather than a CSV column.
pub fn is_recipe_key(key: &str) -> bool {
    key.contains('.') && !key.starts_with('.') && !key.ends_with('.')
}

/// The resolved recipes of configuration hashes, for grouping by recipe keys.
#[derive(Debug, Default, Clone)]
pub struct ConfigIndex {
    recipes: BTreeMap<String, serde_json::Value>,
    /// Old (v1) hashes of the indexed configurations: rows carrying them are renamed.
    aliases: HashAliases,
}

impl ConfigIndex {
    pub fn insert(&mut self, hash: String, recipe: serde_json::Value) {
        self.recipes.insert(hash, recipe);
    }

    /// A resolved recipe, under its current hash and known by its v1 hash.
    pub fn insert_recipe(&mut self, recipe: &kd_core::recipe::Recipe) -> Result<String> {
        let hash = self.aliases.add_recipe(recipe)?;
        let mut r = recipe.clone();
        r.experiment.seeds.clear();
        self.insert(hash.clone(), serde_json::to_value(&r)?);
        Ok(hash)
    }

    /// A sweep's configuration line, under its recipe's current hash (a line written before
    /// the current scheme names it by its v1 hash, which becomes an alias).
    pub fn insert_line(&mut self, line: &crate::configs::ConfigLine) -> Result<String> {
        let hash = kd_core::recipe_hash::recipe_hash_of(&line.recipe)?;
        self.aliases.add(line.config_hash.clone(), hash.clone());
        self.insert(hash.clone(), line.recipe.clone());
        Ok(hash)
    }

    /// Renames rows carrying an old hash of an indexed configuration to its current hash, so
    /// rows of one configuration written before and after the hash scheme changed stay together.
    pub fn rename_rows(&self, rows: &mut [ResultRow]) {
        self.aliases.rename_rows(rows);
    }

    /// The old-to-current hash map of the indexed configurations.
    pub fn aliases(&self) -> &HashAliases {
        &self.aliases
    }

    pub fn len(&self) -> usize {
        self.recipes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.recipes.is_empty()
    }

    /// The configurations recorded beside each CSV (`<experiment>.configs.jsonl`, written by
    /// `kd sweep`) and those of every profile of `recipes/<experiment>.toml`.
    pub fn load(csvs: &[PathBuf], recipes: Option<&Path>, experiments: &[String]) -> Result<Self> {
        let mut index = ConfigIndex::default();
        if let Some(dir) = recipes {
            for exp in experiments {
                let Ok(file) = kd_run::reproduce::load_recipe_file(dir, exp) else { continue };
                for profile in file.profiles.keys() {
                    let Ok(r) = file.resolve(Some(profile)) else { continue };
                    index.insert_recipe(&r)?;
                }
            }
        }
        for csv in csvs {
            for line in crate::configs::read_configs(&csv.with_extension("configs.jsonl"))? {
                index.insert_line(&line)?;
            }
        }
        Ok(index)
    }

    /// The value of a dotted recipe key in the configuration `hash` (None: unknown hash;
    /// `Some("—")`: the key is absent from it).
    pub fn value(&self, hash: &str, key: &str) -> Option<String> {
        let mut v = self.recipes.get(hash)?;
        for part in key.split('.') {
            match v.get(part) {
                Some(x) => v = x,
                None => return Some("—".into()),
            }
        }
        Some(match v {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        })
    }

    /// The hash of the configuration without its `[distill]` section: a `plain` run (which
    /// never reads it) and a distilled run with equal keys share data, model and budget.
    pub fn plain_key(&self, hash: &str) -> Option<String> {
        let mut r = kd_core::recipe_hash::identity(self.recipes.get(hash)?);
        r.as_object_mut()?.remove("distill");
        kd_core::hash::config_hash(&r).ok()
    }
}

/// A row's value of a `--by` key: a CSV column or a recipe key.
fn group_value(row: &ResultRow, key: &str, index: &ConfigIndex) -> String {
    if let Some(v) = key_value(row, key) {
        return v.to_string();
    }
    if row.variant == "plain" && key.starts_with("distill.") {
        return "—".into();
    }
    index.value(&row.config_hash, key).unwrap_or_else(|| "?".into())
}

/// Orders two values: numerically where both are numbers, else as text.
pub fn cmp_values(x: &str, y: &str) -> std::cmp::Ordering {
    match (x.parse::<f64>(), y.parse::<f64>()) {
        (Ok(p), Ok(q)) => p.partial_cmp(&q).unwrap_or(std::cmp::Ordering::Equal),
        _ => x.cmp(y),
    }
}

/// Orders `--by` values element-wise with [`cmp_values`].
fn cmp_keys(a: &[String], b: &[String]) -> std::cmp::Ordering {
    for (x, y) in a.iter().zip(b) {
        let o = cmp_values(x, y);
        if o != std::cmp::Ordering::Equal {
            return o;
        }
    }
    a.len().cmp(&b.len())
}

/// Groups the rows of `metric` (and `split`, when given) by experiment and `by`.
pub fn compare(rows: &[ResultRow], by: &[String], metric: &str, split: Option<&str>) -> Result<Comparison> {
    compare_with(rows, by, metric, split, &ConfigIndex::default())
}

/// [`compare`], with recipe keys in `by` looked up in `index`.
pub fn compare_with(
    rows: &[ResultRow],
    by: &[String],
    metric: &str,
    split: Option<&str>,
    index: &ConfigIndex,
) -> Result<Comparison> {
    for k in by {
        if !GROUP_KEYS.contains(&k.as_str()) && !is_recipe_key(k) {
            bail!(
                "--by {k}: not a column to group by; use any of {}, or a dotted recipe key such as distill.temperature",
                GROUP_KEYS.join(", ")
            );
        }
    }
    let mut by = by.to_vec();
    if by.iter().any(|k| is_recipe_key(k)) {
        for k in ["role", "variant"] {
            if !by.iter().any(|b| b == k) {
                by.insert(0, k.to_string());
            }
        }
    }
    let by = by.as_slice();
    let selected: Vec<&ResultRow> =
        rows.iter().filter(|r| r.metric == metric && split.is_none_or(|s| r.split == s)).collect();
    // One row per run and evaluated model: a later row (a forced re-run) replaces an earlier one.
    type RunKey<'a> = (&'a str, &'a str, &'a str, &'a str, &'a str, &'a str, &'a str, u64);
    let mut latest: BTreeMap<RunKey, (usize, &ResultRow)> = BTreeMap::new();
    let mut duplicates_dropped = 0;
    for (i, r) in selected.iter().enumerate() {
        let key = (
            r.experiment.as_str(),
            &*r.method,
            &*r.variant,
            &*r.role,
            &*r.model,
            &*r.split,
            &*r.config_hash,
            r.seed,
        );
        if latest.insert(key, (i, r)).is_some() {
            duplicates_dropped += 1;
        }
    }
    let mut kept: Vec<(usize, &ResultRow)> = latest.into_values().collect();
    kept.sort_by_key(|(i, _)| *i);
    let kept: Vec<&ResultRow> = kept.into_iter().map(|(_, r)| r).collect();

    let mut by_key: BTreeMap<(String, Vec<String>), Vec<ResultRow>> = BTreeMap::new();
    for r in &kept {
        let keys: Vec<String> = by.iter().map(|k| group_value(r, k, index)).collect();
        by_key.entry((r.experiment.clone(), keys)).or_default().push((*r).clone());
    }
    let mut groups: Vec<Group> = by_key
        .into_iter()
        .map(|((experiment, keys), rows)| {
            let last: Vec<f64> = rows.iter().map(|r| r.value).collect();
            let best: Vec<f64> = rows.iter().map(|r| r.best_value).collect();
            let mut hashes: BTreeMap<String, usize> = BTreeMap::new();
            for r in &rows {
                *hashes.entry(r.config_hash.clone()).or_default() += 1;
            }
            let mut g = Group {
                experiment,
                keys,
                last: Summary::of(&last),
                best: Summary::of(&best),
                config_hashes: hashes.into_iter().collect(),
                gain: None,
                rows,
            };
            g.gain = gain_over_plain(&g, &kept, index);
            g
        })
        .collect();
    groups.sort_by(|a, b| {
        (&a.experiment, a.rank()).cmp(&(&b.experiment, b.rank())).then_with(|| cmp_keys(&a.keys, &b.keys))
    });
    Ok(Comparison {
        by: by.to_vec(),
        metric: metric.to_string(),
        groups,
        duplicates_dropped,
        left_out: Vec::new(),
        other_metrics: Vec::new(),
        published: BTreeMap::new(),
    })
}

/// For a group of one non-plain variant (not a teacher): each row paired with the plain
/// student's row of the same experiment, configuration (hash, or the same configuration apart
/// from `[distill]` when `index` knows both), split and seed.
fn gain_over_plain(g: &Group, all: &[&ResultRow], index: &ConfigIndex) -> Option<PairedTest> {
    let first = g.rows.first()?;
    if g.is_teacher() || g.rows.iter().any(|r| r.variant == "plain" || r.variant != first.variant) {
        return None;
    }
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for r in &g.rows {
        let candidates = || {
            all.iter().filter(|p| {
                p.variant == "plain"
                    && p.role == "student"
                    && p.experiment == r.experiment
                    && p.split == r.split
                    && p.seed == r.seed
            })
        };
        let plain = candidates().find(|p| p.config_hash == r.config_hash).or_else(|| {
            let key = index.plain_key(&r.config_hash)?;
            candidates().find(|p| index.plain_key(&p.config_hash).as_ref() == Some(&key))
        });
        if let Some(p) = plain {
            a.push(r.value);
            b.push(p.value);
        }
    }
    if a.is_empty() {
        return None;
    }
    Some(paired_t_test(&a, &b))
}

/// Decimals for a metric: percentages get 2, correlations 4.
pub fn decimals(metric: &str) -> usize {
    match metric {
        "pearson" | "spearman" | "mcc" => 4,
        _ => 2,
    }
}

pub fn fmt_p(p: f64) -> String {
    if p.is_nan() {
        "—".into()
    } else if p < 0.001 {
        "<0.001".into()
    } else {
        format!("{p:.3}")
    }
}

fn fmt_num(v: f64, d: usize) -> String {
    if v.is_nan() {
        "—".into()
    } else {
        format!("{v:.d$}")
    }
}

fn fmt_signed(v: f64, d: usize) -> String {
    if v.is_nan() {
        "—".into()
    } else {
        format!("{v:+.d$}")
    }
}

impl Comparison {
    /// Column headers and cells of the human-readable table, plus footnotes.
    fn cells(&self) -> (Vec<String>, Vec<Vec<String>>, Vec<String>) {
        let d = decimals(&self.metric);
        let m = &self.metric;
        let mut header: Vec<String> = vec!["experiment".into()];
        header.extend(self.by.iter().cloned());
        header.extend(
            ["n", &format!("{m} last (mean ± std)"), "95% CI", &format!("{m} best"), "gain vs plain", "p"]
                .map(String::from),
        );
        let published = |g: &Group| {
            let p = self.published.get(&g.experiment).filter(|p| p.metric == self.metric)?;
            p.values.get(&g.published_label()?).copied()
        };
        let show_published = self.groups.iter().any(|g| published(g).is_some());
        if show_published {
            header.push("published".into());
        }
        header.push("config".into());
        let mut lines = Vec::new();
        let mut notes = Vec::new();
        for g in &self.groups {
            let mut row = vec![g.experiment.clone()];
            row.extend(g.keys.iter().cloned());
            row.push(g.last.n.to_string());
            row.push(format!("{} ± {}", fmt_num(g.last.mean, d), fmt_spread(g.last.n, g.last.std, d)));
            row.push(if g.last.ci95.is_nan() {
                "—".into()
            } else {
                format!(
                    "[{}, {}]",
                    fmt_num(g.last.mean - g.last.ci95, d),
                    fmt_num(g.last.mean + g.last.ci95, d)
                )
            });
            row.push(format!("{} ± {}", fmt_num(g.best.mean, d), fmt_spread(g.best.n, g.best.std, d)));
            match &g.gain {
                Some(t) => {
                    row.push(format!("{} (n={})", fmt_signed(t.mean_diff, d), t.n));
                    row.push(fmt_p(t.p));
                }
                None => row.extend(["—".to_string(), "—".to_string()]),
            }
            if show_published {
                row.push(published(g).map(|v| fmt_num(v, d)).unwrap_or_else(|| "—".into()));
            }
            if g.mixed() {
                notes.push(format!(
                    "[{}] {} {}: {} configuration hashes averaged together: {} — add config_hash to --by to separate them",
                    notes.len() + 1,
                    g.experiment,
                    g.keys.join(" "),
                    g.config_hashes.len(),
                    g.config_hashes.iter().map(|(h, n)| format!("{} ({n} row{})", short(h), if *n == 1 { "" } else { "s" })).collect::<Vec<_>>().join(", ")
                ));
                row.push(format!("! [{}]", notes.len()));
            } else {
                row.push(g.config_hashes.first().map(|(h, _)| short(h).to_string()).unwrap_or_default());
            }
            lines.push(row);
        }
        if self.duplicates_dropped > 0 {
            notes.push(format!(
                "{} duplicate row(s) (the same run written twice) were dropped in favour of the later one",
                self.duplicates_dropped
            ));
        }
        let mut by_experiment: BTreeMap<&str, Vec<&LeftOut>> = BTreeMap::new();
        for l in &self.left_out {
            by_experiment.entry(&l.experiment).or_default().push(l);
        }
        for (experiment, mut configs) in by_experiment {
            // Newest first; the three newest named, the rest counted.
            configs.sort_by(|a, b| b.last_started.cmp(&a.last_started));
            let rows: usize = configs.iter().map(|l| l.rows).sum();
            let named: Vec<String> = configs
                .iter()
                .take(3)
                .map(|l| format!("{} ({} rows, last run {})", short(&l.config_hash), l.rows, l.last_started))
                .collect();
            let more = configs.len().saturating_sub(3);
            notes.push(format!(
                "{experiment}: newest configuration of each profile and split shown; {} older one{} left out ({rows} rows): {}{} — --configs all or --by config_hash shows them",
                configs.len(),
                if configs.len() == 1 { "" } else { "s" },
                named.join(", "),
                if more > 0 { format!(" and {more} more") } else { String::new() }
            ));
        }
        for (experiment, p) in &self.published {
            if p.metric == self.metric && self.groups.iter().any(|g| &g.experiment == experiment) {
                notes.push(format!(
                    "{experiment}: published = {} ({}), a different scale from these runs",
                    p.source, p.setting
                ));
            }
        }
        for (experiment, metrics) in &self.other_metrics {
            notes.push(format!(
                "{experiment}: no `{}` rows (its metrics: {}); --metric {} shows it",
                self.metric,
                metrics.join(", "),
                metrics.first().map(String::as_str).unwrap_or("…")
            ));
        }
        (header, lines, notes)
    }

    /// The comparison in `format`.
    pub fn render(&self, format: Format) -> Result<String> {
        let mut out = String::new();
        match format {
            Format::Table => {
                let (header, lines, notes) = self.cells();
                let widths: Vec<usize> = (0..header.len())
                    .map(|c| {
                        lines
                            .iter()
                            .map(|l| l[c].chars().count())
                            .chain([header[c].chars().count()])
                            .max()
                            .unwrap_or(0)
                    })
                    .collect();
                let numeric_from = 1 + self.by.len();
                let fmt_line = |cells: &[String]| {
                    let mut s = String::new();
                    for (c, cell) in cells.iter().enumerate() {
                        let pad = widths[c] - cell.chars().count();
                        if c > 0 {
                            s.push_str("  ");
                        }
                        if c >= numeric_from && c + 1 < cells.len() {
                            s.push_str(&" ".repeat(pad));
                            s.push_str(cell);
                        } else {
                            s.push_str(cell);
                            s.push_str(&" ".repeat(pad));
                        }
                    }
                    s.trim_end().to_string()
                };
                writeln!(out, "{}", fmt_line(&header))?;
                writeln!(out, "{}", "-".repeat(widths.iter().sum::<usize>() + 2 * (widths.len() - 1)))?;
                for l in &lines {
                    writeln!(out, "{}", fmt_line(l))?;
                }
                for n in notes {
                    writeln!(out, "{n}")?;
                }
            }
            Format::Md => {
                let (header, lines, notes) = self.cells();
                let md = |cells: &[String]| {
                    format!(
                        "| {} |",
                        cells.iter().map(|c| c.replace('|', "\\|")).collect::<Vec<_>>().join(" | ")
                    )
                };
                writeln!(out, "{}", md(&header))?;
                let numeric_from = 1 + self.by.len();
                let rule: Vec<String> =
                    (0..header.len())
                        .map(|c| {
                            if c >= numeric_from && c + 1 < header.len() {
                                "---:".into()
                            } else {
                                "---".into()
                            }
                        })
                        .collect();
                writeln!(out, "|{}|", rule.join("|"))?;
                for l in &lines {
                    writeln!(out, "{}", md(l))?;
                }
                if !notes.is_empty() {
                    writeln!(out)?;
                    for n in notes {
                        writeln!(out, "{n}  ")?;
                    }
                }
            }
            Format::Csv => {
                let mut w = csv::Writer::from_writer(Vec::new());
                let mut header: Vec<String> = vec!["experiment".into()];
                header.extend(self.by.iter().cloned());
                header.extend(
                    [
                        "metric",
                        "n",
                        "mean",
                        "std",
                        "ci95_low",
                        "ci95_high",
                        "best_mean",
                        "best_std",
                        "gain",
                        "gain_pairs",
                        "gain_p",
                        "mixed_config",
                        "config_hashes",
                    ]
                    .map(String::from),
                );
                w.write_record(&header)?;
                let num = |v: f64| if v.is_nan() { String::new() } else { v.to_string() };
                for g in &self.groups {
                    let mut rec = vec![g.experiment.clone()];
                    rec.extend(g.keys.iter().cloned());
                    rec.push(self.metric.clone());
                    rec.push(g.last.n.to_string());
                    rec.push(num(g.last.mean));
                    rec.push(num(g.last.std));
                    rec.push(num(g.last.mean - g.last.ci95));
                    rec.push(num(g.last.mean + g.last.ci95));
                    rec.push(num(g.best.mean));
                    rec.push(num(g.best.std));
                    rec.push(g.gain.map(|t| num(t.mean_diff)).unwrap_or_default());
                    rec.push(g.gain.map(|t| t.n.to_string()).unwrap_or_default());
                    rec.push(g.gain.map(|t| num(t.p)).unwrap_or_default());
                    rec.push(g.mixed().to_string());
                    rec.push(g.config_hashes.iter().map(|(h, _)| h.as_str()).collect::<Vec<_>>().join(";"));
                    w.write_record(&rec)?;
                }
                out = String::from_utf8(w.into_inner().map_err(|e| anyhow::anyhow!("{e}"))?)?;
            }
        }
        Ok(out)
    }
}

pub fn run(args: Args) -> Result<()> {
    let files = if args.csv.is_empty() {
        let dir = match &args.results {
            Some(d) => d.clone(),
            None => kd_run::env::project_root()?.join("results"),
        };
        let files = csvs_in(&dir)?;
        if files.is_empty() {
            bail!("no results CSVs in {}; run `kd reproduce <experiment>` first", dir.display());
        }
        files
    } else {
        args.csv.clone()
    };
    let mut rows = load_rows(&files)?;
    if let Some(p) = &args.profile {
        rows.retain(|r| &r.profile == p);
    }
    // Always: rows of one configuration may carry its old and its current hash.
    let recipes = match &args.recipes {
        Some(d) => Some(d.clone()),
        None => kd_run::env::project_root().ok().map(|r| r.join("benchmarks")),
    };
    let mut exps: Vec<String> = rows.iter().map(|r| r.experiment.clone()).collect();
    exps.sort();
    exps.dedup();
    let index = ConfigIndex::load(&files, recipes.as_deref().filter(|d| d.is_dir()), &exps)?;
    index.rename_rows(&mut rows);
    let separates_configs = args.by.iter().any(|k| k == "config_hash" || is_recipe_key(k));
    let mut left_out = Vec::new();
    let mut by = args.by.clone();
    if args.configs == Configs::Newest && !separates_configs {
        (rows, left_out) = newest_configs(rows);
        // An experiment that keeps several configurations (one per profile and split: the cpu
        // headline and a sweep's validation rows) shows which is which, in columns of their own.
        by.extend(distinguishing_keys(&rows, &by));
    }
    let metric = args.metric.clone().unwrap_or_else(|| {
        if rows.iter().any(|r| r.metric == "top1") {
            "top1".to_string()
        } else {
            rows.iter().map(|r| r.metric.clone()).min().unwrap_or_else(|| "top1".to_string())
        }
    });
    let mut cmp = compare_with(&rows, &by, &metric, args.split.as_deref(), &index)?;
    cmp.left_out = left_out;
    cmp.other_metrics = without_metric(&rows, &metric);
    cmp.published = published_tables(args.recipes.as_deref(), &rows);
    if cmp.groups.is_empty() {
        let metrics: std::collections::BTreeSet<&str> = rows.iter().map(|r| r.metric.as_str()).collect();
        bail!(
            "no rows with metric `{}`{} in {}; metrics present: {}",
            metric,
            args.split.as_ref().map(|s| format!(" on split `{s}`")).unwrap_or_default(),
            files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>().join(", "),
            metrics.into_iter().collect::<Vec<_>>().join(", ")
        );
    }
    if args.format == Format::Csv {
        for l in &cmp.left_out {
            eprintln!(
                "note: {} configuration {} left out ({} rows; --configs all shows it)",
                l.experiment,
                short(&l.config_hash),
                l.rows
            );
        }
        for g in cmp.groups.iter().filter(|g| g.mixed()) {
            eprintln!(
                "warning: {} {} mixes {} configuration hashes (see the config_hashes column)",
                g.experiment,
                g.keys.join(" "),
                g.config_hashes.len()
            );
        }
    }
    print!("{}", cmp.render(args.format)?);
    Ok(())
}
