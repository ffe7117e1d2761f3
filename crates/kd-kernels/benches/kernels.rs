//! Conv and batch-norm kernels at CIFAR ResNet-20 shapes (batch 128), against candle's own ops.
//!
//! `cargo bench -p kd-kernels` (set `RAYON_NUM_THREADS` to match the training binary).

use std::time::Duration;

use candle_core::{Device, Tensor, Var};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use kd_kernels::bench_api::{conv_backward, conv_forward};

const BATCH: usize = 128;

/// `(name, x dims, w dims, stride, padding)` of a conv layer.
type ConvShape = (&'static str, [usize; 4], [usize; 4], usize, usize);

/// The ResNet-20 conv layers.
const CONVS: [ConvShape; 4] = [
    ("16ch_32x32", [BATCH, 16, 32, 32], [16, 16, 3, 3], 1, 1),
    ("32ch_16x16", [BATCH, 32, 16, 16], [32, 32, 3, 3], 1, 1),
    ("64ch_8x8", [BATCH, 64, 8, 8], [64, 64, 3, 3], 1, 1),
    ("16to32_s2", [BATCH, 16, 32, 32], [32, 16, 3, 3], 2, 1),
];

fn data(len: usize, seed: usize) -> Vec<f32> {
    (0..len).map(|i| ((i * 7 + seed * 13) % 17) as f32 / 17.0 - 0.5).collect()
}

fn conv(c: &mut Criterion) {
    let mut group = c.benchmark_group("conv2d");
    group.sample_size(10).measurement_time(Duration::from_secs(3));
    for (name, xd, wd, s, p) in CONVS {
        let x = data(xd.iter().product(), 1);
        let w = data(wd.iter().product(), 2);
        let dy = conv_forward(xd, wd, s, p, &x, &w);
        group.bench_function(BenchmarkId::new("forward", name), |b| {
            b.iter(|| conv_forward(xd, wd, s, p, &x, &w))
        });
        group.bench_function(BenchmarkId::new("backward_dx_dw", name), |b| {
            b.iter(|| conv_backward(xd, wd, s, p, &x, &w, &dy, true, true))
        });
        let dev = Device::Cpu;
        let xt = Tensor::from_vec(x.clone(), &xd, &dev).expect("x");
        let wt = Tensor::from_vec(w.clone(), &wd, &dev).expect("w");
        group.bench_function(BenchmarkId::new("candle_forward", name), |b| {
            b.iter(|| kd_kernels::reference::conv2d(&xt, &wt, s, p).expect("conv"))
        });
    }
    group.finish();
}

fn batch_norm(c: &mut Criterion) {
    let mut group = c.benchmark_group("batch_norm");
    group.sample_size(10).measurement_time(Duration::from_secs(3));
    let dev = Device::Cpu;
    for (name, dims) in [("16ch_32x32", [BATCH, 16, 32, 32]), ("64ch_8x8", [BATCH, 64, 8, 8])] {
        let ch = dims[1];
        let x = Var::from_vec(data(dims.iter().product(), 3), &dims, &dev).expect("x");
        let gamma = Var::ones(ch, candle_core::DType::F32, &dev).expect("gamma");
        let beta = Var::zeros(ch, candle_core::DType::F32, &dev).expect("beta");
        let proj = Tensor::from_vec(data(dims.iter().product(), 4), &dims, &dev).expect("p");
        group.bench_function(BenchmarkId::new("relu_train_forward", name), |b| {
            b.iter(|| kd_kernels::batch_norm_relu_train(&x, &gamma, &beta, 1e-5).expect("bn"))
        });
        group.bench_function(BenchmarkId::new("relu_train_forward_backward", name), |b| {
            b.iter(|| {
                let y = kd_kernels::batch_norm_relu_train(&x, &gamma, &beta, 1e-5).expect("bn").0;
                (y * &proj).and_then(|t| t.sum_all()).and_then(|l| l.backward()).expect("bwd")
            })
        });
        group.bench_function(BenchmarkId::new("candle_relu_train_forward_backward", name), |b| {
            b.iter(|| {
                let y = kd_kernels::reference::batch_norm_train(&x, &gamma, &beta, 1e-5)
                    .and_then(|r| r.0.relu())
                    .expect("bn");
                (y * &proj).and_then(|t| t.sum_all()).and_then(|l| l.backward()).expect("bwd")
            })
        });
    }
    group.finish();
}

criterion_group!(benches, conv, batch_norm);
criterion_main!(benches);
