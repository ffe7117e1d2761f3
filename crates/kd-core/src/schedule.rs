//! Learning-rate schedules (per epoch or per step, with linear warm-up) and value schedules for
//! method hyper-parameters (temperature, loss weights) over training progress.

use std::f64::consts::PI;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::ser::Serializer;
use serde::{Deserialize, Serialize};

use crate::method::StepContext;

/// A learning-rate schedule, as written in recipes (`{ kind = "multistep", ... }`).
///
/// Every kind takes an optional linear warm-up over `warmup_epochs` (fractional allowed),
/// applied per step: step `s` (0-based, counted over the whole run) of a warm-up `W` steps long
/// gets `base · (s + 1) / W`, so the last warm-up step reaches `base`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum LrSchedule {
    Constant {
        #[serde(default)]
        warmup_epochs: f64,
    },
    /// torch MultiStepLR stepped per epoch: `lr = base · gamma^(#milestones ≤ epoch)`
    /// (a milestone listed twice counts twice, as in torch).
    Multistep {
        milestones: Vec<usize>,
        gamma: f64,
        #[serde(default)]
        warmup_epochs: f64,
    },
    /// torch CosineAnnealingLR's closed form stepped per optimiser step: from `base` after the
    /// warm-up to `min_lr` at the end of training.
    Cosine {
        #[serde(default)]
        min_lr: f64,
        #[serde(default)]
        warmup_epochs: f64,
    },
    /// torch CosineAnnealingLR stepped once per epoch (`T_max` = epochs after the warm-up):
    /// the rate is constant within an epoch.
    #[serde(rename = "cosine-per-epoch")]
    CosinePerEpoch {
        #[serde(default)]
        min_lr: f64,
        #[serde(default)]
        warmup_epochs: f64,
    },
    /// Linear decay to zero at the end of training after the warm-up (BERT fine-tuning,
    /// Hugging Face's `get_linear_schedule_with_warmup`).
    Linear {
        #[serde(default)]
        warmup_epochs: f64,
    },
}

impl LrSchedule {
    pub fn warmup_epochs(&self) -> f64 {
        match self {
            LrSchedule::Constant { warmup_epochs }
            | LrSchedule::Multistep { warmup_epochs, .. }
            | LrSchedule::Cosine { warmup_epochs, .. }
            | LrSchedule::CosinePerEpoch { warmup_epochs, .. }
            | LrSchedule::Linear { warmup_epochs } => *warmup_epochs,
        }
    }

    /// Checks the values serde cannot: finite, non-negative warm-up, positive `gamma`,
    /// non-negative `min_lr`. The message names the field.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let warm = self.warmup_epochs();
        if !(warm.is_finite() && warm >= 0.0) {
            return Err(format!("warmup_epochs must be a finite number ≥ 0, got {warm}"));
        }
        match self {
            LrSchedule::Multistep { gamma, .. } if !(gamma.is_finite() && *gamma > 0.0) => {
                Err(format!("gamma must be a finite number > 0, got {gamma}"))
            }
            LrSchedule::Cosine { min_lr, .. } | LrSchedule::CosinePerEpoch { min_lr, .. }
                if !(min_lr.is_finite() && *min_lr >= 0.0) =>
            {
                Err(format!("min_lr must be a finite number ≥ 0, got {min_lr}"))
            }
            _ => Ok(()),
        }
    }

    /// Learning rate for step `step_in_epoch` (0-based) of the 0-based `epoch`.
    pub fn lr_at(
        &self,
        base_lr: f64,
        epoch: usize,
        step_in_epoch: usize,
        steps_per_epoch: usize,
        total_epochs: usize,
    ) -> f64 {
        let spe = steps_per_epoch.max(1) as f64;
        let t = epoch as f64 + step_in_epoch as f64 / spe; // epochs elapsed, fractional
        let warm = self.warmup_epochs();
        if warm > 0.0 && t < warm {
            return base_lr * ((t * spe + 1.0) / (warm * spe)).min(1.0);
        }
        let total = total_epochs.max(1) as f64;
        // Progress through the part of training after the warm-up, in [0, 1].
        let after_warmup = |t: f64| ((t - warm) / (total - warm).max(1e-12)).clamp(0.0, 1.0);
        let cosine = |min_lr: f64, p: f64| min_lr + (base_lr - min_lr) * 0.5 * (1.0 + (PI * p).cos());
        match self {
            LrSchedule::Constant { .. } => base_lr,
            LrSchedule::Multistep { milestones, gamma, .. } => {
                let k = milestones.iter().filter(|&&m| m <= epoch).count();
                base_lr * gamma.powi(i32::try_from(k).unwrap_or(i32::MAX))
            }
            LrSchedule::Cosine { min_lr, .. } => cosine(*min_lr, after_warmup(t)),
            LrSchedule::CosinePerEpoch { min_lr, .. } => cosine(*min_lr, after_warmup(epoch as f64)),
            LrSchedule::Linear { .. } => base_lr * (1.0 - after_warmup(t)),
        }
    }
}

/// A hyper-parameter over training progress `p ∈ [0, 1]`. In a recipe a bare number is a
/// constant and a table one of the others: `{ kind = "linear", start = 1, end = 4 }`,
/// `{ kind = "cosine", start = 8, end = 2 }`, `{ kind = "step", values = [1, 2, 3],
/// boundaries = [0.5, 0.75] }`.
#[derive(Debug, Clone, PartialEq)]
pub enum ValueSchedule {
    Constant(f64),
    /// Straight line from `start` (p = 0) to `end` (p = 1).
    Linear {
        start: f64,
        end: f64,
    },
    /// Half cosine from `start` (p = 0) to `end` (p = 1).
    Cosine {
        start: f64,
        end: f64,
    },
    /// `values[i]` from progress `boundaries[i-1]` on (`values[0]` before the first boundary);
    /// `values.len() == boundaries.len() + 1`, boundaries ascending in `[0, 1]`.
    Step {
        values: Vec<f64>,
        boundaries: Vec<f64>,
    },
}

impl ValueSchedule {
    /// The value at training progress `progress` (clamped to `[0, 1]`).
    pub fn at(&self, progress: f64) -> f64 {
        let p = if progress.is_nan() { 0.0 } else { progress.clamp(0.0, 1.0) };
        match self {
            ValueSchedule::Constant(v) => *v,
            ValueSchedule::Linear { start, end } => start + (end - start) * p,
            ValueSchedule::Cosine { start, end } => end + (start - end) * 0.5 * (1.0 + (PI * p).cos()),
            ValueSchedule::Step { values, boundaries } => {
                let k = boundaries.iter().filter(|&&b| b <= p).count();
                values.get(k).or(values.last()).copied().unwrap_or(f64::NAN)
            }
        }
    }

    /// The value at the point of training `ctx` describes.
    pub fn at_step(&self, ctx: &StepContext) -> f64 {
        self.at(ctx.progress())
    }

    /// Checks what a recipe could get wrong; the message says which part.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let finite = |name: &str, v: f64| {
            if v.is_finite() {
                Ok(())
            } else {
                Err(format!("{name} must be finite, got {v}"))
            }
        };
        match self {
            ValueSchedule::Constant(v) => finite("value", *v),
            ValueSchedule::Linear { start, end } | ValueSchedule::Cosine { start, end } => {
                finite("start", *start)?;
                finite("end", *end)
            }
            ValueSchedule::Step { values, boundaries } => {
                if values.len() != boundaries.len() + 1 {
                    return Err(format!(
                        "a step schedule needs one more value than boundaries, got {} values and {} boundaries",
                        values.len(),
                        boundaries.len()
                    ));
                }
                for v in values {
                    finite("values", *v)?;
                }
                if boundaries.iter().any(|b| !(0.0..=1.0).contains(b)) {
                    return Err(format!("boundaries are training progress in [0, 1], got {boundaries:?}"));
                }
                if boundaries.windows(2).any(|w| w[0] > w[1]) {
                    return Err(format!("boundaries must be ascending, got {boundaries:?}"));
                }
                Ok(())
            }
        }
    }
}

/// The table form of the non-constant schedules, as recipes write it.
#[derive(Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
enum ScheduleTable {
    Linear { start: f64, end: f64 },
    Cosine { start: f64, end: f64 },
    Step { values: Vec<f64>, boundaries: Vec<f64> },
}

impl Serialize for ValueSchedule {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        let table = match self {
            ValueSchedule::Constant(v) => return serializer.serialize_f64(*v),
            ValueSchedule::Linear { start, end } => ScheduleTable::Linear { start: *start, end: *end },
            ValueSchedule::Cosine { start, end } => ScheduleTable::Cosine { start: *start, end: *end },
            ValueSchedule::Step { values, boundaries } => {
                ScheduleTable::Step { values: values.clone(), boundaries: boundaries.clone() }
            }
        };
        table.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for ValueSchedule {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        struct ScheduleVisitor;

        impl<'de> Visitor<'de> for ScheduleVisitor {
            type Value = ValueSchedule;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a number or a table such as { kind = \"linear\", start = 1, end = 4 }")
            }

            fn visit_f64<E: de::Error>(self, v: f64) -> std::result::Result<ValueSchedule, E> {
                let s = ValueSchedule::Constant(v);
                s.validate().map_err(E::custom)?;
                Ok(s)
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> std::result::Result<ValueSchedule, E> {
                Ok(ValueSchedule::Constant(v as f64))
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> std::result::Result<ValueSchedule, E> {
                Ok(ValueSchedule::Constant(v as f64))
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> std::result::Result<ValueSchedule, A::Error> {
                let table = ScheduleTable::deserialize(de::value::MapAccessDeserializer::new(map))?;
                let s = match table {
                    ScheduleTable::Linear { start, end } => ValueSchedule::Linear { start, end },
                    ScheduleTable::Cosine { start, end } => ValueSchedule::Cosine { start, end },
                    ScheduleTable::Step { values, boundaries } => ValueSchedule::Step { values, boundaries },
                };
                s.validate().map_err(de::Error::custom)?;
                Ok(s)
            }
        }

        deserializer.deserialize_any(ScheduleVisitor)
    }
}

impl From<f64> for ValueSchedule {
    fn from(v: f64) -> Self {
        ValueSchedule::Constant(v)
    }
}
