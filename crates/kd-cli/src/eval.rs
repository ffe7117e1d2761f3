//! `kd eval`: evaluate any saved model on any split of any hub dataset.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use kd_core::recipe::{DataSection, NormalizeSpec};
use kd_core::trainer::{self, BatchSource};

use kd_run::data::{load_split, Loader};
use kd_run::models;
use kd_run::progress;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// A run's final model (`runs/.../<variant>-seed<k>.safetensors`, which records its
    /// architecture and normalisation) or any weights file with `--arch`.
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Hub dataset id, e.g. uoft-cs/cifar10.
    #[arg(long)]
    pub dataset: String,
    #[arg(long, default_value = "test")]
    pub split: String,
    #[arg(long, default_value = "main")]
    pub revision: String,
    /// Dataset config (card config_name), e.g. plain_text.
    #[arg(long)]
    pub config: Option<String>,
    #[arg(long, default_value = "img")]
    pub image_column: String,
    #[arg(long, default_value = "label")]
    pub label_column: String,
    /// Architecture, when the checkpoint does not record it.
    #[arg(long)]
    pub arch: Option<String>,
    /// Number of classes, when the checkpoint does not record it.
    #[arg(long)]
    pub num_classes: Option<usize>,
    /// Per-channel mean, e.g. `0.485,0.456,0.406` (default: the checkpoint's).
    #[arg(long, value_delimiter = ',')]
    pub mean: Option<Vec<f32>>,
    /// Per-channel std (default: the checkpoint's).
    #[arg(long, value_delimiter = ',')]
    pub std: Option<Vec<f32>>,
    /// Evaluate a class-balanced subset of this many examples.
    #[arg(long)]
    pub limit: Option<usize>,
    #[arg(long, default_value_t = 256)]
    pub batch_size: usize,
    /// Device: cpu, or cuda / cuda:N with a CUDA build.
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

fn triple(v: Option<Vec<f32>>, fallback: Option<[f32; 3]>, what: &str) -> Result<[f32; 3]> {
    match v {
        Some(v) => <[f32; 3]>::try_from(v.as_slice()).map_err(|_| anyhow::anyhow!("--{what} needs 3 values")),
        None => fallback
            .ok_or_else(|| anyhow::anyhow!("the checkpoint records no normalisation: pass --mean and --std")),
    }
}

pub fn run(args: Args) -> Result<()> {
    let device = kd_run::env::device(&args.device)?;
    let info = models::saved_model_info(&args.checkpoint)?;
    let arch = args
        .arch
        .clone()
        .or(info.arch.clone())
        .context("the checkpoint records no architecture: pass --arch")?;
    let num_classes = args
        .num_classes
        .or(info.num_classes)
        .context("the checkpoint records no class count: pass --num-classes")?;
    let data = DataSection {
        hub: args.dataset.clone(),
        revision: args.revision.clone(),
        config: args.config.clone(),
        train_split: args.split.clone(),
        eval_split: args.split.clone(),
        image_column: args.image_column.clone(),
        label_column: args.label_column.clone(),
        num_classes,
        train_limit: None,
        eval_limit: args.limit,
        subset_seed: 0,
        normalize: NormalizeSpec {
            mean: triple(args.mean.clone(), info.mean, "mean")?,
            std: triple(args.std.clone(), info.std, "std")?,
        },
        augment: None,
        validation_size: None,
        validation_seed: None,
        resize: None,
    };
    let built = models::build(&arch, num_classes, 0, &device)?;
    models::load_weights(&built, &args.checkpoint)?;
    let hub = kd_data::HubCache::from_env();
    let split = load_split(&hub, &data, &args.split, args.limit)?;
    let loader = Loader::eval(&split, &data, args.batch_size, &device);
    let t0 = Instant::now();
    let mut bars = progress::training("eval", Vec::new());
    bars.on_eval_start(loader.steps());
    let model = built.model.clone();
    let scores = trainer::evaluate_with(&loader, 1, &kd_core::metric::top1_top5(), bars.as_mut(), |x| {
        Ok(vec![model.forward(x, kd_core::Mode::Eval)?.logits])
    })?
    .remove(0);
    drop(bars);
    let secs = t0.elapsed().as_secs_f64();
    println!(
        "{arch} on {} {} @ {} ({} examples): top1 {:.2}{}  ({:.1}s, {:.0} ex/s)",
        args.dataset,
        args.split,
        &split.dataset.revision,
        split.indices.len(),
        scores.get("top1").unwrap_or(f64::NAN),
        scores.get("top5").map(|t| format!(", top5 {t:.2}")).unwrap_or_default(),
        secs,
        split.indices.len() as f64 / secs.max(1e-9)
    );
    Ok(())
}
