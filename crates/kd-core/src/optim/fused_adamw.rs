//! AdamW's update on the CPU as three in-place sweeps (first moment, second moment, parameter)
//! instead of eleven candle ops, each of which sweeps the whole tensor into a fresh allocation.
//! For the GLUE students (a 30,522 × 384 embedding table) the composed update was a third of a
//! training step (`cargo bench -p kd-core --bench optimizer_step`).
//!
//! Each element goes through the composed ops' f32 arithmetic in the same order, including
//! candle's `affine` (`v · mul + add`, with `+ 0.0` where the composed code scales, which turns
//! −0 into +0), so the values are bit-identical to [`super::AdamW`]'s composed path; the test
//! below checks that over several steps with and without weight decay.

use candle_core::{CpuStorage, InplaceOp2, InplaceOp3, Layout, Result, Tensor};
use rayon::prelude::*;

/// Elements per parallel task: large enough that a task outweighs its scheduling.
const CHUNK: usize = 1 << 15;

/// The scalars of one step, each rounded to f32 as candle's `affine` rounds them.
#[derive(Clone, Copy, Debug)]
pub(super) struct Scalars {
    pub beta1: f32,
    pub one_minus_beta1: f32,
    pub beta2: f32,
    pub one_minus_beta2: f32,
    /// `1 − lr · wd` when the parameter decays.
    pub decay: Option<f32>,
    /// `1 / sqrt(1 − β2^t)`.
    pub inv_bias_correction2_sqrt: f32,
    pub eps: f32,
    /// `lr / (1 − β1^t)`.
    pub step_size: f32,
}

impl Scalars {
    /// Step `t`'s scalars, computed in f64 and rounded to f32 as the composed path's `affine`
    /// calls round them; `decay` is `lr · wd` for a parameter that decays.
    pub fn for_step(lr: f64, beta1: f64, beta2: f64, eps: f64, decay: Option<f64>, t: u64) -> Self {
        let t = i32::try_from(t).unwrap_or(i32::MAX);
        let bias_correction1 = 1.0 - beta1.powi(t);
        let bias_correction2_sqrt = (1.0 - beta2.powi(t)).sqrt();
        Self {
            beta1: beta1 as f32,
            one_minus_beta1: (1.0 - beta1) as f32,
            beta2: beta2 as f32,
            one_minus_beta2: (1.0 - beta2) as f32,
            decay: decay.map(|lr_wd| (1.0 - lr_wd) as f32),
            inv_bias_correction2_sqrt: (1.0 / bias_correction2_sqrt) as f32,
            eps: eps as f32,
            step_size: (lr / bias_correction1) as f32,
        }
    }
}

/// Whether the fused path can update `tensors` in place: all f32, contiguous, on the CPU.
pub(super) fn applies(tensors: &[&Tensor]) -> bool {
    tensors.iter().all(|t| t.device().is_cpu() && t.dtype() == candle_core::DType::F32 && t.is_contiguous())
}

/// `m ← β1·m + (1−β1)·g`, `v ← β2·v + (1−β2)·g²`, then `p ← decay(p) − step·m / (√v·k + ε)`,
/// all in place. `g` must be contiguous f32 on the CPU, as [`applies`] checks.
pub(super) fn step(p: &Tensor, g: &Tensor, m: &Tensor, v: &Tensor, s: Scalars) -> Result<()> {
    m.inplace_op2(g, &MomentUpdate::first(s))?;
    v.inplace_op2(g, &MomentUpdate::second(s))?;
    p.inplace_op3(m, v, &ParamUpdate(s))
}

fn slice<'a>(storage: &'a CpuStorage, layout: &Layout, what: &str) -> Result<&'a [f32]> {
    let Some((start, end)) = layout.contiguous_offsets() else {
        candle_core::bail!("fused AdamW: {what} is not contiguous")
    };
    Ok(&storage.as_slice::<f32>()?[start..end])
}

fn slice_mut<'a>(storage: &'a mut CpuStorage, layout: &Layout, what: &str) -> Result<&'a mut [f32]> {
    let Some((start, end)) = layout.contiguous_offsets() else {
        candle_core::bail!("fused AdamW: {what} is not contiguous")
    };
    match storage {
        CpuStorage::F32(values) => Ok(&mut values[start..end]),
        _ => candle_core::bail!("fused AdamW: {what} is not f32"),
    }
}

fn same_len(what: &str, a: usize, b: usize) -> Result<()> {
    if a != b {
        candle_core::bail!("fused AdamW: {what} has {b} elements, the parameter {a}")
    }
    Ok(())
}

/// A moment's update `μ ← β·μ + (1−β)·x`, with `x = g` (first moment) or `g²` (second).
struct MomentUpdate {
    name: &'static str,
    beta: f32,
    one_minus_beta: f32,
    squared: bool,
}

impl MomentUpdate {
    fn first(s: Scalars) -> Self {
        Self { name: "exp_avg", beta: s.beta1, one_minus_beta: s.one_minus_beta1, squared: false }
    }

    fn second(s: Scalars) -> Self {
        Self { name: "exp_avg_sq", beta: s.beta2, one_minus_beta: s.one_minus_beta2, squared: true }
    }
}

impl InplaceOp2 for MomentUpdate {
    fn name(&self) -> &'static str {
        "adamw-moment"
    }

    fn cpu_fwd(&self, dst: &mut CpuStorage, dst_l: &Layout, g: &CpuStorage, g_l: &Layout) -> Result<()> {
        let (b, c, squared) = (self.beta, self.one_minus_beta, self.squared);
        let moment = slice_mut(dst, dst_l, self.name)?;
        let g = slice(g, g_l, "the gradient")?;
        same_len("the gradient", moment.len(), g.len())?;
        moment.par_chunks_mut(CHUNK).zip(g.par_chunks(CHUNK)).for_each(|(moment, g)| {
            for (mu, &g) in moment.iter_mut().zip(g) {
                // (μ * β) + (x * (1 − β)), each an affine with add 0; x = g.sqr() is g * g.
                let x = if squared { g * g } else { g };
                *mu = (*mu * b + 0.0) + (x * c + 0.0);
            }
        });
        Ok(())
    }
}

struct ParamUpdate(Scalars);

impl InplaceOp3 for ParamUpdate {
    fn name(&self) -> &'static str {
        "adamw-param-update"
    }

    fn cpu_fwd(
        &self,
        dst: &mut CpuStorage,
        dst_l: &Layout,
        m: &CpuStorage,
        m_l: &Layout,
        v: &CpuStorage,
        v_l: &Layout,
    ) -> Result<()> {
        let s = self.0;
        let p = slice_mut(dst, dst_l, "the parameter")?;
        let m = slice(m, m_l, "exp_avg")?;
        let v = slice(v, v_l, "exp_avg_sq")?;
        same_len("exp_avg", p.len(), m.len())?;
        same_len("exp_avg_sq", p.len(), v.len())?;
        p.par_chunks_mut(CHUNK).zip(m.par_chunks(CHUNK).zip(v.par_chunks(CHUNK))).for_each(|(p, (m, v))| {
            for ((p, &m), &v) in p.iter_mut().zip(m).zip(v) {
                let decayed = match s.decay {
                    Some(d) => *p * d + 0.0,
                    None => *p,
                };
                let denom = v.sqrt() * s.inv_bias_correction2_sqrt + s.eps;
                *p = decayed - ((m / denom) * s.step_size + 0.0);
            }
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor, Var};

    use super::super::{AdamW, Optimizer};

    /// Parameters and gradients with signed zeros, tiny and large values, over two chunks.
    fn values(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| {
                let x = (i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed.wrapping_mul(40_503));
                match x % 11 {
                    0 => 0.0,
                    1 => -0.0,
                    2 => 1e-30,
                    3 => -3e4,
                    _ => (x % 2_001) as f32 / 1_000.0 - 1.0,
                }
            })
            .collect()
    }

    /// Exact bits (f32 and the f64 step counts both widen to f64 losslessly, signs of zero kept).
    fn bits(t: &Tensor) -> Vec<u64> {
        let t = t.flatten_all().unwrap().to_dtype(candle_core::DType::F64).unwrap();
        t.to_vec1::<f64>().unwrap().iter().map(|v| v.to_bits()).collect()
    }

    /// Two copies of the same named parameters (one excluded from weight decay).
    fn params() -> Vec<(String, Var)> {
        let dev = Device::Cpu;
        let shapes: [(&str, &[usize]); 3] =
            [("w", &[70_001]), ("b.bias", &[7]), ("LayerNorm.weight", &[3, 5])];
        shapes
            .iter()
            .enumerate()
            .map(|(k, (name, shape))| {
                let n = shape.iter().product();
                let t = Tensor::from_vec(values(n, k as u32), *shape, &dev).unwrap();
                (name.to_string(), Var::from_tensor(&t).unwrap())
            })
            .collect()
    }

    #[test]
    fn fused_update_equals_the_composed_ops_bit_for_bit() {
        for weight_decay in [0.0, 0.01] {
            let (a, b) = (params(), params());
            let exclude = crate::optim::is_bias_or_layer_norm;
            let fused = AdamW::new(a.clone(), 3e-3, 0.9, 0.999, 1e-8, weight_decay).unwrap();
            let mut fused = fused.without_weight_decay_for(exclude);
            let composed = AdamW::new(b.clone(), 3e-3, 0.9, 0.999, 1e-8, weight_decay).unwrap();
            let mut composed = composed.without_weight_decay_for(exclude).without_fused_update();
            for step in 0..4u32 {
                // The same gradient values for both, a different set each step.
                let grads = |ps: &[(String, Var)]| {
                    let mut loss = Tensor::new(0f32, &Device::Cpu).unwrap();
                    for (k, (_, var)) in ps.iter().enumerate() {
                        let g = values(var.elem_count(), 100 + 10 * step + k as u32);
                        let g = Tensor::from_vec(g, var.dims(), &Device::Cpu).unwrap();
                        loss = (loss + (var.as_tensor() * g).unwrap().sum_all().unwrap()).unwrap();
                    }
                    loss.backward().unwrap()
                };
                fused.step(&grads(&a)).unwrap();
                composed.step(&grads(&b)).unwrap();
                for ((name, x), (_, y)) in a.iter().zip(&b) {
                    assert_eq!(
                        bits(x.as_tensor()),
                        bits(y.as_tensor()),
                        "{name} after step {step}, wd {weight_decay}"
                    );
                }
                for ((n1, x), (n2, y)) in fused.state().iter().zip(&composed.state()) {
                    assert_eq!(n1, n2);
                    assert_eq!(bits(x), bits(y), "{n1} after step {step}, wd {weight_decay}");
                }
            }
        }
    }

    #[test]
    fn exported_state_does_not_move_with_later_steps() {
        let ps = params();
        let mut opt = AdamW::new(ps.clone(), 1e-2, 0.9, 0.999, 1e-8, 0.0).unwrap();
        let grads = || {
            let mut loss = Tensor::new(0f32, &Device::Cpu).unwrap();
            for (_, var) in &ps {
                loss = (loss + var.as_tensor().sqr().unwrap().sum_all().unwrap()).unwrap();
            }
            loss.backward().unwrap()
        };
        opt.step(&grads()).unwrap();
        opt.step(&grads()).unwrap();
        let saved: Vec<Vec<u64>> = opt.state().iter().map(|(_, t)| bits(t)).collect();
        let kept = opt.state();
        opt.step(&grads()).unwrap();
        let after: Vec<Vec<u64>> = kept.iter().map(|(_, t)| bits(t)).collect();
        assert_eq!(saved, after, "state() must be a snapshot, not a view of the moments");
    }
}
