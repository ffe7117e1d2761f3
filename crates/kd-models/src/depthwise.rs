//! Depthwise 2-D convolution (`nn.Conv2d(C, C, k, stride, padding, groups=C, bias=False)`), the
//! spatial filter of MobileNetV2 and ShuffleNetV2.
//!
//! kd-kernels' conv covers `groups = 1` only, and candle runs a grouped convolution as one
//! convolution per group (`chunk` + `cat`), thousands of tiny ops per step for these networks.
//! On CPU f32 this file's op computes each `(image, channel)` plane directly from a zero-padded
//! copy, forward and backward, in parallel over planes (over channels for the weight gradient);
//! elsewhere it falls back to candle's grouped `conv2d`, against which the tests check it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use candle_core::{CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor};
use candle_nn::{Init, VarBuilder};
use kd_kernels::Kernels;
use rayon::prelude::*;

/// Geometry of one depthwise convolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Geom {
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    k: usize,
    stride: usize,
    pad: usize,
    oh: usize,
    ow: usize,
}

impl Geom {
    fn new(x: &[usize], wt: &[usize], stride: usize, pad: usize) -> Result<Self> {
        let (&[n, c, h, w], &[wc, one, kh, kw]) = (x, wt) else {
            candle_core::bail!(
                "depthwise conv2d: expected x (N, C, H, W) and w (C, 1, K, K), got {x:?} and {wt:?}"
            )
        };
        if wc != c || one != 1 || kh != kw || kh == 0 || stride == 0 || h + 2 * pad < kh || w + 2 * pad < kw {
            candle_core::bail!(
                "depthwise conv2d: input {x:?} and weight {wt:?} (stride {stride}, padding {pad}) do not fit"
            )
        }
        let oh = (h + 2 * pad - kh) / stride + 1;
        let ow = (w + 2 * pad - kw) / stride + 1;
        Ok(Self { n, c, h, w, k: kh, stride, pad, oh, ow })
    }

    /// Width of a zero-padded input plane.
    fn wp(&self) -> usize {
        self.w + 2 * self.pad
    }

    fn padded_len(&self) -> usize {
        (self.h + 2 * self.pad) * self.wp()
    }
}

// Every kernel works on a zero-padded copy of the input plane (a per-thread scratch buffer), so
// the tap loops need no bounds logic; `#[inline(always)]` plus a literal `k = 3` at the call
// site lets the 3×3 case (every layer of the models here) unroll.

thread_local! {
    static SCRATCH: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Runs `f` on this thread's scratch buffer, zeroed to `len`.
fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    SCRATCH.with(|s| {
        let mut s = s.borrow_mut();
        s.clear();
        s.resize(len, 0.0);
        f(&mut s)
    })
}

/// Copies a plane into the interior of a zeroed padded buffer.
fn pad_into(g: &Geom, x: &[f32], xp: &mut [f32]) {
    let wp = g.wp();
    for r in 0..g.h {
        let dst = (r + g.pad) * wp + g.pad;
        xp[dst..dst + g.w].copy_from_slice(&x[r * g.w..(r + 1) * g.w]);
    }
}

/// `y[oh, ow] = Σ w[kh, kw] · xp[oh·s + kh, ow·s + kw]`.
#[inline(always)]
fn forward_padded(g: &Geom, k: usize, xp: &[f32], w: &[f32], y: &mut [f32]) {
    let (wp, s) = (g.wp(), g.stride);
    for oh in 0..g.oh {
        let rows = &xp[oh * s * wp..];
        for (ow, yv) in y[oh * g.ow..(oh + 1) * g.ow].iter_mut().enumerate() {
            let mut acc = 0f32;
            for kh in 0..k {
                let row = &rows[kh * wp + ow * s..kh * wp + ow * s + k];
                for kw in 0..k {
                    acc += w[kh * k + kw] * row[kw];
                }
            }
            *yv = acc;
        }
    }
}

/// The input gradient, scattered into a padded buffer: `dxp[oh·s + kh, ow·s + kw] += w · dy`.
#[inline(always)]
fn backward_input_padded(g: &Geom, k: usize, dy: &[f32], w: &[f32], dxp: &mut [f32]) {
    let (wp, s) = (g.wp(), g.stride);
    for oh in 0..g.oh {
        for (ow, &d) in dy[oh * g.ow..(oh + 1) * g.ow].iter().enumerate() {
            for kh in 0..k {
                let start = (oh * s + kh) * wp + ow * s;
                for (v, &wv) in dxp[start..start + k].iter_mut().zip(&w[kh * k..(kh + 1) * k]) {
                    *v += wv * d;
                }
            }
        }
    }
}

/// Adds `Σ dy[oh, ow] · xp[oh·s + kh, ow·s + kw]` to `dw[kh, kw]`.
#[inline(always)]
fn backward_weight_padded(g: &Geom, k: usize, xp: &[f32], dy: &[f32], dw: &mut [f32]) {
    let (wp, s) = (g.wp(), g.stride);
    for oh in 0..g.oh {
        let rows = &xp[oh * s * wp..];
        for (ow, &d) in dy[oh * g.ow..(oh + 1) * g.ow].iter().enumerate() {
            for kh in 0..k {
                let row = &rows[kh * wp + ow * s..kh * wp + ow * s + k];
                for kw in 0..k {
                    dw[kh * k + kw] += d * row[kw];
                }
            }
        }
    }
}

fn forward_plane(g: &Geom, x: &[f32], w: &[f32], y: &mut [f32]) {
    with_scratch(g.padded_len(), |xp| {
        pad_into(g, x, xp);
        if g.k == 3 {
            forward_padded(g, 3, xp, w, y)
        } else {
            forward_padded(g, g.k, xp, w, y)
        }
    })
}

fn backward_input_plane(g: &Geom, dy: &[f32], w: &[f32], dx: &mut [f32]) {
    with_scratch(g.padded_len(), |dxp| {
        if g.k == 3 {
            backward_input_padded(g, 3, dy, w, dxp)
        } else {
            backward_input_padded(g, g.k, dy, w, dxp)
        }
        let wp = g.wp();
        for r in 0..g.h {
            let src = (r + g.pad) * wp + g.pad;
            dx[r * g.w..(r + 1) * g.w].copy_from_slice(&dxp[src..src + g.w]);
        }
    })
}

/// One plane's contribution to its channel's weight gradient, added to `acc` (f64: the sum runs
/// over `N · OH · OW` products; each plane's part is summed in f32).
fn backward_weight_plane(g: &Geom, x: &[f32], dy: &[f32], acc: &mut [f64]) {
    let mut part = [0f32; 9];
    let mut big = Vec::new();
    let dw: &mut [f32] = if g.k * g.k <= part.len() {
        &mut part[..g.k * g.k]
    } else {
        big.resize(g.k * g.k, 0.0);
        &mut big
    };
    with_scratch(g.padded_len(), |xp| {
        pad_into(g, x, xp);
        if g.k == 3 {
            backward_weight_padded(g, 3, xp, dy, dw)
        } else {
            backward_weight_padded(g, g.k, xp, dy, dw)
        }
    });
    for (a, &d) in acc.iter_mut().zip(dw.iter()) {
        *a += d as f64;
    }
}

fn f32_data<'a>(what: &str, s: &'a CpuStorage, l: &Layout) -> Result<&'a [f32]> {
    let CpuStorage::F32(data) = s else { candle_core::bail!("depthwise conv2d: `{what}` must be f32") };
    match l.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => candle_core::bail!("depthwise conv2d: `{what}` must be contiguous"),
    }
}

/// Enough planes per rayon task that scheduling does not dominate small (2×2, 4×4) maps.
fn planes_per_task(plane: usize) -> usize {
    (16_384 / plane.max(1)).max(1)
}

fn forward_cpu(g: &Geom, x: &[f32], w: &[f32]) -> Vec<f32> {
    let (in_plane, out_plane, kk) = (g.h * g.w, g.oh * g.ow, g.k * g.k);
    let mut y = vec![0f32; g.n * g.c * out_plane];
    y.par_chunks_mut(out_plane.max(1)).with_min_len(planes_per_task(out_plane)).enumerate().for_each(
        |(p, y)| {
            let ch = p % g.c;
            forward_plane(g, &x[p * in_plane..(p + 1) * in_plane], &w[ch * kk..(ch + 1) * kk], y);
        },
    );
    y
}

fn backward_input_cpu(g: &Geom, dy: &[f32], w: &[f32]) -> Vec<f32> {
    let (in_plane, out_plane, kk) = (g.h * g.w, g.oh * g.ow, g.k * g.k);
    let mut dx = vec![0f32; g.n * g.c * in_plane];
    dx.par_chunks_mut(in_plane.max(1)).with_min_len(planes_per_task(in_plane)).enumerate().for_each(
        |(p, dx)| {
            let ch = p % g.c;
            backward_input_plane(g, &dy[p * out_plane..(p + 1) * out_plane], &w[ch * kk..(ch + 1) * kk], dx);
        },
    );
    dx
}

fn backward_weight_cpu(g: &Geom, x: &[f32], dy: &[f32]) -> Vec<f32> {
    let (in_plane, out_plane, kk) = (g.h * g.w, g.oh * g.ow, g.k * g.k);
    let mut dw = vec![0f32; g.c * kk];
    dw.par_chunks_mut(kk.max(1)).enumerate().for_each(|(ch, dw)| {
        let mut acc = vec![0f64; kk];
        for img in 0..g.n {
            let p = img * g.c + ch;
            backward_weight_plane(
                g,
                &x[p * in_plane..(p + 1) * in_plane],
                &dy[p * out_plane..(p + 1) * out_plane],
                &mut acc,
            );
        }
        for (d, a) in dw.iter_mut().zip(acc) {
            *d = a as f32;
        }
    });
    dw
}

/// Timing and path switches for the step benchmark (`examples/cross_arch_step.rs`); not a
/// stable API. Off by default: then the ops pay one relaxed atomic load each.
#[doc(hidden)]
pub mod profile {
    use super::*;

    pub(super) static TIMING: AtomicBool = AtomicBool::new(false);
    /// Forward, input gradient, weight gradient.
    pub(super) static NANOS: [AtomicU64; 3] = [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)];
    pub(super) static REFERENCE: AtomicBool = AtomicBool::new(false);

    /// Starts (or stops) summing the wall time spent inside the fast depthwise ops.
    pub fn set_timing(on: bool) {
        TIMING.store(on, Ordering::Relaxed);
    }

    /// Seconds spent in the fast depthwise ops since the last take: forward, input gradient,
    /// weight gradient.
    pub fn take_seconds() -> [f64; 3] {
        [0, 1, 2].map(|i| NANOS[i].swap(0, Ordering::Relaxed) as f64 * 1e-9)
    }

    /// Routes [`depthwise_conv2d`] through candle's grouped conv instead of the fast op.
    pub fn set_use_reference(on: bool) {
        REFERENCE.store(on, Ordering::Relaxed);
    }

    /// Runs `f`, adding its wall time to the total when timing is on.
    pub(super) fn timed<R>(which: usize, f: impl FnOnce() -> R) -> R {
        if !TIMING.load(Ordering::Relaxed) {
            return f();
        }
        let start = Instant::now();
        let r = f();
        NANOS[which].fetch_add(start.elapsed().as_nanos() as u64, Ordering::Relaxed);
        r
    }
}

/// The forward op; its backward runs the two gradient ops below.
struct DepthwiseOp {
    stride: usize,
    pad: usize,
}

impl CustomOp2 for DepthwiseOp {
    fn name(&self) -> &'static str {
        "depthwise-conv2d"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = Geom::new(l1.dims(), l2.dims(), self.stride, self.pad)?;
        let (x, w) = (f32_data("x", s1, l1)?, f32_data("w", s2, l2)?);
        let y = profile::timed(0, || forward_cpu(&g, x, w));
        Ok((CpuStorage::F32(y), Shape::from((g.n, g.c, g.oh, g.ow))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let dx = grad.apply_op2_no_bwd(
            w,
            &InputGradOp { x_dims: x.dims().to_vec(), stride: self.stride, pad: self.pad },
        )?;
        let dw = x.apply_op2_no_bwd(
            &grad,
            &WeightGradOp { w_dims: w.dims().to_vec(), stride: self.stride, pad: self.pad },
        )?;
        Ok((Some(dx), Some(dw)))
    }
}

/// `(dy, w) -> dx`.
struct InputGradOp {
    x_dims: Vec<usize>,
    stride: usize,
    pad: usize,
}

impl CustomOp2 for InputGradOp {
    fn name(&self) -> &'static str {
        "depthwise-conv2d-grad-input"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = Geom::new(&self.x_dims, l2.dims(), self.stride, self.pad)?;
        if l1.dims() != [g.n, g.c, g.oh, g.ow] {
            candle_core::bail!(
                "depthwise conv2d backward: gradient {:?} does not fit input {:?}",
                l1.dims(),
                self.x_dims
            )
        }
        let (dy, w) = (f32_data("dy", s1, l1)?, f32_data("w", s2, l2)?);
        let dx = profile::timed(1, || backward_input_cpu(&g, dy, w));
        Ok((CpuStorage::F32(dx), Shape::from(self.x_dims.clone())))
    }
}

/// `(x, dy) -> dw`.
struct WeightGradOp {
    w_dims: Vec<usize>,
    stride: usize,
    pad: usize,
}

impl CustomOp2 for WeightGradOp {
    fn name(&self) -> &'static str {
        "depthwise-conv2d-grad-weight"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = Geom::new(l1.dims(), &self.w_dims, self.stride, self.pad)?;
        if l2.dims() != [g.n, g.c, g.oh, g.ow] {
            candle_core::bail!(
                "depthwise conv2d backward: gradient {:?} does not fit input {:?}",
                l2.dims(),
                l1.dims()
            )
        }
        let (x, dy) = (f32_data("x", s1, l1)?, f32_data("dy", s2, l2)?);
        let dw = profile::timed(2, || backward_weight_cpu(&g, x, dy));
        Ok((CpuStorage::F32(dw), Shape::from(self.w_dims.clone())))
    }
}

/// Depthwise convolution of `x (N, C, H, W)` with `w (C, 1, K, K)`: the fast op on CPU f32,
/// candle's grouped convolution otherwise.
pub fn depthwise_conv2d(x: &Tensor, w: &Tensor, stride: usize, padding: usize) -> Result<Tensor> {
    let fast =
        x.device().is_cpu() && w.device().is_cpu() && x.dtype() == DType::F32 && w.dtype() == DType::F32;
    if !fast || profile::REFERENCE.load(Ordering::Relaxed) {
        return reference_depthwise_conv2d(x, w, stride, padding);
    }
    x.contiguous()?.apply_op2(&w.contiguous()?, DepthwiseOp { stride, pad: padding })
}

/// candle's own grouped convolution (one group per channel), the reference for the fast op.
pub fn reference_depthwise_conv2d(x: &Tensor, w: &Tensor, stride: usize, padding: usize) -> Result<Tensor> {
    let groups = x.dim(1)?;
    x.conv2d(w, padding, stride, 1, groups)
}

/// A depthwise convolution layer without bias (`weight`: `(C, 1, K, K)`, PyTorch's layout for
/// `groups = C`).
#[derive(Debug, Clone)]
pub struct DepthwiseConv2d {
    weight: Tensor,
    stride: usize,
    padding: usize,
    kernels: Kernels,
}

impl DepthwiseConv2d {
    pub fn new(
        channels: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
        init: Init,
        vb: VarBuilder,
    ) -> Result<Self> {
        let weight = vb.get_with_hints((channels, 1, kernel, kernel), "weight", init)?;
        Ok(Self { weight, stride, padding, kernels: crate::layers::layer_kernels(vb.device()) })
    }

    /// [`depthwise_conv2d`], or candle's grouped convolution with [`Kernels::Generic`].
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self.kernels {
            Kernels::Fast => depthwise_conv2d(x, &self.weight, self.stride, self.padding),
            Kernels::Generic => reference_depthwise_conv2d(x, &self.weight, self.stride, self.padding),
        }
    }

    /// The kernels this convolution runs.
    pub fn kernels(&self) -> Kernels {
        self.kernels
    }

    /// The same convolution running `kernels`.
    pub fn with_kernels(mut self, kernels: Kernels) -> Self {
        self.kernels = kernels;
        self
    }

    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    pub fn num_params(&self) -> usize {
        self.weight.elem_count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn max_rel_diff(a: &Tensor, b: &Tensor) -> f32 {
        let a = a.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let b = b.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(a.len(), b.len());
        let scale = b.iter().fold(1e-6f32, |m, x| m.max(x.abs()));
        a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max) / scale
    }

    /// Values and both gradients equal candle's grouped conv, for the shapes the models use
    /// (3×3, padding 1, stride 1 and 2, even and odd sizes) and an unpadded 5×5.
    #[test]
    fn matches_candle_grouped_conv_forward_and_backward() {
        let dev = Device::Cpu;
        for &(n, c, h, w, k, stride, pad) in &[
            (2, 3, 8, 8, 3, 1, 1),
            (2, 4, 8, 8, 3, 2, 1),
            (1, 2, 7, 5, 3, 2, 1),
            (3, 2, 9, 9, 5, 1, 0),
            (2, 3, 2, 2, 3, 2, 1),
        ] {
            let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (n, c, h, w), &dev).unwrap()).unwrap();
            let wt = Var::from_tensor(&Tensor::randn(0f32, 1.0, (c, 1, k, k), &dev).unwrap()).unwrap();
            let fast = depthwise_conv2d(&x, &wt, stride, pad).unwrap();
            let reference = reference_depthwise_conv2d(&x, &wt, stride, pad).unwrap();
            assert_eq!(fast.dims(), reference.dims());
            assert!(max_rel_diff(&fast, &reference) < 1e-5, "forward {:?}", (n, c, h, w, k, stride, pad));
            // A non-uniform upstream gradient.
            let probe = Tensor::randn(0f32, 1.0, fast.dims(), &dev).unwrap();
            let g_fast = (&fast * &probe).unwrap().sum_all().unwrap().backward().unwrap();
            let g_ref = (&reference * &probe).unwrap().sum_all().unwrap().backward().unwrap();
            for (what, v) in [("x", &x), ("w", &wt)] {
                let a = g_fast.get(v.as_tensor()).unwrap();
                let b = g_ref.get(v.as_tensor()).unwrap();
                assert!(max_rel_diff(a, b) < 1e-5, "grad {what} {:?}", (n, c, h, w, k, stride, pad));
            }
        }
    }

    #[test]
    fn bad_shapes_are_errors() {
        let dev = Device::Cpu;
        let x = Tensor::zeros((1, 3, 4, 4), DType::F32, &dev).unwrap();
        let w = Tensor::zeros((2, 1, 3, 3), DType::F32, &dev).unwrap();
        assert!(depthwise_conv2d(&x, &w, 1, 1).is_err());
        let w = Tensor::zeros((3, 1, 3, 3), DType::F32, &dev).unwrap();
        assert!(depthwise_conv2d(&x, &w, 0, 1).is_err());
    }
}
