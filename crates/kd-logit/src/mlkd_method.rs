//! MLKD as a method (`method = "mlkd"`): the step of the reference's `AugTrainer.train_iter` and
//! `KD_ours.forward_train` (`Jin-Ying/Multi-Level-Logit-Distillation` @ 5ee473f) around the
//! tested [`MlkdLoss`].
//!
//! Each batch carries a weak view (`inputs`: crop and flip) and a strong view
//! ([`Batch::strong`]: its own crop and flip, then RandAugment and Cutout), which the pipeline
//! renders because the factory asks for it ([`kd_core::registry::MethodSetup::strong_view`]).
//! As in the reference, the student runs in training mode on each view separately (two
//! forward passes, so batch norm sees each view's statistics on its own), the teacher in eval
//! mode without gradient on both, and the sum of the loss terms is back-propagated once.
//! The teacher's weak-view logits come from its source (the soft-label cache serves them when
//! the recipe turns it on); strong views are drawn afresh every epoch, so the teacher always
//! computes those.

use std::sync::Arc;

use candle_core::{Result, Tensor};
use kd_core::student_kd::{check_label_space, LabelSpaceError};
use kd_core::teacher::TeacherLogits;
use kd_core::{Batch, Classifier, EvalEntry, Losses, Method, Mode, StepContext};

use crate::method::parts;
use crate::{MlkdConfig, MlkdLoss, View};

/// One teacher distilled into one student on weak and strong views with the MLKD loss.
pub struct MlkdMethod {
    student: Arc<dyn Classifier>,
    teacher: Box<dyn TeacherLogits>,
    loss: MlkdLoss,
}

impl MlkdMethod {
    /// Refuses a teacher and a student with different label spaces.
    pub fn new(
        student: Arc<dyn Classifier>,
        teacher: Box<dyn TeacherLogits>,
        config: MlkdConfig,
    ) -> std::result::Result<Self, LabelSpaceError> {
        check_label_space(teacher.model().as_ref(), student.as_ref())?;
        Ok(Self { student, teacher, loss: MlkdLoss::new(config) })
    }
}

impl Method for MlkdMethod {
    fn name(&self) -> &str {
        MlkdConfig::METHOD
    }

    fn variant(&self) -> &str {
        MlkdConfig::METHOD
    }

    fn losses(&mut self, batch: &Batch, _ctx: &StepContext) -> Result<Losses> {
        let Some(strong) = batch.strong.as_ref() else {
            candle_core::bail!(
                "method `mlkd` trains on a strong view of every image (Batch::strong), and this batch has none: \
                 only image tasks render one"
            )
        };
        if strong.dims() != batch.inputs.dims() {
            candle_core::bail!(
                "method `mlkd`: the strong view {:?} is not shaped as the weak view {:?}",
                strong.dims(),
                batch.inputs.dims()
            )
        }
        let student_weak = self.student.forward(&batch.inputs, Mode::Train)?.logits;
        let student_strong = self.student.forward(strong, Mode::Train)?.logits;
        let teacher_weak = self.teacher.logits(batch)?;
        let teacher_strong = self.teacher.model().forward(strong, Mode::Eval)?.logits.detach();
        let l = self.loss.loss(
            View { student: &student_weak, teacher: &teacher_weak },
            View { student: &student_strong, teacher: &teacher_strong },
            &batch.labels,
        )?;
        let device = student_weak.device();
        let instance_mask = Tensor::new(l.instance_mask_fraction as f32, device)?;
        let class_mask = Tensor::new(l.class_mask_fraction as f32, device)?;
        let parts = parts([
            ("ce", &l.ce),
            ("kd", &l.kd),
            ("cc", &l.cc),
            ("bc", &l.bc),
            ("instance_mask", &instance_mask),
            ("class_mask", &class_mask),
        ]);
        Ok(Losses { total: l.total, parts })
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
    use crate::method::testing::*;
    use candle_core::{DType, Device, Var};

    /// A student whose logits are a fixed linear map of its (flattened) input, so the weak and
    /// the strong view give different logits and both get a gradient.
    struct Linear {
        w: Var,
    }

    impl Classifier for Linear {
        fn forward(&self, input: &Tensor, _mode: Mode) -> Result<kd_core::ModelOutput> {
            let logits = input.flatten_from(1)?.matmul(self.w.as_tensor())?;
            let embedding = Tensor::zeros((input.dim(0)?, 1), DType::F32, input.device())?;
            Ok(kd_core::ModelOutput { logits, stage_features: Vec::new(), embedding })
        }
        fn num_classes(&self) -> usize {
            self.w.dims()[1]
        }
        fn arch(&self) -> &str {
            "linear"
        }
        fn num_params(&self) -> usize {
            self.w.elem_count()
        }
    }

    fn linear(seed: f32) -> Arc<Linear> {
        let v: Vec<f32> = (0..3 * 5).map(|i| (i as f32 * 0.71 + seed).sin()).collect();
        Arc::new(Linear { w: Var::from_tensor(&Tensor::from_vec(v, (3, 5), &Device::Cpu).unwrap()).unwrap() })
    }

    fn batch(strong: bool) -> Batch {
        let dev = Device::Cpu;
        let x = |shift: f32| {
            let v: Vec<f32> = (0..4 * 3).map(|i| (i as f32 * 0.37 + shift).cos()).collect();
            Tensor::from_vec(v, (4, 3), &dev).unwrap()
        };
        Batch {
            inputs: x(0.0),
            labels: Tensor::new(&[0u32, 3, 4, 1], &dev).unwrap(),
            example_ids: vec![0, 1, 2, 3],
            views: vec![0; 4],
            strong: strong.then(|| x(1.3)),
        }
    }

    #[test]
    fn the_step_is_the_loss_on_both_views_and_the_student_gets_a_gradient() {
        let (student, teacher) = (linear(0.2), linear(2.0));
        let mut m =
            MlkdMethod::new(student.clone(), Box::new(Served(teacher.clone())), MlkdConfig::default())
                .unwrap();
        assert_eq!((m.name(), m.variant()), ("mlkd", "mlkd"));
        let b = batch(true);
        let losses = m.losses(&b, &at_epoch(0)).unwrap();

        // The same as the loss on the logits of both views, computed here directly.
        let logits = |model: &Linear, x: &Tensor| model.forward(x, Mode::Eval).unwrap().logits;
        let strong = b.strong.as_ref().unwrap();
        let (sw, ss) = (logits(&student, &b.inputs), logits(&student, strong));
        let (tw, ts) = (logits(&teacher, &b.inputs), logits(&teacher, strong));
        let want = MlkdLoss::new(MlkdConfig::default())
            .loss(View { student: &sw, teacher: &tw }, View { student: &ss, teacher: &ts }, &b.labels)
            .unwrap();
        close("total", scalar(&losses.total), scalar(&want.total));
        for (name, t) in [("ce", &want.ce), ("kd", &want.kd), ("cc", &want.cc), ("bc", &want.bc)] {
            close(name, part(&losses, name), scalar(t));
        }
        close(
            "parts add up",
            ["ce", "kd", "cc", "bc"].iter().map(|n| part(&losses, n)).sum(),
            scalar(&losses.total),
        );
        assert_eq!(part(&losses, "instance_mask"), want.instance_mask_fraction as f32 as f64);

        // The strong view matters: with the weak view in its place the loss is another.
        let same = Batch { strong: Some(b.inputs.clone()), ..b.clone() };
        assert!((scalar(&m.losses(&same, &at_epoch(0)).unwrap().total) - scalar(&losses.total)).abs() > 1e-6);

        let grads = losses.total.backward().unwrap();
        let g = grads.get(student.w.as_tensor()).expect("the student's weights get a gradient");
        assert!(scalar(&g.abs().unwrap().sum_all().unwrap()) > 0.0);
        assert!(grads.get(teacher.w.as_tensor()).is_none(), "the teacher gets no gradient");
    }

    #[test]
    fn a_batch_without_a_strong_view_is_refused_by_name() {
        let mut m =
            MlkdMethod::new(linear(0.2), Box::new(Served(linear(2.0))), MlkdConfig::default()).unwrap();
        let e = m.losses(&batch(false), &at_epoch(0)).err().unwrap().to_string();
        assert!(e.contains("mlkd") && e.contains("strong view"), "{e}");
        let b = batch(true);
        let wrong = Batch { strong: Some(Tensor::zeros((4, 2), DType::F32, &Device::Cpu).unwrap()), ..b };
        let e = m.losses(&wrong, &at_epoch(0)).err().unwrap().to_string();
        assert!(e.contains("[4, 2]") && e.contains("[4, 3]"), "{e}");
    }
}
