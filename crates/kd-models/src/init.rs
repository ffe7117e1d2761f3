//! Deterministic initialisation: a `VarBuilder` backend that creates missing variables in a
//! [`VarMap`] from a ChaCha stream keyed by (seed, variable name).
//!
//! candle's own `VarMap` backend draws from the device RNG, whose state depends on everything
//! drawn before; keying each tensor by its name makes a model's initial weights depend only on
//! the seed and the architecture, the same on every run and every device.

use candle_core::{DType, Device, Result, Shape, Tensor, Var};
use candle_nn::init::NormalOrUniform;
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder, VarMap};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// A [`VarBuilder`] over `varmap` whose new variables are drawn from `seed`.
pub fn seeded_var_builder(varmap: &VarMap, seed: u64, dtype: DType, device: &Device) -> VarBuilder<'static> {
    VarBuilder::from_backend(Box::new(SeededVarMap { varmap: varmap.clone(), seed }), dtype, device.clone())
}

/// Variables live in the shared `VarMap` (so optimisers and checkpoints see them); only the
/// values of newly created ones differ from candle's `VarMap` backend.
struct SeededVarMap {
    varmap: VarMap,
    seed: u64,
}

impl SimpleBackend for SeededVarMap {
    fn get(&self, shape: Shape, name: &str, init: Init, dtype: DType, dev: &Device) -> Result<Tensor> {
        let mut vars =
            self.varmap.data().lock().map_err(|_| candle_core::Error::Msg("VarMap lock poisoned".into()))?;
        if let Some(var) = vars.get(name) {
            if var.shape() != &shape {
                candle_core::bail!(
                    "variable `{name}` already exists with shape {:?}, requested {:?}",
                    var.shape(),
                    shape
                );
            }
            return Ok(var.as_tensor().clone());
        }
        let values = sample(init, &shape, &mut tensor_rng(self.seed, name));
        let tensor =
            Tensor::from_vec(values, shape, &crate::host_device())?.to_dtype(dtype)?.to_device(dev)?;
        let var = Var::from_tensor(&tensor)?;
        let out = var.as_tensor().clone();
        vars.insert(name.to_string(), var);
        Ok(out)
    }

    fn get_unchecked(&self, name: &str, _dtype: DType, _dev: &Device) -> Result<Tensor> {
        let vars =
            self.varmap.data().lock().map_err(|_| candle_core::Error::Msg("VarMap lock poisoned".into()))?;
        match vars.get(name) {
            Some(var) => Ok(var.as_tensor().clone()),
            None => candle_core::bail!("no variable `{name}` (its shape is needed to create it)"),
        }
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.varmap.data().lock().map(|vars| vars.contains_key(name)).unwrap_or(false)
    }
}

/// One independent ChaCha stream per tensor name.
fn tensor_rng(seed: u64, name: &str) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(fnv1a64(name.as_bytes()));
    rng
}

fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3))
}

/// Values for `init` as PyTorch's `torch.nn.init` defines them (same distributions, not the
/// same random numbers).
fn sample(init: Init, shape: &Shape, rng: &mut ChaCha8Rng) -> Vec<f32> {
    let n = shape.elem_count();
    match init {
        Init::Const(v) => vec![v as f32; n],
        Init::Uniform { lo, up } => uniform(n, lo, up, rng),
        Init::Randn { mean, stdev } => normal(n, mean, stdev, rng),
        Init::Kaiming { dist, fan, non_linearity } => {
            let fan = fan.for_shape(shape).max(1);
            let std = non_linearity.gain() / (fan as f64).sqrt();
            match dist {
                NormalOrUniform::Normal => normal(n, 0.0, std, rng),
                NormalOrUniform::Uniform => {
                    let bound = 3f64.sqrt() * std;
                    uniform(n, -bound, bound, rng)
                }
            }
        }
    }
}

fn uniform(n: usize, lo: f64, up: f64, rng: &mut ChaCha8Rng) -> Vec<f32> {
    (0..n).map(|_| (lo + (up - lo) * rng.random::<f64>()) as f32).collect()
}

/// Box-Muller, both outputs used.
fn normal(n: usize, mean: f64, std: f64, rng: &mut ChaCha8Rng) -> Vec<f32> {
    let mut out = Vec::with_capacity(n + 1);
    while out.len() < n {
        let u1 = 1.0 - rng.random::<f64>(); // (0, 1]: ln is finite
        let u2 = rng.random::<f64>();
        let r = (-2.0 * u1.ln()).sqrt();
        let theta = 2.0 * std::f64::consts::PI * u2;
        out.push((mean + std * r * theta.cos()) as f32);
        out.push((mean + std * r * theta.sin()) as f32);
    }
    out.truncate(n);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normal_has_requested_moments() {
        let v = normal(100_000, 1.0, 2.0, &mut tensor_rng(0, "x"));
        let mean = v.iter().map(|&x| x as f64).sum::<f64>() / v.len() as f64;
        let var = v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / v.len() as f64;
        assert!((mean - 1.0).abs() < 0.03, "mean {mean}");
        assert!((var.sqrt() - 2.0).abs() < 0.03, "std {}", var.sqrt());
    }

    #[test]
    fn streams_differ_by_name_and_repeat_by_seed() {
        let a = uniform(8, 0.0, 1.0, &mut tensor_rng(7, "a"));
        let a2 = uniform(8, 0.0, 1.0, &mut tensor_rng(7, "a"));
        let b = uniform(8, 0.0, 1.0, &mut tensor_rng(7, "b"));
        let a_other_seed = uniform(8, 0.0, 1.0, &mut tensor_rng(8, "a"));
        assert_eq!(a, a2);
        assert_ne!(a, b);
        assert_ne!(a, a_other_seed);
    }
}
