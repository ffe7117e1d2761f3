//! Optimisers with PyTorch's exact update rules (candle-nn's SGD has neither momentum nor weight
//! decay). They own named trainable variables; the caller leaves BN running statistics out.
//!
//! State (momentum buffers, Adam moments, step counts) is exported as named tensors so a
//! checkpoint restores it and the next step after a resume is the one an unbroken run takes.

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Result, Tensor, Var};

mod fused_adamw;

/// One optimisation step over the gradients of a backward pass, with checkpointable state.
pub trait Optimizer {
    fn step(&mut self, grads: &GradStore) -> Result<()>;
    fn set_lr(&mut self, lr: f64);
    fn lr(&self) -> f64;
    /// Named state tensors (momentum buffers, moments, step counts) for checkpoints.
    fn state(&self) -> Vec<(String, Tensor)>;
    /// Restores what `state` returned, replacing all current state; unknown or mis-shaped
    /// entries are errors naming the entry.
    fn load_state(&mut self, state: &[(String, Tensor)]) -> Result<()>;
}

/// Which parameters weight decay applies to, decided once per parameter name.
/// RepDistiller decays everything; BERT recipes exclude biases and LayerNorm weights.
fn decay_mask(params: &[(String, Var)], exclude: impl Fn(&str) -> bool) -> Vec<bool> {
    params.iter().map(|(n, _)| !exclude(n)).collect()
}

/// Hugging Face's usual rule for transformers: no decay for biases and LayerNorm weights.
pub fn is_bias_or_layer_norm(name: &str) -> bool {
    name.ends_with("bias") || name.contains("LayerNorm") || name.contains("layer_norm")
}

fn index_of(params: &[(String, Var)], key: &str, what: &str, entry: &str) -> Result<usize> {
    params
        .iter()
        .position(|(n, _)| n == key)
        .ok_or_else(|| candle_core::Error::Msg(format!("{what} state `{entry}` names no parameter `{key}`")))
}

/// A state tensor moved to the parameter's device and dtype, after a shape check.
fn state_like(var: &Var, entry: &str, t: &Tensor, what: &str) -> Result<Tensor> {
    if t.dims() != var.dims() {
        candle_core::bail!(
            "{what} state `{entry}` has shape {:?}, its parameter has {:?}",
            t.dims(),
            var.dims()
        );
    }
    t.to_device(var.device())?.to_dtype(var.dtype())?.contiguous()
}

/// A step count as a one-element f64 tensor (exact to 2^53 steps).
fn count_tensor(n: u64) -> Option<Tensor> {
    Tensor::new(&[n as f64], &Device::Cpu).ok()
}

fn count_of(entry: &str, t: &Tensor) -> Result<u64> {
    let v = t.flatten_all()?.to_dtype(DType::F64)?.to_vec1::<f64>()?;
    match v.as_slice() {
        [n] if *n >= 0.0 && n.fract() == 0.0 => Ok(*n as u64),
        _ => candle_core::bail!("state `{entry}` should hold one non-negative whole number, found {v:?}"),
    }
}

/// torch.optim.SGD: `g = ∇ + wd·p`; `buf = μ·buf + (1−dampening)·g` (first step `buf = g`);
/// `g = g + μ·buf` (Nesterov) or `g = buf`; `p -= lr·g`. Parameters without a gradient in a
/// step are left alone, their buffers untouched, as in PyTorch.
pub struct Sgd {
    params: Vec<(String, Var)>,
    buffers: Vec<Option<Tensor>>,
    decays: Vec<bool>,
    lr: f64,
    momentum: f64,
    dampening: f64,
    nesterov: bool,
    weight_decay: f64,
}

const MOMENTUM_PREFIX: &str = "momentum_buffer.";

impl Sgd {
    /// SGD with dampening 0 and weight decay on every parameter (RepDistiller's setting).
    pub fn new(
        params: Vec<(String, Var)>,
        lr: f64,
        momentum: f64,
        nesterov: bool,
        weight_decay: f64,
    ) -> Result<Self> {
        // `>=` is false for NaN; infinities are refused separately (they turn every weight NaN).
        let finite = lr.is_finite() && momentum.is_finite() && weight_decay.is_finite();
        if !(finite && lr >= 0.0 && momentum >= 0.0 && weight_decay >= 0.0) {
            candle_core::bail!(
                "SGD needs finite lr, momentum and weight_decay ≥ 0, got {lr}, {momentum}, {weight_decay}"
            );
        }
        if nesterov && momentum <= 0.0 {
            candle_core::bail!("Nesterov momentum requires momentum > 0");
        }
        let n = params.len();
        Ok(Self {
            params,
            buffers: vec![None; n],
            decays: vec![true; n],
            lr,
            momentum,
            dampening: 0.0,
            nesterov,
            weight_decay,
        })
    }

    /// Sets torch's `dampening` (Nesterov requires 0, as in PyTorch).
    pub fn with_dampening(mut self, dampening: f64) -> Result<Self> {
        if self.nesterov && dampening != 0.0 {
            candle_core::bail!("Nesterov momentum requires dampening 0, got {dampening}");
        }
        if !(0.0..=1.0).contains(&dampening) {
            candle_core::bail!("SGD dampening must be in [0, 1], got {dampening}");
        }
        self.dampening = dampening;
        Ok(self)
    }

    /// Exempts the parameters whose names satisfy `exclude` from weight decay.
    pub fn without_weight_decay_for(mut self, exclude: impl Fn(&str) -> bool) -> Self {
        self.decays = decay_mask(&self.params, exclude);
        self
    }

    /// Names of the parameters weight decay applies to.
    pub fn decayed_params(&self) -> Vec<&str> {
        self.params.iter().zip(&self.decays).filter(|(_, &d)| d).map(|((n, _), _)| n.as_str()).collect()
    }
}

impl Optimizer for Sgd {
    fn step(&mut self, grads: &GradStore) -> Result<()> {
        for (((_, var), buf), &decays) in self.params.iter().zip(self.buffers.iter_mut()).zip(&self.decays) {
            let Some(grad) = grads.get(var.as_tensor()) else { continue };
            // candle leaves a variable's gradient attached to the graph that computed it (for a
            // built-in conv or matmul, the step's activations), and arithmetic on the variable
            // itself is tracked too: kept in a momentum buffer, each step's graph and buffer
            // would stay alive through the next one's (FitNet's regressor: ~100 MB a step).
            // Detached operands keep the values and drop the graph.
            let grad = &grad.detach();
            let p = &var.as_tensor().detach();
            let mut g = if decays && self.weight_decay != 0.0 {
                (grad + (p * self.weight_decay)?)?
            } else {
                grad.clone()
            };
            if self.momentum != 0.0 {
                let b = match buf.take() {
                    None => g.clone(),
                    Some(b) if self.dampening == 0.0 => ((b * self.momentum)? + &g)?,
                    Some(b) => ((b * self.momentum)? + (&g * (1.0 - self.dampening))?)?,
                };
                g = if self.nesterov { (g + (&b * self.momentum)?)? } else { b.clone() };
                *buf = Some(b);
            }
            var.set(&(p - (g * self.lr)?)?)?;
        }
        Ok(())
    }

    fn set_lr(&mut self, lr: f64) {
        self.lr = lr;
    }

    fn lr(&self) -> f64 {
        self.lr
    }

    fn state(&self) -> Vec<(String, Tensor)> {
        self.params
            .iter()
            .zip(&self.buffers)
            .filter_map(|((n, _), b)| b.as_ref().map(|b| (format!("{MOMENTUM_PREFIX}{n}"), b.clone())))
            .collect()
    }

    fn load_state(&mut self, state: &[(String, Tensor)]) -> Result<()> {
        let mut buffers = vec![None; self.params.len()];
        for (name, t) in state {
            let Some(key) = name.strip_prefix(MOMENTUM_PREFIX) else {
                candle_core::bail!("unknown SGD state `{name}`")
            };
            let i = index_of(&self.params, key, "SGD", name)?;
            buffers[i] = Some(state_like(&self.params[i].1, name, t, "SGD")?);
        }
        self.buffers = buffers;
        Ok(())
    }
}

/// torch.optim.AdamW (amsgrad off): `p *= 1 − lr·wd`; `m = β1·m + (1−β1)·g`;
/// `v = β2·v + (1−β2)·g²`; `p -= lr/(1−β1^t) · m / (√v/√(1−β2^t) + ε)`, with `t` counted per
/// parameter (a parameter without a gradient in a step does not advance), as PyTorch does.
pub struct AdamW {
    params: Vec<(String, Var)>,
    moments: Vec<Option<AdamMoments>>,
    decays: Vec<bool>,
    /// Whether CPU f32 parameters take the fused in-place update (bit-identical, faster).
    fused: bool,
    lr: f64,
    beta1: f64,
    beta2: f64,
    eps: f64,
    weight_decay: f64,
}

#[derive(Clone)]
struct AdamMoments {
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    step: u64,
}

const EXP_AVG: &str = "exp_avg.";
const EXP_AVG_SQ: &str = "exp_avg_sq.";
const STEP: &str = "step.";

impl AdamW {
    pub fn new(
        params: Vec<(String, Var)>,
        lr: f64,
        beta1: f64,
        beta2: f64,
        eps: f64,
        weight_decay: f64,
    ) -> Result<Self> {
        if !(0.0..1.0).contains(&beta1) || !(0.0..1.0).contains(&beta2) {
            candle_core::bail!("AdamW betas must be in [0, 1), got ({beta1}, {beta2})");
        }
        let finite = lr.is_finite() && eps.is_finite() && weight_decay.is_finite();
        if !(finite && lr >= 0.0 && eps >= 0.0 && weight_decay >= 0.0) {
            candle_core::bail!(
                "AdamW needs finite lr, eps and weight_decay ≥ 0, got {lr}, {eps}, {weight_decay}"
            );
        }
        let n = params.len();
        Ok(Self {
            params,
            moments: vec![None; n],
            decays: vec![true; n],
            fused: true,
            lr,
            beta1,
            beta2,
            eps,
            weight_decay,
        })
    }

    /// Exempts the parameters whose names satisfy `exclude` from weight decay
    /// (e.g. [`is_bias_or_layer_norm`]).
    pub fn without_weight_decay_for(mut self, exclude: impl Fn(&str) -> bool) -> Self {
        self.decays = decay_mask(&self.params, exclude);
        self
    }

    /// Names of the parameters weight decay applies to.
    pub fn decayed_params(&self) -> Vec<&str> {
        self.params.iter().zip(&self.decays).filter(|(_, &d)| d).map(|((n, _), _)| n.as_str()).collect()
    }

    /// Updates with candle's composed ops everywhere, as on a GPU: the reference the fused CPU
    /// update is tested against (the values are the same bits).
    pub fn without_fused_update(mut self) -> Self {
        self.fused = false;
        self
    }
}

impl Optimizer for AdamW {
    fn step(&mut self, grads: &GradStore) -> Result<()> {
        for (((_, var), slot), &decays) in self.params.iter().zip(self.moments.iter_mut()).zip(&self.decays) {
            let Some(g) = grads.get(var.as_tensor()) else { continue };
            // Detached for the reason Sgd::step gives: the moments must not hold the step's graph.
            let g = &g.detach();
            let p = &var.as_tensor().detach();
            if let Some(s) = slot.as_mut() {
                if self.fused && fused_adamw::applies(&[p, g, &s.exp_avg, &s.exp_avg_sq]) {
                    s.step += 1;
                    let decay = (decays && self.weight_decay != 0.0).then_some(self.lr * self.weight_decay);
                    let scalars = fused_adamw::Scalars::for_step(
                        self.lr, self.beta1, self.beta2, self.eps, decay, s.step,
                    );
                    fused_adamw::step(var.as_tensor(), g, &s.exp_avg, &s.exp_avg_sq, scalars)?;
                    continue;
                }
            }
            let g_sq = (g.sqr()? * (1.0 - self.beta2))?;
            let next = match slot.take() {
                // PyTorch starts both moments at zero: β·0 + (1−β)·g.
                None => AdamMoments { exp_avg: (g * (1.0 - self.beta1))?, exp_avg_sq: g_sq, step: 1 },
                Some(s) => AdamMoments {
                    exp_avg: ((s.exp_avg * self.beta1)? + (g * (1.0 - self.beta1))?)?,
                    exp_avg_sq: ((s.exp_avg_sq * self.beta2)? + g_sq)?,
                    step: s.step + 1,
                },
            };
            let t = i32::try_from(next.step).unwrap_or(i32::MAX);
            let bias_correction1 = 1.0 - self.beta1.powi(t);
            let bias_correction2_sqrt = (1.0 - self.beta2.powi(t)).sqrt();
            let step_size = self.lr / bias_correction1;
            let decayed = if decays && self.weight_decay != 0.0 {
                (p * (1.0 - self.lr * self.weight_decay))?
            } else {
                p.clone()
            };
            let denom = next.exp_avg_sq.sqrt()?.affine(1.0 / bias_correction2_sqrt, self.eps)?;
            let update = ((&next.exp_avg / &denom)? * step_size)?;
            var.set(&(decayed - update)?)?;
            *slot = Some(next);
        }
        Ok(())
    }

    fn set_lr(&mut self, lr: f64) {
        self.lr = lr;
    }

    fn lr(&self) -> f64 {
        self.lr
    }

    fn state(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        for ((n, _), s) in self.params.iter().zip(&self.moments) {
            if let Some(s) = s {
                // Copies: the fused step overwrites the moments in place.
                out.push((format!("{EXP_AVG}{n}"), s.exp_avg.copy().unwrap_or_else(|_| s.exp_avg.clone())));
                out.push((
                    format!("{EXP_AVG_SQ}{n}"),
                    s.exp_avg_sq.copy().unwrap_or_else(|_| s.exp_avg_sq.clone()),
                ));
                out.extend(count_tensor(s.step).map(|t| (format!("{STEP}{n}"), t)));
            }
        }
        out
    }

    fn load_state(&mut self, state: &[(String, Tensor)]) -> Result<()> {
        let n = self.params.len();
        let (mut avg, mut avg_sq, mut steps) = (vec![None; n], vec![None; n], vec![None; n]);
        // Checkpoints from before per-parameter step counts stored one global `step`.
        let mut global_step = None;
        for (name, t) in state {
            if name == "step" {
                global_step = Some(count_of(name, t)?);
            } else if let Some(key) = name.strip_prefix(EXP_AVG) {
                let i = index_of(&self.params, key, "AdamW", name)?;
                // Own copies: the fused step updates the moments in place.
                avg[i] = Some(state_like(&self.params[i].1, name, t, "AdamW")?.copy()?);
            } else if let Some(key) = name.strip_prefix(EXP_AVG_SQ) {
                let i = index_of(&self.params, key, "AdamW", name)?;
                avg_sq[i] = Some(state_like(&self.params[i].1, name, t, "AdamW")?.copy()?);
            } else if let Some(key) = name.strip_prefix(STEP) {
                let i = index_of(&self.params, key, "AdamW", name)?;
                steps[i] = Some(count_of(name, t)?);
            } else {
                candle_core::bail!("unknown AdamW state `{name}`")
            }
        }
        let mut moments = vec![None; n];
        for i in 0..n {
            let name = &self.params[i].0;
            moments[i] = match (avg[i].take(), avg_sq[i].take(), steps[i].or(global_step)) {
                (None, None, _) => None,
                (Some(exp_avg), Some(exp_avg_sq), Some(step)) if step > 0 => {
                    Some(AdamMoments { exp_avg, exp_avg_sq, step })
                }
                _ => candle_core::bail!(
                    "AdamW state for `{name}` is incomplete: it needs `{EXP_AVG}{name}`, `{EXP_AVG_SQ}{name}` \
                     and a positive `{STEP}{name}`"
                ),
            };
        }
        self.moments = moments;
        Ok(())
    }
}
