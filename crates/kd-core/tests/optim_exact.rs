//! Optimisers against hand-written references of torch.optim.SGD / AdamW, and exact resume.
//!
//! Golden values come from this float64 reference (plain Python, run once; f32 agrees to ~1e-6):
//!
//! ```python
//! import math
//! # grad of loss = sum(0.5*a*p^2 + b*p) is a*p + b
//! a = [1.0, 2.0, 0.5]; b = [0.1, -0.3, 0.0]; p0 = [1.0, -2.0, 0.5]
//! def grad(p): return [ai*pi+bi for ai,pi,bi in zip(a,p,b)]
//! def sgd(lr, mom, damp, nest, wd, steps):
//!     p = p0[:]; buf = None
//!     for _ in range(steps):
//!         g = [gi + wd*pi for gi,pi in zip(grad(p), p)]
//!         if mom != 0:
//!             buf = g[:] if buf is None else [mom*bi + (1-damp)*gi for bi,gi in zip(buf,g)]
//!             g = [gi + mom*bi for gi,bi in zip(g,buf)] if nest else buf[:]
//!         p = [pi - lr*gi for pi,gi in zip(p,g)]
//!     return p
//! def adamw(lr, b1, b2, eps, wd, steps):
//!     p = p0[:]; m = [0.0]*3; v = [0.0]*3
//!     for t in range(1, steps+1):
//!         g = grad(p)
//!         p = [pi*(1-lr*wd) for pi in p]
//!         m = [b1*mi + (1-b1)*gi for mi,gi in zip(m,g)]
//!         v = [b2*vi + (1-b2)*gi*gi for vi,gi in zip(v,g)]
//!         bc1 = 1-b1**t; bc2 = 1-b2**t
//!         p = [pi - lr/bc1 * mi/(math.sqrt(vi)/math.sqrt(bc2)+eps) for pi,mi,vi in zip(p,m,v)]
//!     return p
//! sgd(0.1, 0.0, 0.0, False, 0.0, 3)   # [0.7019, -0.9508, 0.4286875]
//! sgd(0.1, 0.9, 0.0, False, 5e-4, 3)  # [0.434368311, 0.0170743791, 0.365559068]
//! sgd(0.1, 0.9, 0.0, True, 5e-4, 3)   # [0.259785739, 0.383270893, 0.315563588]
//! sgd(0.1, 0.9, 0.5, False, 1e-2, 3)  # [0.562060572, -0.385205492, 0.396699494]
//! adamw(0.01, 0.9, 0.999, 1e-8, 0.1, 3)  # [0.967043082, -1.96404148, 0.468553992]
//! adamw(0.01, 0.9, 0.999, 1e-8, 0.0, 3)  # [0.970009135, -1.97000456, 0.47002133]
//! ```
//! Hand check of the first: p = 1, g = 1.1 → 0.89; g = 0.99 → 0.791; g = 0.891 → 0.7019.

use std::collections::BTreeMap;

use candle_core::backprop::GradStore;
use candle_core::{Device, Tensor, Var};
use kd_core::checkpoint::{load_checkpoint, save_checkpoint};
use kd_core::optim::{is_bias_or_layer_norm, AdamW, Optimizer, Sgd};

const A: [f32; 3] = [1.0, 2.0, 0.5];
const B: [f32; 3] = [0.1, -0.3, 0.0];
const P0: [f32; 3] = [1.0, -2.0, 0.5];

/// Gradients of `sum(0.5·a·p² + b·p)` for every var (each gets `a·p + b`).
fn grads(vars: &[&Var]) -> GradStore {
    let a = Tensor::new(&A, &Device::Cpu).unwrap();
    let b = Tensor::new(&B, &Device::Cpu).unwrap();
    let mut loss = Tensor::zeros((), candle_core::DType::F32, &Device::Cpu).unwrap();
    for v in vars {
        let p = v.as_tensor();
        let term = ((p.sqr().unwrap() * &a).unwrap() * 0.5).unwrap() + (p * &b).unwrap();
        loss = (loss + term.unwrap().sum_all().unwrap()).unwrap();
    }
    loss.backward().unwrap()
}

fn var() -> Var {
    Var::new(&P0, &Device::Cpu).unwrap()
}

fn values(v: &Var) -> Vec<f32> {
    v.as_tensor().to_vec1::<f32>().unwrap()
}

fn assert_close(got: &[f32], want: &[f64], what: &str) {
    for (g, w) in got.iter().zip(want) {
        assert!(((*g as f64) - w).abs() < 2e-6, "{what}: got {got:?}, want {want:?}");
    }
}

fn run(opt: &mut dyn Optimizer, p: &Var, steps: usize) {
    for _ in 0..steps {
        opt.step(&grads(&[p])).unwrap();
    }
}

#[test]
fn sgd_plain_momentum_nesterov_and_dampening_match_torch() {
    // (name, momentum, dampening, nesterov, weight decay, want)
    type Case = (&'static str, f64, f64, bool, f64, [f64; 3]);
    let cases: [Case; 4] = [
        ("plain", 0.0, 0.0, false, 0.0, [0.7019, -0.9508, 0.4286875]),
        ("momentum+wd", 0.9, 0.0, false, 5e-4, [0.434368311, 0.0170743791, 0.365559068]),
        ("nesterov+wd", 0.9, 0.0, true, 5e-4, [0.259785739, 0.383270893, 0.315563588]),
        ("dampening", 0.9, 0.5, false, 1e-2, [0.562060572, -0.385205492, 0.396699494]),
    ];
    for (what, momentum, dampening, nesterov, wd, want) in cases {
        let p = var();
        let mut opt = Sgd::new(vec![("w".into(), p.clone())], 0.1, momentum, nesterov, wd)
            .unwrap()
            .with_dampening(dampening)
            .unwrap();
        run(&mut opt, &p, 3);
        assert_close(&values(&p), &want, what);
    }
}

#[test]
fn nesterov_differs_from_heavy_ball_and_rejects_bad_settings() {
    let (p1, p2) = (var(), var());
    let mut heavy = Sgd::new(vec![("w".into(), p1.clone())], 0.1, 0.9, false, 0.0).unwrap();
    let mut nesterov = Sgd::new(vec![("w".into(), p2.clone())], 0.1, 0.9, true, 0.0).unwrap();
    run(&mut heavy, &p1, 2);
    run(&mut nesterov, &p2, 2);
    assert_ne!(values(&p1), values(&p2));
    assert!(Sgd::new(vec![], 0.1, 0.0, true, 0.0).is_err(), "Nesterov without momentum");
    assert!(Sgd::new(vec![], 0.1, 0.9, true, 0.0).unwrap().with_dampening(0.1).is_err());
    assert!(Sgd::new(vec![], -0.1, 0.9, false, 0.0).is_err());
    assert!(AdamW::new(vec![], 1e-3, 1.0, 0.999, 1e-8, 0.0).is_err());
}

#[test]
fn weight_decay_can_exclude_parameters_by_name() {
    let (w, bias) = (var(), var());
    let params = vec![("layer.weight".to_string(), w.clone()), ("layer.bias".to_string(), bias.clone())];
    let mut opt =
        Sgd::new(params, 0.1, 0.9, false, 5e-4).unwrap().without_weight_decay_for(|n| n.ends_with("bias"));
    assert_eq!(opt.decayed_params(), vec!["layer.weight"]);
    for _ in 0..3 {
        opt.step(&grads(&[&w, &bias])).unwrap();
    }
    assert_close(&values(&w), &[0.434368311, 0.0170743791, 0.365559068], "decayed");
    // The bias follows momentum SGD without decay: the reference with wd = 0.
    let p = var();
    let mut reference = Sgd::new(vec![("b".into(), p.clone())], 0.1, 0.9, false, 0.0).unwrap();
    run(&mut reference, &p, 3);
    assert_eq!(values(&bias), values(&p));

    assert!(is_bias_or_layer_norm("encoder.layer.0.attention.output.LayerNorm.weight"));
    assert!(is_bias_or_layer_norm("classifier.bias"));
    assert!(!is_bias_or_layer_norm("classifier.weight"));
}

#[test]
fn a_parameter_without_gradient_is_left_alone() {
    let (used, unused) = (var(), var());
    let mut opt = Sgd::new(
        vec![("used".to_string(), used.clone()), ("unused".to_string(), unused.clone())],
        0.1,
        0.9,
        false,
        5e-4,
    )
    .unwrap();
    opt.step(&grads(&[&used])).unwrap();
    assert_eq!(values(&unused), P0.to_vec(), "no gradient, no weight decay either (as torch)");
    let names: Vec<String> = opt.state().into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, vec!["momentum_buffer.used"]);
}

#[test]
fn adamw_matches_torch_with_and_without_decay() {
    for (wd, want) in
        [(0.1, [0.967043082, -1.96404148, 0.468553992]), (0.0, [0.970009135, -1.97000456, 0.47002133])]
    {
        let p = var();
        let mut opt = AdamW::new(vec![("w".into(), p.clone())], 0.01, 0.9, 0.999, 1e-8, wd).unwrap();
        run(&mut opt, &p, 3);
        assert_close(&values(&p), &want, &format!("adamw wd={wd}"));
    }
    // Excluded by name: same as wd = 0.
    let p = var();
    let mut opt = AdamW::new(vec![("LayerNorm.weight".into(), p.clone())], 0.01, 0.9, 0.999, 1e-8, 0.1)
        .unwrap()
        .without_weight_decay_for(is_bias_or_layer_norm);
    run(&mut opt, &p, 3);
    assert_close(&values(&p), &[0.970009135, -1.97000456, 0.47002133], "adamw excluded");
}

/// Steps 1–2, state through a real checkpoint file into a fresh optimiser, step 3: must equal
/// three unbroken steps bit for bit.
fn resume_is_exact(make: impl Fn(Vec<(String, Var)>) -> Box<dyn Optimizer>) {
    let straight = var();
    let mut opt = make(vec![("w".into(), straight.clone())]);
    run(opt.as_mut(), &straight, 3);

    let resumed = var();
    let mut opt = make(vec![("w".into(), resumed.clone())]);
    run(opt.as_mut(), &resumed, 2);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ckpt.safetensors");
    let mut tensors: Vec<(String, Tensor)> = vec![("model.w".into(), resumed.as_tensor().clone())];
    tensors.extend(opt.state().into_iter().map(|(n, t)| (format!("optim.{n}"), t)));
    save_checkpoint(&path, &tensors, &BTreeMap::new()).unwrap();
    drop(opt);

    let (loaded, _) = load_checkpoint(&path).unwrap();
    let restored = Var::from_tensor(&loaded["model.w"]).unwrap();
    let state: Vec<(String, Tensor)> = loaded
        .iter()
        .filter_map(|(k, t)| k.strip_prefix("optim.").map(|n| (n.to_string(), t.clone())))
        .collect();
    assert!(!state.is_empty());
    let mut opt = make(vec![("w".into(), restored.clone())]);
    opt.load_state(&state).unwrap();
    run(opt.as_mut(), &restored, 1);
    assert_eq!(values(&restored), values(&straight));
}

#[test]
fn sgd_state_round_trip_continues_identically() {
    resume_is_exact(|p| Box::new(Sgd::new(p, 0.1, 0.9, true, 5e-4).unwrap()));
    resume_is_exact(|p| Box::new(Sgd::new(p, 0.1, 0.9, false, 5e-4).unwrap().with_dampening(0.3).unwrap()));
}

#[test]
fn adamw_state_round_trip_continues_identically() {
    resume_is_exact(|p| Box::new(AdamW::new(p, 0.01, 0.9, 0.999, 1e-8, 0.1).unwrap()));
}

#[test]
fn bad_state_is_an_error_naming_the_entry() {
    let p = var();
    let mut sgd = Sgd::new(vec![("w".into(), p.clone())], 0.1, 0.9, false, 0.0).unwrap();
    let wrong_shape = Tensor::zeros(2, candle_core::DType::F32, &Device::Cpu).unwrap();
    let e = sgd.load_state(&[("momentum_buffer.w".into(), wrong_shape)]).unwrap_err().to_string();
    assert!(e.contains("momentum_buffer.w") && e.contains("[2]"), "{e}");
    let ok = Tensor::zeros(3, candle_core::DType::F32, &Device::Cpu).unwrap();
    let e = sgd.load_state(&[("momentum_buffer.v".into(), ok.clone())]).unwrap_err().to_string();
    assert!(e.contains("`v`"), "{e}");
    let e = sgd.load_state(&[("exp_avg.w".into(), ok.clone())]).unwrap_err().to_string();
    assert!(e.contains("exp_avg.w"), "{e}");

    let mut adam = AdamW::new(vec![("w".into(), p.clone())], 0.01, 0.9, 0.999, 1e-8, 0.0).unwrap();
    let e = adam.load_state(&[("exp_avg.w".into(), ok.clone())]).unwrap_err().to_string();
    assert!(e.contains("incomplete"), "{e}");
    // Older checkpoints kept one global step count; they still load.
    let step = Tensor::new(&[2f32], &Device::Cpu).unwrap();
    adam.load_state(&[("exp_avg.w".into(), ok.clone()), ("exp_avg_sq.w".into(), ok), ("step".into(), step)])
        .unwrap();
    let names: Vec<String> = adam.state().into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, vec!["exp_avg.w", "exp_avg_sq.w", "step.w"]);
}

/// A weight's gradient from a built-in conv carries the graph that computed it (candle detaches
/// only the gradients of intermediate nodes); the optimisers' buffers must hold plain values, or
/// every step's activations stay alive through the momentum chain (FitNet's and VID's regressors
/// grew ~110 MB a step before the fix).
#[test]
fn optimiser_state_holds_no_graph() {
    let dev = Device::Cpu;
    let w = Var::from_tensor(&Tensor::randn(0f32, 0.1, (4, 3, 1, 1), &dev).unwrap()).unwrap();
    let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (2, 3, 5, 5), &dev).unwrap()).unwrap();
    let grads = || {
        x.as_tensor()
            .conv2d(w.as_tensor(), 0, 1, 1, 1)
            .unwrap()
            .sqr()
            .unwrap()
            .mean_all()
            .unwrap()
            .backward()
            .unwrap()
    };
    assert!(
        grads().get(w.as_tensor()).unwrap().track_op(),
        "candle's weight gradient is attached (the case tested)"
    );
    let named = vec![("w".to_string(), w.clone())];
    let mut optimisers: Vec<(&str, Box<dyn Optimizer>)> = vec![
        ("sgd", Box::new(Sgd::new(named.clone(), 0.1, 0.9, true, 5e-4).unwrap())),
        ("adamw", Box::new(AdamW::new(named, 0.01, 0.9, 0.999, 1e-8, 0.1).unwrap())),
    ];
    for (name, opt) in optimisers.iter_mut() {
        for _ in 0..2 {
            opt.step(&grads()).unwrap();
        }
        let state = opt.state();
        assert!(!state.is_empty(), "{name} keeps state");
        for (key, t) in state {
            assert!(!t.track_op(), "{name}: state `{key}` holds a graph");
        }
    }
}
