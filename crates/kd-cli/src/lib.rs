//! The `kd` command's building blocks, as a library so integration tests can reach them.
//! The only crate that wires data, models and methods together.

pub mod allocator;
pub mod assistants;
pub mod bench;
pub mod cite;
pub mod compare;
pub mod cross_modal;
pub mod data;
pub mod env;
pub mod eval;
pub mod fetch;
pub mod glue;
pub mod heatmap;
pub mod list;
pub mod methods;
pub mod models;
pub mod progress;
pub mod report;
pub mod reproduce;
pub mod stats;
pub mod sweep;
pub mod teacher;
pub mod teacher_train;
pub mod threads;
pub mod validation;
