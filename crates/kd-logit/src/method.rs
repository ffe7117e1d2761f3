//! The one [`Method`] every loss of this crate runs as: one teacher, one student, and a
//! [`LogitObjective`] on their logits. What tells DKD, DIST, CTKD and KD with logit
//! standardisation apart is the objective (in each method's own file); the step around it is
//! the same for all and written once, here.
//!
//! The step is the reference trainers' (mdistiller's `Distiller.forward_train` + its trainer's
//! `sum(losses_dict.values())`, image_classification_sota's `KDLoss.__call__`, CTKD's
//! `train_distill`): the student's logits in training mode, the teacher's in eval mode without
//! gradient, and the objective's total, which holds the weighted cross-entropy on the labels
//! and the weighted distillation term, back-propagated as one loss.

use std::sync::Arc;

use candle_core::{Device, Result, Tensor, Var};
use kd_core::student_kd::{check_label_space, LabelSpaceError};
use kd_core::teacher::TeacherLogits;
use kd_core::{Batch, Classifier, EvalEntry, Losses, Method, Mode, StepContext};

use crate::ConfigError;

/// A logit distillation loss as a method's objective: its `[distill]` configuration, how it is
/// built for a run, and its losses for one batch.
pub trait LogitObjective: Send + Sized + 'static {
    /// The parsed `[distill]` table.
    type Config: Clone + Send + Sync + 'static;
    /// The method's name in recipes and the CSV `method` column; also its one variant.
    const METHOD: &'static str;

    /// Parses and validates `[distill]`: the reference's defaults, unknown keys refused.
    fn parse(table: &toml::Table) -> std::result::Result<Self::Config, ConfigError>;

    /// The objective for one run; what it owns (CTKD's temperature) lives on `device`.
    fn build(config: &Self::Config, device: &Device) -> Result<Self>;

    /// The losses for `(batch, classes)` student and teacher logits at `epoch`, counted from 1
    /// as the reference trainers count it. `total` is what is back-propagated; the parts are
    /// `ce` and `kd`, the weighted terms whose sum is `total`, then the method's diagnostics.
    fn losses(&self, student: &Tensor, teacher: &Tensor, labels: &Tensor, epoch: usize) -> Result<Losses>;

    /// Trainable variables the objective owns (see [`Method::parameters`]).
    fn parameters(&self) -> Vec<(String, Var)> {
        Vec::new()
    }
}

/// The epoch the reference trainers pass their losses: they count from 1, [`StepContext`]
/// from 0. The one place the two numberings meet.
pub fn reference_epoch(ctx: &StepContext) -> usize {
    ctx.epoch + 1
}

/// `(name, detached tensor)` parts, in order.
pub(crate) fn parts<const N: usize>(named: [(&str, &Tensor); N]) -> Vec<(String, Tensor)> {
    named.into_iter().map(|(n, t)| (n.to_string(), t.detach())).collect()
}

/// One teacher distilled into one student with objective `O`; evaluates the student.
pub struct LogitMethod<O> {
    student: Arc<dyn Classifier>,
    teacher: Box<dyn TeacherLogits>,
    objective: O,
}

impl<O: LogitObjective> LogitMethod<O> {
    /// Refuses a teacher and a student with different label spaces.
    pub fn new(
        student: Arc<dyn Classifier>,
        teacher: Box<dyn TeacherLogits>,
        objective: O,
    ) -> std::result::Result<Self, LabelSpaceError> {
        check_label_space(teacher.model().as_ref(), student.as_ref())?;
        Ok(Self { student, teacher, objective })
    }

    pub fn objective(&self) -> &O {
        &self.objective
    }
}

impl<O: LogitObjective> Method for LogitMethod<O> {
    fn name(&self) -> &str {
        O::METHOD
    }

    fn variant(&self) -> &str {
        O::METHOD
    }

    fn losses(&mut self, batch: &Batch, ctx: &StepContext) -> Result<Losses> {
        let student = self.student.forward(&batch.inputs, Mode::Train)?.logits;
        let teacher = self.teacher.logits(batch)?;
        self.objective.losses(&student, &teacher, &batch.labels, reference_epoch(ctx))
    }

    fn eval_entries(&self) -> Vec<EvalEntry> {
        vec![EvalEntry::of("student", self.student.as_ref())]
    }

    fn eval_logits(&self, inputs: &Tensor) -> Result<Vec<Tensor>> {
        Ok(vec![self.student.forward(inputs, Mode::Eval)?.logits])
    }

    fn parameters(&self) -> Vec<(String, Var)> {
        self.objective.parameters()
    }
}

/// Stand-ins for the models and the teacher source, for the methods' unit tests.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;
    use candle_core::DType;
    use kd_core::ModelOutput;

    /// Fixed logits, the same for any input: a "model" whose logits are one variable.
    pub struct FixedLogits {
        pub logits: Var,
    }

    impl Classifier for FixedLogits {
        fn forward(&self, _input: &Tensor, _mode: Mode) -> Result<ModelOutput> {
            let logits = self.logits.as_tensor().clone();
            let (b, _) = logits.dims2()?;
            let embedding = Tensor::zeros((b, 1), logits.dtype(), logits.device())?;
            Ok(ModelOutput { logits, stage_features: Vec::new(), embedding })
        }
        fn num_classes(&self) -> usize {
            self.logits.dims()[1]
        }
        fn arch(&self) -> &str {
            "fixed"
        }
        fn num_params(&self) -> usize {
            self.logits.elem_count()
        }
    }

    /// Serves the teacher model's logits, detached.
    pub struct Served(pub Arc<dyn Classifier>);

    impl TeacherLogits for Served {
        fn logits(&mut self, batch: &Batch) -> Result<Tensor> {
            Ok(self.0.forward(&batch.inputs, Mode::Eval)?.logits.detach())
        }
        fn model(&self) -> &Arc<dyn Classifier> {
            &self.0
        }
    }

    /// `(student, teacher, batch)`: 4 samples over 6 classes, fixed values, teacher confident.
    pub fn fixture() -> (Arc<FixedLogits>, Arc<FixedLogits>, Batch) {
        fixture_with_classes(6, 6)
    }

    pub fn fixture_with_classes(
        student_classes: usize,
        teacher_classes: usize,
    ) -> (Arc<FixedLogits>, Arc<FixedLogits>, Batch) {
        let dev = Device::Cpu;
        let values = |classes: usize, scale: f32, shift: f32| -> Vec<f32> {
            (0..4 * classes).map(|i| (i as f32 * 0.37 + shift).sin() * scale).collect()
        };
        let var = |classes: usize, scale, shift| {
            Var::from_tensor(&Tensor::from_vec(values(classes, scale, shift), (4, classes), &dev).unwrap())
                .unwrap()
        };
        let student = Arc::new(FixedLogits { logits: var(student_classes, 2.0, 0.3) });
        let teacher = Arc::new(FixedLogits { logits: var(teacher_classes, 5.0, 1.1) });
        let batch = Batch {
            inputs: Tensor::zeros((4, 1), DType::F32, &dev).unwrap(),
            labels: Tensor::new(&[0u32, 3, 5, 1], &dev).unwrap(),
            example_ids: vec![0, 1, 2, 3],
            views: vec![0; 4],
            strong: None,
        };
        (student, teacher, batch)
    }

    /// The method around `objective` on [`fixture`]'s logits.
    pub fn method<O: LogitObjective>(
        objective: O,
    ) -> (LogitMethod<O>, Arc<FixedLogits>, Arc<FixedLogits>, Batch) {
        let (student, teacher, batch) = fixture();
        let m = LogitMethod::new(student.clone(), Box::new(Served(teacher.clone())), objective).unwrap();
        (m, student, teacher, batch)
    }

    /// Step context of 0-based `epoch` of 240, first step.
    pub fn at_epoch(epoch: usize) -> StepContext {
        StepContext { epoch, epochs: 240, step_in_epoch: 0, steps_per_epoch: 10 }
    }

    pub fn scalar(t: &Tensor) -> f64 {
        t.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap()
    }

    /// The named part of `losses`.
    pub fn part(losses: &Losses, name: &str) -> f64 {
        let (_, t) = losses.parts.iter().find(|(n, _)| n == name).unwrap_or_else(|| {
            panic!("no part `{name}` in {:?}", losses.parts.iter().map(|(n, _)| n).collect::<Vec<_>>())
        });
        scalar(t)
    }

    /// Asserts `a ≈ b` to f32 precision.
    pub fn close(what: &str, a: f64, b: f64) {
        assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "{what}: {a} vs {b}");
    }

    /// The parts `ce` and `kd` add up to the total, and the student's logits get a gradient.
    pub fn check_total_is_ce_plus_kd(losses: &Losses, student: &FixedLogits) {
        close("ce + kd = total", part(losses, "ce") + part(losses, "kd"), scalar(&losses.total));
        let grads = losses.total.backward().unwrap();
        let g = grads.get(student.logits.as_tensor()).expect("student logits get a gradient");
        assert!(scalar(&g.abs().unwrap().sum_all().unwrap()) > 0.0);
    }
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;
    use crate::{DkdConfig, DkdLoss};

    #[test]
    fn reference_epochs_count_from_one() {
        assert_eq!(reference_epoch(&at_epoch(0)), 1);
        assert_eq!(reference_epoch(&at_epoch(239)), 240);
    }

    #[test]
    fn teacher_and_student_must_share_one_label_space() {
        let (student, teacher, _) = fixture_with_classes(6, 5);
        let objective = DkdLoss::build(&DkdConfig::default(), &Device::Cpu).unwrap();
        let e = LogitMethod::new(student, Box::new(Served(teacher)), objective).err().unwrap().to_string();
        assert!(e.contains("5 classes") && e.contains("predicts 6"), "{e}");
    }

    #[test]
    fn the_method_is_named_by_its_objective_and_evaluates_the_student() {
        let (m, student, _, batch) = method(DkdLoss::build(&DkdConfig::default(), &Device::Cpu).unwrap());
        assert_eq!((m.name(), m.variant()), ("dkd", "dkd"));
        assert_eq!(
            m.eval_entries(),
            [EvalEntry { role: "student".into(), model: "fixed".into(), params: 24 }]
        );
        let got = m.eval_logits(&batch.inputs).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].to_vec2::<f32>().unwrap(), student.logits.as_tensor().to_vec2::<f32>().unwrap());
        assert!(m.parameters().is_empty());
    }
}
