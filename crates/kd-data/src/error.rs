//! Errors of kd-data; each names the repo, revision, file, column or row at fault.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// Offline, and the cache lacks what was asked for.
    #[error(
        "dataset {repo} @ {revision}: {what} is not in the hub cache {cache}, and HF_HUB_OFFLINE=1 forbids the \
         network. Get it by running once with network (unset HF_HUB_OFFLINE), or `huggingface-cli download \
         --repo-type dataset {repo} --revision {revision}`, or point HF_HOME at a cache that has it"
    )]
    NotCached { repo: String, revision: String, what: String, cache: PathBuf },

    #[error("dataset {repo} @ {revision}: {message}")]
    Hub { repo: String, revision: String, message: String },

    #[error("dataset {repo} @ {revision}: no split `{split}`; it has: {available}")]
    NoSplit { repo: String, revision: String, split: String, available: String },

    #[error("{file}: no column `{column}`; the columns are: {available}")]
    MissingColumn { file: PathBuf, column: String, available: String },

    #[error("{file}: column `{column}`: {message}")]
    BadColumn { file: PathBuf, column: String, message: String },

    #[error("{file}: row {row}: {message}")]
    BadRow { file: PathBuf, row: usize, message: String },

    #[error("{file}: {source}")]
    Parquet {
        file: PathBuf,
        #[source]
        source: parquet::errors::ParquetError,
    },

    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error(transparent)]
    Candle(#[from] candle_core::Error),

    #[error("{0}")]
    Invalid(String),
}
