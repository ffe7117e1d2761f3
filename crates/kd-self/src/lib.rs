//! Self-distillation across the stages of one network, "Be Your Own Teacher" (BYOT; Zhang,
//! Song, Gao, Chen, Bao & Ma, ICCV 2019): a classifier is attached after every stage of a
//! backbone ([`kd_models::MultiExitNet`]) and the deepest classifier teaches the shallow ones.
//! For `k` exits, shallowest first, the loss of one batch is
//!
//! ```text
//! Σ_{i<k} [ (1-α)·CE(y, z_i) + α·T²·KL(softmax(z_k/T) ‖ softmax(z_i/T)) + λ·‖F_i − F_k‖² ]
//!   + w·CE(y, z_k)                      (w = 1-α by default, as in the paper and re-implementation)
//! ```
//!
//! with `z_i` the logits and `F_i` the pooled features of exit `i`. Conventions, all as the
//! published re-implementation (luanyunteng/pytorch-be-your-own-teacher, `train.py`) does:
//!
//! - the deepest exit's logits and features are *detached* as targets (`detach_teacher = true`),
//!   so only the cross-entropy trains the deepest classifier;
//! - the KL is summed over classes and averaged over the batch, times `T²`. The
//!   re-implementation computes the soft cross-entropy `-Σ p_k log p_i` instead, which differs
//!   from the KL by the targets' entropy: the same gradient for a detached teacher;
//! - the feature term `‖F_i − F_k‖²` is summed over the batch and the feature dimensions
//!   (`feature_reduction = "sum"`), which is what makes the re-implementation's λ = 1e-6 a
//!   sensible weight; its mask `(F_i > 0) | (F_k > 0)` is a no-op on pooled ReLU features;
//! - the deepest exit's cross-entropy is weighted `1-α` like the shallow ones' (the paper's
//!   sum over all classifiers, whose KL and feature terms vanish for the deepest).
//!
//! Evaluation reports every exit (`exit-1` … `exit-k`, `exit-k` the deepest) and the ensemble
//! of all exits (the mean of their softmax probabilities) as separate models.

pub mod factory;
use std::sync::Arc;

use candle_core::{Result, Tensor, D};
use candle_nn::ops::{log_softmax, softmax_last_dim};
use kd_core::losses::cross_entropy;
use kd_core::{Batch, Classifier, EvalEntry, Losses, Method, Mode, StepContext};
use kd_models::MultiExitNet;
use serde::{Deserialize, Serialize};

/// How the feature term reduces `(F_i − F_k)²`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum FeatureReduction {
    /// Summed over the batch and the feature dimensions (the re-implementation's).
    #[default]
    Sum,
    /// Summed over feature dimensions, averaged over the batch.
    Batchmean,
}

fn default_alpha() -> f64 {
    0.1
}
fn default_temperature() -> f64 {
    3.0
}
fn default_feature_weight() -> f64 {
    1e-6
}
fn default_true() -> bool {
    true
}

/// Hyper-parameters of `[distill]` for `method = "self"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SelfDistillConfig {
    /// `α`: weight of the soft-target term; `1-α` weighs each exit's cross-entropy.
    #[serde(default = "default_alpha")]
    pub alpha: f64,
    /// Softmax temperature `T` of the soft targets.
    #[serde(default = "default_temperature")]
    pub temperature: f64,
    /// `λ`: weight of the feature (hint) term (the re-implementation's `beta`).
    #[serde(default = "default_feature_weight")]
    pub feature_weight: f64,
    #[serde(default)]
    pub feature_reduction: FeatureReduction,
    /// Whether the deepest exit's logits and features are constants in the shallow exits'
    /// terms (true in the re-implementation).
    #[serde(default = "default_true")]
    pub detach_teacher: bool,
    /// Weight of the deepest exit's cross-entropy; `1-α` when absent.
    #[serde(default)]
    pub deepest_ce_weight: Option<f64>,
    /// Number of exits the recipe expects; must equal the backbone's stage count when given.
    #[serde(default)]
    pub exits: Option<usize>,
}

#[derive(Debug, thiserror::Error)]
pub enum SelfDistillError {
    #[error("[distill] for method `self`: {0}")]
    Config(String),
    #[error(
        "[distill] exits = {requested}, but student `{arch}` has {stages} stages, so its multi-exit network has {stages} exits (one after each stage)"
    )]
    Exits { arch: String, stages: usize, requested: usize },
    #[error("student `{arch}`: {source}")]
    Model {
        arch: String,
        #[source]
        source: kd_models::ModelError,
    },
}

impl SelfDistillConfig {
    /// Parses and validates the recipe's `[distill]` table.
    pub fn from_table(table: &toml::Table) -> std::result::Result<Self, SelfDistillError> {
        let cfg: SelfDistillConfig = toml::Value::Table(table.clone())
            .try_into()
            .map_err(|e: toml::de::Error| SelfDistillError::Config(e.message().to_string()))?;
        let bad = |m: String| Err(SelfDistillError::Config(m));
        if cfg.temperature.is_nan() || cfg.temperature <= 0.0 {
            return bad(format!("temperature must be > 0, got {}", cfg.temperature));
        }
        if !(0.0..=1.0).contains(&cfg.alpha) {
            return bad(format!("alpha must be in [0, 1], got {}", cfg.alpha));
        }
        if cfg.feature_weight.is_nan() || cfg.feature_weight < 0.0 {
            return bad(format!("feature_weight must be >= 0, got {}", cfg.feature_weight));
        }
        if let Some(w) = cfg.deepest_ce_weight {
            if w.is_nan() || w < 0.0 {
                return bad(format!("deepest_ce_weight must be >= 0, got {w}"));
            }
        }
        if cfg.exits == Some(0) {
            return bad("exits must be at least 1".into());
        }
        Ok(cfg)
    }

    /// The number of exits of `arch`'s multi-exit network; refuses an `exits` it cannot have.
    pub fn check_backbone(&self, arch: &str) -> std::result::Result<usize, SelfDistillError> {
        let stages = kd_models::multi_exit::stage_count(arch)
            .map_err(|source| SelfDistillError::Model { arch: arch.to_string(), source })?;
        match self.exits {
            Some(requested) if requested != stages => {
                Err(SelfDistillError::Exits { arch: arch.to_string(), stages, requested })
            }
            _ => Ok(stages),
        }
    }
}

/// The BYOT loss over the exits' logits and features.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ByotLoss {
    pub alpha: f64,
    pub temperature: f64,
    pub feature_weight: f64,
    pub feature_reduction: FeatureReduction,
    pub detach_teacher: bool,
    pub deepest_ce_weight: f64,
}

/// The terms of one evaluation of [`ByotLoss`], unweighted, per exit.
pub struct ByotTerms {
    pub total: Tensor,
    /// `CE(y, z_i)` for every exit, deepest last.
    pub ce: Vec<Tensor>,
    /// `T²·KL(softmax(z_k/T) ‖ softmax(z_i/T))` for every shallow exit.
    pub kd: Vec<Tensor>,
    /// `‖F_i − F_k‖²` (reduced) for every shallow exit.
    pub feature: Vec<Tensor>,
}

impl ByotLoss {
    pub fn new(cfg: &SelfDistillConfig) -> Self {
        Self {
            alpha: cfg.alpha,
            temperature: cfg.temperature,
            feature_weight: cfg.feature_weight,
            feature_reduction: cfg.feature_reduction,
            detach_teacher: cfg.detach_teacher,
            deepest_ce_weight: cfg.deepest_ce_weight.unwrap_or(1.0 - cfg.alpha),
        }
    }

    /// `T²·KL(softmax(teacher/T) ‖ softmax(student/T))`, summed over classes, batch mean.
    /// Gradients reach the teacher unless it was detached by the caller.
    pub fn soft_kl(&self, student: &Tensor, teacher: &Tensor) -> Result<Tensor> {
        let t = self.temperature;
        let log_pt = log_softmax(&(teacher / t)?, D::Minus1)?;
        // exp of the log-probabilities, not `softmax_last_dim`: that fused op has no backward
        // pass, and an attached teacher must receive this term's gradient.
        let pt = log_pt.exp()?;
        let log_ps = log_softmax(&(student / t)?, D::Minus1)?;
        (pt * (log_pt - log_ps)?)?.sum(D::Minus1)?.mean_all()? * (t * t)
    }

    /// `Σ (F_i − F_k)²` over the batch and features (or its batch mean).
    pub fn feature_distance(&self, student: &Tensor, teacher: &Tensor) -> Result<Tensor> {
        let sq = (student - teacher)?.sqr()?;
        match self.feature_reduction {
            FeatureReduction::Sum => sq.sum_all(),
            FeatureReduction::Batchmean => sq.sum_all()? / student.dim(0)? as f64,
        }
    }

    /// The loss of one batch from every exit's logits and features (shallowest first).
    pub fn compute(&self, logits: &[Tensor], features: &[Tensor], labels: &Tensor) -> Result<ByotTerms> {
        if logits.is_empty() || logits.len() != features.len() {
            candle_core::bail!(
                "self-distillation needs one feature per exit, got {} logits and {} features",
                logits.len(),
                features.len()
            );
        }
        let k = logits.len();
        let (deep_logits, deep_feature) = if self.detach_teacher {
            (logits[k - 1].detach(), features[k - 1].detach())
        } else {
            (logits[k - 1].clone(), features[k - 1].clone())
        };
        let ce = logits.iter().map(|z| cross_entropy(z, labels, 0.0)).collect::<Result<Vec<_>>>()?;
        let mut total = (&ce[k - 1] * self.deepest_ce_weight)?;
        let mut kd = Vec::with_capacity(k - 1);
        let mut feature = Vec::with_capacity(k - 1);
        for i in 0..k - 1 {
            let kl = self.soft_kl(&logits[i], &deep_logits)?;
            let fd = self.feature_distance(&features[i], &deep_feature)?;
            total = (total
                + (&ce[i] * (1.0 - self.alpha))?
                + (&kl * self.alpha)?
                + (&fd * self.feature_weight)?)?;
            kd.push(kl);
            feature.push(fd);
        }
        Ok(ByotTerms { total, ce, kd, feature })
    }
}

/// Mean of the exits' softmax probabilities, as log-probabilities (valid logits whose softmax
/// is the mean).
pub fn ensemble_log_probs(logits: &[Tensor]) -> Result<Tensor> {
    let probs = logits.iter().map(softmax_last_dim).collect::<Result<Vec<_>>>()?;
    let mean = (Tensor::stack(&probs, 0)?.sum(0)? / probs.len() as f64)?;
    mean.clamp(1e-30, 1.0)?.log()
}

/// BYOT self-distillation as a [`Method`]: variant `byot`, evaluates every exit and the
/// ensemble of all exits.
pub struct SelfDistill {
    model: Arc<MultiExitNet>,
    loss: ByotLoss,
}

impl SelfDistill {
    pub fn new(
        model: Arc<MultiExitNet>,
        cfg: &SelfDistillConfig,
    ) -> std::result::Result<Self, SelfDistillError> {
        if let Some(requested) = cfg.exits {
            if requested != model.num_exits() {
                return Err(SelfDistillError::Exits {
                    arch: model.backbone().arch().to_string(),
                    stages: model.num_exits(),
                    requested,
                });
            }
        }
        Ok(Self { model, loss: ByotLoss::new(cfg) })
    }

    /// `exit-1` … `exit-k`, then `ensemble`.
    pub fn roles(exits: usize) -> Vec<String> {
        (1..=exits).map(|i| format!("exit-{i}")).chain(std::iter::once("ensemble".to_string())).collect()
    }
}

impl Method for SelfDistill {
    fn name(&self) -> &str {
        "self"
    }

    fn variant(&self) -> &str {
        "byot"
    }

    fn losses(&mut self, batch: &Batch, _ctx: &StepContext) -> Result<Losses> {
        let out = self.model.forward_exits(&batch.inputs, Mode::Train)?;
        let terms = self.loss.compute(&out.logits, &out.features, &batch.labels)?;
        let mut parts: Vec<(String, Tensor)> =
            terms.ce.iter().enumerate().map(|(i, ce)| (format!("ce-exit-{}", i + 1), ce.detach())).collect();
        if !terms.kd.is_empty() {
            parts.push(("kd".into(), Tensor::stack(&terms.kd, 0)?.sum(0)?.detach()));
            parts.push(("feature".into(), Tensor::stack(&terms.feature, 0)?.sum(0)?.detach()));
        }
        Ok(Losses { total: terms.total, parts })
    }

    fn eval_entries(&self) -> Vec<EvalEntry> {
        let arch = self.model.arch().to_string();
        let params = self.model.exit_params();
        Self::roles(self.model.num_exits())
            .into_iter()
            .enumerate()
            .map(|(i, role)| EvalEntry {
                role,
                model: arch.clone(),
                params: params.get(i).copied().unwrap_or(self.model.num_params()),
            })
            .collect()
    }

    fn eval_logits(&self, inputs: &Tensor) -> Result<Vec<Tensor>> {
        let out = self.model.forward_exits(inputs, Mode::Eval)?;
        let ensemble = ensemble_log_probs(&out.logits)?;
        let mut logits = out.logits;
        logits.push(ensemble);
        Ok(logits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    // Golden values from an independent pure-Python computation (no framework), 3 exits,
    // batch 2, 4 classes, 3 feature dimensions, T = 3, α = 0.1, λ = 0.01:
    //
    //   def lsm(z,T=1.0):
    //       zz=[x/T for x in z]; m=max(zz); l=math.log(sum(math.exp(x-m) for x in zz))+m
    //       return [x-l for x in zz]
    //   ce(z) = mean_n -lsm(z[n])[y[n]]
    //   kl(s,t) = T*T * mean_n sum_c exp(lsm(t[n],T)[c]) * (lsm(t[n],T)[c] - lsm(s[n],T)[c])
    //   feat(f,g) = sum over batch and dims (f-g)^2         ('batchmean': / batch)
    //   total = wdeep*ce(L[2]) + sum_{i<2} (1-a)*ce(L[i]) + a*kl(L[i],L[2]) + lam*feat(F[i],F[2])
    //   gradients: central differences of total, h = 1e-6, with the deepest exit not detached
    //   (detached: the deepest logits' gradient is (1-a)/N·(softmax - onehot) in closed form).
    const L: [[[f32; 4]; 2]; 3] = [
        [[1.0, -0.5, 2.0, 0.3], [0.2, 0.1, -1.0, 3.0]],
        [[0.5, 0.5, 1.0, -1.0], [-0.3, 0.8, 0.0, 1.2]],
        [[2.0, 0.0, 3.5, -1.0], [1.0, 0.5, -0.5, 2.0]],
    ];
    const F: [[[f32; 3]; 2]; 3] = [
        [[0.5, 1.0, 0.0], [2.0, 0.0, 1.5]],
        [[1.0, 0.2, 0.3], [0.0, 0.4, 2.5]],
        [[0.8, 0.9, 0.1], [1.5, 0.5, 2.0]],
    ];
    const CE: [f32; 3] = [0.308_042_87, 0.819_876_4, 0.374_650_8];
    const KD: [f32; 2] = [0.361_606_34, 0.473_186_7];
    const FEAT_SUM: [f32; 2] = [0.86, 3.08];
    const TOTAL_SUM: f32 = 1.475_192_4;
    const TOTAL_BATCHMEAN_W1: f32 = 1.492_957_5;
    const GRAD_DEEP_ATTACHED: [[f64; 4]; 2] = [
        [0.080245955, -0.007004133, -0.057702251, -0.015539571],
        [0.119795902, 0.055668488, 0.018176348, -0.193640737],
    ];
    const GRAD_DEEP_DETACHED: [[f64; 4]; 2] = [
        [0.079409736, 0.010746939, -0.094110253, 0.003953578],
        [0.098945839, 0.060013685, 0.022077801, -0.181037324],
    ];
    const GRAD_EXIT1: [[f64; 4]; 2] = [
        [0.098440154, 0.024787923, -0.189256152, 0.066028075],
        [0.014107539, 0.016845595, 0.003036557, -0.033989691],
    ];

    fn loss(detach: bool) -> ByotLoss {
        ByotLoss {
            alpha: 0.1,
            temperature: 3.0,
            feature_weight: 0.01,
            feature_reduction: FeatureReduction::Sum,
            detach_teacher: detach,
            deepest_ce_weight: 0.9,
        }
    }

    fn vars() -> (Vec<Var>, Vec<Var>, Tensor) {
        let dev = Device::Cpu;
        let l = L.iter().map(|x| Var::new(x, &dev).unwrap()).collect();
        let f = F.iter().map(|x| Var::new(x, &dev).unwrap()).collect();
        (l, f, Tensor::new(&[2u32, 3], &dev).unwrap())
    }

    fn tensors(v: &[Var]) -> Vec<Tensor> {
        v.iter().map(|v| v.as_tensor().clone()).collect()
    }

    fn scalar(t: &Tensor) -> f32 {
        t.to_scalar::<f32>().unwrap()
    }

    fn assert_grad(got: &Tensor, want: &[[f64; 4]; 2], what: &str) {
        let g = got.to_vec2::<f32>().unwrap();
        for (row, w) in g.iter().zip(want) {
            for (a, b) in row.iter().zip(w) {
                assert!((*a as f64 - b).abs() < 2e-6, "{what}: {a} vs {b}");
            }
        }
    }

    #[test]
    fn byot_loss_matches_golden_values() {
        let (l, f, y) = vars();
        let t = loss(true).compute(&tensors(&l), &tensors(&f), &y).unwrap();
        for (got, want) in t.ce.iter().zip(CE) {
            assert!((scalar(got) - want).abs() < 1e-5, "ce {} vs {want}", scalar(got));
        }
        for (got, want) in t.kd.iter().zip(KD) {
            assert!((scalar(got) - want).abs() < 1e-5, "kd {} vs {want}", scalar(got));
        }
        for (got, want) in t.feature.iter().zip(FEAT_SUM) {
            assert!((scalar(got) - want).abs() < 1e-5, "feature {} vs {want}", scalar(got));
        }
        assert!((scalar(&t.total) - TOTAL_SUM).abs() < 1e-5, "total {}", scalar(&t.total));
        // Batch-mean features and a deepest-CE weight of 1.
        let mut other = loss(true);
        other.feature_reduction = FeatureReduction::Batchmean;
        other.deepest_ce_weight = 1.0;
        let t = other.compute(&tensors(&l), &tensors(&f), &y).unwrap();
        assert!((scalar(&t.total) - TOTAL_BATCHMEAN_W1).abs() < 1e-5, "total {}", scalar(&t.total));
    }

    #[test]
    fn detached_teacher_is_trained_by_its_cross_entropy_only() {
        let (l, f, y) = vars();
        let t = loss(true).compute(&tensors(&l), &tensors(&f), &y).unwrap();
        let g = t.total.backward().unwrap();
        assert_grad(g.get(l[2].as_tensor()).unwrap(), &GRAD_DEEP_DETACHED, "deepest logits");
        // The deepest features only appear as targets: no gradient at all.
        assert!(g.get(f[2].as_tensor()).is_none());
        // The shallow exits get the same gradient whether or not the teacher is detached.
        assert_grad(g.get(l[0].as_tensor()).unwrap(), &GRAD_EXIT1, "exit-1 logits");
        // 2λ(F_1 − F_3), in closed form.
        let g1 = g.get(f[0].as_tensor()).unwrap().to_vec2::<f32>().unwrap();
        let want = [[-0.006f32, 0.002, -0.002], [0.01, -0.01, -0.01]];
        for (a, b) in g1.iter().flatten().zip(want.iter().flatten()) {
            assert!((a - b).abs() < 1e-6, "exit-1 features {a} vs {b}");
        }
    }

    #[test]
    fn attached_teacher_receives_the_distillation_gradients() {
        let (l, f, y) = vars();
        let t = loss(false).compute(&tensors(&l), &tensors(&f), &y).unwrap();
        assert!((scalar(&t.total) - TOTAL_SUM).abs() < 1e-5, "same value either way");
        let g = t.total.backward().unwrap();
        assert_grad(g.get(l[2].as_tensor()).unwrap(), &GRAD_DEEP_ATTACHED, "deepest logits");
        assert_grad(g.get(l[0].as_tensor()).unwrap(), &GRAD_EXIT1, "exit-1 logits");
        // 2λ·Σ_i (F_3 − F_i) = 2λ(2F_3 − F_1 − F_2).
        let g3 = g.get(f[2].as_tensor()).unwrap().to_vec2::<f32>().unwrap();
        let want = [[0.002f32, 0.012, -0.002], [0.02, 0.012, 0.0]];
        for (a, b) in g3.iter().flatten().zip(want.iter().flatten()) {
            assert!((a - b).abs() < 1e-6, "deepest features {a} vs {b}");
        }
    }

    #[test]
    fn one_exit_is_plain_cross_entropy() {
        let (l, f, y) = vars();
        let mut one = loss(true);
        one.deepest_ce_weight = 1.0;
        let t = one.compute(&tensors(&l[2..]), &tensors(&f[2..]), &y).unwrap();
        assert!((scalar(&t.total) - CE[2]).abs() < 1e-6);
        assert!(t.kd.is_empty() && t.feature.is_empty());
    }

    #[test]
    fn ensemble_is_the_mean_of_exit_probabilities() {
        // Two exits over two classes: p = softmax([0, ln 3]) = [.25, .75] and [.75, .25]
        // average to [.5, .5]; a third exit [1, 0] gives [(.25+.75+1)/3, (.75+.25)/3].
        let dev = Device::Cpu;
        let a = Tensor::new(&[[0f32, 3f32.ln()]], &dev).unwrap();
        let b = Tensor::new(&[[3f32.ln(), 0.0]], &dev).unwrap();
        let m = ensemble_log_probs(&[a.clone(), b.clone()]).unwrap().exp().unwrap().to_vec2::<f32>().unwrap();
        assert!((m[0][0] - 0.5).abs() < 1e-6 && (m[0][1] - 0.5).abs() < 1e-6, "{m:?}");
        let c = Tensor::new(&[[30f32, 0.0]], &dev).unwrap();
        let m = ensemble_log_probs(&[a, b, c]).unwrap().exp().unwrap().to_vec2::<f32>().unwrap();
        assert!((m[0][0] - 2.0 / 3.0).abs() < 1e-6 && (m[0][1] - 1.0 / 3.0).abs() < 1e-6, "{m:?}");
    }

    #[test]
    fn config_defaults_unknown_keys_and_bad_values() {
        let empty = toml::Table::new();
        let cfg = SelfDistillConfig::from_table(&empty).unwrap();
        assert_eq!((cfg.alpha, cfg.temperature, cfg.feature_weight), (0.1, 3.0, 1e-6));
        assert!(cfg.detach_teacher);
        assert_eq!(cfg.feature_reduction, FeatureReduction::Sum);
        assert!((ByotLoss::new(&cfg).deepest_ce_weight - 0.9).abs() < 1e-12);
        let typo: toml::Table = toml::from_str("alpha = 0.1\ntemprature = 3").unwrap();
        let e = SelfDistillConfig::from_table(&typo).unwrap_err().to_string();
        assert!(e.contains("temprature"), "{e}");
        let bad: toml::Table = toml::from_str("alpha = 1.5").unwrap();
        assert!(SelfDistillConfig::from_table(&bad).unwrap_err().to_string().contains("alpha"));
        let red: toml::Table = toml::from_str("feature_reduction = \"mean\"").unwrap();
        assert!(SelfDistillConfig::from_table(&red).is_err());
    }

    #[test]
    fn exit_count_must_match_the_backbone() {
        let four: toml::Table = toml::from_str("exits = 4").unwrap();
        let cfg = SelfDistillConfig::from_table(&four).unwrap();
        assert_eq!(cfg.check_backbone("resnet18").unwrap(), 4);
        let e = cfg.check_backbone("resnet20").unwrap_err().to_string();
        assert!(e.contains("exits = 4") && e.contains("resnet20") && e.contains("3 stages"), "{e}");
        let any = SelfDistillConfig::from_table(&toml::Table::new()).unwrap();
        assert_eq!(any.check_backbone("resnet56").unwrap(), 3);
        assert!(any.check_backbone("vgg13").unwrap_err().to_string().contains("vgg13"));
    }
}
