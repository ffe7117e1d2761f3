//! Reader for the legacy (pre-1.6, non-zip) `torch.save` format, which candle cannot read.
//!
//! The file is a sequence of pickles followed by raw storage data:
//! 1. the magic number `0x1950a86a20f9469cfc6c` (a pickled int),
//! 2. the protocol version `1001`,
//! 3. a `sys_info` dict (`little_endian`, type sizes),
//! 4. the saved object, whose tensors are `torch._utils._rebuild_tensor_v2(storage, offset,
//!    size, stride, ...)` calls and whose storages are persistent ids
//!    `('storage', storage_type, key, location, numel, view_metadata)`,
//! 5. the list of storage keys,
//! 6. for each key in that order: the element count as a little-endian `u64`, then the raw
//!    little-endian data.
//!
//! Pickles are decoded with candle's `pickle::Stack`; the magic number is checked by hand
//! because it does not fit candle's 64-bit `LONG1` decoding.

use std::collections::HashMap;
use std::io::Cursor;

use candle_core::pickle::{Object, Stack};
use candle_core::{DType, Tensor};

use crate::torch_pickle::{select_state_dict, tensor_call};

/// `PROTO 2`, `LONG1` with 10 bytes, the magic number little endian, `STOP`.
const MAGIC_PICKLE: [u8; 15] =
    [0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19, 0x2e];
const PROTOCOL_VERSION: i64 = 1001;

/// Whether `bytes` (the start of a file) look like a legacy `torch.save` stream.
pub fn is_legacy_torch(bytes: &[u8]) -> bool {
    bytes.starts_with(&MAGIC_PICKLE)
}

/// The tensors of the state dict in a legacy file (names as stored), on the CPU.
/// Errors are plain messages; the caller adds the file name.
pub fn read_legacy_state_dict(bytes: &[u8]) -> Result<Vec<(String, Tensor)>, String> {
    if !is_legacy_torch(bytes) {
        return Err("not a legacy torch.save file (magic number missing)".into());
    }
    let mut cursor = Cursor::new(bytes);
    cursor.set_position(MAGIC_PICKLE.len() as u64);

    let protocol = read_pickle(&mut cursor, "protocol version")?;
    match protocol {
        Object::Int(v) if v as i64 == PROTOCOL_VERSION => {}
        Object::Long(v) if v == PROTOCOL_VERSION => {}
        other => return Err(format!("unsupported torch.save protocol version {other:?}")),
    }
    let sys_info = read_pickle(&mut cursor, "sys_info")?;
    check_little_endian(&sys_info)?;
    let main = read_pickle(&mut cursor, "saved object")?;
    let keys = read_pickle(&mut cursor, "storage key list")?;
    let keys = match keys {
        Object::List(keys) | Object::Tuple(keys) => keys
            .into_iter()
            .map(|k| String::try_from(k).map_err(|k| format!("storage key is not a string: {k:?}")))
            .collect::<Result<Vec<_>, _>>()?,
        other => return Err(format!("expected the list of storage keys, found {other:?}")),
    };

    let entries = select_state_dict(main)?;
    let mut tensors = Vec::with_capacity(entries.len());
    let mut storage_types: HashMap<String, DType> = HashMap::new();
    let mut pending = Vec::with_capacity(entries.len());
    for (name, value) in entries {
        let call = tensor_call(value).map_err(|e| format!("tensor `{name}`: {e}"))?;
        match storage_types.get(&call.storage.key) {
            Some(&dt) if dt != call.storage.dtype => {
                return Err(format!(
                    "storage {} is used with two dtypes ({dt:?} and {:?})",
                    call.storage.key, call.storage.dtype
                ))
            }
            _ => {
                storage_types.insert(call.storage.key.clone(), call.storage.dtype);
            }
        }
        pending.push((name, call));
    }

    // Storage records follow the key list in its order; their sizes depend on the dtype, known
    // only from the tensors that reference them.
    let mut storages: HashMap<String, (DType, &[u8])> = HashMap::new();
    let mut pos = cursor.position() as usize;
    for key in &keys {
        let dtype = match storage_types.get(key) {
            Some(&dt) => dt,
            None => return Err(format!("storage {key} is listed but no tensor uses it")),
        };
        let count_bytes =
            bytes.get(pos..pos + 8).ok_or_else(|| format!("file ends before the size of storage {key}"))?;
        let mut count = [0u8; 8];
        count.copy_from_slice(count_bytes);
        let numel = u64::from_le_bytes(count) as usize;
        pos += 8;
        let len = numel
            .checked_mul(dtype.size_in_bytes())
            .ok_or_else(|| format!("storage {key} is too large ({numel} elements)"))?;
        let data = bytes
            .get(pos..pos + len)
            .ok_or_else(|| format!("file ends inside storage {key} ({numel} elements of {dtype:?})"))?;
        storages.insert(key.clone(), (dtype, data));
        pos += len;
    }

    for (name, call) in pending {
        let (dtype, data) = storages
            .get(&call.storage.key)
            .ok_or_else(|| format!("tensor `{name}`: storage {} has no data", call.storage.key))?;
        let numel = data.len() / dtype.size_in_bytes();
        let flat = Tensor::from_raw_buffer(data, *dtype, &[numel], &crate::host_device())
            .map_err(|e| format!("tensor `{name}`: {e}"))?;
        let tensor = call.materialise(&flat).map_err(|e| format!("tensor `{name}`: {e}"))?;
        tensors.push((name, tensor));
    }
    Ok(tensors)
}

fn read_pickle(cursor: &mut Cursor<&[u8]>, what: &str) -> Result<Object, String> {
    let mut stack = Stack::empty();
    stack
        .read_loop(cursor)
        .map_err(|e| format!("cannot decode the {what} pickle at byte {}: {e}", cursor.position()))?;
    stack.finalize().map_err(|e| format!("empty {what} pickle: {e}"))
}

fn check_little_endian(sys_info: &Object) -> Result<(), String> {
    if let Object::Dict(entries) = sys_info {
        for (k, v) in entries {
            if k == &Object::Unicode("little_endian".into()) && v == &Object::Bool(false) {
                return Err("big-endian checkpoints are not supported".into());
            }
        }
    }
    Ok(())
}
