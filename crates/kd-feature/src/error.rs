//! Errors of the feature losses: a bad `[distill]` table or features that cannot fit.

/// What can go wrong building a feature loss.
#[derive(Debug, thiserror::Error)]
pub enum FeatureError {
    /// The `[distill]` table is malformed; the message names the key.
    #[error("[distill] for method `{method}`: {message}")]
    Config { method: &'static str, message: String },
    /// Student and teacher features cannot be matched by this method.
    #[error("method `{method}`: {message}")]
    Shape { method: &'static str, message: String },
    /// The teacher cannot give what the method needs (features from a logits-only source,
    /// another label space).
    #[error("method `{method}`: {message}")]
    Teacher { method: &'static str, message: String },
    /// Creating the method's parameters failed.
    #[error("method `{method}`: {source}")]
    Candle {
        method: &'static str,
        #[source]
        source: candle_core::Error,
    },
}

impl FeatureError {
    pub(crate) fn config(method: &'static str, message: impl Into<String>) -> Self {
        Self::Config { method, message: message.into() }
    }

    pub(crate) fn shape(method: &'static str, message: impl Into<String>) -> Self {
        Self::Shape { method, message: message.into() }
    }

    pub(crate) fn teacher(method: &'static str, message: impl Into<String>) -> Self {
        Self::Teacher { method, message: message.into() }
    }

    /// Wraps a candle error raised while building `method`'s parameters.
    pub(crate) fn candle(method: &'static str) -> impl FnOnce(candle_core::Error) -> Self {
        move |source| Self::Candle { method, source }
    }
}
