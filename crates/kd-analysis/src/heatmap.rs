//! Heat maps of two-key grid sweeps, for `kd report`.
//!
//! For every grid sweep of the reported profile that varies exactly two keys (recorded by
//! `kd sweep` in `results/<experiment>.configs.jsonl`), and every distilled variant, a heat map
//! of the mean top-1 per grid cell (`results/plots/<experiment>-sweep-<id>-<variant>.{png,svg}`)
//! and a Markdown table of the same cells with the paired gain over the plain student
//! (`papers/tables/<experiment>-sweep-<id>.md`).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use kd_core::results::read_rows;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::compare::{cmp_values, compare_with, ConfigIndex};
use crate::configs::{configs_path, read_configs, ConfigLine};
use crate::stats::Summary;

/// One heat map: a variant's mean top-1 over a two-key grid.
#[derive(Debug, Clone)]
pub struct Heatmap {
    pub experiment: String,
    pub profile: String,
    pub sweep: String,
    pub variant: String,
    pub split: String,
    /// Rows of the grid.
    pub y_key: String,
    /// Columns of the grid.
    pub x_key: String,
    pub ys: Vec<String>,
    pub xs: Vec<String>,
    /// `cells[y][x]`: last-epoch top-1 over seeds.
    pub cells: Vec<Vec<Option<Summary>>>,
    /// `gains[y][x]`: mean paired gain over the plain student.
    pub gains: Vec<Vec<Option<f64>>>,
    /// The plain student, when one plain configuration serves the whole grid.
    pub plain: Option<Summary>,
}

fn json_text(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The heat maps of every two-key grid sweep of `experiment` under `profile`.
pub fn sweep_heatmaps(results: &Path, experiment: &str, profile: &str) -> Result<Vec<Heatmap>> {
    let lines: Vec<ConfigLine> = read_configs(&configs_path(results, experiment))?
        .into_iter()
        .filter(|c| c.experiment == experiment && c.profile == profile)
        .collect();
    let csv = results.join(format!("{experiment}.csv"));
    if lines.is_empty() || !csv.exists() {
        return Ok(Vec::new());
    }
    let mut rows = read_rows(&csv).with_context(|| format!("reading results {}", csv.display()))?;
    let mut index = ConfigIndex::default();
    // Lines and rows written before the current hash scheme carry v1 hashes: name both by the
    // configuration's current hash.
    let mut lines = lines;
    for c in &mut lines {
        c.config_hash = index.insert_line(c)?;
    }
    index.rename_rows(&mut rows);
    let mut sweeps: BTreeMap<&str, Vec<&ConfigLine>> = BTreeMap::new();
    for c in lines.iter().filter(|c| c.mode == "grid" && c.swept.len() == 2) {
        sweeps.entry(c.sweep.as_str()).or_default().push(c);
    }
    let mut maps = Vec::new();
    for (sweep, configs) in sweeps {
        let (y_key, x_key) = (configs[0].swept[0].clone(), configs[0].swept[1].clone());
        let axis = |key: &str| {
            let set: BTreeSet<String> =
                configs.iter().filter_map(|c| c.overrides.get(key)).map(json_text).collect();
            let mut v: Vec<String> = set.into_iter().collect();
            v.sort_by(|a, b| cmp_values(a, b));
            v
        };
        let (ys, xs) = (axis(&y_key), axis(&x_key));
        let hashes: BTreeSet<&str> = configs.iter().map(|c| c.config_hash.as_str()).collect();
        let sweep_rows: Vec<_> = rows
            .iter()
            .filter(|r| {
                r.experiment == experiment && r.profile == profile && hashes.contains(r.config_hash.as_str())
            })
            .cloned()
            .collect();
        if sweep_rows.is_empty() || ys.is_empty() || xs.is_empty() {
            continue;
        }
        let by: Vec<String> = ["variant", "role", &y_key, &x_key].iter().map(|s| s.to_string()).collect();
        let cmp = compare_with(&sweep_rows, &by, "top1", None, &index)?;
        let students: Vec<_> = cmp.groups.iter().filter(|g| g.keys[1] == "student").collect();
        let plains: Vec<_> = students.iter().filter(|g| g.keys[0] == "plain").collect();
        let plain = if plains.len() == 1 { Some(plains[0].last) } else { None };
        let variants: BTreeSet<&str> =
            students.iter().map(|g| g.keys[0].as_str()).filter(|v| *v != "plain").collect();
        for variant in variants {
            let mut cells = vec![vec![None; xs.len()]; ys.len()];
            let mut gains = vec![vec![None; xs.len()]; ys.len()];
            for g in students.iter().filter(|g| g.keys[0] == variant) {
                let (Some(y), Some(x)) =
                    (ys.iter().position(|v| *v == g.keys[2]), xs.iter().position(|v| *v == g.keys[3]))
                else {
                    continue;
                };
                cells[y][x] = Some(g.last);
                gains[y][x] = g.gain.map(|t| t.mean_diff);
            }
            maps.push(Heatmap {
                experiment: experiment.to_string(),
                profile: profile.to_string(),
                sweep: sweep.to_string(),
                variant: variant.to_string(),
                split: sweep_rows[0].split.clone(),
                y_key: y_key.clone(),
                x_key: x_key.clone(),
                ys: ys.clone(),
                xs: xs.clone(),
                cells,
                gains,
                plain,
            });
        }
    }
    Ok(maps)
}

fn cell_text(s: &Summary) -> String {
    if s.n > 1 {
        format!("{:.2} ± {:.2}", s.mean, s.std)
    } else {
        format!("{:.2}", s.mean)
    }
}

/// The Markdown tables of one sweep's heat maps (one per variant).
pub fn render_markdown(maps: &[&Heatmap]) -> String {
    let mut out = String::new();
    let Some(first) = maps.first() else { return out };
    let _ = writeln!(
        out,
        "<!-- Generated by `kd report {} --profile {}` from sweep {}; edits are overwritten. -->\n",
        first.experiment, first.profile, first.sweep
    );
    for m in maps {
        let n = m.cells.iter().flatten().flatten().map(|s| s.n).max().unwrap_or(0);
        let _ = writeln!(
            out,
            "### {} sweep {}: {} top-1 (%) on `{}` by {} × {}\n",
            m.experiment, m.sweep, m.variant, m.split, m.y_key, m.x_key
        );
        let _ = writeln!(
            out,
            "Last-epoch top-1, mean{} over {n} seed(s); in brackets the mean paired gain over the plain student{}.\n",
            if n > 1 { " ± std" } else { "" },
            m.plain.map(|p| format!(" ({})", cell_text(&p))).unwrap_or_default()
        );
        let _ = writeln!(out, "| {} \\ {} | {} |", m.y_key, m.x_key, m.xs.join(" | "));
        let _ = writeln!(out, "|---|{}", "---:|".repeat(m.xs.len()));
        let best = m.cells.iter().flatten().flatten().map(|s| s.mean).fold(f64::NEG_INFINITY, f64::max);
        for (y, label) in m.ys.iter().enumerate() {
            let cells: Vec<String> = (0..m.xs.len())
                .map(|x| match (&m.cells[y][x], m.gains[y][x]) {
                    (Some(s), g) => {
                        let mut t = cell_text(s);
                        if s.mean == best {
                            t = format!("**{t}**");
                        }
                        if let Some(g) = g {
                            let _ = write!(t, " ({g:+.2})");
                        }
                        t
                    }
                    (None, _) => "—".into(),
                })
                .collect();
            let _ = writeln!(out, "| {label} | {} |", cells.join(" | "));
        }
        let _ = writeln!(out);
    }
    out
}

/// Viridis, five anchors, linearly interpolated.
fn viridis(t: f64) -> RGBColor {
    const A: [(f64, f64, f64); 5] = [
        (68.0, 1.0, 84.0),
        (59.0, 82.0, 139.0),
        (33.0, 145.0, 140.0),
        (94.0, 201.0, 98.0),
        (253.0, 231.0, 37.0),
    ];
    let t = if t.is_finite() { t.clamp(0.0, 1.0) } else { 0.5 } * 4.0;
    let i = (t.floor() as usize).min(3);
    let f = t - i as f64;
    let (a, b) = (A[i], A[i + 1]);
    let mix = |x: f64, y: f64| (x + (y - x) * f).round() as u8;
    RGBColor(mix(a.0, b.0), mix(a.1, b.1), mix(a.2, b.2))
}

fn err<E: std::error::Error + Send + Sync>(e: DrawingAreaErrorKind<E>) -> String {
    e.to_string()
}

fn draw<DB: DrawingBackend>(root: DrawingArea<DB, Shift>, m: &Heatmap) -> std::result::Result<(), String> {
    let text = crate::report::plot_font();
    root.fill(&WHITE).map_err(err)?;
    let (nx, ny) = (m.xs.len() as i32, m.ys.len() as i32);
    let values: Vec<f64> = m.cells.iter().flatten().flatten().map(|s| s.mean).collect();
    let lo = values.iter().cloned().fold(f64::INFINITY, f64::min);
    let hi = values.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let scale = |v: f64| if hi > lo { (v - lo) / (hi - lo) } else { 0.5 };
    let mut builder = ChartBuilder::on(&root);
    builder.margin(15);
    if text {
        let title = format!(
            "{} ({}): {} top-1 on {}{}",
            m.experiment,
            m.profile,
            m.variant,
            m.split,
            m.plain.map(|p| format!(", plain {:.2}", p.mean)).unwrap_or_default()
        );
        builder.caption(title, ("sans-serif", 20)).x_label_area_size(45).y_label_area_size(70);
    }
    let mut chart = builder
        .build_cartesian_2d((0..nx - 1).into_segmented(), (0..ny - 1).into_segmented())
        .map_err(err)?;
    let edge = |i: i32, n: i32| if i >= n { SegmentValue::Last } else { SegmentValue::Exact(i) };
    if text {
        let xs = m.xs.clone();
        let ys = m.ys.clone();
        let fx = move |v: &SegmentValue<i32>| match v {
            SegmentValue::CenterOf(i) => xs.get(*i as usize).cloned().unwrap_or_default(),
            _ => String::new(),
        };
        let fy = move |v: &SegmentValue<i32>| match v {
            SegmentValue::CenterOf(i) => ys.get(*i as usize).cloned().unwrap_or_default(),
            _ => String::new(),
        };
        chart
            .configure_mesh()
            .disable_mesh()
            .x_labels(nx as usize)
            .y_labels(ny as usize)
            .x_label_formatter(&fx)
            .y_label_formatter(&fy)
            .label_style(("sans-serif", 15))
            .x_desc(m.x_key.as_str())
            .y_desc(m.y_key.as_str())
            .draw()
            .map_err(err)?;
    }
    for (y, row) in m.cells.iter().enumerate() {
        for (x, cell) in row.iter().enumerate() {
            let (x, y) = (x as i32, y as i32);
            let color = match cell {
                Some(s) => viridis(scale(s.mean)),
                None => RGBColor(0xdd, 0xdd, 0xdd),
            };
            chart
                .draw_series(std::iter::once(Rectangle::new(
                    [(edge(x, nx), edge(y, ny)), (edge(x + 1, nx), edge(y + 1, ny))],
                    color.filled(),
                )))
                .map_err(err)?;
            if let (true, Some(s)) = (text, cell) {
                let ink = if scale(s.mean) > 0.6 { BLACK } else { WHITE };
                let gain = m.gains[y as usize][x as usize].map(|g| format!(" ({g:+.2})")).unwrap_or_default();
                let style =
                    ("sans-serif", 16).into_font().color(&ink).pos(Pos::new(HPos::Center, VPos::Center));
                chart
                    .draw_series(std::iter::once(Text::new(
                        format!("{}{gain}", cell_text(s)),
                        (SegmentValue::CenterOf(x), SegmentValue::CenterOf(y)),
                        style,
                    )))
                    .map_err(err)?;
            }
        }
    }
    root.present().map_err(err)
}

/// Writes every heat map of `experiment`'s grid sweeps under `profile` (PNG + SVG) and one
/// Markdown table per sweep; returns the files written.
pub fn write_sweep_heatmaps(
    results: &Path,
    plots_dir: &Path,
    tables_dir: &Path,
    experiment: &str,
    profile: &str,
) -> Result<Vec<PathBuf>> {
    let maps = sweep_heatmaps(results, experiment, profile)?;
    let mut written = Vec::new();
    let mut by_sweep: BTreeMap<&str, Vec<&Heatmap>> = BTreeMap::new();
    for m in &maps {
        by_sweep.entry(m.sweep.as_str()).or_default().push(m);
        let base = plots_dir.join(format!("{experiment}-sweep-{}-{}", m.sweep, m.variant));
        let svg = base.with_extension("svg");
        let png = base.with_extension("png");
        std::fs::create_dir_all(plots_dir).with_context(|| format!("creating {}", plots_dir.display()))?;
        draw(SVGBackend::new(&svg, (800, 560)).into_drawing_area(), m)
            .map_err(|e| anyhow::anyhow!("drawing {}: {e}", svg.display()))?;
        draw(BitMapBackend::new(&png, (800, 560)).into_drawing_area(), m)
            .map_err(|e| anyhow::anyhow!("drawing {}: {e}", png.display()))?;
        written.extend([png, svg]);
    }
    for (sweep, ms) in by_sweep {
        std::fs::create_dir_all(tables_dir).with_context(|| format!("creating {}", tables_dir.display()))?;
        let md = tables_dir.join(format!("{experiment}-sweep-{sweep}.md"));
        std::fs::write(&md, render_markdown(&ms)).with_context(|| format!("writing {}", md.display()))?;
        written.push(md);
    }
    Ok(written)
}
