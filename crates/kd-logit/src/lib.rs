//! Modern logit distillation losses, one file per method, each checked value-for-value and
//! gradient-for-gradient against its reference implementation (`tests/reference.rs`, fixtures
//! produced by `tests/fixtures/make_fixtures.py` running the reference repositories' own code):
//!
//! - [`dkd`]: Decoupled KD (Zhao et al., CVPR 2022), `megvii-research/mdistiller`.
//! - [`standardize`]: logit standardisation (Sun et al., CVPR 2024),
//!   `sunshangquan/logit-standardization-KD`, for vanilla KD and (as an option) DKD and MLKD.
//! - [`dist`]: DIST (Huang et al., NeurIPS 2022), `hunto/DIST_KD` → `hunto/image_classification_sota`.
//! - [`ctkd`]: Curriculum Temperature KD (Li et al., AAAI 2023), `zhengli97/CTKD`.
//! - [`mlkd`]: Multi-Level Logit Distillation (Jin et al., CVPR 2023),
//!   `Jin-Ying/Multi-Level-Logit-Distillation`.
//!
//! Every loss takes `(batch, classes)` logits and `(batch,)` integer labels; teacher logits are
//! treated as constants. Epochs are counted from 1, as the reference trainers count them
//! ([`method::reference_epoch`] converts the trainer's 0-based epoch).
//!
//! DKD, DIST, CTKD and vanilla KD with logit standardisation run as methods `dkd`, `dist`,
//! `ctkd` and `kd-logit-stand` ([`factory`]): one [`LogitMethod`] around each loss's
//! [`LogitObjective`]. MLKD runs as method `mlkd`: [`MlkdMethod`] feeds its loss the weak and
//! the strong (RandAugment) view of each image, which its factory asks the pipeline for.

pub mod ctkd;
pub mod dist;
pub mod dkd;
pub mod factory;
pub mod method;
pub mod mlkd;
pub mod mlkd_method;
pub mod standardize;

pub use ctkd::{
    CtkdConfig, CtkdLoss, CtkdLosses, CtkdObjective, GlobalTemperature, GradientReversal, LambdaSchedule,
};
pub use dist::{DistConfig, DistLoss, DistLosses};
pub use dkd::{DkdConfig, DkdLoss, DkdLosses};
pub use method::{LogitMethod, LogitObjective};
pub use mlkd::{MlkdConfig, MlkdLoss, MlkdLosses, View};
pub use mlkd_method::MlkdMethod;
pub use standardize::{standardize, StandardizedKdConfig, StandardizedKdLoss, StandardizedKdLosses};

use candle_core::{DType, Result, Tensor};
use serde::de::DeserializeOwned;

/// A `[distill]` table that does not describe a valid configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("[distill] for method `{method}`: key `{key}`: {message}")]
    Key { method: &'static str, key: String, message: String },
    #[error("[distill] for method `{method}`: {message}")]
    Table { method: &'static str, message: String },
}

/// Deserialises a `[distill]` table into a config whose fields all have defaults, naming the
/// offending key on failure (toml's own message names unknown keys but not ill-typed ones).
pub(crate) fn parse_table<T: DeserializeOwned>(
    method: &'static str,
    table: &toml::Table,
) -> std::result::Result<T, ConfigError> {
    let whole = toml::Value::Table(table.clone()).try_into::<T>();
    let err = match whole {
        Ok(cfg) => return Ok(cfg),
        Err(e) => e,
    };
    // Every field has a default, so a table holding one key alone parses unless that key is bad.
    for (key, value) in table {
        let mut one = toml::Table::new();
        one.insert(key.clone(), value.clone());
        if let Err(e) = toml::Value::Table(one).try_into::<T>() {
            return Err(ConfigError::Key { method, key: key.clone(), message: e.message().to_string() });
        }
    }
    Err(ConfigError::Table { method, message: err.message().to_string() })
}

/// `Ok` when `ok`, else an error naming `key`.
pub(crate) fn require(
    ok: bool,
    method: &'static str,
    key: &'static str,
    requirement: &str,
    value: impl std::fmt::Display,
) -> std::result::Result<(), ConfigError> {
    if ok {
        Ok(())
    } else {
        Err(ConfigError::Key {
            method,
            key: key.into(),
            message: format!("must be {requirement}, got {value}"),
        })
    }
}

pub(crate) fn non_negative(
    method: &'static str,
    key: &'static str,
    v: f64,
) -> std::result::Result<(), ConfigError> {
    require(v.is_finite() && v >= 0.0, method, key, "finite and >= 0", v)
}

pub(crate) fn positive(
    method: &'static str,
    key: &'static str,
    v: f64,
) -> std::result::Result<(), ConfigError> {
    require(v.is_finite() && v > 0.0, method, key, "finite and > 0", v)
}

/// PyTorch's `F.kl_div(input, target, reduction="sum")`: `Σ target·(log target − input)` with
/// `0·log 0 = 0`, where `input` holds log-probabilities. `target` is not detached (CTKD's
/// temperature receives gradient through the teacher's softmax).
pub(crate) fn kl_div_sum(log_input: &Tensor, target: &Tensor) -> Result<Tensor> {
    // Clamping inside the log keeps 0·log 0 at 0 (where target is 0 the product is 0); the
    // floor is the smallest normal-ish value the dtype holds, so it never turns into 0 itself.
    let floor = match target.dtype() {
        DType::F64 => 1e-300,
        DType::F16 => 1e-7,
        _ => 1e-30,
    };
    let log_target = target.clamp(floor, 1.0)?.log()?;
    (target * (log_target - log_input)?)?.sum_all()
}

/// `(batch, classes)` one-hot mask of `labels`, in `dtype`.
pub(crate) fn one_hot(labels: &Tensor, classes: usize, dtype: DType) -> Result<Tensor> {
    let classes = Tensor::arange(0u32, classes as u32, labels.device())?.unsqueeze(0)?;
    labels.to_dtype(DType::U32)?.unsqueeze(1)?.broadcast_eq(&classes)?.to_dtype(dtype)
}

/// Softmax over classes of `logits / temperature`, differentiable (candle-nn's fused
/// `softmax_last_dim` has no backward pass and would silently cut the student's gradient).
pub(crate) fn softmax_t(logits: &Tensor, temperature: f64) -> Result<Tensor> {
    softmax(&(logits / temperature)?)
}

/// Differentiable softmax over the last dimension.
pub(crate) fn softmax(xs: &Tensor) -> Result<Tensor> {
    candle_nn::ops::softmax(xs, candle_core::D::Minus1)
}

/// Checks that student and teacher logits agree in shape and are `(batch, classes)`.
pub(crate) fn check_pair(student: &Tensor, teacher: &Tensor) -> Result<(usize, usize)> {
    let (b, c) = student.dims2()?;
    if teacher.dims() != student.dims() {
        candle_core::bail!(
            "student logits {:?} and teacher logits {:?} differ in shape",
            student.dims(),
            teacher.dims()
        )
    }
    Ok((b, c))
}
