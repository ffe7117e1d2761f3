//! `kd report <experiment>…`: paper tables and plots of one configuration of an experiment.
//!
//! - `papers/tables/<experiment>.md` and `.tex` (booktabs): teacher, plain student and every
//!   variant with top-1/top-5 mean ± std over seeds, best-epoch top-1, gain over plain (paired
//!   t-test p), n and the configuration hash.
//! - `results/plots/<experiment>-curves.{png,svg}`: top-1 per epoch per variant, the mean over
//!   seeds with a min–max band, from `results/<experiment>.history.jsonl`.
//! - `results/plots/<experiment>-final.{png,svg}`: final top-1 per variant with ±std error bars
//!   (a comparison of several methods sorted by mean, i.e. by gain over plain)
//!   and the teacher as a reference line.
//!
//! The configuration is the recipe's under `--profile`; when no rows carry its hash (the recipe
//! changed since the runs), the most recent configuration with rows is reported, with a warning.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{bail, Context, Result};
use kd_core::hash::short;
use kd_core::history::read_history;
use kd_core::recipe_hash::HashAliases;
use kd_core::results::{read_rows, ResultRow};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::compare::{compare, fmt_p, ConfigIndex, Group};
use crate::stats::Summary;
use kd_run::reproduce::{load_recipe_file, recipe_hash, Paths};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Experiments: benchmarks/<experiment>.toml, results/<experiment>.csv.
    #[arg(required = true)]
    pub experiments: Vec<String>,
    /// Profile whose runs are reported.
    #[arg(long, default_value = kd_core::recipe::DEFAULT_PROFILE)]
    pub profile: String,
    /// Folder of recipes (default: <root>/benchmarks).
    #[arg(long)]
    pub recipes: Option<PathBuf>,
    /// Folder of results CSVs and histories (default: <root>/results).
    #[arg(long)]
    pub results: Option<PathBuf>,
    /// Folder for the tables (default: <root>/papers/tables).
    #[arg(long)]
    pub tables: Option<PathBuf>,
    /// Folder for the plots (default: <results>/plots).
    #[arg(long)]
    pub plots: Option<PathBuf>,
    /// Report the configuration whose hash starts with this (default: the recipe's current one,
    /// else the most recent one with rows).
    #[arg(long)]
    pub config: Option<String>,
}

/// One line of the paper table.
#[derive(Debug, Clone)]
pub struct TableLine {
    /// `teacher`, `plain`, the variant, or `variant role` for a non-student model.
    pub label: String,
    pub model: String,
    pub top1: Summary,
    pub top5: Option<Summary>,
    /// None for the teacher, which is evaluated, not trained.
    pub best_top1: Option<Summary>,
    /// Paired gain over the plain student: (mean difference, pairs, p).
    pub gain: Option<(f64, usize, f64)>,
    pub config_hash: String,
    /// The recipe's `[published]` value for this line, when it names one.
    pub published: Option<f64>,
    /// Mean wall time of its runs relative to the plain student's (what the method's gain
    /// costs); None for the teacher and when there is no plain run.
    pub cost: Option<f64>,
}

/// What `kd report` found and wrote for one experiment.
#[derive(Debug, Clone)]
pub struct Report {
    pub experiment: String,
    pub title: String,
    pub profile: String,
    pub config_hash: String,
    pub lines: Vec<TableLine>,
    pub markdown: PathBuf,
    pub latex: PathBuf,
    pub plots: Vec<PathBuf>,
    pub warnings: Vec<String>,
}

pub fn run(args: Args) -> Result<()> {
    let paths = Paths::for_profile(args.recipes.clone(), args.results.clone(), None, &args.profile)?;
    // A scratch profile's tables stay beside its rows, out of the committed papers/tables/.
    let tables = args.tables.clone().unwrap_or_else(|| {
        if paths.scratch {
            paths.results.join("tables")
        } else {
            paths.root.join("papers/tables")
        }
    });
    let plots = args.plots.clone().unwrap_or_else(|| paths.results.join("plots"));
    for exp in &args.experiments {
        let r = report(&paths, &tables, &plots, exp, &args.profile, args.config.as_deref())?;
        for w in &r.warnings {
            eprintln!("warning: {w}");
        }
        println!("{} (profile {}, config {}):", r.experiment, r.profile, short(&r.config_hash));
        for p in [&r.markdown, &r.latex].into_iter().chain(&r.plots) {
            println!("  {}", p.display());
        }
    }
    Ok(())
}

/// Writes the tables and plots of `experiment` under `profile`.
pub fn report(
    paths: &Paths,
    tables_dir: &Path,
    plots_dir: &Path,
    experiment: &str,
    profile: &str,
    config: Option<&str>,
) -> Result<Report> {
    let file = load_recipe_file(&paths.recipes, experiment)?;
    let recipe = file.resolve(Some(profile))?;
    let expected_hash = recipe_hash(&recipe)?;
    let exp = recipe.experiment.name.clone();
    let csv = paths.results.join(format!("{exp}.csv"));
    if !csv.exists() {
        bail!(
            "no results for {exp}: {} does not exist; run `kd reproduce {exp} --profile {profile}`",
            csv.display()
        );
    }
    let mut all = read_rows(&csv).with_context(|| format!("reading results {}", csv.display()))?;
    // Rows written under this experiment's configurations' old hashes are theirs.
    let index =
        ConfigIndex::load(std::slice::from_ref(&csv), Some(&paths.recipes), std::slice::from_ref(&exp))?;
    index.rename_rows(&mut all);
    let in_profile: Vec<&ResultRow> =
        all.iter().filter(|r| r.experiment == exp && r.profile == profile).collect();
    if in_profile.is_empty() {
        let profiles: std::collections::BTreeSet<&str> = all.iter().map(|r| r.profile.as_str()).collect();
        bail!(
            "{} has no rows of {exp} with profile `{profile}`; profiles there: {}",
            csv.display(),
            profiles.into_iter().collect::<Vec<_>>().join(", ")
        );
    }
    let mut warnings = Vec::new();
    let hash = if let Some(prefix) = config {
        config_with_prefix(&in_profile, prefix, index.aliases())
            .with_context(|| format!("{} (profile {profile})", csv.display()))?
    } else if in_profile.iter().any(|r| r.config_hash == expected_hash) {
        expected_hash.clone()
    } else {
        let latest =
            in_profile.iter().max_by(|a, b| a.started_at.cmp(&b.started_at)).map(|r| r.config_hash.clone());
        let latest = latest.unwrap_or_default();
        warnings.push(format!(
            "{exp} ({profile}): no rows have the recipe's current config hash {}; reporting the most recent configuration with rows, {}",
            short(&expected_hash),
            short(&latest)
        ));
        latest
    };
    let mut others: Vec<String> = in_profile
        .iter()
        .filter(|r| r.config_hash != hash)
        .map(|r| short(&r.config_hash).to_string())
        .collect();
    others.sort();
    others.dedup();
    if !others.is_empty() {
        warnings.push(format!(
            "{exp} ({profile}): rows of other configurations ({}) are left out; `kd compare --by variant,role,config_hash` shows them",
            others.join(", ")
        ));
    }
    let rows: Vec<ResultRow> = in_profile.into_iter().filter(|r| r.config_hash == hash).cloned().collect();
    let mut lines = table_lines(&rows)?;
    attach_published(&mut lines, recipe.published.as_ref());

    let title =
        if recipe.experiment.title.is_empty() { exp.clone() } else { recipe.experiment.title.clone() };
    let first = &rows[0];
    let epochs = rows.iter().map(|r| r.epochs).max().unwrap_or(0);
    let setting = Setting {
        experiment: &exp,
        title: &title,
        profile,
        hash: &hash,
        dataset: &first.dataset,
        split: &first.split,
        train_examples: first.train_examples,
        eval_examples: first.eval_examples,
        epochs,
        published: recipe.published.as_ref(),
    };
    std::fs::create_dir_all(tables_dir).with_context(|| format!("creating {}", tables_dir.display()))?;
    let markdown = tables_dir.join(format!("{exp}.md"));
    let latex = tables_dir.join(format!("{exp}.tex"));
    std::fs::write(&markdown, render_markdown(&setting, &lines))
        .with_context(|| format!("writing {}", markdown.display()))?;
    std::fs::write(&latex, render_latex(&setting, &lines))
        .with_context(|| format!("writing {}", latex.display()))?;

    std::fs::create_dir_all(plots_dir).with_context(|| format!("creating {}", plots_dir.display()))?;
    if !plot_font() {
        warnings.push(
            "no font found for plot text (set KD_PLOT_FONT to a .ttf file): plots are drawn without labels"
                .into(),
        );
    }
    let mut plots = Vec::new();
    let teacher = lines.iter().find(|l| l.label == "teacher").map(|l| l.top1.mean);
    let history_path = paths.results.join(format!("{exp}.history.jsonl"));
    let curves = curve_series(&history_path, &exp, profile, &hash, index.aliases())?;
    if curves.is_empty() {
        warnings.push(format!(
            "{}: no per-epoch history for config {}; the curves plot is skipped",
            history_path.display(),
            short(&hash)
        ));
    } else {
        let plot =
            CurvePlot { title: format!("{exp} ({profile}): top-1 per epoch"), series: curves, teacher };
        let base = plots_dir.join(format!("{exp}-curves"));
        plots.extend(write_both(&base, Plot::Curves(&plot))?);
    }
    let mut bars: Vec<Bar> = lines
        .iter()
        .filter(|l| l.label != "teacher")
        .map(|l| Bar { label: l.label.clone(), mean: l.top1.mean, std: l.top1.std })
        .collect();
    if !recipe.experiment.methods.is_empty() {
        // A comparison reads best sorted by its gain (the same order as the mean, plain among them).
        bars.sort_by(|a, b| b.mean.total_cmp(&a.mean));
    }
    let plot = BarPlot { title: format!("{exp} ({profile}): final top-1, mean ± std"), bars, teacher };
    let base = plots_dir.join(format!("{exp}-final"));
    plots.extend(write_both(&base, Plot::Bars(&plot))?);
    // Sweeps (issue 12): a heat map and table per two-key grid sweep of this profile.
    plots.extend(crate::heatmap::write_sweep_heatmaps(&paths.results, plots_dir, tables_dir, &exp, profile)?);

    Ok(Report {
        experiment: exp,
        title,
        profile: profile.to_string(),
        config_hash: hash,
        lines,
        markdown,
        latex,
        plots,
        warnings,
    })
}

/// The one configuration hash among `rows` that starts with `prefix`, or whose old (v1) hash
/// does (`rows` carry current hashes: [`ConfigIndex::rename_rows`]).
pub fn config_with_prefix(rows: &[&ResultRow], prefix: &str, aliases: &HashAliases) -> Result<String> {
    let mut hashes: Vec<&str> =
        rows.iter().map(|r| r.config_hash.as_str()).filter(|h| h.starts_with(prefix)).collect();
    hashes.extend(aliases.current_of_old_prefix(prefix).filter(|c| rows.iter().any(|r| r.config_hash == *c)));
    hashes.sort();
    hashes.dedup();
    match hashes.as_slice() {
        [one] => Ok(one.to_string()),
        [] => {
            let mut all: Vec<&str> = rows.iter().map(|r| short(&r.config_hash)).collect();
            all.sort();
            all.dedup();
            bail!("no rows with a config hash starting with `{prefix}`; hashes there: {}", all.join(", "))
        }
        many => bail!("config `{prefix}` is ambiguous: {}", many.join(", ")),
    }
}

/// Teacher, plain student, then every other variant and role, from one configuration's rows.
pub fn table_lines(rows: &[ResultRow]) -> Result<Vec<TableLine>> {
    let by = |keys: &[&str]| keys.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let (teacher_rows, trained): (Vec<ResultRow>, Vec<ResultRow>) =
        rows.iter().cloned().partition(|r| r.role == "teacher");
    let mut lines = Vec::new();
    // The teacher is evaluated once per distilled run; one line per teacher model.
    let t1 = compare(&teacher_rows, &by(&["model"]), "top1", None)?;
    let t5 = compare(&teacher_rows, &by(&["model"]), "top5", None)?;
    for g in &t1.groups {
        lines.push(TableLine {
            label: "teacher".into(),
            model: g.keys[0].clone(),
            top1: g.last,
            top5: find(&t5.groups, g).map(|g| g.last),
            best_top1: None,
            gain: None,
            config_hash: hash_of(g),
            published: None,
            cost: None,
        });
    }
    // Mean wall time of a variant's runs (every model of a run shares its run's wall time).
    let wall = |variant: &str| -> Option<f64> {
        let runs: Vec<f64> = trained
            .iter()
            .filter(|r| r.variant == variant && r.metric == "top1")
            .map(|r| r.wall_seconds)
            .collect();
        (!runs.is_empty()).then(|| runs.iter().sum::<f64>() / runs.len() as f64)
    };
    let plain_wall = wall("plain").filter(|w| *w > 0.0);
    let keys = by(&["variant", "role", "model"]);
    let s1 = compare(&trained, &keys, "top1", None)?;
    let s5 = compare(&trained, &keys, "top5", None)?;
    for g in &s1.groups {
        let label =
            if g.keys[1] == "student" { g.keys[0].clone() } else { format!("{} {}", g.keys[0], g.keys[1]) };
        lines.push(TableLine {
            label,
            model: g.keys[2].clone(),
            top1: g.last,
            top5: find(&s5.groups, g).map(|g| g.last),
            best_top1: Some(g.best),
            gain: g.gain.map(|t| (t.mean_diff, t.n, t.p)),
            config_hash: hash_of(g),
            published: None,
            cost: plain_wall.and_then(|plain| Some(wall(&g.keys[0])? / plain)),
        });
    }
    Ok(lines)
}

/// Puts the recipe's published values beside the lines they name (`teacher`, `plain`, a
/// variant), when the table's metric is theirs.
pub fn attach_published(lines: &mut [TableLine], published: Option<&kd_core::recipe::Published>) {
    let Some(p) = published.filter(|p| p.metric == "top1") else { return };
    for l in lines {
        l.published = p.values.get(&l.label).copied();
    }
}

fn find<'a>(groups: &'a [Group], like: &Group) -> Option<&'a Group> {
    groups.iter().find(|g| g.experiment == like.experiment && g.keys == like.keys)
}

fn hash_of(g: &Group) -> String {
    g.config_hashes.first().map(|(h, _)| h.clone()).unwrap_or_default()
}

/// The facts the table captions state.
struct Setting<'a> {
    experiment: &'a str,
    title: &'a str,
    profile: &'a str,
    hash: &'a str,
    dataset: &'a str,
    split: &'a str,
    train_examples: usize,
    eval_examples: usize,
    epochs: usize,
    published: Option<&'a kd_core::recipe::Published>,
}

fn pm(s: &Summary, sep: &str) -> String {
    if s.n > 1 {
        format!("{:.2}{sep}{:.2}", s.mean, s.std)
    } else {
        format!("{:.2}", s.mean)
    }
}

fn gain_text(gain: Option<(f64, usize, f64)>) -> Option<(String, String)> {
    gain.map(|(d, _, p)| (format!("{d:+.2}"), fmt_p(p)))
}

fn render_markdown(s: &Setting, lines: &[TableLine]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "<!-- Generated by `kd report {} --profile {}`; edits are overwritten. -->\n",
        s.experiment, s.profile
    );
    let _ = writeln!(out, "### {}: {}\n", s.experiment, s.title);
    let _ = writeln!(
        out,
        "Profile `{}`, config `{}`, {} ({} train / {} {} examples), {} epoch(s). Accuracy (%) on the \
         `{}` split at the last epoch, mean ± sample std over n seeds; best-epoch is the mean of each \
         run's best epoch; gain is the mean paired difference to the plain student over the same \
         seeds, p the two-sided paired t-test.\n",
        s.profile,
        short(s.hash),
        s.dataset,
        s.train_examples,
        s.eval_examples,
        s.split,
        s.epochs,
        s.split
    );
    if let Some(p) = s.published {
        let _ = writeln!(
            out,
            "Published: top-1 from `{}` ({}), a different scale from this profile's; cost: mean wall \
             time of a run relative to the plain student's.\n",
            p.source, p.setting
        );
    }
    let _ = writeln!(
        out,
        "| Model | Arch | Top-1 | Top-5 | Best-epoch top-1 | Gain over plain | p | n | Published | Cost | Config |"
    );
    let _ = writeln!(out, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|");
    for l in lines {
        let (gain, p) = gain_text(l.gain).unwrap_or(("—".into(), "—".into()));
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | `{}` |",
            l.label,
            l.model,
            pm(&l.top1, " ± "),
            l.top5.as_ref().map(|s| pm(s, " ± ")).unwrap_or_else(|| "—".into()),
            l.best_top1.as_ref().map(|s| pm(s, " ± ")).unwrap_or_else(|| "—".into()),
            gain,
            p,
            l.top1.n,
            l.published.map(|v| format!("{v:.2}")).unwrap_or_else(|| "—".into()),
            l.cost.map(|c| format!("{c:.2}×")).unwrap_or_else(|| "—".into()),
            short(&l.config_hash)
        );
    }
    out
}

/// Escapes LaTeX's special characters in plain text.
pub fn tex_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\textbackslash{}"),
            '&' | '%' | '$' | '#' | '_' | '{' | '}' => {
                out.push('\\');
                out.push(c);
            }
            '~' => out.push_str("\\textasciitilde{}"),
            '^' => out.push_str("\\textasciicircum{}"),
            _ => out.push(c),
        }
    }
    out.replace("->", "$\\rightarrow$")
}

fn render_latex(s: &Setting, lines: &[TableLine]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "% Generated by `kd report {} --profile {}`; edits are overwritten. Needs \\usepackage{{booktabs}}.",
        s.experiment, s.profile
    );
    let _ = writeln!(out, "\\begin{{table}}[t]\n  \\centering");
    let _ = writeln!(
        out,
        "  \\caption{{{} (profile {}, config \\texttt{{{}}}): accuracy (\\%) on the {} split ({} examples, \
         {} training examples, {} epoch(s)) at the last epoch, mean $\\pm$ sample std over $n$ seeds. \
         Best: mean of each run's best epoch. $\\Delta$: mean paired gain over the plain student, \
         $p$: two-sided paired $t$-test.}}",
        tex_escape(s.title),
        tex_escape(s.profile),
        short(s.hash),
        tex_escape(s.split),
        s.eval_examples,
        s.train_examples,
        s.epochs
    );
    if let Some(p) = s.published {
        let _ = writeln!(
            out,
            "  % Published: top-1 from \\cite{{{}}} ({}), a different scale. Cost: wall time relative to plain.",
            p.source,
            tex_escape(&p.setting)
        );
    }
    let _ = writeln!(out, "  \\label{{tab:{}}}", s.experiment.replace(['_', '#', '%', '{', '}', '\\'], "-"));
    let _ = writeln!(out, "  \\begin{{tabular}}{{llrrrrrrrrl}}\n    \\toprule");
    let _ = writeln!(
        out,
        "    Model & Arch & Top-1 & Top-5 & Best top-1 & $\\Delta$ plain & $p$ & $n$ & Published & Cost & Config \\\\\n    \\midrule"
    );
    for (i, l) in lines.iter().enumerate() {
        // A rule between the teacher and the trained models.
        if i > 0 && lines[i - 1].label == "teacher" && l.label != "teacher" {
            let _ = writeln!(out, "    \\midrule");
        }
        let (gain, p) = gain_text(l.gain)
            .map(|(g, p)| (format!("${g}$"), p.replace('<', "$<$")))
            .unwrap_or(("--".into(), "--".into()));
        let _ = writeln!(
            out,
            "    {} & {} & {} & {} & {} & {} & {} & {} & {} & {} & \\texttt{{{}}} \\\\",
            tex_escape(&l.label),
            tex_escape(&l.model),
            pm(&l.top1, " $\\pm$ "),
            l.top5.as_ref().map(|s| pm(s, " $\\pm$ ")).unwrap_or_else(|| "--".into()),
            l.best_top1.as_ref().map(|s| pm(s, " $\\pm$ ")).unwrap_or_else(|| "--".into()),
            gain,
            p,
            l.top1.n,
            l.published.map(|v| format!("{v:.2}")).unwrap_or_else(|| "--".into()),
            l.cost.map(|c| format!("{c:.2}$\\times$")).unwrap_or_else(|| "--".into()),
            short(&l.config_hash)
        );
    }
    let _ = writeln!(out, "    \\bottomrule\n  \\end{{tabular}}\n\\end{{table}}");
    out
}

// ---------------------------------------------------------------------------------------------
// Plots

/// Fonts plotters' `ab_glyph` backend can use for text; none is bundled (no font files in the
/// repository), so a system font is loaded at run time. `KD_PLOT_FONT` names another .ttf, or
/// `none` to draw without text.
const FONT_CANDIDATES: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/truetype/freefont/FreeSans.ttf",
    "/System/Library/Fonts/Supplemental/Arial.ttf",
    "/Library/Fonts/Arial.ttf",
    "C:\\Windows\\Fonts\\arial.ttf",
];

/// Registers a sans-serif font once per process; false when none could be loaded.
pub fn plot_font() -> bool {
    static READY: OnceLock<bool> = OnceLock::new();
    *READY.get_or_init(|| {
        let candidates: Vec<PathBuf> = match std::env::var_os("KD_PLOT_FONT") {
            Some(v) if v == "none" => return false,
            Some(v) => vec![PathBuf::from(v)],
            None => FONT_CANDIDATES.iter().map(PathBuf::from).collect(),
        };
        for p in candidates {
            if let Ok(bytes) = std::fs::read(&p) {
                // plotters keeps a `'static` reference to the font; it lives for the process.
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                    return true;
                }
            }
        }
        false
    })
}

const COLORS: [RGBColor; 8] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x94, 0x67, 0xbd),
    RGBColor(0x8c, 0x56, 0x4b),
    RGBColor(0xe3, 0x77, 0xc2),
    RGBColor(0x17, 0xbe, 0xcf),
];
const TEACHER_COLOR: RGBColor = RGBColor(0x55, 0x55, 0x55);
const SIZE: (u32, u32) = (800, 500);

/// One curve: per epoch, the mean over seeds and the min–max band.
#[derive(Debug, Clone)]
pub struct Curve {
    pub label: String,
    /// (epoch, mean, min, max, seeds)
    pub points: Vec<(f64, f64, f64, f64, usize)>,
}

struct CurvePlot {
    title: String,
    series: Vec<Curve>,
    teacher: Option<f64>,
}

struct Bar {
    label: String,
    mean: f64,
    std: f64,
}

struct BarPlot {
    title: String,
    bars: Vec<Bar>,
    teacher: Option<f64>,
}

/// Top-1 (or `accuracy`) curves of every trained model of one configuration, over its seeds (the latest history
/// line of a run that was re-done wins). Plain first, then the other variants.
pub fn curve_series(
    history: &Path,
    experiment: &str,
    profile: &str,
    hash: &str,
    aliases: &HashAliases,
) -> Result<Vec<Curve>> {
    let mut runs = read_history(history)?;
    aliases.rename_history(&mut runs);
    let mut latest = BTreeMap::new();
    for run in
        runs.iter().filter(|r| r.experiment == experiment && r.profile == profile && r.config_hash == hash)
    {
        latest.insert((run.variant.clone(), run.seed), run);
    }
    // (plain first, variant, role) -> epoch -> values
    let mut values: BTreeMap<(bool, String, String), BTreeMap<usize, Vec<f64>>> = BTreeMap::new();
    for run in latest.values() {
        for (j, entry) in run.entries.iter().enumerate() {
            if entry.role == "teacher" {
                continue;
            }
            let key = (run.variant != "plain", run.variant.clone(), entry.role.clone());
            for ep in &run.epochs {
                // Arg-max `accuracy` (text classification) is top-1 under another name.
                if let Some(v) = ep.eval.get(j).and_then(|s| s.get("top1").or_else(|| s.get("accuracy"))) {
                    values.entry(key.clone()).or_default().entry(ep.epoch).or_default().push(v);
                }
            }
        }
    }
    Ok(values
        .into_iter()
        .map(|((_, variant, role), per_epoch)| Curve {
            label: if role == "student" { variant } else { format!("{variant} {role}") },
            points: per_epoch
                .into_iter()
                .map(|(e, v)| {
                    let min = v.iter().cloned().fold(f64::INFINITY, f64::min);
                    let max = v.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    (e as f64, crate::stats::mean(&v), min, max, v.len())
                })
                .collect(),
        })
        .collect())
}

enum Plot<'a> {
    Curves(&'a CurvePlot),
    Bars(&'a BarPlot),
}

fn draw<DB: DrawingBackend>(root: DrawingArea<DB, Shift>, plot: &Plot) -> std::result::Result<(), String> {
    match plot {
        Plot::Curves(p) => draw_curves(root, p),
        Plot::Bars(p) => draw_bars(root, p),
    }
}

/// Draws `plot` into `<base>.png` and `<base>.svg`.
fn write_both(base: &Path, plot: Plot) -> Result<Vec<PathBuf>> {
    let svg = base.with_extension("svg");
    let png = base.with_extension("png");
    draw(SVGBackend::new(&svg, SIZE).into_drawing_area(), &plot)
        .map_err(|e| anyhow::anyhow!("drawing {}: {e}", svg.display()))?;
    draw(BitMapBackend::new(&png, SIZE).into_drawing_area(), &plot)
        .map_err(|e| anyhow::anyhow!("drawing {}: {e}", png.display()))?;
    Ok(vec![png, svg])
}

fn err<E: std::error::Error + Send + Sync>(e: DrawingAreaErrorKind<E>) -> String {
    e.to_string()
}

fn draw_curves<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    plot: &CurvePlot,
) -> std::result::Result<(), String> {
    let text = plot_font();
    root.fill(&WHITE).map_err(err)?;
    let last_epoch = plot.series.iter().flat_map(|c| c.points.iter().map(|p| p.0)).fold(1.0, f64::max);
    let lo = plot
        .series
        .iter()
        .flat_map(|c| c.points.iter().map(|p| p.2))
        .chain(plot.teacher)
        .fold(f64::INFINITY, f64::min);
    let hi = plot
        .series
        .iter()
        .flat_map(|c| c.points.iter().map(|p| p.3))
        .chain(plot.teacher)
        .fold(f64::NEG_INFINITY, f64::max);
    let (y0, y1) = ((lo - 3.0).max(0.0), (hi + 3.0).min(100.0).max(lo + 1.0));
    let (x0, x1) = if last_epoch <= 1.0 { (0.5, 1.5) } else { (1.0, last_epoch) };
    let mut builder = ChartBuilder::on(&root);
    builder.margin(15);
    if text {
        builder.caption(&plot.title, ("sans-serif", 22)).x_label_area_size(40).y_label_area_size(55);
    }
    let mut chart = builder.build_cartesian_2d(x0..x1, y0..y1).map_err(err)?;
    if text {
        let whole = |x: &f64| if x.fract().abs() < 1e-9 { format!("{x:.0}") } else { String::new() };
        chart
            .configure_mesh()
            .light_line_style(WHITE)
            .bold_line_style(BLACK.mix(0.12))
            .x_labels(((x1 - x0) as usize + 1).min(12))
            .x_label_formatter(&whole)
            .label_style(("sans-serif", 14))
            .x_desc("epoch")
            .y_desc("top-1 (%)")
            .draw()
            .map_err(err)?;
    }
    for (i, c) in plot.series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let mut band: Vec<(f64, f64)> = c.points.iter().map(|p| (p.0, p.3)).collect();
        band.extend(c.points.iter().rev().map(|p| (p.0, p.2)));
        chart.draw_series(std::iter::once(Polygon::new(band, color.mix(0.2).filled()))).map_err(err)?;
        let seeds = c.points.iter().map(|p| p.4).max().unwrap_or(0);
        chart
            .draw_series(LineSeries::new(c.points.iter().map(|p| (p.0, p.1)), color.stroke_width(2)))
            .map_err(err)?
            .label(format!("{} (mean of {seeds} seeds, min–max band)", c.label))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
        chart
            .draw_series(c.points.iter().map(|p| Circle::new((p.0, p.1), 3, color.filled())))
            .map_err(err)?;
    }
    if let Some(t) = plot.teacher {
        chart
            .draw_series(LineSeries::new(vec![(x0, t), (x1, t)], TEACHER_COLOR.stroke_width(1)))
            .map_err(err)?
            .label(format!("teacher ({t:.2})"))
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], TEACHER_COLOR.stroke_width(1)));
    }
    // The legend goes where the curves end not: below them when they end high, else above.
    let end_mean = crate::stats::mean(
        &plot.series.iter().filter_map(|c| c.points.last().map(|p| p.1)).collect::<Vec<_>>(),
    );
    let legend_position = if end_mean > (y0 + y1) / 2.0 {
        SeriesLabelPosition::LowerRight
    } else {
        SeriesLabelPosition::UpperRight
    };
    if text {
        chart
            .configure_series_labels()
            .position(legend_position)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 15))
            .draw()
            .map_err(err)?;
    }
    root.present().map_err(err)
}

fn draw_bars<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    plot: &BarPlot,
) -> std::result::Result<(), String> {
    let text = plot_font();
    root.fill(&WHITE).map_err(err)?;
    let n = plot.bars.len().max(1) as f64;
    let top = plot
        .bars
        .iter()
        .map(|b| b.mean + if b.std.is_nan() { 0.0 } else { b.std })
        .chain(plot.teacher)
        .fold(1.0, f64::max);
    let y1 = (top * 1.15).max(top + 5.0);
    let mut builder = ChartBuilder::on(&root);
    builder.margin(15);
    if text {
        builder.caption(&plot.title, ("sans-serif", 22)).x_label_area_size(10).y_label_area_size(55);
    }
    let mut chart = builder.build_cartesian_2d(-0.5..n - 0.5, 0.0..y1).map_err(err)?;
    if text {
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(0)
            .x_label_formatter(&|_| String::new())
            .light_line_style(WHITE)
            .bold_line_style(BLACK.mix(0.12))
            .label_style(("sans-serif", 14))
            .y_desc("top-1 (%)")
            .draw()
            .map_err(err)?;
    }
    for (i, b) in plot.bars.iter().enumerate() {
        let x = i as f64;
        let color = COLORS[i % COLORS.len()];
        chart
            .draw_series(std::iter::once(Rectangle::new(
                [(x - 0.3, 0.0), (x + 0.3, b.mean)],
                color.mix(0.8).filled(),
            )))
            .map_err(err)?;
        let std = if b.std.is_nan() { 0.0 } else { b.std };
        let (lo, hi) = (b.mean - std, b.mean + std);
        let whisker = vec![
            vec![(x, lo), (x, hi)],
            vec![(x - 0.08, lo), (x + 0.08, lo)],
            vec![(x - 0.08, hi), (x + 0.08, hi)],
        ];
        chart
            .draw_series(whisker.into_iter().map(|p| PathElement::new(p, BLACK.stroke_width(2))))
            .map_err(err)?;
        if text {
            let style =
                ("sans-serif", 16).into_font().color(&BLACK).pos(Pos::new(HPos::Center, VPos::Bottom));
            chart
                .draw_series(std::iter::once(Text::new(
                    format!("{} {:.2}±{:.2}", b.label, b.mean, std),
                    (x, hi + y1 * 0.02),
                    style,
                )))
                .map_err(err)?;
        }
    }
    if let Some(t) = plot.teacher {
        chart
            .draw_series(std::iter::once(PathElement::new(
                vec![(-0.5, t), (n - 0.5, t)],
                TEACHER_COLOR.stroke_width(2),
            )))
            .map_err(err)?;
        if text {
            let style =
                ("sans-serif", 15).into_font().color(&TEACHER_COLOR).pos(Pos::new(HPos::Left, VPos::Bottom));
            chart
                .draw_series(std::iter::once(Text::new(
                    format!("teacher {t:.2}"),
                    (-0.45, t + y1 * 0.01),
                    style,
                )))
                .map_err(err)?;
        }
    }
    root.present().map_err(err)
}
