//! Optimisers with PyTorch's exact semantics (candle-nn's SGD has neither momentum nor weight
//! decay). They own named trainable variables; the caller leaves BN running statistics out.

use candle_core::backprop::GradStore;
use candle_core::{Result, Tensor, Var};

/// One optimisation step over the gradients of a backward pass, with checkpointable state.
pub trait Optimizer {
    fn step(&mut self, grads: &GradStore) -> Result<()>;
    fn set_lr(&mut self, lr: f64);
    fn lr(&self) -> f64;
    /// Named state tensors (momentum buffers, moments, step count) for checkpoints.
    fn state(&self) -> Vec<(String, Tensor)>;
    /// Restores what `state` returned; unknown or mis-shaped entries are errors.
    fn load_state(&mut self, state: &[(String, Tensor)]) -> Result<()>;
}

/// torch.optim.SGD: `g = ∇ + wd·p; buf = μ·buf + g` (first step `buf = g`);
/// `g = g + μ·buf` (Nesterov) or `g = buf`; `p -= lr·g`.
pub struct Sgd {
    params: Vec<(String, Var)>,
    buffers: Vec<Option<Tensor>>,
    lr: f64,
    momentum: f64,
    nesterov: bool,
    weight_decay: f64,
}

impl Sgd {
    pub fn new(
        params: Vec<(String, Var)>,
        lr: f64,
        momentum: f64,
        nesterov: bool,
        weight_decay: f64,
    ) -> Result<Self> {
        if nesterov && momentum <= 0.0 {
            candle_core::bail!("Nesterov momentum requires momentum > 0");
        }
        let buffers = vec![None; params.len()];
        Ok(Self { params, buffers, lr, momentum, nesterov, weight_decay })
    }
}

const MOMENTUM_PREFIX: &str = "momentum_buffer.";

impl Optimizer for Sgd {
    fn step(&mut self, grads: &GradStore) -> Result<()> {
        for ((_, var), buf) in self.params.iter().zip(self.buffers.iter_mut()) {
            let Some(grad) = grads.get(var.as_tensor()) else { continue };
            let p = var.as_tensor();
            let mut g =
                if self.weight_decay != 0.0 { (grad + (p * self.weight_decay)?)? } else { grad.clone() };
            if self.momentum != 0.0 {
                let b = match buf.take() {
                    None => g.clone(),
                    Some(b) => ((b * self.momentum)? + &g)?,
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
        self.buffers = vec![None; self.params.len()];
        for (name, t) in state {
            let key = name
                .strip_prefix(MOMENTUM_PREFIX)
                .ok_or_else(|| candle_core::Error::Msg(format!("unknown SGD state `{name}`")))?;
            let i =
                self.params.iter().position(|(n, _)| n == key).ok_or_else(|| {
                    candle_core::Error::Msg(format!("SGD state for unknown parameter `{key}`"))
                })?;
            let var = &self.params[i].1;
            if t.dims() != var.dims() {
                candle_core::bail!(
                    "SGD state `{name}` has shape {:?}, parameter has {:?}",
                    t.dims(),
                    var.dims()
                );
            }
            self.buffers[i] = Some(t.to_device(var.device())?.to_dtype(var.dtype())?);
        }
        Ok(())
    }
}

/// torch.optim.AdamW: decoupled weight decay `p -= lr·wd·p`, then Adam with bias correction.
pub struct AdamW {
    params: Vec<(String, Var)>,
    m: Vec<Option<Tensor>>,
    v: Vec<Option<Tensor>>,
    step: u64,
    lr: f64,
    beta1: f64,
    beta2: f64,
    eps: f64,
    weight_decay: f64,
}

impl AdamW {
    pub fn new(
        params: Vec<(String, Var)>,
        lr: f64,
        beta1: f64,
        beta2: f64,
        eps: f64,
        weight_decay: f64,
    ) -> Result<Self> {
        let n = params.len();
        Ok(Self { params, m: vec![None; n], v: vec![None; n], step: 0, lr, beta1, beta2, eps, weight_decay })
    }
}

impl Optimizer for AdamW {
    fn step(&mut self, grads: &GradStore) -> Result<()> {
        self.step += 1;
        let bc1 = 1.0 - self.beta1.powi(self.step as i32);
        let bc2 = 1.0 - self.beta2.powi(self.step as i32);
        for (i, (_, var)) in self.params.iter().enumerate() {
            let Some(g) = grads.get(var.as_tensor()) else { continue };
            let p = var.as_tensor();
            let m = match self.m[i].take() {
                None => (g * (1.0 - self.beta1))?,
                Some(m) => ((m * self.beta1)? + (g * (1.0 - self.beta1))?)?,
            };
            let v = match self.v[i].take() {
                None => (g.sqr()? * (1.0 - self.beta2))?,
                Some(v) => ((v * self.beta2)? + (g.sqr()? * (1.0 - self.beta2))?)?,
            };
            let decayed = (p * (1.0 - self.lr * self.weight_decay))?;
            let denom = ((v.clone() / bc2)?.sqrt()? + self.eps)?;
            let update = ((m.clone() / bc1)? / denom)?;
            var.set(&(decayed - (update * self.lr)?)?)?;
            self.m[i] = Some(m);
            self.v[i] = Some(v);
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
        for (i, (n, _)) in self.params.iter().enumerate() {
            if let (Some(m), Some(v)) = (&self.m[i], &self.v[i]) {
                out.push((format!("exp_avg.{n}"), m.clone()));
                out.push((format!("exp_avg_sq.{n}"), v.clone()));
            }
        }
        if let Ok(t) = Tensor::new(&[self.step as f32], &candle_core::Device::Cpu) {
            out.push(("step".to_string(), t));
        }
        out
    }

    fn load_state(&mut self, state: &[(String, Tensor)]) -> Result<()> {
        let n = self.params.len();
        self.m = vec![None; n];
        self.v = vec![None; n];
        for (name, t) in state {
            if name == "step" {
                self.step = t.to_vec1::<f32>()?[0] as u64;
                continue;
            }
            let (slot, key) = if let Some(k) = name.strip_prefix("exp_avg.") {
                (0, k)
            } else if let Some(k) = name.strip_prefix("exp_avg_sq.") {
                (1, k)
            } else {
                candle_core::bail!("unknown AdamW state `{name}`")
            };
            let i = self.params.iter().position(|(p, _)| p == key).ok_or_else(|| {
                candle_core::Error::Msg(format!("AdamW state for unknown parameter `{key}`"))
            })?;
            let t = t.to_device(self.params[i].1.device())?;
            if slot == 0 {
                self.m[i] = Some(t);
            } else {
                self.v[i] = Some(t);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn quad_grads(p: &Var) -> GradStore {
        // loss = sum(p^2)/2 -> grad = p
        (p.as_tensor().sqr().unwrap().sum_all().unwrap() * 0.5).unwrap().backward().unwrap()
    }

    // Golden values by hand, torch.optim.SGD semantics, p0 = [1, -2], grad = p:
    //   lr 0.1, momentum 0.9, wd 0.01:
    //   step 1: g = p + 0.01p = [1.01, -2.02]; buf = g; p = p - 0.1 g = [0.899, -1.798]
    //   step 2: g = 1.01 p = [0.90799, -1.81598]; buf = 0.9·[1.01,-2.02] + g = [1.81699, -3.63398]
    //           p = [0.899 - 0.181699, -1.798 + 0.363398] = [0.717301, -1.434602]
    //   Nesterov: step 1: buf = g = [1.01, -2.02]; g' = g + 0.9 buf = [1.919, -3.838];
    //             p = [0.8081, -1.6162]
    //             step 2: g = 1.01 p = [0.816181, ...]; buf = 0.9·1.01 + 0.816181 = 1.725181;
    //             g' = 0.816181 + 0.9·1.725181 = 2.3688439; p = 0.8081 - 0.23688439 = 0.57121561
    //             (second coordinate: -2 times the first)
    #[test]
    fn sgd_matches_torch_semantics() {
        for (nesterov, want) in [(false, [0.717301f32, -1.434602]), (true, [0.571_215_6, -1.142_431_2])] {
            let p = Var::new(&[1f32, -2.0], &Device::Cpu).unwrap();
            let mut opt = Sgd::new(vec![("p".into(), p.clone())], 0.1, 0.9, nesterov, 0.01).unwrap();
            for _ in 0..2 {
                let g = quad_grads(&p);
                opt.step(&g).unwrap();
            }
            let got = p.as_tensor().to_vec1::<f32>().unwrap();
            for (a, b) in got.iter().zip(want) {
                assert!((a - b).abs() < 1e-6, "nesterov={nesterov}: {a} vs {b}");
            }
        }
    }

    #[test]
    fn sgd_state_round_trip_continues_identically() {
        let run = |resume: bool| {
            let p = Var::new(&[1f32, -2.0, 0.5], &Device::Cpu).unwrap();
            let mut opt = Sgd::new(vec![("p".into(), p.clone())], 0.1, 0.9, false, 5e-4).unwrap();
            opt.step(&quad_grads(&p)).unwrap();
            if resume {
                let st = opt.state();
                opt = Sgd::new(vec![("p".into(), p.clone())], 0.1, 0.9, false, 5e-4).unwrap();
                opt.load_state(&st).unwrap();
            }
            opt.step(&quad_grads(&p)).unwrap();
            p.as_tensor().to_vec1::<f32>().unwrap()
        };
        assert_eq!(run(false), run(true));
    }

    // AdamW, p0 = 1, grad = p, lr 0.1, betas (0.9, 0.999), eps 1e-8, wd 0.1:
    //   step 1: p = 1·(1 - 0.01) = 0.99; m̂ = 1, v̂ = 1 -> p = 0.99 - 0.1·1/(1+1e-8) = 0.89
    #[test]
    fn adamw_first_step_by_hand() {
        let p = Var::new(&[1f32], &Device::Cpu).unwrap();
        let mut opt = AdamW::new(vec![("p".into(), p.clone())], 0.1, 0.9, 0.999, 1e-8, 0.1).unwrap();
        opt.step(&quad_grads(&p)).unwrap();
        let got = p.as_tensor().to_vec1::<f32>().unwrap()[0];
        assert!((got - 0.89).abs() < 1e-6, "{got}");
    }
}
