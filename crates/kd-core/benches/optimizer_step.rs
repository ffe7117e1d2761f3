//! One optimiser step over a model's parameters: SGD with momentum over ResNet-20's (the CIFAR
//! recipes; candle's element-wise ops) and AdamW over bert-L2's (the GLUE students, whose
//! 30,522 × 384 embedding table is most of them), fused (the CPU default) and composed of
//! candle's ops (one sweep and one fresh allocation per operation; the GPU's path).
//!
//! `MIMALLOC_PURGE_DELAY=-1 cargo bench -p kd-core --bench optimizer_step` (mimalloc with
//! purging off, as the `kd` binary runs; set `RAYON_NUM_THREADS` as for training).

use std::time::Duration;

use candle_core::{DType, Device, Tensor, Var};
use criterion::{criterion_group, criterion_main, Criterion};
use kd_core::optim::{AdamW, Optimizer, Sgd};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// ResNet-20's parameter shapes (He et al.'s CIFAR ResNet, option A shortcuts: no weights).
fn resnet20_shapes() -> Vec<Vec<usize>> {
    let mut out = vec![vec![16, 3, 3, 3], vec![16], vec![16]];
    let mut c_in = 16;
    for c in [16, 32, 64] {
        for _ in 0..3 {
            for conv_in in [c_in, c] {
                out.extend([vec![c, conv_in, 3, 3], vec![c], vec![c]]);
            }
            c_in = c;
        }
    }
    out.extend([vec![10, 64], vec![10]]);
    out
}

/// bert-L2's parameter shapes: MiniLM's width (384, FFN 1536), 2 layers, a 2-way head.
fn bert_l2_shapes() -> Vec<Vec<usize>> {
    let (h, i) = (384, 1536);
    let mut out = vec![vec![30522, h], vec![512, h], vec![2, h], vec![h], vec![h]];
    for _ in 0..2 {
        for _ in 0..4 {
            out.extend([vec![h, h], vec![h]]); // query, key, value, attention output
        }
        out.extend([vec![h], vec![h], vec![i, h], vec![i], vec![h, i], vec![h], vec![h], vec![h]]);
    }
    out.extend([vec![2, h], vec![2]]);
    out
}

/// Variables of `shapes` and a gradient store holding a fixed gradient for each.
fn params_and_grads(shapes: &[Vec<usize>]) -> (Vec<(String, Var)>, candle_core::backprop::GradStore) {
    let dev = Device::Cpu;
    let mut params = Vec::new();
    let mut loss = Tensor::zeros((), DType::F32, &dev).unwrap();
    for (k, shape) in shapes.iter().enumerate() {
        let n: usize = shape.iter().product();
        let values: Vec<f32> = (0..n).map(|j| ((j * 7 + k * 13) % 17) as f32 / 17.0 - 0.5).collect();
        let var =
            Var::from_tensor(&Tensor::from_vec(values.clone(), shape.as_slice(), &dev).unwrap()).unwrap();
        let grad: Vec<f32> = values.iter().map(|v| v * 0.01 + 1e-3).collect();
        let grad = Tensor::from_vec(grad, shape.as_slice(), &dev).unwrap();
        // d(sum(var * grad))/d var = grad.
        loss = (loss + (var.as_tensor() * &grad).unwrap().sum_all().unwrap()).unwrap();
        params.push((format!("p{k}"), var));
    }
    let grads = loss.backward().unwrap();
    (params, grads)
}

fn optimizer_step(c: &mut Criterion) {
    let mut group = c.benchmark_group("optimizer_step");
    group.sample_size(20).measurement_time(Duration::from_secs(4));

    let (params, grads) = params_and_grads(&resnet20_shapes());
    let mut sgd = Sgd::new(params, 0.05, 0.9, false, 5e-4).unwrap();
    sgd.step(&grads).unwrap(); // momentum buffers exist from the second step on
    group.bench_function("sgd_momentum_resnet20", |b| b.iter(|| sgd.step(&grads).unwrap()));

    for fused in [true, false] {
        let (params, grads) = params_and_grads(&bert_l2_shapes());
        let adamw = AdamW::new(params, 5e-5, 0.9, 0.999, 1e-8, 0.01).unwrap();
        let mut adamw = if fused { adamw } else { adamw.without_fused_update() };
        adamw.step(&grads).unwrap(); // the moments exist from the second step on
        let name = if fused { "adamw_bert_l2_fused" } else { "adamw_bert_l2_composed" };
        group.bench_function(name, |b| b.iter(|| adamw.step(&grads).unwrap()));
    }
    group.finish();
}

criterion_group!(benches, optimizer_step);
criterion_main!(benches);
