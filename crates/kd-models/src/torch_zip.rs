//! Reader for the zip-format `torch.save` (PyTorch >= 1.6): `<root>/data.pkl` holds the saved
//! object, whose storages are persistent ids `('storage', storage_type, key, location, numel)`
//! with the raw little-endian data in `<root>/data/<key>`.
//!
//! candle has a reader for these files, but it needs the nesting key up front and cannot read
//! strided tensors; reading through the same interpretation as the legacy format gives both
//! formats the same behaviour.

use std::collections::HashMap;
use std::io::{Cursor, Read};

use candle_core::pickle::Stack;
use candle_core::Tensor;

use crate::torch_pickle::{select_state_dict, tensor_call};

/// The tensors of the state dict in a zip-format checkpoint (names as stored), on the CPU.
/// Errors are plain messages; the caller adds the file name.
pub fn read_zip_state_dict(bytes: &[u8]) -> Result<Vec<(String, Tensor)>, String> {
    let mut zip =
        zip::ZipArchive::new(Cursor::new(bytes)).map_err(|e| format!("invalid zip archive: {e}"))?;
    let pkl_name = zip
        .file_names()
        .filter(|n| n.ends_with("data.pkl"))
        .min_by_key(|n| n.len())
        .map(str::to_string)
        .ok_or("no data.pkl in the archive (not a torch.save file)")?;
    let root = pkl_name.trim_end_matches("data.pkl").to_string();
    let mut pkl = Vec::new();
    zip.by_name(&pkl_name)
        .and_then(|mut f| f.read_to_end(&mut pkl).map_err(Into::into))
        .map_err(|e| format!("reading {pkl_name}: {e}"))?;

    let mut stack = Stack::empty();
    stack
        .read_loop(&mut Cursor::new(pkl.as_slice()))
        .map_err(|e| format!("cannot decode {pkl_name}: {e}"))?;
    let main = stack.finalize().map_err(|e| format!("empty {pkl_name}: {e}"))?;

    let mut storages: HashMap<String, Tensor> = HashMap::new();
    let mut out = Vec::new();
    for (name, value) in select_state_dict(main)? {
        let call = tensor_call(value).map_err(|e| format!("tensor `{name}`: {e}"))?;
        let key = &call.storage.key;
        if !storages.contains_key(key) {
            let entry = format!("{root}data/{key}");
            let mut data = Vec::new();
            zip.by_name(&entry)
                .and_then(|mut f| f.read_to_end(&mut data).map_err(Into::into))
                .map_err(|e| format!("tensor `{name}`: reading {entry}: {e}"))?;
            let elem = call.storage.dtype.size_in_bytes();
            if !data.len().is_multiple_of(elem) {
                return Err(format!(
                    "{entry} holds {} bytes, not a whole number of {:?} elements",
                    data.len(),
                    call.storage.dtype
                ));
            }
            let flat = Tensor::from_raw_buffer(
                &data,
                call.storage.dtype,
                &[data.len() / elem],
                &crate::host_device(),
            )
            .map_err(|e| format!("tensor `{name}`: {e}"))?;
            storages.insert(key.clone(), flat);
        }
        let flat = &storages[key];
        if flat.dtype() != call.storage.dtype {
            return Err(format!(
                "storage {key} is used with two dtypes ({:?} and {:?})",
                flat.dtype(),
                call.storage.dtype
            ));
        }
        let tensor = call.materialise(flat).map_err(|e| format!("tensor `{name}`: {e}"))?;
        out.push((name, tensor));
    }
    Ok(out)
}
