//! Errors of kd-models. Each names the architecture, file or tensor it is about.

use std::fmt;
use std::path::PathBuf;

use crate::layout::LayoutGuess;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(transparent)]
    Candle(#[from] candle_core::Error),

    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("unknown architecture `{name}`; known architectures: {}", known.join(", "))]
    UnknownArch { name: String, known: Vec<String> },

    #[error("invalid model configuration for `{arch}`: {message}")]
    Config { arch: String, message: String },

    /// The file could not be read as a checkpoint (format, pickle, storage data).
    #[error("checkpoint {path}: {message}")]
    Checkpoint { path: PathBuf, message: String },

    /// The file was read but its tensors do not fit the model.
    #[error("checkpoint {path} does not fit the model: {report}")]
    Mismatch { path: PathBuf, report: Box<MismatchReport> },
}

pub type Result<T> = std::result::Result<T, ModelError>;

impl ModelError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        ModelError::Io { path: path.into(), source }
    }

    pub fn checkpoint(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        ModelError::Checkpoint { path: path.into(), message: message.into() }
    }
}

/// A tensor present in both model and checkpoint, with different shapes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShapeMismatch {
    pub name: String,
    pub expected: Vec<usize>,
    pub found: Vec<usize>,
}

/// Every way a checkpoint's tensors differ from the model's, sorted by name, and what the two
/// layouts look like (see [`LayoutGuess`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MismatchReport {
    /// In the model, not in the checkpoint.
    pub missing: Vec<String>,
    /// In the checkpoint, not in the model.
    pub unexpected: Vec<String>,
    pub shape_mismatches: Vec<ShapeMismatch>,
    /// The checkpoint's layout, when its names are a BasicBlock ResNet's (boxed: errors stay
    /// small).
    pub file_layout: Option<Box<LayoutGuess>>,
    /// The model's layout, read from its variables the same way.
    pub model_layout: Option<Box<LayoutGuess>>,
}

impl MismatchReport {
    pub fn is_empty(&self) -> bool {
        self.missing.is_empty() && self.unexpected.is_empty() && self.shape_mismatches.is_empty()
    }

    /// `(file's head name, file's classes, model's classes)` when both have a classifier head
    /// and the class counts differ.
    pub fn class_count_mismatch(&self) -> Option<(&str, usize, usize)> {
        let (file, model) = (self.file_layout.as_ref()?, self.model_layout.as_ref()?);
        (file.num_classes != model.num_classes).then_some((
            file.head.as_str(),
            file.num_classes,
            model.num_classes,
        ))
    }
}

impl fmt::Display for MismatchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if !self.missing.is_empty() {
            parts.push(format!("{} missing tensor(s): {}", self.missing.len(), self.missing.join(", ")));
        }
        if !self.unexpected.is_empty() {
            parts.push(format!(
                "{} unexpected tensor(s) (not in the model): {}",
                self.unexpected.len(),
                self.unexpected.join(", ")
            ));
        }
        if !self.shape_mismatches.is_empty() {
            let items: Vec<String> = self
                .shape_mismatches
                .iter()
                .map(|m| format!("{} expected {:?}, found {:?}", m.name, m.expected, m.found))
                .collect();
            parts.push(format!("{} tensor(s) with the wrong shape: {}", items.len(), items.join(", ")));
        }
        match (&self.file_layout, &self.model_layout) {
            (Some(file), Some(model)) if file == model => {
                parts.push(format!("file and model are both {file}"));
            }
            (file, model) => {
                if let Some(file) = file {
                    parts.push(format!("the file looks like {file}"));
                }
                if let Some(model) = model {
                    parts.push(format!("the model is {model}"));
                }
            }
        }
        if let Some((head, found, wanted)) = self.class_count_mismatch() {
            parts.push(format!("{head} has {found} outputs, the recipe wants {wanted}"));
        }
        write!(f, "{}", parts.join("; "))
    }
}
