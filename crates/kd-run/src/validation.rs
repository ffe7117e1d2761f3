//! Validation mode: tune on a held-out part of the training split, never on the test split.
//!
//! With `data.validation_size = V` a run holds out `V` class-balanced examples of the training
//! split (seeded by `data.validation_seed`, default `data.subset_seed`), trains on the rest
//! (its class-balanced `data.train_limit` subset when set) and evaluates on the held-out part;
//! the recipe's eval split is not read at all. Rows then say `split = train[val]`.
//! `kd sweep` always runs in this mode; the final test evaluation of the chosen point is a
//! separate `kd reproduce` without it.

use anyhow::{bail, Result};
use kd_core::recipe::DataSection;
use kd_data::HubCache;

use crate::data::{load_split, Split};

/// The `split` column of rows evaluated in validation mode.
pub const VALIDATION_SPLIT: &str = "train[val]";

/// The name of the split a run evaluates on: the eval split, or [`VALIDATION_SPLIT`].
pub fn eval_split_name(d: &DataSection) -> String {
    if d.validation_size.is_some() {
        VALIDATION_SPLIT.to_string()
    } else {
        d.eval_split.clone()
    }
}

/// The seed of the held-out choice.
pub fn validation_seed(d: &DataSection) -> u64 {
    d.validation_seed.unwrap_or(d.subset_seed)
}

/// Carves the held-out part out of a training split's labels: returns `(train, validation)`
/// indices into `labels`, disjoint and sorted. `validation` is a class-balanced subset of
/// `size` examples chosen with `seed`; `train` is the rest, or its class-balanced subset of
/// `train_limit` examples chosen with `subset_seed`.
pub fn carve(
    labels: &[u32],
    size: usize,
    seed: u64,
    train_limit: Option<usize>,
    subset_seed: u64,
) -> Result<(Vec<usize>, Vec<usize>)> {
    if size == 0 || size >= labels.len() {
        bail!(
            "data.validation_size = {size}: the training split has {} examples; the held-out part \
             must leave some to train on",
            labels.len()
        );
    }
    let validation = kd_data::balanced_subset(labels, size, kd_core::seed::derive_seed(seed, "validation"));
    let mut held = vec![false; labels.len()];
    for &i in &validation {
        held[i] = true;
    }
    let rest: Vec<usize> = (0..labels.len()).filter(|&i| !held[i]).collect();
    let train = match train_limit {
        Some(n) if n < rest.len() => {
            let rest_labels: Vec<u32> = rest.iter().map(|&i| labels[i]).collect();
            kd_data::balanced_subset(&rest_labels, n, subset_seed).into_iter().map(|j| rest[j]).collect()
        }
        Some(n) if n > rest.len() => bail!(
            "data.train_limit = {n} but only {} training examples remain after holding out \
             data.validation_size = {size}",
            rest.len()
        ),
        _ => rest,
    };
    Ok((train, validation))
}

/// The training and evaluation splits of a run: in validation mode both come from the training
/// split (the eval split is not loaded); otherwise the recipe's train and eval splits.
pub fn load_splits(hub: &HubCache, d: &DataSection) -> Result<(Split, Split)> {
    let Some(size) = d.validation_size else {
        let train = load_split(hub, d, &d.train_split, d.train_limit)?;
        let eval = load_split(hub, d, &d.eval_split, d.eval_limit)?;
        return Ok((train, eval));
    };
    let all = load_split(hub, d, &d.train_split, None)?;
    let (train, validation) =
        carve(&all.dataset.labels, size, validation_seed(d), d.train_limit, d.subset_seed)
            .map_err(|e| anyhow::anyhow!("{} split `{}`: {e}", d.hub, d.train_split))?;
    let train = Split { dataset: all.dataset.clone(), indices: std::sync::Arc::new(train) };
    let validation = Split { dataset: all.dataset, indices: std::sync::Arc::new(validation) };
    Ok((train, validation))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(n: usize, classes: u32) -> Vec<u32> {
        (0..n as u32).map(|i| (i * 7 + i / 3) % classes).collect()
    }

    #[test]
    fn held_out_part_is_balanced_disjoint_and_seeded() {
        let l = labels(1000, 10);
        let (train, val) = carve(&l, 100, 3, None, 0).unwrap();
        assert_eq!(val.len(), 100);
        assert_eq!(train.len(), 900);
        let mut seen = vec![0u8; l.len()];
        for &i in train.iter().chain(&val) {
            seen[i] += 1;
        }
        assert!(seen.iter().all(|&c| c == 1), "train and validation partition the split");
        for c in 0..10 {
            assert_eq!(val.iter().filter(|&&i| l[i] == c).count(), 10, "class {c}");
        }
        assert_eq!(carve(&l, 100, 3, None, 0).unwrap().1, val, "same seed, same part");
        assert_ne!(carve(&l, 100, 4, None, 0).unwrap().1, val, "another seed, another part");
    }

    #[test]
    fn train_limit_applies_to_the_rest() {
        let l = labels(1000, 10);
        let (train, val) = carve(&l, 200, 0, Some(300), 0).unwrap();
        assert_eq!((train.len(), val.len()), (300, 200));
        assert!(train.iter().all(|i| !val.contains(i)));
        for c in 0..10 {
            assert_eq!(train.iter().filter(|&&i| l[i] == c).count(), 30);
        }
        let e = carve(&l, 200, 0, Some(900), 0).unwrap_err().to_string();
        assert!(e.contains("train_limit = 900") && e.contains("800"), "{e}");
        let e = carve(&l, 1000, 0, None, 0).unwrap_err().to_string();
        assert!(e.contains("validation_size = 1000"), "{e}");
    }
}
