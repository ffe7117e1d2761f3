//! Real akamaster CIFAR-10 teachers (`$KD_TEACHERS_DIR`, else
//! `<workspace>/../shared/data/teachers`): the legacy `.th` and the safetensors copy load to
//! identical tensors, the wrong architecture is refused with a precise message, and forward
//! passes reproduce the stored reference logits on the CIFAR-10 test parquet of the hub cache
//! (`$HF_HOME`, else `<workspace>/../shared/data/hf-cache`; relative values are taken from the
//! workspace root). The tests need the data and FAIL (they do not skip) when it is missing.

mod common;

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use kd_core::Mode;
use kd_models::{load_model, load_weights, new_model, read_checkpoint, ModelError};

/// `(legacy .th, model.safetensors, reference_logits.json)` of `akamaster-<arch>-cifar10`;
/// fails the test, naming the folder, when one is missing.
fn teacher_files(dir: &Path, arch: &str) -> (PathBuf, PathBuf, PathBuf) {
    let folder = dir.join(format!("akamaster-{arch}-cifar10"));
    let th = std::fs::read_dir(&folder).ok().and_then(|rd| {
        rd.filter_map(|e| e.ok().map(|e| e.path())).find(|p| p.extension().is_some_and(|e| e == "th"))
    });
    let files = th.map(|th| (th, folder.join("model.safetensors"), folder.join("reference_logits.json")));
    match files {
        Some((th, st, reference)) if st.is_file() && reference.is_file() => (th, st, reference),
        _ => panic!(
            "real-data test, data missing: {} lacks the .th, model.safetensors or reference_logits.json \
             (set KD_TEACHERS_DIR to the shared teachers)",
            folder.display()
        ),
    }
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

#[test]
fn legacy_th_and_safetensors_hold_identical_tensors() {
    let dir = common::teachers_dir();
    for arch in ["resnet20", "resnet32", "resnet44", "resnet56"] {
        let (th, st, _) = teacher_files(&dir, arch);
        let legacy = read_checkpoint(&th).unwrap();
        let safetensors = read_checkpoint(&st).unwrap();
        let names_l: Vec<&str> = legacy.iter().map(|(n, _)| n.as_str()).collect();
        let names_s: Vec<&str> = safetensors.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names_l, names_s, "{arch}: tensor names differ");
        assert!(names_l.iter().all(|n| !n.starts_with("module.")));
        for ((name, a), (_, b)) in legacy.iter().zip(&safetensors) {
            assert_eq!(a.dims(), b.dims(), "{arch} {name}");
            assert_eq!(max_abs_diff(a, b), 0.0, "{arch} {name}: values differ");
        }
        // Both load into the architecture, checked name by name.
        let (varmap, model) = new_model(arch, 10, 0, &Device::Cpu).unwrap();
        load_weights(&varmap, &th).unwrap();
        assert_eq!(varmap.all_vars().len(), legacy.len());
        assert!(model.num_params() > 0);
    }
}

#[test]
fn wrong_architecture_is_refused_with_each_tensor_named() {
    let dir = common::teachers_dir();
    let ((th56, _, _), (th20, st20, _)) = (teacher_files(&dir, "resnet56"), teacher_files(&dir, "resnet20"));

    // resnet56 weights into resnet20: the extra blocks are unexpected.
    let (varmap, _) = new_model("resnet20", 10, 0, &Device::Cpu).unwrap();
    let before = varmap.data().lock().unwrap()["conv1.weight"].as_tensor().copy().unwrap();
    let err = load_weights(&varmap, &th56).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, ModelError::Mismatch { .. }), "{msg}");
    assert!(msg.contains(&th56.display().to_string()), "file not named: {msg}");
    assert!(msg.contains("layer1.3.conv1.weight"), "{msg}");
    assert!(msg.contains("layer3.8.bn2.running_var"), "{msg}");
    assert!(!msg.contains("missing"), "{msg}");
    // Nothing was changed.
    let after = varmap.data().lock().unwrap()["conv1.weight"].as_tensor().copy().unwrap();
    assert_eq!(max_abs_diff(&before, &after), 0.0);

    // resnet20 weights into resnet56: the blocks 3..8 are missing.
    let (varmap, _) = new_model("resnet56", 10, 0, &Device::Cpu).unwrap();
    let msg = load_weights(&varmap, &st20).unwrap_err().to_string();
    assert!(msg.contains("missing"), "{msg}");
    assert!(msg.contains("layer2.5.conv2.weight"), "{msg}");

    // Same depth, other label space: the head's shapes are named with both shapes.
    let (varmap, _) = new_model("resnet20", 100, 0, &Device::Cpu).unwrap();
    let msg = load_weights(&varmap, &th20).unwrap_err().to_string();
    assert!(msg.contains("linear.weight expected [100, 64], found [10, 64]"), "{msg}");
    assert!(msg.contains("linear.bias expected [100], found [10]"), "{msg}");
}

/// The first `n` images of the shared CIFAR-10 test parquet, normalised as the teachers were
/// trained, `(n, 3, 32, 32)`; fails the test, naming the path, when the parquet is missing.
fn cifar10_test_images(n: usize, mean: [f32; 3], std: [f32; 3]) -> Tensor {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    use parquet::record::RowAccessor;

    let path =
        common::hub_snapshot("datasets", "uoft-cs/cifar10").join("plain_text/test-00000-of-00001.parquet");
    let file = std::fs::File::open(&path)
        .unwrap_or_else(|e| panic!("real-data test, data missing: {} ({e}); set HF_HOME", path.display()));
    let reader = SerializedFileReader::new(file).unwrap();
    let mut pixels = Vec::with_capacity(n * 3 * 32 * 32);
    for row in reader.get_row_iter(None).unwrap().take(n) {
        let row = row.unwrap();
        let png = row.get_group(0).unwrap().get_bytes(0).unwrap().data().to_vec();
        let img = image::load_from_memory(&png).unwrap().to_rgb8();
        assert_eq!(img.dimensions(), (32, 32));
        for c in 0..3 {
            for y in 0..32 {
                for x in 0..32 {
                    let v = img.get_pixel(x, y)[c] as f32 / 255.0;
                    pixels.push((v - mean[c]) / std[c]);
                }
            }
        }
    }
    assert_eq!(pixels.len(), n * 3 * 32 * 32, "{}: fewer than {n} rows", path.display());
    Tensor::from_vec(pixels, (n, 3, 32, 32), &Device::Cpu).unwrap()
}

#[test]
fn imported_teachers_reproduce_reference_logits() {
    let dir = common::teachers_dir();
    for arch in ["resnet20", "resnet32", "resnet44", "resnet56"] {
        let (th, st, reference) = teacher_files(&dir, arch);
        let reference: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&reference).unwrap()).unwrap();
        let triple = |key: &str| -> [f32; 3] {
            let v: Vec<f32> =
                reference[key].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect();
            [v[0], v[1], v[2]]
        };
        let rows = reference["rows"].as_array().unwrap();
        let images = cifar10_test_images(rows.len(), triple("mean"), triple("std"));
        let expected: Vec<f32> = rows
            .iter()
            .flat_map(|r| r["logits"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32))
            .collect();
        let expected = Tensor::from_vec(expected, (rows.len(), 10), &Device::Cpu).unwrap();
        for path in [&th, &st] {
            let (_, model) = load_model(arch, 10, path, &Device::Cpu).unwrap();
            let out = model.forward(&images, Mode::Eval).unwrap();
            let diff = max_abs_diff(&out.logits, &expected);
            eprintln!("{arch} from {}: max |logit - reference| = {diff:e}", path.display());
            assert!(diff < 1e-3, "{arch} from {}: logits differ by {diff}", path.display());
            let frozen =
                kd_models::load_frozen_model(arch, 10, Default::default(), path, &Device::Cpu).unwrap();
            let diff = max_abs_diff(&frozen.forward(&images, Mode::Eval).unwrap().logits, &expected);
            assert!(diff < 1e-3, "frozen {arch}: logits differ by {diff}");
        }
    }
}
