//! Small pieces the RepDistiller CIFAR families (WRN, VGG, MobileNetV2, ShuffleNetV2) share:
//! their initialisations and the input check.

use candle_core::{Result, Tensor};
use candle_nn::init::{FanInOut, NonLinearity, NormalOrUniform};
use candle_nn::{Init, Linear, VarBuilder};

/// RepDistiller's conv init `normal_(0, sqrt(2 / (k·k·out_channels)))`: kaiming normal, fan-out
/// (for a depthwise weight `(C, 1, k, k)` the fan-out is `C·k²`, as in the reference).
pub(crate) fn fan_out_normal() -> Init {
    Init::Kaiming { dist: NormalOrUniform::Normal, fan: FanInOut::FanOut, non_linearity: NonLinearity::ReLU }
}

/// PyTorch's default conv init (`kaiming_uniform_(a = sqrt(5))`): uniform `±1/sqrt(fan_in)`,
/// `fan_in = in_channels / groups · k²`.
pub(crate) fn torch_default_conv(fan_in: usize) -> Init {
    let bound = 1.0 / (fan_in.max(1) as f64).sqrt();
    Init::Uniform { lo: -bound, up: bound }
}

/// `nn.Linear` whose weight uses `weight_init` and whose bias is zero.
pub(crate) fn linear_zero_bias(
    in_dim: usize,
    out_dim: usize,
    weight_init: Init,
    vb: VarBuilder,
) -> Result<Linear> {
    let weight = vb.get_with_hints((out_dim, in_dim), "weight", weight_init)?;
    let bias = vb.get_with_hints(out_dim, "bias", Init::Const(0.0))?;
    Ok(Linear::new(weight, Some(bias)))
}

/// Fails with a message naming `arch` unless `input` is `(batch, 3, H, W)`.
pub(crate) fn check_rgb(arch: &str, input: &Tensor) -> Result<()> {
    match input.dims() {
        [_, 3, _, _] => Ok(()),
        dims => candle_core::bail!("{arch} expects (batch, 3, H, W) images, got shape {dims:?}"),
    }
}
