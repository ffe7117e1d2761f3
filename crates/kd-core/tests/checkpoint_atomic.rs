//! Checkpoints: round trip of tensors and metadata, atomic replacement, deterministic bytes,
//! errors that name the file and the tensor.

use std::collections::{BTreeMap, HashMap};

use candle_core::{DType, Device, Tensor, Var};
use kd_core::checkpoint::{load_checkpoint, load_into_vars, save_checkpoint, stray_temporaries};

fn tensors() -> Vec<(String, Tensor)> {
    vec![
        (
            "model.conv.weight".into(),
            Tensor::arange(0f32, 24., &Device::Cpu).unwrap().reshape((2, 3, 2, 2)).unwrap(),
        ),
        ("model.bn.running_mean".into(), Tensor::new(&[0.5f32, -0.25], &Device::Cpu).unwrap()),
        ("optim.step.w".into(), Tensor::new(&[3f64], &Device::Cpu).unwrap()),
        ("labels".into(), Tensor::new(&[7u32, 1, 2], &Device::Cpu).unwrap()),
        (
            "half".into(),
            Tensor::new(&[1.5f32, 2.0, -3.0], &Device::Cpu).unwrap().to_dtype(DType::BF16).unwrap(),
        ),
    ]
}

fn metadata() -> BTreeMap<String, String> {
    [
        ("epoch", "3"),
        ("best_top1", "91.25"),
        ("history", r#"[{"epoch":0,"top1":10.5}]"#),
        ("config_hash", "abc"),
        ("rng", "state with \"quotes\" and unicode é"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

#[test]
fn round_trip_keeps_tensors_dtypes_and_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("run/a/ckpt.safetensors");
    save_checkpoint(&p, &tensors(), &metadata()).unwrap();
    let (loaded, meta) = load_checkpoint(&p).unwrap();
    assert_eq!(meta, metadata());
    assert_eq!(loaded.len(), tensors().len());
    for (name, t) in tensors() {
        let got = &loaded[&name];
        assert_eq!(got.dtype(), t.dtype(), "{name}");
        assert_eq!(got.dims(), t.dims(), "{name}");
        let (a, b) = (got.to_dtype(DType::F64).unwrap(), t.to_dtype(DType::F64).unwrap());
        assert_eq!(
            a.flatten_all().unwrap().to_vec1::<f64>().unwrap(),
            b.flatten_all().unwrap().to_vec1::<f64>().unwrap()
        );
    }
    // The official reader agrees on the layout.
    let bytes = std::fs::read(&p).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(st.tensor("labels").unwrap().shape(), &[3]);
    assert!(stray_temporaries(&p).is_empty(), "no temporary files left behind");
    assert_eq!(std::fs::read_dir(p.parent().unwrap()).unwrap().count(), 1);
}

#[test]
fn same_contents_give_the_same_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.safetensors"), dir.path().join("b.safetensors"));
    save_checkpoint(&a, &tensors(), &metadata()).unwrap();
    let mut reversed = tensors();
    reversed.reverse();
    save_checkpoint(&b, &reversed, &metadata()).unwrap();
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
}

#[test]
fn duplicate_names_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("d.safetensors");
    let mut ts = tensors();
    ts.push(ts[0].clone());
    let e = save_checkpoint(&p, &ts, &BTreeMap::new()).unwrap_err().to_string();
    assert!(e.contains("d.safetensors") && e.contains("model.conv.weight"), "{e}");
    assert!(!p.exists());
}

#[test]
fn a_crash_mid_write_never_leaves_a_half_written_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("c.safetensors");
    save_checkpoint(&p, &tensors(), &metadata()).unwrap();
    let before = std::fs::read(&p).unwrap();
    // A writer killed mid-save leaves only its temporary: the checkpoint is the old one, whole.
    let stray = dir.path().join(".c.safetensors.4242.0.tmp");
    std::fs::write(&stray, &before[..before.len() / 2]).unwrap();
    assert_eq!(stray_temporaries(&p), vec![stray.clone()]);
    let (loaded, meta) = load_checkpoint(&p).unwrap();
    assert_eq!(meta["epoch"], "3");
    assert_eq!(loaded.len(), 5);
    // The next save replaces the checkpoint whole and does not trip over the stray.
    let mut meta = metadata();
    meta.insert("epoch".into(), "4".into());
    save_checkpoint(&p, &tensors()[..2], &meta).unwrap();
    let (loaded, meta) = load_checkpoint(&p).unwrap();
    assert_eq!((loaded.len(), meta["epoch"].as_str()), (2, "4"));
    assert!(stray.exists(), "another writer's temporary is not ours to delete");
}

#[test]
fn corrupt_or_missing_files_are_errors_naming_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("torn.safetensors");
    save_checkpoint(&p, &tensors(), &metadata()).unwrap();
    let bytes = std::fs::read(&p).unwrap();
    std::fs::write(&p, &bytes[..bytes.len() - 5]).unwrap();
    let e = load_checkpoint(&p).unwrap_err().to_string();
    assert!(e.contains("torn.safetensors"), "{e}");
    std::fs::write(&p, b"not a checkpoint at all").unwrap();
    let e = load_checkpoint(&p).unwrap_err().to_string();
    assert!(e.contains("torn.safetensors") && e.contains("not a valid safetensors"), "{e}");
    let e = load_checkpoint(&dir.path().join("absent.safetensors")).unwrap_err().to_string();
    assert!(e.contains("absent.safetensors"), "{e}");
}

#[test]
fn load_into_vars_copies_and_checks_names_and_shapes() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("m.safetensors");
    save_checkpoint(&p, &tensors(), &metadata()).unwrap();
    let (loaded, _) = load_checkpoint(&p).unwrap();

    let conv = Var::zeros((2, 3, 2, 2), DType::F32, &Device::Cpu).unwrap();
    let mean = Var::zeros(2, DType::F32, &Device::Cpu).unwrap();
    let vars = vec![("conv.weight".to_string(), conv.clone()), ("bn.running_mean".to_string(), mean.clone())];
    load_into_vars(&p, &loaded, &vars, "model.").unwrap();
    assert_eq!(mean.as_tensor().to_vec1::<f32>().unwrap(), vec![0.5, -0.25]);
    assert_eq!(conv.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap()[23], 23.0);

    // Wrong shape, missing and unexpected tensors are all listed; nothing is changed.
    let small = Var::zeros((2, 3), DType::F32, &Device::Cpu).unwrap();
    let fresh = Var::zeros(2, DType::F32, &Device::Cpu).unwrap();
    let vars = vec![
        ("conv.weight".to_string(), small),
        ("bn.running_mean".to_string(), fresh.clone()),
        ("bn.running_var".to_string(), Var::zeros(2, DType::F32, &Device::Cpu).unwrap()),
    ];
    let mut extra: HashMap<String, Tensor> = loaded.clone();
    extra.insert("model.fc.weight".into(), Tensor::zeros(1, DType::F32, &Device::Cpu).unwrap());
    let e = load_into_vars(&p, &extra, &vars, "model.").unwrap_err().to_string();
    assert!(e.contains("m.safetensors"), "{e}");
    assert!(e.contains("`model.conv.weight` has shape [2, 3, 2, 2]") && e.contains("[2, 3]"), "{e}");
    assert!(e.contains("missing tensor `model.bn.running_var`"), "{e}");
    assert!(e.contains("unexpected tensor `model.fc.weight`"), "{e}");
    assert_eq!(fresh.as_tensor().to_vec1::<f32>().unwrap(), vec![0.0, 0.0], "all or nothing");
}

/// A save killed mid-write leaves `.<name>.<pid>.<n>.tmp`; the next run removes those of dead
/// processes and keeps a live process's (and anything else).
#[test]
fn temporaries_of_dead_processes_are_removed_and_live_ones_kept() {
    let dir = tempfile::tempdir().unwrap();
    let dead = dir.path().join(".kd-seed0.ckpt.safetensors.4294967.0.tmp");
    let live = dir.path().join(format!(".kd-seed0.ckpt.safetensors.{}.0.tmp", std::process::id()));
    let other = dir.path().join("notes.tmp");
    for p in [&dead, &live, &other] {
        std::fs::write(p, b"partial").unwrap();
    }
    let removed = kd_core::checkpoint::remove_dead_temporaries(dir.path());
    if cfg!(target_os = "linux") {
        assert_eq!(removed, vec![dead.clone()]);
        assert!(!dead.exists());
    }
    assert!(live.exists() && other.exists());
}
