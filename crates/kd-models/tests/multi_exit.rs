//! Multi-exit networks (BYOT branches) over CIFAR ResNets and ResNet-18: exit shapes, parameter
//! counts, backbone initialisation shared with the plain model, gradients into every branch,
//! and refusals.

use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use kd_core::{Classifier, Mode};
use kd_models::multi_exit::stage_count;
use kd_models::{
    build_classifier, new_model, new_multi_exit_model, trainable_vars, BuildOptions, ModelError,
};

fn input(n: usize) -> Tensor {
    // Deterministic, non-constant images.
    let v: Vec<f32> = (0..n * 3 * 32 * 32).map(|i| ((i * 7919 % 1000) as f32 / 500.0) - 1.0).collect();
    Tensor::from_vec(v, (n, 3, 32, 32), &Device::Cpu).unwrap()
}

fn var_names(varmap: &VarMap) -> Vec<String> {
    let mut names: Vec<String> = varmap.data().lock().unwrap().keys().cloned().collect();
    names.sort();
    names
}

/// ResNet-18 for CIFAR-100 has 11,220,132 parameters (kuangliu / RepDistiller `ResNet18`:
/// 11,168,832 in the body + 51,300 in the 512→100 head; BYOT and mmrazor list 11.22M).
#[test]
fn resnet18_parameter_count_and_names() {
    let (varmap, model) = new_model("resnet18", 100, 0, &Device::Cpu).unwrap();
    assert_eq!(model.num_params(), 11_220_132);
    assert_eq!(model.arch(), "resnet18");
    let trainable: usize = trainable_vars(&varmap).iter().map(|(_, v)| v.elem_count()).sum();
    assert_eq!(trainable, 11_220_132);
    let names = var_names(&varmap);
    for n in [
        "conv1.weight",
        "layer1.0.conv1.weight",
        "layer2.0.downsample.0.weight",
        "layer4.1.bn2.running_var",
        "fc.bias",
    ] {
        assert!(names.contains(&n.to_string()), "{n} missing");
    }
    // Option B only where the shape changes: stages 2-4, first block.
    assert!(!names
        .iter()
        .any(|n| n.starts_with("layer1.0.downsample") || n.starts_with("layer2.1.downsample")));
    let out = model.forward(&input(2), Mode::Eval).unwrap();
    assert_eq!(out.logits.dims(), &[2, 100]);
    let shapes: Vec<Vec<usize>> = out.stage_features.iter().map(|f| f.dims().to_vec()).collect();
    assert_eq!(
        shapes,
        vec![vec![2, 64, 32, 32], vec![2, 128, 16, 16], vec![2, 256, 8, 8], vec![2, 512, 4, 4]]
    );
}

#[test]
fn exits_have_logits_and_final_width_features_for_resnet20_and_resnet18() {
    for (arch, classes, exits, width) in
        [("resnet20", 10, 3, 64), ("resnet18", 100, 4, 512), ("resnet8x4", 100, 3, 256)]
    {
        assert_eq!(stage_count(arch).unwrap(), exits);
        let (_, net) = new_multi_exit_model(arch, classes, 1, BuildOptions::default(), &Device::Cpu).unwrap();
        assert_eq!(net.num_exits(), exits, "{arch}");
        assert_eq!(net.arch(), format!("{arch}-byot"));
        let out = net.forward_exits(&input(2), Mode::Eval).unwrap();
        assert_eq!(out.logits.len(), exits);
        assert_eq!(out.features.len(), exits);
        for (l, f) in out.logits.iter().zip(&out.features) {
            assert_eq!(l.dims(), &[2, classes], "{arch}");
            assert_eq!(f.dims(), &[2, width], "{arch}");
        }
        // The deepest exit is the backbone itself.
        let plain = net.forward(&input(2), Mode::Eval).unwrap();
        let d = (plain.logits - &out.logits[exits - 1]).unwrap().abs().unwrap().max_all().unwrap();
        assert_eq!(d.to_scalar::<f32>().unwrap(), 0.0);
    }
}

#[test]
fn backbone_starts_from_the_plain_models_weights_and_params_add_up() {
    let dev = Device::Cpu;
    let (plain_map, plain) = new_model("resnet20", 10, 42, &dev).unwrap();
    let (multi_map, net) = new_multi_exit_model("resnet20", 10, 42, BuildOptions::default(), &dev).unwrap();
    let multi = multi_map.data().lock().unwrap();
    for (name, var) in plain_map.data().lock().unwrap().iter() {
        let other = multi.get(name).unwrap_or_else(|| panic!("{name} missing from the multi-exit model"));
        let d = (var.as_tensor() - other.as_tensor()).unwrap().abs().unwrap().max_all().unwrap();
        assert_eq!(d.to_scalar::<f32>().unwrap(), 0.0, "{name}");
    }
    // Branch i (1-based) for stages 1 and 2, none after the last stage.
    assert!(
        multi.keys().any(|k| k.starts_with("branch1.")) && multi.keys().any(|k| k.starts_with("branch2."))
    );
    assert!(!multi.keys().any(|k| k.starts_with("branch3.")));
    drop(multi);
    let total: usize = trainable_vars(&multi_map).iter().map(|(_, v)| v.elem_count()).sum();
    assert_eq!(net.num_params(), total);
    // Branch of stage 1 (16 ch, 32x32 -> 64 ch, 8x8): 1x1 16->16 (256) + BN (32) + 4x4 s4
    // 16->16 (4096) + BN (32) + 1x1 16->64 (1024) + BN (128) + fc 64->10 (650) = 6218.
    // Branch of stage 2: 1x1 32->16 (512) + 32 + 2x2 s2 16->16 (1024) + 32 + 1024 + 128 + 650 = 3402.
    assert_eq!(total, plain.num_params() + 6218 + 3402);
    // Per-exit counts: stem (432 + 32) + layer1 (3 blocks x 2 x (2304 + 32)) + branch1, ...
    let stem = 432 + 32;
    let layer1 = 3 * 2 * (2304 + 32);
    let layer2 = (4608 + 64 + 9216 + 64) + 2 * 2 * (9216 + 64);
    assert_eq!(net.exit_params(), &[stem + layer1 + 6218, stem + layer1 + layer2 + 3402, plain.num_params()]);
}

#[test]
fn gradients_reach_every_branch_and_the_backbone() {
    for arch in ["resnet20", "resnet18"] {
        let (varmap, net) = new_multi_exit_model(arch, 10, 3, BuildOptions::default(), &Device::Cpu).unwrap();
        let labels = Tensor::new(&[1u32, 7, 3, 0], &Device::Cpu).unwrap();
        let out = net.forward_exits(&input(4), Mode::Train).unwrap();
        let mut loss = Tensor::zeros((), DType::F32, &Device::Cpu).unwrap();
        for (l, f) in out.logits.iter().zip(&out.features) {
            loss = (loss + kd_core::losses::cross_entropy(l, &labels, 0.0).unwrap()).unwrap();
            loss = (loss + (f.sqr().unwrap().mean_all().unwrap() * 1e-3).unwrap()).unwrap();
        }
        let grads = loss.backward().unwrap();
        for (name, var) in trainable_vars(&varmap) {
            let g = grads.get(var.as_tensor()).unwrap_or_else(|| panic!("{arch}: no gradient for {name}"));
            let norm = g.sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(norm > 0.0 && norm.is_finite(), "{arch}: gradient of {name} is {norm}");
        }
    }
}

#[test]
fn multi_exit_names_build_through_the_registry_and_bad_ones_are_refused() {
    let varmap = VarMap::new();
    let vb = kd_models::seeded_var_builder(&varmap, 0, DType::F32, &Device::Cpu);
    let m = build_classifier("resnet32-byot", 10, vb).unwrap();
    assert_eq!(m.arch(), "resnet32-byot");
    assert_eq!(m.forward(&input(1), Mode::Eval).unwrap().logits.dims(), &[1, 10]);
    let vb = kd_models::seeded_var_builder(&VarMap::new(), 0, DType::F32, &Device::Cpu);
    assert!(matches!(build_classifier("resnet20-byot-byot", 10, vb), Err(ModelError::Config { .. })));
    let vb = kd_models::seeded_var_builder(&VarMap::new(), 0, DType::F32, &Device::Cpu);
    assert!(matches!(build_classifier("vgg8-byot", 10, vb), Err(ModelError::UnknownArch { .. })));
    assert!(stage_count("vgg8").unwrap_err().to_string().contains("resnet18"));
}
