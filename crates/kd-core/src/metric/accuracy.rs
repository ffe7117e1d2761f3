//! Accuracy (`accuracy`) of the arg-max predictions, and the arg-max the GLUE metrics share.

use candle_core::{DType, Result, Tensor};

use super::{class_ids, Metric, MetricAccumulator};

/// The predicted class of every row of `(n, classes)` logits: the first highest score (a later
/// class must score strictly higher to win, so ties go to the lowest index; a NaN never wins
/// unless it is in column 0).
pub fn argmax(logits: &Tensor) -> Result<Vec<u32>> {
    let rows = logits.to_dtype(DType::F32)?.to_vec2::<f32>()?;
    Ok(rows
        .iter()
        .map(|o| {
            let mut best = 0;
            for (k, v) in o.iter().enumerate() {
                if *v > o[best] {
                    best = k;
                }
            }
            best as u32
        })
        .collect())
}

/// `accuracy`: the percentage (0–100) of examples whose [`argmax`] prediction is the label; 0
/// on an empty split. (It equals `top1` except where a NaN is among the logits: top-k ranks NaN
/// highest.)
#[derive(Debug, Clone, Copy)]
pub struct Accuracy;

impl Metric for Accuracy {
    fn name(&self) -> &str {
        "accuracy"
    }

    fn accumulator(&self) -> Box<dyn MetricAccumulator> {
        Box::new(AccuracyAccumulator::default())
    }
}

#[derive(Default)]
struct AccuracyAccumulator {
    correct: usize,
    total: usize,
}

impl MetricAccumulator for AccuracyAccumulator {
    fn update(&mut self, outputs: &Tensor, targets: &Tensor) -> Result<()> {
        let pred = argmax(outputs)?;
        let gold = class_ids("accuracy", targets, pred.len())?;
        self.correct += pred.iter().zip(&gold).filter(|(p, g)| p == g).count();
        self.total += gold.len();
        Ok(())
    }

    fn value(&self) -> Option<f64> {
        Some(100.0 * self.correct as f64 / self.total.max(1) as f64)
    }
}
