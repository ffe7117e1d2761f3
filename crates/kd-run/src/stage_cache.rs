//! Models trained once and cached under the hash of what determines their weights: teachers
//! trained by a recipe, GLUE teachers fine-tuned here, the cross-modal image teacher and TAKD's
//! assistants. One place decides where the cached file and its resumable checkpoint lie, and
//! that a killed training resumes from the checkpoint while a finished one leaves only the file.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// A cached model `dir/<stem>.safetensors` and, while it trains, its checkpoint
/// `dir/<stem>.ckpt.safetensors` (a second invocation resumes from it).
#[derive(Debug, Clone)]
pub struct CachedModel {
    pub path: PathBuf,
    pub checkpoint: PathBuf,
}

impl CachedModel {
    pub fn new(dir: &Path, stem: &str) -> Self {
        Self {
            path: dir.join(format!("{stem}.safetensors")),
            checkpoint: dir.join(format!("{stem}.ckpt.safetensors")),
        }
    }

    /// Whether a finished training left the model here.
    pub fn is_cached(&self) -> bool {
        self.path.exists()
    }

    /// Trains it: `train(checkpoint)` trains (resuming from `checkpoint` when a killed run left
    /// one) and writes [`Self::path`]; then the checkpoint goes.
    pub fn train(&self, train: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        train(&self.checkpoint)?;
        if !self.path.exists() {
            bail!("training finished without writing {}", self.path.display());
        }
        // The model is in place; a checkpoint left behind would only cost disk.
        let _ = std::fs::remove_file(&self.checkpoint);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_finished_training_leaves_the_model_and_no_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let c = CachedModel::new(&dir.path().join("teachers"), "resnet56-abc");
        assert!(!c.is_cached());
        c.train(|ckpt| {
            std::fs::write(ckpt, b"epoch 1")?;
            std::fs::write(&c.path, b"weights")?;
            Ok(())
        })
        .unwrap();
        assert!(c.is_cached() && !c.checkpoint.exists());
        assert_eq!(c.path, dir.path().join("teachers/resnet56-abc.safetensors"));
    }

    #[test]
    fn a_failed_training_keeps_its_checkpoint_to_resume_from() {
        let dir = tempfile::tempdir().unwrap();
        let c = CachedModel::new(dir.path(), "k");
        let e = c
            .train(|ckpt| {
                std::fs::write(ckpt, b"epoch 1")?;
                bail!("killed")
            })
            .unwrap_err();
        assert!(e.to_string().contains("killed"));
        assert!(c.checkpoint.exists() && !c.is_cached());
        let e = c.train(|_| Ok(())).unwrap_err();
        assert!(e.to_string().contains("without writing"), "{e}");
    }
}
