//! `kd`: reproduce knowledge-distillation experiments from their recipes and inspect results.

use kd_analysis::{cite, compare, report};
use kd_cli::{bench, eval, list, reproduce, sweep};

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};

// The kernels allocate large temporaries every step; glibc's malloc turns each into an
// mmap/munmap pair (PERF-NOTES). mimalloc keeps them in-process (see `allocator`).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "kd", version, about = "kd-bench: reproducible knowledge-distillation benchmarks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run an experiment's recipe (benchmarks/<experiment>.toml) and append its rows to
    /// results/<experiment>.csv.
    Reproduce(reproduce::Args),
    /// List the experiments with their methods, datasets and papers.
    List {
        /// Folder holding the recipes.
        #[arg(long)]
        recipes: Option<PathBuf>,
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

fn main() -> Result<()> {
    kd_cli::allocator::keep_freed_memory();
    kd_cli::threads::limit_candle_spinning();
    kd_run::progress::install(Box::new(kd_cli::progress::Bars));
    let cli = Cli::parse();
    match cli.command {
        Command::Reproduce(args) => reproduce::run(args),
        Command::List { recipes } => list::run(recipes),
        Command::Eval(args) => eval::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Compare(args) => compare::run(args),
        Command::Report(args) => report::run(args),
        Command::Cite(args) => cite::run(args),
        Command::Sweep(args) => sweep::run(args),
    }
}
