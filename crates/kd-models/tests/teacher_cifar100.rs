//! A real third-party CIFAR-100 teacher: the torchvision-style option-B ResNet-56 with a biased
//! stem in `<teachers>/third-party-resnet56-cifar100/` (020118/resnet_cifar100-, see its
//! README.md), imported as `resnet56b-stem-bias`.
//!
//! - its logits for the first 16 rows of the shared CIFAR-100 test parquet equal the README's
//!   `reference_logits.json` (an independent numpy forward pass) within 1e-3 absolute;
//! - its top-1 accuracy on all 2,000 shared test images is within 1.0 point of the README's
//!   measured 66.35%;
//! - loading it as the akamaster `resnet56` or as a 10-class `resnet56b-stem-bias` is refused
//!   with the file, the tensors and the file's layout named.
//!
//! These tests need the data and FAIL (they do not skip) when it is missing. The teachers are
//! found at `$KD_TEACHERS_DIR`, else `<workspace>/../shared/data/teachers`; the hub cache at
//! `$HF_HOME`, else `<workspace>/../shared/data/hf-cache`; a relative value of either is taken
//! from the workspace root.

mod common;

use std::path::PathBuf;

use candle_core::{Device, Tensor, D};
use kd_core::Mode;
use kd_models::{load_frozen_model, load_model, read_checkpoint, ModelError};

const ARCH: &str = "resnet56b-stem-bias";
const FOLDER: &str = "third-party-resnet56-cifar100";
const CHECKPOINT: &str = "resnet56-003ab840.pth";
/// The README's top-1 on the 2,000 shared test images (independent numpy forward pass).
const README_TOP1: f64 = 66.35;
/// CIFAR-100 normalisation the teacher was trained with (its README / utils.py).
const MEAN: [f32; 3] = [0.5071, 0.4867, 0.4408];
const STD: [f32; 3] = [0.2675, 0.2565, 0.2761];

fn teacher_folder() -> PathBuf {
    let folder = common::teachers_dir().join(FOLDER);
    assert!(
        folder.join(CHECKPOINT).is_file(),
        "the third-party CIFAR-100 teacher is missing: no {} (set KD_TEACHERS_DIR to the folder \
         holding {FOLDER}/)",
        folder.join(CHECKPOINT).display()
    );
    folder
}

fn cifar100_test_parquet() -> PathBuf {
    let path =
        common::hub_snapshot("datasets", "uoft-cs/cifar100").join("cifar100/test-00000-of-00001.parquet");
    assert!(path.is_file(), "the CIFAR-100 test parquet is missing: {}", path.display());
    path
}

/// The first `n` (all if `None`) test images, normalised, `(n, 3, 32, 32)`, and their fine labels.
fn cifar100_test(n: Option<usize>) -> (Tensor, Vec<u32>) {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    use parquet::record::Field;

    let path = cifar100_test_parquet();
    let reader = SerializedFileReader::new(std::fs::File::open(&path).unwrap()).unwrap();
    let mut pixels = Vec::new();
    let mut labels = Vec::new();
    for row in reader.get_row_iter(None).unwrap().take(n.unwrap_or(usize::MAX)) {
        let row = row.unwrap();
        let (mut png, mut label) = (None, None);
        for (name, field) in row.get_column_iter() {
            match (name.as_str(), field) {
                ("img", Field::Group(img)) => {
                    for (k, v) in img.get_column_iter() {
                        if let ("bytes", Field::Bytes(b)) = (k.as_str(), v) {
                            png = Some(b.data().to_vec());
                        }
                    }
                }
                ("fine_label", Field::Long(v)) => label = Some(*v as u32),
                ("fine_label", Field::Int(v)) => label = Some(*v as u32),
                _ => {}
            }
        }
        let png = png.unwrap_or_else(|| panic!("{}: a row without `img` bytes", path.display()));
        let img = image::load_from_memory(&png).unwrap().to_rgb8();
        assert_eq!(img.dimensions(), (32, 32));
        for c in 0..3 {
            for y in 0..32 {
                for x in 0..32 {
                    let v = img.get_pixel(x, y)[c] as f32 / 255.0;
                    pixels.push((v - MEAN[c]) / STD[c]);
                }
            }
        }
        labels.push(label.unwrap_or_else(|| panic!("{}: a row without `fine_label`", path.display())));
    }
    let n = labels.len();
    (Tensor::from_vec(pixels, (n, 3, 32, 32), &Device::Cpu).unwrap(), labels)
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

#[test]
fn third_party_resnet56_reproduces_reference_logits() {
    let folder = teacher_folder();
    let reference: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(folder.join("reference_logits.json")).unwrap())
            .unwrap();
    // The README's normalisation is the one the reference logits used.
    for (key, ours) in [("mean", MEAN), ("std", STD)] {
        let theirs: Vec<f32> =
            reference[key].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect();
        assert_eq!(theirs, ours, "{key}");
    }
    let rows = reference["rows"].as_array().unwrap();
    let (images, labels) = cifar100_test(Some(rows.len()));
    let expected: Vec<f32> = rows
        .iter()
        .flat_map(|r| r["logits"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32))
        .collect();
    let expected = Tensor::from_vec(expected, (rows.len(), 100), &Device::Cpu).unwrap();
    for (r, label) in rows.iter().zip(&labels) {
        assert_eq!(r["label"].as_u64(), Some(*label as u64), "row {}", r["row"]);
    }

    // The zip .pth as it is; a safetensors copy of the same tensors; the frozen teacher path.
    let pth = folder.join(CHECKPOINT);
    let dir = tempfile::tempdir().unwrap();
    let st = dir.path().join("resnet56.safetensors");
    candle_core::safetensors::save(&read_checkpoint(&pth).unwrap().into_iter().collect(), &st).unwrap();
    for path in [&pth, &st] {
        let (_, model) = load_model(ARCH, 100, path, &Device::Cpu).unwrap();
        let out = model.forward(&images, Mode::Eval).unwrap();
        let diff = max_abs_diff(&out.logits, &expected);
        eprintln!("{ARCH} from {}: max |logit - reference| = {diff:e}", path.display());
        assert!(diff < 1e-3, "{ARCH} from {}: logits differ from the reference by {diff}", path.display());
        assert_eq!(out.embedding.dims(), &[rows.len(), 64]);
    }
    let frozen = load_frozen_model(ARCH, 100, Default::default(), &pth, &Device::Cpu).unwrap();
    let diff = max_abs_diff(&frozen.forward(&images, Mode::Eval).unwrap().logits, &expected);
    assert!(diff < 1e-3, "frozen {ARCH}: logits differ from the reference by {diff}");
}

#[test]
fn third_party_resnet56_top1_on_the_shared_test_split() {
    let folder = teacher_folder();
    let (images, labels) = cifar100_test(None);
    assert_eq!(labels.len(), 2000, "the shared CIFAR-100 test split has 2,000 images");
    let model =
        load_frozen_model(ARCH, 100, Default::default(), &folder.join(CHECKPOINT), &Device::Cpu).unwrap();
    let mut correct = 0usize;
    for start in (0..labels.len()).step_by(250) {
        let len = 250.min(labels.len() - start);
        let logits = model.forward(&images.narrow(0, start, len).unwrap(), Mode::Eval).unwrap().logits;
        let pred = logits.argmax(D::Minus1).unwrap().to_vec1::<u32>().unwrap();
        correct += pred.iter().zip(&labels[start..start + len]).filter(|(p, l)| p == l).count();
    }
    let top1 = 100.0 * correct as f64 / labels.len() as f64;
    eprintln!("{ARCH} (third-party CIFAR-100 teacher): top-1 {top1:.2}% on {} images", labels.len());
    assert!(
        (top1 - README_TOP1).abs() <= 1.0,
        "top-1 {top1:.2}% is not within 1.0 of the README's {README_TOP1}%"
    );
}

#[test]
fn third_party_resnet56_into_the_wrong_architecture_names_its_layout() {
    let pth = teacher_folder().join(CHECKPOINT);
    let file = pth.display().to_string();
    let layout = "the file looks like an option-B torchvision-style ResNet-56 (stem 16 channels with bias";

    // As the akamaster option-A ResNet-56 (100 classes): every conv fits, the rest is named.
    let (varmap, _) = kd_models::new_model("resnet56", 100, 0, &Device::Cpu).unwrap();
    let err = kd_models::load_weights(&varmap, &pth).unwrap_err();
    let msg = err.to_string();
    eprintln!("{msg}");
    let ModelError::Mismatch { report, .. } = &err else { panic!("expected a mismatch: {msg}") };
    assert_eq!(report.missing, vec!["linear.bias".to_string(), "linear.weight".to_string()], "{msg}");
    assert!(report.shape_mismatches.is_empty(), "{msg}");
    // conv1.bias, fc.{weight,bias}, and 2 downsample convs + BNs (1 + 4 tensors each).
    assert_eq!(report.unexpected.len(), 1 + 2 + 2 * 5, "{msg}");
    for needle in [
        file.as_str(),
        "conv1.bias",
        "fc.weight",
        "layer2.0.downsample.0.weight",
        "layer3.0.downsample.1.running_var",
        layout,
        "for 100 classes, kd-bench arch `resnet56b-stem-bias`",
        "the model is an akamaster option-A ResNet-56",
    ] {
        assert!(msg.contains(needle), "`{needle}` not in: {msg}");
    }

    // As a 10-class option-B model: the head's shapes and the class count.
    let (varmap, _) = kd_models::new_model(ARCH, 10, 0, &Device::Cpu).unwrap();
    let msg = kd_models::load_weights(&varmap, &pth).unwrap_err().to_string();
    eprintln!("{msg}");
    for needle in [
        file.as_str(),
        "fc.weight expected [10, 64], found [100, 64]",
        "fc.bias expected [10], found [100]",
        layout,
        "fc has 100 outputs, the recipe wants 10",
    ] {
        assert!(msg.contains(needle), "`{needle}` not in: {msg}");
    }
    assert!(!msg.contains("missing") && !msg.contains("unexpected"), "{msg}");
}
