//! Top-k accuracy (`top1`, `top5`, ...): the percentage of examples whose label is among the
//! model's `k` highest logits.

use candle_core::{DType, Result, Tensor};

use super::{Metric, MetricAccumulator};

/// Number of examples whose label is among the `k` highest logits, for each `k` in `ks`.
///
/// Ranks are deterministic: a class outranks the label when it scores higher, or scores the
/// same and has a lower index (so an all-equal row is a hit for class 0 only). NaN counts as
/// the highest score, as in `torch.topk`: a NaN logit on the label is never a hit.
pub fn topk_correct(logits: &Tensor, labels: &Tensor, ks: &[usize]) -> Result<Vec<usize>> {
    let (n, classes) = logits.dims2()?;
    let labels = labels.flatten_all()?.to_dtype(DType::U32)?.to_vec1::<u32>()?;
    if labels.len() != n {
        candle_core::bail!("top-k: {n} rows of logits but {} labels", labels.len());
    }
    // Eval batches are small (≤ a few hundred × classes): ranking on the host is cheap and
    // gives exact tie and NaN rules.
    if classes == 0 && n > 0 {
        candle_core::bail!("top-k: logits have no classes")
    }
    let scores = logits.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    let mut correct = vec![0usize; ks.len()];
    for (row, &label) in scores.chunks_exact(classes.max(1)).zip(&labels) {
        let label = label as usize;
        let Some(&target) = row.get(label) else {
            candle_core::bail!("top-k: label {label} is out of range for {classes} classes")
        };
        let rank = if target.is_nan() {
            classes
        } else {
            row.iter()
                .enumerate()
                .filter(|&(j, &s)| s.is_nan() || s > target || (s == target && j < label))
                .count()
        };
        for (c, &k) in correct.iter_mut().zip(ks) {
            if rank < k {
                *c += 1;
            }
        }
    }
    Ok(correct)
}

/// Top-`k` accuracy in percent (0–100), named `top<k>`. Absent (`None`) when the outputs have
/// fewer than `k` classes, except top-1, which is always present (0 on an empty split): so a
/// 2-class model has no `top5`, as the results rows have always had it.
#[derive(Debug, Clone)]
pub struct TopK {
    k: usize,
    name: String,
}

impl TopK {
    pub fn new(k: usize) -> Self {
        Self { k, name: format!("top{k}") }
    }
}

impl Metric for TopK {
    fn name(&self) -> &str {
        &self.name
    }

    fn accumulator(&self) -> Box<dyn MetricAccumulator> {
        Box::new(TopKAccumulator { k: self.k, correct: 0, total: 0, classes: 0 })
    }
}

struct TopKAccumulator {
    k: usize,
    correct: usize,
    total: usize,
    /// Classes of the last batch.
    classes: usize,
}

impl MetricAccumulator for TopKAccumulator {
    fn update(&mut self, outputs: &Tensor, targets: &Tensor) -> Result<()> {
        self.correct += topk_correct(outputs, targets, &[self.k])?[0];
        self.total += outputs.dim(0)?;
        self.classes = outputs.dim(1)?;
        Ok(())
    }

    fn value(&self) -> Option<f64> {
        if self.k > self.classes.max(1) {
            return None;
        }
        Some(if self.total == 0 { 0.0 } else { 100.0 * self.correct as f64 / self.total as f64 })
    }
}
