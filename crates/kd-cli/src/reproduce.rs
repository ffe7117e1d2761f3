//! `kd reproduce <experiment>`: the command line of the run pipeline (`kd_run::reproduce`).

use std::path::PathBuf;

use anyhow::Result;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Experiment name: benchmarks/<experiment>.toml.
    pub experiment: String,
    /// Profile: smoke (seconds), cpu (one 2-core machine, under an hour), paper (GPU).
    #[arg(long, default_value = kd_core::recipe::DEFAULT_PROFILE)]
    pub profile: String,
    /// Seeds to run (default: the recipe's), e.g. `--seeds 0,1,2`.
    #[arg(long, value_delimiter = ',')]
    pub seeds: Option<Vec<u64>>,
    /// Variants to run (default: the recipe's), e.g. `--variants plain,kd`.
    #[arg(long, value_delimiter = ',')]
    pub variants: Option<Vec<String>>,
    /// Override recipe values, e.g. `--set distill.temperature=2 --set train.epochs=3`.
    #[arg(long = "set", value_parser = kd_run::reproduce::parse_override)]
    pub overrides: Vec<(String, toml::Value)>,
    /// Folder of recipes (default: <root>/benchmarks).
    #[arg(long)]
    pub recipes: Option<PathBuf>,
    /// Folder of results CSVs (default: <root>/results).
    #[arg(long)]
    pub results: Option<PathBuf>,
    /// Folder of run checkpoints and final models (default: <root>/runs).
    #[arg(long)]
    pub runs: Option<PathBuf>,
    /// Re-run runs whose rows already exist (their old checkpoints are discarded).
    #[arg(long)]
    pub force: bool,
    /// Device: cpu, auto, or cuda / cuda:N with a CUDA build.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Ops the models run: `fast` (kd-kernels; the CPU's default) or `generic` (candle's ops,
    /// as on a GPU: `--kernels generic` runs the GPU's code path on the CPU).
    #[arg(long)]
    pub kernels: Option<String>,
}

impl From<Args> for kd_run::reproduce::Args {
    fn from(a: Args) -> Self {
        kd_run::reproduce::Args {
            experiment: a.experiment,
            profile: a.profile,
            seeds: a.seeds,
            variants: a.variants,
            overrides: a.overrides,
            recipes: a.recipes,
            results: a.results,
            runs: a.runs,
            force: a.force,
            device: a.device,
        }
    }
}

pub fn run(args: Args) -> Result<()> {
    kd_run::env::use_kernels(args.kernels.as_deref(), &args.device)?;
    kd_run::reproduce::run(args.into())
}
