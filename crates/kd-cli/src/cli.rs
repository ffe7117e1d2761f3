//! The `kd` command line: its subcommands and their arguments, as a library so tests can parse
//! what the documentation writes (`tests/readme_commands.rs`).

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use kd_analysis::{cite, compare, report};

use crate::{bench, eval, reproduce, sweep};

#[derive(Parser)]
#[command(name = "kd", version, about = "kd-bench: reproducible knowledge-distillation benchmarks")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run an experiment's recipe (benchmarks/<experiment>.toml) and append its rows to
    /// results/<experiment>.csv.
    Reproduce(reproduce::Args),
    /// List the experiments with their methods, datasets and papers.
    List {
        /// Folder holding the recipes.
        #[arg(long)]
        recipes: Option<PathBuf>,
        /// Print every profile's configuration hash instead (CSV: experiment, profile,
        /// config_hash, and v1_config_hash, the name rows written before 2026-12-03 carry).
        #[arg(long)]
        hashes: bool,
    },
    /// Evaluate a saved model (a run's final checkpoint or a teacher file) on any split.
    Eval(eval::Args),
    /// Measure training and inference examples/s of the models at recipe batch sizes.
    Bench(bench::Args),
    /// Compare groups of results rows: mean ± std, 95% CI, gain over the plain student with a
    /// paired t-test across seeds; mixed configuration hashes are flagged.
    Compare(compare::Args),
    /// Write Markdown and LaTeX tables (papers/tables/) and plots (results/plots/) of experiments.
    Report(report::Args),
    /// Print BibTeX for an experiment's configuration and the papers it reproduces.
    Cite(cite::Args),
    /// Sweep hyper-parameters (grid or random search) on a validation split carved from the
    /// training data: run the points here, or emit a Slurm array job (--emit slurm DIR).
    Sweep(sweep::Args),
}
