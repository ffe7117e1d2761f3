//! kd-core: the engine every kd-bench method stands on.
//!
//! It knows nothing of pixels, tokens, datasets or architectures: models implement
//! [`model::Classifier`], methods implement [`method::Method`], data arrives as [`batch::Batch`].

pub mod batch;
pub mod checkpoint;
pub mod error;
pub mod hash;
pub mod history;
pub mod init;
pub mod losses;
pub mod method;
pub mod metric;
pub mod model;
pub mod optim;
pub mod plain;
pub mod recipe;
pub mod recipe_hash;
pub mod registry;
pub mod results;
pub mod schedule;
pub mod seed;
pub mod soft_labels;
pub mod student_kd;
pub mod teacher;
pub mod trainer;

pub use batch::Batch;
pub use error::{Error, Result};
pub use method::{EvalEntry, Losses, Method, StepContext};
pub use model::{Classifier, Mode, ModelOutput};
