//! Annealed Hinton KD and Annealing-KD.
//!
//! - `fixed`: Hinton KD at a constant temperature and weight (exactly kd-vanilla's method).
//! - `annealed`: the same loss, `(1-α)·CE + α·T²·KL(softmax(t/T) ‖ softmax(s/T))`, with `T` and
//!   `α` following [`ValueSchedule`]s over training. The schedules are read at the *inclusive*
//!   step progress `q = step / (steps - 1)`: the first optimiser step uses the schedule's start
//!   and the last step its end exactly.
//! - `annealing-kd` (Jafari et al., EACL 2021, and their reference code): phase 1 regresses the
//!   student's logits onto the teacher's scaled by an annealing factor
//!   `φ = k/τ_max, k = 1..τ_max` rising in `τ_max` equal stages to 1,
//!   `MSE(z_s, φ·z_t)` averaged over batch and classes (torch's `F.mse_loss`); phase 2 trains
//!   with hard-label cross-entropy only. One run, one LR schedule over both phases (the
//!   reference restarts its step schedule for phase 2; recipes say which they use).

use std::sync::Arc;

use candle_core::{Result, Tensor};
use kd_core::losses::cross_entropy;
use kd_core::losses::{SoftTargetConfig as VanillaConfig, SoftTargetLoss};
use kd_core::schedule::ValueSchedule;
use kd_core::teacher::TeacherLogits;
use kd_core::{Batch, Classifier, EvalEntry, Losses, Method, Mode, StepContext};
use serde::{Deserialize, Serialize};

use crate::{check_label_space, config_err, ProgressiveError};

const METHOD: &str = "annealing";

/// The variants of method `annealing` (besides `plain`).
pub const VARIANTS: [&str; 3] = ["fixed", "annealed", "annealing-kd"];

/// `[distill]` for `method = "annealing"`.
///
/// ```toml
/// [distill]
/// temperature = { kind = "linear", start = 8.0, end = 1.0 }  # `annealed`
/// alpha = 0.9                                                 # `annealed` (a schedule too)
/// fixed = { temperature = 4.0, alpha = 0.9 }                  # `fixed`: vanilla KD
/// annealing_kd = { max_temperature = 10, phase1 = 0.5 }      # `annealing-kd`
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnnealConfig {
    /// Temperature over training for `annealed` (a number is a constant).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<ValueSchedule>,
    /// Weight `α` of the soft-target term over training for `annealed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alpha: Option<ValueSchedule>,
    /// Label smoothing of every hard-label term (0 = none).
    #[serde(default)]
    pub label_smoothing: f64,
    /// The `fixed` variant's constant temperature and weight.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fixed: Option<FixedConfig>,
    /// The `annealing-kd` variant's settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annealing_kd: Option<AnnealingKdConfig>,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FixedConfig {
    pub temperature: f64,
    pub alpha: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnnealingKdConfig {
    /// `τ_max`: phase 1 has this many stages; stage `k` (1-based) scales the teacher by `k/τ_max`.
    pub max_temperature: u32,
    /// Fraction of training (in optimiser steps) spent in phase 1, in `(0, 1]`.
    pub phase1: f64,
}

/// The smallest and largest value a schedule takes.
fn bounds(s: &ValueSchedule) -> (f64, f64) {
    match s {
        ValueSchedule::Constant(v) => (*v, *v),
        ValueSchedule::Linear { start, end } | ValueSchedule::Cosine { start, end } => {
            (start.min(*end), start.max(*end))
        }
        ValueSchedule::Step { values, .. } => {
            values.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(*v), hi.max(*v)))
        }
    }
}

fn check_temperature(key: &str, lo: f64) -> std::result::Result<(), ProgressiveError> {
    if lo.is_nan() || lo <= 0.0 {
        return Err(config_err(METHOD, format!("{key} must stay > 0, got {lo}")));
    }
    Ok(())
}

fn check_alpha(key: &str, (lo, hi): (f64, f64)) -> std::result::Result<(), ProgressiveError> {
    if !(0.0..=1.0).contains(&lo) || !(0.0..=1.0).contains(&hi) {
        return Err(config_err(METHOD, format!("{key} must stay in [0, 1], got values in [{lo}, {hi}]")));
    }
    Ok(())
}

impl AnnealConfig {
    /// Parses and validates the recipe's `[distill]` table.
    pub fn from_table(table: &toml::Table) -> std::result::Result<Self, ProgressiveError> {
        let cfg: AnnealConfig = toml::Value::Table(table.clone())
            .try_into()
            .map_err(|e: toml::de::Error| config_err(METHOD, e.message().to_string()))?;
        if let Some(t) = &cfg.temperature {
            check_temperature("temperature", bounds(t).0)?;
        }
        if let Some(a) = &cfg.alpha {
            check_alpha("alpha", bounds(a))?;
        }
        if !(0.0..1.0).contains(&cfg.label_smoothing) {
            return Err(config_err(
                METHOD,
                format!("label_smoothing must be in [0, 1), got {}", cfg.label_smoothing),
            ));
        }
        if let Some(f) = &cfg.fixed {
            check_temperature("fixed.temperature", f.temperature)?;
            check_alpha("fixed.alpha", (f.alpha, f.alpha))?;
        }
        if let Some(a) = &cfg.annealing_kd {
            if a.max_temperature == 0 {
                return Err(config_err(METHOD, "annealing_kd.max_temperature must be ≥ 1"));
            }
            if !(a.phase1 > 0.0 && a.phase1 <= 1.0) {
                return Err(config_err(
                    METHOD,
                    format!("annealing_kd.phase1 must be in (0, 1], got {}", a.phase1),
                ));
            }
        }
        Ok(cfg)
    }

    /// Checks that every listed variant has its settings (e.g. `fixed` needs `fixed = {...}`).
    pub fn require_variants(&self, variants: &[String]) -> std::result::Result<(), ProgressiveError> {
        for v in variants {
            let missing = match v.as_str() {
                "fixed" if self.fixed.is_none() => Some("fixed = { temperature, alpha }"),
                "annealed" if self.temperature.is_none() || self.alpha.is_none() => {
                    Some("temperature and alpha (numbers or schedules)")
                }
                "annealing-kd" if self.annealing_kd.is_none() => {
                    Some("annealing_kd = { max_temperature, phase1 }")
                }
                _ => None,
            };
            if let Some(m) = missing {
                return Err(config_err(METHOD, format!("variant `{v}` needs {m}")));
            }
        }
        Ok(())
    }

    /// The `fixed` variant as kd-vanilla's configuration.
    pub fn fixed_vanilla(&self) -> Option<VanillaConfig> {
        self.fixed.map(|f| VanillaConfig {
            temperature: f.temperature,
            alpha: f.alpha,
            label_smoothing: self.label_smoothing,
        })
    }
}

/// Training progress counted so that the first step is 0 and the last step is exactly 1.
pub fn inclusive_progress(ctx: &StepContext) -> f64 {
    let total = ctx.epochs * ctx.steps_per_epoch;
    if total <= 1 {
        return 0.0;
    }
    (ctx.global_step() as f64 / (total - 1) as f64).clamp(0.0, 1.0)
}

fn scalar(v: f64, like: &Tensor) -> Result<Tensor> {
    Tensor::new(v as f32, like.device())
}

/// Hinton KD with scheduled temperature and weight (variant `annealed`).
pub struct ScheduledKd {
    student: Arc<dyn Classifier>,
    teacher: Box<dyn TeacherLogits>,
    temperature: ValueSchedule,
    alpha: ValueSchedule,
    label_smoothing: f64,
}

impl ScheduledKd {
    pub fn new(
        student: Arc<dyn Classifier>,
        teacher: Box<dyn TeacherLogits>,
        cfg: &AnnealConfig,
    ) -> std::result::Result<Self, ProgressiveError> {
        check_label_space(teacher.model().as_ref(), student.as_ref())?;
        let (Some(temperature), Some(alpha)) = (cfg.temperature.clone(), cfg.alpha.clone()) else {
            return Err(config_err(METHOD, "variant `annealed` needs temperature and alpha"));
        };
        Ok(Self { student, teacher, temperature, alpha, label_smoothing: cfg.label_smoothing })
    }

    /// The loss used at the step `ctx` describes.
    pub fn loss_at(&self, ctx: &StepContext) -> SoftTargetLoss {
        let q = inclusive_progress(ctx);
        SoftTargetLoss {
            temperature: self.temperature.at(q),
            alpha: self.alpha.at(q),
            label_smoothing: self.label_smoothing,
        }
    }
}

impl Method for ScheduledKd {
    fn name(&self) -> &str {
        METHOD
    }

    fn variant(&self) -> &str {
        "annealed"
    }

    fn losses(&mut self, batch: &Batch, ctx: &StepContext) -> Result<Losses> {
        let loss = self.loss_at(ctx);
        let teacher = self.teacher.logits(batch)?;
        let student = self.student.forward(&batch.inputs, Mode::Train)?.logits;
        let terms = loss.compute(&student, &teacher, &batch.labels)?;
        Ok(Losses {
            parts: vec![
                ("ce".into(), terms.ce.detach()),
                ("kd".into(), terms.kd.detach()),
                ("temperature".into(), scalar(loss.temperature, &terms.ce)?),
                ("alpha".into(), scalar(loss.alpha, &terms.ce)?),
            ],
            total: terms.total,
        })
    }

    fn eval_entries(&self) -> Vec<EvalEntry> {
        vec![EvalEntry::of("student", self.student.as_ref())]
    }

    fn eval_logits(&self, inputs: &Tensor) -> Result<Vec<Tensor>> {
        Ok(vec![self.student.forward(inputs, Mode::Eval)?.logits])
    }
}

impl AnnealingKdConfig {
    /// The annealing factor `φ` at `ctx`, or `None` in phase 2 (cross-entropy only).
    ///
    /// Phase 1 is the first `round(phase1 · steps)` optimiser steps (at least one); over them
    /// the inclusive progress `q ∈ [0, 1]` picks stage `k = min(⌊q·τ_max⌋, τ_max-1)` and
    /// `φ = (k+1)/τ_max`: `1/τ_max` on the first step, exactly 1 on the last step of phase 1.
    pub fn factor(&self, ctx: &StepContext) -> Option<f64> {
        let total = ctx.epochs * ctx.steps_per_epoch;
        let p1 = ((self.phase1 * total as f64).round() as usize).clamp(1, total.max(1));
        let s = ctx.global_step();
        if s >= p1 {
            return None;
        }
        let tau = self.max_temperature.max(1) as usize;
        let q = if p1 <= 1 { 1.0 } else { s as f64 / (p1 - 1) as f64 };
        let k = ((q * tau as f64).floor() as usize).min(tau - 1);
        Some((k + 1) as f64 / tau as f64)
    }
}

/// Annealing-KD (variant `annealing-kd`).
pub struct AnnealingKd {
    student: Arc<dyn Classifier>,
    teacher: Box<dyn TeacherLogits>,
    cfg: AnnealingKdConfig,
    label_smoothing: f64,
}

impl AnnealingKd {
    pub fn new(
        student: Arc<dyn Classifier>,
        teacher: Box<dyn TeacherLogits>,
        cfg: &AnnealConfig,
    ) -> std::result::Result<Self, ProgressiveError> {
        check_label_space(teacher.model().as_ref(), student.as_ref())?;
        let Some(a) = cfg.annealing_kd else {
            return Err(config_err(
                METHOD,
                "variant `annealing-kd` needs annealing_kd = { max_temperature, phase1 }",
            ));
        };
        Ok(Self { student, teacher, cfg: a, label_smoothing: cfg.label_smoothing })
    }
}

/// `mean((s - φ·t)²)` over batch and classes; the teacher is a constant.
pub fn annealed_mse(student: &Tensor, teacher: &Tensor, factor: f64) -> Result<Tensor> {
    let target = (teacher.detach() * factor)?;
    (student - target)?.sqr()?.mean_all()
}

impl Method for AnnealingKd {
    fn name(&self) -> &str {
        METHOD
    }

    fn variant(&self) -> &str {
        "annealing-kd"
    }

    fn losses(&mut self, batch: &Batch, ctx: &StepContext) -> Result<Losses> {
        let student = self.student.forward(&batch.inputs, Mode::Train)?.logits;
        match self.cfg.factor(ctx) {
            Some(phi) => {
                let teacher = self.teacher.logits(batch)?;
                let mse = annealed_mse(&student, &teacher, phi)?;
                let ce = cross_entropy(&student.detach(), &batch.labels, self.label_smoothing)?;
                Ok(Losses {
                    parts: vec![
                        ("mse".into(), mse.detach()),
                        ("ce".into(), ce),
                        ("phi".into(), scalar(phi, &mse)?),
                    ],
                    total: mse,
                })
            }
            None => {
                let ce = cross_entropy(&student, &batch.labels, self.label_smoothing)?;
                Ok(Losses {
                    parts: vec![("ce".into(), ce.detach()), ("phi".into(), scalar(0.0, &ce)?)],
                    total: ce,
                })
            }
        }
    }

    fn eval_entries(&self) -> Vec<EvalEntry> {
        vec![EvalEntry::of("student", self.student.as_ref())]
    }

    fn eval_logits(&self, inputs: &Tensor) -> Result<Vec<Tensor>> {
        Ok(vec![self.student.forward(inputs, Mode::Eval)?.logits])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::takd::tests::{batch, Fixed};
    use candle_core::Device;
    use kd_core::teacher::LiveTeacher;

    fn table(s: &str) -> toml::Table {
        toml::from_str(s).unwrap()
    }

    /// Every step of a run of `epochs` × `spe` steps, in order.
    fn steps(epochs: usize, spe: usize) -> Vec<StepContext> {
        (0..epochs)
            .flat_map(|epoch| {
                (0..spe).map(move |s| StepContext { epoch, epochs, step_in_epoch: s, steps_per_epoch: spe })
            })
            .collect()
    }

    const S: [[f32; 4]; 3] = [[1.0, -0.5, 2.0, 0.3], [0.2, 0.1, -1.0, 3.0], [-2.0, 1.5, 0.0, 0.5]];
    const T: [[f32; 4]; 3] = [[2.0, 0.0, 3.5, -1.0], [1.0, 0.5, -0.5, 2.0], [-1.0, 2.5, 0.5, 0.0]];

    fn models() -> (Arc<dyn Classifier>, Box<dyn TeacherLogits>) {
        let s: Arc<dyn Classifier> = Arc::new(Fixed::new(&S, "s"));
        let t: Arc<dyn Classifier> = Arc::new(Fixed::new(&T, "t"));
        (s, Box::new(LiveTeacher::new(t)))
    }

    #[test]
    fn schedules_hit_their_end_points_on_the_first_and_last_step() {
        let cfg = AnnealConfig::from_table(&table(
            "temperature = { kind = \"linear\", start = 8.0, end = 1.0 }\n\
             alpha = { kind = \"cosine\", start = 0.9, end = 0.1 }",
        ))
        .unwrap();
        let (s, t) = models();
        let m = ScheduledKd::new(s, t, &cfg).unwrap();
        let run = steps(5, 7);
        let first = m.loss_at(&run[0]);
        let last = m.loss_at(run.last().unwrap());
        assert_eq!((first.temperature, first.alpha), (8.0, 0.9));
        assert!((last.temperature - 1.0).abs() < 1e-12, "{}", last.temperature);
        assert!((last.alpha - 0.1).abs() < 1e-12, "{}", last.alpha);
        // Linear: the middle step (17 of 0..=34) is exactly half-way; monotone throughout.
        assert!((m.loss_at(&run[17]).temperature - 4.5).abs() < 1e-12);
        let ts: Vec<f64> = run.iter().map(|c| m.loss_at(c).temperature).collect();
        assert!(ts.windows(2).all(|w| w[1] < w[0]));
        // A step schedule switches at its boundary.
        let cfg = AnnealConfig::from_table(&table(
            "temperature = { kind = \"step\", values = [4.0, 2.0], boundaries = [0.5] }\nalpha = 0.9",
        ))
        .unwrap();
        let (s, t) = models();
        let m = ScheduledKd::new(s, t, &cfg).unwrap();
        let run = steps(2, 3); // q = 0, .2, .4, .6, .8, 1
        let ts: Vec<f64> = run.iter().map(|c| m.loss_at(c).temperature).collect();
        assert_eq!(ts, vec![4.0, 4.0, 4.0, 2.0, 2.0, 2.0]);
    }

    #[test]
    fn scheduled_loss_at_a_step_is_hinton_kd_at_that_steps_values() {
        // At the first step T = 4, α = 0.9: kd-vanilla's golden total for these logits
        // (pure-Python computation in kd-vanilla's tests: CE 1.5330856, T²KL 0.3118346,
        // total 0.4339597).
        let cfg = AnnealConfig::from_table(&table(
            "temperature = { kind = \"linear\", start = 4.0, end = 1.0 }\nalpha = 0.9",
        ))
        .unwrap();
        let (s, t) = models();
        let mut m = ScheduledKd::new(s, t, &cfg).unwrap();
        let run = steps(2, 2);
        let l = m.losses(&batch(&[2, 3, 0]), &run[0]).unwrap();
        assert!((l.total.to_scalar::<f32>().unwrap() - 0.433_959_7).abs() < 1e-5);
        // Last step: T = 1, same α.
        let l = m.losses(&batch(&[2, 3, 0]), &run[3]).unwrap();
        let want = SoftTargetLoss { temperature: 1.0, alpha: 0.9, label_smoothing: 0.0 }
            .compute(
                &Tensor::new(&S, &Device::Cpu).unwrap(),
                &Tensor::new(&T, &Device::Cpu).unwrap(),
                &Tensor::new(&[2u32, 3, 0], &Device::Cpu).unwrap(),
            )
            .unwrap()
            .total
            .to_scalar::<f32>()
            .unwrap();
        assert_eq!(l.total.to_scalar::<f32>().unwrap(), want);
        let t_part = l.parts.iter().find(|(n, _)| n == "temperature").unwrap().1.to_scalar::<f32>().unwrap();
        assert_eq!(t_part, 1.0);
    }

    #[test]
    fn annealing_factor_rises_from_one_over_tau_to_one_then_phase_two() {
        let a = AnnealingKdConfig { max_temperature: 4, phase1: 0.5 };
        let run = steps(4, 4); // 16 steps, phase 1 = steps 0..8
        let phis: Vec<Option<f64>> = run.iter().map(|c| a.factor(c)).collect();
        // q = s/7; k = floor(4q): s=0,1 → 0; 2,3 → 1; 4,5 → 2; 6 → 3; 7 → 4 capped to 3.
        let want = [0.25, 0.25, 0.5, 0.5, 0.75, 0.75, 1.0, 1.0];
        for (s, w) in want.iter().enumerate() {
            assert_eq!(phis[s], Some(*w), "step {s}");
        }
        assert!(phis[8..].iter().all(Option::is_none));
        // phase1 = 1: the whole run is phase 1 and its last step has φ = 1.
        let a = AnnealingKdConfig { max_temperature: 10, phase1: 1.0 };
        assert_eq!(a.factor(&run[0]), Some(0.1));
        assert_eq!(a.factor(run.last().unwrap()), Some(1.0));
    }

    #[test]
    fn annealed_mse_matches_golden_value() {
        // Pure Python, phi = 0.5:
        //   sum((a-0.5*b)**2 for r,q in zip(S,T) for a,b in zip(r,q)) / 12 = 8.2525/12 = 0.68770833
        let dev = Device::Cpu;
        let s = Tensor::new(&S, &dev).unwrap();
        let t = Tensor::new(&T, &dev).unwrap();
        let v = annealed_mse(&s, &t, 0.5).unwrap().to_scalar::<f32>().unwrap();
        assert!((v - 0.687_708_3).abs() < 1e-6, "{v}");
        // Phase 2 is plain cross-entropy (kd-vanilla's golden CE 1.5330856).
        let (s, t) = models();
        let cfg =
            AnnealConfig::from_table(&table("annealing_kd = { max_temperature = 2, phase1 = 0.5 }")).unwrap();
        let mut m = AnnealingKd::new(s, t, &cfg).unwrap();
        let run = steps(1, 4);
        let l = m.losses(&batch(&[2, 3, 0]), &run[3]).unwrap();
        assert!((l.total.to_scalar::<f32>().unwrap() - 1.533_085_6).abs() < 1e-5);
        let l = m.losses(&batch(&[2, 3, 0]), &run[0]).unwrap();
        // Step 0: φ = 1/2 → the MSE above.
        assert!((l.total.to_scalar::<f32>().unwrap() - 0.687_708_3).abs() < 1e-6);
    }

    #[test]
    fn config_rejects_unknown_keys_bad_values_and_missing_variant_settings() {
        let e = AnnealConfig::from_table(&table("temperature = 4.0\nalpha = 0.9\ntemprature = 2"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("temprature"), "{e}");
        let e = AnnealConfig::from_table(&table(
            "temperature = { kind = \"linear\", start = 4.0, end = 0.0 }\nalpha = 0.9",
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("temperature must stay > 0"), "{e}");
        let e = AnnealConfig::from_table(&table(
            "temperature = 4.0\nalpha = { kind = \"linear\", start = 0.5, end = 1.5 }",
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("alpha"), "{e}");
        let e = AnnealConfig::from_table(&table("annealing_kd = { max_temperature = 10, phase1 = 0.0 }"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("phase1"), "{e}");
        let cfg = AnnealConfig::from_table(&table("temperature = 4.0\nalpha = 0.9")).unwrap();
        let e = cfg.require_variants(&["plain".into(), "fixed".into()]).unwrap_err().to_string();
        assert!(e.contains("variant `fixed` needs"), "{e}");
        assert!(cfg.require_variants(&["plain".into(), "annealed".into()]).is_ok());
    }
}
