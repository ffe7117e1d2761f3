//! The `Method` trait: a distillation method turns a batch into named losses and says which
//! models it evaluates. The trainer owns optimisation, schedules, evaluation and checkpoints.
//!
//! A method may own variables of its own (FitNet's regressor, CRD's embedding heads and memory
//! banks): [`Method::parameters`] and [`Method::buffers`] hand them out and [`owned_state`]
//! names them for the run, so they join the optimiser and the checkpoint beside the models'.

use std::collections::BTreeSet;

use candle_core::{Result, Tensor, Var};

use crate::batch::Batch;

/// Where training is when a loss is computed; methods with schedules (temperature, weights)
/// read their position from it.
#[derive(Debug, Clone, Copy)]
pub struct StepContext {
    pub epoch: usize,
    pub epochs: usize,
    pub step_in_epoch: usize,
    pub steps_per_epoch: usize,
}

impl StepContext {
    /// Fraction of training done, in `[0, 1]`.
    pub fn progress(&self) -> f64 {
        let total = (self.epochs * self.steps_per_epoch).max(1) as f64;
        ((self.epoch * self.steps_per_epoch + self.step_in_epoch) as f64 / total).clamp(0.0, 1.0)
    }

    pub fn global_step(&self) -> usize {
        self.epoch * self.steps_per_epoch + self.step_in_epoch
    }
}

/// The loss of one step: `total` is what gets back-propagated; `parts` are scalar terms for logs.
#[derive(Debug, Clone)]
pub struct Losses {
    pub total: Tensor,
    pub parts: Vec<(String, Tensor)>,
}

/// A model a method wants evaluated, as it appears in the results CSV.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct EvalEntry {
    /// `student`, `teacher`, `peer-1`, `exit-2`, `ensemble`, ...
    pub role: String,
    /// Architecture name, e.g. `resnet20`.
    pub model: String,
    /// Trainable parameters of that model.
    pub params: usize,
}

impl EvalEntry {
    /// The entry for `model` evaluated under `role`.
    pub fn of(role: &str, model: &dyn crate::model::Classifier) -> Self {
        EvalEntry { role: role.to_string(), model: model.arch().to_string(), params: model.num_params() }
    }
}

pub trait Method: Send {
    /// Method name as in recipes and the CSV `method` column, e.g. `vanilla`.
    fn name(&self) -> &str;
    /// Variant for the CSV `variant` column: `plain` for the baseline, otherwise e.g. `kd`.
    fn variant(&self) -> &str;
    /// Losses for one training batch (models in training mode).
    fn losses(&mut self, batch: &Batch, ctx: &StepContext) -> Result<Losses>;
    /// The models this method reports, in a fixed order.
    fn eval_entries(&self) -> Vec<EvalEntry>;
    /// Eval-mode logits for `inputs`, one tensor per entry of `eval_entries`, same order.
    fn eval_logits(&self, inputs: &Tensor) -> Result<Vec<Tensor>>;
    /// Trainable parameters the method owns (regressors, projections, embedding heads): optimised,
    /// checkpointed and resumed with the models, never counted in a model's parameters. Names are
    /// unique within the method and stable across runs (they key the checkpoint).
    fn parameters(&self) -> Vec<(String, Var)> {
        Vec::new()
    }
    /// Non-trainable state the method owns (memory banks): checkpointed and restored, never optimised.
    fn buffers(&self) -> Vec<(String, Var)> {
        Vec::new()
    }
}

/// Prefix of the names of a method's own variables in a run's state and checkpoint, keeping
/// them apart from the models' variables.
pub const OWNED_PREFIX: &str = "method/";

/// Named variables, as the trainer's `state` and the optimisers take them.
pub type NamedVars = Vec<(String, Var)>;

/// What a method owns, named for the run: `(state, trainable)`, each name prefixed
/// [`OWNED_PREFIX`]. `state` holds the parameters then the buffers (what the checkpoint saves
/// and a resume restores); `trainable` the parameters alone (what the optimiser updates). The
/// pipeline appends them to the models' state and trainable variables. A name given twice
/// (parameters and buffers share one namespace) is an error naming it.
pub fn owned_state(method: &dyn Method) -> Result<(NamedVars, NamedVars)> {
    let prefixed = |vars: NamedVars| -> NamedVars {
        vars.into_iter().map(|(n, v)| (format!("{OWNED_PREFIX}{n}"), v)).collect()
    };
    let trainable = prefixed(method.parameters());
    let mut state = trainable.clone();
    state.extend(prefixed(method.buffers()));
    let mut seen = BTreeSet::new();
    for (name, _) in &state {
        if !seen.insert(name.as_str()) {
            candle_core::bail!(
                "method `{}` names two of its variables `{name}`; parameter and buffer names must be unique",
                method.name()
            );
        }
    }
    Ok((state, trainable))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::Batch;
    use crate::optim::Sgd;
    use crate::schedule::LrSchedule;
    use crate::trainer::{train, BatchSource, Silent, TrainReport, TrainSpec};
    use candle_core::{DType, Device};
    use std::path::Path;

    /// A model weight `w` (the pipeline's, passed in) and, owned by the method, a parameter `p`
    /// and a buffer `ema` (an exponential average of `w·p`, updated every step, never
    /// optimised). Loss = Σ (w·p − target)².
    struct Owning {
        w: Var,
        p: Var,
        ema: Var,
    }

    impl Owning {
        fn new(w: Var) -> Self {
            let dev = Device::Cpu;
            Self {
                w,
                p: Var::new(&[0.5f32, -0.25], &dev).unwrap(),
                ema: Var::zeros(2, DType::F32, &dev).unwrap(),
            }
        }
    }

    impl Method for Owning {
        fn name(&self) -> &str {
            "owning"
        }
        fn variant(&self) -> &str {
            "kd"
        }
        fn losses(&mut self, _b: &Batch, _ctx: &StepContext) -> Result<Losses> {
            let wp = (self.w.as_tensor() * self.p.as_tensor())?;
            let ema = ((self.ema.as_tensor() * 0.9)? + (wp.detach() * 0.1)?)?;
            self.ema.set(&ema)?;
            let target = Tensor::new(&[1f32, -2.0], &Device::Cpu)?;
            let total = (wp - target)?.sqr()?.sum_all()?;
            Ok(Losses { total: total.clone(), parts: vec![("fit".into(), total.detach())] })
        }
        fn eval_entries(&self) -> Vec<EvalEntry> {
            vec![EvalEntry { role: "student".into(), model: "toy".into(), params: 2 }]
        }
        fn eval_logits(&self, inputs: &Tensor) -> Result<Vec<Tensor>> {
            let n = inputs.dim(0)?;
            Ok(vec![self.w.as_tensor().unsqueeze(0)?.broadcast_as((n, 2))?.contiguous()?])
        }
        fn parameters(&self) -> Vec<(String, Var)> {
            vec![("p".into(), self.p.clone())]
        }
        fn buffers(&self) -> Vec<(String, Var)> {
            vec![("ema".into(), self.ema.clone())]
        }
    }

    struct ThreeBatches;
    impl BatchSource for ThreeBatches {
        fn steps(&self) -> usize {
            3
        }
        fn examples(&self) -> usize {
            6
        }
        fn epoch(&self, _e: usize) -> Box<dyn Iterator<Item = crate::Result<Batch>> + '_> {
            let b = Batch {
                inputs: Tensor::zeros((2, 1), DType::F32, &Device::Cpu).unwrap(),
                labels: Tensor::new(&[0u32, 1], &Device::Cpu).unwrap(),
                example_ids: vec![0, 1],
                views: vec![0, 0],
                strong: None,
            };
            Box::new(vec![Ok(b.clone()), Ok(b.clone()), Ok(b)].into_iter())
        }
    }

    fn values(v: &Var) -> Vec<f32> {
        v.as_tensor().to_vec1::<f32>().unwrap()
    }

    /// Builds everything afresh (as a new process would) and trains to `epochs`, resuming from
    /// `dir`'s checkpoint when there is one. Returns the report and `(w, p, ema)`.
    fn run(dir: &Path, epochs: usize) -> (TrainReport, [Vec<f32>; 3]) {
        let w = Var::new(&[1f32, 1.0], &Device::Cpu).unwrap();
        let mut method = Owning::new(w.clone());
        let (owned_state, owned_trainable) = owned_state(&method).unwrap();
        let mut state = vec![("w".to_string(), w.clone())];
        let mut trainable = state.clone();
        state.extend(owned_state);
        trainable.extend(owned_trainable);
        let mut opt = Sgd::new(trainable, 0.05, 0.9, false, 5e-4).unwrap();
        let spec = TrainSpec {
            epochs,
            base_lr: 0.05,
            lr_schedule: LrSchedule::Constant { warmup_epochs: 0.0 },
            checkpoint: Some(dir.join("ckpt.safetensors")),
            run_id: "owning".into(),
            metrics: crate::metric::top1_top5(),
        };
        let report =
            train(&mut method, &state, &mut opt, &spec, &ThreeBatches, &ThreeBatches, &mut Silent).unwrap();
        (report, [values(&w), values(&method.p), values(&method.ema)])
    }

    #[test]
    fn owned_state_prefixes_names_and_keeps_buffers_out_of_the_optimiser() {
        let m = Owning::new(Var::new(&[1f32, 1.0], &Device::Cpu).unwrap());
        let (state, trainable) = owned_state(&m).unwrap();
        let names = |v: &NamedVars| v.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
        assert_eq!(names(&state), ["method/p", "method/ema"]);
        assert_eq!(names(&trainable), ["method/p"]);
        // The very variables the method holds, not copies.
        assert_eq!(state[0].1.as_tensor().id(), m.p.as_tensor().id());
    }

    #[test]
    fn a_method_without_own_variables_owns_nothing() {
        let (state, trainable) =
            owned_state(&crate::plain::PlainTraining::new("plain", std::sync::Arc::new(NoModel), 0.0))
                .unwrap();
        assert!(state.is_empty() && trainable.is_empty());
    }

    struct NoModel;
    impl crate::model::Classifier for NoModel {
        fn forward(&self, _: &Tensor, _: crate::model::Mode) -> Result<crate::model::ModelOutput> {
            candle_core::bail!("not run")
        }
        fn num_classes(&self) -> usize {
            2
        }
        fn arch(&self) -> &str {
            "none"
        }
        fn num_params(&self) -> usize {
            0
        }
    }

    #[test]
    fn a_name_given_twice_is_refused() {
        struct Twice(Owning);
        impl Method for Twice {
            fn name(&self) -> &str {
                "twice"
            }
            fn variant(&self) -> &str {
                "kd"
            }
            fn losses(&mut self, b: &Batch, c: &StepContext) -> Result<Losses> {
                self.0.losses(b, c)
            }
            fn eval_entries(&self) -> Vec<EvalEntry> {
                self.0.eval_entries()
            }
            fn eval_logits(&self, i: &Tensor) -> Result<Vec<Tensor>> {
                self.0.eval_logits(i)
            }
            fn parameters(&self) -> Vec<(String, Var)> {
                vec![("x".into(), self.0.p.clone())]
            }
            fn buffers(&self) -> Vec<(String, Var)> {
                vec![("x".into(), self.0.ema.clone())]
            }
        }
        let m = Twice(Owning::new(Var::new(&[1f32, 1.0], &Device::Cpu).unwrap()));
        let e = owned_state(&m).unwrap_err().to_string();
        assert!(e.contains("`method/x`") && e.contains("twice"), "{e}");
    }

    #[test]
    fn owned_parameters_and_buffers_train_checkpoint_and_resume_exactly() {
        let a = tempfile::tempdir().unwrap();
        let (full, [w_full, p_full, ema_full]) = run(a.path(), 3);
        let b = tempfile::tempdir().unwrap();
        let (first, _) = run(b.path(), 1);
        assert_eq!(first.history.len(), 1);
        let (resumed, [w_res, p_res, ema_res]) = run(b.path(), 3);
        assert_eq!(resumed.resumed_epochs, 1);
        assert_eq!(w_full, w_res, "model variable");
        assert_eq!(p_full, p_res, "owned parameter (and its momentum buffer)");
        assert_eq!(ema_full, ema_res, "owned buffer");
        let losses = |r: &TrainReport| r.history.iter().map(|h| h.train_loss).collect::<Vec<_>>();
        assert_eq!(losses(&full), losses(&resumed));
        // The owned parameter was optimised, and the buffer was updated, not optimised.
        assert_ne!(p_full, [0.5, -0.25], "owned parameter never moved");
        assert!(ema_full.iter().all(|&x| x != 0.0));
        assert_eq!(resumed.history.len(), 3);
    }

    #[test]
    fn the_checkpoint_holds_the_owned_variables_and_the_parameters_momentum() {
        let dir = tempfile::tempdir().unwrap();
        run(dir.path(), 1);
        let (tensors, _) = crate::checkpoint::load_checkpoint(&dir.path().join("ckpt.safetensors")).unwrap();
        let has = |f: &dyn Fn(&str) -> bool| tensors.keys().any(|k| f(k));
        assert!(has(&|k| k.ends_with("method/p") && !k.contains("momentum")), "{:?}", tensors.keys());
        assert!(has(&|k| k.ends_with("method/ema") && !k.contains("momentum")), "{:?}", tensors.keys());
        assert!(has(&|k| k.ends_with("momentum_buffer.method/p")), "{:?}", tensors.keys());
        assert!(!has(&|k| k.contains("momentum_buffer.method/ema")), "a buffer is never optimised");
    }
}
