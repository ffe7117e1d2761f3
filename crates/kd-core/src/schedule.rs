//! Learning-rate schedules (per epoch or per step, with linear warm-up) and value schedules for
//! method hyper-parameters (temperature, loss weights) over training progress.

use serde::{Deserialize, Serialize};

/// A learning-rate schedule, as written in recipes (`{ kind = "multistep", ... }`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum LrSchedule {
    Constant {
        #[serde(default)]
        warmup_epochs: f64,
    },
    /// torch MultiStepLR stepped per epoch: `lr = base · gamma^(#milestones ≤ epoch)`.
    Multistep {
        milestones: Vec<usize>,
        gamma: f64,
        #[serde(default)]
        warmup_epochs: f64,
    },
    /// torch CosineAnnealingLR's closed form over all steps, from `base` to `min_lr`.
    Cosine {
        #[serde(default)]
        min_lr: f64,
        #[serde(default)]
        warmup_epochs: f64,
    },
    /// Linear decay to zero after warm-up (BERT fine-tuning).
    Linear {
        #[serde(default)]
        warmup_epochs: f64,
    },
}

impl LrSchedule {
    fn warmup(&self) -> f64 {
        match self {
            LrSchedule::Constant { warmup_epochs }
            | LrSchedule::Multistep { warmup_epochs, .. }
            | LrSchedule::Cosine { warmup_epochs, .. }
            | LrSchedule::Linear { warmup_epochs } => *warmup_epochs,
        }
    }

    /// Learning rate for step `step_in_epoch` of (0-based) `epoch`.
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
        let warm = self.warmup();
        if warm > 0.0 && t < warm {
            // Linear warm-up from base/steps to base, reaching base at `warm` epochs.
            return base_lr * ((t * spe + 1.0) / (warm * spe)).min(1.0);
        }
        let total = total_epochs.max(1) as f64;
        match self {
            LrSchedule::Constant { .. } => base_lr,
            LrSchedule::Multistep { milestones, gamma, .. } => {
                let k = milestones.iter().filter(|&&m| m <= epoch).count();
                base_lr * gamma.powi(k as i32)
            }
            LrSchedule::Cosine { min_lr, .. } => {
                let span = (total - warm).max(1e-12);
                let p = ((t - warm) / span).clamp(0.0, 1.0);
                min_lr + (base_lr - min_lr) * 0.5 * (1.0 + (std::f64::consts::PI * p).cos())
            }
            LrSchedule::Linear { .. } => {
                let span = (total - warm).max(1e-12);
                base_lr * (1.0 - ((t - warm) / span).clamp(0.0, 1.0))
            }
        }
    }
}

/// A hyper-parameter over training progress `p ∈ [0, 1]`. A bare number in a recipe is a
/// constant; a table `{ kind = "linear", start = 1, end = 4 }` one of the others.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ValueSchedule {
    Constant(f64),
    Varying(VaryingSchedule),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum VaryingSchedule {
    Linear {
        start: f64,
        end: f64,
    },
    Cosine {
        start: f64,
        end: f64,
    },
    /// `values[i]` from `boundaries[i-1]` (progress) on; `values.len() == boundaries.len() + 1`.
    Step {
        values: Vec<f64>,
        boundaries: Vec<f64>,
    },
}

impl ValueSchedule {
    pub fn at(&self, progress: f64) -> f64 {
        let p = progress.clamp(0.0, 1.0);
        match self {
            ValueSchedule::Constant(v) => *v,
            ValueSchedule::Varying(VaryingSchedule::Linear { start, end }) => start + (end - start) * p,
            ValueSchedule::Varying(VaryingSchedule::Cosine { start, end }) => {
                end + (start - end) * 0.5 * (1.0 + (std::f64::consts::PI * p).cos())
            }
            ValueSchedule::Varying(VaryingSchedule::Step { values, boundaries }) => {
                let k = boundaries.iter().filter(|&&b| b <= p).count();
                values[k.min(values.len().saturating_sub(1))]
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multistep_matches_torch_per_epoch() {
        let s = LrSchedule::Multistep { milestones: vec![150, 180, 210], gamma: 0.1, warmup_epochs: 0.0 };
        let lr = |e| s.lr_at(0.05, e, 0, 100, 240);
        assert_eq!(lr(0), 0.05);
        assert_eq!(lr(149), 0.05);
        assert!((lr(150) - 0.005).abs() < 1e-12);
        assert!((lr(180) - 0.0005).abs() < 1e-12);
        assert!((lr(239) - 0.00005).abs() < 1e-12);
    }

    #[test]
    fn cosine_and_linear_hit_their_end_points() {
        let c = LrSchedule::Cosine { min_lr: 0.001, warmup_epochs: 0.0 };
        assert_eq!(c.lr_at(0.1, 0, 0, 10, 5), 0.1);
        assert!((c.lr_at(0.1, 5, 0, 10, 5) - 0.001).abs() < 1e-12);
        assert!((c.lr_at(0.1, 2, 5, 10, 5) - (0.001 + 0.099 * 0.5)).abs() < 1e-12, "midpoint");
        let l = LrSchedule::Linear { warmup_epochs: 1.0 };
        assert!((l.lr_at(1.0, 0, 9, 10, 3) - 1.0).abs() < 1e-12, "warm-up reaches base");
        assert!((l.lr_at(1.0, 0, 0, 10, 3) - 0.1).abs() < 1e-12, "warm-up starts at base/steps");
        assert!(l.lr_at(1.0, 3, 0, 10, 3).abs() < 1e-12);
    }

    #[test]
    fn value_schedules_parse_and_hit_end_points() {
        #[derive(Deserialize)]
        struct W {
            t: ValueSchedule,
        }
        let c: W = toml::from_str("t = 4.0").unwrap();
        assert_eq!(c.t.at(0.3), 4.0);
        let l: W = toml::from_str("t = { kind = \"linear\", start = 1.0, end = 4.0 }").unwrap();
        assert_eq!((l.t.at(0.0), l.t.at(1.0), l.t.at(0.5)), (1.0, 4.0, 2.5));
        let k: W = toml::from_str("t = { kind = \"cosine\", start = 8.0, end = 2.0 }").unwrap();
        assert!((k.t.at(0.0) - 8.0).abs() < 1e-12 && (k.t.at(1.0) - 2.0).abs() < 1e-12);
        let s: W =
            toml::from_str("t = { kind = \"step\", values = [1.0, 2.0, 3.0], boundaries = [0.5, 0.75] }")
                .unwrap();
        assert_eq!((s.t.at(0.0), s.t.at(0.5), s.t.at(0.8), s.t.at(1.0)), (1.0, 2.0, 3.0, 3.0));
    }
}
