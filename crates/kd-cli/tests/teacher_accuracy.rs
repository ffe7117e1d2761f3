//! Import is right on real data: akamaster's ResNet teachers, loaded from their legacy `.th`
//! files, reproduce the reference logits and land within 1.5 points of their published
//! accuracy on the shared CIFAR-10 test split with their documented normalisation.

mod common;

use candle_core::{Device, Tensor};
use kd_core::recipe::{DataSection, NormalizeSpec};
use kd_core::trainer::{evaluate_with, BatchSource, Silent};
use kd_core::Mode;
use kd_run::data::{load_split, Loader};
use kd_run::models;

fn cifar10_test() -> DataSection {
    DataSection {
        hub: "uoft-cs/cifar10".into(),
        revision: "0b2714987fa478483af9968de7c934580d0bb9a2".into(),
        config: Some("plain_text".into()),
        train_split: "train".into(),
        eval_split: "test".into(),
        image_column: "img".into(),
        label_column: "label".into(),
        num_classes: 10,
        train_limit: None,
        eval_limit: None,
        subset_seed: 0,
        // akamaster trainer.py: ImageNet statistics.
        normalize: NormalizeSpec { mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225] },
        augment: None,
        validation_size: None,
        validation_seed: None,
        resize: None,
    }
}

/// A shared akamaster teacher file; fails the test, naming the path, when it is missing.
fn teacher_file(arch: &str, file: &str) -> std::path::PathBuf {
    let p = common::teachers_dir().join(format!("akamaster-{arch}-cifar10")).join(file);
    assert!(p.is_file(), "real-data test, data missing: no teacher {} (set KD_TEACHERS_DIR)", p.display());
    p
}

#[test]
fn resnet56_legacy_checkpoint_matches_published_accuracy_and_reference_logits() {
    let hf = common::shared_hf_home();
    let th = teacher_file("resnet56", "resnet56-4bfd9763.th");
    let reference: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(th.with_file_name("reference_logits.json")).unwrap())
            .unwrap();

    let device = Device::Cpu;
    let data = cifar10_test();
    let cache = kd_data::HubCache::new(hf, true);
    let split = load_split(&cache, &data, "test", None).unwrap();
    assert_eq!(split.indices.len(), 2000);
    let built = models::build("resnet56", 10, 0, &device).unwrap();
    models::load_weights(&built, &th).unwrap();

    // The first rows' logits agree with the independent numpy forward pass.
    let loader = Loader::eval(&split, &data, 8, &device);
    let first = loader.epoch(0).next().unwrap().unwrap();
    let logits = built.model.forward(&first.inputs, Mode::Eval).unwrap().logits.to_vec2::<f32>().unwrap();
    for row in reference["rows"].as_array().unwrap() {
        let i = row["row"].as_u64().unwrap() as usize;
        assert_eq!(first.labels.to_vec1::<u32>().unwrap()[i] as u64, row["label"].as_u64().unwrap());
        for (got, want) in logits[i].iter().zip(row["logits"].as_array().unwrap()) {
            let want = want.as_f64().unwrap() as f32;
            assert!((got - want).abs() < 2e-3 * want.abs().max(1.0), "row {i}: {got} vs {want}");
        }
    }

    // Accuracy on the shared test split: published 93.39% (10k test), measured 93.25% here.
    let loader = Loader::eval(&split, &data, 256, &device);
    let model = built.model.clone();
    let scores = evaluate_with(&loader, 1, &kd_core::metric::top1_top5(), &mut Silent, |x: &Tensor| {
        Ok(vec![model.forward(x, Mode::Eval)?.logits])
    })
    .unwrap();
    let top1 = scores[0].get("top1").unwrap();
    eprintln!("resnet56 top1 {top1:.2}, top5 {:?}", scores[0].get("top5"));
    assert!((top1 - 93.39).abs() <= 1.5, "resnet56 top1 {top1:.2} is not within 1.5 of 93.39");
}

#[test]
fn legacy_th_and_safetensors_copies_give_identical_logits() {
    let th = teacher_file("resnet20", "resnet20-12fca82f.th");
    let st = th.with_file_name("model.safetensors");
    let device = Device::Cpu;
    let a = models::build("resnet20", 10, 0, &device).unwrap();
    let b = models::build("resnet20", 10, 1, &device).unwrap();
    models::load_weights(&a, &th).unwrap();
    models::load_weights(&b, &st).unwrap();
    let x = Tensor::randn(0f32, 1.0, (4, 3, 32, 32), &device).unwrap();
    let la = a.model.forward(&x, Mode::Eval).unwrap().logits;
    let lb = b.model.forward(&x, Mode::Eval).unwrap().logits;
    let diff = (la - lb).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    assert_eq!(diff, 0.0);
}
