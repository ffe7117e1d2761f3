//! `kd bench`: training-step and inference throughput of the models at the recipe batch sizes,
//! on random inputs, with the thread count and CPU features printed. Median of repeats.
//! Image models (`resnet20`, …) take `--image-size` images at `--train-batch`/`--eval-batch`;
//! text students (`bert-L…`, `textcnn`) take `--seq-len` random tokens at
//! `--text-train-batch`/`--text-eval-batch`, shaped from all-MiniLM-L6-v2 as the GLUE recipes'
//! students are. On a GPU each timing waits for the device to finish.
//!
//! The training step is the GLUE and CIFAR recipes' KD step against a fixed random teacher-logit
//! tensor (soft-target loss, T = 4, α = 0.9): SGD (momentum 0.9) for image models, AdamW for
//! text models, as their recipes train them. `--vs-pytorch` runs the same measurement in
//! PyTorch (`benchmarks/perf/`) alternately with this one (`vs_pytorch`).

mod vs_pytorch;

use std::sync::Arc;
use std::time::Instant;

use anyhow::Result;
use candle_core::{Device, Tensor, Var};
use kd_core::losses::{SoftTargetConfig, SoftTargetLoss};
use kd_core::recipe::OptimizerSpec;
use kd_core::{Classifier, Mode};
use kd_models::bert;

use kd_run::env;
use kd_run::{glue, models};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Architectures to measure.
    #[arg(long, value_delimiter = ',', default_value = "resnet20,resnet56")]
    pub archs: Vec<String>,
    /// Training batch size.
    #[arg(long, default_value_t = 128)]
    pub train_batch: usize,
    /// Inference batch size.
    #[arg(long, default_value_t = 256)]
    pub eval_batch: usize,
    /// Timed repeats per measurement (after one warm-up); the median is reported.
    #[arg(long, default_value_t = 5)]
    pub repeats: usize,
    #[arg(long, default_value_t = 10)]
    pub num_classes: usize,
    #[arg(long, default_value_t = 32)]
    pub image_size: usize,
    /// Tokens per sequence for text models (the GLUE recipes' `text.max_len` is 64-128).
    #[arg(long, default_value_t = 64)]
    pub seq_len: usize,
    /// Training batch size of text models (the GLUE recipes': 32).
    #[arg(long, default_value_t = 32)]
    pub text_train_batch: usize,
    /// Inference batch size of text models.
    #[arg(long, default_value_t = 128)]
    pub text_eval_batch: usize,
    /// Device: cpu, auto, or cuda / cuda:N with a CUDA build.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Ops the models run: `fast` (kd-kernels; the CPU's default) or `generic` (candle's ops,
    /// as on a GPU: `--kernels generic` runs the GPU's code path on the CPU).
    #[arg(long)]
    pub kernels: Option<String>,
    /// Run PyTorch's measurement of the same models (`benchmarks/perf/pytorch_step.py`, built into this
    /// binary) alternately with this one for `--rounds` rounds and compare the medians.
    /// ResNets (`resnetN`) and BERTs (`bert-LN`, with `transformers`) have a PyTorch twin.
    #[arg(long)]
    pub vs_pytorch: bool,
    /// Alternating rounds of `--vs-pytorch` (each round runs both sides once).
    #[arg(long, default_value_t = 8)]
    pub rounds: usize,
    /// The Python that has PyTorch, for `--vs-pytorch` (a virtual environment's `bin/python`).
    #[arg(long, default_value = "python3")]
    pub python: String,
}

/// all-MiniLM-L6-v2's config.json, the pretrained model the GLUE recipes distil from; text
/// students take their width from it unless their name sets one.
fn minilm_config() -> bert::Config {
    bert::Config {
        vocab_size: 30522,
        hidden_size: 384,
        num_hidden_layers: 6,
        num_attention_heads: 12,
        intermediate_size: 1536,
        hidden_act: bert::HiddenAct::Gelu,
        max_position_embeddings: 512,
        type_vocab_size: 2,
        layer_norm_eps: 1e-12,
    }
}

fn is_text(arch: &str) -> bool {
    arch.starts_with("bert-") || arch.starts_with("textcnn")
}

/// A model to time and the variables its optimiser updates.
struct Bench {
    model: Arc<dyn Classifier>,
    trainable: Vec<(String, Var)>,
}

fn build(arch: &str, args: &Args, device: &Device) -> Result<Bench> {
    if is_text(arch) {
        let (varmap, model) =
            glue::new_text_model(arch, &minilm_config(), args.num_classes, bert::Pooling::Mean, 0, device)?;
        let mut trainable: Vec<(String, Var)> =
            varmap.data().lock().expect("varmap lock").iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        trainable.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(Bench { model, trainable })
    } else {
        let built = models::build(arch, args.num_classes, 0, device)?;
        Ok(Bench { model: built.model, trainable: built.trainable })
    }
}

/// `n` random examples for `arch`: images, or `(n, 3, L)` token ids / type ids / mask rows.
fn inputs(arch: &str, n: usize, args: &Args, device: &Device) -> Result<Tensor> {
    if is_text(arch) {
        let l = args.seq_len;
        let mut data = vec![0u32; n * 3 * l];
        for b in 0..n {
            for t in 0..l {
                // Deterministic token ids away from the special tokens (< 1000 in BERT's vocabulary).
                data[b * 3 * l + t] = 1000 + ((b * 7919 + t * 104_729) % 29_000) as u32;
                data[b * 3 * l + 2 * l + t] = 1;
            }
        }
        Ok(Tensor::from_vec(data, (n, 3, l), device)?)
    } else {
        let s = args.image_size;
        Ok(Tensor::randn(0f32, 1.0, (n, 3, s, s), device)?)
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// One model's median throughputs, examples/s.
#[derive(Clone, Debug, PartialEq)]
pub struct Measurement {
    pub arch: String,
    pub train: f64,
    pub infer: f64,
}

/// The optimiser its recipes train `arch` with (the learning rate does not change the cost).
fn bench_optimizer(arch: &str) -> OptimizerSpec {
    if is_text(arch) {
        OptimizerSpec::Adamw { lr: 5e-5, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01 }
    } else {
        OptimizerSpec::Sgd { lr: 0.01, momentum: 0.9, nesterov: false, weight_decay: 5e-4 }
    }
}

fn batches(arch: &str, args: &Args) -> (usize, usize) {
    if is_text(arch) {
        (args.text_train_batch, args.text_eval_batch)
    } else {
        (args.train_batch, args.eval_batch)
    }
}

/// Median training-step and inference throughput of `arch` over `args.repeats` timed repeats
/// after one warm-up.
fn measure(arch: &str, args: &Args, device: &Device) -> Result<Measurement> {
    let (train_batch, eval_batch) = batches(arch, args);
    let built = build(arch, args, device)?;
    let mut opt = models::optimizer(&bench_optimizer(arch), built.trainable.clone())?;
    let x = inputs(arch, train_batch, args, device)?;
    let labels: Vec<u32> = (0..train_batch).map(|i| (i % args.num_classes) as u32).collect();
    let y = Tensor::new(labels.as_slice(), device)?;
    let teacher = Tensor::randn(0f32, 1.0, (train_batch, args.num_classes), device)?;
    let kd = SoftTargetLoss::new(&SoftTargetConfig { temperature: 4.0, alpha: 0.9, label_smoothing: 0.0 });
    let mut train = Vec::new();
    for i in 0..=args.repeats {
        let t0 = Instant::now();
        let logits = built.model.forward(&x, Mode::Train)?.logits;
        let loss = kd.compute(&logits, &teacher, &y)?.total;
        let grads = loss.backward()?;
        opt.step(&grads)?;
        device.synchronize()?;
        if i > 0 {
            train.push(train_batch as f64 / t0.elapsed().as_secs_f64());
        }
    }
    let xe = inputs(arch, eval_batch, args, device)?;
    let mut infer = Vec::new();
    for i in 0..=args.repeats {
        let t0 = Instant::now();
        let _ = built.model.forward(&xe, Mode::Eval)?.logits.sum_all()?.to_scalar::<f32>()?;
        if i > 0 {
            infer.push(eval_batch as f64 / t0.elapsed().as_secs_f64());
        }
    }
    Ok(Measurement { arch: arch.to_string(), train: median(train), infer: median(infer) })
}

pub fn run(args: Args) -> Result<()> {
    env::use_kernels(args.kernels.as_deref(), &args.device)?;
    let device = env::device(&args.device)?;
    println!(
        "kd bench: device {}, {} threads, cpu {} ({}), kd-bench {}",
        env::device_label(&device),
        env::rayon_threads(),
        env::cpu_model(),
        env::cpu_features(),
        env!("CARGO_PKG_VERSION")
    );
    if args.vs_pytorch {
        return vs_pytorch::run(&args, &device);
    }
    println!("{:<12} {:>6} {:>16} {:>6} {:>16}", "model", "batch", "train ex/s", "batch", "infer ex/s");
    for arch in &args.archs {
        let (train_batch, eval_batch) = batches(arch, &args);
        let m = measure(arch, &args, &device)?;
        println!("{:<12} {:>6} {:>16.1} {:>6} {:>16.1}", arch, train_batch, m.train, eval_batch, m.infer);
    }
    Ok(())
}
