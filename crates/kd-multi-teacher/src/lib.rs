//! Multi-teacher knowledge distillation: the soft targets of N pretrained teachers, each
//! softened at its own temperature, combined into one target distribution per example:
//!
//! `p = Σ_n w_n · softmax(t_n / T_n)`, loss `(1-α)·CE(y, s) + α·T²·KL(p ‖ softmax(s/T))`
//!
//! (KL summed over classes, averaged over the batch, as kd-vanilla and RepDistiller). The rules
//! differ only in the weights `w_n`:
//!
//! - `mean`: `1/N` (Hinton et al. 2015's ensemble targets);
//! - `weighted`: fixed weights from the recipe (non-negative, summing to 1);
//! - `confidence`: per example, from each teacher's cross-entropy on the true label, as in
//!   CA-MKD (Zhang, Chen & Wang, ICASSP 2022): `w_n = (1 − softmax_n(CE_n)) / (N − 1)`, so a
//!   teacher that is confidently right weighs most (CA-MKD's intermediate-feature term is not
//!   part of this rule);
//! - `entropy`: per example, `w_n = softmax_n(−H_n)` with `H_n` the entropy of teacher n's
//!   prediction: lower entropy, larger weight (the entropy-based weighting of EBKD, Kwon et al.,
//!   ICASSP 2020; label-free).
//!
//! Teachers run in eval mode without gradient (through kd-core's `TeacherLogits`, live or from
//! the soft-label cache); the method never touches pixels.

pub mod factory;

use std::sync::Arc;

use candle_core::{DType, Result, Tensor, D};
use candle_nn::ops::{log_softmax, softmax_last_dim};
use kd_core::losses::{cross_entropy, kl_to_targets, soft_targets};
use kd_core::teacher::TeacherLogits;
use kd_core::{Batch, Classifier, EvalEntry, Losses, Method, Mode, StepContext};
use serde::{Deserialize, Serialize};

/// Hyper-parameters of `[distill]` for `method = "multi-teacher"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MultiTeacherConfig {
    /// Student temperature `T` (and every teacher's, unless `teacher_temperatures` is given).
    pub temperature: f64,
    /// Weight `α` of the soft-target term; `1-α` weighs the hard-label cross-entropy.
    pub alpha: f64,
    #[serde(default)]
    pub label_smoothing: f64,
    /// One temperature per teacher, in `[[teachers]]` order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub teacher_temperatures: Option<Vec<f64>>,
    /// Fixed weights for the `weighted` rule, one per teacher, summing to 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weights: Option<Vec<f64>>,
    /// The teacher (by arch) that the `single` variant distils from alone: vanilla KD.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub single_teacher: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum MultiTeacherError {
    #[error("[distill] for method `multi-teacher`: {0}")]
    Config(String),
    #[error("teachers and student must share one label space, but {0}")]
    LabelSpace(String),
}

type Res<T> = std::result::Result<T, MultiTeacherError>;

fn config_err(msg: impl Into<String>) -> MultiTeacherError {
    MultiTeacherError::Config(msg.into())
}

impl MultiTeacherConfig {
    /// Parses `[distill]` and validates it against the recipe's teachers (by arch, in order).
    pub fn from_table(table: &toml::Table, teachers: &[String]) -> Res<Self> {
        let cfg: MultiTeacherConfig = toml::Value::Table(table.clone())
            .try_into()
            .map_err(|e: toml::de::Error| config_err(e.message()))?;
        cfg.validate(teachers)?;
        Ok(cfg)
    }

    fn validate(&self, teachers: &[String]) -> Res<()> {
        let n = teachers.len();
        if n == 0 {
            return Err(config_err("needs at least one teacher in [[teachers]]"));
        }
        if self.temperature.is_nan() || self.temperature <= 0.0 {
            return Err(config_err(format!("temperature must be > 0, got {}", self.temperature)));
        }
        if !(0.0..=1.0).contains(&self.alpha) {
            return Err(config_err(format!("alpha must be in [0, 1], got {}", self.alpha)));
        }
        if !(0.0..1.0).contains(&self.label_smoothing) {
            return Err(config_err(format!(
                "label_smoothing must be in [0, 1), got {}",
                self.label_smoothing
            )));
        }
        if let Some(ts) = &self.teacher_temperatures {
            if ts.len() != n {
                return Err(config_err(format!(
                    "teacher_temperatures has {} values for {n} teachers ({})",
                    ts.len(),
                    teachers.join(", ")
                )));
            }
            if let Some(t) = ts.iter().find(|t| t.is_nan() || **t <= 0.0) {
                return Err(config_err(format!("teacher_temperatures must be > 0, got {t}")));
            }
        }
        if let Some(w) = &self.weights {
            check_weights(w, teachers)?;
        }
        if let Some(name) = &self.single_teacher {
            if !teachers.contains(name) {
                return Err(config_err(format!(
                    "single_teacher `{name}` is not one of the teachers: {}",
                    teachers.join(", ")
                )));
            }
        }
        Ok(())
    }

    /// The per-teacher temperatures, defaulting to the student's.
    pub fn temperatures(&self, n: usize) -> Vec<f64> {
        self.teacher_temperatures.clone().unwrap_or_else(|| vec![self.temperature; n])
    }
}

fn check_weights(w: &[f64], teachers: &[String]) -> Res<()> {
    if w.len() != teachers.len() {
        return Err(config_err(format!(
            "weights has {} values for {} teachers ({}): give one per teacher",
            w.len(),
            teachers.len(),
            teachers.join(", ")
        )));
    }
    if let Some(x) = w.iter().find(|x| !x.is_finite() || **x < 0.0) {
        return Err(config_err(format!("weights must be non-negative, got {x}")));
    }
    let sum: f64 = w.iter().sum();
    if (sum - 1.0).abs() > 1e-6 {
        return Err(config_err(format!("weights must sum to 1, they sum to {sum}")));
    }
    Ok(())
}

/// How the teachers' soft targets are weighted.
#[derive(Debug, Clone, PartialEq)]
pub enum CombinationRule {
    Mean,
    Weighted(Vec<f64>),
    Confidence,
    Entropy,
}

impl CombinationRule {
    /// The rule a recipe variant names (`mean`, `weighted`, `confidence`, `entropy`).
    pub fn for_variant(variant: &str, cfg: &MultiTeacherConfig) -> Res<Self> {
        Ok(match variant {
            "mean" => CombinationRule::Mean,
            "weighted" => CombinationRule::Weighted(
                cfg.weights.clone().ok_or_else(|| config_err("variant `weighted` needs `weights`"))?,
            ),
            "confidence" => CombinationRule::Confidence,
            "entropy" => CombinationRule::Entropy,
            other => return Err(config_err(format!("no combination rule `{other}`"))),
        })
    }

    /// Per-example teacher weights `(batch, N)` for teacher logits (at temperature 1).
    pub fn weights(&self, teacher_logits: &[Tensor], labels: &Tensor) -> Result<Tensor> {
        let n = teacher_logits.len();
        let b = teacher_logits[0].dim(0)?;
        let dev = teacher_logits[0].device();
        match self {
            CombinationRule::Mean => Tensor::full(1f32 / n as f32, (b, n), dev),
            CombinationRule::Weighted(w) => {
                let w: Vec<f32> = w.iter().map(|&x| x as f32).collect();
                Tensor::new(w.as_slice(), dev)?.unsqueeze(0)?.broadcast_as((b, n))?.contiguous()
            }
            CombinationRule::Confidence => {
                if n == 1 {
                    return Tensor::ones((b, 1), DType::F32, dev);
                }
                let idx = labels.to_dtype(DType::U32)?.unsqueeze(1)?;
                let ce = teacher_logits
                    .iter()
                    .map(|t| log_softmax(t, D::Minus1)?.gather(&idx, 1)?.neg())
                    .collect::<Result<Vec<_>>>()?;
                let ce = Tensor::cat(&ce, 1)?;
                ((1.0 - softmax_last_dim(&ce)?)? / (n as f64 - 1.0))?.contiguous()
            }
            CombinationRule::Entropy => {
                let neg_h = teacher_logits
                    .iter()
                    .map(|t| {
                        let logp = log_softmax(t, D::Minus1)?;
                        (logp.exp()? * logp)?.sum_keepdim(D::Minus1)
                    })
                    .collect::<Result<Vec<_>>>()?;
                softmax_last_dim(&Tensor::cat(&neg_h, 1)?)
            }
        }
    }
}

/// The combined target distribution `Σ_n w_n · softmax(t_n / T_n)` and the weights used.
pub fn combined_targets(
    rule: &CombinationRule,
    teacher_logits: &[Tensor],
    temperatures: &[f64],
    labels: &Tensor,
) -> Result<(Tensor, Tensor)> {
    let teacher_logits: Vec<Tensor> = teacher_logits.iter().map(|t| t.detach()).collect();
    let w = rule.weights(&teacher_logits, labels)?;
    let mut p: Option<Tensor> = None;
    for (i, (t, &temp)) in teacher_logits.iter().zip(temperatures).enumerate() {
        let term = soft_targets(t, temp)?.broadcast_mul(&w.narrow(1, i, 1)?)?;
        p = Some(match p {
            None => term,
            Some(acc) => (acc + term)?,
        });
    }
    Ok((p.expect("at least one teacher"), w))
}

/// The multi-teacher loss on logits.
#[derive(Debug, Clone, PartialEq)]
pub struct MultiTeacherLoss {
    pub rule: CombinationRule,
    /// One per teacher.
    pub teacher_temperatures: Vec<f64>,
    /// The student's temperature `T` (the `T²` factor uses it).
    pub temperature: f64,
    pub alpha: f64,
    pub label_smoothing: f64,
}

/// The terms of one multi-teacher loss evaluation.
pub struct MultiTeacherTerms {
    pub total: Tensor,
    pub ce: Tensor,
    /// `T²·KL(p ‖ softmax(s/T))`, before the `α` weight.
    pub kd: Tensor,
    /// The teacher weights used, `(batch, N)`.
    pub weights: Tensor,
}

impl MultiTeacherLoss {
    pub fn new(rule: CombinationRule, cfg: &MultiTeacherConfig, n_teachers: usize) -> Self {
        Self {
            rule,
            teacher_temperatures: cfg.temperatures(n_teachers),
            temperature: cfg.temperature,
            alpha: cfg.alpha,
            label_smoothing: cfg.label_smoothing,
        }
    }

    pub fn compute(
        &self,
        student: &Tensor,
        teachers: &[Tensor],
        labels: &Tensor,
    ) -> Result<MultiTeacherTerms> {
        let (p, weights) = combined_targets(&self.rule, teachers, &self.teacher_temperatures, labels)?;
        let ce = cross_entropy(student, labels, self.label_smoothing)?;
        let kd = (kl_to_targets(student, &p, self.temperature)? * (self.temperature * self.temperature))?;
        let total = ((&ce * (1.0 - self.alpha))? + (&kd * self.alpha)?)?;
        Ok(MultiTeacherTerms { total, ce, kd, weights })
    }
}

/// Multi-teacher KD as a [`Method`]: one variant per combination rule; evaluates the student.
pub struct MultiTeacherKd {
    variant: String,
    student: Arc<dyn Classifier>,
    teachers: Vec<Box<dyn TeacherLogits>>,
    loss: MultiTeacherLoss,
}

impl MultiTeacherKd {
    /// Refuses teachers whose label space differs from the student's, naming them all.
    pub fn new(
        variant: &str,
        student: Arc<dyn Classifier>,
        teachers: Vec<Box<dyn TeacherLogits>>,
        cfg: &MultiTeacherConfig,
    ) -> Res<Self> {
        check_label_space(student.as_ref(), teachers.iter().map(|t| t.model().as_ref()))?;
        let names: Vec<String> = teachers.iter().map(|t| t.model().arch().to_string()).collect();
        cfg.validate(&names)?;
        let rule = CombinationRule::for_variant(variant, cfg)?;
        Ok(Self {
            variant: variant.to_string(),
            loss: MultiTeacherLoss::new(rule, cfg, teachers.len()),
            student,
            teachers,
        })
    }
}

/// Every teacher must predict the student's classes.
pub fn check_label_space<'a>(
    student: &dyn Classifier,
    teachers: impl Iterator<Item = &'a dyn Classifier>,
) -> Res<()> {
    let k = student.num_classes();
    let all: Vec<(String, usize)> = teachers.map(|t| (t.arch().to_string(), t.num_classes())).collect();
    if all.iter().any(|(_, c)| *c != k) {
        let list: Vec<String> = all.iter().map(|(a, c)| format!("{a}: {c} classes")).collect();
        return Err(MultiTeacherError::LabelSpace(format!(
            "student `{}` predicts {k} classes and the teachers predict {}",
            student.arch(),
            list.join(", ")
        )));
    }
    Ok(())
}

impl Method for MultiTeacherKd {
    fn name(&self) -> &str {
        "multi-teacher"
    }

    fn variant(&self) -> &str {
        &self.variant
    }

    fn losses(&mut self, batch: &Batch, _ctx: &StepContext) -> Result<Losses> {
        let teacher_logits = self.teachers.iter_mut().map(|t| t.logits(batch)).collect::<Result<Vec<_>>>()?;
        let student = self.student.forward(&batch.inputs, Mode::Train)?.logits;
        let terms = self.loss.compute(&student, &teacher_logits, &batch.labels)?;
        let mut parts = vec![("ce".to_string(), terms.ce.detach()), ("kd".to_string(), terms.kd.detach())];
        // The mean weight each teacher got: what the adaptive rules actually did.
        let mean_w = terms.weights.mean(0)?;
        for (i, t) in self.teachers.iter().enumerate() {
            parts.push((format!("w{}.{}", i + 1, t.model().arch()), mean_w.get(i)?));
        }
        Ok(Losses { total: terms.total, parts })
    }

    fn eval_entries(&self) -> Vec<EvalEntry> {
        vec![EvalEntry::of("student", self.student.as_ref())]
    }

    fn eval_logits(&self, inputs: &Tensor) -> Result<Vec<Tensor>> {
        Ok(vec![self.student.forward(inputs, Mode::Eval)?.logits])
    }
}

#[cfg(test)]
mod tests;
