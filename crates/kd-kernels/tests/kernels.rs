//! Every fast kernel against the candle-op reference: forward and gradients on random inputs.

use candle_core::{DType, Device, Result, Tensor, Var};
use kd_kernels::reference;

/// Deterministic uniform values in `[-1, 1)` (SplitMix64), so the tests need no RNG crate.
fn values(len: usize, seed: u64) -> Vec<f32> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
    (0..len)
        .map(|_| {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            ((z >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

fn tensor(dims: &[usize], seed: u64) -> Tensor {
    let len = dims.iter().product();
    Tensor::from_vec(values(len, seed), dims, &Device::Cpu).expect("tensor")
}

/// `max |a - b| / max |b|`.
fn rel_err(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shapes differ");
    let a = a.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let b = b.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let scale = b.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-12);
    let diff = a.iter().zip(&b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
    diff / scale
}

fn assert_close(what: &str, a: &Tensor, b: &Tensor, tol: f32) {
    let e = rel_err(a, b);
    assert!(e <= tol, "{what}: relative error {e} > {tol}");
}

/// Scalar loss `Σ y·p` with a fixed random projection `p`, so every output element matters.
fn project(y: &Tensor, seed: u64) -> Result<Tensor> {
    (y * tensor(y.dims(), seed))?.sum_all()
}

/// Direct-loop convolution in f64: `(y, dx, dw)` for the loss `Σ y·p`.
fn naive_conv(
    x: &Tensor,
    w: &Tensor,
    p: &Tensor,
    stride: usize,
    pad: usize,
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let (n, c, h, wd) = x.dims4().unwrap();
    let (o, _, kh, kw) = w.dims4().unwrap();
    let oh = (h + 2 * pad - kh) / stride + 1;
    let ow = (wd + 2 * pad - kw) / stride + 1;
    let xs = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let ws = w.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let ps = p.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let mut y = vec![0f64; n * o * oh * ow];
    let mut dx = vec![0f64; xs.len()];
    let mut dw = vec![0f64; ws.len()];
    for b in 0..n {
        for oc in 0..o {
            for oy in 0..oh {
                for ox in 0..ow {
                    let yi = ((b * o + oc) * oh + oy) * ow + ox;
                    for ic in 0..c {
                        for ki in 0..kh {
                            for kj in 0..kw {
                                let iy = (oy * stride + ki) as isize - pad as isize;
                                let ix = (ox * stride + kj) as isize - pad as isize;
                                if iy < 0 || ix < 0 || iy >= h as isize || ix >= wd as isize {
                                    continue;
                                }
                                let xi = ((b * c + ic) * h + iy as usize) * wd + ix as usize;
                                let wi = ((oc * c + ic) * kh + ki) * kw + kj;
                                y[yi] += xs[xi] as f64 * ws[wi] as f64;
                                dx[xi] += ps[yi] as f64 * ws[wi] as f64;
                                dw[wi] += ps[yi] as f64 * xs[xi] as f64;
                            }
                        }
                    }
                }
            }
        }
    }
    (y, dx, dw)
}

fn assert_close_f64(what: &str, a: &Tensor, b: &[f64], tol: f64) {
    let a = a.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(a.len(), b.len(), "{what}: lengths differ");
    let scale = b.iter().fold(0f64, |m, v| m.max(v.abs())).max(1e-12);
    let diff = a.iter().zip(b).fold(0f64, |m, (x, y)| m.max((*x as f64 - y).abs()));
    assert!(diff / scale <= tol, "{what}: relative error {} > {tol}", diff / scale);
}

/// Checks forward and gradients against a direct f64 loop, and against candle's own conv where
/// candle's backward supports the geometry (it fails when only one spatial dimension has
/// `(size + 2·pad - k) % stride != 0`).
fn check_conv(x_dims: [usize; 4], w_dims: [usize; 4], stride: usize, pad: usize, seed: u64) {
    let x = Var::from_tensor(&tensor(&x_dims, seed)).unwrap();
    let w = Var::from_tensor(&(tensor(&w_dims, seed + 1) * 0.3).unwrap()).unwrap();
    let y = kd_kernels::conv2d(&x, &w, stride, pad).unwrap();
    let what = format!("conv x{x_dims:?} w{w_dims:?} s{stride} p{pad}");
    let p = tensor(y.dims(), seed + 2);
    let grads = (&y * &p).unwrap().sum_all().unwrap().backward().unwrap();
    let (y_naive, dx_naive, dw_naive) = naive_conv(&x, &w, &p, stride, pad);
    assert_close_f64(&format!("{what} forward (naive)"), &y, &y_naive, 1e-5);
    assert_close_f64(&format!("{what} dx (naive)"), grads.get(&x).unwrap(), &dx_naive, 1e-4);
    assert_close_f64(&format!("{what} dw (naive)"), grads.get(&w).unwrap(), &dw_naive, 1e-4);

    let rem_h = (x_dims[2] + 2 * pad - w_dims[2]) % stride;
    let rem_w = (x_dims[3] + 2 * pad - w_dims[3]) % stride;
    if rem_h != rem_w {
        return;
    }
    let y_ref = reference::conv2d(&x, &w, stride, pad).unwrap();
    assert_close(&format!("{what} forward"), &y, &y_ref, 1e-5);
    let grads_ref = (&y_ref * &p).unwrap().sum_all().unwrap().backward().unwrap();
    for (name, v) in [("dx", &x), ("dw", &w)] {
        let g = grads.get(v).expect("grad");
        let g_ref = grads_ref.get(v).expect("reference grad");
        assert_close(&format!("{what} {name}"), g, g_ref, 1e-4);
    }
}

#[test]
fn conv_3x3_stride1_pad1() {
    check_conv([3, 3, 7, 5], [16, 3, 3, 3], 1, 1, 10);
    check_conv([3, 16, 7, 5], [16, 16, 3, 3], 1, 1, 11);
    check_conv([2, 64, 8, 8], [64, 64, 3, 3], 1, 1, 12);
}

#[test]
fn conv_winograd_path() {
    // 3×3 stride 1 padding 1 with ≥ 8 channels and even sizes take Winograd F(2×2, 3×3):
    // the ResNet stages' shapes, channel counts that change, several groups with a partial
    // last one, an oblong image.
    check_conv([2, 16, 32, 32], [16, 16, 3, 3], 1, 1, 13);
    check_conv([7, 8, 16, 16], [12, 8, 3, 3], 1, 1, 14);
    check_conv([37, 32, 8, 8], [64, 32, 3, 3], 1, 1, 17);
    check_conv([3, 8, 6, 12], [8, 8, 3, 3], 1, 1, 18);
}

#[test]
fn conv_same_padding_tap_path() {
    // Other stride-1 "same" convolutions at 16×16 and up take the tap-GEMM path: a 5×5
    // kernel, too few input channels for Winograd on a non-square image.
    check_conv([2, 3, 20, 18], [4, 3, 5, 5], 1, 2, 15);
    check_conv([3, 3, 17, 31], [16, 3, 3, 3], 1, 1, 16);
    check_conv([2, 4, 16, 16], [8, 4, 3, 3], 1, 1, 19);
}

#[test]
fn conv_3x3_stride2_pad1() {
    check_conv([3, 16, 7, 5], [32, 16, 3, 3], 2, 1, 20);
    check_conv([3, 32, 8, 8], [64, 32, 3, 3], 2, 1, 21);
    // Even sizes take the parity sub-plane path: the ResNet downsampling shape, an oblong
    // image, no padding, a 5×5 kernel (taps reaching two sub-plane rows away).
    check_conv([5, 16, 32, 32], [32, 16, 3, 3], 2, 1, 22);
    check_conv([3, 8, 6, 10], [8, 8, 3, 3], 2, 1, 23);
    check_conv([3, 8, 8, 8], [8, 8, 3, 3], 2, 0, 24);
    check_conv([2, 3, 12, 8], [4, 3, 5, 5], 2, 2, 25);
}

#[test]
fn conv_1x1() {
    check_conv([3, 32, 7, 5], [64, 32, 1, 1], 1, 0, 30);
    check_conv([3, 32, 7, 5], [16, 32, 1, 1], 2, 0, 31);
    check_conv([3, 16, 8, 8], [32, 16, 1, 1], 2, 0, 32);
}

#[test]
fn conv_image_groups_with_remainder() {
    // 8×8 outputs put 16 images in one GEMM; 20 images leave a partial group.
    check_conv([20, 4, 8, 8], [8, 4, 3, 3], 1, 1, 40);
    check_conv([20, 8, 8, 8], [4, 8, 1, 1], 1, 0, 41);
    check_conv([19, 3, 9, 6], [5, 3, 3, 3], 2, 1, 42);
}

#[test]
fn conv_other_geometries() {
    check_conv([2, 3, 9, 6], [4, 3, 5, 5], 2, 2, 50);
    check_conv([2, 3, 7, 5], [4, 3, 3, 3], 1, 0, 51);
    check_conv([2, 3, 7, 5], [4, 3, 3, 2], 3, 1, 52);
}

#[test]
fn conv_weight_grad_only_when_input_is_constant() {
    let x = tensor(&[3, 3, 7, 5], 60);
    let w = Var::from_tensor(&tensor(&[16, 3, 3, 3], 61)).unwrap();
    let y = kd_kernels::conv2d(&x, &w, 1, 1).unwrap();
    let grads = project(&y, 62).unwrap().backward().unwrap();
    assert!(grads.get(&x).is_none(), "a constant input gets no gradient");
    let y_ref = reference::conv2d(&x, &w, 1, 1).unwrap();
    let grads_ref = project(&y_ref, 62).unwrap().backward().unwrap();
    assert_close("dw", grads.get(&w).unwrap(), grads_ref.get(&w).unwrap(), 1e-4);
}

#[test]
fn conv_non_contiguous_input() {
    let x = tensor(&[3, 5, 7, 4], 70).transpose(2, 3).unwrap(); // (3, 5, 4, 7), strided
    let w = tensor(&[6, 5, 3, 3], 71);
    let y = kd_kernels::conv2d(&x, &w, 1, 1).unwrap();
    let y_ref = reference::conv2d(&x.contiguous().unwrap(), &w, 1, 1).unwrap();
    assert_close("strided conv", &y, &y_ref, 1e-5);
}

#[test]
fn conv_bad_shapes_are_errors() {
    let x = tensor(&[2, 3, 5, 5], 80);
    let err = kd_kernels::conv2d(&x, &tensor(&[4, 2, 3, 3], 81), 1, 1).unwrap_err();
    assert!(err.to_string().contains("input channels"), "{err}");
    assert!(kd_kernels::conv2d(&x, &tensor(&[4, 3, 7, 7], 82), 1, 0).is_err());
    assert!(kd_kernels::conv2d(&tensor(&[3, 5, 5], 83), &tensor(&[4, 3, 3, 3], 84), 1, 1).is_err());
}

#[test]
fn conv_falls_back_for_f64() {
    let x = tensor(&[2, 3, 6, 6], 90).to_dtype(DType::F64).unwrap();
    let w = tensor(&[4, 3, 3, 3], 91).to_dtype(DType::F64).unwrap();
    let y = kd_kernels::conv2d(&x, &w, 1, 1).unwrap();
    assert_eq!(y.dtype(), DType::F64);
    assert_eq!(y.dims(), &[2, 4, 6, 6]);
}

fn bn_inputs(dims: [usize; 4], seed: u64) -> (Var, Var, Var) {
    // An offset mean and uneven scale, as conv outputs have.
    let x = ((tensor(&dims, seed) * 2.5).unwrap() + 3.0).unwrap();
    let c = dims[1];
    let gamma = (tensor(&[c], seed + 1) + 1.5).unwrap();
    let beta = tensor(&[c], seed + 2);
    (Var::from_tensor(&x).unwrap(), Var::from_tensor(&gamma).unwrap(), Var::from_tensor(&beta).unwrap())
}

fn check_bn_train(dims: [usize; 4], relu: bool, seed: u64) {
    let (x, gamma, beta) = bn_inputs(dims, seed);
    let eps = 1e-5;
    let (y, mean, var) = if relu {
        kd_kernels::batch_norm_relu_train(&x, &gamma, &beta, eps).unwrap()
    } else {
        kd_kernels::batch_norm_train(&x, &gamma, &beta, eps).unwrap()
    };
    let (y_ref, mean_ref, var_ref) = reference::batch_norm_train(&x, &gamma, &beta, eps).unwrap();
    let y_ref = if relu { y_ref.relu().unwrap() } else { y_ref };
    let what = format!("bn train {dims:?} relu={relu}");
    assert_close(&format!("{what} y"), &y, &y_ref, 1e-5);
    assert_close(&format!("{what} mean"), &mean, &mean_ref, 1e-5);
    assert_close(&format!("{what} var"), &var, &var_ref, 1e-5);
    assert!(!mean.track_op() && !var.track_op(), "statistics are detached");

    let grads = project(&y, seed + 3).unwrap().backward().unwrap();
    let grads_ref = project(&y_ref, seed + 3).unwrap().backward().unwrap();
    for (name, v) in [("dx", &x), ("dgamma", &gamma), ("dbeta", &beta)] {
        let g = grads.get(v).expect("grad");
        let g_ref = grads_ref.get(v).expect("reference grad");
        assert_close(&format!("{what} {name}"), g, g_ref, 1e-4);
    }
}

#[test]
fn batch_norm_train_matches_reference() {
    check_bn_train([3, 16, 7, 5], false, 100);
    check_bn_train([4, 32, 8, 8], false, 101);
    check_bn_train([5, 3, 1, 1], false, 102);
}

#[test]
fn batch_norm_relu_train_matches_reference() {
    check_bn_train([3, 16, 7, 5], true, 110);
    check_bn_train([4, 64, 8, 8], true, 111);
}

fn check_bn_eval(dims: [usize; 4], relu: bool, seed: u64) {
    let (x, gamma, beta) = bn_inputs(dims, seed);
    let c = dims[1];
    let rm = (tensor(&[c], seed + 4) + 3.0).unwrap();
    let rv = (tensor(&[c], seed + 5) + 2.0).unwrap();
    let eps = 1e-5;
    let y = if relu {
        kd_kernels::batch_norm_relu_eval(&x, &gamma, &beta, &rm, &rv, eps).unwrap()
    } else {
        kd_kernels::batch_norm_eval(&x, &gamma, &beta, &rm, &rv, eps).unwrap()
    };
    let y_ref = reference::batch_norm_eval(&x, &gamma, &beta, &rm, &rv, eps).unwrap();
    let y_ref = if relu { y_ref.relu().unwrap() } else { y_ref };
    let what = format!("bn eval {dims:?} relu={relu}");
    assert_close(&format!("{what} y"), &y, &y_ref, 1e-5);
    let grads = project(&y, seed + 6).unwrap().backward().unwrap();
    let grads_ref = project(&y_ref, seed + 6).unwrap().backward().unwrap();
    for (name, v) in [("dx", &x), ("dgamma", &gamma), ("dbeta", &beta)] {
        let g = grads.get(v).expect("grad");
        let g_ref = grads_ref.get(v).expect("reference grad");
        assert_close(&format!("{what} {name}"), g, g_ref, 1e-4);
    }
}

#[test]
fn batch_norm_eval_matches_reference() {
    check_bn_eval([3, 16, 7, 5], false, 120);
    check_bn_eval([2, 32, 4, 4], true, 121);
}

#[test]
fn batch_norm_bad_shapes_are_errors() {
    let x = tensor(&[2, 4, 3, 3], 130);
    let err = kd_kernels::batch_norm_train(&x, &tensor(&[3], 131), &tensor(&[4], 132), 1e-5).unwrap_err();
    assert!(err.to_string().contains("gamma"), "{err}");
    let bad_stats = kd_kernels::batch_norm_eval(
        &x,
        &tensor(&[4], 133),
        &tensor(&[4], 134),
        &tensor(&[5], 135),
        &tensor(&[5], 136),
        1e-5,
    );
    assert!(bad_stats.is_err());
}

#[test]
fn relu_and_add_relu_match_candle() {
    let a = Var::from_tensor(&tensor(&[3, 5, 7, 5], 140)).unwrap();
    let b = Var::from_tensor(&tensor(&[3, 5, 7, 5], 141)).unwrap();
    let y = kd_kernels::add_relu(&a, &b).unwrap();
    let y_ref = (a.as_tensor() + b.as_tensor()).unwrap().relu().unwrap();
    assert_close("add_relu", &y, &y_ref, 0.0);
    let grads = project(&y, 142).unwrap().backward().unwrap();
    let grads_ref = project(&y_ref, 142).unwrap().backward().unwrap();
    for v in [&a, &b] {
        assert_close("add_relu grad", grads.get(v).unwrap(), grads_ref.get(v).unwrap(), 0.0);
    }

    let y = kd_kernels::relu(&a).unwrap();
    let y_ref = a.as_tensor().relu().unwrap();
    assert_close("relu", &y, &y_ref, 0.0);
    let grads = project(&y, 143).unwrap().backward().unwrap();
    let grads_ref = project(&y_ref, 143).unwrap().backward().unwrap();
    assert_close("relu grad", grads.get(&a).unwrap(), grads_ref.get(&a).unwrap(), 0.0);
    assert!(kd_kernels::add_relu(&a, &tensor(&[3, 5, 7, 4], 144)).is_err());
}

/// A residual block built from the kernels trains like the same block from candle ops.
#[test]
fn residual_block_gradients_match_reference() {
    let x = Var::from_tensor(&tensor(&[6, 16, 8, 8], 150)).unwrap();
    let w1 = Var::from_tensor(&(tensor(&[16, 16, 3, 3], 151) * 0.2).unwrap()).unwrap();
    let w2 = Var::from_tensor(&(tensor(&[16, 16, 3, 3], 152) * 0.2).unwrap()).unwrap();
    let g1 = Var::from_tensor(&(tensor(&[16], 153) + 1.0).unwrap()).unwrap();
    let b1 = Var::from_tensor(&tensor(&[16], 154)).unwrap();
    let g2 = Var::from_tensor(&(tensor(&[16], 155) + 1.0).unwrap()).unwrap();
    let b2 = Var::from_tensor(&tensor(&[16], 156)).unwrap();
    let eps = 1e-5;

    let h = kd_kernels::conv2d(&x, &w1, 1, 1).unwrap();
    let h = kd_kernels::batch_norm_relu_train(&h, &g1, &b1, eps).unwrap().0;
    let h = kd_kernels::conv2d(&h, &w2, 1, 1).unwrap();
    let h = kd_kernels::batch_norm_train(&h, &g2, &b2, eps).unwrap().0;
    let y = kd_kernels::add_relu(&h, &x).unwrap();

    let h = reference::conv2d(&x, &w1, 1, 1).unwrap();
    let h = reference::batch_norm_train(&h, &g1, &b1, eps).unwrap().0.relu().unwrap();
    let h = reference::conv2d(&h, &w2, 1, 1).unwrap();
    let h = reference::batch_norm_train(&h, &g2, &b2, eps).unwrap().0;
    let y_ref = (h + x.as_tensor()).unwrap().relu().unwrap();
    assert_close("block forward", &y, &y_ref, 1e-5);

    let grads = project(&y, 157).unwrap().backward().unwrap();
    let grads_ref = project(&y_ref, 157).unwrap().backward().unwrap();
    for (name, v) in [("x", &x), ("w1", &w1), ("w2", &w2), ("g1", &g1), ("b1", &b1), ("g2", &g2), ("b2", &b2)]
    {
        assert_close(name, grads.get(v).unwrap(), grads_ref.get(v).unwrap(), 2e-4);
    }
}

/// The folded inference op against candle's conv + eval batch norm (+ residual) (+ ReLU).
fn check_conv_bn_eval(
    xd: [usize; 4],
    wd: [usize; 4],
    stride: usize,
    pad: usize,
    residual: bool,
    relu: bool,
    seed: u64,
) {
    let dev = Device::Cpu;
    let x = tensor(&xd, seed);
    let w = tensor(&wd, seed + 1);
    let o = wd[0];
    let gamma = tensor(&[o], seed + 2);
    let beta = tensor(&[o], seed + 3);
    let mean = tensor(&[o], seed + 4);
    let var = (tensor(&[o], seed + 5).abs().unwrap() + 0.5).unwrap();
    let bn =
        kd_kernels::BnEval { gamma: &gamma, beta: &beta, running_mean: &mean, running_var: &var, eps: 1e-5 };
    let y_ref = kd_kernels::reference::conv2d(&x, &w, stride, pad).unwrap();
    let y_ref = kd_kernels::reference::batch_norm_eval(&y_ref, &gamma, &beta, &mean, &var, 1e-5).unwrap();
    let r = residual.then(|| tensor(y_ref.dims(), seed + 6));
    let y_ref = match &r {
        Some(r) => (y_ref + r).unwrap(),
        None => y_ref,
    };
    let y_ref = if relu { y_ref.relu().unwrap() } else { y_ref };
    let y = kd_kernels::conv2d_bn_eval(&x, &w, stride, pad, &bn, r.as_ref(), relu).unwrap();
    assert_eq!(y.device().is_cpu(), dev.is_cpu());
    assert_close(
        &format!("conv_bn_eval {xd:?} {wd:?} s{stride} res {residual} relu {relu}"),
        &y,
        &y_ref,
        1e-4,
    );
}

#[test]
fn conv_bn_eval_matches_candle() {
    check_conv_bn_eval([2, 16, 32, 32], [16, 16, 3, 3], 1, 1, false, true, 90); // tap path
    check_conv_bn_eval([3, 16, 32, 32], [16, 16, 3, 3], 1, 1, true, true, 91);
    check_conv_bn_eval([5, 64, 8, 8], [64, 64, 3, 3], 1, 1, true, false, 92); // im2col path
    check_conv_bn_eval([3, 16, 32, 32], [32, 16, 3, 3], 2, 1, false, true, 93); // stride 2
    check_conv_bn_eval([3, 16, 8, 8], [32, 16, 1, 1], 2, 0, false, false, 94); // projection
}

#[test]
fn conv_bn_eval_refuses_backward() {
    let x = Var::from_tensor(&tensor(&[2, 3, 16, 16], 95)).unwrap();
    let w = tensor(&[4, 3, 3, 3], 96);
    let ones = Tensor::ones(4, candle_core::DType::F32, &Device::Cpu).unwrap();
    let zeros = Tensor::zeros(4, candle_core::DType::F32, &Device::Cpu).unwrap();
    let bn = kd_kernels::BnEval {
        gamma: &ones,
        beta: &zeros,
        running_mean: &zeros,
        running_var: &ones,
        eps: 1e-5,
    };
    let y = kd_kernels::conv2d_bn_eval(x.as_tensor(), &w, 1, 1, &bn, None, true).unwrap();
    assert!(y.sum_all().unwrap().backward().is_err(), "eval-only op must not silently drop gradients");
}

/// `max |a - b|`, exactly 0 for bit-identical tensors (NaN compares as a difference).
fn bits_differ(a: &Tensor, b: &Tensor) -> bool {
    let a = a.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let b = b.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    a.len() != b.len() || a.iter().zip(&b).any(|(x, y)| x.to_bits() != y.to_bits())
}

/// `Kernels::Fast` is the free functions bit for bit, `Kernels::Generic` is `reference` (the
/// candle ops) bit for bit, and the two really are different code (their results differ in
/// the last bits somewhere), so a model built with `Generic` does not run the fast kernels.
#[test]
fn kernels_value_selects_the_path() {
    use kd_kernels::Kernels;
    assert_eq!(Kernels::default(), Kernels::Fast);
    assert_eq!(Kernels::for_device(&Device::Cpu), Kernels::Fast);
    assert_eq!("generic".parse::<Kernels>().unwrap(), Kernels::Generic);
    assert_eq!(Kernels::Fast.to_string().parse::<Kernels>().unwrap(), Kernels::Fast);
    assert!("gpu".parse::<Kernels>().is_err());

    let x = tensor(&[4, 16, 8, 8], 160);
    let w = (tensor(&[16, 16, 3, 3], 161) * 0.2).unwrap();
    let (g, b) = ((tensor(&[16], 162) + 1.0).unwrap(), tensor(&[16], 163));
    let (m, v) = (tensor(&[16], 164), (tensor(&[16], 165).abs().unwrap() + 0.5).unwrap());
    let eps = 1e-5;
    let bn = kd_kernels::BnEval { gamma: &g, beta: &b, running_mean: &m, running_var: &v, eps };

    let fast = Kernels::Fast;
    let generic = Kernels::Generic;
    assert!(fast.applies_to(&[&x, &w]) && !generic.applies_to(&[&x, &w]));
    assert!(!fast.applies_to(&[&x.to_dtype(DType::F64).unwrap()]));

    let same = |what: &str, a: &Tensor, b: &Tensor| assert!(!bits_differ(a, b), "{what}: not bit-identical");
    same("fast conv2d", &fast.conv2d(&x, &w, 1, 1).unwrap(), &kd_kernels::conv2d(&x, &w, 1, 1).unwrap());
    same("generic conv2d", &generic.conv2d(&x, &w, 1, 1).unwrap(), &reference::conv2d(&x, &w, 1, 1).unwrap());
    same(
        "fast bn train",
        &fast.batch_norm_train(&x, &g, &b, eps).unwrap().0,
        &kd_kernels::batch_norm_train(&x, &g, &b, eps).unwrap().0,
    );
    same(
        "generic bn train",
        &generic.batch_norm_train(&x, &g, &b, eps).unwrap().0,
        &reference::batch_norm_train(&x, &g, &b, eps).unwrap().0,
    );
    same(
        "generic bn relu train",
        &generic.batch_norm_relu_train(&x, &g, &b, eps).unwrap().0,
        &reference::batch_norm_train(&x, &g, &b, eps).unwrap().0.relu().unwrap(),
    );
    same(
        "generic bn eval",
        &generic.batch_norm_eval(&x, &g, &b, &m, &v, eps).unwrap(),
        &reference::batch_norm_eval(&x, &g, &b, &m, &v, eps).unwrap(),
    );
    same(
        "generic bn relu eval",
        &generic.batch_norm_relu_eval(&x, &g, &b, &m, &v, eps).unwrap(),
        &reference::batch_norm_eval(&x, &g, &b, &m, &v, eps).unwrap().relu().unwrap(),
    );
    let conv_bn_ref =
        reference::batch_norm_eval(&reference::conv2d(&x, &w, 1, 1).unwrap(), &g, &b, &m, &v, eps).unwrap();
    same(
        "generic conv bn eval",
        &generic.conv2d_bn_eval(&x, &w, 1, 1, &bn, Some(&x), true).unwrap(),
        &(&conv_bn_ref + &x).unwrap().relu().unwrap(),
    );
    same(
        "fast conv bn eval",
        &fast.conv2d_bn_eval(&x, &w, 1, 1, &bn, Some(&x), true).unwrap(),
        &kd_kernels::conv2d_bn_eval(&x, &w, 1, 1, &bn, Some(&x), true).unwrap(),
    );
    same("generic relu", &generic.relu(&x).unwrap(), &x.relu().unwrap());
    same("generic add_relu", &generic.add_relu(&x, &x).unwrap(), &(&x + &x).unwrap().relu().unwrap());

    // The fast kernels accumulate in another order (and batch norm in f64), so somewhere the
    // two paths disagree in the last bits: proof that `Generic` is not the fast path renamed.
    assert!(
        bits_differ(&fast.conv2d(&x, &w, 1, 1).unwrap(), &generic.conv2d(&x, &w, 1, 1).unwrap())
            || bits_differ(
                &fast.batch_norm_train(&x, &g, &b, eps).unwrap().0,
                &generic.batch_norm_train(&x, &g, &b, eps).unwrap().0
            ),
        "fast and generic paths gave bit-identical results"
    );
}

/// The fused GELU equals candle's `gelu_erf` bit for bit, forward and gradient: on values
/// across the range where `exp` underflows and `erf` saturates, on signed zeros, and on more
/// elements than one parallel chunk holds.
#[test]
fn gelu_erf_matches_candle_bit_for_bit() {
    let mut xs: Vec<f32> = values(3 * 40_000, 160).into_iter().map(|v| v * 7.0).collect();
    xs[..8].copy_from_slice(&[0.0, -0.0, 30.0, -30.0, 1e-30, -1e-30, 5.5, -5.5]);
    let x = Var::from_tensor(&Tensor::from_vec(xs, (3, 40_000), &Device::Cpu).unwrap()).unwrap();
    let y = kd_kernels::gelu_erf(&x).unwrap();
    let y_ref = x.as_tensor().gelu_erf().unwrap();
    assert!(!bits_differ(&y, &y_ref), "gelu_erf forward differs from candle's");
    let grads = project(&y, 161).unwrap().backward().unwrap();
    let grads_ref = project(&y_ref, 161).unwrap().backward().unwrap();
    assert!(
        !bits_differ(grads.get(&x).unwrap(), grads_ref.get(&x).unwrap()),
        "gelu_erf gradient differs from candle's"
    );
    // The generic path is candle's op itself.
    let generic = kd_kernels::Kernels::Generic.gelu_erf(&x).unwrap();
    assert!(!bits_differ(&generic, &y_ref));
    assert!(kd_kernels::gelu_erf(&Tensor::zeros(4, DType::F64, &Device::Cpu).unwrap()).is_ok());
}
