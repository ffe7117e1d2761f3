//! CIFAR ResNet family: parameter counts, tensor names, shapes, option-A shortcut, batch-norm
//! running statistics, seeded initialisation, gradients.

use std::collections::BTreeMap;

use candle_core::{DType, Device, Tensor, D};
use candle_nn::{VarBuilder, VarMap};
use kd_core::Mode;
use kd_models::resnet_cifar::option_a_shortcut;
use kd_models::{
    build_classifier, is_trainable, known_archs, new_model, new_model_with, seeded_var_builder,
    trainable_vars, BatchNorm2d, BuildOptions, CifarResNet, ModelError, ResNetConfig,
};

fn state(varmap: &VarMap) -> BTreeMap<String, Tensor> {
    varmap.data().lock().unwrap().iter().map(|(k, v)| (k.clone(), v.as_tensor().copy().unwrap())).collect()
}

fn to_vec(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    to_vec(a).iter().zip(to_vec(b)).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// akamaster ResNet with n blocks per stage has 97216 n - 21926 parameters (10 classes).
#[test]
fn parameter_counts_match_pytorch() {
    let expected = [
        ("resnet8", 10, 75_290),
        ("resnet14", 10, 172_506),
        ("resnet20", 10, 269_722),
        ("resnet32", 10, 464_154),
        ("resnet44", 10, 658_586),
        ("resnet56", 10, 853_018),
        ("resnet110", 10, 1_727_962),
        // RepDistiller reports 1.23M and 7.43M for CIFAR-100.
        ("resnet8x4", 100, 1_233_540),
        ("resnet32x4", 100, 7_433_860),
        // RepDistiller's option-B resnet20..110 (tests/option_b.rs checks them against its code).
        ("resnet20b", 100, 278_324),
        ("resnet32b", 100, 472_756),
        ("resnet44b", 100, 667_188),
        ("resnet56b", 100, 861_620),
        ("resnet110b", 100, 1_736_564),
        ("resnet20b-stem-bias", 100, 278_340),
        ("resnet32b-stem-bias", 100, 472_772),
        ("resnet44b-stem-bias", 100, 667_204),
        ("resnet56b-stem-bias", 100, 861_636),
        ("resnet110b-stem-bias", 100, 1_736_580),
    ];
    assert_eq!(kd_models::resnet_cifar::ARCH_NAMES.len(), expected.len());
    assert!(expected.iter().all(|(arch, _, _)| known_archs().contains(arch)));
    for (arch, classes, params) in expected {
        let (varmap, model) = new_model(arch, classes, 0, &Device::Cpu).unwrap();
        assert_eq!(model.num_params(), params, "{arch}");
        assert_eq!(model.arch(), arch);
        assert_eq!(model.num_classes(), classes);
        let trainable: usize = trainable_vars(&varmap).iter().map(|(_, v)| v.elem_count()).sum();
        assert_eq!(trainable, params, "{arch}: trainable vars disagree with num_params");
    }
}

#[test]
fn tensor_names_are_pytorch_state_dict_names() {
    let (varmap, _) = new_model("resnet20", 10, 0, &Device::Cpu).unwrap();
    let names: Vec<String> = state(&varmap).into_keys().collect();
    // 1 stem conv + 9 blocks x 2 convs; 19 BNs x 4; linear weight + bias.
    assert_eq!(names.len(), 19 + 19 * 4 + 2);
    for name in [
        "conv1.weight",
        "bn1.weight",
        "bn1.bias",
        "bn1.running_mean",
        "bn1.running_var",
        "layer1.0.conv1.weight",
        "layer1.0.bn1.running_var",
        "layer2.0.conv2.weight",
        "layer3.2.bn2.bias",
        "linear.weight",
        "linear.bias",
    ] {
        assert!(names.iter().any(|n| n == name), "missing {name}");
    }
    assert!(!names.iter().any(|n| n.contains("downsample") || n.contains("shortcut")));

    let (varmap, _) = new_model("resnet8x4", 100, 0, &Device::Cpu).unwrap();
    let s = state(&varmap);
    assert_eq!(s["conv1.weight"].dims(), &[32, 3, 3, 3]);
    assert_eq!(s["layer1.0.downsample.0.weight"].dims(), &[64, 32, 1, 1]);
    assert_eq!(s["layer1.0.downsample.1.running_var"].dims(), &[64]);
    assert_eq!(s["layer3.0.downsample.0.weight"].dims(), &[256, 128, 1, 1]);
    assert_eq!(s["fc.weight"].dims(), &[100, 256]);
    assert!(!s.contains_key("linear.weight"));
}

#[test]
fn forward_shapes_for_cifar_and_64px_inputs() {
    let (_, model) = new_model("resnet20", 10, 1, &Device::Cpu).unwrap();
    let x = Tensor::randn(0f32, 1.0, (2, 3, 32, 32), &Device::Cpu).unwrap();
    let out = model.forward(&x, Mode::Eval).unwrap();
    assert_eq!(out.logits.dims(), &[2, 10]);
    assert_eq!(out.embedding.dims(), &[2, 64]);
    let shapes: Vec<&[usize]> = out.stage_features.iter().map(|t| t.dims()).collect();
    assert_eq!(shapes, vec![&[2, 16, 32, 32][..], &[2, 32, 16, 16], &[2, 64, 8, 8]]);
    // The embedding is the average of the last stage.
    let pooled = out.stage_features[2].mean(D::Minus1).unwrap().mean(D::Minus1).unwrap();
    let diff = max_abs_diff(&pooled, &out.embedding);
    let scale = to_vec(&out.embedding).iter().fold(1.0f32, |m, x| m.max(x.abs()));
    assert!(diff <= 1e-6 * scale, "{diff} at scale {scale}");

    let (_, model) = new_model("resnet8x4", 100, 1, &Device::Cpu).unwrap();
    let out = model.forward(&x, Mode::Train).unwrap();
    let shapes: Vec<&[usize]> = out.stage_features.iter().map(|t| t.dims()).collect();
    assert_eq!(shapes, vec![&[2, 64, 32, 32][..], &[2, 128, 16, 16], &[2, 256, 8, 8]]);
    assert_eq!(out.logits.dims(), &[2, 100]);

    // Tiny-ImageNet: a stride-2 stem brings 64x64 inputs to the CIFAR resolutions.
    let options = BuildOptions { input_size: 64 };
    let (_, model) = new_model_with("resnet8", 200, 1, options, &Device::Cpu).unwrap();
    let x64 = Tensor::randn(0f32, 1.0, (2, 3, 64, 64), &Device::Cpu).unwrap();
    let out = model.forward(&x64, Mode::Eval).unwrap();
    assert_eq!(out.stage_features[0].dims(), &[2, 16, 32, 32]);
    assert_eq!(out.logits.dims(), &[2, 200]);

    // Wrong channel count is an error, not a panic.
    let bad = Tensor::zeros((1, 1, 32, 32), DType::F32, &Device::Cpu).unwrap();
    assert!(model.forward(&bad, Mode::Eval).is_err());
}

#[test]
fn option_a_shortcut_subsamples_and_zero_pads() {
    // (1, 2, 3, 3) with values 0..18; ::2 keeps rows/cols 0 and 2 (odd size rounds up).
    let x = Tensor::arange(0f32, 18.0, &Device::Cpu).unwrap().reshape((1, 2, 3, 3)).unwrap();
    let y = option_a_shortcut(&x, 2, 1, 1).unwrap();
    assert_eq!(y.dims(), &[1, 4, 2, 2]);
    let expected = [
        0.0, 0.0, 0.0, 0.0, // padded channel
        0.0, 2.0, 6.0, 8.0, // channel 0 at (0,0), (0,2), (2,0), (2,2)
        9.0, 11.0, 15.0, 17.0, // channel 1
        0.0, 0.0, 0.0, 0.0, // padded channel
    ];
    assert_eq!(to_vec(&y), expected);
    // Stride 1 without padding is the identity.
    assert_eq!(to_vec(&option_a_shortcut(&x, 1, 0, 0).unwrap()), to_vec(&x));
}

#[test]
fn batch_norm_updates_running_stats_like_pytorch() {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let bn = BatchNorm2d::new(3, vb.pp("bn")).unwrap();
    let (n, c, h, w) = (4, 3, 5, 5);
    let x = (Tensor::randn(0f32, 2.0, (n, c, h, w), &Device::Cpu).unwrap() + 0.5).unwrap();
    let values = to_vec(&x);
    let count = (n * h * w) as f64;
    let channel = |ch: usize| -> Vec<f64> {
        let mut v = Vec::new();
        for img in 0..n {
            let start = (img * c + ch) * h * w;
            v.extend(values[start..start + h * w].iter().map(|&x| x as f64));
        }
        v
    };
    let stats: Vec<(f64, f64)> = (0..c)
        .map(|ch| {
            let v = channel(ch);
            let mean = v.iter().sum::<f64>() / count;
            let biased = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / count;
            (mean, biased)
        })
        .collect();

    let y = bn.forward(&x, Mode::Train).unwrap();
    // Output normalised with the biased batch variance (weight 1, bias 0).
    let y0 = to_vec(&y);
    let (m0, v0) = stats[0];
    let expect0 = (values[0] as f64 - m0) / (v0 + 1e-5).sqrt();
    assert!((y0[0] as f64 - expect0).abs() < 1e-4, "{} vs {expect0}", y0[0]);

    // running = 0.9 * running + 0.1 * batch, the variance unbiased n/(n-1).
    let rm = to_vec(bn.running_mean());
    let rv = to_vec(bn.running_var());
    for ch in 0..c {
        let (mean, biased) = stats[ch];
        let unbiased = biased * count / (count - 1.0);
        assert!((rm[ch] as f64 - 0.1 * mean).abs() < 1e-5, "mean ch {ch}");
        assert!((rv[ch] as f64 - (0.9 + 0.1 * unbiased)).abs() < 1e-5, "var ch {ch}");
    }
    // The VarMap's variables are the ones updated (so checkpoints carry them).
    let s = state(&varmap);
    assert_eq!(to_vec(&s["bn.running_mean"]), rm);
    assert_eq!(to_vec(&s["bn.running_var"]), rv);

    // A second step compounds.
    bn.forward(&x, Mode::Train).unwrap();
    let rm2 = to_vec(bn.running_mean());
    assert!((rm2[0] as f64 - (0.9 * 0.1 * m0 + 0.1 * m0)).abs() < 1e-5);

    // Eval mode uses the running statistics and changes nothing.
    let ye = to_vec(&bn.forward(&x, Mode::Eval).unwrap());
    let expect = (values[0] as f64 - rm2[0] as f64) / (to_vec(bn.running_var())[0] as f64 + 1e-5).sqrt();
    assert!((ye[0] as f64 - expect).abs() < 1e-4);
    assert_eq!(to_vec(bn.running_mean()), rm2);

    // One value per channel cannot be normalised in training mode.
    let single = Tensor::zeros((1, 3, 1, 1), DType::F32, &Device::Cpu).unwrap();
    assert!(bn.forward(&single, Mode::Train).is_err());
}

#[test]
fn train_forward_updates_the_models_running_stats_and_eval_does_not() {
    let (varmap, model) = new_model("resnet8", 10, 3, &Device::Cpu).unwrap();
    let x = Tensor::randn(0f32, 1.0, (4, 3, 16, 16), &Device::Cpu).unwrap();
    let before = state(&varmap);
    model.forward(&x, Mode::Eval).unwrap();
    let after_eval = state(&varmap);
    for (k, v) in &before {
        assert_eq!(max_abs_diff(v, &after_eval[k]), 0.0, "{k} changed in eval mode");
    }
    model.forward(&x, Mode::Train).unwrap();
    let after_train = state(&varmap);
    for (k, v) in &before {
        let changed = max_abs_diff(v, &after_train[k]) > 0.0;
        assert_eq!(changed, !is_trainable(k), "{k}: changed = {changed}");
    }
}

#[test]
fn init_is_seeded_and_pytorch_like() {
    let (a, _) = new_model("resnet20", 10, 42, &Device::Cpu).unwrap();
    let (b, _) = new_model("resnet20", 10, 42, &Device::Cpu).unwrap();
    let (c, _) = new_model("resnet20", 10, 43, &Device::Cpu).unwrap();
    let (sa, sb, sc) = (state(&a), state(&b), state(&c));
    for (k, v) in &sa {
        assert_eq!(to_vec(v), to_vec(&sb[k]), "{k} differs for the same seed");
    }
    assert_ne!(to_vec(&sa["layer2.1.conv1.weight"]), to_vec(&sc["layer2.1.conv1.weight"]));

    // Kaiming normal, fan-in: std sqrt(2 / (32 * 9)).
    let w = to_vec(&sa["layer2.1.conv1.weight"]);
    let mean = w.iter().sum::<f32>() / w.len() as f32;
    let std = (w.iter().map(|x| (x - mean).powi(2)).sum::<f32>() / w.len() as f32).sqrt();
    let target = (2.0f32 / (32.0 * 9.0)).sqrt();
    assert!(mean.abs() < 0.01 && (std / target - 1.0).abs() < 0.05, "mean {mean}, std {std}");
    assert!(to_vec(&sa["bn1.weight"]).iter().all(|&x| x == 1.0));
    assert!(to_vec(&sa["bn1.bias"]).iter().all(|&x| x == 0.0));
    assert!(to_vec(&sa["bn1.running_var"]).iter().all(|&x| x == 1.0));
    // Linear bias: PyTorch default, uniform within 1/sqrt(64).
    assert!(to_vec(&sa["linear.bias"]).iter().all(|&x| x.abs() <= 0.125));

    // RepDistiller: kaiming normal, fan-out.
    let (r, _) = new_model("resnet8x4", 100, 42, &Device::Cpu).unwrap();
    let w = to_vec(&state(&r)["layer3.0.conv2.weight"]);
    let std = (w.iter().map(|x| x * x).sum::<f32>() / w.len() as f32).sqrt();
    let target = (2.0f32 / (256.0 * 9.0)).sqrt();
    assert!((std / target - 1.0).abs() < 0.05, "std {std} vs {target}");
}

#[test]
fn gradients_reach_every_trainable_variable() {
    let (varmap, model) = new_model("resnet8", 10, 5, &Device::Cpu).unwrap();
    let x = Tensor::randn(0f32, 1.0, (2, 3, 8, 8), &Device::Cpu).unwrap();
    let out = model.forward(&x, Mode::Train).unwrap();
    let loss = out.logits.sqr().unwrap().sum_all().unwrap();
    let grads = loss.backward().unwrap();
    for (name, var) in trainable_vars(&varmap) {
        let g = grads.get(var.as_tensor()).unwrap_or_else(|| panic!("no gradient for {name}"));
        assert_eq!(g.dims(), var.dims());
    }
    for (name, var) in varmap.data().lock().unwrap().iter() {
        if !is_trainable(name) {
            assert!(grads.get(var.as_tensor()).is_none(), "{name} got a gradient");
        }
    }
}

#[test]
fn unknown_architectures_and_bad_configs_are_errors() {
    let vb = VarBuilder::zeros(DType::F32, &Device::Cpu);
    let err = build_classifier("resnet19", 10, vb).err().unwrap();
    let msg = err.to_string();
    assert!(matches!(err, ModelError::UnknownArch { .. }));
    assert!(msg.contains("resnet19") && msg.contains("resnet56") && msg.contains("resnet32x4"), "{msg}");
    assert!(ResNetConfig::from_arch_name("vgg8", 10).is_err());

    let varmap = VarMap::new();
    let vb = seeded_var_builder(&varmap, 0, DType::F32, &Device::Cpu);
    let mut cfg = ResNetConfig::resnet20(10);
    cfg.depth = 21;
    let msg = CifarResNet::new(&cfg, vb.clone()).err().unwrap().to_string();
    assert!(msg.contains("6n + 2"), "{msg}");
    let mut cfg = ResNetConfig::resnet20(10);
    cfg.widths = vec![16, 8, 64];
    assert!(CifarResNet::new(&cfg, vb.clone()).is_err());
    assert!(CifarResNet::new(&ResNetConfig::resnet20(0), vb).is_err());
}

#[test]
fn trainable_rule_excludes_running_stats() {
    assert!(is_trainable("layer1.0.bn1.weight"));
    assert!(is_trainable("linear.bias"));
    assert!(!is_trainable("bn1.running_mean"));
    assert!(!is_trainable("layer1.0.downsample.1.running_var"));
    assert!(!is_trainable("bn1.num_batches_tracked"));
    let (varmap, _) = new_model("resnet8", 10, 0, &Device::Cpu).unwrap();
    let names: Vec<String> = trainable_vars(&varmap).into_iter().map(|(n, _)| n).collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted, "trainable_vars is sorted by name");
    assert!(names.iter().all(|n| !n.contains("running")));
}
