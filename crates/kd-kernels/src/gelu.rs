//! GELU with the exact error function, `x · (1 + erf(x/√2)) / 2`, as one CPU op whose backward
//! is one pass.
//!
//! candle's `gelu_erf` forward is already one element-wise map (single-threaded), but its
//! backward records eleven tensor ops (square, negate, halve, exp, scale, multiply, scale, erf,
//! halve, shift, add) and then the product with the incoming gradient, each a fresh tensor the
//! size of BERT's FFN activations. Both passes here do each element's arithmetic exactly as
//! those ops do, in the same order, with the same f32 constants (candle's `affine` is
//! `v · mul + add`, kept with its `+ 0.0`), so the values are bit-identical to candle's
//! (tested, gradients included) and pinned GLUE rows do not move.

use crate::cpu::{f32_slice, par_map1, par_map2, with_f32_data};
use crate::simd::multiversion;
use candle_core::cpu::erf::erf_f32;
use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};

/// The constant of candle's backward, `0.398942 ≈ 1/√(2π)`, as its `affine` rounds it to f32.
const PDF_SCALE: f32 = 0.398942f64 as f32;

multiversion! {
    fn gelu_chunk(y: &mut [f32], x: &[f32]) {
        for (y, &v) in y.iter_mut().zip(x) {
            *y = (erf_f32(v * std::f32::consts::FRAC_1_SQRT_2) + 1.) * 0.5 * v;
        }
    }
}

multiversion! {
    fn gelu_grad_chunk(d: &mut [f32], x: &[f32], g: &[f32]) {
        // `x / 2f64.sqrt()` in candle: affine with the f64 reciprocal rounded to f32.
        let inv_sqrt2 = (1. / 2f64.sqrt()) as f32;
        for ((d, &v), &g) in d.iter_mut().zip(x).zip(g) {
            let neg_half_square = (-(v * v)) * 0.5 + 0.0;
            let scaled_exp_arg = (neg_half_square.exp() * PDF_SCALE + 0.0) * v;
            let erf_scaled_sqrt = erf_f32(v * inv_sqrt2 + 0.0) * 0.5 + 0.0;
            let gelu_grad = (scaled_exp_arg * 1.0 + 0.5) + erf_scaled_sqrt;
            *d = g * gelu_grad;
        }
    }
}

pub(crate) struct GeluErfOp;

impl CustomOp1 for GeluErfOp {
    fn name(&self) -> &'static str {
        "kd-gelu-erf"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(self.name(), "x", s, l)?;
        Ok((CpuStorage::F32(par_map1(x, gelu_chunk)), l.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        if !arg.track_op() {
            return Ok(None);
        }
        let dx = with_f32_data(self.name(), "x", arg, |x| {
            with_f32_data(self.name(), "grad", grad, |g| Ok(par_map2(x, g, gelu_grad_chunk)))
        })?;
        Tensor::from_vec(dx, arg.shape(), arg.device()).map(Some)
    }
}
