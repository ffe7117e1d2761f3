//! Times one training step (forward in training mode, cross-entropy, backward, SGD with
//! momentum and weight decay) of kd-models architectures on random 32×32 inputs, and how much
//! of it the depthwise convolutions take.
//!
//! ```text
//! cargo run --release -p kd-models --example cross_arch_step -- [batch] [steps] [fast|reference] [arch ...]
//! ```
//! `reference` routes depthwise convolutions through candle's grouped conv instead of
//! kd-models' depthwise op (its time is then not measured separately). The first step is a
//! warm-up and is not counted.

use std::time::Instant;

// The allocator kd-cli uses (glibc maps and unmaps every large temporary).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use candle_core::{Device, Tensor};
use kd_core::optim::{Optimizer, Sgd};
use kd_core::Mode;
use kd_models::depthwise::profile;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let batch: usize = args.first().map(|s| s.parse()).transpose()?.unwrap_or(64);
    let steps: usize = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(3);
    let reference = match args.get(2).map(String::as_str) {
        None | Some("fast") => false,
        Some("reference") => true,
        Some(other) => return Err(format!("expected fast or reference, got {other}").into()),
    };
    let archs: Vec<String> = if args.len() > 3 {
        args[3..].to_vec()
    } else {
        ["wrn_40_2", "wrn_16_2", "wrn_40_1", "vgg13", "vgg8", "MobileNetV2", "ShuffleV2", "resnet32x4"]
            .map(String::from)
            .to_vec()
    };
    profile::set_use_reference(reference);
    let dev = Device::Cpu;
    println!(
        "batch {batch}, {steps} timed steps after 1 warm-up, depthwise path {}, {} rayon threads",
        if reference { "candle grouped conv" } else { "kd-models depthwise op" },
        rayon::current_num_threads()
    );
    println!(
        "{:<12} {:>10} {:>12} {:>8} {:>22}  depthwise fwd / dx / dw s",
        "arch", "params", "step s (med)", "img/s", "depthwise s (share)"
    );
    for arch in &archs {
        let (varmap, model) = kd_models::new_model(arch, 100, 0, &dev)?;
        let mut sgd = Sgd::new(kd_models::trainable_vars(&varmap), 0.05, 0.9, false, 5e-4)?;
        let x = Tensor::randn(0f32, 1.0, (batch, 3, 32, 32), &dev)?;
        let labels: Vec<u32> = (0..batch).map(|i| (i * 100 / batch) as u32).collect();
        let labels = Tensor::from_vec(labels, batch, &dev)?;
        let mut times = Vec::with_capacity(steps);
        let mut dw_times = Vec::with_capacity(steps);
        for step in 0..=steps {
            profile::set_timing(step > 0);
            profile::take_seconds();
            let start = Instant::now();
            let out = model.forward(&x, Mode::Train)?;
            let loss = candle_nn::loss::cross_entropy(&out.logits, &labels)?;
            let grads = loss.backward()?;
            sgd.step(&grads)?;
            let elapsed = start.elapsed().as_secs_f64();
            if step > 0 {
                times.push(elapsed);
                dw_times.push(profile::take_seconds());
            }
        }
        profile::set_timing(false);
        times.sort_by(f64::total_cmp);
        let med = times[times.len() / 2];
        let parts = [0, 1, 2].map(|i| dw_times.iter().map(|t: &[f64; 3]| t[i]).sum::<f64>() / steps as f64);
        let dw: f64 = parts.iter().sum();
        println!(
            "{:<12} {:>10} {:>12.3} {:>8.1} {:>15.3} ({:>4.1}%)  {:.3} / {:.3} / {:.3}",
            arch,
            model.num_params(),
            med,
            batch as f64 / med,
            dw,
            100.0 * dw / med,
            parts[0],
            parts[1],
            parts[2]
        );
    }
    Ok(())
}
