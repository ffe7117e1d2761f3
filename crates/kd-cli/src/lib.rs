//! The `kd` command's building blocks, as a library so integration tests can reach them.
//! The only crate that wires data, models and methods together.

pub mod bench;
pub mod cite;
pub mod compare;
pub mod data;
pub mod env;
pub mod eval;
pub mod fetch;
pub mod list;
pub mod methods;
pub mod models;
pub mod progress;
pub mod report;
pub mod reproduce;
pub mod stats;
pub mod teacher;
