//! The feature shapes a method is built for, read off one forward pass (as RepDistiller's
//! train_student.py does with a dummy batch before building regressors).

use kd_core::ModelOutput;

use crate::FeatureError;

/// `(channels, height, width)` of one stage output, batch left out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StageShape {
    pub channels: usize,
    pub height: usize,
    pub width: usize,
}

impl StageShape {
    pub fn new(channels: usize, height: usize, width: usize) -> Self {
        Self { channels, height, width }
    }
}

impl std::fmt::Display for StageShape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "({}, {}, {})", self.channels, self.height, self.width)
    }
}

/// What a model hands a feature method: its stage outputs, shallowest first, and the width of
/// its pooled embedding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeatureShapes {
    pub stages: Vec<StageShape>,
    pub embedding: usize,
}

impl FeatureShapes {
    /// The shapes of one forward pass's output; refuses stage features that are not `(B, C, H, W)`.
    pub fn of(output: &ModelOutput) -> Result<Self, FeatureError> {
        let stages = output
            .stage_features
            .iter()
            .enumerate()
            .map(|(i, f)| match f.dims() {
                &[_, c, h, w] => Ok(StageShape::new(c, h, w)),
                d => Err(FeatureError::shape(
                    "feature",
                    format!("stage {i} feature has shape {d:?}; feature methods need (batch, C, H, W)"),
                )),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let embedding = match output.embedding.dims() {
            &[_, d] => d,
            d => {
                return Err(FeatureError::shape(
                    "feature",
                    format!("embedding has shape {d:?}; feature methods need (batch, D)"),
                ))
            }
        };
        Ok(Self { stages, embedding })
    }
}

/// Student and teacher must have the same number of stages for methods that pair every stage
/// (RepDistiller zips the lists, silently dropping the extra stages of the deeper one; refusing
/// is safer).
pub(crate) fn same_stage_count(
    method: &'static str,
    student: &FeatureShapes,
    teacher: &FeatureShapes,
) -> Result<(), FeatureError> {
    if student.stages.is_empty() {
        return Err(FeatureError::shape(method, "the student exposes no stage features"));
    }
    if student.stages.len() != teacher.stages.len() {
        return Err(FeatureError::shape(
            method,
            format!(
                "pairs every stage, but the student has {} stages and the teacher {}",
                student.stages.len(),
                teacher.stages.len()
            ),
        ));
    }
    Ok(())
}
