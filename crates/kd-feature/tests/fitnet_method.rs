//! FitNet as a method, with real CIFAR ResNets (kd-models, a dev-dependency only) on synthetic
//! inputs: the regressor it owns trains, checkpoints and resumes with the student through
//! `kd_core::trainer::train`, bit for bit; the teacher's features come through
//! `TeacherLogits::outputs`; the student's reported size leaves the regressor out.

use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarMap;
use kd_core::method::{owned_state, NamedVars};
use kd_core::optim::Sgd;
use kd_core::schedule::LrSchedule;
use kd_core::teacher::{LiveTeacher, TeacherLogits};
use kd_core::trainer::{train, BatchSource, EpochRecord, Silent, TrainReport, TrainSpec};
use kd_core::{Batch, Classifier, Method, Mode, StepContext};
use kd_feature::{FeatureLoss, FeatureShapes, FitNet, FitNetConfig, FitNetMethod, FitNetMethodConfig};

const CLASSES: usize = 10;
const BATCH: usize = 8;
const STEPS: usize = 3;
const SEED: u64 = 7;
const STUDENT: &str = "resnet8";
/// Wider than the student (stage 1: 128 channels against 32), so the regressor maps channels.
const TEACHER: &str = "resnet8x4";

/// Deterministic synthetic CIFAR-shaped batches; epoch `e` is the same whenever asked for
/// (the trainer's `BatchSource` contract). `fail_at`: `(epoch, step)` at which the source
/// fails, as a process killed mid-epoch would stop.
struct Synthetic {
    fail_at: Option<(usize, usize)>,
}

fn batch(epoch: usize, step: usize) -> Batch {
    let n = BATCH * 3 * 32 * 32;
    let phase = (epoch * STEPS + step) as f32;
    let values: Vec<f32> = (0..n).map(|i| ((i as f32) * 0.013 + phase * 1.7).sin()).collect();
    let inputs = Tensor::from_vec(values, (BATCH, 3, 32, 32), &Device::Cpu).unwrap();
    let labels: Vec<u32> = (0..BATCH).map(|i| ((i * 7 + epoch * 3 + step) % CLASSES) as u32).collect();
    Batch {
        inputs,
        labels: Tensor::new(labels.as_slice(), &Device::Cpu).unwrap(),
        example_ids: (0..BATCH as u32).map(|i| i + (step * BATCH) as u32).collect(),
        views: vec![0; BATCH],
        strong: None,
    }
}

impl BatchSource for Synthetic {
    fn steps(&self) -> usize {
        STEPS
    }
    fn examples(&self) -> usize {
        STEPS * BATCH
    }
    fn epoch(&self, epoch: usize) -> Box<dyn Iterator<Item = kd_core::Result<Batch>> + '_> {
        Box::new((0..STEPS).map(move |step| {
            if self.fail_at == Some((epoch, step)) {
                return Err(kd_core::Error::Msg(format!("killed at epoch {epoch}, step {step}")));
            }
            Ok(batch(epoch, step))
        }))
    }
}

/// The eval split: one batch.
struct EvalSplit;
impl BatchSource for EvalSplit {
    fn steps(&self) -> usize {
        1
    }
    fn examples(&self) -> usize {
        BATCH
    }
    fn epoch(&self, _epoch: usize) -> Box<dyn Iterator<Item = kd_core::Result<Batch>> + '_> {
        Box::new(std::iter::once(Ok(batch(99, 0))))
    }
}

/// Everything a run builds, built afresh each time as a new process would.
struct Run {
    student_vars: VarMap,
    student: Arc<dyn Classifier>,
    method: FitNetMethod,
    state: NamedVars,
    trainable: NamedVars,
}

fn all_vars(varmap: &VarMap) -> NamedVars {
    let mut v: NamedVars =
        varmap.data().lock().unwrap().iter().map(|(n, v)| (n.clone(), v.clone())).collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

fn build(cfg: &FitNetMethodConfig) -> Run {
    let dev = Device::Cpu;
    let (student_vars, student) =
        kd_models::new_model(STUDENT, CLASSES, kd_core::seed::derive_seed(SEED, "init/student"), &dev)
            .unwrap();
    let student: Arc<dyn Classifier> = Arc::from(student);
    // A random teacher is enough for the mechanics; it is held as variables, but its outputs
    // arrive detached, so it never gets a gradient (and the optimiser never sees it).
    let (_teacher_vars, teacher) = kd_models::new_model(TEACHER, CLASSES, 99, &dev).unwrap();
    let teacher = Box::new(LiveTeacher::new(Arc::from(teacher)));
    let probe = Tensor::zeros((2, 3, 32, 32), DType::F32, &dev).unwrap();
    let method = FitNetMethod::new(student.clone(), teacher, cfg, &probe, SEED).unwrap();
    let mut state = all_vars(&student_vars);
    let mut trainable = kd_models::trainable_vars(&student_vars);
    let (owned, owned_trainable) = owned_state(&method).unwrap();
    state.extend(owned);
    trainable.extend(owned_trainable);
    Run { student_vars, student, method, state, trainable }
}

fn values(vars: &[(String, Var)]) -> Vec<(String, Vec<f32>)> {
    vars.iter()
        .map(|(n, v)| (n.clone(), v.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap()))
        .collect()
}

/// What a run ends with: the report (or error), the student's variables (running statistics
/// included) and the regressor's.
struct Outcome {
    report: kd_core::Result<TrainReport>,
    student: Vec<(String, Vec<f32>)>,
    regressor: Vec<(String, Vec<f32>)>,
}

fn run(dir: &Path, epochs: usize, fail_at: Option<(usize, usize)>) -> Outcome {
    let mut r = build(&FitNetMethodConfig::default());
    let mut opt = Sgd::new(r.trainable.clone(), 0.05, 0.9, false, 5e-4).unwrap();
    let spec = TrainSpec {
        epochs,
        base_lr: 0.05,
        lr_schedule: LrSchedule::Constant { warmup_epochs: 0.0 },
        checkpoint: Some(dir.join("ckpt.safetensors")),
        run_id: "fitnet-test".into(),
        metrics: kd_core::metric::top1_top5(),
    };
    let report =
        train(&mut r.method, &r.state, &mut opt, &spec, &Synthetic { fail_at }, &EvalSplit, &mut Silent);
    Outcome { report, student: values(&all_vars(&r.student_vars)), regressor: values(&r.method.parameters()) }
}

/// The history without its timings (which differ run to run): per epoch, the train loss, the
/// loss parts and the eval top-1, as f64 bits.
fn losses(history: &[EpochRecord]) -> Vec<(usize, Vec<f64>)> {
    history
        .iter()
        .map(|r| {
            let mut v = vec![r.train_loss];
            v.extend(r.loss_parts.values());
            v.extend(r.eval.iter().map(|e| e.get("top1").unwrap_or(f64::NAN)));
            (r.epoch, v)
        })
        .collect()
}

/// `resumed`'s history equals `full`'s: bit for bit for the epochs it trained, within one ulp for
/// the ones it read back from the checkpoint. Those went through the checkpoint's JSON metadata,
/// and serde_json (without its `float_roundtrip` feature, as the workspace builds it) may parse
/// an f64 one ulp off what it wrote (seen: 39.091349283854164 back as 39.09134928385416).
fn assert_same_history(full: &TrainReport, resumed: &TrainReport) {
    let (a, b) = (losses(&full.history), losses(&resumed.history));
    assert_eq!(a.len(), b.len());
    for (i, ((ea, va), (eb, vb))) in a.iter().zip(&b).enumerate() {
        assert_eq!(ea, eb);
        if i < resumed.resumed_epochs {
            for (x, y) in va.iter().zip(vb) {
                let ulps = (x.to_bits() as i64 - y.to_bits() as i64).abs();
                assert!(ulps <= 1, "epoch {ea} (restored): {x} vs {y}");
            }
        } else {
            assert_eq!(va, vb, "epoch {ea} (trained after the resume)");
        }
    }
}

#[test]
fn fitnet_trains_checkpoints_and_resumes_exactly_with_its_regressor() {
    let init = values(&build(&FitNetMethodConfig::default()).method.parameters());

    let a = tempfile::tempdir().unwrap();
    let full = run(a.path(), 2, None);
    let full_report = full.report.unwrap();
    assert_eq!(full_report.history.len(), 2);
    let parts: Vec<&str> = full_report.history[0].loss_parts.keys().map(String::as_str).collect();
    assert_eq!(parts, ["ce", "hint", "kd"]);
    assert!(full_report.history.iter().all(|r| r.train_loss.is_finite()));

    // The regressor is optimised: every one of its variables moved from its initial value.
    assert_eq!(init.len(), 4);
    for ((name, before), (_, after)) in init.iter().zip(&full.regressor) {
        assert_ne!(before, after, "{name} never moved");
    }

    // Stopped after epoch 1, then a fresh build resumes to 2.
    let b = tempfile::tempdir().unwrap();
    assert_eq!(run(b.path(), 1, None).report.unwrap().history.len(), 1);
    let resumed = run(b.path(), 2, None);
    let resumed_report = resumed.report.unwrap();
    assert_eq!(resumed_report.resumed_epochs, 1);
    assert_eq!(full.student, resumed.student, "student variables (running statistics included)");
    assert_eq!(full.regressor, resumed.regressor, "regressor variables");
    assert_same_history(&full_report, &resumed_report);

    // Killed in the middle of epoch 2: epoch 1's checkpoint is what a restart finds.
    let c = tempfile::tempdir().unwrap();
    let killed = run(c.path(), 2, Some((1, 1)));
    let e = killed.report.unwrap_err().to_string();
    assert!(e.contains("killed at epoch 1, step 1"), "{e}");
    assert!(c.path().join("ckpt.safetensors").exists());
    let restarted = run(c.path(), 2, None);
    let restarted_report = restarted.report.unwrap();
    assert_eq!(restarted_report.resumed_epochs, 1);
    assert_eq!(full.student, restarted.student);
    assert_eq!(full.regressor, restarted.regressor);
    assert_same_history(&full_report, &restarted_report);
}

#[test]
fn the_students_reported_size_leaves_the_regressor_out() {
    let r = build(&FitNetMethodConfig::default());
    let entries = r.method.eval_entries();
    assert_eq!(entries.len(), 1);
    assert_eq!((entries[0].role.as_str(), entries[0].model.as_str()), ("student", STUDENT));
    let student_params: usize =
        kd_models::trainable_vars(&r.student_vars).iter().map(|(_, v)| v.elem_count()).sum();
    assert_eq!(entries[0].params, student_params);
    // resnet8 stage 1 (32, 16, 16) onto resnet8x4 stage 1 (128, 16, 16): a 1x1 conv with bias
    // and a batch norm, 32·128 + 128 + 2·128.
    assert_eq!(r.method.regressor_params(), 32 * 128 + 128 + 2 * 128);
    let names: Vec<String> = r.trainable.iter().map(|(n, _)| n.clone()).collect();
    for n in [
        "method/regressor.bn.bias",
        "method/regressor.bn.weight",
        "method/regressor.conv.bias",
        "method/regressor.conv.weight",
    ] {
        assert!(names.iter().any(|x| x == n), "{n} not optimised: {names:?}");
    }
    assert_eq!(r.trainable.len(), kd_models::trainable_vars(&r.student_vars).len() + 4);
}

#[test]
fn the_hint_term_is_the_reference_checked_fitnet_loss_and_the_total_repdistillers_sum() {
    let cfg = FitNetMethodConfig { alpha: 0.5, gamma: 0.7, ..Default::default() };
    let mut r = build(&cfg);
    let b = batch(0, 0);
    let ctx = StepContext { epoch: 0, epochs: 1, step_in_epoch: 0, steps_per_epoch: 1 };
    let losses = r.method.losses(&b, &ctx).unwrap();
    let part = |name: &str| {
        losses.parts.iter().find(|(n, _)| n == name).unwrap().1.to_scalar::<f32>().unwrap() as f64
    };
    let total = losses.total.to_scalar::<f32>().unwrap() as f64;
    let want = 0.7 * part("ce") + 0.5 * part("kd") + 100.0 * part("hint");
    assert!((total - want).abs() <= 1e-5 * want.abs(), "{total} vs {want}");

    // The same regressor built by the loss of kd_feature::fitnet (checked against
    // RepDistiller), with the same seeded initial values, gives the same hint.
    let (_tv, teacher) = kd_models::new_model(TEACHER, CLASSES, 99, &Device::Cpu).unwrap();
    let s_out = r.student.forward(&b.inputs, Mode::Train).unwrap();
    let t_out = teacher.forward(&b.inputs, Mode::Eval).unwrap();
    let varmap = VarMap::new();
    let vb = kd_core::init::seeded_var_builder(
        &varmap,
        kd_core::seed::derive_seed(SEED, "init/fitnet-regressor"),
        DType::F32,
        &Device::Cpu,
    );
    let (ss, ts) = (FeatureShapes::of(&s_out).unwrap(), FeatureShapes::of(&t_out).unwrap());
    let fitnet = FitNet::new(&FitNetConfig::default(), &ss, &ts, vb.pp("regressor")).unwrap();
    let reference = fitnet.loss(&s_out, &t_out).unwrap().to_scalar::<f32>().unwrap() as f64;
    assert_eq!(reference, part("hint"));
    // The regressor's gradient flows; the teacher's does not (its features come detached).
    let grads = losses.total.backward().unwrap();
    for (name, v) in r.method.parameters() {
        assert!(grads.get(v.as_tensor()).is_some(), "{name} gets no gradient");
    }
}

#[test]
fn kd_cores_seeded_init_draws_what_kd_models_draws() {
    let dev = Device::Cpu;
    let (a, b) = (VarMap::new(), VarMap::new());
    let init = candle_nn::Init::Uniform { lo: -0.3, up: 0.3 };
    let x =
        kd_core::init::seeded_var_builder(&a, 5, DType::F32, &dev).get_with_hints((4, 3), "w", init).unwrap();
    let y = kd_models::seeded_var_builder(&b, 5, DType::F32, &dev).get_with_hints((4, 3), "w", init).unwrap();
    assert_eq!(x.to_vec2::<f32>().unwrap(), y.to_vec2::<f32>().unwrap());
}

#[test]
fn a_hint_pair_across_resolutions_builds_and_trains() {
    // Student stage 0 (16, 32, 32) onto teacher stage 1 (128, 16, 16): the stride-2 3x3 conv.
    let cfg = FitNetMethodConfig { hint_stage: 0, teacher_stage: Some(1), ..Default::default() };
    let mut r = build(&cfg);
    assert_eq!(r.method.regressor_params(), 128 * 16 * 9 + 128 + 2 * 128);
    let ctx = StepContext { epoch: 0, epochs: 1, step_in_epoch: 0, steps_per_epoch: 1 };
    let l = r.method.losses(&batch(0, 0), &ctx).unwrap().total.to_scalar::<f32>().unwrap();
    assert!(l.is_finite() && l > 0.0, "{l}");
}

/// A teacher source with logits only (what a soft-label cache is).
struct LogitsOnly(Arc<dyn Classifier>);
impl TeacherLogits for LogitsOnly {
    fn logits(&mut self, batch: &Batch) -> candle_core::Result<Tensor> {
        Ok(self.0.forward(&batch.inputs, Mode::Eval)?.logits.detach())
    }
    fn model(&self) -> &Arc<dyn Classifier> {
        &self.0
    }
}

fn refusal(cfg: &FitNetMethodConfig, teacher: Box<dyn TeacherLogits>) -> String {
    let (_v, student) = kd_models::new_model(STUDENT, CLASSES, 1, &Device::Cpu).unwrap();
    let probe = Tensor::zeros((2, 3, 32, 32), DType::F32, &Device::Cpu).unwrap();
    match FitNetMethod::new(Arc::from(student), teacher, cfg, &probe, SEED) {
        Ok(_) => panic!("should be refused"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn what_cannot_work_is_refused_when_the_method_is_built() {
    let teacher = |classes| -> Arc<dyn Classifier> {
        Arc::from(kd_models::new_model(TEACHER, classes, 2, &Device::Cpu).unwrap().1)
    };
    let cfg = FitNetMethodConfig::default();
    let m = refusal(&cfg, Box::new(LogitsOnly(teacher(CLASSES))));
    assert!(m.contains("logits only") && m.contains(TEACHER), "{m}");
    let m = refusal(&cfg, Box::new(LiveTeacher::new(teacher(100))));
    assert!(m.contains("label space"), "{m}");
    let m = refusal(
        &FitNetMethodConfig { teacher_stage: Some(3), ..cfg.clone() },
        Box::new(LiveTeacher::new(teacher(CLASSES))),
    );
    assert!(m.contains("teacher_stage = 3") && m.contains("3 stage features"), "{m}");
    let m =
        refusal(&FitNetMethodConfig { hint_stage: 5, ..cfg }, Box::new(LiveTeacher::new(teacher(CLASSES))));
    assert!(m.contains("hint_stage = 5") && m.contains(STUDENT), "{m}");
}

#[test]
fn config_defaults_are_repdistillers_and_unknown_keys_are_refused() {
    let table = |s: &str| -> toml::Table { s.parse().unwrap() };
    let cfg = FitNetMethodConfig::from_table(&toml::Table::new()).unwrap();
    assert_eq!(
        cfg,
        FitNetMethodConfig {
            gamma: 1.0,
            alpha: 0.0,
            beta: 100.0,
            temperature: 4.0,
            hint_stage: 1,
            teacher_stage: None
        }
    );
    assert_eq!(cfg.teacher_stage(), 1);
    let pair = FitNetMethodConfig::from_table(&table("hint_stage = 1\nteacher_stage = 2")).unwrap();
    assert_eq!((pair.hint_stage, pair.teacher_stage()), (1, 2));
    let e = FitNetMethodConfig::from_table(&table("hint_layer = 2")).unwrap_err().to_string();
    assert!(e.contains("fitnet") && e.contains("hint_layer"), "{e}");
    let e = FitNetMethodConfig::from_table(&table("beta = -1.0")).unwrap_err().to_string();
    assert!(e.contains("beta"), "{e}");
    let e = FitNetMethodConfig::from_table(&table("temperature = 0.0")).unwrap_err().to_string();
    assert!(e.contains("temperature"), "{e}");
    assert_eq!(
        FitNetMethod::feature_request(),
        kd_core::teacher::FeatureRequest { stages: true, embedding: false }
    );
}
