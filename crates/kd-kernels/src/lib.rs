//! Fast CPU kernels for what dominates CNN training in candle: conv2d and batch norm, as
//! `CustomOp`s with forward and backward. On other devices or dtypes the functions fall back to
//! candle's own ops ([`reference`]), so model code calls these functions unconditionally.
//!
//! Which path runs is a [`Kernels`] value: the free functions are [`Kernels::Fast`] (the
//! hand-written kernels where they apply: f32 tensors on the CPU); [`Kernels::Generic`] runs
//! candle's own ops everywhere, the path a GPU takes, so it can be tested on the CPU against the
//! fast one. [`Kernels::for_device`] picks `Fast` on the CPU and `Generic` elsewhere.
//!
//! Public contract (models depend on it; keep the signatures):
//! - [`conv2d`]: NCHW input, OIHW weights, no bias, groups = 1, square stride and padding.
//! - [`batch_norm_train`]: normalise with batch statistics; returns the output and the batch
//!   mean and *biased* variance per channel (the caller updates running statistics).
//! - [`batch_norm_eval`]: normalise with running statistics.
//! - Fused extras: [`batch_norm_relu_train`], [`batch_norm_relu_eval`], [`relu`], [`add_relu`].
//! - [`gelu_erf`]: candle's `gelu_erf`, the same values and gradients, backward in one pass.
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
mod gelu;
mod im2col;
mod parity;
pub mod reference;
mod simd;
#[cfg(test)]
mod test_support;
mod winograd;

use std::sync::Arc;

use candle_core::{DType, Device, Result, Tensor};

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

/// Which implementation of the ops below runs.
///
/// Models keep one per layer (chosen when they are built), so two models with different
/// kernels can run side by side; nothing here is global.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Kernels {
    /// The hand-written CPU kernels wherever they apply (every tensor of an op f32 on the CPU),
    /// candle's own ops otherwise. The default, and what the free functions of this crate run.
    #[default]
    Fast,
    /// candle's own ops ([`reference`]) always: the path a GPU runs, and on the CPU the
    /// yardstick the fast kernels are tested against.
    Generic,
}

impl Kernels {
    /// `Fast` on the CPU, `Generic` on any other device (where the fast kernels do not apply).
    pub fn for_device(device: &Device) -> Self {
        if device.is_cpu() {
            Self::Fast
        } else {
            Self::Generic
        }
    }

    /// `"fast"` or `"generic"`, as [`FromStr`](std::str::FromStr) reads them.
    pub fn name(self) -> &'static str {
        match self {
            Self::Fast => "fast",
            Self::Generic => "generic",
        }
    }

    /// Whether an op on these tensors runs a hand-written kernel (otherwise candle's ops).
    pub fn applies_to(self, tensors: &[&Tensor]) -> bool {
        self == Self::Fast && all_cpu_f32(tensors)
    }

    /// [`conv2d`] through these kernels.
    pub fn conv2d(self, x: &Tensor, w: &Tensor, stride: usize, padding: usize) -> Result<Tensor> {
        if !self.applies_to(&[x, w]) {
            return reference::conv2d(x, w, stride, padding);
        }
        x.contiguous()?.apply_op2(&w.contiguous()?, Conv2dOp { stride, padding })
    }

    /// [`batch_norm_train`] through these kernels.
    pub fn batch_norm_train(
        self,
        x: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        eps: f64,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        if !self.applies_to(&[x, gamma, beta]) {
            return reference::batch_norm_train(x, gamma, beta, eps);
        }
        train_op(x, gamma, beta, eps, false)
    }

    /// [`batch_norm_relu_train`] through these kernels.
    pub fn batch_norm_relu_train(
        self,
        x: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        eps: f64,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        if !self.applies_to(&[x, gamma, beta]) {
            let (y, mean, var) = reference::batch_norm_train(x, gamma, beta, eps)?;
            return Ok((y.relu()?, mean, var));
        }
        train_op(x, gamma, beta, eps, true)
    }

    /// [`batch_norm_eval`] through these kernels.
    pub fn batch_norm_eval(
        self,
        x: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        running_mean: &Tensor,
        running_var: &Tensor,
        eps: f64,
    ) -> Result<Tensor> {
        if !self.applies_to(&[x, gamma, beta, running_mean, running_var]) {
            return reference::batch_norm_eval(x, gamma, beta, running_mean, running_var, eps);
        }
        eval_op(x, gamma, beta, running_mean, running_var, eps, false)
    }

    /// [`batch_norm_relu_eval`] through these kernels.
    pub fn batch_norm_relu_eval(
        self,
        x: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        running_mean: &Tensor,
        running_var: &Tensor,
        eps: f64,
    ) -> Result<Tensor> {
        if !self.applies_to(&[x, gamma, beta, running_mean, running_var]) {
            return reference::batch_norm_eval(x, gamma, beta, running_mean, running_var, eps)?.relu();
        }
        eval_op(x, gamma, beta, running_mean, running_var, eps, true)
    }

    /// [`conv2d_bn_eval`] through these kernels (`Generic`: convolution, batch norm, residual
    /// and ReLU as separate candle ops, nothing folded).
    #[allow(clippy::too_many_arguments)]
    pub fn conv2d_bn_eval(
        self,
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
        if !self.applies_to(&all) {
            let y = reference::conv2d(x, w, stride, padding)?;
            let y =
                reference::batch_norm_eval(&y, bn.gamma, bn.beta, bn.running_mean, bn.running_var, bn.eps)?;
            let y = match residual {
                Some(r) => (y + r)?,
                None => y,
            };
            return if relu { y.relu() } else { Ok(y) };
        }
        folded_conv_bn_eval(x, w, stride, padding, bn, residual, relu)
    }

    /// [`relu`] through these kernels.
    pub fn relu(self, x: &Tensor) -> Result<Tensor> {
        if !self.applies_to(&[x]) {
            return x.relu();
        }
        x.contiguous()?.apply_op1(ReluOp)
    }

    /// [`gelu_erf`] through these kernels.
    pub fn gelu_erf(self, x: &Tensor) -> Result<Tensor> {
        if !self.applies_to(&[x]) {
            return x.gelu_erf();
        }
        x.contiguous()?.apply_op1(gelu::GeluErfOp)
    }

    /// [`add_relu`] through these kernels.
    pub fn add_relu(self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        if !self.applies_to(&[a, b]) {
            return (a + b)?.relu();
        }
        a.contiguous()?.apply_op2(&b.contiguous()?, AddReluOp)
    }
}

impl std::fmt::Display for Kernels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Kernels {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "fast" => Ok(Self::Fast),
            "generic" => Ok(Self::Generic),
            other => Err(format!("unknown kernels `{other}` (expected `fast` or `generic`)")),
        }
    }
}

/// 2-D convolution without bias. `x`: `(N, C, H, W)`, `w`: `(O, C, KH, KW)`.
pub fn conv2d(x: &Tensor, w: &Tensor, stride: usize, padding: usize) -> Result<Tensor> {
    Kernels::Fast.conv2d(x, w, stride, padding)
}

/// Training-mode batch norm over `(N, C, H, W)`; returns `(y, batch_mean, batch_var_biased)`,
/// the statistics shaped `(C,)` and detached.
pub fn batch_norm_train(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
) -> Result<(Tensor, Tensor, Tensor)> {
    Kernels::Fast.batch_norm_train(x, gamma, beta, eps)
}

/// `relu(batch_norm_train(x))` in one op: same statistics as [`batch_norm_train`], one pass less
/// forward and a cheaper backward.
pub fn batch_norm_relu_train(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
) -> Result<(Tensor, Tensor, Tensor)> {
    Kernels::Fast.batch_norm_relu_train(x, gamma, beta, eps)
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
    Kernels::Fast.batch_norm_eval(x, gamma, beta, running_mean, running_var, eps)
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
    Kernels::Fast.batch_norm_relu_eval(x, gamma, beta, running_mean, running_var, eps)
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
    Kernels::Fast.conv2d_bn_eval(x, w, stride, padding, bn, residual, relu)
}

/// The fast path of [`conv2d_bn_eval`]; every tensor is f32 on the CPU.
fn folded_conv_bn_eval(
    x: &Tensor,
    w: &Tensor,
    stride: usize,
    padding: usize,
    bn: &BnEval,
    residual: Option<&Tensor>,
    relu: bool,
) -> Result<Tensor> {
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
    Kernels::Fast.relu(x)
}

/// `max(a + b, 0)` for the residual join of a ResNet block; `a` and `b` have the same shape.
pub fn add_relu(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    Kernels::Fast.add_relu(a, b)
}

/// GELU with the exact `erf`, `x · (1 + erf(x/√2)) / 2`: candle's `gelu_erf`, value for value
/// and gradient for gradient, with a one-pass backward (candle's records eleven ops).
pub fn gelu_erf(x: &Tensor) -> Result<Tensor> {
    Kernels::Fast.gelu_erf(x)
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
