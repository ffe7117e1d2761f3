//! Safetensors checkpoints written atomically (temporary file in the same folder, fsync,
//! rename, fsync of the folder): a crash leaves the previous checkpoint or the new one, never a
//! torn file. Metadata (epoch, history, run id, ...) lives in the header's `__metadata__`.
//!
//! The same tensors and metadata always give the same bytes (tensors ordered by alignment then
//! name, metadata keys sorted), so a checkpoint's SHA-256 identifies its contents.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use candle_core::{Device, Tensor, Var};
use safetensors::View;
use serde::Serialize;

use crate::error::{Error, Result};

fn checkpoint_err(path: &Path, message: String) -> Error {
    Error::Checkpoint { path: path.to_path_buf(), message }
}

/// One tensor's entry in the safetensors header.
#[derive(Serialize)]
struct TensorEntry {
    dtype: safetensors::Dtype,
    shape: Vec<usize>,
    data_offsets: (usize, usize),
}

/// Distinguishes temporary files of concurrent saves within one process.
static SAVE_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Writes `tensors` and `metadata` to `path` atomically (creating its folder). Tensor names
/// must be unique.
pub fn save_checkpoint(
    path: &Path,
    tensors: &[(String, Tensor)],
    metadata: &BTreeMap<String, String>,
) -> Result<()> {
    let err = |m: String| checkpoint_err(path, m);
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;

    // Host copies, contiguous, widest dtype first (keeps every tensor aligned after the
    // 8-byte-aligned header, as the safetensors crate does), then by name.
    let mut host: Vec<(&str, Tensor)> = Vec::with_capacity(tensors.len());
    for (n, t) in tensors {
        host.push((n.as_str(), t.to_device(&Device::Cpu)?.contiguous()?));
    }
    host.sort_by(|a, b| b.1.dtype().size_in_bytes().cmp(&a.1.dtype().size_in_bytes()).then(a.0.cmp(b.0)));
    if let Some(w) = host.windows(2).find(|w| w[0].0 == w[1].0) {
        return Err(err(format!("tensor name `{}` appears twice", w[0].0)));
    }

    let header = header_bytes(&host, metadata).map_err(|e| err(format!("serialising the header: {e}")))?;
    let file_name = path.file_name().and_then(|n| n.to_str()).unwrap_or("checkpoint");
    let tmp = dir.join(format!(
        ".{file_name}.{}.{}.tmp",
        std::process::id(),
        SAVE_COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let written = write_file(&tmp, &header, &host);
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io(path, e)
    })?;
    // The rename is durable only once the folder entry is on disk. Best effort: some
    // filesystems refuse to fsync a folder, and the new file is complete either way.
    let _ = std::fs::File::open(dir).and_then(|d| d.sync_all());
    Ok(())
}

/// The length-prefixed, space-padded JSON header of a safetensors file.
fn header_bytes(host: &[(&str, Tensor)], metadata: &BTreeMap<String, String>) -> serde_json::Result<Vec<u8>> {
    let mut entries: Vec<String> = Vec::with_capacity(host.len() + 1);
    if !metadata.is_empty() {
        entries.push(format!("\"__metadata__\":{}", serde_json::to_string(metadata)?));
    }
    let mut offset = 0;
    for (name, t) in host {
        let len = t.elem_count() * t.dtype().size_in_bytes();
        let entry = TensorEntry {
            dtype: t.dtype().into(),
            shape: t.dims().to_vec(),
            data_offsets: (offset, offset + len),
        };
        entries.push(format!("{}:{}", serde_json::to_string(name)?, serde_json::to_string(&entry)?));
        offset += len;
    }
    let mut json = format!("{{{}}}", entries.join(",")).into_bytes();
    json.resize(json.len().next_multiple_of(8), b' ');
    let mut out = Vec::with_capacity(8 + json.len());
    out.extend_from_slice(&(json.len() as u64).to_le_bytes());
    out.extend_from_slice(&json);
    Ok(out)
}

fn write_file(tmp: &Path, header: &[u8], host: &[(&str, Tensor)]) -> Result<()> {
    let file = std::fs::File::create(tmp).map_err(|e| Error::io(tmp, e))?;
    let mut w = std::io::BufWriter::with_capacity(1 << 20, file);
    w.write_all(header).map_err(|e| Error::io(tmp, e))?;
    for (_, t) in host {
        // Host tensors, contiguous: the byte view cannot fail.
        w.write_all(&t.data()).map_err(|e| Error::io(tmp, e))?;
    }
    let file = w.into_inner().map_err(|e| Error::io(tmp, e.into_error()))?;
    file.sync_all().map_err(|e| Error::io(tmp, e))
}

/// Reads a checkpoint written by [`save_checkpoint`] (or any safetensors file) onto the CPU.
pub fn load_checkpoint(path: &Path) -> Result<(HashMap<String, Tensor>, BTreeMap<String, String>)> {
    let err = |m: String| checkpoint_err(path, m);
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| {
        err(format!(
            "not a valid safetensors file ({} bytes; cut short by a crash or a copy?): {e}",
            bytes.len()
        ))
    })?;
    let metadata: BTreeMap<String, String> = header
        .metadata()
        .as_ref()
        .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default();
    let tensors = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu)
        .map_err(|e| err(format!("reading tensors: {e}")))?;
    Ok((tensors, metadata))
}

/// Copies `tensors[prefix + name]` into every `(name, var)` of `vars`, converting to the
/// variable's dtype and device. Strict, like PyTorch's `load_state_dict`: a missing tensor, a
/// tensor of another shape, or a tensor under `prefix` that no variable takes is an error
/// listing all of them and naming `path`; on error no variable is changed.
pub fn load_into_vars(
    path: &Path,
    tensors: &HashMap<String, Tensor>,
    vars: &[(String, Var)],
    prefix: &str,
) -> Result<()> {
    let mut problems: Vec<String> = Vec::new();
    let mut matched: Vec<(&Var, &Tensor)> = Vec::with_capacity(vars.len());
    for (name, var) in vars {
        let key = format!("{prefix}{name}");
        match tensors.get(&key) {
            None => problems.push(format!("missing tensor `{key}`")),
            Some(t) if t.dims() != var.dims() => problems.push(format!(
                "tensor `{key}` has shape {:?}, the model needs {:?}",
                t.dims(),
                var.dims()
            )),
            Some(t) => matched.push((var, t)),
        }
    }
    let wanted: std::collections::HashSet<String> =
        vars.iter().map(|(n, _)| format!("{prefix}{n}")).collect();
    let mut unexpected: Vec<&String> =
        tensors.keys().filter(|k| k.starts_with(prefix) && !wanted.contains(*k)).collect();
    unexpected.sort();
    problems.extend(unexpected.into_iter().map(|k| format!("unexpected tensor `{k}`")));
    if !problems.is_empty() {
        let total = problems.len();
        let mut message = problems.into_iter().take(12).collect::<Vec<_>>().join("; ");
        if total > 12 {
            message.push_str(&format!("; and {} more", total - 12));
        }
        return Err(checkpoint_err(path, format!("does not fit the model: {message}")));
    }
    for (var, t) in matched {
        var.set(&t.to_device(var.device())?.to_dtype(var.dtype())?)?;
    }
    Ok(())
}

/// The path of the temporary files `save_checkpoint` may leave next to `path` if killed
/// mid-write (`.<name>.<pid>.<n>.tmp`); safe to delete when no save of `path` is running.
pub fn stray_temporaries(path: &Path) -> Vec<PathBuf> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else { return Vec::new() };
    let prefix = format!(".{name}.");
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".tmp"))
        })
        .collect();
    found.sort();
    found
}

/// Removes the temporary files (`.<name>.<pid>.<n>.tmp`) that saves in `dir` left when their
/// process was killed mid-write, and returns them. Only files of processes that no longer exist
/// go (Linux: no `/proc/<pid>`); elsewhere nothing is removed, since a live save cannot be told
/// from a dead one.
pub fn remove_dead_temporaries(dir: &Path) -> Vec<PathBuf> {
    if !Path::new("/proc/self").exists() {
        return Vec::new();
    }
    let pid_of = |name: &str| -> Option<u32> {
        let inner = name.strip_prefix('.')?.strip_suffix(".tmp")?;
        let mut parts = inner.rsplitn(3, '.');
        let _n: u64 = parts.next()?.parse().ok()?;
        parts.next()?.parse().ok()
    };
    let mut removed: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .and_then(pid_of)
                .is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists())
        })
        .filter(|p| std::fs::remove_file(p).is_ok())
        .collect();
    removed.sort();
    removed
}
