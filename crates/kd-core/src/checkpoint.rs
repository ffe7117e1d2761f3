//! Safetensors checkpoints written atomically (temporary file in the same folder, fsync,
//! rename, fsync of the folder): a crash leaves the previous checkpoint or the new one, never a
//! torn file. Metadata (epoch, history, run id, ...) lives in the safetensors header.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::Path;

use candle_core::{Device, Tensor};

use crate::error::{Error, Result};

/// Writes `tensors` and `metadata` to `path` atomically.
pub fn save_checkpoint(
    path: &Path,
    tensors: &[(String, Tensor)],
    metadata: &BTreeMap<String, String>,
) -> Result<()> {
    let err = |m: String| Error::Checkpoint { path: path.to_path_buf(), message: m };
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    // Host copies, contiguous, in a stable order.
    let mut host: Vec<(String, Tensor)> = Vec::with_capacity(tensors.len());
    for (n, t) in tensors {
        host.push((n.clone(), t.to_device(&Device::Cpu)?.contiguous()?));
    }
    host.sort_by(|a, b| a.0.cmp(&b.0));
    let views: Vec<(&str, &Tensor)> = host.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let meta: HashMap<String, String> = metadata.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    let bytes =
        safetensors::tensor::serialize(views, Some(meta)).map_err(|e| err(format!("serialising: {e}")))?;
    let file_name = path.file_name().and_then(|n| n.to_str()).unwrap_or("checkpoint");
    let tmp = dir.join(format!(".{file_name}.{}.tmp", std::process::id()));
    {
        let mut f = std::fs::File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
        f.write_all(&bytes).map_err(|e| Error::io(&tmp, e))?;
        f.sync_all().map_err(|e| Error::io(&tmp, e))?;
    }
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io(path, e)
    })?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Reads a checkpoint written by [`save_checkpoint`] (or any safetensors file).
pub fn load_checkpoint(path: &Path) -> Result<(HashMap<String, Tensor>, BTreeMap<String, String>)> {
    let err = |m: String| Error::Checkpoint { path: path.to_path_buf(), message: m };
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes)
        .map_err(|e| err(format!("not a valid safetensors file: {e}")))?;
    let metadata: BTreeMap<String, String> = header
        .metadata()
        .as_ref()
        .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default();
    let tensors = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu)
        .map_err(|e| err(format!("reading tensors: {e}")))?;
    Ok((tensors, metadata))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_keeps_tensors_and_metadata() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a/b.safetensors");
        let t = Tensor::new(&[[1f32, 2.], [3., 4.]], &Device::Cpu).unwrap();
        let meta: BTreeMap<String, String> = [("epoch".to_string(), "3".to_string())].into();
        save_checkpoint(&p, &[("w".into(), t.clone())], &meta).unwrap();
        let (ts, m) = load_checkpoint(&p).unwrap();
        assert_eq!(ts["w"].to_vec2::<f32>().unwrap(), t.to_vec2::<f32>().unwrap());
        assert_eq!(m["epoch"], "3");
        // No temporary files are left behind.
        let left: Vec<_> = std::fs::read_dir(p.parent().unwrap()).unwrap().collect();
        assert_eq!(left.len(), 1);
    }

    #[test]
    fn a_torn_file_is_an_error_naming_the_path_and_saving_replaces_it_whole() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.safetensors");
        let t = Tensor::new(&[1f32, 2., 3.], &Device::Cpu).unwrap();
        save_checkpoint(&p, &[("w".into(), t.clone())], &BTreeMap::new()).unwrap();
        let bytes = std::fs::read(&p).unwrap();
        std::fs::write(&p, &bytes[..bytes.len() - 5]).unwrap();
        let e = load_checkpoint(&p).unwrap_err().to_string();
        assert!(e.contains("c.safetensors"), "{e}");
        // A stray temporary from a killed writer does not disturb the next save.
        std::fs::write(dir.path().join(".c.safetensors.1.tmp"), b"junk").unwrap();
        save_checkpoint(&p, &[("w".into(), t)], &BTreeMap::new()).unwrap();
        assert!(load_checkpoint(&p).is_ok());
    }
}
