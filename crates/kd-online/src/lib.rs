//! Online knowledge distillation: no pretrained teacher, the networks teach each other while
//! they train.
//!
//! - [`dml`]: deep mutual learning (Zhang, Xiang, Hospedales & Lu, CVPR 2018): `K ≥ 2` peers,
//!   possibly of different architectures, each minimising
//!   `CE(y, p_k) + 1/(K−1)·Σ_{j≠k} T²·KL(p_j ‖ p_k)` with the other peers' predictions detached.
//! - [`one`]: ONE, the on-the-fly native ensemble (Lan, Zhu & Gong, NeurIPS 2018): shared
//!   low-level stages, `m` branches, a gate whose weighted sum of the branch logits is the
//!   ensemble teacher, distilled into every branch:
//!   `Σ_i CE(y, z_i) + CE(y, z_e) + T²·Σ_i KL(softmax(z_e/T) ‖ softmax(z_i/T))`, `z_e` detached
//!   in the KL.
//!
//! KL divergences follow kd-core's convention (summed over classes, averaged over the batch).

pub mod dml;
pub mod factory;
pub mod one;

pub use dml::{dml_loss, DeepMutualLearning, DmlConfig, DmlTerms};
pub use one::{new_one_model, one_loss, OnTheFlyNativeEnsemble, OneConfig, OneTerms};

#[derive(Debug, thiserror::Error)]
pub enum OnlineError {
    #[error("[distill] for method `{method}`: {message}")]
    Config { method: &'static str, message: String },
    #[error("peers must share one label space: {0}")]
    LabelSpace(String),
    #[error(transparent)]
    Model(#[from] kd_models::ModelError),
}

/// Parses a recipe's `[distill]` table into `T`, rejecting unknown keys with their name.
fn parse_table<T: serde::de::DeserializeOwned>(
    method: &'static str,
    table: &toml::Table,
) -> Result<T, OnlineError> {
    toml::Value::Table(table.clone())
        .try_into()
        .map_err(|e: toml::de::Error| OnlineError::Config { method, message: e.message().to_string() })
}
