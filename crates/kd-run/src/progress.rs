//! How the pipeline reports progress. The binary installs a [`Progress`] that draws bars;
//! without one (libraries, tests) training runs silent. The per-run and per-epoch summary
//! lines are the binary's too: they come through the observer.

use std::sync::OnceLock;

use kd_core::trainer::{Silent, TrainObserver};
use kd_core::EvalEntry;

/// Makes the observers of trainings and the counters of long loops.
pub trait Progress: Send + Sync {
    /// The observer of one training (or, with no epochs, one evaluation) labelled `label`
    /// (e.g. `kd s0`), reporting `entries`.
    fn training(&self, label: &str, entries: Vec<EvalEntry>) -> Box<dyn TrainObserver>;
    /// A counter of `len` items (e.g. soft labels filled), cleared when dropped.
    fn counter(&self, len: u64, label: &str) -> Box<dyn Counter>;
}

/// A running count for a loop that is not a training.
pub trait Counter {
    fn inc(&self, n: u64);
}

static PROGRESS: OnceLock<Box<dyn Progress>> = OnceLock::new();

/// Installs the process's progress reporter; the first one wins (returns whether it was this).
pub fn install(p: Box<dyn Progress>) -> bool {
    PROGRESS.set(p).is_ok()
}

/// The observer for a training labelled `label`.
pub fn training(label: &str, entries: Vec<EvalEntry>) -> Box<dyn TrainObserver> {
    match PROGRESS.get() {
        Some(p) => p.training(label, entries),
        None => Box::new(Silent),
    }
}

/// `entries` reported under `role`: a stage that trains a model as a plain student before it
/// serves as something else (a recipe-trained teacher, a TAKD assistant).
pub fn as_role(mut entries: Vec<EvalEntry>, role: &str) -> Vec<EvalEntry> {
    for e in &mut entries {
        e.role = role.to_string();
    }
    entries
}

struct NoCount;
impl Counter for NoCount {
    fn inc(&self, _n: u64) {}
}

/// A counter of `len` items labelled `label`.
pub fn counter(len: u64, label: &str) -> Box<dyn Counter> {
    match PROGRESS.get() {
        Some(p) => p.counter(len, label),
        None => Box::new(NoCount),
    }
}
