//! Errors of kd-core. Each names the file, key or tensor it is about.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Candle(#[from] candle_core::Error),

    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("recipe {path}: {message}")]
    Recipe { path: PathBuf, message: String },

    #[error("checkpoint {path}: {message}")]
    Checkpoint { path: PathBuf, message: String },

    #[error("results {path}: {message}")]
    Results { path: PathBuf, message: String },

    #[error("loss became {value} at epoch {epoch}, step {step}; the last good checkpoint is kept")]
    NonFiniteLoss { value: f32, epoch: usize, step: usize },

    #[error("{0}")]
    Msg(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }
}
