//! Parsing of a method's `[distill]` table: unknown keys refused (serde), values checked by name.

use serde::de::DeserializeOwned;

use crate::FeatureError;

/// Deserialises `table` into the method's config; serde's message names an unknown or mistyped key.
pub(crate) fn parse<T: DeserializeOwned>(
    method: &'static str,
    table: &toml::Table,
) -> Result<T, FeatureError> {
    toml::Value::Table(table.clone())
        .try_into()
        .map_err(|e: toml::de::Error| FeatureError::config(method, e.message().to_string()))
}

/// A loss weight: finite and not negative.
pub(crate) fn weight(method: &'static str, key: &str, value: f64) -> Result<(), FeatureError> {
    if !value.is_finite() || value < 0.0 {
        return Err(FeatureError::config(
            method,
            format!("`{key}` must be a finite weight >= 0, got {value}"),
        ));
    }
    Ok(())
}

/// A strictly positive finite number.
pub(crate) fn positive(method: &'static str, key: &str, value: f64) -> Result<(), FeatureError> {
    if !value.is_finite() || value <= 0.0 {
        return Err(FeatureError::config(method, format!("`{key}` must be finite and > 0, got {value}")));
    }
    Ok(())
}
