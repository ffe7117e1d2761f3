//! The `kd` command's building blocks, as a library so integration tests can reach them:
//! argument parsing, progress bars and printing. The run pipeline is `kd_run`, the analysis
//! `kd_analysis`.

pub mod allocator;
pub mod bench;
pub mod cli;
pub mod eval;
pub mod list;
pub mod progress;
pub mod reproduce;
pub mod sweep;
pub mod threads;
