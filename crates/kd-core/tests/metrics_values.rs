//! Top-k accuracy (ties, NaN), the GLUE metrics and their `Metric` accumulators against
//! hand-computed (scikit-learn / SciPy) values.
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
use kd_core::metric::{
    self, average_ranks, f1_binary, matthews_corrcoef, pearson, spearman, topk_correct, EvalScores, Metric,
    TopK,
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

/// One accumulator of `m` fed `batches` in order.
fn accumulate(m: &dyn Metric, batches: &[(&Tensor, &Tensor)]) -> Option<f64> {
    let mut a = m.accumulator();
    for (o, t) in batches {
        a.update(o, t).unwrap();
    }
    a.value()
}

#[test]
fn top_k_accumulates_percentages() {
    let (logits, labels) = logits_and_labels();
    let (l1, y1) = (logits.narrow(0, 0, 1).unwrap(), labels.narrow(0, 0, 1).unwrap());
    let batches = [(&logits, &labels), (&l1, &y1)];
    let top1 = accumulate(&TopK::new(1), &batches).unwrap();
    assert!((top1 - 100.0 * 2.0 / 6.0).abs() < 1e-12, "{top1}");
    // ranks < 5: rows 0, 2, 3 and the repeated row 0
    let top5 = accumulate(&TopK::new(5), &batches).unwrap();
    assert!((top5 - 100.0 * 4.0 / 6.0).abs() < 1e-12, "{top5}");
    assert_eq!(TopK::new(5).name(), "top5");

    let cpu = &Device::Cpu;
    let three = Tensor::new(&[[0.0f32, 1.0, 2.0]], cpu).unwrap();
    let two = Tensor::new(&[2u32], cpu).unwrap();
    assert_eq!(accumulate(&TopK::new(1), &[(&three, &two)]), Some(100.0));
    assert_eq!(accumulate(&TopK::new(5), &[(&three, &two)]), None, "no top-5 with 3 classes");
    let five = Tensor::new(&[[0.0f32, 1.0, 2.0, 3.0, 4.0]], cpu).unwrap();
    let zero = Tensor::new(&[0u32], cpu).unwrap();
    assert_eq!(accumulate(&TopK::new(1), &[(&five, &zero)]), Some(0.0));
    assert_eq!(accumulate(&TopK::new(5), &[(&five, &zero)]), Some(100.0), "top-5 from 5 classes on");
    // An empty split: top-1 0, no top-5 (as the trainer has always recorded it).
    assert_eq!(accumulate(&TopK::new(1), &[]), Some(0.0));
    assert_eq!(accumulate(&TopK::new(5), &[]), None);
    // The image default, through `score`.
    let s = metric::score(&metric::top1_top5(), &five, &zero).unwrap();
    assert_eq!(s, EvalScores::new([("top1", Some(0.0)), ("top5", Some(100.0))]));
}

#[test]
fn metrics_by_name() {
    for name in ["top1", "top5", "top10", "accuracy", "f1", "mcc", "pearson", "spearman"] {
        assert_eq!(metric::by_name(name).unwrap().name(), name);
    }
    for bad in ["top0", "top", "auc"] {
        let e = metric::by_name(bad).unwrap_err().to_string();
        assert!(e.contains(bad) && e.contains("spearman"), "{e}");
    }
}

#[test]
fn classification_metrics_of_argmax_predictions() {
    // scikit-learn: y_true = [1, 0, 0, 1, 1], y_pred = argmax = [1, 0, 1, 1, 0] (the tied row
    // [1, 1] predicts class 0):
    //   accuracy_score = 3/5 = 0.6; f1_score = 2·2/(2·2 + 1 + 1) = 0.6666…;
    //   matthews_corrcoef = (tp·tn − fp·fn)/sqrt((tp+fp)(tp+fn)(tn+fp)(tn+fn))
    //                     = (2·1 − 1·1)/sqrt(3·3·2·2) = 1/6.
    let cpu = &Device::Cpu;
    let out = Tensor::new(&[[0.1f32, 0.9], [2.0, -1.0], [0.0, 0.5], [-3.0, 3.0], [1.0, 1.0]], cpu).unwrap();
    let gold = Tensor::new(&[1u32, 0, 0, 1, 1], cpu).unwrap();
    assert_eq!(metric::argmax(&out).unwrap(), vec![1, 0, 1, 1, 0]);
    let names = ["f1", "accuracy", "mcc"].map(|n| metric::by_name(n).unwrap());
    let s = metric::score(&names, &out, &gold).unwrap();
    assert_eq!(s.names().collect::<Vec<_>>(), ["f1", "accuracy", "mcc"], "the task's order");
    assert!((s.get("f1").unwrap() - 200.0 / 3.0).abs() < 1e-9, "{s:?}");
    assert_eq!(s.get("accuracy"), Some(60.0));
    assert!((s.get("mcc").unwrap() - 1.0 / 6.0).abs() < 1e-12, "{s:?}");
    // Split over batches, the same values.
    for m in &names {
        let (a, b) = (out.narrow(0, 0, 2).unwrap(), out.narrow(0, 2, 3).unwrap());
        let (ga, gb) = (gold.narrow(0, 0, 2).unwrap(), gold.narrow(0, 2, 3).unwrap());
        assert_eq!(accumulate(m.as_ref(), &[(&a, &ga), (&b, &gb)]), s.get(m.name()), "{}", m.name());
    }
    // Accuracy equals top-1 without NaN; i64 labels read as class ids.
    let gold64 = gold.to_dtype(candle_core::DType::I64).unwrap();
    assert_eq!(accumulate(&TopK::new(1), &[(&out, &gold64)]), Some(60.0));
    let e = metric::by_name("f1")
        .unwrap()
        .accumulator()
        .update(&out, &gold.narrow(0, 0, 4).unwrap())
        .unwrap_err()
        .to_string();
    assert!(e.contains("5 rows") && e.contains("4 labels"), "{e}");
}

#[test]
fn correlations_of_predicted_scores() {
    // SciPy: pearsonr([1, 2, 3, 4], [1, 3, 2, 5]) = 5.5/sqrt(5·8.75) = 0.8315218406202999;
    // spearmanr(...) = pearson of ranks [1, 2, 3, 4] and [1, 3, 2, 4] = 0.8.
    let cpu = &Device::Cpu;
    let pred = Tensor::new(&[[1.0f32], [2.0], [3.0], [4.0]], cpu).unwrap();
    let gold = Tensor::new(&[1.0f32, 3.0, 2.0, 5.0], cpu).unwrap();
    let both = ["pearson", "spearman"].map(|n| metric::by_name(n).unwrap());
    let s = metric::score(&both, &pred, &gold).unwrap();
    assert!((s.get("pearson").unwrap() - 0.8315218406202999).abs() < 1e-12, "{s:?}");
    assert!((s.get("spearman").unwrap() - 0.8).abs() < 1e-12, "{s:?}");
    // (n,) predictions work too; batches concatenate in order.
    let flat = pred.flatten_all().unwrap();
    let (a, b) = (flat.narrow(0, 0, 3).unwrap(), flat.narrow(0, 3, 1).unwrap());
    let (ga, gb) = (gold.narrow(0, 0, 3).unwrap(), gold.narrow(0, 3, 1).unwrap());
    assert_eq!(accumulate(both[0].as_ref(), &[(&a, &ga), (&b, &gb)]), s.get("pearson"));
    // Two outputs per example is not a regression head.
    let two = Tensor::zeros((4, 2), candle_core::DType::F32, cpu).unwrap();
    let e = both[0].accumulator().update(&two, &gold).unwrap_err().to_string();
    assert!(e.contains("one predicted score"), "{e}");
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
