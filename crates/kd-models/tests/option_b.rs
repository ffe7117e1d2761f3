//! The option-B CIFAR ResNets `resnet20b` ... `resnet110b` (and `-stem-bias`) against
//! RepDistiller's own models/resnet.py (HobbitLong/RepDistiller, commit
//! b84f547c5db6a35318d4671d7d5c4de74c822403, PyTorch 2.5.1): parameter counts, state-dict names
//! and shapes, and forward passes with deterministic weights. The golden values are in
//! tests/fixtures/repdistiller_resnet_b.json, written by fixtures/make_repdistiller_resnet_b.py.

use std::collections::{BTreeMap, HashMap};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use kd_core::Mode;
use kd_models::{build_classifier, known_archs, new_model, trainable_vars, ResNetConfig, Shortcut};
use serde_json::Value;

fn fixture() -> Value {
    let text = include_str!("fixtures/repdistiller_resnet_b.json");
    serde_json::from_str(text).unwrap()
}

fn floats(v: &Value) -> Vec<f32> {
    match v {
        Value::Array(items) => items.iter().flat_map(floats).collect(),
        other => vec![other.as_f64().unwrap() as f32],
    }
}

fn to_vec(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

/// `max |a - b| / max(1, max |b|)`.
fn rel_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(1.0f32, |m, x| m.max(x.abs()));
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max) / scale
}

/// RepDistiller's trainable parameter counts (`sum(p.numel() for p in model.parameters())`),
/// commit b84f547c5db6a35318d4671d7d5c4de74c822403; the `-stem-bias` variants add 16.
const REPDISTILLER_PARAMS: [(usize, usize, usize); 10] = [
    (20, 10, 272_474),
    (20, 100, 278_324),
    (32, 10, 466_906),
    (32, 100, 472_756),
    (44, 10, 661_338),
    (44, 100, 667_188),
    (56, 10, 855_770),
    (56, 100, 861_620),
    (110, 10, 1_730_714),
    (110, 100, 1_736_564),
];

#[test]
fn parameter_counts_equal_repdistiller() {
    let fx = fixture();
    for (depth, classes, params) in REPDISTILLER_PARAMS {
        // The constants above are the fixture's numbers.
        assert_eq!(fx["param_counts"][format!("resnet{depth}/{classes}")].as_u64(), Some(params as u64));
        for (arch, expected) in
            [(format!("resnet{depth}b"), params), (format!("resnet{depth}b-stem-bias"), params + 16)]
        {
            assert!(known_archs().contains(&arch.as_str()), "{arch} not listed");
            let (varmap, model) = new_model(&arch, classes, 0, &Device::Cpu).unwrap();
            assert_eq!(model.num_params(), expected, "{arch}/{classes}");
            assert_eq!(model.arch(), arch);
            let trainable: usize = trainable_vars(&varmap).iter().map(|(_, v)| v.elem_count()).sum();
            assert_eq!(trainable, expected, "{arch}: trainable vars disagree with num_params");
        }
    }
    // The third-party CIFAR-100 ResNet-56 (biased stem) has 861,636 parameters.
    let (_, model) = new_model("resnet56b-stem-bias", 100, 0, &Device::Cpu).unwrap();
    assert_eq!(model.num_params(), 861_636);
}

#[test]
fn state_dict_names_and_shapes_equal_repdistiller() {
    let fx = fixture();
    let expected: BTreeMap<String, Vec<usize>> = fx["resnet20_100_state_dict"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| {
            (k.clone(), v.as_array().unwrap().iter().map(|d| d.as_u64().unwrap() as usize).collect())
        })
        .collect();
    assert!(expected.contains_key("layer2.0.downsample.0.weight"));
    let (varmap, _) = new_model("resnet20b", 100, 0, &Device::Cpu).unwrap();
    let ours: BTreeMap<String, Vec<usize>> =
        varmap.data().lock().unwrap().iter().map(|(k, v)| (k.clone(), v.dims().to_vec())).collect();
    assert_eq!(ours, expected);

    let (varmap, _) = new_model("resnet20b-stem-bias", 100, 0, &Device::Cpu).unwrap();
    let mut with_bias = expected.clone();
    with_bias.insert("conv1.bias".into(), vec![16]);
    let ours: BTreeMap<String, Vec<usize>> =
        varmap.data().lock().unwrap().iter().map(|(k, v)| (k.clone(), v.dims().to_vec())).collect();
    assert_eq!(ours, with_bias);

    let cfg = ResNetConfig::from_arch_name("resnet56b-stem-bias", 100).unwrap();
    assert_eq!(
        (cfg.depth, cfg.shortcut, cfg.stem_bias, cfg.widths.clone()),
        (56, Shortcut::OptionB, true, vec![16, 32, 64])
    );
    for bad in ["resnet56c", "resnet8b", "resnet020b", "resnet56-stem-bias", "resnet56bb"] {
        assert!(ResNetConfig::from_arch_name(bad, 10).is_err(), "{bad} accepted");
    }
}

/// The generator's `value(k, i, name, shape)`: element `i` of the `k`-th tensor by sorted name.
fn deterministic_value(k: usize, i: usize, name: &str, shape: &[usize]) -> f64 {
    let s = (0.7 * i as f64 + 1.3 * k as f64 + 0.1).sin();
    if name.ends_with("running_var") {
        1.0 + 0.5 * s * s
    } else if name.ends_with("running_mean") || (name.ends_with("bias") && shape.len() == 1) {
        0.1 * s
    } else if shape.len() == 1 {
        1.0 + 0.1 * s
    } else {
        s / (shape[1..].iter().product::<usize>() as f64).sqrt()
    }
}

fn deterministic_weights(arch: &str, classes: usize) -> HashMap<String, Tensor> {
    let (varmap, _) = new_model(arch, classes, 0, &Device::Cpu).unwrap();
    let shapes: BTreeMap<String, Vec<usize>> =
        varmap.data().lock().unwrap().iter().map(|(k, v)| (k.clone(), v.dims().to_vec())).collect();
    shapes
        .iter()
        .enumerate()
        .map(|(k, (name, shape))| {
            let n: usize = shape.iter().product();
            let vals: Vec<f32> = (0..n).map(|i| deterministic_value(k, i, name, shape) as f32).collect();
            (name.clone(), Tensor::from_vec(vals, shape.as_slice(), &Device::Cpu).unwrap())
        })
        .collect()
}

fn deterministic_input() -> Tensor {
    let vals: Vec<f32> = (0..4 * 3 * 32 * 32).map(|i| (0.05 * i as f64).sin() as f32).collect();
    Tensor::from_vec(vals, (4, 3, 32, 32), &Device::Cpu).unwrap()
}

fn check_forward(arch: &str, golden: &Value) {
    let weights = deterministic_weights(arch, 10);
    let x = deterministic_input();

    let vb = VarBuilder::from_tensors(weights.clone(), DType::F32, &Device::Cpu);
    let model = build_classifier(arch, 10, vb).unwrap();
    let out = model.forward(&x, Mode::Eval).unwrap();
    // The logits reach a few hundred; 1e-4 relative is f32 accumulation-order noise.
    let d = rel_diff(&to_vec(&out.logits), &floats(&golden["eval_logits"]));
    eprintln!("{arch}: eval logits relative diff {d:e}");
    assert!(d < 1e-4, "{arch}: eval logits differ by {d} (relative)");
    let d = rel_diff(&to_vec(&out.embedding), &floats(&golden["eval_embedding"]));
    assert!(d < 1e-4, "{arch}: embedding (RepDistiller f4) differs by {d}");
    let shapes: Vec<Vec<usize>> = out.stage_features.iter().map(|t| t.dims().to_vec()).collect();
    let golden_shapes: Vec<Vec<usize>> = golden["eval_stage_shapes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_array().unwrap().iter().map(|d| d.as_u64().unwrap() as usize).collect())
        .collect();
    assert_eq!(shapes, golden_shapes, "{arch}: stage shapes");
    for (s, f) in out.stage_features.iter().enumerate() {
        let mean = f.mean_all().unwrap().to_scalar::<f32>().unwrap();
        let mean_sq = f.sqr().unwrap().mean_all().unwrap().to_scalar::<f32>().unwrap();
        let (gm, gsq) = (floats(&golden["eval_stage_mean"])[s], floats(&golden["eval_stage_mean_square"])[s]);
        assert!(rel_diff(&[mean], &[gm]) < 1e-4, "{arch} stage {s} (f{}): mean {mean} vs {gm}", s + 1);
        assert!(rel_diff(&[mean_sq], &[gsq]) < 1e-4, "{arch} stage {s}: mean square {mean_sq} vs {gsq}");
    }

    // Training mode: batch statistics, and the running statistics move as PyTorch's do (the
    // stem bias shows up in bn1's running mean).
    let (varmap, model) = new_model(arch, 10, 0, &Device::Cpu).unwrap();
    for (name, var) in varmap.data().lock().unwrap().iter() {
        var.set(&weights[name]).unwrap();
    }
    let logits = model.forward(&x, Mode::Train).unwrap().logits;
    let d = rel_diff(&to_vec(&logits), &floats(&golden["train_logits"]));
    assert!(d < 1e-4, "{arch}: train logits differ by {d}");
    let data = varmap.data().lock().unwrap();
    for (name, key) in [
        ("bn1.running_mean", "after_train_bn1_running_mean"),
        ("layer2.0.downsample.1.running_var", "after_train_layer2_0_downsample_1_running_var"),
    ] {
        let d = rel_diff(&to_vec(data[name].as_tensor()), &floats(&golden[key]));
        assert!(d < 1e-4, "{arch}: {name} after one training step differs by {d}");
    }
}

#[test]
fn forward_passes_equal_repdistiller() {
    let fx = fixture();
    check_forward("resnet20b", &fx["resnet20_10"]);
    assert_eq!(fx["resnet20_10_stem_bias"]["param_count"].as_u64(), Some(272_490));
    check_forward("resnet20b-stem-bias", &fx["resnet20_10_stem_bias"]);
}

#[test]
fn biased_stem_reaches_the_multi_exit_and_one_wrappers() {
    // BYOT multi-exit network over the biased-stem backbone keeps the backbone's names.
    let (varmap, model) = new_model("resnet20b-stem-bias-byot", 100, 0, &Device::Cpu).unwrap();
    assert!(varmap.data().lock().unwrap().contains_key("conv1.bias"));
    let x = Tensor::randn(0f32, 1.0, (2, 3, 32, 32), &Device::Cpu).unwrap();
    assert_eq!(model.forward(&x, Mode::Eval).unwrap().logits.dims(), &[2, 100]);

    // ONE builds its shared stem from the same config.
    use kd_models::one_resnet::{Config as OneConfig, OneResNet};
    let varmap = candle_nn::VarMap::new();
    let vb = kd_models::seeded_var_builder(&varmap, 0, DType::F32, &Device::Cpu);
    let cfg = OneConfig::new(ResNetConfig::from_arch_name("resnet20b-stem-bias", 100).unwrap(), 2);
    OneResNet::new(&cfg, vb).unwrap();
    assert!(varmap.data().lock().unwrap().contains_key("conv1.bias"));
}
