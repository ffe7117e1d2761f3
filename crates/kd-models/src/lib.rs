//! kd-bench model zoo (CIFAR ResNets, ...) and checkpoint import (PyTorch `.th`/`.pth`,
//! safetensors).
//!
//! - [`build_classifier`] / [`new_model`]: a [`kd_core::Classifier`] from a recipe's
//!   architecture name; [`new_model`] initialises it deterministically from a seed.
//! - [`load_weights`]: any of safetensors, PyTorch zip `.pth`, or legacy `torch.save` into a
//!   model's `VarMap`, with names and shapes checked.
//! - [`is_trainable`] / [`trainable_vars`]: which variables an optimiser may touch (batch-norm
//!   running statistics are stored in the `VarMap` but never trained nor weight-decayed).
//! - [`Kernels`]: which ops a model's layers run, kd-kernels' fast CPU ops or candle's generic
//!   ones (the path a GPU takes). A model built on the CPU takes `Fast`, on another device
//!   `Generic` ([`Kernels::for_device`]); [`new_model_with_kernels`] /
//!   [`build_classifier_with_kernels`] choose explicitly, e.g. to test the generic path on the
//!   CPU against the fast one (tests/generic_path.rs).

pub mod bert;
mod channel_bias;
mod cifar_common;
pub mod depthwise;
pub mod error;
pub mod import;
pub mod init;
pub mod late_fusion;
pub mod layers;
pub mod layout;
mod legacy_torch;
pub mod mobilenetv2;
pub mod multi_exit;
pub mod one_resnet;
pub mod resnet18_cifar;
pub mod resnet_cifar;
pub mod shufflenetv2;
pub mod small_cnn;
pub mod text_cnn;
mod torch_pickle;
mod torch_zip;
pub mod vgg;
pub mod wrn;

use std::path::Path;

use candle_core::{DType, Device, Var};
use candle_nn::{VarBuilder, VarMap};
use kd_core::Classifier;

pub use error::{MismatchReport, ModelError, Result, ShapeMismatch};
pub use import::{load_weights, read_checkpoint, CheckpointFormat};
pub use init::seeded_var_builder;
pub use kd_kernels::Kernels;
pub use layers::{build_with_kernels, is_trainable, BatchNorm2d, Conv2d, NON_TRAINABLE_SUFFIXES};
pub use layout::{LayoutGuess, ShortcutKind};
pub use multi_exit::{new_multi_exit_model, MultiExitNet, MultiExitOutput};
pub use resnet18_cifar::ResNet18Cifar;
pub use resnet_cifar::{CifarResNet, Config as ResNetConfig, Shortcut, Style as ResNetStyle};

/// The device checkpoint files are decoded on and initial values are drawn on, before they are
/// copied to the device of the variables they fill (the CPU): the one place kd-models names a
/// device. Everything else runs on the device it is given (a `VarBuilder`'s, a variable's, an
/// input's), and [`read_checkpoint`] returns its tensors here.
pub fn host_device() -> Device {
    Device::Cpu
}

/// Every architecture name [`build_classifier`] accepts.
pub fn known_archs() -> Vec<&'static str> {
    let mut names = resnet_cifar::ARCH_NAMES.to_vec();
    names.extend(wrn::ARCH_NAMES);
    names.extend(vgg::ARCH_NAMES);
    names.extend(mobilenetv2::ARCH_NAMES);
    names.extend(shufflenetv2::ARCH_NAMES);
    names
}

/// Options that adapt an architecture to its data without changing its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BuildOptions {
    /// Side of the (square) input images. CIFAR ResNets use a stride-2 stem for inputs of 64
    /// pixels or more (Tiny-ImageNet), so the stages see the resolutions of 32×32 CIFAR.
    pub input_size: usize,
}

impl Default for BuildOptions {
    fn default() -> Self {
        Self { input_size: 32 }
    }
}

/// Builds the classifier `arch` for `num_classes` classes with the weights `vb` provides
/// (a `VarMap` to train, or read-only tensors for a teacher). Unknown names list the known ones.
pub fn build_classifier(arch: &str, num_classes: usize, vb: VarBuilder) -> Result<Box<dyn Classifier>> {
    build_classifier_with(arch, num_classes, BuildOptions::default(), vb)
}

/// [`build_classifier`] for inputs other than 32×32.
pub fn build_classifier_with(
    arch: &str,
    num_classes: usize,
    options: BuildOptions,
    vb: VarBuilder,
) -> Result<Box<dyn Classifier>> {
    // New families go here, each matched on its own names.
    if resnet_cifar::ARCH_NAMES.contains(&arch) {
        let stem_stride = if options.input_size >= 64 { 2 } else { 1 };
        let config = ResNetConfig::from_arch_name(arch, num_classes)?.with_stem_stride(stem_stride);
        return Ok(Box::new(CifarResNet::new(&config, vb)?));
    }
    if resnet18_cifar::ARCH_NAMES.contains(&arch) {
        let stem_stride = if options.input_size >= 64 { 2 } else { 1 };
        let config = resnet18_cifar::Config::from_arch_name(arch, num_classes)?.with_stem_stride(stem_stride);
        return Ok(Box::new(ResNet18Cifar::new(&config, vb)?));
    }
    if wrn::ARCH_NAMES.contains(&arch) {
        let stem_stride = if options.input_size >= 64 { 2 } else { 1 };
        let config = wrn::Config::from_arch_name(arch, num_classes)?.with_stem_stride(stem_stride);
        return Ok(Box::new(wrn::WideResNet::new(&config, vb)?));
    }
    if vgg::ARCH_NAMES.contains(&arch) {
        // The input size is read at run time (RepDistiller's extra pool for 64-pixel inputs).
        return Ok(Box::new(vgg::Vgg::new(&vgg::Config::from_arch_name(arch, num_classes)?, vb)?));
    }
    if mobilenetv2::ARCH_NAMES.contains(&arch) {
        let config = mobilenetv2::Config::from_arch_name(arch, num_classes)?;
        return Ok(Box::new(mobilenetv2::MobileNetV2::new(&config, vb)?));
    }
    if shufflenetv2::ARCH_NAMES.contains(&arch) {
        let config = shufflenetv2::Config::from_arch_name(arch, num_classes)?;
        return Ok(Box::new(shufflenetv2::ShuffleNetV2::new(&config, vb)?));
    }
    if let Some(backbone) = arch.strip_suffix(multi_exit::ARCH_SUFFIX) {
        // Multi-exit backbones are the ResNets `stage_count` knows: the newer families also
        // return their stem as a stage feature, which would become an exit of its own.
        if !backbone.ends_with(multi_exit::ARCH_SUFFIX) {
            multi_exit::stage_count(backbone)?;
        }
        return Ok(Box::new(MultiExitNet::new(backbone, num_classes, options, vb)?));
    }
    Err(ModelError::UnknownArch {
        name: arch.to_string(),
        known: known_archs().iter().map(|s| s.to_string()).collect(),
    })
}

/// [`build_classifier_with`] whose layers run `kernels` whatever the device of `vb` (see
/// [`Kernels`]; [`build_classifier_with`] takes [`Kernels::for_device`]).
pub fn build_classifier_with_kernels(
    arch: &str,
    num_classes: usize,
    options: BuildOptions,
    kernels: Kernels,
    vb: VarBuilder,
) -> Result<Box<dyn Classifier>> {
    build_with_kernels(kernels, || build_classifier_with(arch, num_classes, options, vb))
}

/// A freshly initialised f32 model and the `VarMap` holding all its variables (running
/// statistics included). The initial weights depend only on `arch`, `num_classes` and `seed`.
pub fn new_model(
    arch: &str,
    num_classes: usize,
    seed: u64,
    device: &Device,
) -> Result<(VarMap, Box<dyn Classifier>)> {
    new_model_with(arch, num_classes, seed, BuildOptions::default(), device)
}

/// [`new_model`] for inputs other than 32×32.
pub fn new_model_with(
    arch: &str,
    num_classes: usize,
    seed: u64,
    options: BuildOptions,
    device: &Device,
) -> Result<(VarMap, Box<dyn Classifier>)> {
    let varmap = VarMap::new();
    let vb = seeded_var_builder(&varmap, seed, DType::F32, device);
    let model = build_classifier_with(arch, num_classes, options, vb)?;
    Ok((varmap, model))
}

/// [`new_model_with`] whose layers run `kernels` (see [`Kernels`]): the same variables, and
/// the same initial values, as [`new_model_with`] for the same seed.
pub fn new_model_with_kernels(
    arch: &str,
    num_classes: usize,
    seed: u64,
    options: BuildOptions,
    kernels: Kernels,
    device: &Device,
) -> Result<(VarMap, Box<dyn Classifier>)> {
    build_with_kernels(kernels, || new_model_with(arch, num_classes, seed, options, device))
}

/// A model with weights from a checkpoint file (any format [`load_weights`] reads), checked
/// against the architecture.
pub fn load_model(
    arch: &str,
    num_classes: usize,
    path: &Path,
    device: &Device,
) -> Result<(VarMap, Box<dyn Classifier>)> {
    let (varmap, model) = new_model(arch, num_classes, 0, device)?;
    load_weights(&varmap, path)?;
    Ok((varmap, model))
}

/// A frozen model for a teacher: weights from `path` (checked like [`load_weights`]) held as
/// plain tensors, so forward passes build no gradient graph.
pub fn load_frozen_model(
    arch: &str,
    num_classes: usize,
    options: BuildOptions,
    path: &Path,
    device: &Device,
) -> Result<Box<dyn Classifier>> {
    // The seeded model only supplies the expected names and shapes.
    let (varmap, _) = new_model_with(arch, num_classes, 0, options, device)?;
    let tensors = read_checkpoint(path)?;
    import::assign_checked(&varmap, &tensors, path)?;
    let frozen = varmap
        .data()
        .lock()
        .map_err(|_| ModelError::Candle(candle_core::Error::Msg("VarMap lock poisoned".into())))?
        .iter()
        .map(|(k, v)| Ok((k.clone(), v.as_tensor().detach().copy()?)))
        .collect::<candle_core::Result<std::collections::HashMap<_, _>>>()?;
    let vb = VarBuilder::from_tensors(frozen, DType::F32, device);
    build_classifier_with(arch, num_classes, options, vb)
}

/// The variables an optimiser should update, sorted by name: every variable of `varmap` except
/// running statistics (see [`is_trainable`]).
pub fn trainable_vars(varmap: &VarMap) -> Vec<(String, Var)> {
    // A poisoned lock only means another thread panicked while holding it; the map is intact.
    let data = varmap.data().lock().unwrap_or_else(|e| e.into_inner());
    let mut vars: Vec<(String, Var)> =
        data.iter().filter(|(name, _)| is_trainable(name)).map(|(k, v)| (k.clone(), v.clone())).collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    vars
}
