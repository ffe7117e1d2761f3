//! Building models from recipe names, loading weights, optimisers over their trainable
//! variables, and saving a run's final model with what `kd eval` needs to use it.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use candle_core::{Device, Var};
use kd_core::checkpoint;
use kd_core::optim::{AdamW, Optimizer, Sgd};
use kd_core::recipe::{OptimizerSpec, Recipe};

pub use kd_core::registry::BuiltModel;

/// A freshly initialised model for 32×32 inputs; `seed` fixes the initial weights.
pub fn build(arch: &str, num_classes: usize, seed: u64, device: &Device) -> Result<BuiltModel> {
    build_with(arch, num_classes, seed, kd_models::BuildOptions::default(), device)
}

/// The build options that fit a dataset's images (e.g. a stride-2 stem for 64×64).
pub fn input_options(dataset: &kd_data::ImageDataset) -> kd_models::BuildOptions {
    kd_models::BuildOptions { input_size: dataset.height.max(dataset.width) }
}

/// [`build`] for other input sizes.
pub fn build_with(
    arch: &str,
    num_classes: usize,
    seed: u64,
    options: kd_models::BuildOptions,
    device: &Device,
) -> Result<BuiltModel> {
    let (varmap, model) = kd_models::new_model_with(arch, num_classes, seed, options, device)
        .with_context(|| format!("building model `{arch}`"))?;
    let mut state: Vec<(String, Var)> =
        varmap.data().lock().expect("varmap lock").iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    state.sort_by(|a, b| a.0.cmp(&b.0));
    let trainable = state.iter().filter(|(n, _)| kd_models::is_trainable(n)).cloned().collect();
    Ok(BuiltModel { arch: arch.to_string(), num_classes, model: Arc::from(model), varmap, state, trainable })
}

/// Loads weights (safetensors, PyTorch zip or legacy `.th`) into the model, checking names and
/// shapes.
pub fn load_weights(m: &BuiltModel, path: &Path) -> Result<()> {
    kd_models::load_weights(&m.varmap, path)
        .with_context(|| format!("loading {} weights from {}", m.arch, path.display()))?;
    Ok(())
}

/// The recipe's optimiser over `trainable` (one or several models' variables; every variable
/// keeps its own momentum / moment state, so peers trained together keep separate state).
pub fn optimizer(spec: &OptimizerSpec, trainable: Vec<(String, Var)>) -> Result<Box<dyn Optimizer>> {
    Ok(match spec {
        OptimizerSpec::Sgd { lr, momentum, nesterov, weight_decay } => {
            Box::new(Sgd::new(trainable, *lr, *momentum, *nesterov, *weight_decay)?)
        }
        OptimizerSpec::Adamw { lr, beta1, beta2, eps, weight_decay } => {
            Box::new(AdamW::new(trainable, *lr, *beta1, *beta2, *eps, *weight_decay)?)
        }
    })
}

const META_ARCH: &str = "kd.arch";
const META_CLASSES: &str = "kd.num_classes";
const META_MEAN: &str = "kd.normalize.mean";
const META_STD: &str = "kd.normalize.std";

/// Saves the model's variables atomically with its architecture, class count, normalisation and
/// configuration hash in the safetensors metadata.
pub fn save_final(m: &BuiltModel, path: &Path, recipe: &Recipe, config_hash: &str) -> Result<()> {
    let tensors: Vec<(String, candle_core::Tensor)> =
        m.state.iter().map(|(n, v)| (n.clone(), v.as_tensor().clone())).collect();
    let mut meta = BTreeMap::new();
    meta.insert(META_ARCH.to_string(), m.arch.clone());
    meta.insert(META_CLASSES.to_string(), m.num_classes.to_string());
    meta.insert(META_MEAN.to_string(), serde_json::to_string(&recipe.data.normalize.mean)?);
    meta.insert(META_STD.to_string(), serde_json::to_string(&recipe.data.normalize.std)?);
    meta.insert("kd.experiment".to_string(), recipe.experiment.name.clone());
    meta.insert("kd.config_hash".to_string(), config_hash.to_string());
    meta.insert("kd.dataset".to_string(), recipe.data.hub.clone());
    checkpoint::save_checkpoint(path, &tensors, &meta)?;
    Ok(())
}

/// What a saved model records about itself (all `None` for foreign weight files).
#[derive(Debug, Default)]
pub struct SavedModelInfo {
    pub arch: Option<String>,
    pub num_classes: Option<usize>,
    pub mean: Option<[f32; 3]>,
    pub std: Option<[f32; 3]>,
}

pub fn saved_model_info(path: &Path) -> Result<SavedModelInfo> {
    if !path.exists() {
        anyhow::bail!("no checkpoint at {}", path.display());
    }
    if path.extension().is_none_or(|e| e != "safetensors") {
        return Ok(SavedModelInfo::default());
    }
    let (_, meta) = checkpoint::load_checkpoint(path)?;
    let triple = |k: &str| meta.get(k).and_then(|s| serde_json::from_str::<[f32; 3]>(s).ok());
    Ok(SavedModelInfo {
        arch: meta.get(META_ARCH).cloned(),
        num_classes: meta.get(META_CLASSES).and_then(|s| s.parse().ok()),
        mean: triple(META_MEAN),
        std: triple(META_STD),
    })
}
