//! Top-k accuracy (ties, NaN) and the GLUE metrics against hand-computed values.
//!
//! GLUE references (plain Python, float64):
//! ```python
//! def pearson(x, y):
//!     n = len(x); mx = sum(x)/n; my = sum(y)/n
//!     sxy = sum((a-mx)*(b-my) for a, b in zip(x, y))
//!     return sxy / math.sqrt(sum((a-mx)**2 for a in x) * sum((b-my)**2 for b in y))
//! pearson([1,2,3,4,5], [2,4,5,4,5])          # 0.7745966692414834 = 6/sqrt(60)
//! pearson([1,2,3,4,5], [1,2,3.5,5,3.5])      # 0.8207826816681233 (scipy's spearmanr doc example)
//! # 3-class MCC, y_true=[0,1,2,0,1,2,2], y_pred=[0,2,1,0,0,1,2]: true counts t=[2,2,3],
//! # predicted p=[3,2,2], correct c=3, s=7: (c·s − t·p) / sqrt((s²−p·p)(s²−t·t)) = 5/32
//! ```

use candle_core::{Device, Tensor};
use kd_core::metrics::{
    average_ranks, f1_binary, matthews_corrcoef, pearson, spearman, topk_correct, Accuracy,
};

fn logits_and_labels() -> (Tensor, Tensor) {
    let nan = f32::NAN;
    let logits = Tensor::new(
        &[
            [0.1f32, 0.9, 0.0, 0.0, 0.0, 0.0], // label 1 is the maximum: rank 0
            [0.5, 0.1, 0.2, 0.3, 0.0, 0.05],   // label 4 is the minimum: rank 5
            [1.0, 1.0, 1.0, 1.0, 1.0, 1.0],    // all tied, label 3: classes 0-2 win ties, rank 3
            [nan, 0.0, 5.0, 0.0, 0.0, 0.0],    // a NaN elsewhere outranks label 2: rank 1
            [0.0, 0.0, nan, 0.0, 0.0, 0.0],    // NaN on the label: never a hit
        ],
        &Device::Cpu,
    )
    .unwrap();
    let labels = Tensor::new(&[1u32, 4, 3, 2, 2], &Device::Cpu).unwrap();
    (logits, labels)
}

#[test]
fn topk_counts_with_ties_and_nan() {
    let (logits, labels) = logits_and_labels();
    // ranks 0, 5, 3, 1, never
    assert_eq!(topk_correct(&logits, &labels, &[1, 2, 4, 6]).unwrap(), vec![1, 2, 3, 4]);
    // i64 labels work the same.
    let labels64 = labels.to_dtype(candle_core::DType::I64).unwrap();
    assert_eq!(topk_correct(&logits, &labels64, &[1, 6]).unwrap(), vec![1, 4]);
}

#[test]
fn constant_logits_are_not_all_correct() {
    let logits = Tensor::zeros((4, 10), candle_core::DType::F32, &Device::Cpu).unwrap();
    let labels = Tensor::new(&[0u32, 3, 7, 9], &Device::Cpu).unwrap();
    assert_eq!(topk_correct(&logits, &labels, &[1, 5]).unwrap(), vec![1, 2]);
}

#[test]
fn accuracy_accumulates_percentages() {
    let (logits, labels) = logits_and_labels();
    let mut acc = Accuracy::default();
    acc.update(&logits, &labels).unwrap();
    acc.update(&logits.narrow(0, 0, 1).unwrap(), &labels.narrow(0, 0, 1).unwrap()).unwrap();
    assert_eq!(acc.total(), 6);
    let (top1, top5) = acc.finish();
    assert!((top1 - 100.0 * 2.0 / 6.0).abs() < 1e-12, "{top1}");
    // ranks < 5: rows 0, 2, 3 and the repeated row 0
    assert!((top5.unwrap() - 100.0 * 4.0 / 6.0).abs() < 1e-12, "{top5:?}");

    let three = Tensor::new(&[[0.0f32, 1.0, 2.0]], &Device::Cpu).unwrap();
    let mut acc = Accuracy::default();
    acc.update(&three, &Tensor::new(&[2u32], &Device::Cpu).unwrap()).unwrap();
    assert_eq!(acc.finish(), (100.0, None), "no top-5 with 3 classes");
    let five = Tensor::new(&[[0.0f32, 1.0, 2.0, 3.0, 4.0]], &Device::Cpu).unwrap();
    let mut acc = Accuracy::default();
    acc.update(&five, &Tensor::new(&[0u32], &Device::Cpu).unwrap()).unwrap();
    assert_eq!(acc.finish(), (0.0, Some(100.0)), "top-5 from 5 classes on");
    assert_eq!(Accuracy::default().finish(), (0.0, None));
}

#[test]
fn bad_labels_are_errors() {
    let (logits, _) = logits_and_labels();
    let e = topk_correct(&logits, &Tensor::new(&[1u32, 4, 3, 2, 6], &Device::Cpu).unwrap(), &[1])
        .unwrap_err()
        .to_string();
    assert!(e.contains("label 6") && e.contains("6 classes"), "{e}");
    let e =
        topk_correct(&logits, &Tensor::new(&[1u32, 4], &Device::Cpu).unwrap(), &[1]).unwrap_err().to_string();
    assert!(e.contains("5 rows") && e.contains("2 labels"), "{e}");
}

#[test]
fn glue_metrics_by_hand() {
    let pred = [1, 1, 0, 0, 1, 0];
    let gold = [1, 0, 0, 1, 1, 0];
    // tp 2, fp 1, fn 1, tn 2: mcc = (2·2 − 1·1)/sqrt(3·3·3·3) = 1/3, f1 = 2·2/(2·2 + 1 + 1)
    assert!((matthews_corrcoef(&pred, &gold) - 1.0 / 3.0).abs() < 1e-12);
    assert!((f1_binary(&pred, &gold) - 4.0 / 6.0).abs() < 1e-12);
    assert_eq!(matthews_corrcoef(&[1, 1, 1], &[1, 0, 1]), 0.0, "constant prediction: undefined → 0");
    assert_eq!(matthews_corrcoef(&[0, 1, 0, 1], &[1, 0, 1, 0]), -1.0);
    assert_eq!(f1_binary(&[0, 0], &[1, 1]), 0.0);
    let three = matthews_corrcoef(&[0, 2, 1, 0, 0, 1, 2], &[0, 1, 2, 0, 1, 2, 2]);
    assert!((three - 5.0 / 32.0).abs() < 1e-12, "{three}");

    assert!(
        (pearson(&[1.0, 2.0, 3.0, 4.0, 5.0], &[2.0, 4.0, 5.0, 4.0, 5.0]) - 0.7745966692414834).abs() < 1e-12
    );
    assert_eq!(pearson(&[1.0, 2.0, 3.0], &[2.0, 4.0, 6.0]), 1.0);
    assert_eq!(pearson(&[1.0, 1.0, 1.0], &[2.0, 4.0, 6.0]), 0.0, "constant input");
    assert_eq!(pearson(&[], &[]), 0.0);
    assert_eq!(average_ranks(&[5.0, 6.0, 7.0, 8.0, 7.0]), vec![1.0, 2.0, 3.5, 5.0, 3.5]);
    let rho = spearman(&[1.0, 2.0, 3.0, 4.0, 5.0], &[5.0, 6.0, 7.0, 8.0, 7.0]);
    assert!((rho - 0.8207826816681233).abs() < 1e-12, "{rho}");
}
