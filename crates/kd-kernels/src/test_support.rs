//! Helpers shared by the kernels' unit tests.

/// `len` pseudo-random values in `[-1, 1]` (xorshift, so tests need no RNG crate).
pub(crate) fn data(len: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s % 2001) as f32 / 1000.0 - 1.0
        })
        .collect()
}

/// Every element within `2e-5` of the largest magnitude in `want` (at least 1).
pub(crate) fn assert_close(want: &[f32], got: &[f32], what: &str) {
    assert_eq!(want.len(), got.len(), "{what}");
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs())).max(1.0);
    for (i, (a, b)) in want.iter().zip(got).enumerate() {
        assert!((a - b).abs() <= 2e-5 * scale, "{what} at {i}: {a} vs {b}");
    }
}
