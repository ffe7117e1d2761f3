//! `x + b` for a per-channel bias `b (C,)` on `(N, C, H, W)`, the bias of a biased conv.
//!
//! `broadcast_add` would do, but its backward sums the gradient over `N, H, W` with candle's
//! strided reduction, which took 14% of a VGG-8 training step; this op's backward sums each
//! channel's planes directly, in parallel over channels.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Layout, Result, Shape, Tensor};
use kd_kernels::Kernels;
use rayon::prelude::*;

fn f32_data<'a>(what: &str, s: &'a CpuStorage, l: &Layout) -> Result<&'a [f32]> {
    let CpuStorage::F32(data) = s else { candle_core::bail!("channel bias: `{what}` must be f32") };
    match l.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => candle_core::bail!("channel bias: `{what}` must be contiguous"),
    }
}

struct AddBiasOp;

impl CustomOp2 for AddBiasOp {
    fn name(&self) -> &'static str {
        "add-channel-bias"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, b) = (f32_data("x", s1, l1)?, f32_data("b", s2, l2)?);
        let &[_, c, h, w] = l1.dims() else { candle_core::bail!("channel bias: x must be (N, C, H, W)") };
        if b.len() != c {
            candle_core::bail!("channel bias: {} values for {c} channels", b.len())
        }
        let plane = (h * w).max(1);
        let mut y = x.to_vec();
        y.par_chunks_mut(plane).enumerate().for_each(|(p, y)| {
            let bias = b[p % c];
            y.iter_mut().for_each(|v| *v += bias);
        });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let db = grad.contiguous()?.apply_op1_no_bwd(&ChannelSumOp { channels: b.elem_count() })?;
        Ok((Some(grad.clone()), Some(db)))
    }
}

/// `(N, C, H, W) -> (C,)`, summed in f64 per channel.
struct ChannelSumOp {
    channels: usize,
}

impl CustomOp1 for ChannelSumOp {
    fn name(&self) -> &'static str {
        "channel-sum"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = f32_data("grad", s, l)?;
        let &[n, c, h, w] = l.dims() else { candle_core::bail!("channel sum: expected (N, C, H, W)") };
        if c != self.channels {
            candle_core::bail!("channel sum: {c} channels, bias has {}", self.channels)
        }
        let plane = h * w;
        let sums: Vec<f32> = (0..c)
            .into_par_iter()
            .map(|ch| {
                (0..n)
                    .map(|img| {
                        let start = (img * c + ch) * plane;
                        g[start..start + plane].iter().map(|&v| v as f64).sum::<f64>()
                    })
                    .sum::<f64>() as f32
            })
            .collect();
        Ok((CpuStorage::F32(sums), Shape::from(c)))
    }
}

/// `x + b[c]` over `(N, C, H, W)`; candle's `broadcast_add` off CPU f32 or with
/// [`Kernels::Generic`].
pub fn add_channel_bias(kernels: Kernels, x: &Tensor, b: &Tensor) -> Result<Tensor> {
    let fast = kernels == Kernels::Fast
        && x.device().is_cpu()
        && b.device().is_cpu()
        && x.dtype() == DType::F32
        && b.dtype() == DType::F32;
    if !fast {
        return x.broadcast_add(&b.reshape(((), 1, 1))?);
    }
    x.contiguous()?.apply_op2(&b.contiguous()?, AddBiasOp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn matches_broadcast_add_and_its_gradients() {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (3, 4, 5, 6), &dev).unwrap()).unwrap();
        let b = Var::from_tensor(&Tensor::randn(0f32, 1.0, 4, &dev).unwrap()).unwrap();
        let probe = Tensor::randn(0f32, 1.0, (3, 4, 5, 6), &dev).unwrap();
        let fast = add_channel_bias(Kernels::Fast, &x, &b).unwrap();
        let reference = x.broadcast_add(&b.reshape((4, 1, 1)).unwrap()).unwrap();
        let diff =
            (&fast - &reference).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert_eq!(diff, 0.0);
        let gf = (&fast * &probe).unwrap().sum_all().unwrap().backward().unwrap();
        let gr = (&reference * &probe).unwrap().sum_all().unwrap().backward().unwrap();
        for v in [&x, &b] {
            let a = gf.get(v.as_tensor()).unwrap();
            let r = gr.get(v.as_tensor()).unwrap();
            let diff = (a - r).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(diff < 1e-4, "{diff}");
        }
        assert!(add_channel_bias(Kernels::Fast, &x, &Tensor::zeros(3, DType::F32, &dev).unwrap()).is_err());
    }
}
