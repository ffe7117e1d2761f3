//! Where a distilling method gets its teacher's outputs: from the teacher itself, run in eval
//! mode without gradient, or (performance issue) from a soft-label cache keyed by example and
//! augmentation view. Logits are what every source serves; a feature method asks for stage
//! features or the pre-logit embedding too ([`FeatureRequest`]), which only a source that runs
//! the teacher ([`LiveTeacher`]) can give.

use std::sync::Arc;

use candle_core::{Result, Tensor};

use crate::batch::Batch;
use crate::model::{Classifier, Mode};

/// Which teacher features a method needs besides the logits (always served).
/// `FeatureRequest::default()` asks for logits only.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FeatureRequest {
    /// Every stage output ([`crate::ModelOutput::stage_features`]), shallowest first.
    pub stages: bool,
    /// The penultimate representation ([`crate::ModelOutput::embedding`]).
    pub embedding: bool,
}

impl FeatureRequest {
    /// Logits only.
    pub fn none() -> Self {
        Self::default()
    }

    /// Whether nothing beyond the logits is asked for.
    pub fn is_empty(&self) -> bool {
        !self.stages && !self.embedding
    }
}

/// What a teacher source hands a method for one batch; every tensor is detached.
#[derive(Debug, Clone)]
pub struct TeacherOutputs {
    /// `(batch, classes)` logits.
    pub logits: Tensor,
    /// The stage features when [`FeatureRequest::stages`] was asked for, otherwise empty.
    pub stage_features: Vec<Tensor>,
    /// The embedding when [`FeatureRequest::embedding`] was asked for.
    pub embedding: Option<Tensor>,
}

/// Supplies teacher logits `(batch, classes)` for a training batch, and features on request.
/// Never carries gradient.
pub trait TeacherLogits: Send {
    fn logits(&mut self, batch: &Batch) -> Result<Tensor>;
    /// The teacher model (for evaluation rows and label-space checks).
    fn model(&self) -> &Arc<dyn Classifier>;
    /// Whether this source can answer `request` (checked when a method is built, so a
    /// logits-only source is refused before training starts). Logits-only by default.
    fn serves(&self, request: &FeatureRequest) -> bool {
        request.is_empty()
    }
    /// The logits and the requested features for `batch`. The default serves logits only (a
    /// soft-label cache has nothing else) and refuses any feature request.
    fn outputs(&mut self, batch: &Batch, request: &FeatureRequest) -> Result<TeacherOutputs> {
        if !request.is_empty() {
            candle_core::bail!(
                "teacher `{}`: this source serves logits only (e.g. a soft-label cache), but {request:?} \
                 asks for features; run the teacher live to distil its features",
                self.model().arch()
            );
        }
        Ok(TeacherOutputs { logits: self.logits(batch)?, stage_features: Vec::new(), embedding: None })
    }
}

/// Runs the teacher on every batch (eval mode, detached).
pub struct LiveTeacher {
    model: Arc<dyn Classifier>,
}

impl LiveTeacher {
    pub fn new(model: Arc<dyn Classifier>) -> Self {
        Self { model }
    }
}

impl TeacherLogits for LiveTeacher {
    fn logits(&mut self, batch: &Batch) -> Result<Tensor> {
        Ok(self.model.forward(&batch.inputs, Mode::Eval)?.logits.detach())
    }

    fn model(&self) -> &Arc<dyn Classifier> {
        &self.model
    }

    fn serves(&self, _request: &FeatureRequest) -> bool {
        true
    }

    /// One eval-mode forward; only the requested features are kept, all detached.
    fn outputs(&mut self, batch: &Batch, request: &FeatureRequest) -> Result<TeacherOutputs> {
        let out = self.model.forward(&batch.inputs, Mode::Eval)?;
        let stage_features =
            if request.stages { out.stage_features.iter().map(Tensor::detach).collect() } else { Vec::new() };
        Ok(TeacherOutputs {
            logits: out.logits.detach(),
            stage_features,
            embedding: request.embedding.then(|| out.embedding.detach()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ModelOutput;
    use candle_core::{Device, Var};
    use std::sync::Mutex;

    /// `h = x·w` (one stage), embedding `relu(h)`, logits `h`; records the modes it ran in.
    struct Recording {
        w: Var,
        modes: Mutex<Vec<Mode>>,
    }

    impl Classifier for Recording {
        fn forward(&self, input: &Tensor, mode: Mode) -> Result<ModelOutput> {
            self.modes.lock().unwrap().push(mode);
            let h = input.matmul(self.w.as_tensor())?;
            Ok(ModelOutput {
                logits: h.clone(),
                stage_features: vec![h.clone(), (&h * 2.0)?],
                embedding: h.relu()?,
            })
        }
        fn num_classes(&self) -> usize {
            2
        }
        fn arch(&self) -> &str {
            "recording"
        }
        fn num_params(&self) -> usize {
            4
        }
    }

    fn setup() -> (Arc<Recording>, Batch) {
        let dev = Device::Cpu;
        let w = Var::new(&[[1f32, -1.0], [0.5, 2.0]], &dev).unwrap();
        let model = Arc::new(Recording { w, modes: Mutex::new(Vec::new()) });
        let batch = Batch {
            inputs: Tensor::new(&[[1f32, 2.0], [-1.0, 0.5], [0.0, 3.0]], &dev).unwrap(),
            labels: Tensor::new(&[0u32, 1, 0], &dev).unwrap(),
            example_ids: vec![0, 1, 2],
            views: vec![0, 0, 0],
            strong: None,
        };
        (model, batch)
    }

    fn vec2(t: &Tensor) -> Vec<Vec<f32>> {
        t.to_vec2::<f32>().unwrap()
    }

    #[test]
    fn feature_request_default_is_logits_only() {
        assert_eq!(FeatureRequest::default(), FeatureRequest::none());
        assert!(FeatureRequest::none().is_empty());
        assert!(!FeatureRequest { stages: true, ..Default::default() }.is_empty());
        assert!(!FeatureRequest { embedding: true, ..Default::default() }.is_empty());
    }

    #[test]
    fn live_teacher_serves_requested_features_from_one_eval_forward_without_gradient() {
        let (model, batch) = setup();
        let reference = model.forward(&batch.inputs, Mode::Eval).unwrap();
        model.modes.lock().unwrap().clear();
        let mut teacher = LiveTeacher::new(model.clone());
        let all = FeatureRequest { stages: true, embedding: true };
        assert!(teacher.serves(&all));
        let out = teacher.outputs(&batch, &all).unwrap();
        assert_eq!(*model.modes.lock().unwrap(), [Mode::Eval], "one forward, in eval mode");
        assert_eq!(vec2(&out.logits), vec2(&reference.logits));
        assert_eq!(out.stage_features.len(), 2);
        for (a, b) in out.stage_features.iter().zip(&reference.stage_features) {
            assert_eq!(vec2(a), vec2(b));
        }
        assert_eq!(vec2(out.embedding.as_ref().unwrap()), vec2(&reference.embedding));
        // Detached: a loss built from every output gives the teacher's weight no gradient.
        let mut loss = out.logits.sum_all().unwrap();
        for t in out.stage_features.iter().chain(out.embedding.as_ref()) {
            loss = (loss + t.sum_all().unwrap()).unwrap();
        }
        let grads = loss.backward().unwrap();
        assert!(grads.get(model.w.as_tensor()).is_none(), "teacher outputs carry no gradient");
    }

    #[test]
    fn live_teacher_keeps_only_what_was_asked_for() {
        let (model, batch) = setup();
        let mut teacher = LiveTeacher::new(model.clone());
        let logits_only = teacher.outputs(&batch, &FeatureRequest::none()).unwrap();
        assert!(logits_only.stage_features.is_empty() && logits_only.embedding.is_none());
        let stages = teacher.outputs(&batch, &FeatureRequest { stages: true, embedding: false }).unwrap();
        assert_eq!(stages.stage_features.len(), 2);
        assert!(stages.embedding.is_none());
        let emb = teacher.outputs(&batch, &FeatureRequest { stages: false, embedding: true }).unwrap();
        assert!(emb.stage_features.is_empty() && emb.embedding.is_some());
        assert_eq!(vec2(&logits_only.logits), vec2(&teacher.logits(&batch).unwrap()));
    }

    /// A source with logits only, like the soft-label cache: the trait's defaults.
    struct LogitsOnly(Arc<dyn Classifier>);
    impl TeacherLogits for LogitsOnly {
        fn logits(&mut self, batch: &Batch) -> Result<Tensor> {
            Ok(self.0.forward(&batch.inputs, Mode::Eval)?.logits.detach())
        }
        fn model(&self) -> &Arc<dyn Classifier> {
            &self.0
        }
    }

    #[test]
    fn a_logits_only_source_serves_logits_and_refuses_features() {
        let (model, batch) = setup();
        let mut source = LogitsOnly(model.clone());
        assert!(source.serves(&FeatureRequest::none()));
        let out = source.outputs(&batch, &FeatureRequest::none()).unwrap();
        assert_eq!(vec2(&out.logits), vec2(&source.logits(&batch).unwrap()));
        assert!(out.stage_features.is_empty() && out.embedding.is_none());
        let stages = FeatureRequest { stages: true, embedding: false };
        assert!(!source.serves(&stages));
        let e = source.outputs(&batch, &stages).unwrap_err().to_string();
        assert!(e.contains("logits only") && e.contains("recording"), "{e}");
    }
}
