//! Batch norm over NCHW on CPU f32, training mode (batch statistics, optionally fused with a
//! ReLU) and eval mode (running statistics), each with a closed-form backward.
//!
//! Training forward is one pass for the per-channel statistics and one to normalise; the backward
//! is one pass for `Σ dy` and `Σ dy·x̂` and one for `dx`, instead of the ten-odd candle ops that the
//! composed version records.

use std::sync::Mutex;

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::cpu::{f32_slice, grad_sums, shifted_sums, uninit_f32, with_f32_data};
use crate::simd::multiversion;
use crate::KernelError;

/// `(N, C, H·W)` of a rank-4 input, with `gamma` and `beta` checked to be `(C,)`.
fn bn_dims(
    op: &'static str,
    x: &[usize],
    gamma: &[usize],
    beta: &[usize],
) -> std::result::Result<(usize, usize, usize), KernelError> {
    let &[n, c, h, w] = x else {
        return Err(KernelError::Rank { op, tensor: "x", expected: 4, dims: x.to_vec() });
    };
    for (name, dims) in [("gamma", gamma), ("beta", beta)] {
        if dims != [c] {
            return Err(KernelError::Shape {
                op,
                msg: format!("{name} has shape {dims:?}, expected [{c}] for x {x:?}"),
            });
        }
    }
    Ok((n, c, h * w))
}

/// Iterates over the `N` contiguous `H·W` segments of channel `ch`.
fn channel_segments(data: &[f32], c: usize, hw: usize, ch: usize) -> impl Iterator<Item = &[f32]> + '_ {
    data.chunks_exact(c * hw).map(move |img| &img[ch * hw..(ch + 1) * hw])
}

multiversion! {
    /// One image of [`affine`].
    fn affine_image(
        xi: &[f32],
        yi: &mut [f32],
        hw: usize,
        scale: &[f32],
        shift: &[f32],
        relu: bool,
    ) {
        for (ch, (&a, &b)) in scale.iter().zip(shift).enumerate() {
            let ys = &mut yi[ch * hw..(ch + 1) * hw];
            let xs = &xi[ch * hw..(ch + 1) * hw];
            if relu {
                for (yv, &xv) in ys.iter_mut().zip(xs) {
                    *yv = (xv * a + b).max(0.0);
                }
            } else {
                for (yv, &xv) in ys.iter_mut().zip(xs) {
                    *yv = xv * a + b;
                }
            }
        }
    }
}

/// Per-channel `y = x·scale + shift`, optionally followed by a ReLU.
fn affine(x: &[f32], c: usize, hw: usize, scale: &[f32], shift: &[f32], relu: bool) -> Vec<f32> {
    let mut y = uninit_f32(x.len());
    if y.is_empty() {
        return y;
    }
    y.par_chunks_mut(c * hw)
        .zip(x.par_chunks(c * hw))
        .for_each(|(yi, xi)| affine_image(xi, yi, hw, scale, shift, relu));
    y
}

/// Statistics of one training-mode forward, kept for its backward.
#[derive(Debug, Clone)]
pub(crate) struct BatchStats {
    pub mean: Vec<f32>,
    pub var: Vec<f32>,
    pub inv_std: Vec<f32>,
}

/// Per-channel mean and biased variance of `x` (`N, C, HW`).
pub(crate) fn batch_stats(x: &[f32], n: usize, c: usize, hw: usize, eps: f64) -> BatchStats {
    let count = (n * hw) as f64;
    let per_channel: Vec<(f64, f64)> = (0..c)
        .into_par_iter()
        .map(|ch| {
            if n * hw == 0 {
                return (f64::NAN, f64::NAN);
            }
            // Shifting by one sample keeps the one-pass variance accurate when |mean| >> std.
            let shift = x[ch * hw];
            let (s, q) = channel_segments(x, c, hw, ch)
                .map(|seg| shifted_sums(seg, shift))
                .fold((0.0, 0.0), |a, b| (a.0 + b.0, a.1 + b.1));
            let m = s / count;
            (shift as f64 + m, (q / count - m * m).max(0.0))
        })
        .collect();
    BatchStats {
        mean: per_channel.iter().map(|p| p.0 as f32).collect(),
        var: per_channel.iter().map(|p| p.1 as f32).collect(),
        inv_std: per_channel.iter().map(|p| (1.0 / (p.1 + eps).sqrt()) as f32).collect(),
    }
}

/// Gradients of `y = act(gamma·(x - mean)·inv_std + beta)` for fixed `mean` and `inv_std`:
/// returns per channel `(Σ g, Σ g·x̂)` with `g` the ReLU-masked `dy`.
fn channel_grad_sums(
    x: &[f32],
    dy: &[f32],
    relu_out: Option<&[f32]>,
    c: usize,
    hw: usize,
    mean: &[f32],
    inv_std: &[f32],
) -> Vec<(f64, f64)> {
    (0..c)
        .into_par_iter()
        .map(|ch| {
            let mut acc = (0.0, 0.0);
            let xs = channel_segments(x, c, hw, ch);
            let gs = channel_segments(dy, c, hw, ch);
            match relu_out {
                Some(y) => {
                    for ((xs, gs), ys) in xs.zip(gs).zip(channel_segments(y, c, hw, ch)) {
                        let (s, d) = grad_sums(gs, xs, mean[ch], Some(ys));
                        acc = (acc.0 + s, acc.1 + d);
                    }
                }
                None => {
                    for (xs, gs) in xs.zip(gs) {
                        let (s, d) = grad_sums(gs, xs, mean[ch], None);
                        acc = (acc.0 + s, acc.1 + d);
                    }
                }
            }
            (acc.0, acc.1 * inv_std[ch] as f64)
        })
        .collect()
}

/// Per-channel coefficients of the input gradient `dx = a·g + b·(x - mean) + k`.
struct InputGradCoefs<'a> {
    mean: &'a [f32],
    a: &'a [f32],
    b: &'a [f32],
    k: &'a [f32],
}

multiversion! {
    /// One image of [`input_grad`].
    fn input_grad_image(
        dxi: &mut [f32],
        xi: &[f32],
        gi: &[f32],
        yi: Option<&[f32]>,
        hw: usize,
        coefs: &InputGradCoefs<'_>,
    ) {
        for ch in 0..coefs.a.len() {
            let r = ch * hw..(ch + 1) * hw;
            let (a, b, k, m) = (coefs.a[ch], coefs.b[ch], coefs.k[ch], coefs.mean[ch]);
            let (dxs, xs, gs) = (&mut dxi[r.clone()], &xi[r.clone()], &gi[r.clone()]);
            match yi {
                Some(yi) => {
                    for (((d, &xv), &g), &yv) in dxs.iter_mut().zip(xs).zip(gs).zip(&yi[r]) {
                        let g = if yv > 0.0 { g } else { 0.0 };
                        *d = a * g + b * (xv - m) + k;
                    }
                }
                None => {
                    for ((d, &xv), &g) in dxs.iter_mut().zip(xs).zip(gs) {
                        *d = a * g + b * (xv - m) + k;
                    }
                }
            }
        }
    }
}

/// `dx = a·g + b·(x - mean) + k` per channel, with `g` the ReLU-masked `dy`.
fn input_grad(
    x: &[f32],
    dy: &[f32],
    relu_out: Option<&[f32]>,
    c: usize,
    hw: usize,
    coefs: &InputGradCoefs<'_>,
) -> Vec<f32> {
    let mut dx = uninit_f32(x.len());
    if dx.is_empty() {
        return dx;
    }
    let chw = c * hw;
    dx.par_chunks_mut(chw).enumerate().for_each(|(i, dxi)| {
        let r = i * chw..(i + 1) * chw;
        let yi = relu_out.map(|y| &y[r.clone()]);
        input_grad_image(dxi, &x[r.clone()], &dy[r], yi, hw, coefs);
    });
    dx
}

/// Training-mode batch norm (optionally fused with a ReLU) as a candle op on `(x, gamma, beta)`.
/// The forward stores the batch statistics for the caller and for the backward.
pub(crate) struct BatchNormTrainOp {
    pub eps: f64,
    pub relu: bool,
    pub stats: Mutex<Option<BatchStats>>,
}

impl BatchNormTrainOp {
    pub fn new(eps: f64, relu: bool) -> Self {
        Self { eps, relu, stats: Mutex::new(None) }
    }

    pub fn saved_stats(&self) -> Result<BatchStats> {
        let guard =
            self.stats.lock().map_err(|_| KernelError::Internal("batch-norm statistics lock poisoned"))?;
        guard.clone().ok_or_else(|| KernelError::Internal("batch-norm statistics missing").into())
    }
}

impl CustomOp3 for BatchNormTrainOp {
    fn name(&self) -> &'static str {
        if self.relu {
            "kd-batch-norm-relu-train"
        } else {
            "kd-batch-norm-train"
        }
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
        bs: &CpuStorage,
        bl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let op = self.name();
        let (n, c, hw) = bn_dims(op, xl.dims(), gl.dims(), bl.dims())?;
        let x = f32_slice(op, "x", xs, xl)?;
        let gamma = f32_slice(op, "gamma", gs, gl)?;
        let beta = f32_slice(op, "beta", bs, bl)?;
        let stats = batch_stats(x, n, c, hw, self.eps);
        let scale: Vec<f32> = (0..c).map(|ch| gamma[ch] * stats.inv_std[ch]).collect();
        let shift: Vec<f32> = (0..c).map(|ch| beta[ch] - stats.mean[ch] * scale[ch]).collect();
        let y = affine(x, c, hw, &scale, &shift, self.relu);
        *self.stats.lock().map_err(|_| KernelError::Internal("batch-norm statistics lock poisoned"))? =
            Some(stats);
        Ok((CpuStorage::F32(y), xl.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let op = self.name();
        let (n, c, hw) = bn_dims(op, x.dims(), gamma.dims(), beta.dims())?;
        let stats = self.saved_stats()?;
        let count = (n * hw) as f64;
        let need_dx = x.track_op();
        let (dx, sums) = with_f32_data(op, "x", x, |xd| {
            with_f32_data(op, "grad", grad, |gd| {
                with_f32_data(op, "gamma", gamma, |gamma| {
                    let run = |relu_out: Option<&[f32]>| {
                        let sums = channel_grad_sums(xd, gd, relu_out, c, hw, &stats.mean, &stats.inv_std);
                        let dx = need_dx.then(|| {
                            // dx = γ·σ⁻¹/M · (M·g - Σg - x̂·Σg·x̂)
                            let mut a = vec![0f32; c];
                            let mut b = vec![0f32; c];
                            let mut k = vec![0f32; c];
                            for ch in 0..c {
                                let is = stats.inv_std[ch] as f64;
                                let scale = gamma[ch] as f64 * is;
                                let (sg, sgx) = sums[ch];
                                a[ch] = scale as f32;
                                b[ch] = (-scale * is * sgx / count) as f32;
                                k[ch] = (-scale * sg / count) as f32;
                            }
                            input_grad(
                                xd,
                                gd,
                                relu_out,
                                c,
                                hw,
                                &InputGradCoefs { mean: &stats.mean, a: &a, b: &b, k: &k },
                            )
                        });
                        Ok((dx, sums))
                    };
                    if self.relu {
                        with_f32_data(op, "res", res, |yd| run(Some(yd)))
                    } else {
                        run(None)
                    }
                })
            })
        })?;
        let dx = dx.map(|v| Tensor::from_vec(v, x.shape(), x.device())).transpose()?;
        let dgamma: Vec<f32> = sums.iter().map(|s| s.1 as f32).collect();
        let dbeta: Vec<f32> = sums.iter().map(|s| s.0 as f32).collect();
        let dgamma = gamma.track_op().then(|| Tensor::from_vec(dgamma, c, gamma.device())).transpose()?;
        let dbeta = beta.track_op().then(|| Tensor::from_vec(dbeta, c, beta.device())).transpose()?;
        Ok((dx, dgamma, dbeta))
    }
}

/// Eval-mode batch norm (optionally fused with a ReLU) on `(x, gamma, beta)` with the running
/// statistics captured at construction.
pub(crate) struct BatchNormEvalOp {
    pub mean: Vec<f32>,
    pub inv_std: Vec<f32>,
    pub relu: bool,
}

impl CustomOp3 for BatchNormEvalOp {
    fn name(&self) -> &'static str {
        if self.relu {
            "kd-batch-norm-relu-eval"
        } else {
            "kd-batch-norm-eval"
        }
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
        bs: &CpuStorage,
        bl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let op = self.name();
        let (_, c, hw) = bn_dims(op, xl.dims(), gl.dims(), bl.dims())?;
        if self.mean.len() != c || self.inv_std.len() != c {
            return Err(KernelError::Shape {
                op,
                msg: format!("running statistics have {} channels, x has {c}", self.mean.len()),
            }
            .into());
        }
        let x = f32_slice(op, "x", xs, xl)?;
        let gamma = f32_slice(op, "gamma", gs, gl)?;
        let beta = f32_slice(op, "beta", bs, bl)?;
        let scale: Vec<f32> = (0..c).map(|ch| gamma[ch] * self.inv_std[ch]).collect();
        let shift: Vec<f32> = (0..c).map(|ch| beta[ch] - self.mean[ch] * scale[ch]).collect();
        Ok((CpuStorage::F32(affine(x, c, hw, &scale, &shift, self.relu)), xl.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let op = self.name();
        let (_, c, hw) = bn_dims(op, x.dims(), gamma.dims(), beta.dims())?;
        let need_dx = x.track_op();
        let (dx, sums) = with_f32_data(op, "x", x, |xd| {
            with_f32_data(op, "grad", grad, |gd| {
                with_f32_data(op, "gamma", gamma, |gamma| {
                    let run = |relu_out: Option<&[f32]>| {
                        let sums = channel_grad_sums(xd, gd, relu_out, c, hw, &self.mean, &self.inv_std);
                        let dx = need_dx.then(|| {
                            let a: Vec<f32> = (0..c).map(|ch| gamma[ch] * self.inv_std[ch]).collect();
                            let zeros = vec![0f32; c];
                            input_grad(
                                xd,
                                gd,
                                relu_out,
                                c,
                                hw,
                                &InputGradCoefs { mean: &self.mean, a: &a, b: &zeros, k: &zeros },
                            )
                        });
                        Ok((dx, sums))
                    };
                    if self.relu {
                        with_f32_data(op, "res", res, |yd| run(Some(yd)))
                    } else {
                        run(None)
                    }
                })
            })
        })?;
        let dx = dx.map(|v| Tensor::from_vec(v, x.shape(), x.device())).transpose()?;
        let dgamma = gamma
            .track_op()
            .then(|| Tensor::from_vec(sums.iter().map(|s| s.1 as f32).collect(), c, gamma.device()))
            .transpose()?;
        let dbeta = beta
            .track_op()
            .then(|| Tensor::from_vec(sums.iter().map(|s| s.0 as f32).collect(), c, beta.device()))
            .transpose()?;
        Ok((dx, dgamma, dbeta))
    }
}
