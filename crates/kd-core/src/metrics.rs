//! Metrics: top-k accuracy (percent, 0–100) and, for GLUE, MCC, F1 and correlations.

use candle_core::{DType, Result, Tensor, D};

/// Number of examples whose label is among the `k` highest logits, for each `k` in `ks`.
/// The label is in the top k when fewer than k classes score strictly higher (ties resolve in
/// the example's favour), which is deterministic.
pub fn topk_correct(logits: &Tensor, labels: &Tensor, ks: &[usize]) -> Result<Vec<usize>> {
    let logits = logits.to_dtype(DType::F32)?;
    let labels = labels.to_dtype(DType::U32)?;
    let target = logits.gather(&labels.unsqueeze(1)?, 1)?; // (N, 1)
                                                           // Rank of the label = number of classes scoring strictly higher.
    let rank = logits.broadcast_gt(&target)?.to_dtype(DType::U32)?.sum(D::Minus1)?.to_vec1::<u32>()?;
    Ok(ks.iter().map(|&k| rank.iter().filter(|&&r| (r as usize) < k).count()).collect())
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
        self.total += labels.dim(0)?;
        self.classes = logits.dim(1)?;
        Ok(())
    }

    /// `(top1, top5)` in percent; top-5 only with at least 5 classes.
    pub fn finish(&self) -> (f64, Option<f64>) {
        let pct = |c: usize| if self.total == 0 { 0.0 } else { 100.0 * c as f64 / self.total as f64 };
        (pct(self.correct1), (self.classes > 5).then(|| pct(self.correct5)))
    }

    pub fn total(&self) -> usize {
        self.total
    }
}

/// Matthews correlation coefficient of binary predictions (CoLA's metric); 0 when undefined.
pub fn matthews_corrcoef(pred: &[u32], gold: &[u32]) -> f64 {
    let (mut tp, mut tn, mut fp, mut fn_) = (0f64, 0f64, 0f64, 0f64);
    for (&p, &g) in pred.iter().zip(gold) {
        match (p, g) {
            (1, 1) => tp += 1.0,
            (0, 0) => tn += 1.0,
            (1, _) => fp += 1.0,
            _ => fn_ += 1.0,
        }
    }
    let den = ((tp + fp) * (tp + fn_) * (tn + fp) * (tn + fn_)).sqrt();
    if den == 0.0 {
        0.0
    } else {
        (tp * tn - fp * fn_) / den
    }
}

/// F1 of the positive class (label 1), in percent.
pub fn f1_binary(pred: &[u32], gold: &[u32]) -> f64 {
    let tp = pred.iter().zip(gold).filter(|(&p, &g)| p == 1 && g == 1).count() as f64;
    let fp = pred.iter().zip(gold).filter(|(&p, &g)| p == 1 && g != 1).count() as f64;
    let fn_ = pred.iter().zip(gold).filter(|(&p, &g)| p != 1 && g == 1).count() as f64;
    if tp == 0.0 {
        0.0
    } else {
        100.0 * 2.0 * tp / (2.0 * tp + fp + fn_)
    }
}

/// Pearson correlation.
pub fn pearson(x: &[f64], y: &[f64]) -> f64 {
    let n = x.len().min(y.len()) as f64;
    let mx = x.iter().sum::<f64>() / n;
    let my = y.iter().sum::<f64>() / n;
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (a, b) in x.iter().zip(y) {
        sxy += (a - mx) * (b - my);
        sxx += (a - mx) * (a - mx);
        syy += (b - my) * (b - my);
    }
    if sxx == 0.0 || syy == 0.0 {
        0.0
    } else {
        sxy / (sxx * syy).sqrt()
    }
}

/// Ranks with ties given their average rank (1-based).
fn ranks(x: &[f64]) -> Vec<f64> {
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

/// Spearman rank correlation (Pearson of tie-averaged ranks).
pub fn spearman(x: &[f64], y: &[f64]) -> f64 {
    pearson(&ranks(x), &ranks(y))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn topk_counts_by_hand() {
        let logits = Tensor::new(
            &[
                [0.1f32, 0.9, 0.0, 0.0, 0.0, 0.0],
                [0.5, 0.1, 0.2, 0.3, 0.0, 0.05],
                [0.0, 0.0, 0.0, 0.0, 0.0, 1.0],
            ],
            &Device::Cpu,
        )
        .unwrap();
        let labels = Tensor::new(&[1u32, 4, 0], &Device::Cpu).unwrap();
        // row0 rank 0; row1 label 4 has 5 strictly higher -> rank 5; row2 label 0: 1 higher -> rank 1.
        assert_eq!(topk_correct(&logits, &labels, &[1, 2, 5, 6]).unwrap(), vec![1, 2, 2, 3]);
        let mut a = Accuracy::default();
        a.update(&logits, &labels).unwrap();
        let (t1, t5) = a.finish();
        assert!((t1 - 100.0 / 3.0).abs() < 1e-9);
        assert!((t5.unwrap() - 200.0 / 3.0).abs() < 1e-9);
    }

    #[test]
    fn glue_metrics_by_hand() {
        let pred = [1, 1, 0, 0, 1, 0];
        let gold = [1, 0, 0, 1, 1, 0];
        // tp 2, fp 1, fn 1, tn 2: mcc = (4-1)/sqrt(3*3*3*3) = 1/3, f1 = 4/6
        assert!((matthews_corrcoef(&pred, &gold) - 1.0 / 3.0).abs() < 1e-12);
        assert!((f1_binary(&pred, &gold) - 200.0 / 3.0).abs() < 1e-9);
        assert!((pearson(&[1.0, 2.0, 3.0], &[2.0, 4.0, 6.0]) - 1.0).abs() < 1e-12);
        // ties: ranks of [1,2,2,3] = [1,2.5,2.5,4]
        assert_eq!(ranks(&[1.0, 2.0, 2.0, 3.0]), vec![1.0, 2.5, 2.5, 4.0]);
        assert!((spearman(&[1.0, 2.0, 3.0, 4.0], &[10.0, 20.0, 30.0, 25.0]) - 0.8).abs() < 1e-12);
    }
}
