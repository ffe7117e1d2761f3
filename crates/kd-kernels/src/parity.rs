//! Splitting a plane into its four parity sub-planes (even/odd rows × even/odd columns) and
//! merging them back: the layout change around the Winograd transforms.
//!
//! Plain loops, compiled for AVX-512/AVX2 by `multiversion!`. Register permutes
//! (`vpermt2ps` over two or four short rows at once) were tried and measured no faster on a
//! ResNet-20 step or on the 8×8 layer alone (single-thread task-clock), so they are not kept.

use crate::simd::multiversion;

/// `ee[ty·tw + tx] = plane[2ty][2tx]`, `eo` odd columns, `oe` odd rows, `oo` both odd, for a
/// `(h, w)` plane with `h` and `w` even (`tw = w / 2`).
pub(crate) fn split(plane: &[f32], w: usize, ee: &mut [f32], eo: &mut [f32], oe: &mut [f32], oo: &mut [f32]) {
    let quarter = plane.len() / 4;
    assert!(
        w > 0
            && plane.len().is_multiple_of(2 * w)
            && [&*ee, &*eo, &*oe, &*oo].iter().all(|s| s.len() == quarter),
        "parity::split: plane of {} floats, width {w}, sub-planes of {}/{}/{}/{}",
        plane.len(),
        ee.len(),
        eo.len(),
        oe.len(),
        oo.len()
    );
    split_loops(plane, w, ee, eo, oe, oo);
}

/// The inverse of [`split`].
pub(crate) fn merge(ee: &[f32], eo: &[f32], oe: &[f32], oo: &[f32], w: usize, plane: &mut [f32]) {
    let quarter = plane.len() / 4;
    assert!(
        w > 0 && plane.len().is_multiple_of(2 * w) && [ee, eo, oe, oo].iter().all(|s| s.len() == quarter),
        "parity::merge: plane of {} floats, width {w}, sub-planes of {}/{}/{}/{}",
        plane.len(),
        ee.len(),
        eo.len(),
        oe.len(),
        oo.len()
    );
    merge_loops(ee, eo, oe, oo, w, plane);
}

multiversion! {
fn split_loops(plane: &[f32], w: usize, ee: &mut [f32], eo: &mut [f32], oe: &mut [f32], oo: &mut [f32]) {
    let tw = w / 2;
    for (ty, rows) in plane.chunks_exact(2 * w).enumerate() {
        let (top, bottom) = rows.split_at(w);
        let r = ty * tw..(ty + 1) * tw;
        for ((pair, e), o) in top.chunks_exact(2).zip(&mut ee[r.clone()]).zip(&mut eo[r.clone()]) {
            *e = pair[0];
            *o = pair[1];
        }
        for ((pair, e), o) in bottom.chunks_exact(2).zip(&mut oe[r.clone()]).zip(&mut oo[r.clone()]) {
            *e = pair[0];
            *o = pair[1];
        }
    }
}
}

multiversion! {
fn merge_loops(ee: &[f32], eo: &[f32], oe: &[f32], oo: &[f32], w: usize, plane: &mut [f32]) {
    let tw = w / 2;
    for (ty, rows) in plane.chunks_exact_mut(2 * w).enumerate() {
        let (top, bottom) = rows.split_at_mut(w);
        let r = ty * tw..(ty + 1) * tw;
        for ((pair, &e), &o) in top.chunks_exact_mut(2).zip(&ee[r.clone()]).zip(&eo[r.clone()]) {
            pair[0] = e;
            pair[1] = o;
        }
        for ((pair, &e), &o) in bottom.chunks_exact_mut(2).zip(&oe[r.clone()]).zip(&oo[r.clone()]) {
            pair[0] = e;
            pair[1] = o;
        }
    }
}
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every sub-plane element against its definition, and merge as the inverse of split.
    #[test]
    fn split_matches_the_definition_and_merge_inverts_it() {
        for &(h, w) in &[(8, 8), (16, 16), (32, 32), (4, 64), (6, 8), (4, 12), (2, 2)] {
            let plane: Vec<f32> = (0..h * w).map(|i| i as f32 * 0.5 - 3.0).collect();
            let (th, tw) = (h / 2, w / 2);
            let mut sub = vec![vec![0f32; th * tw]; 4];
            {
                let [ee, eo, oe, oo] = &mut sub[..] else { unreachable!() };
                split(&plane, w, ee, eo, oe, oo);
            }
            for ty in 0..th {
                for tx in 0..tw {
                    for (k, s) in sub.iter().enumerate() {
                        let (dy, dx) = (k / 2, k % 2);
                        assert_eq!(s[ty * tw + tx], plane[(2 * ty + dy) * w + 2 * tx + dx], "{h}x{w} k{k}");
                    }
                }
            }
            let mut back = vec![f32::NAN; h * w];
            merge(&sub[0], &sub[1], &sub[2], &sub[3], w, &mut back);
            assert_eq!(back, plane, "merge {h}x{w}");
        }
    }
}
