//! Resident memory over repeated conv2d forward + backward steps with a trainable 1x1 kernel, alone
//! and on a real student's stage feature
//! (what FitNet's regressor and VID's regressors do): `cargo run --release -p kd-feature
//! --example conv_memory`. Prints VmRSS; flat means no growth per step. Measured 2026-12-02: flat
//! (25-29 MiB alone, 158-160 MiB with the student), so the ~110 MB/step growth of FitNet and VID
//! in the full pipeline comes from elsewhere (the optimiser on method-owned conv weights, or the
//! live teacher), not from candle's conv2d itself.

use candle_core::{DType, Device, Tensor, Var};

fn rss_mib() -> f64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .map(|kib| kib / 1024.0)
        .unwrap_or(f64::NAN)
}

fn main() -> candle_core::Result<()> {
    let dev = Device::Cpu;
    let w = Var::from_tensor(&(Tensor::randn(0f32, 0.1, (32, 32, 1, 1), &dev)?))?;
    let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (64, 32, 16, 16), &dev)?)?;
    for step in 0..60 {
        let y = x.as_tensor().conv2d(w.as_tensor(), 0, 1, 1, 1)?;
        let loss = y.sqr()?.mean_all()?;
        let grads = loss.backward()?;
        let g = grads.get(w.as_tensor()).expect("a gradient");
        w.set(&(w.as_tensor() - (g * 0.01)?)?)?;
        if step % 10 == 0 {
            println!(
                "step {step:3}: loss {:.4}, rss {:.0} MiB",
                loss.to_dtype(DType::F64)?.to_scalar::<f64>()?,
                rss_mib()
            );
        }
    }
    // The same on a real student's stage feature (kd-kernels' fast ops upstream), as FitNet does.
    let (_vars, student) = kd_models::new_model("resnet20b", 100, 1, &dev).expect("resnet20b");
    let inputs = Tensor::randn(0f32, 1.0, (64, 3, 32, 32), &dev)?;
    for step in 0..30 {
        let out = student.forward(&inputs, kd_core::Mode::Train)?;
        let y = out.stage_features[1].conv2d(w.as_tensor(), 0, 1, 1, 1)?;
        let loss = (y.sqr()?.mean_all()? + out.logits.sqr()?.mean_all()?)?;
        let _grads = loss.backward()?;
        if step % 5 == 0 {
            println!("student step {step:3}: rss {:.0} MiB", rss_mib());
        }
    }
    Ok(())
}
