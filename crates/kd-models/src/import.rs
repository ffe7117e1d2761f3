//! Loading weights into a model's `VarMap` from safetensors, PyTorch zip-format `.pth`, or the
//! legacy (pre-1.6) `torch.save` format, with every name and shape checked.
//!
//! Names are normalised the way PyTorch checkpoints need: `module.` prefixes (from
//! `nn.DataParallel`) are stripped, a nested state dict (`{'state_dict': ...}`) is picked
//! automatically, and `num_batches_tracked` buffers are skipped (the models here do not keep
//! them). Extra tensors in the file are an error, like PyTorch's `strict=True`: a checkpoint
//! that carries more than the model is usually a different architecture.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::{Tensor, Var};
use candle_nn::VarMap;

use crate::error::{MismatchReport, ModelError, Result, ShapeMismatch};
use crate::layout::LayoutGuess;
use crate::{legacy_torch, torch_zip};

/// The on-disk formats [`read_checkpoint`] understands (detected from the content, not the
/// file name).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckpointFormat {
    Safetensors,
    /// `torch.save` since 1.6: a zip archive with `data.pkl` and `data/<key>` entries.
    TorchZip,
    /// `torch.save` before 1.6 (or `_use_new_zipfile_serialization=False`).
    TorchLegacy,
}

/// Detects the format from the first bytes of `bytes`.
pub fn detect_format(bytes: &[u8]) -> Option<CheckpointFormat> {
    if bytes.starts_with(b"PK\x03\x04") {
        return Some(CheckpointFormat::TorchZip);
    }
    if legacy_torch::is_legacy_torch(bytes) {
        return Some(CheckpointFormat::TorchLegacy);
    }
    // safetensors: u64 little-endian header length, then a JSON object.
    if bytes.len() >= 9 {
        let mut n = [0u8; 8];
        n.copy_from_slice(&bytes[..8]);
        let header_len = u64::from_le_bytes(n);
        if bytes[8] == b'{' && header_len <= (bytes.len() as u64).saturating_sub(8) {
            return Some(CheckpointFormat::Safetensors);
        }
    }
    None
}

/// The tensors of a checkpoint file on the CPU, names normalised (see the module docs), sorted
/// by name.
pub fn read_checkpoint(path: &Path) -> Result<Vec<(String, Tensor)>> {
    let bytes = std::fs::read(path).map_err(|e| ModelError::io(path, e))?;
    let format = detect_format(&bytes).ok_or_else(|| {
        ModelError::checkpoint(
            path,
            "unrecognised format (expected safetensors, a PyTorch zip .pth, or a legacy torch.save file)",
        )
    })?;
    let raw = match format {
        CheckpointFormat::Safetensors => {
            let map = candle_core::safetensors::load_buffer(&bytes, &crate::host_device())
                .map_err(|e| ModelError::checkpoint(path, format!("invalid safetensors: {e}")))?;
            map.into_iter().collect()
        }
        CheckpointFormat::TorchLegacy => legacy_torch::read_legacy_state_dict(&bytes)
            .map_err(|e| ModelError::checkpoint(path, format!("legacy torch.save: {e}")))?,
        CheckpointFormat::TorchZip => torch_zip::read_zip_state_dict(&bytes)
            .map_err(|e| ModelError::checkpoint(path, format!("PyTorch zip checkpoint: {e}")))?,
    };
    normalise_names(raw, path)
}

/// Strips `module.` prefixes, drops `num_batches_tracked`, rejects duplicates, sorts.
fn normalise_names(raw: Vec<(String, Tensor)>, path: &Path) -> Result<Vec<(String, Tensor)>> {
    let mut out: BTreeMap<String, Tensor> = BTreeMap::new();
    for (name, tensor) in raw {
        let mut stripped = name.as_str();
        while let Some(rest) = stripped.strip_prefix("module.") {
            stripped = rest;
        }
        if stripped.ends_with("num_batches_tracked") {
            continue;
        }
        if out.insert(stripped.to_string(), tensor).is_some() {
            return Err(ModelError::checkpoint(
                path,
                format!("two tensors are named `{stripped}` once `module.` prefixes are removed"),
            ));
        }
    }
    Ok(out.into_iter().collect())
}

/// Compares a checkpoint's tensors with the variables a model expects.
pub fn compare_with_model(
    expected: &BTreeMap<String, Vec<usize>>,
    found: &[(String, Tensor)],
) -> MismatchReport {
    let found_names: HashMap<&str, &Tensor> = found.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let mut report = MismatchReport::default();
    for (name, shape) in expected {
        match found_names.get(name.as_str()) {
            None => report.missing.push(name.clone()),
            Some(t) if t.dims() != shape.as_slice() => report.shape_mismatches.push(ShapeMismatch {
                name: name.clone(),
                expected: shape.clone(),
                found: t.dims().to_vec(),
            }),
            Some(_) => {}
        }
    }
    for (name, _) in found {
        if !expected.contains_key(name) {
            report.unexpected.push(name.clone());
        }
    }
    report.unexpected.sort();
    if !report.is_empty() {
        report.file_layout =
            LayoutGuess::from_shapes(found.iter().map(|(n, t)| (n.as_str(), t.dims()))).map(Box::new);
        report.model_layout =
            LayoutGuess::from_shapes(expected.iter().map(|(n, s)| (n.as_str(), s.as_slice()))).map(Box::new);
    }
    report
}

fn varmap_vars(varmap: &VarMap) -> Result<BTreeMap<String, Var>> {
    let vars = varmap
        .data()
        .lock()
        .map_err(|_| ModelError::Candle(candle_core::Error::Msg("VarMap lock poisoned".into())))?;
    Ok(vars.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
}

/// Loads `path` (any of the [`CheckpointFormat`]s) into the variables of `varmap`: every
/// variable must be in the file with its shape and the file must hold nothing else, otherwise
/// nothing is changed and the error names each missing, unexpected and mis-shaped tensor.
/// Values are converted to each variable's dtype and device.
pub fn load_weights(varmap: &VarMap, path: &Path) -> Result<()> {
    let tensors = read_checkpoint(path)?;
    assign_checked(varmap, &tensors, path)
}

/// Like [`load_weights`] for tensors already in memory; `source` names them in errors.
pub fn assign_checked(varmap: &VarMap, tensors: &[(String, Tensor)], source: &Path) -> Result<()> {
    let vars = varmap_vars(varmap)?;
    let expected: BTreeMap<String, Vec<usize>> =
        vars.iter().map(|(k, v)| (k.clone(), v.dims().to_vec())).collect();
    let report = compare_with_model(&expected, tensors);
    if !report.is_empty() {
        return Err(ModelError::Mismatch { path: source.to_path_buf(), report: Box::new(report) });
    }
    // Convert everything before setting anything, so a failure leaves the model unchanged.
    let mut converted = Vec::with_capacity(tensors.len());
    for (name, tensor) in tensors {
        let var = &vars[name];
        let value = tensor
            .to_dtype(var.dtype())
            .and_then(|t| t.to_device(var.device()))
            .map_err(|e| ModelError::checkpoint(source, format!("tensor `{name}`: {e}")))?;
        converted.push((var, value));
    }
    for ((var, value), (name, _)) in converted.into_iter().zip(tensors) {
        var.set(&value).map_err(|e| ModelError::checkpoint(source, format!("setting `{name}`: {e}")))?;
    }
    Ok(())
}
