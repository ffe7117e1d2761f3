//! Tensor helpers shared by several methods, each matching the PyTorch function it replaces.

use candle_core::{bail, DType, Device, Result, Tensor};
use candle_nn::Init;
use kd_core::ModelOutput;

/// `eps` of `torch.nn.functional.normalize`.
const NORMALIZE_EPS: f64 = 1e-12;

/// `F.normalize(x, p=2, dim)`: `x / max(‖x‖₂, 1e-12)` along `dim`.
///
/// The norm is taken as `sqrt(max(‖x‖², eps²))`, equal in value; it keeps `sqrt`'s infinite slope
/// at 0 out of the graph, so a zero row (RKD's `e_i − e_i`) gets PyTorch's gradient, not NaN.
pub fn l2_normalize(x: &Tensor, dim: usize) -> Result<Tensor> {
    let norm = x.sqr()?.sum_keepdim(dim)?.maximum(NORMALIZE_EPS * NORMALIZE_EPS)?.sqrt()?;
    x.broadcast_div(&norm)
}

/// `F.adaptive_avg_pool2d(x, (out_h, out_w))` for shrinking `(B, C, H, W)` maps. An integer ratio
/// is a plain average pool; otherwise PyTorch's windows (`[⌊i·H/h⌋, ⌈(i+1)·H/h⌉)`, overlapping)
/// are applied as two averaging matrices.
pub fn adaptive_avg_pool2d(x: &Tensor, out_h: usize, out_w: usize) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    if (h, w) == (out_h, out_w) {
        return Ok(x.clone());
    }
    if out_h == 0 || out_w == 0 || out_h > h || out_w > w {
        bail!("adaptive_avg_pool2d pools down only: ({h}, {w}) -> ({out_h}, {out_w})")
    }
    if h % out_h == 0 && w % out_w == 0 {
        return x.avg_pool2d((h / out_h, w / out_w));
    }
    let rows = pooling_matrix(out_h, h, x.dtype(), x.device())?; // (out_h, H)
    let cols = pooling_matrix(out_w, w, x.dtype(), x.device())?.t()?.contiguous()?; // (W, out_w)
    rows.broadcast_matmul(&x.broadcast_matmul(&cols)?)
}

/// `(out, len)` matrix whose row `i` averages PyTorch's adaptive window `i`.
fn pooling_matrix(out: usize, len: usize, dtype: DType, device: &Device) -> Result<Tensor> {
    let mut m = vec![0f64; out * len];
    for i in 0..out {
        let start = i * len / out;
        let end = ((i + 1) * len).div_ceil(out);
        for j in start..end {
            m[i * len + j] = 1.0 / (end - start) as f64;
        }
    }
    Tensor::from_vec(m, (out, len), device)?.to_dtype(dtype)
}

/// RepDistiller's size matching of AT, VID and NST: the map with the larger side is average-pooled
/// to the smaller one. RepDistiller pools to the smaller *height* in both directions (square maps
/// assumed); pooling each side to the smaller of the two is the same on square maps and also
/// fits non-square ones.
pub fn pool_to_common(student: &Tensor, teacher: &Tensor) -> Result<(Tensor, Tensor)> {
    let (_, _, sh, sw) = student.dims4()?;
    let (_, _, th, tw) = teacher.dims4()?;
    let (h, w) = (sh.min(th), sw.min(tw));
    Ok((adaptive_avg_pool2d(student, h, w)?, adaptive_avg_pool2d(teacher, h, w)?))
}

/// Stage `i` of a model output, with an error naming the method when it is missing.
pub fn stage<'a>(method: &str, role: &str, output: &'a ModelOutput, i: usize) -> Result<&'a Tensor> {
    match output.stage_features.get(i) {
        Some(f) => Ok(f),
        None => bail!(
            "{method}: the {role} output has {} stage features, stage {i} is needed",
            output.stage_features.len()
        ),
    }
}

/// PyTorch's default initialisation of `nn.Linear`/`nn.Conv2d` weights and biases
/// (`kaiming_uniform_(a=√5)` and its bias rule): `U(−1/√fan_in, 1/√fan_in)`.
pub fn torch_default_init(fan_in: usize) -> Init {
    let bound = 1.0 / (fan_in as f64).sqrt();
    Init::Uniform { lo: -bound, up: bound }
}

/// The sum of per-stage scalar losses (Python's `sum(loss_group)`).
pub fn sum(method: &str, losses: Vec<Tensor>) -> Result<Tensor> {
    let mut it = losses.into_iter();
    let Some(first) = it.next() else { bail!("{method}: no stage to distil") };
    it.try_fold(first, |acc, l| acc + l)
}

/// The sum over stages `0..stages` of `stage_loss(student stage i, teacher stage i)`: the
/// per-stage methods (AT, NST, VID) pair the two models' stages one to one.
pub fn sum_over_stages(
    method: &str,
    stages: usize,
    student: &ModelOutput,
    teacher: &ModelOutput,
    mut stage_loss: impl FnMut(usize, &Tensor, &Tensor) -> Result<Tensor>,
) -> Result<Tensor> {
    let losses = (0..stages)
        .map(|i| stage_loss(i, stage(method, "student", student, i)?, stage(method, "teacher", teacher, i)?))
        .collect::<Result<Vec<_>>>()?;
    sum(method, losses)
}
