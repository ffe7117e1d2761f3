//! Fast CPU kernels for what dominates CNN training in candle: conv2d and batch norm, as
//! `CustomOp`s with forward and backward. On other devices or dtypes the functions fall back to
//! candle's own ops ([`reference`]), so model code calls these functions unconditionally.
//!
//! Public contract (models depend on it; keep the signatures):
//! - [`conv2d`]: NCHW input, OIHW weights, no bias, groups = 1, square stride and padding.
//! - [`batch_norm_train`]: normalise with batch statistics; returns the output and the batch
//!   mean and *biased* variance per channel (the caller updates running statistics).
//! - [`batch_norm_eval`]: normalise with running statistics.
//! - Fused extras: [`batch_norm_relu_train`], [`batch_norm_relu_eval`], [`relu`], [`add_relu`].
//!
//! Threading: the kernels split work over images (or channels) on rayon's global pool and call
//! `gemm` single threaded inside each task, so set the pool size once (`RAYON_NUM_THREADS` or
//! `rayon::ThreadPoolBuilder`) and nothing else spawns.

mod activation;
mod batch_norm;
mod conv2d;
mod conv_eval;
mod conv_taps;
mod cpu;
mod im2col;
mod parity;
pub mod reference;
mod simd;
#[cfg(test)]
mod test_support;
mod winograd;

use std::sync::Arc;

use candle_core::{DType, Result, Tensor};

use crate::activation::{AddReluOp, ReluOp};
use crate::batch_norm::{BatchNormEvalOp, BatchNormTrainOp};
use crate::conv2d::Conv2dOp;
use crate::cpu::{all_cpu_f32, with_f32_data};

/// What can go wrong in a kernel; converted into `candle_core::Error` at the API boundary.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("{op}: tensor `{tensor}` must have rank {expected}, got shape {dims:?}")]
    Rank { op: &'static str, tensor: &'static str, expected: usize, dims: Vec<usize> },
    #[error("{op}: {msg}")]
    Shape { op: &'static str, msg: String },
    #[error("{op}: tensor `{tensor}` has dtype {dtype:?}, expected f32")]
    DType { op: &'static str, tensor: &'static str, dtype: DType },
    #[error("{op}: tensor `{tensor}` is not contiguous")]
    NotContiguous { op: &'static str, tensor: &'static str },
    #[error("{op}: tensor `{tensor}` is not on the CPU")]
    Device { op: &'static str, tensor: &'static str },
    #[error("internal error: {0}")]
    Internal(&'static str),
}

impl From<KernelError> for candle_core::Error {
    fn from(e: KernelError) -> Self {
        candle_core::Error::wrap(e)
    }
}

/// 2-D convolution without bias. `x`: `(N, C, H, W)`, `w`: `(O, C, KH, KW)`.
pub fn conv2d(x: &Tensor, w: &Tensor, stride: usize, padding: usize) -> Result<Tensor> {
    if !all_cpu_f32(&[x, w]) {
        return reference::conv2d(x, w, stride, padding);
    }
    x.contiguous()?.apply_op2(&w.contiguous()?, Conv2dOp { stride, padding })
}

/// Training-mode batch norm over `(N, C, H, W)`; returns `(y, batch_mean, batch_var_biased)`,
/// the statistics shaped `(C,)` and detached.
pub fn batch_norm_train(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
) -> Result<(Tensor, Tensor, Tensor)> {
    if !all_cpu_f32(&[x, gamma, beta]) {
        return reference::batch_norm_train(x, gamma, beta, eps);
    }
    train_op(x, gamma, beta, eps, false)
}

/// `relu(batch_norm_train(x))` in one op: same statistics as [`batch_norm_train`], one pass less
/// forward and a cheaper backward.
pub fn batch_norm_relu_train(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
) -> Result<(Tensor, Tensor, Tensor)> {
    if !all_cpu_f32(&[x, gamma, beta]) {
        let (y, mean, var) = reference::batch_norm_train(x, gamma, beta, eps)?;
        return Ok((y.relu()?, mean, var));
    }
    train_op(x, gamma, beta, eps, true)
}

fn train_op(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
    relu: bool,
) -> Result<(Tensor, Tensor, Tensor)> {
    let op = Arc::new(BatchNormTrainOp::new(eps, relu));
    let boxed: Box<dyn candle_core::CustomOp3 + Send + Sync> = Box::new(SharedTrainOp(op.clone()));
    let y = x.contiguous()?.apply_op3_arc(&gamma.contiguous()?, &beta.contiguous()?, Arc::new(boxed))?;
    let stats = op.saved_stats()?;
    let c = stats.mean.len();
    let mean = Tensor::from_vec(stats.mean, c, x.device())?;
    let var = Tensor::from_vec(stats.var, c, x.device())?;
    Ok((y, mean, var))
}

/// Lets the caller keep a handle on the op (for its statistics) while the graph owns it.
struct SharedTrainOp(Arc<BatchNormTrainOp>);

impl candle_core::CustomOp3 for SharedTrainOp {
    fn name(&self) -> &'static str {
        self.0.name()
    }
    fn cpu_fwd(
        &self,
        s1: &candle_core::CpuStorage,
        l1: &candle_core::Layout,
        s2: &candle_core::CpuStorage,
        l2: &candle_core::Layout,
        s3: &candle_core::CpuStorage,
        l3: &candle_core::Layout,
    ) -> Result<(candle_core::CpuStorage, candle_core::Shape)> {
        self.0.cpu_fwd(s1, l1, s2, l2, s3, l3)
    }
    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        self.0.bwd(x, gamma, beta, res, grad)
    }
}

/// Eval-mode batch norm with running statistics, `(N, C, H, W)`.
pub fn batch_norm_eval(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    running_mean: &Tensor,
    running_var: &Tensor,
    eps: f64,
) -> Result<Tensor> {
    if !all_cpu_f32(&[x, gamma, beta, running_mean, running_var]) {
        return reference::batch_norm_eval(x, gamma, beta, running_mean, running_var, eps);
    }
    eval_op(x, gamma, beta, running_mean, running_var, eps, false)
}

/// `relu(batch_norm_eval(x))` in one pass.
pub fn batch_norm_relu_eval(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    running_mean: &Tensor,
    running_var: &Tensor,
    eps: f64,
) -> Result<Tensor> {
    if !all_cpu_f32(&[x, gamma, beta, running_mean, running_var]) {
        return reference::batch_norm_eval(x, gamma, beta, running_mean, running_var, eps)?.relu();
    }
    eval_op(x, gamma, beta, running_mean, running_var, eps, true)
}

fn eval_op(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    running_mean: &Tensor,
    running_var: &Tensor,
    eps: f64,
    relu: bool,
) -> Result<Tensor> {
    let name = "batch_norm_eval";
    let mean = with_f32_data(name, "running_mean", running_mean, |m| Ok(m.to_vec()))?;
    let inv_std = with_f32_data(name, "running_var", running_var, |v| {
        Ok(v.iter().map(|&v| (1.0 / (v as f64 + eps).sqrt()) as f32).collect())
    })?;
    x.contiguous()?.apply_op3(
        &gamma.contiguous()?,
        &beta.contiguous()?,
        BatchNormEvalOp { mean, inv_std, relu },
    )
}

/// Eval-mode batch-norm parameters for [`conv2d_bn_eval`].
pub struct BnEval<'a> {
    pub gamma: &'a Tensor,
    pub beta: &'a Tensor,
    pub running_mean: &'a Tensor,
    pub running_var: &'a Tensor,
    pub eps: f64,
}

/// Inference only: `relu?(batch_norm_eval(conv2d(x, w)) + residual?)` in one op, the batch norm
/// folded into the weights. Differentiating through it is an error (nothing trains in eval
/// mode); use [`conv2d`] and [`batch_norm_eval`] to train through running statistics.
pub fn conv2d_bn_eval(
    x: &Tensor,
    w: &Tensor,
    stride: usize,
    padding: usize,
    bn: &BnEval,
    residual: Option<&Tensor>,
    relu: bool,
) -> Result<Tensor> {
    let mut all = vec![x, w, bn.gamma, bn.beta, bn.running_mean, bn.running_var];
    all.extend(residual);
    if !all_cpu_f32(&all) {
        let y = reference::conv2d(x, w, stride, padding)?;
        let y = reference::batch_norm_eval(&y, bn.gamma, bn.beta, bn.running_mean, bn.running_var, bn.eps)?;
        let y = match residual {
            Some(r) => (y + r)?,
            None => y,
        };
        return if relu { y.relu() } else { Ok(y) };
    }
    let name = "conv2d_bn_eval";
    let &[o, c, kh, kw] = w.dims() else {
        return Err(KernelError::Rank { op: name, tensor: "w", expected: 4, dims: w.dims().to_vec() }.into());
    };
    let vec_of = |t: &Tensor, what: &'static str| -> Result<Vec<f32>> {
        if t.elem_count() != o {
            return Err(KernelError::Shape {
                op: name,
                msg: format!("batch-norm `{what}` has {} values for {o} output channels", t.elem_count()),
            }
            .into());
        }
        with_f32_data(name, what, t, |d| Ok(d.to_vec()))
    };
    let (gamma, beta) = (vec_of(bn.gamma, "gamma")?, vec_of(bn.beta, "beta")?);
    let (mean, var) = (vec_of(bn.running_mean, "running_mean")?, vec_of(bn.running_var, "running_var")?);
    let (folded, bias) =
        with_f32_data(name, "w", w, |wd| Ok(conv_eval::fold(wd, o, &gamma, &beta, &mean, &var, bn.eps)))?;
    let op = conv_eval::FoldedConvOp { w: folded, w_dims: [o, c, kh, kw], bias, stride, padding, relu };
    match residual {
        Some(r) => x.contiguous()?.apply_op2(&r.contiguous()?, op),
        None => x.contiguous()?.apply_op1(op),
    }
}

/// `max(x, 0)`; the gradient is masked by `y > 0` as in PyTorch.
pub fn relu(x: &Tensor) -> Result<Tensor> {
    if !all_cpu_f32(&[x]) {
        return x.relu();
    }
    x.contiguous()?.apply_op1(ReluOp)
}

/// `max(a + b, 0)` for the residual join of a ResNet block; `a` and `b` have the same shape.
pub fn add_relu(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if !all_cpu_f32(&[a, b]) {
        return (a + b)?.relu();
    }
    a.contiguous()?.apply_op2(&b.contiguous()?, AddReluOp)
}

/// Direct slice-level entry points for the benches and profiling examples; not a stable API.
#[doc(hidden)]
pub mod bench_api {
    use crate::conv2d::{backward_auto, conv_geom, forward_auto};

    /// Forward of `x (N, C, H, W)` with `w (O, C, KH, KW)`, through the path the op takes.
    pub fn conv_forward(
        x_dims: [usize; 4],
        w_dims: [usize; 4],
        stride: usize,
        pad: usize,
        x: &[f32],
        w: &[f32],
    ) -> Vec<f32> {
        match conv_geom(&x_dims, &w_dims, stride, pad) {
            Ok(g) => forward_auto(&g, x, w, None),
            Err(_) => Vec::new(),
        }
    }

    /// Backward: `(dx, dw)` as requested, through the path the op takes.
    #[allow(clippy::too_many_arguments)]
    pub fn conv_backward(
        x_dims: [usize; 4],
        w_dims: [usize; 4],
        stride: usize,
        pad: usize,
        x: &[f32],
        w: &[f32],
        dy: &[f32],
        need_dx: bool,
        need_dw: bool,
    ) -> (Option<Vec<f32>>, Option<Vec<f32>>) {
        match conv_geom(&x_dims, &w_dims, stride, pad) {
            Ok(g) => backward_auto(&g, x, w, dy, need_dx, need_dw),
            Err(_) => (None, None),
        }
    }
}
