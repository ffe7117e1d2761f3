//! Pearson and Spearman correlation of predicted and gold scores (`pearson`, `spearman`: STS-B's
//! metrics), for a regression head with one output.

use candle_core::{DType, Result, Tensor};

use super::{Metric, MetricAccumulator};

/// Pearson correlation over the common length of `x` and `y`; 0 when either is constant
/// (SciPy returns NaN there).
pub fn pearson(x: &[f64], y: &[f64]) -> f64 {
    let n = x.len().min(y.len());
    if n == 0 {
        return 0.0;
    }
    let (x, y) = (&x[..n], &y[..n]);
    let mx = x.iter().sum::<f64>() / n as f64;
    let my = y.iter().sum::<f64>() / n as f64;
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (a, b) in x.iter().zip(y) {
        sxy += (a - mx) * (b - my);
        sxx += (a - mx) * (a - mx);
        syy += (b - my) * (b - my);
    }
    if sxx == 0.0 || syy == 0.0 {
        0.0
    } else {
        (sxy / (sxx * syy).sqrt()).clamp(-1.0, 1.0)
    }
}

/// 1-based ranks, tied values sharing the average of their ranks (SciPy's `rankdata`).
pub fn average_ranks(x: &[f64]) -> Vec<f64> {
    let mut idx: Vec<usize> = (0..x.len()).collect();
    idx.sort_by(|&a, &b| x[a].total_cmp(&x[b]));
    let mut r = vec![0.0; x.len()];
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && x[idx[j + 1]] == x[idx[i]] {
            j += 1;
        }
        let avg = (i + j) as f64 / 2.0 + 1.0;
        for &k in &idx[i..=j] {
            r[k] = avg;
        }
        i = j + 1;
    }
    r
}

/// Spearman rank correlation (Pearson of tie-averaged ranks) over the common length.
pub fn spearman(x: &[f64], y: &[f64]) -> f64 {
    let n = x.len().min(y.len());
    pearson(&average_ranks(&x[..n]), &average_ranks(&y[..n]))
}

/// `pearson`: [`pearson`] of the predicted and gold scores, in [−1, 1].
#[derive(Debug, Clone, Copy)]
pub struct Pearson;

/// `spearman`: [`spearman`] of the predicted and gold scores, in [−1, 1].
#[derive(Debug, Clone, Copy)]
pub struct Spearman;

impl Metric for Pearson {
    fn name(&self) -> &str {
        "pearson"
    }

    fn accumulator(&self) -> Box<dyn MetricAccumulator> {
        Box::new(Scores { name: "pearson", f: pearson, pred: Vec::new(), gold: Vec::new() })
    }
}

impl Metric for Spearman {
    fn name(&self) -> &str {
        "spearman"
    }

    fn accumulator(&self) -> Box<dyn MetricAccumulator> {
        Box::new(Scores { name: "spearman", f: spearman, pred: Vec::new(), gold: Vec::new() })
    }
}

/// Predicted and gold scores in evaluation order (the order fixes the float summation).
struct Scores {
    name: &'static str,
    f: fn(&[f64], &[f64]) -> f64,
    pred: Vec<f64>,
    gold: Vec<f64>,
}

impl MetricAccumulator for Scores {
    fn update(&mut self, outputs: &Tensor, targets: &Tensor) -> Result<()> {
        let n = outputs.dim(0)?;
        if outputs.elem_count() != n {
            candle_core::bail!(
                "{}: needs one predicted score per example, the outputs are {:?}",
                self.name,
                outputs.dims()
            );
        }
        let gold = targets.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
        if gold.len() != n {
            candle_core::bail!("{}: {n} predictions but {} gold scores", self.name, gold.len());
        }
        let pred = outputs.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
        self.pred.extend(pred.into_iter().map(f64::from));
        self.gold.extend(gold.into_iter().map(f64::from));
        Ok(())
    }

    fn value(&self) -> Option<f64> {
        Some((self.f)(&self.pred, &self.gold))
    }
}
