//! Inference: a convolution followed by eval-mode batch norm, an optional residual and an
//! optional ReLU, as one op. The batch norm is folded into the weights
//! (`w'[o] = w[o]·γ/√(σ²+ε)`, `b[o] = β − μ·γ/√(σ²+ε)`) and bias, residual and ReLU are applied to
//! each output plane while it is still in cache, so the separate batch-norm and add+ReLU passes
//! over the activations disappear.
//!
//! Forward only: the op has no backward (candle reports an error if a loss is differentiated
//! through it). Models use it in `Mode::Eval`, where nothing is trained.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape};

use crate::conv2d::{conv_geom, forward_auto};
use crate::cpu::f32_slice;
use crate::simd::multiversion;

/// What happens to each output plane after the convolution.
pub(crate) struct Epilogue<'a> {
    /// Per output channel.
    pub bias: &'a [f32],
    /// Added before the ReLU; the same shape as the output.
    pub residual: Option<&'a [f32]>,
    pub relu: bool,
}

impl Epilogue<'_> {
    /// Applies the epilogue to `plane`, output channel `o`, whose residual plane starts at
    /// `offset` in the whole output.
    pub(crate) fn apply(&self, plane: &mut [f32], o: usize, offset: usize) {
        let b = self.bias[o];
        let res = self.residual.map(|r| &r[offset..offset + plane.len()]);
        epilogue_plane(plane, b, res, self.relu);
    }
}

multiversion! {
    fn epilogue_plane(plane: &mut [f32], b: f32, res: Option<&[f32]>, relu: bool) {
        let floor = if relu { 0.0 } else { f32::NEG_INFINITY };
        match res {
            Some(r) => {
                for (y, &r) in plane.iter_mut().zip(r) {
                    *y = (*y + b + r).max(floor);
                }
            }
            None => {
                for y in plane.iter_mut() {
                    *y = (*y + b).max(floor);
                }
            }
        }
    }
}

/// The folded weights and bias of `conv → batch norm`.
pub(crate) fn fold(
    w: &[f32],
    out_c: usize,
    gamma: &[f32],
    beta: &[f32],
    mean: &[f32],
    var: &[f32],
    eps: f64,
) -> (Vec<f32>, Vec<f32>) {
    let per_out = w.len() / out_c.max(1);
    let mut folded = w.to_vec();
    let mut bias = vec![0f32; out_c];
    for o in 0..out_c {
        let scale = gamma[o] as f64 / (var[o] as f64 + eps).sqrt();
        for v in &mut folded[o * per_out..(o + 1) * per_out] {
            *v = (*v as f64 * scale) as f32;
        }
        bias[o] = (beta[o] as f64 - mean[o] as f64 * scale) as f32;
    }
    (folded, bias)
}

/// `relu?(conv(x, w') + b (+ residual))` with the batch norm already folded into `w'`, `b`.
pub(crate) struct FoldedConvOp {
    pub w: Vec<f32>,
    pub w_dims: [usize; 4],
    pub bias: Vec<f32>,
    pub stride: usize,
    pub padding: usize,
    pub relu: bool,
}

impl FoldedConvOp {
    fn run(&self, x: &[f32], xl: &Layout, residual: Option<&[f32]>) -> Result<(CpuStorage, Shape)> {
        let g = conv_geom(xl.dims(), &self.w_dims, self.stride, self.padding)?;
        if let Some(r) = residual {
            if r.len() != g.batch * g.out_image() {
                return Err(crate::KernelError::Shape {
                    op: "conv2d_bn_eval",
                    msg: format!(
                        "residual has {} values, the output {:?} has {}",
                        r.len(),
                        [g.batch, g.out_c, g.out_h, g.out_w],
                        g.batch * g.out_image()
                    ),
                }
                .into());
            }
        }
        let epi = Epilogue { bias: &self.bias, residual, relu: self.relu };
        let y = forward_auto(&g, x, &self.w, Some(&epi));
        Ok((CpuStorage::F32(y), Shape::from((g.batch, g.out_c, g.out_h, g.out_w))))
    }
}

impl CustomOp1 for FoldedConvOp {
    fn name(&self) -> &'static str {
        "kd-conv2d-bn-eval"
    }

    fn cpu_fwd(&self, xs: &CpuStorage, xl: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(CustomOp1::name(self), "x", xs, xl)?;
        self.run(x, xl, None)
    }
}

impl CustomOp2 for FoldedConvOp {
    fn name(&self) -> &'static str {
        "kd-conv2d-bn-add-eval"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        rs: &CpuStorage,
        rl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(CustomOp2::name(self), "x", xs, xl)?;
        let r = f32_slice(CustomOp2::name(self), "residual", rs, rl)?;
        self.run(x, xl, Some(r))
    }
}
