//! ReviewKD: knowledge review (Chen, Liu, Zhao & Jia, "Distilling Knowledge via Knowledge
//! Review", CVPR 2021), as the authors' CIFAR-100 code implements it
//! (dvlab-research/ReviewKD `CIFAR-100/model/reviewkd.py` `ABF`, `ReviewKD`, `hcl`;
//! `CIFAR-100/train.py` loss weighting and warm-up).
//!
//! The student's features are fused deepest first by attention-based fusion modules ([`Abf`]):
//! each stage's feature, projected to `mid` channels, is blended with the (upsampled) fused
//! result of the stage below it by a learned two-channel attention map, then mapped to the
//! teacher's width and size. The hierarchical context loss ([`hcl`]) compares every fused map
//! with the teacher's feature of the same level by MSE at full resolution and after adaptive
//! average pooling to 4×4, 2×2, 1×1 (weights 1, ½, ¼, ⅛, normalised), summed over levels.
//!
//! Features (from [`kd_core::model::ModelOutput`]): the student's `stage_features` (shallowest
//! first, `(B, C, H, W)`) followed by its `embedding` as a `(B, D, 1, 1)` map — the reference's
//! `feats[1:]` + pooled `f4` of a CIFAR ResNet (the stem output `f0` is not used) — and the
//! teacher's features of the same levels. The reference takes the teacher's stage features
//! *before* the last ReLU of each stage (`teacher(x, is_feat=True, preact=True)`) and the
//! student's after it; kd-bench's `ModelOutput::stage_features` are post-ReLU, so
//! [`ReviewKd::loss`] on two `ModelOutput`s differs from the reference there; pass pre-ReLU
//! teacher maps to [`ReviewKd::loss_from_features`] for the reference's exact inputs.
//!
//! The loss is `weight · min(1, epoch / warmup_epochs) · hcl`, `epoch` counted from 0 as in
//! `train.py` (so the first epoch has no ReviewKD term). mdistiller's `ReviewKD.py` is the same
//! ABF and HCL code, but its epochs count from 1 (first-epoch factor 1/20 instead of 0), its
//! default weight is 1.0 with 5.0 in its `reviewkd.yaml` (resnet32x4 → resnet8x4), it can feed
//! the student's pre-ReLU features (`STU_PREACT`, default off) and has a `MAX_MID_CHANNEL` key
//! it never reads (the 512 cap is hard-coded in both).
//!
//! ABFs contain batch norms: in training mode they normalise with batch statistics and update
//! running statistics (PyTorch semantics, momentum 0.1, eps 1e-5). The running statistics are
//! state, not parameters: variables updated in place ([`ReviewKd::buffers`], for a pipeline to
//! checkpoint and restore), exported as copies by [`ReviewKd::state`].

use std::collections::HashMap;

use candle_core::{Module, Result, Tensor, Var};
use candle_nn::{Conv2d, Conv2dConfig, Init, VarBuilder};
use kd_core::model::{Mode, ModelOutput};
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum ReviewKdError {
    #[error("[distill] review_kd: {0}")]
    Config(String),
    #[error("review_kd state: {0}")]
    State(String),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// ReviewKD hyper-parameters; defaults are `CIFAR-100/train.py`'s argparse defaults.
/// (Its `script/reviewKD.sh` uses weight 0.6 for resnet56 → resnet20, 1.0 for resnet110 →
/// resnet32, 5.0 for WRN and resnet32x4 teachers, 8.0 for ShuffleNetV2.)
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReviewKdConfig {
    /// Weight of the HCL term (`--kd-loss-weight`).
    pub weight: f64,
    /// Epochs over which the weight ramps up linearly from 0 (`--kd-warm-up`); 0 = none.
    pub warmup_epochs: f64,
}

impl Default for ReviewKdConfig {
    fn default() -> Self {
        Self { weight: 1.0, warmup_epochs: 20.0 }
    }
}

impl ReviewKdConfig {
    /// Parses a recipe's `[distill]` table: unknown keys are refused by name, values checked.
    pub fn from_table(table: &toml::Table) -> std::result::Result<Self, ReviewKdError> {
        let cfg: ReviewKdConfig = toml::Value::Table(table.clone())
            .try_into()
            .map_err(|e: toml::de::Error| ReviewKdError::Config(e.message().to_string()))?;
        if !(cfg.weight.is_finite() && cfg.weight >= 0.0) {
            return Err(ReviewKdError::Config(format!("weight must be >= 0, got {}", cfg.weight)));
        }
        if !(cfg.warmup_epochs.is_finite() && cfg.warmup_epochs >= 0.0) {
            return Err(ReviewKdError::Config(format!(
                "warmup_epochs must be >= 0, got {}",
                cfg.warmup_epochs
            )));
        }
        Ok(cfg)
    }

    /// `min(1, epoch / warmup_epochs)`, epochs counted from 0.
    pub fn warmup_factor(&self, epoch: usize) -> f64 {
        if self.warmup_epochs == 0.0 {
            1.0
        } else {
            (epoch as f64 / self.warmup_epochs).min(1.0)
        }
    }
}

/// `nn.BatchNorm2d` with PyTorch's training semantics: batch statistics (biased variance) to
/// normalise, running statistics (variables, updated in place) with momentum 0.1 and the
/// unbiased variance.
#[derive(Debug)]
struct BatchNorm2d {
    weight: Tensor,
    bias: Tensor,
    running_mean: Var,
    running_var: Var,
}

impl BatchNorm2d {
    const EPS: f64 = 1e-5;
    const MOMENTUM: f64 = 0.1;

    fn new(channels: usize, vb: VarBuilder) -> Result<Self> {
        let weight = vb.get_with_hints(channels, "weight", Init::Const(1.0))?;
        let bias = vb.get_with_hints(channels, "bias", Init::Const(0.0))?;
        let running_mean = Var::zeros(channels, vb.dtype(), vb.device())?;
        let running_var = Var::ones(channels, vb.dtype(), vb.device())?;
        Ok(Self { weight, bias, running_mean, running_var })
    }

    fn forward(&mut self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        let c = self.weight.dims()[0];
        let per_channel = |t: &Tensor| t.reshape((1, c, 1, 1));
        let (mean, var) = if mode.is_train() {
            let n = x.elem_count() / c;
            if n < 2 {
                candle_core::bail!(
                    "ReviewKD batch norm needs more than one value per channel in training, got {:?}",
                    x.dims()
                );
            }
            let mean = x.mean_keepdim((0, 2, 3))?;
            let var = x.broadcast_sub(&mean)?.sqr()?.mean_keepdim((0, 2, 3))?;
            let m = Self::MOMENTUM;
            let running_mean = (self.running_mean.detach().affine(1.0 - m, 0.0)?
                + mean.detach().flatten_all()?.affine(m, 0.0)?)?;
            self.running_mean.set(&running_mean)?;
            let unbiased = n as f64 / (n as f64 - 1.0);
            let running_var = (self.running_var.detach().affine(1.0 - m, 0.0)?
                + var.detach().flatten_all()?.affine(m * unbiased, 0.0)?)?;
            self.running_var.set(&running_var)?;
            (mean, var)
        } else {
            // Copies: a later in-place update must not change what this forward read.
            (
                per_channel(&self.running_mean.detach().copy()?)?,
                per_channel(&self.running_var.detach().copy()?)?,
            )
        };
        let x_hat = x.broadcast_sub(&mean)?.broadcast_div(&(var + Self::EPS)?.sqrt()?)?;
        x_hat.broadcast_mul(&per_channel(&self.weight)?)?.broadcast_add(&per_channel(&self.bias)?)
    }
}

/// A convolution weight initialised with `kaiming_uniform_(a = 1)`: `U(±sqrt(3 / fan_in))`.
fn kaiming_a1_conv(in_c: usize, out_c: usize, k: usize, padding: usize, vb: VarBuilder) -> Result<Conv2d> {
    let bound = (3.0 / (in_c * k * k) as f64).sqrt();
    let w = vb.get_with_hints((out_c, in_c, k, k), "weight", Init::Uniform { lo: -bound, up: bound })?;
    Ok(Conv2d::new(w, None, Conv2dConfig { padding, ..Default::default() }))
}

/// `ABF`: attention-based fusion of one stage's student feature with the fused result of the
/// stage below it. Parameters (names as the reference's state dict): `conv1.0.weight` (1×1,
/// `in → mid`), `conv1.1.*` (BN), `conv2.0.weight` (3×3, `mid → out`), `conv2.1.*` (BN) and,
/// except for the deepest level, `att_conv.0.{weight,bias}` (1×1, `2·mid → 2`, sigmoid).
#[derive(Debug)]
pub struct Abf {
    conv1: Conv2d,
    bn1: BatchNorm2d,
    conv2: Conv2d,
    bn2: BatchNorm2d,
    att_conv: Option<Conv2d>,
}

impl Abf {
    pub fn new(
        in_channels: usize,
        mid_channels: usize,
        out_channels: usize,
        fuse: bool,
        vb: VarBuilder,
    ) -> Result<Self> {
        let conv1 = kaiming_a1_conv(in_channels, mid_channels, 1, 0, vb.pp("conv1.0"))?;
        let bn1 = BatchNorm2d::new(mid_channels, vb.pp("conv1.1"))?;
        let conv2 = kaiming_a1_conv(mid_channels, out_channels, 3, 1, vb.pp("conv2.0"))?;
        let bn2 = BatchNorm2d::new(out_channels, vb.pp("conv2.1"))?;
        let att_conv = if fuse {
            // nn.Conv2d's default init: U(±1/sqrt(fan_in)) for weight and bias.
            let vb = vb.pp("att_conv.0");
            let bound = 1.0 / ((2 * mid_channels) as f64).sqrt();
            let init = Init::Uniform { lo: -bound, up: bound };
            let w = vb.get_with_hints((2, 2 * mid_channels, 1, 1), "weight", init)?;
            let b = vb.get_with_hints(2, "bias", init)?;
            Some(Conv2d::new(w, Some(b), Conv2dConfig::default()))
        } else {
            None
        };
        Ok(Self { conv1, bn1, conv2, bn2, att_conv })
    }

    /// `ABF.forward(x, y, shape, out_shape)`: returns `(output, residual)` — the output at
    /// `out_hw` with the teacher's width, and the fused `mid`-channel map handed to the next
    /// (shallower) level. `residual` is the deeper level's, `None` for the deepest.
    pub fn forward(
        &mut self,
        x: &Tensor,
        residual: Option<&Tensor>,
        out_hw: (usize, usize),
        mode: Mode,
    ) -> Result<(Tensor, Tensor)> {
        let (_, _, h, w) = x.dims4()?;
        let mut x = self.bn1.forward(&self.conv1.forward(x)?, mode)?;
        if let Some(att_conv) = &self.att_conv {
            let Some(y) = residual else {
                candle_core::bail!("ReviewKD: a fusing ABF needs the deeper level's residual")
            };
            let y = upsample_to(y, (h, w))?;
            let z = candle_nn::ops::sigmoid(&att_conv.forward(&Tensor::cat(&[&x, &y], 1)?)?)?;
            x = (x.broadcast_mul(&z.narrow(1, 0, 1)?)? + y.broadcast_mul(&z.narrow(1, 1, 1)?)?)?;
        }
        let x = upsample_to(&x, out_hw)?;
        let out = self.bn2.forward(&self.conv2.forward(&x)?, mode)?;
        Ok((out, x))
    }

    fn batch_norms(&self) -> [(&'static str, &BatchNorm2d); 2] {
        [("conv1.1", &self.bn1), ("conv2.1", &self.bn2)]
    }

    fn batch_norms_mut(&mut self) -> [(&'static str, &mut BatchNorm2d); 2] {
        [("conv1.1", &mut self.bn1), ("conv2.1", &mut self.bn2)]
    }
}

/// `F.interpolate(mode="nearest")` to `(h, w)`; the identity when already that size.
///
/// Integer factors are a broadcast (each pixel repeated `s×s` times), not
/// `Tensor::upsample_nearest2d`: candle 0.11.1's backward of that op *overwrites* the input's
/// gradient instead of adding to it, which is wrong here because the fused map feeds both the
/// next level's upsampling and this level's `conv2`.
fn upsample_to(x: &Tensor, (h, w): (usize, usize)) -> Result<Tensor> {
    let (b, c, xh, xw) = x.dims4()?;
    if (xh, xw) == (h, w) {
        Ok(x.clone())
    } else if h % xh == 0 && w % xw == 0 {
        let (sh, sw) = (h / xh, w / xw);
        x.reshape((b, c, xh, 1, xw, 1))?.broadcast_as((b, c, xh, sh, xw, sw))?.reshape((b, c, h, w))
    } else {
        x.upsample_nearest2d(h, w)
    }
}

/// `F.adaptive_avg_pool2d(x, (l, l))`: PyTorch's bins `[⌊i·H/l⌋, ⌈(i+1)·H/l⌉)`.
pub fn adaptive_avg_pool2d(x: &Tensor, l: usize) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    if h % l == 0 && w % l == 0 {
        return x.avg_pool2d((h / l, w / l));
    }
    let bins = |n: usize, i: usize| (i * n / l, ((i + 1) * n).div_ceil(l));
    let mut rows = Vec::with_capacity(l);
    for i in 0..l {
        let (h0, h1) = bins(h, i);
        let mut cols = Vec::with_capacity(l);
        for j in 0..l {
            let (w0, w1) = bins(w, j);
            cols.push(x.narrow(2, h0, h1 - h0)?.narrow(3, w0, w1 - w0)?.mean_keepdim((2, 3))?);
        }
        rows.push(Tensor::cat(&cols, 3)?);
    }
    Tensor::cat(&rows, 2)
}

/// `hcl`: the hierarchical context loss, summed over levels. For each level (sizes from the
/// student map's height `h`): `(mse + Σ_{l ∈ {4,2,1}, l < h} 2^-k · mse(pool_l)) / (1 + Σ 2^-k)`.
pub fn hcl(student: &[Tensor], teacher: &[Tensor]) -> Result<Tensor> {
    if student.len() != teacher.len() || student.is_empty() {
        candle_core::bail!("ReviewKD hcl: {} student and {} teacher levels", student.len(), teacher.len());
    }
    let mse = |a: &Tensor, b: &Tensor| (a - b)?.sqr()?.mean_all();
    let mut total: Option<Tensor> = None;
    for (fs, ft) in student.iter().zip(teacher) {
        if fs.dims() != ft.dims() {
            candle_core::bail!(
                "ReviewKD hcl: fused student map {:?} against teacher map {:?}",
                fs.dims(),
                ft.dims()
            );
        }
        let h = fs.dims4()?.2;
        let mut loss = mse(fs, ft)?;
        let (mut cnt, mut tot) = (1.0, 1.0);
        for l in [4usize, 2, 1] {
            if l >= h {
                continue;
            }
            cnt /= 2.0;
            loss = (loss + (mse(&adaptive_avg_pool2d(fs, l)?, &adaptive_avg_pool2d(ft, l)?)? * cnt)?)?;
            tot += cnt;
        }
        let loss = (loss / tot)?;
        total = Some(match total {
            None => loss,
            Some(t) => (t + loss)?,
        });
    }
    Ok(total.expect("at least one level"))
}

/// ReviewKD's fusion modules (deepest first, as the reference's `self.abfs`) and its config.
#[derive(Debug)]
pub struct ReviewKd {
    config: ReviewKdConfig,
    abfs: Vec<Abf>,
    in_channels: Vec<usize>,
}

impl ReviewKd {
    /// `student_channels` / `teacher_channels`: the channels of each level, shallowest first,
    /// the embedding width last (the reference's `in_channels` / `out_channels`, e.g.
    /// `[16, 32, 64, 64]` for resnet20 ← resnet56). `mid = min(512, student embedding width)`.
    /// Parameters under `vb` as `abfs.{k}.*`, `k = 0` the deepest level.
    pub fn new(
        config: &ReviewKdConfig,
        student_channels: &[usize],
        teacher_channels: &[usize],
        vb: VarBuilder,
    ) -> std::result::Result<Self, ReviewKdError> {
        if student_channels.len() != teacher_channels.len() || student_channels.len() < 2 {
            return Err(ReviewKdError::Config(format!(
                "student levels {student_channels:?} and teacher levels {teacher_channels:?} must pair up \
                 (at least one stage plus the embedding)"
            )));
        }
        let levels = student_channels.len();
        let mid = student_channels[levels - 1].min(512);
        let mut abfs = Vec::with_capacity(levels);
        for k in 0..levels {
            let level = levels - 1 - k;
            abfs.push(Abf::new(
                student_channels[level],
                mid,
                teacher_channels[level],
                level < levels - 1,
                vb.pp("abfs").pp(k),
            )?);
        }
        Ok(Self { config: config.clone(), abfs, in_channels: student_channels.to_vec() })
    }

    pub fn config(&self) -> &ReviewKdConfig {
        &self.config
    }

    /// `ReviewKD.forward`'s fusion: `student` levels shallowest first (the last `(B, D, 1, 1)`),
    /// outputs at `out_sizes` (the teacher's `(H, W)` per level), shallowest first.
    pub fn fuse(
        &mut self,
        student: &[Tensor],
        out_sizes: &[(usize, usize)],
        mode: Mode,
    ) -> Result<Vec<Tensor>> {
        let levels = self.abfs.len();
        if student.len() != levels || out_sizes.len() != levels {
            candle_core::bail!(
                "ReviewKD was built for {levels} levels, got {} student maps and {} teacher sizes",
                student.len(),
                out_sizes.len()
            );
        }
        for (level, (f, &c)) in student.iter().zip(&self.in_channels).enumerate() {
            if f.rank() != 4 || f.dims()[1] != c {
                candle_core::bail!(
                    "ReviewKD level {level}: student map {:?}, expected (B, {c}, H, W)",
                    f.dims()
                );
            }
        }
        let mut results = Vec::with_capacity(levels);
        let mut residual: Option<Tensor> = None;
        for (k, abf) in self.abfs.iter_mut().enumerate() {
            let level = levels - 1 - k;
            let (out, res) = abf.forward(&student[level], residual.as_ref(), out_sizes[level], mode)?;
            results.push(out);
            residual = Some(res);
        }
        results.reverse();
        Ok(results)
    }

    /// The weighted ReviewKD loss on explicit feature lists, shallowest first with the pooled
    /// embedding last as `(B, D, 1, 1)` (see the module docs for which teacher maps the
    /// reference uses).
    pub fn loss_from_features(
        &mut self,
        student: &[Tensor],
        teacher: &[Tensor],
        epoch: usize,
        mode: Mode,
    ) -> Result<Tensor> {
        let sizes =
            teacher.iter().map(|t| t.dims4().map(|(_, _, h, w)| (h, w))).collect::<Result<Vec<_>>>()?;
        let fused = self.fuse(student, &sizes, mode)?;
        hcl(&fused, teacher)? * (self.config.weight * self.config.warmup_factor(epoch))
    }

    /// The weighted loss on two model outputs: `stage_features` then `embedding` of each.
    pub fn loss(&mut self, student: &ModelOutput, teacher: &ModelOutput, epoch: usize) -> Result<Tensor> {
        let levels = |o: &ModelOutput| -> Result<Vec<Tensor>> {
            let (b, d) = o.embedding.dims2()?;
            let mut v = o.stage_features.clone();
            v.push(o.embedding.reshape((b, d, 1, 1))?);
            Ok(v)
        };
        self.loss_from_features(&levels(student)?, &levels(teacher)?, epoch, Mode::Train)
    }

    /// Batch-norm running statistics as variables (non-trainable, updated in place by every
    /// training-mode forward), named as in the reference's state dict, e.g.
    /// `abfs.0.conv1.1.running_mean`.
    pub fn buffers(&self) -> Vec<(String, Var)> {
        let mut out = Vec::new();
        for (k, abf) in self.abfs.iter().enumerate() {
            for (name, bn) in abf.batch_norms() {
                out.push((format!("abfs.{k}.{name}.running_mean"), bn.running_mean.clone()));
                out.push((format!("abfs.{k}.{name}.running_var"), bn.running_var.clone()));
            }
        }
        out
    }

    /// Batch-norm running statistics as named tensors (copies), named as [`ReviewKd::buffers`].
    pub fn state(&self) -> Result<Vec<(String, Tensor)>> {
        self.buffers().into_iter().map(|(n, v)| Ok((n, v.detach().copy()?))).collect()
    }

    /// Restores what [`ReviewKd::state`] exported.
    pub fn load_state(&mut self, state: &HashMap<String, Tensor>) -> std::result::Result<(), ReviewKdError> {
        for (k, abf) in self.abfs.iter_mut().enumerate() {
            for (name, bn) in abf.batch_norms_mut() {
                for (stat, slot) in
                    [("running_mean", &mut bn.running_mean), ("running_var", &mut bn.running_var)]
                {
                    let key = format!("abfs.{k}.{name}.{stat}");
                    let t =
                        state.get(&key).ok_or_else(|| ReviewKdError::State(format!("no tensor `{key}`")))?;
                    if t.dims() != slot.dims() {
                        return Err(ReviewKdError::State(format!(
                            "`{key}` is {:?}, expected {:?}",
                            t.dims(),
                            slot.dims()
                        )));
                    }
                    slot.set(&t.to_device(slot.device())?.to_dtype(slot.dtype())?.copy()?)?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Var};
    use candle_nn::VarMap;

    #[test]
    fn config_defaults_and_refusals() {
        let cfg = ReviewKdConfig::from_table(&toml::Table::new()).unwrap();
        assert_eq!((cfg.weight, cfg.warmup_epochs), (1.0, 20.0));
        let t: toml::Table = toml::from_str("weight = 0.6\nwarm_up = 5").unwrap();
        let e = ReviewKdConfig::from_table(&t).unwrap_err().to_string();
        assert!(e.contains("warm_up"), "{e}");
        let t: toml::Table = toml::from_str("weight = -1.0").unwrap();
        assert!(ReviewKdConfig::from_table(&t).unwrap_err().to_string().contains("weight"));
        assert_eq!(ReviewKdConfig { weight: 1.0, warmup_epochs: 0.0 }.warmup_factor(0), 1.0);
    }

    /// Guards the reason `upsample_to` does not call `upsample_nearest2d`: a map used by two
    /// consumers, one of them the upsampling, must get the sum of both gradients.
    #[test]
    fn upsampling_adds_to_other_gradients() {
        let x =
            Var::from_tensor(&Tensor::new(&[[[[1f64, 2.0], [3.0, 4.0]]]], &Device::Cpu).unwrap()).unwrap();
        let up = upsample_to(x.as_tensor(), (4, 4)).unwrap();
        let loss = (up.sum_all().unwrap() + x.as_tensor().sum_all().unwrap()).unwrap();
        let g: Vec<f64> = loss.backward().unwrap().get(&x).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(g, vec![5.0; 4]); // 4 copies each + 1
    }

    #[test]
    fn adaptive_pool_uses_pytorch_bins() {
        // 3 → 2 bins: rows [0, 2) and [1, 3).
        let x = Tensor::arange(0f64, 9.0, &Device::Cpu).unwrap().reshape((1, 1, 3, 3)).unwrap();
        let p: Vec<f64> = adaptive_avg_pool2d(&x, 2).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(p, vec![2.0, 3.0, 5.0, 6.0]);
        let p: Vec<f64> = adaptive_avg_pool2d(&x, 1).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(p, vec![4.0]);
    }

    fn output(b: usize, widths: &[usize], sizes: &[usize], emb: usize) -> ModelOutput {
        let dev = Device::Cpu;
        ModelOutput {
            logits: Tensor::zeros((b, 10), DType::F32, &dev).unwrap(),
            stage_features: widths
                .iter()
                .zip(sizes)
                .map(|(&c, &h)| Tensor::randn(0f32, 1.0, (b, c, h, h), &dev).unwrap())
                .collect(),
            embedding: Tensor::randn(0f32, 1.0, (b, emb), &dev).unwrap(),
        }
    }

    #[test]
    fn loss_on_model_outputs_with_warm_up_and_state_round_trip() {
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        let cfg = ReviewKdConfig { weight: 0.6, warmup_epochs: 20.0 };
        let mut net = ReviewKd::new(&cfg, &[16, 32, 64, 64], &[16, 32, 64, 64], vb).unwrap();
        // resnet20: 4 ABFs (3 with attention), names as the reference's state dict.
        let names: Vec<String> = varmap.data().lock().unwrap().keys().cloned().collect();
        assert_eq!(names.len(), 4 * 6 + 3 * 2, "{names:?}");
        assert!(
            names.contains(&"abfs.0.conv2.0.weight".to_string())
                && !names.iter().any(|n| n.starts_with("abfs.0.att"))
        );
        let s = output(3, &[16, 32, 64], &[8, 4, 2], 64);
        let t = output(3, &[16, 32, 64], &[8, 4, 2], 64);
        assert_eq!(net.loss(&s, &t, 0).unwrap().to_scalar::<f32>().unwrap(), 0.0);
        let before: HashMap<String, Tensor> = net.state().unwrap().into_iter().collect();
        let l10 = net.loss(&s, &t, 10).unwrap().to_scalar::<f32>().unwrap();
        assert!(l10 > 0.0);
        // Running statistics moved; restoring them gives the same loss again.
        let moved = net.state().unwrap();
        assert_ne!(
            moved[0].1.to_vec1::<f32>().unwrap(),
            before["abfs.0.conv1.1.running_mean"].to_vec1::<f32>().unwrap()
        );
        net.load_state(&before).unwrap();
        assert_eq!(net.loss(&s, &t, 10).unwrap().to_scalar::<f32>().unwrap(), l10);
        // A student with the wrong widths is refused with the level named.
        let bad = output(3, &[16, 48, 64], &[8, 4, 2], 64);
        let e = net.loss(&bad, &t, 10).unwrap_err().to_string();
        assert!(e.contains("level 1"), "{e}");
    }
}
