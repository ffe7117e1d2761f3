//! Paired datasets across two modalities (AV-MNIST style): items of dataset A and dataset B
//! that share a label are paired by a seeded draw, split by split.
//!
//! Each source keeps its own train/test split: training pairs are drawn only from the two
//! training splits and test pairs only from the two test splits, so no test item of either
//! modality ever pairs into training. Pairs index into their own split's items.
//!
//! Per class `c` with `n_c` pairs to make: each modality's items of class `c` are shuffled
//! (ChaCha8, seeded by `(seed, split, modality, c)`) and taken in that order, cycling through a
//! fresh shuffle when `n_c` exceeds the items the modality has; so the larger modality's items
//! are used at most once while there are enough, and the smaller one's are reused evenly.

use std::collections::BTreeMap;

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::error::DataError;

/// How many pairs to make per class (per split) and the pairing seed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PairingSpec {
    /// Pairs per class in the training split; `None`: as many as the smaller modality has of
    /// that class (every item of it used once).
    pub train_per_class: Option<usize>,
    /// Pairs per class in the test split; `None` as above.
    pub test_per_class: Option<usize>,
    /// Fixed across run seeds, so every seed sees the same pairs.
    pub seed: u64,
}

/// One pair: an item of A and an item of B of the same label, as indices into their split.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Pair {
    pub a: usize,
    pub b: usize,
    pub label: u32,
}

/// The labels of one source's two splits.
#[derive(Debug, Clone, Copy)]
pub struct SplitLabels<'a> {
    /// Name for errors, e.g. `ylecun/mnist`.
    pub name: &'a str,
    pub train: &'a [u32],
    pub test: &'a [u32],
}

/// Training and test pairs, each in a seeded shuffled order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PairedSplits {
    pub train: Vec<Pair>,
    pub test: Vec<Pair>,
}

/// Pairs A and B by label, split by split. Refuses sources whose label sets differ in either
/// split (naming the labels each lacks) and empty splits.
pub fn pair_by_label(a: SplitLabels, b: SplitLabels, spec: &PairingSpec) -> Result<PairedSplits, DataError> {
    Ok(PairedSplits {
        train: pair_split("train", a.name, a.train, b.name, b.train, spec.train_per_class, spec.seed)?,
        test: pair_split("test", a.name, a.test, b.name, b.test, spec.test_per_class, spec.seed)?,
    })
}

fn by_class(labels: &[u32]) -> BTreeMap<u32, Vec<usize>> {
    let mut m: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
    for (i, &l) in labels.iter().enumerate() {
        m.entry(l).or_default().push(i);
    }
    m
}

fn draw(items: &[usize], n: usize, rng: &mut ChaCha8Rng) -> Vec<usize> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let mut round = items.to_vec();
        round.shuffle(rng);
        out.extend(round.into_iter().take(n - out.len()));
    }
    out
}

fn pair_split(
    split: &str,
    a_name: &str,
    a: &[u32],
    b_name: &str,
    b: &[u32],
    per_class: Option<usize>,
    seed: u64,
) -> Result<Vec<Pair>, DataError> {
    let (ca, cb) = (by_class(a), by_class(b));
    if ca.is_empty() || cb.is_empty() {
        return Err(DataError::Invalid(format!(
            "pairing {a_name} with {b_name}: the {split} split of {} is empty",
            if ca.is_empty() { a_name } else { b_name }
        )));
    }
    let only_a: Vec<u32> = ca.keys().filter(|l| !cb.contains_key(l)).copied().collect();
    let only_b: Vec<u32> = cb.keys().filter(|l| !ca.contains_key(l)).copied().collect();
    if !only_a.is_empty() || !only_b.is_empty() {
        return Err(DataError::Invalid(format!(
            "pairing {a_name} with {b_name} by label: their {split} splits have different label sets \
             (only in {a_name}: {only_a:?}; only in {b_name}: {only_b:?})"
        )));
    }
    if per_class == Some(0) {
        return Err(DataError::Invalid(format!(
            "pairing {a_name} with {b_name}: {split} pairs per class must be > 0"
        )));
    }
    let mut pairs = Vec::new();
    for (label, ia) in &ca {
        let ib = &cb[label];
        let n = per_class.unwrap_or(ia.len().min(ib.len()));
        let mut ra =
            ChaCha8Rng::seed_from_u64(kd_core::seed::derive_seed(seed, &format!("pair/{split}/a/{label}")));
        let mut rb =
            ChaCha8Rng::seed_from_u64(kd_core::seed::derive_seed(seed, &format!("pair/{split}/b/{label}")));
        let (da, db) = (draw(ia, n, &mut ra), draw(ib, n, &mut rb));
        pairs.extend(da.into_iter().zip(db).map(|(a, b)| Pair { a, b, label: *label }));
    }
    let mut rng = ChaCha8Rng::seed_from_u64(kd_core::seed::derive_seed(seed, &format!("pair/{split}/order")));
    pairs.shuffle(&mut rng);
    Ok(pairs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    fn labels(per_class: usize, classes: u32) -> Vec<u32> {
        (0..per_class * classes as usize).map(|i| i as u32 % classes).collect()
    }

    #[test]
    fn pairs_share_labels_are_seeded_and_use_the_larger_side_once() {
        let (a_tr, a_te) = (labels(50, 10), labels(8, 10));
        let (b_tr, b_te) = (labels(13, 10), labels(3, 10));
        let a = SplitLabels { name: "mnist", train: &a_tr, test: &a_te };
        let b = SplitLabels { name: "fsdd", train: &b_tr, test: &b_te };
        let spec = PairingSpec { train_per_class: Some(30), test_per_class: None, seed: 7 };
        let p = pair_by_label(a, b, &spec).unwrap();
        assert_eq!(p.train.len(), 300);
        assert_eq!(p.test.len(), 30, "default: the smaller side's count per class");
        for q in p.train.iter() {
            assert_eq!(a_tr[q.a], q.label);
            assert_eq!(b_tr[q.b], q.label);
        }
        for q in p.test.iter() {
            assert_eq!((a_te[q.a], b_te[q.b]), (q.label, q.label));
        }
        // A (50 per class) is used at most once; B (13 per class) cycles: each used 2 or 3 times.
        let used_a: BTreeSet<usize> = p.train.iter().map(|q| q.a).collect();
        assert_eq!(used_a.len(), 300);
        let mut uses_b = BTreeMap::new();
        for q in &p.train {
            *uses_b.entry(q.b).or_insert(0) += 1;
        }
        assert_eq!(uses_b.len(), 130);
        assert!(uses_b.values().all(|&n| n == 2 || n == 3), "{uses_b:?}");
        assert_eq!(p, pair_by_label(a, b, &spec).unwrap(), "same seed, same pairs");
        let other = pair_by_label(a, b, &PairingSpec { seed: 8, ..spec }).unwrap();
        assert_ne!(p.train, other.train);
    }

    #[test]
    fn no_test_item_of_either_modality_pairs_into_training() {
        // One pool of items per modality with global ids; the test items are a disjoint part of
        // it. Map every training pair back to its global ids: none may be a test id.
        let a_ids_train: Vec<usize> = (0..200).collect();
        let a_ids_test: Vec<usize> = (200..240).collect();
        let b_ids_train: Vec<usize> = (1000..1030).collect();
        let b_ids_test: Vec<usize> = (1030..1040).collect();
        let lab = |ids: &[usize]| ids.iter().map(|i| (i % 10) as u32).collect::<Vec<_>>();
        let (a_tr, a_te, b_tr, b_te) =
            (lab(&a_ids_train), lab(&a_ids_test), lab(&b_ids_train), lab(&b_ids_test));
        let spec = PairingSpec { train_per_class: Some(40), test_per_class: Some(40), seed: 1 };
        let p = pair_by_label(
            SplitLabels { name: "a", train: &a_tr, test: &a_te },
            SplitLabels { name: "b", train: &b_tr, test: &b_te },
            &spec,
        )
        .unwrap();
        let test_a: BTreeSet<usize> = a_ids_test.iter().copied().collect();
        let test_b: BTreeSet<usize> = b_ids_test.iter().copied().collect();
        for q in &p.train {
            assert!(!test_a.contains(&a_ids_train[q.a]) && !test_b.contains(&b_ids_train[q.b]));
        }
        // And every test pair is made of test items only.
        for q in &p.test {
            assert!(test_a.contains(&a_ids_test[q.a]) && test_b.contains(&b_ids_test[q.b]));
        }
        assert_eq!(p.test.len(), 400);
    }

    #[test]
    fn different_label_sets_are_refused_naming_the_labels() {
        let a_tr = labels(5, 10);
        let b_tr = labels(5, 9);
        let te = labels(2, 10);
        let e = pair_by_label(
            SplitLabels { name: "ylecun/mnist", train: &a_tr, test: &te },
            SplitLabels { name: "fsdd", train: &b_tr, test: &te },
            &PairingSpec { train_per_class: None, test_per_class: None, seed: 0 },
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("different label sets") && e.contains("only in ylecun/mnist: [9]"), "{e}");
    }
}
