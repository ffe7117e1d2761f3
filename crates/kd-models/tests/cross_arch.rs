//! The RepDistiller cross-architecture CIFAR models (WRN, VGG-BN, MobileNetV2, ShuffleNetV2)
//! against RepDistiller's own definitions (HobbitLong/RepDistiller
//! b84f547c5db6a35318d4671d7d5c4de74c822403, `models/`): parameter counts, state-dict names and
//! shapes, eval- and train-mode logits and features for formula-filled weights (fixtures from
//! `tests/fixtures/make_cross_arch.py`), gradients, initialisation.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use kd_core::Mode;
use kd_models::{
    build_classifier, is_trainable, known_archs, load_frozen_model, load_model, new_model, new_model_with,
    trainable_vars, BuildOptions, ModelError,
};
use serde::Deserialize;

const NEW_ARCHS: [&str; 11] = [
    "wrn_16_1",
    "wrn_16_2",
    "wrn_40_1",
    "wrn_40_2",
    "vgg8",
    "vgg11",
    "vgg13",
    "vgg16",
    "vgg19",
    "MobileNetV2",
    "ShuffleV2",
];

fn state(varmap: &VarMap) -> BTreeMap<String, Tensor> {
    varmap.data().lock().unwrap().iter().map(|(k, v)| (k.clone(), v.as_tensor().copy().unwrap())).collect()
}

fn to_vec(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

/// Trainable parameters of RepDistiller's `model_dict[arch](num_classes=100)`, counted with
/// `sum(p.numel() for p in model.parameters() if p.requires_grad)` (PyTorch 2.5.1).
#[test]
fn parameter_counts_match_repdistiller() {
    let expected = [
        ("wrn_16_1", 180_916),
        ("wrn_16_2", 703_284),
        ("wrn_40_1", 569_780),
        ("wrn_40_2", 2_255_156),
        ("vgg8", 3_965_028),
        ("vgg11", 9_277_284),
        ("vgg13", 9_462_180),
        ("vgg16", 14_774_436),
        ("vgg19", 20_086_692),
        ("MobileNetV2", 812_836),
        ("ShuffleV2", 1_355_528),
    ];
    assert_eq!(expected.len(), NEW_ARCHS.len());
    for (arch, params) in expected {
        assert!(known_archs().contains(&arch), "{arch} not in known_archs");
        let (varmap, model) = new_model(arch, 100, 0, &Device::Cpu).unwrap();
        assert_eq!(model.num_params(), params, "{arch}");
        assert_eq!(model.arch(), arch);
        assert_eq!(model.num_classes(), 100);
        let trainable: usize = trainable_vars(&varmap).iter().map(|(_, v)| v.elem_count()).sum();
        assert_eq!(trainable, params, "{arch}: trainable vars disagree with num_params");
    }
}

#[derive(Deserialize)]
struct Summary {
    shape: Vec<usize>,
    mean: f64,
    mean_abs: f64,
}

#[derive(Deserialize)]
struct Reference {
    repo: String,
    commit: String,
}

#[derive(Deserialize)]
struct Fixture {
    reference: Reference,
    arch: String,
    num_classes: usize,
    num_params: usize,
    input_shape: Vec<usize>,
    tensors: Vec<(String, Vec<usize>)>,
    stage_features: Vec<Summary>,
    embedding: Summary,
    eval_logits: Vec<Vec<f64>>,
    /// Training mode, computed by PyTorch in float64 from the float32-rounded weights and input.
    train_logits_f64: Vec<Vec<f64>>,
    /// PyTorch's own float32 training-mode logits against `train_logits_f64`.
    train_logits_torch_f32_rel_err: f64,
}

fn fixture(arch: &str) -> Fixture {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("tests/fixtures/cross_arch_{arch}.json"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

/// The generator's weight formula (see make_cross_arch.py): tensor `i`, element `k`,
/// `s = sin(0.73 k + 1.3 i)`, computed in f64 and rounded to f32.
fn formula_tensor(name: &str, shape: &[usize], i: usize) -> Tensor {
    let n: usize = shape.iter().product();
    let values: Vec<f32> = (0..n)
        .map(|k| {
            let s = (0.73 * k as f64 + 1.3 * i as f64).sin();
            let v = if name.ends_with("running_var") {
                0.75 + 0.25 * s
            } else if name.ends_with("running_mean") || name.ends_with("bias") {
                0.1 * s
            } else if shape.len() == 1 {
                1.0 + 0.25 * s
            } else {
                let fan_in: usize = shape[1..].iter().product();
                s / (fan_in as f64).sqrt()
            };
            v as f32
        })
        .collect();
    Tensor::from_vec(values, shape, &Device::Cpu).unwrap()
}

fn formula_input(shape: &[usize]) -> Tensor {
    let n: usize = shape.iter().product();
    let values: Vec<f32> =
        (0..n).map(|k| ((0.05 * k as f64).sin() * (0.011 * k as f64 + 0.5).cos()) as f32).collect();
    Tensor::from_vec(values, shape, &Device::Cpu).unwrap()
}

/// `max |a − b| / max |b|` over the rows.
fn rel_err(ours: &Tensor, reference: &[Vec<f64>]) -> f64 {
    let ours = ours.to_dtype(DType::F64).unwrap().to_vec2::<f64>().unwrap();
    assert_eq!(ours.len(), reference.len());
    let scale = reference.iter().flatten().fold(0f64, |m, v| m.max(v.abs()));
    let diff = ours
        .iter()
        .flatten()
        .zip(reference.iter().flatten())
        .map(|(&a, &b)| (a - b).abs())
        .fold(0f64, f64::max);
    diff / scale
}

fn check_summary(what: &str, t: &Tensor, reference: &Summary) {
    assert_eq!(t.dims(), reference.shape.as_slice(), "{what}: shape");
    let v = to_vec(t);
    let mean = v.iter().map(|&x| x as f64).sum::<f64>() / v.len() as f64;
    let mean_abs = v.iter().map(|&x| (x as f64).abs()).sum::<f64>() / v.len() as f64;
    let tol = 1e-4 * reference.mean_abs;
    assert!((mean - reference.mean).abs() <= tol, "{what}: mean {mean} vs {}", reference.mean);
    assert!(
        (mean_abs - reference.mean_abs).abs() <= tol,
        "{what}: mean |x| {mean_abs} vs {}",
        reference.mean_abs
    );
}

/// The formula weights by the reference's state-dict names, after checking those names and
/// shapes are exactly our model's variables.
fn formula_weights(f: &Fixture) -> HashMap<String, Tensor> {
    let (varmap, _) = new_model(&f.arch, f.num_classes, 0, &Device::Cpu).unwrap();
    let ours: BTreeMap<String, Vec<usize>> =
        state(&varmap).into_iter().map(|(k, v)| (k, v.dims().to_vec())).collect();
    let theirs: BTreeMap<String, Vec<usize>> = f.tensors.iter().cloned().collect();
    assert_eq!(theirs.len(), f.tensors.len(), "{}: duplicate names in the fixture", f.arch);
    let missing: Vec<_> = theirs.keys().filter(|k| !ours.contains_key(*k)).collect();
    let extra: Vec<_> = ours.keys().filter(|k| !theirs.contains_key(*k)).collect();
    assert!(missing.is_empty() && extra.is_empty(), "{}: not ours {missing:?}, not theirs {extra:?}", f.arch);
    for (name, shape) in &theirs {
        assert_eq!(&ours[name], shape, "{}: shape of {name}", f.arch);
    }
    f.tensors
        .iter()
        .enumerate()
        .map(|(i, (name, shape))| (name.clone(), formula_tensor(name, shape, i)))
        .collect()
}

/// RepDistiller's model with formula weights, run on a formula input, gives the logits and
/// `is_feat` features ours gives after importing the same weights by name from a safetensors
/// file: eval mode through the teacher path (`load_frozen_model`), training mode (batch
/// statistics) through `load_model`.
///
/// Training mode is compared with PyTorch's float64 result. In float32 batch norm over few
/// values per channel makes it ill-conditioned for some networks (MobileNetV2: PyTorch's own
/// float32 logits are 2.8e-3 off), so the float32 check allows four times PyTorch's own error
/// (at least 1e-4), and the same model built in float64 must agree to 1e-7.
#[test]
fn imported_weights_reproduce_repdistiller_forward() {
    let dir = tempfile::tempdir().unwrap();
    for arch in NEW_ARCHS {
        let f = fixture(arch);
        assert_eq!(f.arch, arch);
        assert_eq!(f.reference.repo, "HobbitLong/RepDistiller");
        assert_eq!(f.reference.commit, "b84f547c5db6a35318d4671d7d5c4de74c822403");
        let weights = formula_weights(&f);
        let path = dir.path().join(format!("{arch}.safetensors"));
        candle_core::safetensors::save(&weights, &path).unwrap();
        let x = formula_input(&f.input_shape);

        let teacher =
            load_frozen_model(arch, f.num_classes, BuildOptions::default(), &path, &Device::Cpu).unwrap();
        assert_eq!(teacher.num_params(), f.num_params, "{arch}");
        let out = teacher.forward(&x, Mode::Eval).unwrap();
        let err = rel_err(&out.logits, &f.eval_logits);
        assert!(err < 1e-4, "{arch}: eval logits relative error {err:e}");
        assert_eq!(out.stage_features.len(), f.stage_features.len(), "{arch}: number of stage features");
        for (s, (ours, theirs)) in out.stage_features.iter().zip(&f.stage_features).enumerate() {
            check_summary(&format!("{arch} stage feature {s}"), ours, theirs);
        }
        check_summary(&format!("{arch} embedding"), &out.embedding, &f.embedding);

        let (_, model) = load_model(arch, f.num_classes, &path, &Device::Cpu).unwrap();
        let train = model.forward(&x, Mode::Train).unwrap();
        let err = rel_err(&train.logits, &f.train_logits_f64);
        let tol = (4.0 * f.train_logits_torch_f32_rel_err).max(1e-4);
        assert!(err < tol, "{arch}: float32 train logits relative error {err:e} (tolerance {tol:e})");

        // float64: candle's generic ops (the fast kernels are f32 only), same weights.
        let weights64: HashMap<String, Tensor> =
            weights.iter().map(|(k, v)| (k.clone(), v.to_dtype(DType::F64).unwrap())).collect();
        let vb = candle_nn::VarBuilder::from_tensors(weights64, DType::F64, &Device::Cpu);
        let model64 = build_classifier(arch, f.num_classes, vb).unwrap();
        let train64 = model64.forward(&x.to_dtype(DType::F64).unwrap(), Mode::Train).unwrap();
        let err = rel_err(&train64.logits, &f.train_logits_f64);
        assert!(err < 1e-7, "{arch}: float64 train logits relative error {err:e}");
    }
}

/// Forward in training mode and backward give a gradient of the right shape to every trainable
/// variable and none to running statistics.
#[test]
fn training_step_reaches_every_trainable_variable() {
    let dev = Device::Cpu;
    for (s, arch) in NEW_ARCHS.iter().enumerate() {
        let (varmap, model) = new_model(arch, 10, s as u64, &dev).unwrap();
        let x = Tensor::randn(0f32, 1.0, (2, 3, 32, 32), &dev).unwrap();
        let out = model.forward(&x, Mode::Train).unwrap();
        assert_eq!(out.logits.dims(), &[2, 10], "{arch}");
        // The logits alone reach every parameter (the features are on the way to them).
        let loss = out.logits.sqr().unwrap().sum_all().unwrap();
        let grads = loss.backward().unwrap();
        for (name, var) in trainable_vars(&varmap) {
            let g = grads.get(var.as_tensor()).unwrap_or_else(|| panic!("{arch}: no gradient for {name}"));
            assert_eq!(g.dims(), var.dims(), "{arch}: {name}");
            assert!(to_vec(g).iter().all(|v| v.is_finite()), "{arch}: {name} gradient not finite");
        }
        for (name, var) in varmap.data().lock().unwrap().iter() {
            if !is_trainable(name) {
                assert!(grads.get(var.as_tensor()).is_none(), "{arch}: {name} got a gradient");
            }
        }
    }
}

fn std_of(v: &[f32]) -> f32 {
    let mean = v.iter().sum::<f32>() / v.len() as f32;
    (v.iter().map(|x| (x - mean).powi(2)).sum::<f32>() / v.len() as f32).sqrt()
}

/// Seeded and distributed as each reference initialises.
#[test]
fn initialisation_follows_the_reference() {
    let dev = Device::Cpu;
    let (a, _) = new_model("MobileNetV2", 100, 7, &dev).unwrap();
    let (b, _) = new_model("MobileNetV2", 100, 7, &dev).unwrap();
    let (sa, sb) = (state(&a), state(&b));
    for (k, v) in &sa {
        assert_eq!(to_vec(v), to_vec(&sb[k]), "{k} differs for the same seed");
    }
    // Depthwise, fan-out = 9 · C: std sqrt(2 / (9 · 480)) for a 480-channel layer.
    let dw = to_vec(&sa["blocks.5.1.conv.3.weight"]);
    assert_eq!(sa["blocks.5.1.conv.3.weight"].dims(), &[480, 1, 3, 3]);
    let target = (2.0f32 / (9.0 * 480.0)).sqrt();
    assert!((std_of(&dw) / target - 1.0).abs() < 0.1, "{} vs {target}", std_of(&dw));
    let head = to_vec(&sa["classifier.0.weight"]);
    assert!((std_of(&head) / 0.01 - 1.0).abs() < 0.05);
    assert!(to_vec(&sa["classifier.0.bias"]).iter().all(|&v| v == 0.0));

    let (v, _) = new_model("vgg13", 100, 7, &dev).unwrap();
    let sv = state(&v);
    assert!(to_vec(&sv["block2.3.bias"]).iter().all(|&v| v == 0.0));
    let w = to_vec(&sv["block2.3.weight"]);
    let target = (2.0f32 / (9.0 * 256.0)).sqrt();
    assert!((std_of(&w) / target - 1.0).abs() < 0.05);
    assert!((std_of(&to_vec(&sv["classifier.weight"])) / 0.01 - 1.0).abs() < 0.05);

    let (w, _) = new_model("wrn_40_2", 100, 7, &dev).unwrap();
    let sw = state(&w);
    assert!(to_vec(&sw["fc.bias"]).iter().all(|&v| v == 0.0));
    assert!(to_vec(&sw["fc.weight"]).iter().all(|&v| v.abs() <= 1.0 / 128f32.sqrt()));
    assert_eq!(sw["block2.layer.0.convShortcut.weight"].dims(), &[64, 32, 1, 1]);

    // ShuffleNetV2 keeps PyTorch's defaults: uniform ±1/sqrt(fan_in), depthwise fan_in 9.
    let (s, _) = new_model("ShuffleV2", 100, 7, &dev).unwrap();
    let ss = state(&s);
    let dw = to_vec(&ss["layer2.3.conv2.weight"]);
    let bound = 1.0 / 3.0;
    assert!(dw.iter().all(|&v| v.abs() <= bound) && dw.iter().any(|&v| v.abs() > 0.9 * bound));
    let bias = to_vec(&ss["linear.bias"]);
    assert!(bias.iter().all(|&v| v.abs() <= 1.0 / 32.0) && bias.iter().any(|&v| v != 0.0));
}

/// 64-pixel inputs: WRN gets the stride-2 stem of kd-bench's CIFAR ResNets, VGG the extra pool
/// RepDistiller adds for `h == 64`; both end at the 32×32 resolutions.
#[test]
fn tiny_imagenet_inputs_reach_the_cifar_resolutions() {
    let dev = Device::Cpu;
    let x = Tensor::randn(0f32, 1.0, (1, 3, 64, 64), &dev).unwrap();
    let options = BuildOptions { input_size: 64 };
    let (_, wrn) = new_model_with("wrn_16_2", 200, 0, options, &dev).unwrap();
    let out = wrn.forward(&x, Mode::Eval).unwrap();
    let shapes: Vec<&[usize]> = out.stage_features.iter().map(|t| t.dims()).collect();
    assert_eq!(shapes, vec![&[1, 16, 32, 32][..], &[1, 32, 32, 32], &[1, 64, 16, 16], &[1, 128, 8, 8]]);
    assert_eq!(out.logits.dims(), &[1, 200]);

    let (_, vgg) = new_model_with("vgg8", 200, 0, options, &dev).unwrap();
    let out = vgg.forward(&x, Mode::Eval).unwrap();
    assert_eq!(out.stage_features[4].dims(), &[1, 512, 4, 4]);
    assert_eq!(out.embedding.dims(), &[1, 512]);

    let bad = Tensor::zeros((1, 1, 32, 32), DType::F32, &dev).unwrap();
    for arch in NEW_ARCHS {
        let (_, model) = new_model(arch, 10, 0, &dev).unwrap();
        let msg = model.forward(&bad, Mode::Eval).err().unwrap().to_string();
        assert!(msg.contains(arch), "{msg}");
    }
}

#[test]
fn unknown_names_list_the_new_families() {
    let vb = candle_nn::VarBuilder::zeros(DType::F32, &Device::Cpu);
    let err = build_classifier("wrn_28_10", 10, vb).err().unwrap();
    assert!(matches!(err, ModelError::UnknownArch { .. }));
    let msg = err.to_string();
    for arch in NEW_ARCHS {
        assert!(msg.contains(arch), "{msg}");
    }
}
