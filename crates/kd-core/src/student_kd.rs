//! One teacher distilled into one student, as a [`Method`]: the shape of Hinton KD that several
//! method families build on (vanilla, multi-teacher's `single`, TAKD's links, annealing's
//! `fixed`, GLUE score KD). It lives here so that no method crate depends on another.

use std::sync::Arc;

use candle_core::{Result, Tensor};

use crate::losses::{SoftTargetConfig, SoftTargetLoss};
use crate::teacher::TeacherLogits;
use crate::{Batch, Classifier, EvalEntry, Losses, Method, Mode, StepContext};

/// The loss of one distillation step from the student's and the teacher's outputs and the
/// labels: what tells the single-teacher KD methods apart; the [`Method`] around it is shared.
pub trait StudentLoss: Send {
    fn losses(&self, student: &Tensor, teacher: &Tensor, labels: &Tensor) -> Result<Losses>;
}

impl StudentLoss for SoftTargetLoss {
    fn losses(&self, student: &Tensor, teacher: &Tensor, labels: &Tensor) -> Result<Losses> {
        let terms = self.compute(student, teacher, labels)?;
        Ok(Losses {
            total: terms.total,
            parts: vec![("ce".into(), terms.ce.detach()), ("kd".into(), terms.kd.detach())],
        })
    }
}

/// A teacher and a student whose label spaces differ.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "teacher `{teacher}` predicts {teacher_classes} classes but student `{student}` predicts {student_classes}: they must share one label space"
)]
pub struct LabelSpaceError {
    pub teacher: String,
    pub teacher_classes: usize,
    pub student: String,
    pub student_classes: usize,
}

/// Refuses a teacher and a student with different label spaces.
pub fn check_label_space(
    teacher: &dyn Classifier,
    student: &dyn Classifier,
) -> std::result::Result<(), LabelSpaceError> {
    if teacher.num_classes() != student.num_classes() {
        return Err(LabelSpaceError {
            teacher: teacher.arch().to_string(),
            teacher_classes: teacher.num_classes(),
            student: student.arch().to_string(),
            student_classes: student.num_classes(),
        });
    }
    Ok(())
}

/// One teacher distilled into one student with a [`StudentLoss`]: variant `kd`, evaluates the
/// student.
pub struct StudentKd<L> {
    student: Arc<dyn Classifier>,
    teacher: Box<dyn TeacherLogits>,
    loss: L,
}

/// Hinton KD on logits.
pub type SoftTargetKd = StudentKd<SoftTargetLoss>;

impl<L: StudentLoss> StudentKd<L> {
    /// `loss` between `student` and `teacher`; the caller has checked that they fit it.
    pub fn with_loss(student: Arc<dyn Classifier>, teacher: Box<dyn TeacherLogits>, loss: L) -> Self {
        Self { student, teacher, loss }
    }
}

impl StudentKd<SoftTargetLoss> {
    /// Hinton KD with `cfg`; refuses a teacher and student with different label spaces.
    pub fn new(
        student: Arc<dyn Classifier>,
        teacher: Box<dyn TeacherLogits>,
        cfg: &SoftTargetConfig,
    ) -> std::result::Result<Self, LabelSpaceError> {
        check_label_space(teacher.model().as_ref(), student.as_ref())?;
        Ok(Self::with_loss(student, teacher, SoftTargetLoss::new(cfg)))
    }
}

impl<L: StudentLoss> Method for StudentKd<L> {
    fn name(&self) -> &str {
        "vanilla"
    }

    fn variant(&self) -> &str {
        "kd"
    }

    fn losses(&mut self, batch: &Batch, _ctx: &StepContext) -> Result<Losses> {
        let teacher = self.teacher.logits(batch)?;
        let student = self.student.forward(&batch.inputs, Mode::Train)?.logits;
        self.loss.losses(&student, &teacher, &batch.labels)
    }

    fn eval_entries(&self) -> Vec<EvalEntry> {
        vec![EvalEntry::of("student", self.student.as_ref())]
    }

    fn eval_logits(&self, inputs: &Tensor) -> Result<Vec<Tensor>> {
        Ok(vec![self.student.forward(inputs, Mode::Eval)?.logits])
    }
}
