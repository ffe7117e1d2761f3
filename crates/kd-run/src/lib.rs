//! kd-run: the run pipeline, as a library. Recipe → task (image, text or paired data) →
//! teachers (pretrained, imported, or trained once and cached by hash) → trainee from the
//! method registry → trainer → rows, history, final model.
//!
//! The only crate that knows every method crate, dataset kind and model. The `kd` binary
//! parses arguments and draws progress ([`progress::install`]); it trains nothing itself.

pub mod build_env;
pub mod cross_modal;
pub mod data;
pub mod env;
pub mod fetch;
pub mod glue;
pub mod memory;
pub mod models;
pub mod progress;
pub mod record;
pub mod registry;
pub mod reproduce;
pub mod stage_cache;
pub mod teacher;
pub mod teacher_train;
pub mod train;
pub mod validation;
