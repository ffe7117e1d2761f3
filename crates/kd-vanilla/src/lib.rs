//! Hinton knowledge distillation (Hinton, Vinyals & Dean, 2015):
//! `(1-α)·CE(y, s) + α·T²·KL(softmax(t/T) ‖ softmax(s/T))`, the KL summed over classes and
//! averaged over the batch (RepDistiller's `DistillKL` convention).
//!
//! The method sees logits and a batch, never pixels or tokens: the same code distils CIFAR
//! ResNets and GLUE encoders.

pub mod factory;

use std::sync::Arc;

use candle_core::{Result, Tensor};
pub use kd_core::student_kd::{StudentKd, StudentLoss};
use kd_core::teacher::TeacherLogits;
use kd_core::{Classifier, Losses};

/// Hyper-parameters of `[distill]` for `method = "vanilla"` (kd-core's soft-target config,
/// shared with the methods that build on the same loss).
pub use kd_core::losses::SoftTargetConfig as VanillaConfig;
pub use kd_core::losses::{mse, SoftTargetLoss, SoftTargetTerms};

#[derive(Debug, thiserror::Error)]
pub enum VanillaError {
    #[error("[distill] for method `vanilla`: {0}")]
    Config(String),
    #[error(transparent)]
    LabelSpace(#[from] kd_core::student_kd::LabelSpaceError),
    #[error("score distillation needs one-output (regression) models; `{model}` has {outputs} outputs")]
    NotRegression { model: String, outputs: usize },
}

/// Parses and validates the recipe's `[distill]` table for `method = "vanilla"`.
pub fn parse_config(table: &toml::Table) -> std::result::Result<VanillaConfig, VanillaError> {
    let cfg: VanillaConfig = toml::Value::Table(table.clone())
        .try_into()
        .map_err(|e: toml::de::Error| VanillaError::Config(e.message().to_string()))?;
    if cfg.temperature.is_nan() || cfg.temperature <= 0.0 {
        return Err(VanillaError::Config(format!("temperature must be > 0, got {}", cfg.temperature)));
    }
    if !(0.0..=1.0).contains(&cfg.alpha) {
        return Err(VanillaError::Config(format!("alpha must be in [0, 1], got {}", cfg.alpha)));
    }
    if !(0.0..1.0).contains(&cfg.label_smoothing) {
        return Err(VanillaError::Config(format!(
            "label_smoothing must be in [0, 1), got {}",
            cfg.label_smoothing
        )));
    }
    Ok(cfg)
}

/// Vanilla (Hinton) KD on logits: kd-core's one-teacher method with the soft-target loss.
pub type VanillaKd = StudentKd<SoftTargetLoss>;

/// Vanilla KD on regression scores (GLUE STS-B).
pub type VanillaScoreKd = StudentKd<ScoreKdLoss>;

/// Vanilla KD for a regression head (GLUE STS-B): the student's one output is fitted to the
/// gold score and to the teacher's score, `(1-α)·MSE(s, y) + α·MSE(s, t)`, as Tang et al.
/// (2019) distil BERT with an MSE on its outputs. A temperature does not apply to scores (the
/// recipe's `temperature` is ignored here); the teacher's score is a constant.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScoreKdLoss {
    pub alpha: f64,
}

/// The terms of one score-distillation loss evaluation.
pub struct ScoreKdTerms {
    pub total: Tensor,
    /// MSE to the gold scores.
    pub mse: Tensor,
    /// MSE to the teacher's scores, before the `α` weight.
    pub kd: Tensor,
}

impl ScoreKdLoss {
    pub fn compute(&self, student: &Tensor, teacher: &Tensor, scores: &Tensor) -> Result<ScoreKdTerms> {
        let gold = mse(student, scores)?;
        let kd = mse(student, &teacher.detach())?;
        let total = ((&gold * (1.0 - self.alpha))? + (&kd * self.alpha)?)?;
        Ok(ScoreKdTerms { total, mse: gold, kd })
    }
}

impl StudentLoss for ScoreKdLoss {
    fn losses(&self, student: &Tensor, teacher: &Tensor, scores: &Tensor) -> Result<Losses> {
        let terms = self.compute(student, teacher, scores)?;
        Ok(Losses {
            total: terms.total,
            parts: vec![("mse".into(), terms.mse.detach()), ("kd".into(), terms.kd.detach())],
        })
    }
}

/// Score KD of a one-output student from a one-output teacher; refuses other models.
pub fn score_kd(
    student: Arc<dyn Classifier>,
    teacher: Box<dyn TeacherLogits>,
    cfg: &VanillaConfig,
) -> std::result::Result<VanillaScoreKd, VanillaError> {
    for m in [student.as_ref(), teacher.model().as_ref()] {
        if m.num_classes() != 1 {
            return Err(VanillaError::NotRegression {
                model: m.arch().to_string(),
                outputs: m.num_classes(),
            });
        }
    }
    Ok(StudentKd::with_loss(student, teacher, ScoreKdLoss { alpha: cfg.alpha }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    // Golden values from an independent pure-Python computation (no framework):
    //
    //   import math
    //   def softmax(z,T): m=max(z); e=[math.exp((x-m)/T) for x in z]; s=sum(e); return [x/s for x in e]
    //   def logsoftmax(z,T):
    //       zz=[x/T for x in z]; m=max(zz); l=math.log(sum(math.exp(x-m) for x in zz))+m
    //       return [x-l for x in zz]
    //   s=[[1.0,-0.5,2.0,0.3],[0.2,0.1,-1.0,3.0],[-2.0,1.5,0.0,0.5]]
    //   t=[[2.0,0.0,3.5,-1.0],[1.0,0.5,-0.5,2.0],[-1.0,2.5,0.5,0.0]]
    //   y=[2,3,0]; T=4.0; a=0.9
    //   ce=sum(-logsoftmax(s[i],1)[y[i]] for i in range(3))/3
    //   kl=sum(sum(p*(math.log(p)-l) for p,l in zip(softmax(t[i],T),logsoftmax(s[i],T)))
    //          for i in range(3))/3
    //   print(ce, kl*T*T, (1-a)*ce+a*T*T*kl)
    //   # gradient: central differences of the total, h=1e-6 (agrees with the closed form
    //   # (1-a)/N·(softmax(s)-onehot) + a·T/N·(softmax(s/T)-softmax(t/T)) to 1e-9)
    const S: [[f32; 4]; 3] = [[1.0, -0.5, 2.0, 0.3], [0.2, 0.1, -1.0, 3.0], [-2.0, 1.5, 0.0, 0.5]];
    const T: [[f32; 4]; 3] = [[2.0, 0.0, 3.5, -1.0], [1.0, 0.5, -0.5, 2.0], [-1.0, 2.5, 0.5, 0.0]];
    const CE: f32 = 1.533_085_6;
    const KD: f32 = 0.311_834_6;
    const TOTAL: f32 = 0.433_959_7;
    const GRAD: [[f64; 4]; 3] = [
        [-0.017161532, 0.012141958, -0.102651427, 0.107671002],
        [-0.055886612, -0.025732600, -0.025519693, 0.107138905],
        [-0.054704657, -0.032195748, 0.006204234, 0.080696171],
    ];

    fn loss() -> SoftTargetLoss {
        SoftTargetLoss { temperature: 4.0, alpha: 0.9, label_smoothing: 0.0 }
    }

    #[test]
    fn soft_target_loss_matches_golden_values() {
        let dev = Device::Cpu;
        let s = Tensor::new(&S, &dev).unwrap();
        let t = Tensor::new(&T, &dev).unwrap();
        let y = Tensor::new(&[2u32, 3, 0], &dev).unwrap();
        let terms = loss().compute(&s, &t, &y).unwrap();
        let get = |x: &Tensor| x.to_scalar::<f32>().unwrap();
        assert!((get(&terms.ce) - CE).abs() < 1e-5, "ce {}", get(&terms.ce));
        assert!((get(&terms.kd) - KD).abs() < 1e-5, "kd {}", get(&terms.kd));
        assert!((get(&terms.total) - TOTAL).abs() < 1e-5, "total {}", get(&terms.total));
    }

    #[test]
    fn soft_target_loss_gradient_matches_golden_values() {
        let dev = Device::Cpu;
        let s = Var::new(&S, &dev).unwrap();
        let t = Var::new(&T, &dev).unwrap();
        let y = Tensor::new(&[2u32, 3, 0], &dev).unwrap();
        let terms = loss().compute(s.as_tensor(), t.as_tensor(), &y).unwrap();
        let grads = terms.total.backward().unwrap();
        let g = grads.get(s.as_tensor()).unwrap().to_vec2::<f32>().unwrap();
        for (row, want) in g.iter().zip(GRAD.iter()) {
            for (a, b) in row.iter().zip(want.iter()) {
                assert!((*a as f64 - b).abs() < 1e-6, "grad {a} vs {b}");
            }
        }
        // The teacher is a constant: no gradient flows into it.
        assert!(grads.get(t.as_tensor()).is_none());
    }

    #[test]
    fn alpha_zero_is_plain_cross_entropy() {
        let dev = Device::Cpu;
        let s = Tensor::new(&S, &dev).unwrap();
        let t = Tensor::new(&T, &dev).unwrap();
        let y = Tensor::new(&[2u32, 3, 0], &dev).unwrap();
        let l = SoftTargetLoss { temperature: 4.0, alpha: 0.0, label_smoothing: 0.0 };
        let total = l.compute(&s, &t, &y).unwrap().total.to_scalar::<f32>().unwrap();
        assert!((total - CE).abs() < 1e-6);
    }

    // Score KD golden values (pure Python, no framework):
    //   s=[1.0,-0.5,2.0,0.3]; y=[1.5,0.0,2.5,1.0]; t=[0.8,-0.2,2.6,0.0]; a=0.6; n=4
    //   my=sum((p-q)**2 for p,q in zip(s,y))/n        # 0.31
    //   mt=sum((p-q)**2 for p,q in zip(s,t))/n        # 0.145
    //   total=(1-a)*my+a*mt                           # 0.211
    //   gradient: central differences of total, h=1e-6 -> [-0.04, -0.19, -0.28, -0.05]
    //   (closed form 2/n·((1-a)(s-y) + a(s-t)))
    #[test]
    fn score_kd_loss_and_gradient_match_golden_values() {
        let dev = Device::Cpu;
        let s = Var::new(&[[1.0f32], [-0.5], [2.0], [0.3]], &dev).unwrap();
        let t = Var::new(&[[0.8f32], [-0.2], [2.6], [0.0]], &dev).unwrap();
        let y = Tensor::new(&[1.5f32, 0.0, 2.5, 1.0], &dev).unwrap();
        let terms = ScoreKdLoss { alpha: 0.6 }.compute(s.as_tensor(), t.as_tensor(), &y).unwrap();
        let get = |x: &Tensor| x.to_scalar::<f32>().unwrap();
        assert!((get(&terms.mse) - 0.31).abs() < 1e-6, "mse {}", get(&terms.mse));
        assert!((get(&terms.kd) - 0.145).abs() < 1e-6, "kd {}", get(&terms.kd));
        assert!((get(&terms.total) - 0.211).abs() < 1e-6, "total {}", get(&terms.total));
        let grads = terms.total.backward().unwrap();
        let g: Vec<f32> = grads.get(s.as_tensor()).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        for (a, b) in g.iter().zip([-0.04f32, -0.19, -0.28, -0.05]) {
            assert!((a - b).abs() < 1e-6, "grad {g:?}");
        }
        assert!(grads.get(t.as_tensor()).is_none(), "the teacher's score is a constant");
    }

    #[test]
    fn config_rejects_unknown_keys_and_bad_values() {
        let ok: toml::Table = toml::from_str("temperature = 4.0\nalpha = 0.9").unwrap();
        assert_eq!(parse_config(&ok).unwrap().alpha, 0.9);
        let typo: toml::Table = toml::from_str("temperature = 4.0\nalpha = 0.9\ntemprature = 2").unwrap();
        let e = parse_config(&typo).unwrap_err().to_string();
        assert!(e.contains("temprature"), "{e}");
        let bad: toml::Table = toml::from_str("temperature = 4.0\nalpha = 1.5").unwrap();
        assert!(parse_config(&bad).unwrap_err().to_string().contains("alpha"));
    }
}
