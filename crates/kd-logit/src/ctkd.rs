//! Curriculum Temperature for Knowledge Distillation (Li et al., AAAI 2023); reference
//! `zhengli97/CTKD`: `models/temp_global.py` (`Global_T`, `GradientReversalFunction`),
//! `distiller_zoo/KD.py` (`DistillKL`), `train_student.py` (`CosineDecay`, `LinearDecay`) and
//! `helper/loops.py` (how they are put together).
//!
//! The KD temperature is learned: one scalar parameter `global_T` (initialised to 1) goes
//! through a gradient-reversal layer and a sigmoid, `τ = t_start + t_end·sigmoid(grl(global_T))`
//! (1 + 20·sigmoid, so τ ∈ (1, 21), τ = 15.62 at the start). The student minimises the KD
//! loss while the reversed gradient makes the temperature *maximise* it, the more so as the
//! curriculum weight λ grows from 0 to 1 over the first `decay_loops` epochs along a cosine.
//!
//! As the reference computes it:
//! - Its `CosineDecay(max_value, min_value, num_loops).get_value(epoch)` with the run script's
//!   `--decay_max 0 --decay_min -1 --decay_loops 10` yields a value going from 0 to −1
//!   (`(cos(π·i/L) + 1)/2·(max − min) + min`, `i` clamped to `[0, L]`), and its
//!   `GradientReversalFunction` multiplies the incoming gradient *by that value*. The paper's λ
//!   is its negation: [`LambdaSchedule::lambda`] returns `−value`, and [`GradientReversal`]
//!   multiplies the gradient by `−λ`, which is the same operation.
//! - The temperature is a tensor: `DistillKL` divides both logits by it and multiplies the
//!   batch-mean KL by `τ·τ`, so `global_T` receives gradient through all three, the teacher's
//!   softmax included.
//! - The loss is `gamma·CE + alpha·KD` with the run script's `-r 0.1 -a 0.9` (`-b 0`); epochs
//!   count from 1 (`for epoch in range(1, opt.epochs + 1)`).
//! - `LinearDecay` (`--cosine_decay 0`) returns `−i·(max − min)/L` with `i` clamped to
//!   `L − 1`: it ignores `min_value` as an offset and never reaches `min_value`; reproduced.
//!
//! As a method (`method = "ctkd"`, variant `ctkd`; [`CtkdObjective`]): the step is
//! `train_distill`'s, one temperature per batch from `global_T` and the λ of the epoch, and
//! `gamma·loss_cls + alpha·loss_div` ([`crate::LogitMethod`]). `global_T` is the method's own
//! parameter ([`kd_core::Method::parameters`]): the pipeline optimises it with the student in
//! one SGD, as `train_student.py` puts `mlp` into `trainable_list` beside `model_s`, and
//! checkpoints and resumes it.

use candle_core::{CpuStorage, CustomOp1, DType, Device, Layout, Result, Shape, Tensor, Var, D};
use candle_nn::{Init, VarBuilder, VarMap};
use kd_core::losses::cross_entropy;
use kd_core::Losses;
use serde::{Deserialize, Serialize};

use crate::method::{parts, LogitObjective};
use crate::{check_pair, kl_div_sum, non_negative, parse_table, require, softmax, ConfigError};

/// The reference initialises `global_T` to `torch.ones(1)`.
pub const INIT_GLOBAL_T: f64 = 1.0;

/// `[distill]` of `method = "ctkd"` (CTKD on vanilla KD, global temperature).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CtkdConfig {
    /// Weight of the cross-entropy (`-r` / `--gamma`).
    pub ce_weight: f64,
    /// Weight of the `τ²`-scaled KL (`-a` / `--alpha`).
    pub kd_weight: f64,
    /// Lowest temperature (`--t_start`).
    pub t_start: f64,
    /// Span of the temperature above `t_start` (`--t_end`).
    pub t_end: f64,
    /// Cosine (true) or the reference's linear (false) λ schedule (`--cosine_decay`).
    pub cosine_decay: bool,
    /// Schedule value at epoch 0 (`--decay_max`); the paper's λ starts at `−decay_max`.
    pub decay_max: f64,
    /// Schedule value from `decay_loops` on (`--decay_min`); the paper's λ ends at `−decay_min`.
    pub decay_min: f64,
    /// Epochs of the curriculum (`--decay_loops`).
    pub decay_loops: usize,
}

impl Default for CtkdConfig {
    /// `scripts/run_cifar_distill.sh` (the `train_student.py` argparse defaults for the
    /// schedule are 0, 0, 0, which would divide by zero).
    fn default() -> Self {
        Self {
            ce_weight: 0.1,
            kd_weight: 0.9,
            t_start: 1.0,
            t_end: 20.0,
            cosine_decay: true,
            decay_max: 0.0,
            decay_min: -1.0,
            decay_loops: 10,
        }
    }
}

impl CtkdConfig {
    pub const METHOD: &'static str = "ctkd";

    /// Parses and validates a `[distill]` table; missing keys take the reference defaults.
    pub fn from_table(table: &toml::Table) -> std::result::Result<Self, ConfigError> {
        let cfg: Self = parse_table(Self::METHOD, table)?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn validate(&self) -> std::result::Result<(), ConfigError> {
        let m = Self::METHOD;
        non_negative(m, "ce_weight", self.ce_weight)?;
        non_negative(m, "kd_weight", self.kd_weight)?;
        require(
            self.t_start.is_finite() && self.t_start > 0.0,
            m,
            "t_start",
            "finite and > 0",
            self.t_start,
        )?;
        non_negative(m, "t_end", self.t_end)?;
        require(self.decay_max.is_finite(), m, "decay_max", "finite", self.decay_max)?;
        require(self.decay_min.is_finite(), m, "decay_min", "finite", self.decay_min)?;
        require(self.decay_loops >= 1, m, "decay_loops", ">= 1", self.decay_loops)
    }

    pub fn schedule(&self) -> LambdaSchedule {
        LambdaSchedule {
            cosine: self.cosine_decay,
            max_value: self.decay_max,
            min_value: self.decay_min,
            num_loops: self.decay_loops,
        }
    }
}

/// The reference's `CosineDecay` / `LinearDecay` over epochs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LambdaSchedule {
    pub cosine: bool,
    pub max_value: f64,
    pub min_value: f64,
    pub num_loops: usize,
}

impl LambdaSchedule {
    /// `get_value(epoch)` of the reference: the factor its gradient-reversal layer multiplies
    /// the temperature's gradient by (≤ 0 with the default settings).
    pub fn reference_value(&self, epoch: usize) -> f64 {
        let loops = self.num_loops as f64;
        if self.cosine {
            let i = epoch.min(self.num_loops) as f64;
            let value = ((i * std::f64::consts::PI / loops).cos() + 1.0) * 0.5;
            value * (self.max_value - self.min_value) + self.min_value
        } else {
            let i = epoch.min(self.num_loops - 1) as f64;
            i * -((self.max_value - self.min_value) / loops)
        }
    }

    /// The paper's curriculum weight λ at `epoch` (counted from 1): `−reference_value`.
    pub fn lambda(&self, epoch: usize) -> f64 {
        -self.reference_value(epoch)
    }
}

/// Gradient reversal (Ganin & Lempitsky, 2015): identity forward, gradient times `−λ` backward.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GradientReversal {
    pub lambda: f64,
}

impl CustomOp1 for GradientReversal {
    fn name(&self) -> &'static str {
        "gradient-reversal"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        // `grad_reverse` hands over contiguous tensors only.
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("gradient-reversal: non-contiguous input")
        };
        let out = match storage {
            CpuStorage::F32(v) => CpuStorage::F32(v[start..end].to_vec()),
            CpuStorage::F64(v) => CpuStorage::F64(v[start..end].to_vec()),
            CpuStorage::F16(v) => CpuStorage::F16(v[start..end].to_vec()),
            CpuStorage::BF16(v) => CpuStorage::BF16(v[start..end].to_vec()),
            _ => candle_core::bail!("gradient-reversal: floating-point input only"),
        };
        Ok((out, layout.shape().clone()))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some((grad_res * -self.lambda)?))
    }
}

/// `x` unchanged, with its gradient multiplied by `−λ` on the way back. Off the CPU the
/// (small) tensor takes a round trip through the CPU, which autograd follows.
pub fn grad_reverse(x: &Tensor, lambda: f64) -> Result<Tensor> {
    let op = GradientReversal { lambda };
    if x.device().is_cpu() {
        x.contiguous()?.apply_op1(op)
    } else {
        x.to_device(&Device::Cpu)?.contiguous()?.apply_op1(op)?.to_device(x.device())
    }
}

/// The learnable global temperature module (`Global_T` plus the sigmoid of `loops.py`).
#[derive(Debug, Clone)]
pub struct GlobalTemperature {
    /// The trainable scalar, shape `(1,)`, named `global_T` as in the reference state dict.
    pub global_t: Tensor,
    pub t_start: f64,
    pub t_end: f64,
}

impl GlobalTemperature {
    /// Creates (or loads) `global_T` from `vb`, initialised to 1 as in the reference.
    pub fn new(vb: VarBuilder, t_start: f64, t_end: f64) -> Result<Self> {
        let global_t = vb.get_with_hints(1, "global_T", Init::Const(INIT_GLOBAL_T))?;
        Ok(Self { global_t, t_start, t_end })
    }

    /// `t_start + t_end·sigmoid(grl(global_T, λ))`, shape `(1,)`, differentiable.
    pub fn forward(&self, lambda: f64) -> Result<Tensor> {
        let reversed = grad_reverse(&self.global_t, lambda)?;
        (sigmoid(&reversed)? * self.t_end)? + self.t_start
    }

    /// The current temperature, for logging.
    pub fn value(&self) -> Result<f64> {
        let t = ((sigmoid(&self.global_t.detach())? * self.t_end)? + self.t_start)?;
        t.to_dtype(DType::F64)?.flatten_all()?.get(0)?.to_scalar::<f64>()
    }
}

fn sigmoid(x: &Tensor) -> Result<Tensor> {
    (x.neg()?.exp()? + 1.0)?.recip()
}

/// `DistillKL` with a tensor temperature: `KL(softmax(t/τ) ‖ softmax(s/τ))` summed over
/// classes, averaged over the batch, times `τ·τ`; gradient reaches `τ` through both softmaxes.
pub fn distill_kl_learned_temperature(
    student: &Tensor,
    teacher: &Tensor,
    temperature: &Tensor,
) -> Result<Tensor> {
    let (batch, _) = check_pair(student, teacher)?;
    let temperature = temperature.reshape((1, 1))?;
    let log_ps = candle_nn::ops::log_softmax(&student.broadcast_div(&temperature)?, D::Minus1)?;
    let pt = softmax(&teacher.detach().broadcast_div(&temperature)?)?;
    let kl = (kl_div_sum(&log_ps, &pt)? / batch as f64)?;
    kl.broadcast_mul(&temperature.sqr()?.reshape(())?)
}

/// The terms of one evaluation.
#[derive(Debug, Clone)]
pub struct CtkdLosses {
    /// Unweighted cross-entropy.
    pub ce: Tensor,
    /// Unweighted `τ²·KL` (the reference's `loss_div`).
    pub kd: Tensor,
    /// `ce_weight·ce + kd_weight·kd`.
    pub total: Tensor,
    /// The temperature used, detached, shape `(1,)`.
    pub temperature: Tensor,
    /// The paper's λ used at this epoch.
    pub lambda: f64,
}

/// CTKD on vanilla KD: the loss and the temperature module it owns.
#[derive(Debug, Clone)]
pub struct CtkdLoss {
    pub config: CtkdConfig,
    pub temperature: GlobalTemperature,
}

impl CtkdLoss {
    /// `vb` holds the method's trainable `global_T` (optimised with the student).
    pub fn new(config: CtkdConfig, vb: VarBuilder) -> Result<Self> {
        let temperature = GlobalTemperature::new(vb, config.t_start, config.t_end)?;
        Ok(Self { config, temperature })
    }

    /// The CTKD objective at `epoch` (counted from 1, for the λ curriculum).
    pub fn loss(
        &self,
        student: &Tensor,
        teacher: &Tensor,
        labels: &Tensor,
        epoch: usize,
    ) -> Result<CtkdLosses> {
        let lambda = self.config.schedule().lambda(epoch);
        let tau = self.temperature.forward(lambda)?.to_dtype(student.dtype())?;
        let ce = cross_entropy(student, labels, 0.0)?;
        let kd = distill_kl_learned_temperature(student, teacher, &tau)?;
        let total = ((&ce * self.config.ce_weight)? + (&kd * self.config.kd_weight)?)?;
        Ok(CtkdLosses { ce, kd, total, temperature: tau.detach(), lambda })
    }

    /// The current temperature, for logging.
    pub fn temperature_value(&self) -> Result<f64> {
        self.temperature.value()
    }
}

/// The name of the temperature's variable, as in the reference's state dict (the pipeline
/// keeps it as `method/global_T`).
pub const GLOBAL_T: &str = "global_T";

/// CTKD as a method's objective: [`CtkdLoss`] and the variable behind its temperature.
#[derive(Debug, Clone)]
pub struct CtkdObjective {
    pub loss: CtkdLoss,
    global_t: Var,
}

impl CtkdObjective {
    /// The trainable `global_T`.
    pub fn global_t(&self) -> &Var {
        &self.global_t
    }
}

impl LogitObjective for CtkdObjective {
    type Config = CtkdConfig;
    const METHOD: &'static str = CtkdConfig::METHOD;

    fn parse(table: &toml::Table) -> std::result::Result<CtkdConfig, ConfigError> {
        CtkdConfig::from_table(table)
    }

    /// `global_T` in f32 (the models' dtype), initialised to 1 as the reference does; no seed
    /// is needed.
    fn build(config: &CtkdConfig, device: &Device) -> Result<Self> {
        let vars = VarMap::new();
        let loss = CtkdLoss::new(config.clone(), VarBuilder::from_varmap(&vars, DType::F32, device))?;
        let global_t = vars.data().lock().unwrap_or_else(|e| e.into_inner()).get(GLOBAL_T).cloned();
        match global_t {
            Some(global_t) => Ok(Self { loss, global_t }),
            None => candle_core::bail!("ctkd: the temperature module made no `{GLOBAL_T}`"),
        }
    }

    /// Parts: `ce` and `kd` (weighted, their sum the total), `temperature` (the τ of the step,
    /// so the history holds its epoch mean) and `lambda` (the curriculum weight of the epoch).
    fn losses(&self, student: &Tensor, teacher: &Tensor, labels: &Tensor, epoch: usize) -> Result<Losses> {
        let l = self.loss.loss(student, teacher, labels, epoch)?;
        let ce = (&l.ce * self.loss.config.ce_weight)?;
        let kd = (&l.kd * self.loss.config.kd_weight)?;
        let temperature = l.temperature.reshape(())?;
        let lambda = Tensor::new(l.lambda, student.device())?;
        let parts = parts([("ce", &ce), ("kd", &kd), ("temperature", &temperature), ("lambda", &lambda)]);
        Ok(Losses { total: l.total, parts })
    }

    fn parameters(&self) -> Vec<(String, Var)> {
        vec![(GLOBAL_T.to_string(), self.global_t.clone())]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::method::testing::{at_epoch, check_total_is_ce_plus_kd, close, method, part, scalar};
    use kd_core::Method;

    #[test]
    fn gradient_reversal_is_identity_forward_and_scales_the_gradient_by_minus_lambda() {
        let x = Var::new(&[[1.5f32, -2.0, 0.25], [3.0, 4.0, -1.0]], &Device::Cpu).unwrap();
        // A strided (transposed) input: made contiguous first, the gradient still reaches `x`.
        let y = grad_reverse(&x.as_tensor().t().unwrap(), 0.3).unwrap();
        assert_eq!(y.to_vec2::<f32>().unwrap(), x.as_tensor().t().unwrap().to_vec2::<f32>().unwrap());
        let w = Tensor::new(&[[1f32, 2.], [3., 4.], [5., 6.]], &Device::Cpu).unwrap();
        let loss = (y * &w).unwrap().sum_all().unwrap();
        let g = loss.backward().unwrap().get(x.as_tensor()).unwrap().to_vec2::<f32>().unwrap();
        let want: Vec<Vec<f32>> = w.t().unwrap().to_vec2::<f32>().unwrap();
        for (gr, wr) in g.iter().zip(&want) {
            for (a, b) in gr.iter().zip(wr) {
                assert!((a - (-0.3 * b)).abs() < 1e-6, "{a} vs {}", -0.3 * b);
            }
        }
        // λ = 0 stops the gradient; λ = −1 passes it unchanged.
        let z = grad_reverse(x.as_tensor(), 0.0).unwrap().sum_all().unwrap();
        let g0 = z.backward().unwrap().get(x.as_tensor()).unwrap().abs().unwrap().sum_all().unwrap();
        assert_eq!(g0.to_scalar::<f32>().unwrap(), 0.0);
    }

    #[test]
    fn cosine_schedule_matches_the_reference_formula() {
        let s = CtkdConfig::default().schedule();
        let pi = std::f64::consts::PI;
        for epoch in [0usize, 1, 2, 3, 5, 9, 10, 11, 240] {
            let i = epoch.min(10) as f64;
            let want = (((i * pi / 10.0).cos() + 1.0) * 0.5) * (0.0 - -1.0) + -1.0;
            assert!((s.reference_value(epoch) - want).abs() < 1e-15, "epoch {epoch}");
            assert!((s.lambda(epoch) + want).abs() < 1e-15);
        }
        assert_eq!(s.lambda(0), 0.0);
        assert!((s.lambda(5) - 0.5).abs() < 1e-15);
        assert_eq!(s.lambda(10), 1.0);
        assert_eq!(s.lambda(300), 1.0);
        let lin = CtkdConfig { cosine_decay: false, ..CtkdConfig::default() }.schedule();
        assert!((lin.lambda(3) - 0.3).abs() < 1e-12);
        // Clamped at num_loops − 1: never reaches 1.
        assert!((lin.lambda(50) - 0.9).abs() < 1e-12);
    }

    #[test]
    fn temperature_starts_at_one_plus_twenty_sigmoid_one_and_is_trainable() {
        let map = candle_nn::VarMap::new();
        let vb = VarBuilder::from_varmap(&map, DType::F32, &Device::Cpu);
        let loss = CtkdLoss::new(CtkdConfig::default(), vb).unwrap();
        let want = 1.0 + 20.0 / (1.0 + (-1f64).exp());
        assert!((loss.temperature_value().unwrap() - want).abs() < 1e-5);
        assert_eq!(map.all_vars().len(), 1);
        let names: Vec<String> = map.data().lock().unwrap().keys().cloned().collect();
        assert_eq!(names, vec!["global_T".to_string()]);
    }

    #[test]
    fn config_errors_name_the_key() {
        for (text, key) in [
            ("decay_loops = 0", "`decay_loops`"),
            ("t_start = 0.0", "`t_start`"),
            ("cosine_decay = 1", "`cosine_decay`"),
        ] {
            let e = CtkdConfig::from_table(&toml::from_str(text).unwrap()).unwrap_err().to_string();
            assert!(e.contains(key) && e.contains("ctkd"), "{text}: {e}");
        }
        assert_eq!(CtkdConfig::from_table(&toml::Table::new()).unwrap(), CtkdConfig::default());
    }

    #[test]
    fn defaults_are_the_run_script_and_negative_weights_are_refused() {
        let want = CtkdConfig {
            ce_weight: 0.1,
            kd_weight: 0.9,
            t_start: 1.0,
            t_end: 20.0,
            cosine_decay: true,
            decay_max: 0.0,
            decay_min: -1.0,
            decay_loops: 10,
        };
        assert_eq!(CtkdConfig::default(), want);
        for (text, key) in [("kd_weight = -0.9", "`kd_weight`"), ("kd_T = 4.0", "kd_T")] {
            let e = CtkdConfig::from_table(&toml::from_str(text).unwrap()).unwrap_err().to_string();
            assert!(e.contains(key), "{text}: {e}");
        }
    }

    #[test]
    fn the_method_total_is_ce_plus_kd_at_the_learned_temperature_and_global_t_is_its_parameter() {
        let cfg = CtkdConfig::default();
        let (mut m, student, teacher, batch) = method(CtkdObjective::build(&cfg, &Device::Cpu).unwrap());
        let params = m.parameters();
        assert_eq!(params.len(), 1);
        assert_eq!(params[0].0, "global_T");
        let global_t = params[0].1.clone();
        assert_eq!(global_t.as_tensor().id(), m.objective().global_t().as_tensor().id(), "the very variable");
        // 0-based epoch 4 is the reference's epoch 5: λ = 0.5.
        let losses = m.losses(&batch, &at_epoch(4)).unwrap();
        let (s, t) = (student.logits.as_tensor(), teacher.logits.as_tensor());
        let tau = m.objective().loss.temperature.forward(0.5).unwrap();
        let ce = scalar(&cross_entropy(s, &batch.labels, 0.0).unwrap());
        let kd = scalar(&distill_kl_learned_temperature(s, t, &tau).unwrap());
        close("total", scalar(&losses.total), 0.1 * ce + 0.9 * kd);
        close("temperature", part(&losses, "temperature"), 1.0 + 20.0 / (1.0 + (-1f64).exp()));
        close("lambda", part(&losses, "lambda"), 0.5);
        check_total_is_ce_plus_kd(&losses, &student);
        // The temperature receives the reversed gradient: −λ times the loss's.
        let grads = losses.total.backward().unwrap();
        let g =
            scalar(&grads.get(global_t.as_tensor()).expect("global_T gets a gradient").sum_all().unwrap());
        let direct = {
            let gt = Var::new(&[1f32], &Device::Cpu).unwrap();
            let tau = ((sigmoid(gt.as_tensor()).unwrap() * 20.0).unwrap() + 1.0).unwrap();
            let kd = distill_kl_learned_temperature(s, t, &tau).unwrap();
            let grads = (kd * 0.9).unwrap().backward().unwrap();
            scalar(&grads.get(gt.as_tensor()).unwrap().sum_all().unwrap())
        };
        assert!(g != 0.0);
        close("reversed gradient", g, -0.5 * direct);
    }
}
