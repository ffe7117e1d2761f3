//! Runs one conv path at ResNet-20 shapes (batch 128) for `perf stat`:
//! `taps_vs_im2col [im2col|taps] [fwd|dx|dw] [layer 0-2] [reps]`.
use kd_kernels::bench_api::{conv_backward, conv_backward_taps, conv_forward, conv_forward_taps};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let taps = args.get(1).map(|s| s == "taps").unwrap_or(false);
    let part = args.get(2).cloned().unwrap_or_else(|| "fwd".into());
    let layer: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(0);
    let reps: usize = args.get(4).and_then(|s| s.parse().ok()).unwrap_or(20);
    let n = 128;
    let (c, o, hw) = [(16, 16, 32), (32, 32, 16), (64, 64, 8)][layer];
    let (xd, wd) = ([n, c, hw, hw], [o, c, 3, 3]);
    let x: Vec<f32> = (0..xd.iter().product::<usize>()).map(|i| (i % 7) as f32 * 0.1).collect();
    let w: Vec<f32> = (0..wd.iter().product::<usize>()).map(|i| (i % 5) as f32 * 0.1).collect();
    let dy = conv_forward(xd, wd, 1, 1, &x, &w);
    let (dx, dw) = (part == "dx", part == "dw");
    for _ in 0..reps {
        match (taps, part.as_str()) {
            (true, "fwd") => drop(std::hint::black_box(conv_forward_taps(xd, wd, 1, &x, &w))),
            (false, "fwd") => drop(std::hint::black_box(conv_forward(xd, wd, 1, 1, &x, &w))),
            (true, _) => drop(std::hint::black_box(conv_backward_taps(xd, wd, 1, &x, &w, &dy, dx, dw))),
            (false, _) => drop(std::hint::black_box(conv_backward(xd, wd, 1, 1, &x, &w, &dy, dx, dw))),
        }
    }
}
