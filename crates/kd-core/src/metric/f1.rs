//! F1 of the positive class (`f1`, MRPC's and QQP's metric) of the arg-max predictions.

use candle_core::{Result, Tensor};

use super::{argmax, class_ids, Metric, MetricAccumulator};

/// F1 of the positive class (label 1), in [0, 1]; 0 when there are no true positives.
pub fn f1_binary(pred: &[u32], gold: &[u32]) -> f64 {
    let (mut tp, mut fp, mut fn_) = (0f64, 0f64, 0f64);
    for (&p, &g) in pred.iter().zip(gold) {
        match (p == 1, g == 1) {
            (true, true) => tp += 1.0,
            (true, false) => fp += 1.0,
            (false, true) => fn_ += 1.0,
            (false, false) => {}
        }
    }
    if tp == 0.0 {
        0.0
    } else {
        2.0 * tp / (2.0 * tp + fp + fn_)
    }
}

/// `f1`: [`f1_binary`] of the arg-max predictions and the labels, as a percentage (0–100, as
/// GLUE reports it).
#[derive(Debug, Clone, Copy)]
pub struct F1;

impl Metric for F1 {
    fn name(&self) -> &str {
        "f1"
    }

    fn accumulator(&self) -> Box<dyn MetricAccumulator> {
        Box::new(F1Accumulator::default())
    }
}

#[derive(Default)]
struct F1Accumulator {
    pred: Vec<u32>,
    gold: Vec<u32>,
}

impl MetricAccumulator for F1Accumulator {
    fn update(&mut self, outputs: &Tensor, targets: &Tensor) -> Result<()> {
        let pred = argmax(outputs)?;
        self.gold.extend(class_ids("f1", targets, pred.len())?);
        self.pred.extend(pred);
        Ok(())
    }

    fn value(&self) -> Option<f64> {
        Some(100.0 * f1_binary(&self.pred, &self.gold))
    }
}
