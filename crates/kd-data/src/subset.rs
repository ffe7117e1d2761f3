//! Class-balanced, seeded subsets (`train_limit`, `eval_limit`).

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// `limit` indices with classes as equal as possible (classes that run short give their
/// share to the others; when `limit` does not divide evenly, the lower class ids get one more),
/// chosen by `seed` (ChaCha8), returned sorted in original order. `limit >= labels.len()`
/// gives every index.
pub fn balanced_subset(labels: &[u32], limit: usize, seed: u64) -> Vec<usize> {
    if limit >= labels.len() {
        return (0..labels.len()).collect();
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    // Only the labels present (a sparse map: a stray huge label must not allocate its range).
    let mut by_class: std::collections::BTreeMap<u32, Vec<usize>> = std::collections::BTreeMap::new();
    for (i, &l) in labels.iter().enumerate() {
        by_class.entry(l).or_default().push(i);
    }
    let mut by_class: Vec<Vec<usize>> = by_class.into_values().collect();
    for c in &mut by_class {
        c.shuffle(&mut rng);
    }
    // Round-robin over classes: each pass takes one more from every class that has one.
    let mut picked = Vec::with_capacity(limit);
    let mut depth = 0;
    while picked.len() < limit {
        let before = picked.len();
        for c in &by_class {
            if picked.len() == limit {
                break;
            }
            if let Some(&i) = c.get(depth) {
                picked.push(i);
            }
        }
        if picked.len() == before {
            break;
        }
        depth += 1;
    }
    picked.sort_unstable();
    picked
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn balanced_and_deterministic() {
        let labels: Vec<u32> = (0..1000).map(|i| (i % 10) as u32).collect();
        let a = balanced_subset(&labels, 200, 7);
        assert_eq!(a, balanced_subset(&labels, 200, 7));
        assert_ne!(a, balanced_subset(&labels, 200, 8));
        let mut counts = [0; 10];
        for &i in &a {
            counts[labels[i] as usize] += 1;
        }
        assert_eq!(counts, [20; 10]);
        assert!(a.windows(2).all(|w| w[0] < w[1]), "original order");
    }

    #[test]
    fn short_classes_give_their_share_to_others() {
        let mut labels = vec![0u32; 3];
        labels.extend(vec![1u32; 50]);
        let a = balanced_subset(&labels, 20, 0);
        assert_eq!(a.len(), 20);
        assert_eq!(a.iter().filter(|&&i| labels[i] == 0).count(), 3);
    }
}
