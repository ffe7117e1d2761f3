//! Progress bars for training and evaluation (hidden automatically when stderr is no terminal;
//! the per-epoch summary lines are printed either way).

use indicatif::{ProgressBar, ProgressStyle};
use kd_core::trainer::{EpochRecord, TrainObserver};
use kd_core::{EvalEntry, StepContext};

pub fn bar(len: u64, prefix: &str) -> ProgressBar {
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template("{prefix:>14} [{bar:30}] {pos}/{len} {msg} ({elapsed}, eta {eta})")
            .expect("static template")
            .progress_chars("=> "),
    );
    pb.set_prefix(prefix.to_string());
    pb
}

/// Draws one bar per epoch and prints a summary line after it.
pub struct EpochBars {
    label: String,
    entries: Vec<EvalEntry>,
    bar: Option<ProgressBar>,
}

impl EpochBars {
    pub fn new(label: impl Into<String>, entries: Vec<EvalEntry>) -> Self {
        Self { label: label.into(), entries, bar: None }
    }
}

impl TrainObserver for EpochBars {
    fn on_resume(&mut self, completed: usize) {
        eprintln!("{}: resuming after epoch {completed} from its checkpoint", self.label);
    }

    fn on_epoch_start(&mut self, epoch: usize, epochs: usize, steps: usize) {
        self.bar = Some(bar(steps as u64, &format!("{} {epoch}/{epochs}", self.label)));
    }

    fn on_step(&mut self, _ctx: &StepContext, loss: f32) {
        if let Some(b) = &self.bar {
            b.set_message(format!("loss {loss:.4}"));
            b.inc(1);
        }
    }

    fn on_eval_start(&mut self, steps: usize) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
        self.bar = Some(bar(steps as u64, &format!("{} eval", self.label)));
    }

    fn on_eval_step(&mut self) {
        if let Some(b) = &self.bar {
            b.inc(1);
        }
    }

    fn on_epoch_end(&mut self, r: &EpochRecord) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
        let eps = r.train_examples as f64 / r.train_seconds.max(1e-9);
        eprintln!(
            "{} epoch {:>3}  lr {:.4}  loss {:.4}  {}  ({:.1}s train, {:.0} ex/s, {:.1}s eval)",
            self.label,
            r.epoch,
            r.lr,
            r.train_loss,
            scores_line(&self.entries, &r.eval),
            r.train_seconds,
            eps,
            r.eval_seconds
        );
    }
}

/// Every recorded metric, each followed by its value per entry:
/// `top1 student 71.20, teacher 93.30  top5 student 98.10, teacher 99.80` or
/// `mcc student 0.2144  accuracy student 56.25`. Percentages (top-k, accuracy, F1) with 2
/// decimals, correlations with 4.
fn scores_line(entries: &[EvalEntry], eval: &[kd_core::trainer::EvalScores]) -> String {
    let names: Vec<&str> = eval.first().map(|s| s.names().collect()).unwrap_or_default();
    let groups: Vec<String> = names
        .iter()
        .filter_map(|&m| {
            let percent = m.starts_with("top") || m == "accuracy" || m == "f1";
            let per_entry: Vec<String> = entries
                .iter()
                .zip(eval)
                .filter_map(|(e, s)| {
                    let v = s.get(m)?;
                    Some(if percent { format!("{} {v:.2}", e.role) } else { format!("{} {v:.4}", e.role) })
                })
                .collect();
            // A metric no entry has a value for (top-5 of a 2-class model) is left out.
            (!per_entry.is_empty()).then(|| format!("{m} {}", per_entry.join(", ")))
        })
        .collect();
    groups.join("  ")
}

impl Drop for EpochBars {
    /// Clears a bar left by an evaluation outside training.
    fn drop(&mut self) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
    }
}

/// The pipeline's progress as indicatif bars ([`kd_run::progress::install`]).
pub struct Bars;

impl kd_run::progress::Progress for Bars {
    fn training(&self, label: &str, entries: Vec<EvalEntry>) -> Box<dyn TrainObserver> {
        Box::new(EpochBars::new(label, entries))
    }

    fn counter(&self, len: u64, label: &str) -> Box<dyn kd_run::progress::Counter> {
        Box::new(Counter(bar(len, label)))
    }
}

struct Counter(ProgressBar);

impl kd_run::progress::Counter for Counter {
    fn inc(&self, n: u64) {
        self.0.inc(n)
    }
}

impl Drop for Counter {
    fn drop(&mut self) {
        self.0.finish_and_clear()
    }
}
