//! ReviewKD against the authors' own code (dvlab-research/ReviewKD, CIFAR-100): fused maps,
//! HCL loss, gradients w.r.t. the student's features and every ABF parameter, batch-norm
//! running statistics after the step. Fixtures: tests/fixtures/review_kd_* (see
//! README-crd-review.md for the reference commit and the command that made them).

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use kd_core::model::Mode;
use kd_feature::review_kd::{hcl, ReviewKd, ReviewKdConfig};

fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn load(name: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture_dir().join(name), &Device::Cpu).unwrap()
}

fn meta() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(fixture_dir().join("review_kd_reference.json")).unwrap())
        .unwrap()
}

fn get(t: &HashMap<String, Tensor>, name: &str, dtype: DType) -> Tensor {
    t.get(name).unwrap_or_else(|| panic!("fixture has no `{name}`")).to_dtype(dtype).unwrap()
}

fn to_f64(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1().unwrap()
}

/// Largest error relative to `max(|expected|, floor · max|expected|, ABS_FLOOR)`: the floors
/// keep elements that are zero up to rounding (e.g. a batch norm's running mean after a
/// batch-normalised input, ~1e-18 in the reference, ~1e-9 in float32) from dominating.
fn rel_err(actual: &Tensor, expected: &Tensor, floor: f64) -> f64 {
    let abs_floor = if actual.dtype() == DType::F32 { 1e-5 } else { 1e-9 };
    assert_eq!(actual.dims(), expected.dims());
    let (a, e) = (to_f64(actual), to_f64(expected));
    let scale = e.iter().fold(0f64, |m, v| m.max(v.abs()));
    a.iter()
        .zip(&e)
        .map(|(a, e)| (a - e).abs() / e.abs().max(floor * scale).max(abs_floor))
        .fold(0.0, f64::max)
}

fn rel(a: f64, e: f64) -> f64 {
    (a - e).abs() / e.abs().max(f64::MIN_POSITIVE)
}

struct Case {
    net: ReviewKd,
    vars: HashMap<String, Var>,
    student: Vec<Var>,
    teacher: Vec<Tensor>,
}

fn shapes(v: &serde_json::Value) -> Vec<usize> {
    v.as_array().unwrap().iter().map(|p| p[0].as_u64().unwrap() as usize).collect()
}

fn build(t: &HashMap<String, Tensor>, fixture: &serde_json::Value, dtype: DType) -> Case {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, dtype, &Device::Cpu);
    // Weight 1 and no warm-up: loss_from_features is then exactly `hcl`.
    let config = ReviewKdConfig { weight: 1.0, warmup_epochs: 0.0 };
    let net =
        ReviewKd::new(&config, &shapes(&fixture["student_shapes"]), &shapes(&fixture["teacher_shapes"]), vb)
            .unwrap();
    let vars = varmap.data().lock().unwrap().clone();
    let levels = fixture["student_shapes"].as_array().unwrap().len();
    let student =
        (0..levels).map(|k| Var::from_tensor(&get(t, &format!("student.{k}"), dtype)).unwrap()).collect();
    let teacher = (0..levels).map(|k| get(t, &format!("teacher.{k}"), dtype)).collect();
    Case { net, vars, student, teacher }
}

/// The small fixture: torch-initialised parameters and every gradient stored, teacher maps
/// twice the student's size (the ABF output-interpolation path).
fn run_small(dtype: DType, tol: f64, floor: f64) -> f64 {
    let t = load("review_kd_small.safetensors");
    let m = meta();
    let fixture = &m["fixtures"]["small"];
    let mut case = build(&t, fixture, dtype);
    let mut names: Vec<&String> = case.vars.keys().collect();
    names.sort();
    let stored: Vec<&str> = t.keys().filter_map(|k| k.strip_prefix("param.")).collect();
    assert_eq!(names.len(), stored.len(), "parameters {names:?} vs the reference's {stored:?}");
    for (name, var) in &case.vars {
        var.set(&get(&t, &format!("param.{name}"), dtype)).unwrap();
    }
    let mut worst = 0f64;
    let mut check = |what: &str, a: &Tensor, e: &Tensor| {
        let err = rel_err(a, e, floor);
        worst = worst.max(err);
        assert!(err <= tol, "{what}: relative error {err:e} > {tol:e}");
    };

    let student: Vec<Tensor> = case.student.iter().map(|v| v.as_tensor().clone()).collect();
    let sizes: Vec<(usize, usize)> = case.teacher.iter().map(|t| (t.dims()[2], t.dims()[3])).collect();
    let fused = case.net.fuse(&student, &sizes, Mode::Train).unwrap();
    for (k, f) in fused.iter().enumerate() {
        check(&format!("fused level {k}"), f, &get(&t, &format!("result.{k}"), DType::F64));
    }
    let loss = hcl(&fused, &case.teacher).unwrap();
    let expected = fixture["hcl"].as_f64().unwrap();
    let got = loss.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap();
    assert!(rel(got, expected) <= tol, "hcl {got} vs reference {expected}");
    let grads = loss.backward().unwrap();
    for (k, v) in case.student.iter().enumerate() {
        check(
            &format!("grad student level {k}"),
            grads.get(v).unwrap(),
            &get(&t, &format!("grad.student.{k}"), DType::F64),
        );
    }
    for (name, var) in &case.vars {
        let g = grads.get(var.as_tensor()).unwrap_or_else(|| panic!("no gradient for {name}"));
        check(&format!("grad {name}"), g, &get(&t, &format!("grad.{name}"), DType::F64));
    }
    let state = case.net.state().unwrap();
    assert_eq!(state.len(), t.keys().filter(|k| k.starts_with("after.")).count());
    for (name, s) in &state {
        check(name, s, &get(&t, &format!("after.{name}"), DType::F64));
    }
    worst.max(rel(got, expected))
}

#[test]
fn small_matches_reviewkd_in_f64() {
    let worst = run_small(DType::F64, 1e-5, 1e-3);
    eprintln!("ReviewKD small f64: worst relative error {worst:e}");
}

/// float32 against the float64 reference: rounding only (batch-norm statistics over few values).
#[test]
fn small_matches_reviewkd_in_f32() {
    let worst = run_small(DType::F32, 1e-3, 1e-3);
    eprintln!("ReviewKD small f32: worst relative error {worst:e}");
}

/// ResNet-56 → ResNet-20 widths (16/32/64, pooled 64) at 8/4/2/1: parameters from the
/// fixture's formula, gradients w.r.t. the student's maps in full, parameter gradients as
/// sum, L2 norm and 16 sampled elements.
#[test]
fn resnet20_widths_match_reviewkd_in_f64() {
    let t = load("review_kd_resnet20.safetensors");
    let m = meta();
    let fixture = &m["fixtures"]["resnet20"];
    let mut case = build(&t, fixture, DType::F64);
    let formula = fixture["params"].as_object().unwrap();
    assert_eq!(case.vars.len(), formula.len());
    for (name, var) in &case.vars {
        let f = &formula[name];
        let (index, offset, scale) =
            (f["index"].as_f64().unwrap(), f["offset"].as_f64().unwrap(), f["scale"].as_f64().unwrap());
        let n = var.elem_count();
        let v: Vec<f64> =
            (0..n).map(|i| (offset + scale * (0.37 * i as f64 + 0.5 * index).sin()) as f32 as f64).collect();
        var.set(&Tensor::from_vec(v, var.shape(), &Device::Cpu).unwrap()).unwrap();
    }
    let tol = 1e-5;
    let student: Vec<Tensor> = case.student.iter().map(|v| v.as_tensor().clone()).collect();
    let loss = case.net.loss_from_features(&student, &case.teacher, 7, Mode::Train).unwrap();
    let got = loss.to_scalar::<f64>().unwrap();
    let expected = fixture["hcl"].as_f64().unwrap();
    assert!(rel(got, expected) <= tol, "hcl {got} vs reference {expected}");
    let mut worst = rel(got, expected);
    let grads = loss.backward().unwrap();
    for (k, v) in case.student.iter().enumerate() {
        let err = rel_err(grads.get(v).unwrap(), &get(&t, &format!("grad.student.{k}"), DType::F64), 1e-3);
        worst = worst.max(err);
        assert!(err <= tol, "grad student level {k}: {err:e}");
    }
    let summary = fixture["grad_summary"].as_object().unwrap();
    for (name, var) in &case.vars {
        let g = to_f64(grads.get(var.as_tensor()).unwrap());
        let s = &summary[name];
        let l2 = g.iter().map(|v| v * v).sum::<f64>().sqrt();
        let sum: f64 = g.iter().sum();
        let l2_ref = s["l2"].as_f64().unwrap();
        worst = worst.max(rel(l2, l2_ref));
        assert!(rel(l2, l2_ref) <= tol, "grad {name}: L2 {l2} vs {l2_ref}");
        // Sums can cancel: compare relative to the L2 norm.
        let sum_ref = s["sum"].as_f64().unwrap();
        assert!((sum - sum_ref).abs() <= tol * l2_ref, "grad {name}: sum {sum} vs {sum_ref}");
        for (pick, value) in s["picks"].as_array().unwrap().iter().zip(s["values"].as_array().unwrap()) {
            let (a, e) = (g[pick.as_u64().unwrap() as usize], value.as_f64().unwrap());
            assert!((a - e).abs() <= tol * e.abs().max(1e-3 * l2_ref), "grad {name}[{pick}]: {a} vs {e}");
        }
    }
    let running = fixture["running_after"].as_object().unwrap();
    for (name, s) in case.net.state().unwrap() {
        let v = to_f64(&s);
        let (sum, l2) = (v.iter().sum::<f64>(), v.iter().map(|x| x * x).sum::<f64>().sqrt());
        let r = &running[&name];
        assert!(rel(l2, r["l2"].as_f64().unwrap()) <= tol, "{name}: L2 {l2} vs {}", r["l2"]);
        assert!((sum - r["sum"].as_f64().unwrap()).abs() <= tol * l2, "{name}: sum {sum} vs {}", r["sum"]);
    }
    eprintln!("ReviewKD resnet20 f64: worst relative error {worst:e}");
}

/// `train.py`'s weighting `hcl · min(1, epoch / kd_warm_up) · kd_loss_weight`, epochs from 0.
#[test]
fn weighting_follows_train_py() {
    let m = meta();
    let small = &m["fixtures"]["small"];
    let config = ReviewKdConfig {
        weight: small["weight"].as_f64().unwrap(),
        warmup_epochs: small["warm_up"].as_f64().unwrap(),
    };
    let epoch = small["epoch"].as_u64().unwrap() as usize;
    let weighted = small["hcl"].as_f64().unwrap() * config.weight * config.warmup_factor(epoch);
    assert!(rel(weighted, small["weighted_loss"].as_f64().unwrap()) <= 1e-12);
    assert_eq!(config.warmup_factor(0), 0.0);
    assert_eq!(config.warmup_factor(10), 0.5);
    assert_eq!(config.warmup_factor(20), 1.0);
    assert_eq!(config.warmup_factor(200), 1.0);
}
