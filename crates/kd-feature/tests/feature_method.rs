//! Every feature loss as a method ([`FeatureMethod`]), with real CIFAR ResNets (kd-models, a
//! dev-dependency only) on synthetic inputs: the step is RepDistiller's `γ·CE + α·KD + β·loss`
//! with the reference-checked loss itself as the feature term; the losses' own parameters
//! (CC's embeddings, VID's regressors and variances) are the method's, get gradients, and are
//! seeded; what cannot work is refused when the method is built.

use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use kd_core::losses::{cross_entropy, distill_kl};
use kd_core::teacher::{LiveTeacher, TeacherLogits};
use kd_core::{Batch, Classifier, Method, Mode, StepContext};
use kd_feature::{
    Attention, AttentionConfig, Correlation, CorrelationConfig, FeatureError, FeatureLoss, FeatureMethod,
    FeatureShapes, NeuronSelectivity, NstConfig, Pkt, PktConfig, Rkd, RkdConfig, Similarity,
    SimilarityConfig, StepWeights, Vid, VidConfig,
};

const CLASSES: usize = 10;
const BATCH: usize = 8;
const SEED: u64 = 11;
const STUDENT: &str = "resnet8";
const TEACHER: &str = "resnet8x4";

type Make = fn(&FeatureShapes, &FeatureShapes, VarBuilder) -> Result<Box<dyn FeatureLoss>, FeatureError>;

/// Each loss of the zoo with its reference defaults, and whether it owns parameters.
fn losses() -> Vec<(&'static str, Make, bool)> {
    vec![
        ("at", |s, t, _| Ok(Box::new(Attention::new(&AttentionConfig::default(), s, t)?)), false),
        ("sp", |s, t, _| Ok(Box::new(Similarity::new(&SimilarityConfig::default(), s, t)?)), false),
        ("cc", |s, t, vb| Ok(Box::new(Correlation::new(&CorrelationConfig::default(), s, t, vb)?)), true),
        ("vid", |s, t, vb| Ok(Box::new(Vid::new(&VidConfig::default(), s, t, vb)?)), true),
        ("rkd", |s, t, _| Ok(Box::new(Rkd::new(&RkdConfig::default(), s, t)?)), false),
        ("pkt", |s, t, _| Ok(Box::new(Pkt::new(&PktConfig::default(), s, t)?)), false),
        ("nst", |s, t, _| Ok(Box::new(NeuronSelectivity::new(&NstConfig::default(), s, t)?)), false),
    ]
}

fn batch() -> Batch {
    let n = BATCH * 3 * 32 * 32;
    let values: Vec<f32> = (0..n).map(|i| ((i as f32) * 0.017).sin()).collect();
    let labels: Vec<u32> = (0..BATCH).map(|i| ((i * 3) % CLASSES) as u32).collect();
    Batch {
        inputs: Tensor::from_vec(values, (BATCH, 3, 32, 32), &Device::Cpu).unwrap(),
        labels: Tensor::new(labels.as_slice(), &Device::Cpu).unwrap(),
        example_ids: (0..BATCH as u32).collect(),
        views: vec![0; BATCH],
        strong: None,
    }
}

fn model(arch: &str, classes: usize, seed: u64) -> Arc<dyn Classifier> {
    Arc::from(kd_models::new_model(arch, classes, seed, &Device::Cpu).unwrap().1)
}

fn probe() -> Tensor {
    Tensor::zeros((2, 3, 32, 32), DType::F32, &Device::Cpu).unwrap()
}

fn method(
    name: &'static str,
    make: Make,
    weights: StepWeights,
    teacher: Box<dyn TeacherLogits>,
) -> Result<FeatureMethod, FeatureError> {
    FeatureMethod::new(name, model(STUDENT, CLASSES, 1), teacher, weights, &probe(), SEED, &make)
}

fn scalar(t: &Tensor) -> f64 {
    t.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap()
}

#[test]
fn each_loss_is_the_feature_term_of_repdistillers_step() {
    let ctx = StepContext { epoch: 0, epochs: 1, step_in_epoch: 0, steps_per_epoch: 1 };
    let teacher_model = model(TEACHER, CLASSES, 2);
    let student_model = model(STUDENT, CLASSES, 1);
    let b = batch();
    for (name, make, _) in losses() {
        // α > 0 so that every term of the sum is exercised.
        let weights = StepWeights { gamma: 0.7, alpha: 0.3, temperature: 4.0 };
        let teacher = Box::new(LiveTeacher::new(teacher_model.clone()));
        let mut m =
            FeatureMethod::new(name, student_model.clone(), teacher, weights.clone(), &probe(), SEED, &make)
                .unwrap();
        assert_eq!((m.name(), m.variant()), (name, name));
        let losses = m.losses(&b, &ctx).unwrap();
        let part = |p: &str| scalar(&losses.parts.iter().find(|(n, _)| n == p).unwrap().1);

        // The same loss built directly, from the same seed, on the same outputs.
        let s_out = student_model.forward(&b.inputs, Mode::Train).unwrap();
        let t_out = teacher_model.forward(&b.inputs, Mode::Eval).unwrap();
        let shapes =
            |m: &Arc<dyn Classifier>| FeatureShapes::of(&m.forward(&probe(), Mode::Eval).unwrap()).unwrap();
        let varmap = VarMap::new();
        let vb = kd_core::init::seeded_var_builder(
            &varmap,
            kd_core::seed::derive_seed(SEED, &format!("init/{name}")),
            DType::F32,
            &Device::Cpu,
        );
        let direct = make(&shapes(&student_model), &shapes(&teacher_model), vb).unwrap();
        let feature = scalar(&direct.loss(&s_out, &t_out).unwrap());
        let ce = scalar(&cross_entropy(&s_out.logits, &b.labels, 0.0).unwrap());
        let kd = scalar(&distill_kl(&s_out.logits, &t_out.logits, 4.0).unwrap());
        let close = |a: f64, b: f64| (a - b).abs() <= 1e-5 * b.abs().max(1e-3);
        assert!(close(part(name), feature), "{name}: part {} vs the loss {feature}", part(name));
        assert!(close(part("ce"), ce) && close(part("kd"), kd), "{name}: ce/kd");
        let want = 0.7 * ce + 0.3 * kd + direct.beta() * feature;
        let total = scalar(&losses.total);
        assert!(close(total, want), "{name}: total {total} vs γ·CE + α·KD + β·loss = {want}");
    }
}

#[test]
fn a_losss_own_parameters_are_the_methods_and_get_gradients() {
    let ctx = StepContext { epoch: 0, epochs: 1, step_in_epoch: 0, steps_per_epoch: 1 };
    for (name, make, owns) in losses() {
        let teacher = Box::new(LiveTeacher::new(model(TEACHER, CLASSES, 2)));
        let mut m = method(name, make, StepWeights::default(), teacher).unwrap();
        let params = m.parameters();
        assert_eq!(!params.is_empty(), owns, "{name}: {:?}", params.iter().map(|p| &p.0).collect::<Vec<_>>());
        assert_eq!(m.own_params(), params.iter().map(|(_, v)| v.elem_count()).sum::<usize>());
        let mut names: Vec<&String> = params.iter().map(|(n, _)| n).collect();
        let sorted = names.clone();
        names.sort();
        names.dedup();
        assert_eq!(names, sorted, "{name}: unique names, sorted");
        let grads = m.losses(&batch(), &ctx).unwrap().total.backward().unwrap();
        for (n, v) in &params {
            let g = grads.get(v.as_tensor()).unwrap_or_else(|| panic!("{name}: `{n}` gets no gradient"));
            let norm = scalar(&g.sqr().unwrap().sum_all().unwrap());
            assert!(norm.is_finite() && norm > 0.0, "{name}: `{n}` gradient norm {norm}");
        }
        // Seeded: a second build draws the same initial values.
        let again = method(
            name,
            make,
            StepWeights::default(),
            Box::new(LiveTeacher::new(model(TEACHER, CLASSES, 2))),
        )
        .unwrap();
        for ((_, a), (_, b)) in params.iter().zip(again.parameters()) {
            let (a, b) = (a.flatten_all().unwrap(), b.flatten_all().unwrap());
            assert_eq!(a.to_vec1::<f32>().unwrap(), b.to_vec1::<f32>().unwrap(), "{name}");
        }
    }
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

#[test]
fn what_cannot_work_is_refused_naming_the_method() {
    let refusal = |name, make, weights, teacher| match method(name, make, weights, teacher) {
        Ok(_) => panic!("{name}: should be refused"),
        Err(e) => e.to_string(),
    };
    for (name, make, _) in losses() {
        let m = refusal(name, make, StepWeights::default(), Box::new(LogitsOnly(model(TEACHER, CLASSES, 2))));
        assert!(m.contains(&format!("method `{name}`")) && m.contains("logits only"), "{m}");
        let m =
            refusal(name, make, StepWeights::default(), Box::new(LiveTeacher::new(model(TEACHER, 100, 2))));
        assert!(m.contains("label space"), "{m}");
        let bad = StepWeights { gamma: -1.0, ..StepWeights::default() };
        let m = refusal(name, make, bad, Box::new(LiveTeacher::new(model(TEACHER, CLASSES, 2))));
        assert!(m.contains("`gamma`") && m.contains(">= 0"), "{m}");
    }
    // The stage-wise losses need as many stages in both models: a 4-stage WRN-16-2 has more
    // than a CIFAR ResNet's three.
    let wrn = || Box::new(LiveTeacher::new(model("wrn_16_2", CLASSES, 2)));
    for (name, make, _) in losses().into_iter().filter(|(n, _, _)| ["at", "vid", "nst"].contains(n)) {
        let m = refusal(name, make, StepWeights::default(), wrn());
        assert!(m.contains("stage"), "{name}: {m}");
    }
}

#[test]
fn the_steps_keys_are_split_from_the_losss_and_validated() {
    let table: toml::Table = toml::from_str("gamma = 0.5\nalpha = 0.1\nbeta = 7.0\np = 2").unwrap();
    let (w, rest) = StepWeights::split("at", &table).unwrap();
    assert_eq!(w, StepWeights { gamma: 0.5, alpha: 0.1, temperature: 4.0 });
    assert_eq!(rest.keys().collect::<Vec<_>>(), ["beta", "p"]);
    assert_eq!(AttentionConfig::from_table(&rest).unwrap().beta, 7.0);
    let defaults = StepWeights::split("at", &toml::Table::new()).unwrap().0;
    assert_eq!(
        defaults,
        StepWeights { gamma: 1.0, alpha: 0.0, temperature: 4.0 },
        "RepDistiller's -r 1 -a 0"
    );
    let bad: toml::Table = toml::from_str("temperature = 0.0").unwrap();
    let e = StepWeights::split("at", &bad).unwrap_err().to_string();
    assert!(e.contains("`temperature`") && e.contains("method `at`"), "{e}");
}
