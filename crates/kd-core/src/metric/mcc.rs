//! Matthews correlation coefficient (`mcc`, CoLA's metric) of the arg-max predictions.

use candle_core::{Result, Tensor};

use super::{argmax, class_ids, Metric, MetricAccumulator};

/// Matthews correlation coefficient (CoLA's metric) of class ids, for two or more classes
/// (scikit-learn's multi-class form, which is the usual one for two); 0 when undefined.
pub fn matthews_corrcoef(pred: &[u32], gold: &[u32]) -> f64 {
    // class -> (times predicted, times gold)
    let mut counts: std::collections::BTreeMap<u32, (f64, f64)> = Default::default();
    let mut correct = 0f64;
    for (&p, &g) in pred.iter().zip(gold) {
        counts.entry(p).or_default().0 += 1.0;
        counts.entry(g).or_default().1 += 1.0;
        correct += f64::from(u8::from(p == g));
    }
    let s = pred.len().min(gold.len()) as f64;
    let (mut pg, mut pp, mut gg) = (0f64, 0f64, 0f64);
    for &(p, g) in counts.values() {
        pg += p * g;
        pp += p * p;
        gg += g * g;
    }
    let cov_pg = correct * s - pg;
    let den = ((s * s - pp) * (s * s - gg)).sqrt();
    if den == 0.0 {
        0.0
    } else {
        cov_pg / den
    }
}

/// `mcc`: [`matthews_corrcoef`] of the arg-max predictions and the labels, in [−1, 1] (not a
/// percentage: the results rows hold scikit-learn's value).
#[derive(Debug, Clone, Copy)]
pub struct Mcc;

impl Metric for Mcc {
    fn name(&self) -> &str {
        "mcc"
    }

    fn accumulator(&self) -> Box<dyn MetricAccumulator> {
        Box::new(MccAccumulator::default())
    }
}

#[derive(Default)]
struct MccAccumulator {
    pred: Vec<u32>,
    gold: Vec<u32>,
}

impl MetricAccumulator for MccAccumulator {
    fn update(&mut self, outputs: &Tensor, targets: &Tensor) -> Result<()> {
        let pred = argmax(outputs)?;
        self.gold.extend(class_ids("mcc", targets, pred.len())?);
        self.pred.extend(pred);
        Ok(())
    }

    fn value(&self) -> Option<f64> {
        Some(matthews_corrcoef(&self.pred, &self.gold))
    }
}
