//! Checkpoint import on generated fixtures: legacy `torch.save`, zip `.pth` and safetensors
//! files written here (a minimal pickle writer stands in for PyTorch), name normalisation,
//! strided tensors, and the errors for files that do not fit or are not checkpoints.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use kd_core::Mode;
use kd_models::import::{detect_format, CheckpointFormat};
use kd_models::{load_weights, new_model, read_checkpoint, ModelError};

/// Just enough of pickle protocol 2 to write what `torch.save` writes.
mod pickle {
    pub enum Py {
        Str(String),
        Int(i64),
        Float(f64),
        Bool(bool),
        None,
        Tuple(Vec<Py>),
        List(Vec<Py>),
        Dict(Vec<(Py, Py)>),
        OrderedDict(Vec<(Py, Py)>),
        Global(&'static str, &'static str),
        Reduce(Box<Py>, Box<Py>),
        PersistentId(Box<Py>),
    }

    pub fn s(v: &str) -> Py {
        Py::Str(v.to_string())
    }

    fn emit(obj: &Py, out: &mut Vec<u8>) {
        match obj {
            Py::Str(v) => {
                out.push(b'X');
                out.extend((v.len() as u32).to_le_bytes());
                out.extend(v.as_bytes());
            }
            Py::Int(v) if (0..256).contains(v) => out.extend([b'K', *v as u8]),
            Py::Int(v) => {
                out.push(b'J');
                out.extend((*v as i32).to_le_bytes());
            }
            Py::Float(v) => {
                out.push(b'G');
                out.extend(v.to_be_bytes());
            }
            Py::Bool(v) => out.push(if *v { 0x88 } else { 0x89 }),
            Py::None => out.push(b'N'),
            Py::Tuple(items) if items.is_empty() => out.push(b')'),
            Py::Tuple(items) => {
                out.push(b'(');
                items.iter().for_each(|i| emit(i, out));
                out.push(b't');
            }
            Py::List(items) => {
                out.extend([b']', b'(']);
                items.iter().for_each(|i| emit(i, out));
                out.push(b'e');
            }
            Py::Dict(items) => {
                out.push(b'}');
                set_items(items, out);
            }
            Py::OrderedDict(items) => {
                out.extend(b"ccollections\nOrderedDict\n)R");
                set_items(items, out);
            }
            Py::Global(module, name) => {
                out.push(b'c');
                out.extend(format!("{module}\n{name}\n").as_bytes());
            }
            Py::Reduce(callable, args) => {
                emit(callable, out);
                emit(args, out);
                out.push(b'R');
            }
            Py::PersistentId(id) => {
                emit(id, out);
                out.push(b'Q');
            }
        }
    }

    fn set_items(items: &[(Py, Py)], out: &mut Vec<u8>) {
        if items.is_empty() {
            return;
        }
        out.push(b'(');
        for (k, v) in items {
            emit(k, out);
            emit(v, out);
        }
        out.push(b'u');
    }

    pub fn dumps(obj: &Py) -> Vec<u8> {
        let mut out = vec![0x80, 0x02];
        emit(obj, &mut out);
        out.push(b'.');
        out
    }

    /// `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, False, OrderedDict())`.
    pub fn tensor(
        storage_class: &'static str,
        key: &str,
        storage_numel: usize,
        view: Option<(usize, usize)>,
        offset: usize,
        size: &[usize],
        stride: &[usize],
    ) -> Py {
        let view = match view {
            None => Py::None,
            Some((off, n)) => Py::Tuple(vec![s("view"), Py::Int(off as i64), Py::Int(n as i64)]),
        };
        let storage = Py::PersistentId(Box::new(Py::Tuple(vec![
            s("storage"),
            Py::Global("torch", storage_class),
            s(key),
            s("cpu"),
            Py::Int(storage_numel as i64),
            view,
        ])));
        let ints = |v: &[usize]| Py::Tuple(v.iter().map(|&x| Py::Int(x as i64)).collect());
        Py::Reduce(
            Box::new(Py::Global("torch._utils", "_rebuild_tensor_v2")),
            Box::new(Py::Tuple(vec![
                storage,
                Py::Int(offset as i64),
                ints(size),
                ints(stride),
                Py::Bool(false),
                Py::OrderedDict(vec![]),
            ])),
        )
    }
}

use pickle::{s, Py};

/// One storage of a fixture: its key, class and little-endian bytes.
struct Storage {
    key: String,
    class: &'static str,
    numel: usize,
    bytes: Vec<u8>,
}

fn f32_storage(key: &str, values: &[f32]) -> Storage {
    Storage {
        key: key.to_string(),
        class: "FloatStorage",
        numel: values.len(),
        bytes: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
    }
}

/// A state dict of contiguous f32 tensors, one storage each, as pickle objects.
fn state_dict_objects(tensors: &[(String, Tensor)], prefix: &str) -> (Vec<(Py, Py)>, Vec<Storage>) {
    let mut entries = Vec::new();
    let mut storages = Vec::new();
    for (i, (name, t)) in tensors.iter().enumerate() {
        let values = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let key = format!("{}", 1000 + i);
        let dims = t.dims();
        let mut stride = vec![1usize; dims.len()];
        for d in (0..dims.len().saturating_sub(1)).rev() {
            stride[d] = stride[d + 1] * dims[d + 1];
        }
        entries.push((
            s(&format!("{prefix}{name}")),
            pickle::tensor("FloatStorage", &key, values.len(), None, 0, dims, &stride),
        ));
        storages.push(f32_storage(&key, &values));
    }
    (entries, storages)
}

/// Writes a legacy (non-zip) `torch.save` stream.
fn write_legacy(path: &Path, main: &Py, storages: &[Storage]) {
    let mut out =
        vec![0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19, 0x2e];
    out.extend(pickle::dumps(&Py::Int(1001)));
    out.extend(pickle::dumps(&Py::Dict(vec![
        (s("protocol_version"), Py::Int(1001)),
        (s("little_endian"), Py::Bool(true)),
        (
            s("type_sizes"),
            Py::Dict(vec![(s("short"), Py::Int(2)), (s("int"), Py::Int(4)), (s("long"), Py::Int(4))]),
        ),
    ])));
    out.extend(pickle::dumps(main));
    out.extend(pickle::dumps(&Py::List(storages.iter().map(|st| s(&st.key)).collect())));
    for st in storages {
        out.extend((st.numel as u64).to_le_bytes());
        out.extend(&st.bytes);
    }
    std::fs::write(path, out).unwrap();
}

/// Writes a zip-format `.pth` (`archive/data.pkl`, `archive/data/<key>`).
fn write_zip(path: &Path, main: &Py, storages: &[Storage]) {
    let file = std::fs::File::create(path).unwrap();
    let mut zip = zip::ZipWriter::new(file);
    let opts = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    zip.start_file("archive/data.pkl", opts).unwrap();
    zip.write_all(&pickle::dumps(main)).unwrap();
    zip.start_file("archive/version", opts).unwrap();
    zip.write_all(b"3\n").unwrap();
    for st in storages {
        zip.start_file(format!("archive/data/{}", st.key), opts).unwrap();
        zip.write_all(&st.bytes).unwrap();
    }
    zip.finish().unwrap();
}

fn model_state(varmap: &VarMap) -> Vec<(String, Tensor)> {
    let map: BTreeMap<String, Tensor> = varmap
        .data()
        .lock()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_tensor().copy().unwrap()))
        .collect();
    map.into_iter().collect()
}

fn assert_same_state(a: &[(String, Tensor)], b: &[(String, Tensor)]) {
    assert_eq!(a.len(), b.len());
    for ((na, ta), (nb, tb)) in a.iter().zip(b) {
        assert_eq!(na, nb);
        assert_eq!(ta.dims(), tb.dims(), "{na}");
        let diff = (ta - tb).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap();
        assert_eq!(diff.to_scalar::<f32>().unwrap(), 0.0, "{na}");
    }
}

fn temp_path(dir: &tempfile::TempDir, name: &str) -> PathBuf {
    dir.path().join(name)
}

/// A resnet8 with seed 1 and its state: the "trained" weights the fixtures carry.
fn source_state() -> Vec<(String, Tensor)> {
    let (varmap, model) = new_model("resnet8", 10, 1, &Device::Cpu).unwrap();
    // Move the running statistics away from 0/1 so they are checked too.
    let x = Tensor::randn(0.5f32, 2.0, (4, 3, 8, 8), &Device::Cpu).unwrap();
    model.forward(&x, Mode::Train).unwrap();
    model_state(&varmap)
}

#[test]
fn legacy_torch_save_with_dataparallel_prefix_and_nested_state_dict_loads() {
    let dir = tempfile::tempdir().unwrap();
    let source = source_state();
    let (mut entries, mut storages) = state_dict_objects(&source, "module.");
    // PyTorch >= 0.4 keeps an int64 counter per BN; the models here do not.
    entries.push((
        s("module.bn1.num_batches_tracked"),
        pickle::tensor("LongStorage", "77", 1, None, 0, &[], &[]),
    ));
    storages.push(Storage {
        key: "77".into(),
        class: "LongStorage",
        numel: 1,
        bytes: 5i64.to_le_bytes().to_vec(),
    });
    let main =
        Py::Dict(vec![(s("best_prec1"), Py::Float(91.5)), (s("state_dict"), Py::OrderedDict(entries))]);
    let path = temp_path(&dir, "resnet8.th");
    write_legacy(&path, &main, &storages);
    assert_eq!(detect_format(&std::fs::read(&path).unwrap()), Some(CheckpointFormat::TorchLegacy));
    assert!(storages.iter().any(|st| st.class == "LongStorage"));

    let (varmap, _) = new_model("resnet8", 10, 99, &Device::Cpu).unwrap();
    load_weights(&varmap, &path).unwrap();
    assert_same_state(&model_state(&varmap), &source);
}

#[test]
fn zip_pth_top_level_and_nested_load() {
    let dir = tempfile::tempdir().unwrap();
    let source = source_state();
    let (entries, storages) = state_dict_objects(&source, "");
    let flat = temp_path(&dir, "flat.pth");
    write_zip(&flat, &Py::OrderedDict(entries), &storages);
    let (entries, storages) = state_dict_objects(&source, "module.");
    let nested = temp_path(&dir, "nested.pth");
    write_zip(
        &nested,
        &Py::Dict(vec![(s("epoch"), Py::Int(200)), (s("model"), Py::OrderedDict(entries))]),
        &storages,
    );
    for path in [flat, nested] {
        assert_eq!(detect_format(&std::fs::read(&path).unwrap()), Some(CheckpointFormat::TorchZip));
        let (varmap, _) = new_model("resnet8", 10, 99, &Device::Cpu).unwrap();
        load_weights(&varmap, &path).unwrap();
        assert_same_state(&model_state(&varmap), &source);
    }
}

#[test]
fn safetensors_round_trip_and_dtype_conversion() {
    let dir = tempfile::tempdir().unwrap();
    let source = source_state();
    let path = temp_path(&dir, "w.safetensors");
    candle_core::safetensors::save(&source.iter().cloned().collect(), &path).unwrap();
    let (varmap, _) = new_model("resnet8", 10, 99, &Device::Cpu).unwrap();
    load_weights(&varmap, &path).unwrap();
    assert_same_state(&model_state(&varmap), &source);

    // f64 weights are converted to the model's f32.
    let as_f64: std::collections::HashMap<String, Tensor> =
        source.iter().map(|(n, t)| (n.clone(), t.to_dtype(DType::F64).unwrap())).collect();
    let path64 = temp_path(&dir, "w64.safetensors");
    candle_core::safetensors::save(&as_f64, &path64).unwrap();
    let (varmap, _) = new_model("resnet8", 10, 99, &Device::Cpu).unwrap();
    load_weights(&varmap, &path64).unwrap();
    assert_same_state(&model_state(&varmap), &source);
}

#[test]
fn strided_views_and_shared_storages_are_rebuilt() {
    // A (2, 3) tensor stored transposed (stride (1, 2)), one at an offset inside a view of a
    // shared storage, and a contiguous one: the legacy reader must gather them correctly.
    let dir = tempfile::tempdir().unwrap();
    let data: Vec<f32> = (0..12).map(|v| v as f32).collect();
    let main = Py::OrderedDict(vec![
        (s("transposed"), pickle::tensor("FloatStorage", "1", 12, None, 0, &[2, 3], &[1, 2])),
        (s("offset"), pickle::tensor("FloatStorage", "1", 12, Some((4, 8)), 2, &[2, 2], &[2, 1])),
        (s("whole"), pickle::tensor("FloatStorage", "1", 12, None, 0, &[12], &[1])),
    ]);
    let path = temp_path(&dir, "views.th");
    write_legacy(&path, &main, &[f32_storage("1", &data)]);
    let tensors: BTreeMap<String, Tensor> = read_checkpoint(&path).unwrap().into_iter().collect();
    assert_eq!(
        tensors["transposed"].to_vec2::<f32>().unwrap(),
        vec![vec![0.0, 2.0, 4.0], vec![1.0, 3.0, 5.0]]
    );
    // view starts at 4, tensor offset 2 -> elements 6,7 and 8,9.
    assert_eq!(tensors["offset"].to_vec2::<f32>().unwrap(), vec![vec![6.0, 7.0], vec![8.0, 9.0]]);
    assert_eq!(tensors["whole"].to_vec1::<f32>().unwrap(), data);
}

#[test]
fn wrong_architecture_names_every_missing_unexpected_and_misshaped_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let path = temp_path(&dir, "resnet8.safetensors");
    candle_core::safetensors::save(&source_state().into_iter().collect(), &path).unwrap();

    let (varmap, _) = new_model("resnet14", 10, 0, &Device::Cpu).unwrap();
    let err = load_weights(&varmap, &path).unwrap_err();
    let msg = err.to_string();
    match &err {
        ModelError::Mismatch { path: p, report } => {
            assert_eq!(p, &path);
            // resnet14 has a second block per stage: 3 x (2 convs + 2 BNs x 4 tensors).
            assert_eq!(report.missing.len(), 3 * 10, "{msg}");
            assert!(report.unexpected.is_empty() && report.shape_mismatches.is_empty());
        }
        other => panic!("expected a mismatch, got {other}"),
    }
    assert!(msg.contains(&path.display().to_string()), "{msg}");
    assert!(msg.contains("layer1.1.conv1.weight") && msg.contains("layer3.1.bn2.running_var"), "{msg}");

    let (varmap, _) = new_model("resnet8", 100, 0, &Device::Cpu).unwrap();
    let msg = load_weights(&varmap, &path).unwrap_err().to_string();
    assert!(msg.contains("linear.weight expected [100, 64], found [10, 64]"), "{msg}");

    // Option-A resnet8 weights into option-B resnet8x4: everything is named.
    let (varmap, _) = new_model("resnet8x4", 10, 0, &Device::Cpu).unwrap();
    let msg = load_weights(&varmap, &path).unwrap_err().to_string();
    assert!(msg.contains("missing") && msg.contains("fc.weight"), "{msg}");
    assert!(msg.contains("unexpected") && msg.contains("linear.weight"), "{msg}");
    assert!(msg.contains("conv1.weight expected [32, 3, 3, 3], found [16, 3, 3, 3]"), "{msg}");
}

#[test]
fn non_checkpoints_and_truncated_files_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let (varmap, _) = new_model("resnet8", 10, 0, &Device::Cpu).unwrap();

    let junk = temp_path(&dir, "junk.bin");
    std::fs::write(&junk, b"this is not a checkpoint at all").unwrap();
    let msg = load_weights(&varmap, &junk).unwrap_err().to_string();
    assert!(msg.contains("junk.bin") && msg.contains("unrecognised format"), "{msg}");

    let missing = temp_path(&dir, "nope.th");
    let msg = load_weights(&varmap, &missing).unwrap_err().to_string();
    assert!(msg.contains("nope.th"), "{msg}");

    // A legacy file cut inside its storage data.
    let source = source_state();
    let (entries, storages) = state_dict_objects(&source, "");
    let full = temp_path(&dir, "full.th");
    write_legacy(&full, &Py::OrderedDict(entries), &storages);
    let bytes = std::fs::read(&full).unwrap();
    for cut in [20, bytes.len() / 3, bytes.len() - 5] {
        let truncated = temp_path(&dir, &format!("cut{cut}.th"));
        std::fs::write(&truncated, &bytes[..cut]).unwrap();
        let msg = load_weights(&varmap, &truncated).unwrap_err().to_string();
        assert!(msg.contains(&format!("cut{cut}.th")), "{msg}");
    }

    // A pickled object without tensors.
    let empty = temp_path(&dir, "empty.th");
    write_legacy(&empty, &Py::Dict(vec![(s("epoch"), Py::Int(3))]), &[]);
    let msg = load_weights(&varmap, &empty).unwrap_err().to_string();
    assert!(msg.contains("no tensors found") && msg.contains("epoch"), "{msg}");
}

/// A trained-looking state of an option-B architecture (running statistics moved).
fn option_b_state(arch: &str) -> (Vec<(String, Tensor)>, Tensor, Tensor) {
    let (varmap, model) = new_model(arch, 100, 3, &Device::Cpu).unwrap();
    let x = Tensor::randn(0.5f32, 2.0, (4, 3, 32, 32), &Device::Cpu).unwrap();
    model.forward(&x, Mode::Train).unwrap();
    let logits = model.forward(&x, Mode::Eval).unwrap().logits;
    (model_state(&varmap), x, logits)
}

#[test]
fn option_b_checkpoints_load_from_every_format() {
    let dir = tempfile::tempdir().unwrap();
    for arch in ["resnet20b", "resnet20b-stem-bias"] {
        let (source, x, logits) = option_b_state(arch);
        assert_eq!(source.iter().any(|(n, _)| n == "conv1.bias"), arch.ends_with("-stem-bias"), "{arch}");
        assert!(source.iter().any(|(n, _)| n == "layer3.0.downsample.1.running_var"));

        let (entries, storages) = state_dict_objects(&source, "module.");
        let legacy = temp_path(&dir, &format!("{arch}.th"));
        write_legacy(&legacy, &Py::OrderedDict(entries), &storages);
        let (entries, storages) = state_dict_objects(&source, "");
        let zip = temp_path(&dir, &format!("{arch}.pth"));
        write_zip(&zip, &Py::OrderedDict(entries), &storages);
        let (entries, storages) = state_dict_objects(&source, "module.");
        let zip_prefixed = temp_path(&dir, &format!("{arch}-dp.pth"));
        write_zip(&zip_prefixed, &Py::OrderedDict(entries), &storages);
        let st = temp_path(&dir, &format!("{arch}.safetensors"));
        candle_core::safetensors::save(&source.iter().cloned().collect(), &st).unwrap();

        for path in [legacy, zip, zip_prefixed, st] {
            let (varmap, model) = new_model(arch, 100, 99, &Device::Cpu).unwrap();
            load_weights(&varmap, &path).unwrap();
            assert_same_state(&model_state(&varmap), &source);
            let diff = (model.forward(&x, Mode::Eval).unwrap().logits - &logits)
                .unwrap()
                .abs()
                .unwrap()
                .flatten_all()
                .unwrap()
                .max(0)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert_eq!(diff, 0.0, "{arch} from {}", path.display());
        }
    }
}

#[test]
fn option_b_mismatches_name_the_layout_of_file_and_model() {
    let dir = tempfile::tempdir().unwrap();
    let (biased, _, _) = option_b_state("resnet20b-stem-bias");
    let biased_path = temp_path(&dir, "biased.safetensors");
    candle_core::safetensors::save(&biased.into_iter().collect(), &biased_path).unwrap();

    // A biased stem into the bias-free arch: only conv1.bias is in the way.
    let (varmap, _) = new_model("resnet20b", 100, 0, &Device::Cpu).unwrap();
    let err = load_weights(&varmap, &biased_path).unwrap_err();
    let msg = err.to_string();
    let ModelError::Mismatch { report, .. } = &err else { panic!("{msg}") };
    assert_eq!(report.unexpected, vec!["conv1.bias".to_string()], "{msg}");
    assert!(report.missing.is_empty() && report.shape_mismatches.is_empty(), "{msg}");
    assert!(msg.contains("the file looks like an option-B torchvision-style ResNet-20"), "{msg}");
    assert!(msg.contains("with bias") && msg.contains("kd-bench arch `resnet20b-stem-bias`"), "{msg}");
    assert!(msg.contains("the model is") && msg.contains("arch `resnet20b`"), "{msg}");
    assert!(!msg.contains("outputs, the recipe wants"), "same class count: {msg}");

    // The other way round: conv1.bias is missing.
    let (source, _, _) = option_b_state("resnet20b");
    let plain_path = temp_path(&dir, "plain.safetensors");
    candle_core::safetensors::save(&source.into_iter().collect(), &plain_path).unwrap();
    let (varmap, _) = new_model("resnet20b-stem-bias", 100, 0, &Device::Cpu).unwrap();
    let msg = load_weights(&varmap, &plain_path).unwrap_err().to_string();
    assert!(msg.contains("1 missing tensor(s): conv1.bias"), "{msg}");
    assert!(msg.contains("the file looks like") && msg.contains("arch `resnet20b`"), "{msg}");

    // akamaster option-A weights (resnet8, 10 classes) into resnet20b: layout and class count.
    let akamaster = temp_path(&dir, "resnet8.safetensors");
    candle_core::safetensors::save(&source_state().into_iter().collect(), &akamaster).unwrap();
    let (varmap, _) = new_model("resnet20b", 100, 0, &Device::Cpu).unwrap();
    let msg = load_weights(&varmap, &akamaster).unwrap_err().to_string();
    assert!(msg.contains("the file looks like an akamaster option-A ResNet-8"), "{msg}");
    assert!(msg.contains("kd-bench arch `resnet8`") && msg.contains("for 10 classes"), "{msg}");
    assert!(msg.contains("linear has 10 outputs, the recipe wants 100"), "{msg}");
    assert!(msg.contains("layer2.0.downsample.0.weight") && msg.contains("linear.weight"), "{msg}");

    // Not a ResNet at all: the tensors are listed, no layout is claimed.
    let other = temp_path(&dir, "other.safetensors");
    let t = Tensor::zeros((4, 4), DType::F32, &Device::Cpu).unwrap();
    candle_core::safetensors::save(&[("encoder.weight".to_string(), t)].into_iter().collect(), &other)
        .unwrap();
    let msg = load_weights(&varmap, &other).unwrap_err().to_string();
    assert!(msg.contains("unexpected") && msg.contains("encoder.weight"), "{msg}");
    assert!(!msg.contains("the file looks like"), "{msg}");
}
