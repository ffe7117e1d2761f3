//! Times the conv kernels at CIFAR ResNet-20 shapes (batch 128), each part separately.
//!
//! `cargo run --release -p kd-kernels --example conv_profile [shape filter, e.g. 16ch]`

use std::time::Instant;

use kd_kernels::bench_api::{conv_backward, conv_forward};

fn time<R>(reps: usize, mut f: impl FnMut() -> R) -> f64 {
    f();
    let mut best = f64::INFINITY;
    for _ in 0..reps {
        let t = Instant::now();
        std::hint::black_box(f());
        best = best.min(t.elapsed().as_secs_f64());
    }
    best
}

fn main() {
    let n = 128;
    let shapes = [
        ("16ch 32x32 3x3", [n, 16, 32, 32], [16, 16, 3, 3], 1, 1),
        ("16->32 s2 3x3", [n, 16, 32, 32], [32, 16, 3, 3], 2, 1),
        ("32ch 16x16 3x3", [n, 32, 16, 16], [32, 32, 3, 3], 1, 1),
        ("64ch 8x8 3x3", [n, 64, 8, 8], [64, 64, 3, 3], 1, 1),
        ("stem 3->16", [n, 3, 32, 32], [16, 3, 3, 3], 1, 1),
    ];
    // An optional argument picks the shapes whose name contains it (for profiling one layer).
    let only = std::env::args().nth(1).unwrap_or_default();
    for (name, xd, wd, s, p) in shapes.into_iter().filter(|s| s.0.contains(only.as_str())) {
        let x: Vec<f32> = (0..xd.iter().product::<usize>()).map(|i| (i % 7) as f32 * 0.1).collect();
        let w: Vec<f32> = (0..wd.iter().product::<usize>()).map(|i| (i % 5) as f32 * 0.1).collect();
        let y = conv_forward(xd, wd, s, p, &x, &w);
        let flops = 2.0 * y.len() as f64 * (wd[1] * wd[2] * wd[3]) as f64;
        let fwd = time(5, || conv_forward(xd, wd, s, p, &x, &w));
        let dx = time(5, || conv_backward(xd, wd, s, p, &x, &w, &y, true, false));
        let dw = time(5, || conv_backward(xd, wd, s, p, &x, &w, &y, false, true));
        let both = time(5, || conv_backward(xd, wd, s, p, &x, &w, &y, true, true));
        println!(
            "{name:>16}: fwd {:6.1} ms ({:5.1} GF/s)  dx {:6.1} ms ({:5.1})  dw {:6.1} ms ({:5.1})  dx+dw {:6.1} ms",
            fwd * 1e3,
            flops / fwd / 1e9,
            dx * 1e3,
            flops / dx / 1e9,
            dw * 1e3,
            flops / dw / 1e9,
            both * 1e3
        );
    }
}
