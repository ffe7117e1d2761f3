//! Deterministic initialisation: kd-core's seeded `VarBuilder` backend (new variables drawn from
//! a ChaCha stream keyed by seed and variable name), shared with the method crates that own
//! parameters, so a model's initial weights depend only on the seed and the architecture.

pub use kd_core::init::seeded_var_builder;
