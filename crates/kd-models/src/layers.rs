//! Building blocks shared by the CNNs: bias-free conv and PyTorch-exact batch norm, both running
//! on kd-kernels' ops.
//!
//! Each layer keeps the [`Kernels`] it runs (kd-kernels' fast CPU ops, or candle's generic
//! ops as on a GPU), fixed when it is built: [`Kernels::for_device`] of its variables' device,
//! unless built inside [`build_with_kernels`] (or changed with `with_kernels`).

use std::cell::Cell;
use std::sync::atomic::{AtomicU8, Ordering};

use candle_core::{Device, Module, Result, Tensor, Var};
use candle_nn::{Init, Linear, VarBuilder};
use kd_core::Mode;
use kd_kernels::Kernels;

thread_local! {
    /// The kernels [`build_with_kernels`] asks for while it runs on this thread.
    static BUILD_KERNELS: Cell<Option<Kernels>> = const { Cell::new(None) };
}

/// Runs `build`, every layer it constructs on this thread taking `kernels` (instead of
/// [`Kernels::for_device`] of its device); the previous choice is restored afterwards, also on
/// a panic. Only construction reads it: a built layer keeps its kernels wherever it runs, so
/// models built with different kernels can run side by side (and tests in parallel threads
/// do not see each other's choice).
pub fn build_with_kernels<R>(kernels: Kernels, build: impl FnOnce() -> R) -> R {
    struct Restore(Option<Kernels>);
    impl Drop for Restore {
        fn drop(&mut self) {
            BUILD_KERNELS.with(|k| k.set(self.0));
        }
    }
    let _restore = Restore(BUILD_KERNELS.with(|k| k.replace(Some(kernels))));
    build()
}

/// The process-wide choice of [`set_process_kernels`]: 0 none, 1 fast, 2 generic.
static PROCESS_KERNELS: AtomicU8 = AtomicU8::new(0);

/// Makes every layer built afterwards in this process, on any thread, take `kernels` (unless
/// inside [`build_with_kernels`]); `None` goes back to [`Kernels::for_device`]. For a whole
/// run on the generic path (what a GPU runs) on the CPU: `kd reproduce --kernels generic`.
/// Tests that build models side by side use [`build_with_kernels`] instead.
pub fn set_process_kernels(kernels: Option<Kernels>) {
    let code = match kernels {
        None => 0,
        Some(Kernels::Fast) => 1,
        Some(Kernels::Generic) => 2,
    };
    PROCESS_KERNELS.store(code, Ordering::Relaxed);
}

/// The [`set_process_kernels`] choice, if any.
pub fn process_kernels() -> Option<Kernels> {
    match PROCESS_KERNELS.load(Ordering::Relaxed) {
        1 => Some(Kernels::Fast),
        2 => Some(Kernels::Generic),
        _ => None,
    }
}

/// The kernels a layer whose variables live on `device` takes when built now: the innermost
/// [`build_with_kernels`] choice on this thread, else the [`set_process_kernels`] one, else
/// [`Kernels::for_device`].
pub fn layer_kernels(device: &Device) -> Kernels {
    BUILD_KERNELS.with(Cell::get).or_else(process_kernels).unwrap_or_else(|| Kernels::for_device(device))
}

/// Names of state that is stored with a model but never trained nor weight-decayed.
pub const NON_TRAINABLE_SUFFIXES: [&str; 3] = ["running_mean", "running_var", "num_batches_tracked"];

/// Whether a variable of this name is a parameter an optimiser should update: everything
/// except batch-norm running statistics (`*running_mean`, `*running_var`,
/// `*num_batches_tracked`).
pub fn is_trainable(name: &str) -> bool {
    !NON_TRAINABLE_SUFFIXES.iter().any(|s| name.ends_with(s))
}

/// 2-D convolution (`weight`: `(out, in, k, k)`), without bias unless built with
/// [`Conv2d::with_bias`].
#[derive(Debug, Clone)]
pub struct Conv2d {
    weight: Tensor,
    /// `(out,)`; only third-party checkpoints with a biased stem need it (a bias before batch
    /// norm is redundant, but the file's running mean was measured with it).
    bias: Option<Tensor>,
    stride: usize,
    padding: usize,
    kernels: Kernels,
}

impl Conv2d {
    pub fn new(
        in_channels: usize,
        out_channels: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
        init: Init,
        vb: VarBuilder,
    ) -> Result<Self> {
        let weight = vb.get_with_hints((out_channels, in_channels, kernel, kernel), "weight", init)?;
        Ok(Self { weight, bias: None, stride, padding, kernels: layer_kernels(vb.device()) })
    }

    /// A convolution with a `bias` of `out_channels`, initialised as PyTorch's `nn.Conv2d`
    /// does (uniform in `±1/sqrt(in_channels · kernel²)`).
    pub fn with_bias(
        in_channels: usize,
        out_channels: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
        init: Init,
        vb: VarBuilder,
    ) -> Result<Self> {
        let mut conv = Self::new(in_channels, out_channels, kernel, stride, padding, init, vb.clone())?;
        let bound = 1.0 / ((in_channels * kernel * kernel).max(1) as f64).sqrt();
        conv.bias = Some(vb.get_with_hints(out_channels, "bias", Init::Uniform { lo: -bound, up: bound })?);
        Ok(conv)
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = self.kernels.conv2d(x, &self.weight, self.stride, self.padding)?;
        match &self.bias {
            None => Ok(y),
            Some(b) => y.broadcast_add(&b.reshape((1, b.elem_count(), 1, 1))?),
        }
    }

    pub fn weight(&self) -> &Tensor {
        &self.weight
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

    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    pub fn num_params(&self) -> usize {
        self.weight.elem_count() + self.bias.as_ref().map_or(0, Tensor::elem_count)
    }
}

/// `BatchNorm2d` with PyTorch's semantics: in training mode it normalises with the batch
/// statistics and updates `running_mean`/`running_var` with momentum 0.1, the variance
/// unbiased (`n / (n - 1)`); in evaluation mode it uses the running statistics.
///
/// The running statistics are `Var`s (so they live in the `VarMap` and in checkpoints) that
/// are written with `Var::set`, never by an optimiser (see [`is_trainable`]).
#[derive(Debug, Clone)]
pub struct BatchNorm2d {
    weight: Tensor,
    bias: Tensor,
    running_mean: Var,
    running_var: Var,
    eps: f64,
    momentum: f64,
    kernels: Kernels,
}

impl BatchNorm2d {
    pub const DEFAULT_EPS: f64 = 1e-5;
    pub const DEFAULT_MOMENTUM: f64 = 0.1;

    pub fn new(num_features: usize, vb: VarBuilder) -> Result<Self> {
        let weight = vb.get_with_hints(num_features, "weight", Init::Const(1.0))?;
        let bias = vb.get_with_hints(num_features, "bias", Init::Const(0.0))?;
        let running_mean = vb.get_with_hints(num_features, "running_mean", Init::Const(0.0))?;
        let running_var = vb.get_with_hints(num_features, "running_var", Init::Const(1.0))?;
        Ok(Self {
            weight,
            bias,
            // Shares storage with the VarMap's variable when `vb` is backed by one; otherwise
            // (read-only weights) a private copy.
            running_mean: Var::from_tensor(&running_mean)?,
            running_var: Var::from_tensor(&running_var)?,
            eps: Self::DEFAULT_EPS,
            momentum: Self::DEFAULT_MOMENTUM,
            kernels: layer_kernels(vb.device()),
        })
    }

    pub fn forward(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        self.forward_impl(x, mode, false)
    }

    /// `relu(self.forward(x))`, fused.
    pub fn forward_relu(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        self.forward_impl(x, mode, true)
    }

    fn forward_impl(&self, x: &Tensor, mode: Mode, relu: bool) -> Result<Tensor> {
        match mode {
            Mode::Eval => {
                let f = if relu { Kernels::batch_norm_relu_eval } else { Kernels::batch_norm_eval };
                f(
                    self.kernels,
                    x,
                    &self.weight,
                    &self.bias,
                    self.running_mean.as_tensor(),
                    self.running_var.as_tensor(),
                    self.eps,
                )
            }
            Mode::Train => {
                let (n, _, h, w) = x.dims4()?;
                let count = n * h * w;
                if count < 2 {
                    candle_core::bail!(
                        "batch norm in training mode needs more than 1 value per channel, got input {:?}",
                        x.dims()
                    );
                }
                let f = if relu { Kernels::batch_norm_relu_train } else { Kernels::batch_norm_train };
                let (y, mean, var_biased) = f(self.kernels, x, &self.weight, &self.bias, self.eps)?;
                self.update_running_stats(&mean, &var_biased, count)?;
                if relu {
                    relu_probe::record(&y)?;
                }
                Ok(y)
            }
        }
    }

    /// `running = (1 - momentum) * running + momentum * batch`, the variance unbiased.
    fn update_running_stats(&self, mean: &Tensor, var_biased: &Tensor, count: usize) -> Result<()> {
        let m = self.momentum;
        let dtype = self.running_mean.dtype();
        let mean = mean.detach().to_dtype(dtype)?;
        let var_unbiased =
            var_biased.detach().to_dtype(dtype)?.affine(count as f64 / (count - 1) as f64, 0.0)?;
        let new_mean = (self.running_mean.as_tensor().affine(1.0 - m, 0.0)? + mean.affine(m, 0.0)?)?;
        let new_var = (self.running_var.as_tensor().affine(1.0 - m, 0.0)? + var_unbiased.affine(m, 0.0)?)?;
        self.running_mean.set(&new_mean)?;
        self.running_var.set(&new_var)
    }

    pub fn running_mean(&self) -> &Tensor {
        self.running_mean.as_tensor()
    }

    /// The parameters eval mode normalises with, for the folded inference kernel.
    pub fn eval_params(&self) -> kd_kernels::BnEval<'_> {
        kd_kernels::BnEval {
            gamma: &self.weight,
            beta: &self.bias,
            running_mean: self.running_mean.as_tensor(),
            running_var: self.running_var.as_tensor(),
            eps: self.eps,
        }
    }

    pub fn running_var(&self) -> &Tensor {
        self.running_var.as_tensor()
    }

    pub fn eps(&self) -> f64 {
        self.eps
    }

    pub fn momentum(&self) -> f64 {
        self.momentum
    }

    /// The kernels this batch norm runs.
    pub fn kernels(&self) -> Kernels {
        self.kernels
    }

    /// The same batch norm running `kernels`.
    pub fn with_kernels(mut self, kernels: Kernels) -> Self {
        self.kernels = kernels;
        self
    }

    /// Trainable parameters (`weight`, `bias`).
    pub fn num_params(&self) -> usize {
        self.weight.elem_count() + self.bias.elem_count()
    }
}

/// PyTorch `nn.Linear`'s default initialisation: weight and bias uniform in
/// `±1/sqrt(fan_in)` (kaiming-uniform with `a = sqrt(5)`).
/// `bn(conv(x))`, ReLU'd if `relu`. In eval mode one op with the batch norm folded into the
/// convolution (inference only, see `kd_kernels::conv2d_bn_eval`).
pub fn conv_bn(conv: &Conv2d, bn: &BatchNorm2d, x: &Tensor, mode: Mode, relu: bool) -> Result<Tensor> {
    match mode {
        Mode::Eval => folded_conv_bn(conv, bn, x, None, relu),
        Mode::Train => bn.forward_impl(&conv.forward(x)?, mode, relu),
    }
}

/// `relu(bn(conv(x)) + residual)`, the end of a residual block; one folded op in eval mode.
pub fn conv_bn_add_relu(
    conv: &Conv2d,
    bn: &BatchNorm2d,
    x: &Tensor,
    residual: &Tensor,
    mode: Mode,
) -> Result<Tensor> {
    match mode {
        Mode::Eval => folded_conv_bn(conv, bn, x, Some(residual), true),
        Mode::Train => {
            let y = bn.kernels.add_relu(&bn.forward(&conv.forward(x)?, mode)?, residual)?;
            relu_probe::record(&y)?;
            Ok(y)
        }
    }
}

fn folded_conv_bn(
    conv: &Conv2d,
    bn: &BatchNorm2d,
    x: &Tensor,
    residual: Option<&Tensor>,
    relu: bool,
) -> Result<Tensor> {
    match &conv.bias {
        None => conv.kernels.conv2d_bn_eval(
            x,
            &conv.weight,
            conv.stride,
            conv.padding,
            &bn.eval_params(),
            residual,
            relu,
        ),
        Some(bias) => {
            // bn(conv(x) + b) is bn(conv(x)) with the running mean shifted by -b.
            let shifted_mean = (bn.running_mean() - bias)?;
            let params = kd_kernels::BnEval { running_mean: &shifted_mean, ..bn.eval_params() };
            conv.kernels.conv2d_bn_eval(x, &conv.weight, conv.stride, conv.padding, &params, residual, relu)
        }
    }
}

pub fn torch_default_linear(in_dim: usize, out_dim: usize, vb: VarBuilder) -> Result<Linear> {
    let bound = 1.0 / (in_dim.max(1) as f64).sqrt();
    let init = Init::Uniform { lo: -bound, up: bound };
    linear_with_init(in_dim, out_dim, init, vb)
}

/// A linear layer whose weight uses `weight_init` and whose bias is PyTorch's default.
pub fn linear_with_init(in_dim: usize, out_dim: usize, weight_init: Init, vb: VarBuilder) -> Result<Linear> {
    let bound = 1.0 / (in_dim.max(1) as f64).sqrt();
    let weight = vb.get_with_hints((out_dim, in_dim), "weight", weight_init)?;
    let bias = vb.get_with_hints(out_dim, "bias", Init::Uniform { lo: -bound, up: bound })?;
    Ok(Linear::new(weight, Some(bias)))
}

pub fn linear_num_params(linear: &Linear) -> usize {
    linear.weight().elem_count() + linear.bias().map_or(0, |b| b.elem_count())
}

/// Global average pool `(N, C, H, W) -> (N, C)`.
pub fn global_avg_pool(x: &Tensor) -> Result<Tensor> {
    x.flatten_from(2)?.mean(2)
}

/// Applies a linear head (kept here so every model uses the same code path).
pub fn apply_linear(linear: &Linear, x: &Tensor) -> Result<Tensor> {
    linear.forward(x)
}

/// Which units the training-mode ReLUs of this module's layers ([`BatchNorm2d::forward_relu`],
/// [`conv_bn`] with `relu`, [`conv_bn_add_relu`]) zeroed, for tests comparing two
/// implementations of a network; not a stable API.
///
/// A ReLU's gradient jumps where its input crosses zero, so two paths whose forward values agree
/// to 1e-7 can still differ by percents in some gradients, when a unit within that distance of
/// zero is kept by one and zeroed by the other (tests/generic_path.rs measured this). Comparing
/// the recorded patterns tells such a flip from a wrong gradient. Off unless [`start`] was
/// called on this thread; then each ReLU output is copied to the host once.
#[doc(hidden)]
pub mod relu_probe {
    use std::cell::RefCell;

    use candle_core::{Result, Tensor};

    thread_local! {
        static PATTERNS: RefCell<Option<Vec<Vec<bool>>>> = const { RefCell::new(None) };
    }

    /// Starts recording on this thread, dropping anything recorded before.
    pub fn start() {
        PATTERNS.with(|p| *p.borrow_mut() = Some(Vec::new()));
    }

    /// Stops recording and returns, per ReLU in the order they ran, whether each output was 0.
    pub fn take() -> Vec<Vec<bool>> {
        PATTERNS.with(|p| p.borrow_mut().take()).unwrap_or_default()
    }

    pub(crate) fn record(y: &Tensor) -> Result<()> {
        if PATTERNS.with(|p| p.borrow().is_none()) {
            return Ok(());
        }
        let zeros: Vec<bool> = y
            .flatten_all()?
            .to_dtype(candle_core::DType::F32)?
            .to_vec1::<f32>()?
            .iter()
            .map(|&v| v == 0.0)
            .collect();
        PATTERNS.with(|p| {
            if let Some(patterns) = p.borrow_mut().as_mut() {
                patterns.push(zeros);
            }
        });
        Ok(())
    }
}
