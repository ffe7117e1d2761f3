//! `kd bench`: training-step and inference throughput of the models at the recipe batch sizes,
//! on random inputs, with the thread count and CPU features printed. Median of repeats.

use std::time::Instant;

use anyhow::Result;
use candle_core::Tensor;
use kd_core::losses::cross_entropy;
use kd_core::Mode;

use kd_run::env;
use kd_run::models;

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
    /// Device: cpu, or cuda / cuda:N with a CUDA build.
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

pub fn run(args: Args) -> Result<()> {
    let device = kd_run::env::device(&args.device)?;
    println!(
        "kd bench: {} threads, cpu features {}, kd-bench {}",
        env::rayon_threads(),
        env::cpu_features(),
        env!("CARGO_PKG_VERSION")
    );
    println!("{:<12} {:>6} {:>16} {:>6} {:>16}", "model", "batch", "train ex/s", "batch", "infer ex/s");
    for arch in &args.archs {
        let built = models::build(arch, args.num_classes, 0, &device)?;
        let mut opt = models::optimizer(
            &kd_core::recipe::OptimizerSpec::Sgd {
                lr: 0.01,
                momentum: 0.9,
                nesterov: false,
                weight_decay: 5e-4,
            },
            built.trainable.clone(),
        )?;
        let s = args.image_size;
        let x = Tensor::randn(0f32, 1.0, (args.train_batch, 3, s, s), &device)?;
        let labels: Vec<u32> = (0..args.train_batch).map(|i| (i % args.num_classes) as u32).collect();
        let y = Tensor::new(labels.as_slice(), &device)?;
        let mut train = Vec::new();
        for i in 0..=args.repeats {
            let t0 = Instant::now();
            let logits = built.model.forward(&x, Mode::Train)?.logits;
            let loss = cross_entropy(&logits, &y, 0.0)?;
            let grads = loss.backward()?;
            opt.step(&grads)?;
            if i > 0 {
                train.push(args.train_batch as f64 / t0.elapsed().as_secs_f64());
            }
        }
        let xe = Tensor::randn(0f32, 1.0, (args.eval_batch, 3, s, s), &device)?;
        let mut infer = Vec::new();
        for i in 0..=args.repeats {
            let t0 = Instant::now();
            let _ = built.model.forward(&xe, Mode::Eval)?.logits.sum_all()?.to_scalar::<f32>()?;
            if i > 0 {
                infer.push(args.eval_batch as f64 / t0.elapsed().as_secs_f64());
            }
        }
        println!(
            "{:<12} {:>6} {:>16.1} {:>6} {:>16.1}",
            arch,
            args.train_batch,
            median(train),
            args.eval_batch,
            median(infer)
        );
    }
    Ok(())
}
