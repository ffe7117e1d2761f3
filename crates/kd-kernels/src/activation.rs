//! ReLU and the residual `relu(a + b)` as single-pass CPU ops whose backward is one masked copy
//! (candle's own ReLU backward records four ops).
//!
//! The gradient mask is `y > 0`, as in PyTorch.

use crate::cpu::{f32_slice, par_map1, par_map2, with_f32_data};
use crate::simd::multiversion;
use crate::KernelError;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};

multiversion! {
    fn mask_chunk(d: &mut [f32], y: &[f32], g: &[f32]) {
        for ((d, &y), &g) in d.iter_mut().zip(y).zip(g) {
            *d = if y > 0.0 { g } else { 0.0 };
        }
    }
}

multiversion! {
    fn relu_chunk(y: &mut [f32], x: &[f32]) {
        for (y, &x) in y.iter_mut().zip(x) {
            *y = x.max(0.0);
        }
    }
}

multiversion! {
    fn add_relu_chunk(y: &mut [f32], a: &[f32], b: &[f32]) {
        for ((y, &a), &b) in y.iter_mut().zip(a).zip(b) {
            *y = (a + b).max(0.0);
        }
    }
}

fn masked_grad(op: &'static str, res: &Tensor, grad: &Tensor) -> Result<Tensor> {
    let dx = with_f32_data(op, "res", res, |y| {
        with_f32_data(op, "grad", grad, |g| Ok(par_map2(y, g, mask_chunk)))
    })?;
    Tensor::from_vec(dx, res.shape(), res.device())
}

pub(crate) struct ReluOp;

impl CustomOp1 for ReluOp {
    fn name(&self) -> &'static str {
        "kd-relu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(self.name(), "x", s, l)?;
        Ok((CpuStorage::F32(par_map1(x, relu_chunk)), l.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        if !arg.track_op() {
            return Ok(None);
        }
        masked_grad(self.name(), res, grad).map(Some)
    }
}

pub(crate) struct AddReluOp;

impl CustomOp2 for AddReluOp {
    fn name(&self) -> &'static str {
        "kd-add-relu"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        if l1.dims() != l2.dims() {
            return Err(KernelError::Shape {
                op: self.name(),
                msg: format!("a has shape {:?}, b has shape {:?}", l1.dims(), l2.dims()),
            }
            .into());
        }
        let a = f32_slice(self.name(), "a", s1, l1)?;
        let b = f32_slice(self.name(), "b", s2, l2)?;
        Ok((CpuStorage::F32(par_map2(a, b, add_relu_chunk)), l1.shape().clone()))
    }

    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        if !a.track_op() && !b.track_op() {
            return Ok((None, None));
        }
        let g = masked_grad(self.name(), res, grad)?;
        Ok((a.track_op().then(|| g.clone()), b.track_op().then_some(g)))
    }
}
