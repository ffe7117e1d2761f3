//! CRD against RepDistiller's own code: two consecutive steps (loss, gradients w.r.t. the
//! embeddings and both heads, both memory banks after the momentum update, the Z constants
//! fixed on the first step). Fixture: tests/fixtures/crd_two_steps.* (see
//! README-crd-review.md for the reference commit and the command that made it).

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use kd_feature::crd::{Crd, CrdConfig, NegativeSampling};

fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

struct Fixture {
    tensors: HashMap<String, Tensor>,
    meta: serde_json::Value,
}

fn load() -> Fixture {
    let dir = fixture_dir();
    let tensors =
        candle_core::safetensors::load(dir.join("crd_two_steps.safetensors"), &Device::Cpu).unwrap();
    let meta =
        serde_json::from_str(&std::fs::read_to_string(dir.join("crd_two_steps.json")).unwrap()).unwrap();
    Fixture { tensors, meta }
}

impl Fixture {
    fn get(&self, name: &str, dtype: DType) -> Tensor {
        self.tensors.get(name).unwrap_or_else(|| panic!("fixture has no `{name}`")).to_dtype(dtype).unwrap()
    }

    fn scalar(&self, name: &str) -> f64 {
        self.meta["scalars"][name].as_f64().unwrap_or_else(|| panic!("fixture has no scalar `{name}`"))
    }
}

/// Largest error relative to `max(|expected|, floor · max|expected|)`; the floor keeps
/// elements that are zero up to rounding from dominating.
fn rel_err(actual: &Tensor, expected: &Tensor, floor: f64) -> f64 {
    assert_eq!(actual.dims(), expected.dims());
    let a: Vec<f64> = actual.to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1().unwrap();
    let e: Vec<f64> = expected.to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1().unwrap();
    let scale = e.iter().fold(0f64, |m, v| m.max(v.abs()));
    a.iter()
        .zip(&e)
        .map(|(a, e)| (a - e).abs() / e.abs().max(floor * scale).max(f64::MIN_POSITIVE))
        .fold(0.0, f64::max)
}

fn check(name: &str, actual: &Tensor, expected: &Tensor, tol: f64, floor: f64, worst: &mut f64) {
    let err = rel_err(actual, expected, floor);
    *worst = worst.max(err);
    assert!(err <= tol, "{name}: relative error {err:e} > {tol:e}");
}

/// Runs both reference steps in `dtype`; returns the worst relative error seen.
fn run_two_steps(dtype: DType, tol: f64, floor: f64) -> f64 {
    let fx = load();
    let cfg = &fx.meta["config"];
    let n_data = cfg["n_data"].as_u64().unwrap() as usize;
    let config = CrdConfig {
        feat_dim: cfg["feat_dim"].as_u64().unwrap() as usize,
        nce_k: cfg["nce_k"].as_u64().unwrap() as usize,
        nce_t: cfg["nce_t"].as_f64().unwrap(),
        nce_m: cfg["nce_m"].as_f64().unwrap(),
        weight: 0.8,
        negatives: NegativeSampling::Uniform,
    };
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, dtype, &Device::Cpu);
    let s_dim = cfg["s_dim"].as_u64().unwrap() as usize;
    let t_dim = cfg["t_dim"].as_u64().unwrap() as usize;
    let mut crd = Crd::new(&config, s_dim, t_dim, n_data, None, 0, vb).unwrap();

    let params =
        ["embed_s.linear.weight", "embed_s.linear.bias", "embed_t.linear.weight", "embed_t.linear.bias"];
    let vars: HashMap<String, Var> = varmap.data().lock().unwrap().clone();
    assert_eq!(vars.len(), params.len(), "trainable parameters: {:?}", vars.keys());
    for p in params {
        vars[p].set(&fx.get(&format!("init.{p}"), dtype)).unwrap();
    }
    // The reference's initial banks, Z unset, and any sampler state (unused: contrast_idx given).
    let mut state: HashMap<String, Tensor> = crd.state().unwrap().into_iter().collect();
    state.insert("contrast.memory_v1".into(), fx.get("init.contrast.memory_v1", dtype));
    state.insert("contrast.memory_v2".into(), fx.get("init.contrast.memory_v2", dtype));
    crd.load_state(&state).unwrap();
    assert_eq!(crd.memory().normalisers().unwrap(), (None, None));

    let mut worst = 0f64;
    for step in ["step1", "step2"] {
        let f_s = Var::from_tensor(&fx.get(&format!("{step}.f_s"), dtype)).unwrap();
        let f_t = Var::from_tensor(&fx.get(&format!("{step}.f_t"), dtype)).unwrap();
        let idx: Vec<u32> = fx
            .get(&format!("{step}.idx"), DType::I64)
            .to_vec1::<i64>()
            .unwrap()
            .into_iter()
            .map(|i| i as u32)
            .collect();
        let contrast_idx = fx.get(&format!("{step}.contrast_idx"), DType::I64);
        let loss = crd.loss(f_s.as_tensor(), f_t.as_tensor(), &idx, Some(&contrast_idx)).unwrap();
        let expected = fx.scalar(&format!("{step}.loss"));
        let got = loss.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap();
        let err = (got - expected).abs() / expected.abs();
        worst = worst.max(err);
        assert!(err <= tol, "{step} loss {got} vs reference {expected} ({err:e})");

        let grads = loss.backward().unwrap();
        check(
            &format!("{step} grad f_s"),
            grads.get(&f_s).unwrap(),
            &fx.get(&format!("{step}.grad.f_s"), DType::F64),
            tol,
            floor,
            &mut worst,
        );
        check(
            &format!("{step} grad f_t"),
            grads.get(&f_t).unwrap(),
            &fx.get(&format!("{step}.grad.f_t"), DType::F64),
            tol,
            floor,
            &mut worst,
        );
        for p in params {
            let g = grads.get(vars[p].as_tensor()).unwrap_or_else(|| panic!("no gradient for {p}"));
            check(
                &format!("{step} grad {p}"),
                g,
                &fx.get(&format!("{step}.grad.{p}"), DType::F64),
                tol,
                floor,
                &mut worst,
            );
        }

        let (z1, z2) = crd.memory().normalisers().unwrap();
        for (name, z) in [("z_v1", z1), ("z_v2", z2)] {
            let expected = fx.scalar(&format!("{step}.{name}"));
            let err = (z.unwrap() - expected).abs() / expected;
            worst = worst.max(err);
            assert!(err <= tol, "{step} {name} {z:?} vs {expected}");
        }
        let state: HashMap<String, Tensor> = crd.state().unwrap().into_iter().collect();
        for bank in ["memory_v1", "memory_v2"] {
            let expected = fx.get(&format!("{step}.{bank}"), DType::F64);
            check(
                &format!("{step} {bank}"),
                &state[&format!("contrast.{bank}")],
                &expected,
                tol,
                floor,
                &mut worst,
            );
        }
    }
    worst
}

#[test]
fn crd_matches_repdistiller_in_f64() {
    let worst = run_two_steps(DType::F64, 1e-5, 1e-3);
    eprintln!("CRD f64: worst relative error {worst:e}");
}

/// float32 (what training runs in) against the float64 reference: float32 rounding of the
/// exp(score / 0.07) terms, not a different computation, sets this tolerance.
#[test]
fn crd_matches_repdistiller_in_f32() {
    let worst = run_two_steps(DType::F32, 1e-4, 1e-3);
    eprintln!("CRD f32: worst relative error {worst:e}");
}

/// The first step's fixture also pins the memory-bank row update to its rows: rows that no
/// step visited keep their initial (not unit-norm) values, visited rows become unit-norm.
#[test]
fn untouched_rows_keep_their_initial_values() {
    let fx = load();
    let init = fx.get("init.contrast.memory_v1", DType::F64);
    let after = fx.get("step2.memory_v1", DType::F64);
    let visited: Vec<i64> = [fx.get("step1.idx", DType::I64), fx.get("step2.idx", DType::I64)]
        .iter()
        .flat_map(|t| t.to_vec1::<i64>().unwrap())
        .collect();
    let norms: Vec<f64> = after.sqr().unwrap().sum(1).unwrap().sqrt().unwrap().to_vec1().unwrap();
    let same: Vec<f64> = (init - &after).unwrap().abs().unwrap().sum(1).unwrap().to_vec1().unwrap();
    for row in 0..norms.len() {
        if visited.contains(&(row as i64)) {
            assert!((norms[row] - 1.0).abs() < 1e-12, "row {row} norm {}", norms[row]);
        } else {
            assert_eq!(same[row], 0.0, "row {row} changed");
        }
    }
}

/// Checkpoint and resume: two steps with sampled negatives, export the state, load it into
/// a freshly built CRD, and the third step is bit-identical to the uninterrupted run.
#[test]
fn state_round_trip_resumes_bit_exactly() {
    let config = CrdConfig { feat_dim: 8, nce_k: 5, ..CrdConfig::default() };
    let labels: Vec<u32> = (0..40).map(|i| i % 4).collect();
    let build = |seed| {
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        (Crd::new(&config, 6, 7, labels.len(), Some(&labels), seed, vb).unwrap(), varmap)
    };
    let (mut a, vm_a) = build(3);
    let dev = Device::Cpu;
    let batch = |k: u32| {
        let f_s = Tensor::arange(0f32, 24.0, &dev)
            .unwrap()
            .affine(0.1, k as f64)
            .unwrap()
            .sin()
            .unwrap()
            .reshape((4, 6))
            .unwrap();
        let f_t = Tensor::arange(0f32, 28.0, &dev)
            .unwrap()
            .affine(0.2, k as f64)
            .unwrap()
            .cos()
            .unwrap()
            .reshape((4, 7))
            .unwrap();
        let idx: Vec<u32> = (0..4).map(|i| (i * 7 + k * 3) % 40).collect();
        (f_s, f_t, idx)
    };
    for k in 0..2 {
        let (f_s, f_t, idx) = batch(k);
        a.loss(&f_s, &f_t, &idx, None).unwrap();
    }
    let saved: HashMap<String, Tensor> = a.state().unwrap().into_iter().collect();
    let (f_s, f_t, idx) = batch(2);
    let expected = a.loss(&f_s, &f_t, &idx, None).unwrap().to_scalar::<f32>().unwrap();
    let expected_state = a.state().unwrap();

    let (mut b, vm_b) = build(99); // another seed: everything must come from the state
    for (name, var) in vm_a.data().lock().unwrap().iter() {
        vm_b.data().lock().unwrap()[name].set(var.as_tensor()).unwrap();
    }
    b.load_state(&saved).unwrap();
    let got = b.loss(&f_s, &f_t, &idx, None).unwrap().to_scalar::<f32>().unwrap();
    assert_eq!(got.to_bits(), expected.to_bits(), "{got} vs {expected}");
    for ((na, ta), (nb, tb)) in expected_state.iter().zip(b.state().unwrap().iter()) {
        assert_eq!(na, nb);
        let d = (ta.to_dtype(DType::F64).unwrap() - tb.to_dtype(DType::F64).unwrap()).unwrap().abs().unwrap();
        assert_eq!(d.max_all().unwrap().to_scalar::<f64>().unwrap(), 0.0, "{na} differs after resume");
    }
}
