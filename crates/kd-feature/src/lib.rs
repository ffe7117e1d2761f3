//! Feature-based distillation methods, one file each.

pub mod crd;
pub mod memory_bank;
pub mod review_kd;
