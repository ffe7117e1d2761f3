//! Progressive distillation: when the gap between teacher and student is large, distil in
//! steps.
//!
//! - [`takd`]: teacher-assistant chains (Mirzadeh et al., AAAI 2020). Each link is a vanilla-KD
//!   stage (kd-core's [`kd_core::losses::SoftTargetLoss`], shared with kd-vanilla) whose student becomes the next
//!   teacher. This crate holds the configuration, the cache key of an assistant (everything that
//!   determines its weights) and the method that reports the frozen assistants beside the
//!   student; `kd-cli` trains and caches the assistants.
//! - [`anneal`]: schedules over training for the temperature and the soft/hard weight of Hinton
//!   KD (kd-core's [`kd_core::schedule::ValueSchedule`]: constant, linear, cosine, step), and
//!   Annealing-KD (Jafari et al., EACL 2021): MSE to the teacher's logits scaled by an
//!   annealing factor rising to 1, then cross-entropy only.

pub mod anneal;
pub mod factory;
pub mod takd;

pub use anneal::{AnnealConfig, AnnealingKd, AnnealingKdConfig, FixedConfig, ScheduledKd};
pub use takd::{AssistantKey, TakdConfig, WithFrozen};

/// Errors of this crate's configurations; the message names the `[distill]` key.
#[derive(Debug, thiserror::Error)]
pub enum ProgressiveError {
    #[error("[distill] for method `{method}`: {message}")]
    Config { method: &'static str, message: String },
    #[error(
        "teacher `{teacher}` predicts {teacher_classes} classes but student `{student}` predicts {student_classes}: they must share one label space"
    )]
    LabelSpace { teacher: String, teacher_classes: usize, student: String, student_classes: usize },
}

pub(crate) fn config_err(method: &'static str, message: impl Into<String>) -> ProgressiveError {
    ProgressiveError::Config { method, message: message.into() }
}

/// Refuses a teacher and student with different label spaces.
pub(crate) fn check_label_space(
    teacher: &dyn kd_core::Classifier,
    student: &dyn kd_core::Classifier,
) -> Result<(), ProgressiveError> {
    if teacher.num_classes() != student.num_classes() {
        return Err(ProgressiveError::LabelSpace {
            teacher: teacher.arch().to_string(),
            teacher_classes: teacher.num_classes(),
            student: student.arch().to_string(),
            student_classes: student.num_classes(),
        });
    }
    Ok(())
}
