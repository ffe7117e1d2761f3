//! Every loss against RepDistiller's own code: the fixtures in tests/fixtures/ hold the inputs,
//! parameters, loss and gradients its `distiller_zoo` produced (make_fixtures.py, README there).
//!
//! Each case runs in float64 (the reference's precision: any difference is ours) and in float32
//! (the training precision). Tensors are compared scale-relative: `max|ours − ref| ≤ tol·max|ref|`.

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use kd_core::ModelOutput;
use kd_feature::*;

/// float64: the reference values are float64 rounded once to float32 (gradients), so agreement
/// is bounded by that rounding (~6e-8), far below this.
const TOL_F64: f64 = 1e-5;
/// float32: summation order differs from PyTorch's float64. Measured worst case 8.2e-6 (PKT's
/// gradients, whose probabilities are ratios of near-equal sums); 2e-5 leaves headroom for other
/// CPUs' SIMD reduction orders. Everything else is below 6e-7.
const TOL_F32: f64 = 2e-5;

fn fixture(name: &str) -> HashMap<String, Tensor> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name);
    candle_core::safetensors::load(&path, &Device::Cpu).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Student features are gradient leaves (`Var`s), the teacher's are constants.
struct Outputs {
    student: ModelOutput,
    student_vars: Vec<(String, Var)>,
    teacher: ModelOutput,
}

fn outputs(inputs: &HashMap<String, Tensor>, dtype: DType) -> Outputs {
    let get = |k: &str| inputs[k].to_dtype(dtype).unwrap();
    let stages = |role: &str| {
        (0..)
            .map_while(|i| inputs.get(&format!("{role}.stage{i}")).map(|_| get(&format!("{role}.stage{i}"))))
            .collect::<Vec<_>>()
    };
    let student_vars: Vec<(String, Var)> = stages("student")
        .into_iter()
        .enumerate()
        .map(|(i, t)| (format!("stage{i}"), Var::from_tensor(&t).unwrap()))
        .chain([("embedding".to_string(), Var::from_tensor(&get("student.embedding")).unwrap())])
        .collect();
    let batch = student_vars[0].1.dim(0).unwrap();
    let logits = Tensor::zeros((batch, 10), dtype, &Device::Cpu).unwrap();
    let n = student_vars.len() - 1;
    let student = ModelOutput {
        logits: logits.clone(),
        stage_features: student_vars[..n].iter().map(|(_, v)| v.as_tensor().clone()).collect(),
        embedding: student_vars[n].1.as_tensor().clone(),
    };
    let teacher =
        ModelOutput { logits, stage_features: stages("teacher"), embedding: get("teacher.embedding") };
    Outputs { student, student_vars, teacher }
}

fn build(method: &str, s: &FeatureShapes, t: &FeatureShapes, vb: VarBuilder) -> Box<dyn FeatureLoss> {
    match method {
        "fitnet0" | "fitnet1" | "fitnet2" => {
            let hint_stage = method[6..].parse().unwrap();
            Box::new(FitNet::new(&FitNetConfig { hint_stage, ..Default::default() }, s, t, vb).unwrap())
        }
        "at" => Box::new(Attention::new(&AttentionConfig::default(), s, t).unwrap()),
        "sp" => Box::new(Similarity::new(&SimilarityConfig::default(), s, t).unwrap()),
        "cc" => Box::new(Correlation::new(&CorrelationConfig::default(), s, t, vb).unwrap()),
        "vid" => Box::new(Vid::new(&VidConfig::default(), s, t, vb).unwrap()),
        "rkd" => Box::new(Rkd::new(&RkdConfig::default(), s, t).unwrap()),
        "pkt" => Box::new(Pkt::new(&PktConfig::default(), s, t).unwrap()),
        "nst" => Box::new(NeuronSelectivity::new(&NstConfig::default(), s, t).unwrap()),
        other => panic!("unknown method {other}"),
    }
}

/// Below this a reference gradient is an exact zero plus rounding: FitNet's `conv.bias` feeds a
/// training-mode batch norm, which removes any per-channel shift (reference max ~1e-16).
const EXACT_ZERO: f64 = 1e-12;
/// What "zero" means for our gradient there, absolute (float32 rounding of a cancelling sum).
const ZERO_ABS_TOL: f64 = 1e-6;

fn max_abs(t: &Tensor) -> f64 {
    t.to_dtype(DType::F64).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap()
}

/// `max|a − b| / max|b|`, or for an exactly-zero reference 0 once `max|a|` is within
/// [`ZERO_ABS_TOL`].
fn rel_err(ours: &Tensor, reference: &Tensor) -> f64 {
    assert_eq!(ours.dims(), reference.dims(), "shape");
    let a = ours.to_dtype(DType::F64).unwrap();
    let b = reference.to_dtype(DType::F64).unwrap();
    let scale = max_abs(&b);
    if scale < EXACT_ZERO {
        let m = max_abs(&a);
        assert!(m <= ZERO_ABS_TOL, "reference gradient is zero, ours reaches {m:.2e}");
        return 0.0;
    }
    max_abs(&(a - &b).unwrap()) / scale
}

/// Runs one fixture case; returns the worst relative error over the loss and all gradients.
fn check(method: &str, set: &str, dtype: DType, tol: f64) -> f64 {
    let inputs = fixture(&format!("inputs_{set}.safetensors"));
    let expected = fixture(&format!("{method}_{set}.safetensors"));
    let out = outputs(&inputs, dtype);
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, dtype, &Device::Cpu);
    let loss_fn = build(
        method,
        &FeatureShapes::of(&out.student).unwrap(),
        &FeatureShapes::of(&out.teacher).unwrap(),
        vb,
    );

    // Our parameter names are RepDistiller's state-dict names: every one is in the fixture.
    let params: BTreeSet<String> =
        expected.keys().filter_map(|k| k.strip_prefix("param.")).map(String::from).collect();
    let ours: BTreeSet<String> = varmap.data().lock().unwrap().keys().cloned().collect();
    assert_eq!(ours, params, "{method}/{set}: parameter names");
    for name in &params {
        varmap.data().lock().unwrap()[name]
            .set(&expected[&format!("param.{name}")].to_dtype(dtype).unwrap())
            .unwrap();
    }

    let loss = loss_fn.loss(&out.student, &out.teacher).unwrap();
    assert_eq!(loss.dims(), &[] as &[usize], "{method}/{set}: the loss is a scalar");
    let mut worst = rel_err(&loss.reshape(1).unwrap(), &expected["loss"]);
    let weighted = loss_fn.weighted_loss(&out.student, &out.teacher).unwrap().to_dtype(DType::F64).unwrap();
    let plain = loss.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap();
    assert!(
        (weighted.to_scalar::<f64>().unwrap() - loss_fn.beta() * plain).abs()
            <= 1e-6 * (loss_fn.beta() * plain).abs()
    );

    let grads = loss.backward().unwrap();
    for (feat, var) in &out.student_vars {
        let ours = grads.get(var.as_tensor());
        match expected.get(&format!("grad.student.{feat}")) {
            Some(reference) => {
                let ours = ours.unwrap_or_else(|| panic!("{method}/{set}: no gradient for student {feat}"));
                let e = rel_err(ours, reference);
                assert!(e <= tol, "{method}/{set} {dtype:?}: grad of student {feat} off by {e:.2e}");
                worst = worst.max(e);
            }
            // A feature the reference does not read must not receive a gradient.
            None => {
                if let Some(g) = ours {
                    let m = max_abs(g);
                    assert_eq!(m, 0.0, "{method}/{set}: student {feat} is not read by the reference");
                }
            }
        }
    }
    let data = varmap.data().lock().unwrap();
    for name in &params {
        let ours = grads
            .get(data[name].as_tensor())
            .unwrap_or_else(|| panic!("{method}/{set}: no gradient for {name}"));
        let e = rel_err(ours, &expected[&format!("grad.param.{name}")]);
        assert!(e <= tol, "{method}/{set} {dtype:?}: grad of {name} off by {e:.2e}");
        worst = worst.max(e);
    }
    assert!(worst <= tol, "{method}/{set} {dtype:?}: loss off by {worst:.2e}");
    println!("{method:8} {set:9} {dtype:?}: worst relative error {worst:.2e}");
    worst
}

fn check_both(method: &str, set: &str) {
    check(method, set, DType::F64, TOL_F64);
    check(method, set, DType::F32, TOL_F32);
}

#[test]
fn fitnet_matches_repdistiller() {
    check_both("fitnet1", "resnet");
    // The three ConvReg branches: stride-2 conv (8 -> 4), valid 3x3 conv (6 -> 4), transposed conv (2 -> 4).
    for case in ["fitnet0", "fitnet1", "fitnet2"] {
        check_both(case, "mismatch");
    }
}

#[test]
fn attention_matches_repdistiller() {
    check_both("at", "resnet");
    check_both("at", "mismatch");
}

#[test]
fn similarity_matches_repdistiller() {
    check_both("sp", "resnet");
    check_both("sp", "mismatch");
}

#[test]
fn correlation_matches_repdistiller() {
    check_both("cc", "resnet");
    check_both("cc", "mismatch");
}

#[test]
fn vid_matches_repdistiller() {
    check_both("vid", "resnet");
    check_both("vid", "mismatch");
}

#[test]
fn rkd_matches_repdistiller() {
    check_both("rkd", "resnet");
    check_both("rkd", "mismatch");
}

#[test]
fn pkt_matches_repdistiller() {
    check_both("pkt", "resnet");
    check_both("pkt", "mismatch");
}

#[test]
fn nst_matches_repdistiller() {
    check_both("nst", "resnet");
    check_both("nst", "mismatch");
}
