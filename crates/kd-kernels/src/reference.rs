//! The same functions composed from candle's own ops: the fallback off the CPU (or for non-f32
//! dtypes) and the yardstick the fast kernels are tested against.

use candle_core::{Result, Tensor, D};

/// 2-D convolution without bias. `x`: `(N, C, H, W)`, `w`: `(O, C, KH, KW)`.
pub fn conv2d(x: &Tensor, w: &Tensor, stride: usize, padding: usize) -> Result<Tensor> {
    x.conv2d(w, padding, stride, 1, 1)
}

/// Training-mode batch norm over `(N, C, H, W)`; returns `(y, batch_mean, batch_var_biased)`,
/// the statistics shaped `(C,)` and detached.
pub fn batch_norm_train(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
) -> Result<(Tensor, Tensor, Tensor)> {
    let c = x.dim(1)?;
    let xt = x.transpose(0, 1)?.flatten_from(1)?; // (C, N*H*W)
    let mean = xt.mean(D::Minus1)?;
    let centered = xt.broadcast_sub(&mean.unsqueeze(1)?)?;
    let var = centered.sqr()?.mean(D::Minus1)?;
    let inv_std = (var.clone() + eps)?.sqrt()?.recip()?;
    let shape = (1, c, 1, 1);
    let y = x
        .broadcast_sub(&mean.reshape(shape)?)?
        .broadcast_mul(&(inv_std * gamma)?.reshape(shape)?)?
        .broadcast_add(&beta.reshape(shape)?)?;
    Ok((y, mean.detach(), var.detach()))
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
    let c = x.dim(1)?;
    let shape = (1, c, 1, 1);
    let scale = ((running_var + eps)?.sqrt()?.recip()? * gamma)?;
    let shift = (beta - (running_mean * &scale)?)?;
    x.broadcast_mul(&scale.reshape(shape)?)?.broadcast_add(&shift.reshape(shape)?)
}
