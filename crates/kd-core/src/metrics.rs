//! Metrics: top-k accuracy (percent, 0–100) and, for GLUE, MCC, F1 and correlations.
//!
//! The GLUE functions return the values scikit-learn and SciPy return (MCC and correlations in
//! [−1, 1], F1 in [0, 1]); the caller scales to the units its results rows use.

use candle_core::{DType, Result, Tensor};

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

/// Running top-1/top-5 accuracy over batches.
#[derive(Debug, Clone, Default)]
pub struct Accuracy {
    correct1: usize,
    correct5: usize,
    total: usize,
    classes: usize,
}

impl Accuracy {
    pub fn update(&mut self, logits: &Tensor, labels: &Tensor) -> Result<()> {
        let c = topk_correct(logits, labels, &[1, 5])?;
        self.correct1 += c[0];
        self.correct5 += c[1];
        self.total += logits.dim(0)?;
        self.classes = logits.dim(1)?;
        Ok(())
    }

    /// `(top1, top5)` in percent; top-5 only with at least 5 classes.
    pub fn finish(&self) -> (f64, Option<f64>) {
        let pct = |c: usize| if self.total == 0 { 0.0 } else { 100.0 * c as f64 / self.total as f64 };
        (pct(self.correct1), (self.classes >= 5).then(|| pct(self.correct5)))
    }

    pub fn total(&self) -> usize {
        self.total
    }
}

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
