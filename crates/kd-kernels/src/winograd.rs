//! 3×3 stride-1 convolutions with padding 1 by Winograd's minimal filtering F(2×2, 3×3)
//! (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks", 2016).
//!
//! Each 2×2 output tile is `Aᵀ [Σ_c (G g Gᵀ) ⊙ (Bᵀ d B)] A` over its 4×4 input tile `d`: after
//! the input and weight transforms the channel sums are 16 independent GEMMs (one per position
//! `ξ` of the 4×4 transformed tile) over all tiles, with 2.25× fewer multiplications than the
//! direct convolution. The transforms only add and halve, so fp32 results stay within a few
//! ulps of the direct sum (tested against the im2col path).
//!
//! - Forward: `M_ξ (tiles × O) = V_ξ (tiles × C) · U_ξ (C × O)`, then the output transform.
//! - Input gradient: the same convolution of `dY` with the flipped, transposed kernel.
//! - Weight gradient (the adjoint of the forward): `Z_ξ (C × O) = Σ_tiles V_ξᵀ · D_ξ` with
//!   `D = A dY Aᵀ`, then `dW = Gᵀ Z G`.
//!
//! Images are processed in groups sized so that the transformed tiles stay in L2, groups in
//! parallel on rayon, each GEMM single threaded (as in [`crate::conv2d`]).

use rayon::prelude::*;

use crate::conv2d::apply_epilogue;
use crate::conv_eval::Epilogue;
use crate::cpu::{matmul_strided, partitioned_sum, uninit_f32, with_scratch, MatRef};
use crate::im2col::ConvGeom;
use crate::parity;
use crate::simd::multiversion;

/// Positions of the transformed 4×4 tile: one GEMM each.
const XI: usize = 16;

/// gemm reads a column-major operand in place only when its row count is a multiple of the
/// SIMD width; the tile count is padded to it.
const ROW_ALIGN: usize = 16;

/// Floats of transformed tiles per group (input and output side together) the grouping aims
/// for: about half of this CPU's 1 MiB L2 per core.
const GROUP_FLOATS: usize = 128 * 1024;

/// Below this many channels on either side the GEMMs are too thin to pay for the transforms.
const MIN_CHANNELS: usize = 8;

/// Whether a convolution takes this path: 3×3, stride 1, padding 1, enough channels, and an
/// even height and width (the tiles then cover the image exactly; odd sizes such as ResNet-18's
/// 7×7 stage take the other paths).
pub(crate) fn applies(g: &ConvGeom) -> bool {
    g.stride == 1
        && g.k_h == 3
        && g.k_w == 3
        && g.pad == 1
        && g.in_c >= MIN_CHANNELS
        && g.out_c >= MIN_CHANNELS
        && g.in_h > 0
        && g.in_w > 0
        && g.in_h.is_multiple_of(2)
        && g.in_w.is_multiple_of(2)
}

/// The tiles of one group of images.
#[derive(Clone, Copy, Debug)]
struct Tiles {
    h: usize,
    w: usize,
    /// Tile rows and columns per image.
    th: usize,
    tw: usize,
    imgs: usize,
    /// Tiles in the group, padded to [`ROW_ALIGN`]: the GEMMs' row count.
    m: usize,
}

impl Tiles {
    fn new(h: usize, w: usize, imgs: usize) -> Tiles {
        let (th, tw) = (h.div_ceil(2), w.div_ceil(2));
        let m = (imgs * th * tw).div_ceil(ROW_ALIGN) * ROW_ALIGN;
        Tiles { h, w, th, tw, imgs, m }
    }

    fn per_image(&self) -> usize {
        self.th * self.tw
    }

    fn count(&self) -> usize {
        self.imgs * self.per_image()
    }
}

fn images_per_group(h: usize, w: usize, c: usize, o: usize, batch: usize) -> usize {
    let per_image = h.div_ceil(2) * w.div_ceil(2);
    let tiles = (GROUP_FLOATS / (XI * (c + o)).max(1)).max(ROW_ALIGN);
    tiles.div_ceil(per_image.max(1)).clamp(1, batch.max(1))
}

/// `U[ξ][c][o] = (G g Gᵀ)[ξ]` for OIHW weights `w (O, C, 3, 3)`.
fn transform_weights(w: &[f32], o: usize, c: usize) -> Vec<f32> {
    let mut u = vec![0f32; XI * c * o];
    for oc in 0..o {
        for ci in 0..c {
            let g = &w[(oc * c + ci) * 9..(oc * c + ci + 1) * 9];
            // G g: 4×3.
            let mut gg = [[0f32; 3]; 4];
            for j in 0..3 {
                let (g0, g1, g2) = (g[j], g[3 + j], g[6 + j]);
                gg[0][j] = g0;
                gg[1][j] = 0.5 * (g0 + g1 + g2);
                gg[2][j] = 0.5 * (g0 - g1 + g2);
                gg[3][j] = g2;
            }
            // (G g) Gᵀ: 4×4.
            for (r, row) in gg.iter().enumerate() {
                let (g0, g1, g2) = (row[0], row[1], row[2]);
                let t = [g0, 0.5 * (g0 + g1 + g2), 0.5 * (g0 - g1 + g2), g2];
                for (s, v) in t.into_iter().enumerate() {
                    u[((r * 4 + s) * c + ci) * o + oc] = v;
                }
            }
        }
    }
    u
}

/// The kernel of the input gradient: `w'[c][o][ki][kj] = w[o][c][2 − ki][2 − kj]`.
fn flip_weights(w: &[f32], o: usize, c: usize) -> Vec<f32> {
    let mut f = vec![0f32; w.len()];
    for oc in 0..o {
        for ci in 0..c {
            for k in 0..9 {
                f[(ci * o + oc) * 9 + k] = w[(oc * c + ci) * 9 + (8 - k)];
            }
        }
    }
    f
}

/// Keeps `v` where `mask` is all ones, zero where it is zero (exactly, even for infinities).
#[inline(always)]
fn keep(v: f32, mask: u32) -> f32 {
    f32::from_bits(v.to_bits() & mask)
}

/// Per tile of a group, whether its left, right, upper and lower neighbour tiles exist (all
/// ones) or lie outside the image (zero): the shifted reads of the transforms use them.
struct EdgeMasks {
    left: Vec<u32>,
    right: Vec<u32>,
    up: Vec<u32>,
    down: Vec<u32>,
}

impl EdgeMasks {
    fn new(t: &Tiles) -> EdgeMasks {
        let n = t.count();
        let bit = |b: bool| if b { u32::MAX } else { 0 };
        let (tx, ty) = (|i: usize| i % t.tw, |i: usize| (i / t.tw) % t.th);
        EdgeMasks {
            left: (0..n).map(|i| bit(tx(i) > 0)).collect(),
            right: (0..n).map(|i| bit(tx(i) + 1 < t.tw)).collect(),
            up: (0..n).map(|i| bit(ty(i) > 0)).collect(),
            down: (0..n).map(|i| bit(ty(i) + 1 < t.th)).collect(),
        }
    }
}

// Element-wise helpers over slices of one length, inlined into the multiversioned transforms
// (distinct slice arguments tell LLVM that they do not alias, so the loops vectorise without
// run-time overlap checks).

/// `d = a + b`.
#[inline(always)]
fn add2(d: &mut [f32], a: &[f32], b: &[f32]) {
    for ((d, &a), &b) in d.iter_mut().zip(a).zip(b) {
        *d = a + b;
    }
}

/// `d = a − b`.
#[inline(always)]
fn sub2(d: &mut [f32], a: &[f32], b: &[f32]) {
    for ((d, &a), &b) in d.iter_mut().zip(a).zip(b) {
        *d = a - b;
    }
}

/// `d = a + b + c`.
#[inline(always)]
fn add3(d: &mut [f32], a: &[f32], b: &[f32], c: &[f32]) {
    for (((d, &a), &b), &c) in d.iter_mut().zip(a).zip(b).zip(c) {
        *d = a + b + c;
    }
}

/// `d = a − b − c`.
#[inline(always)]
fn sub3(d: &mut [f32], a: &[f32], b: &[f32], c: &[f32]) {
    for (((d, &a), &b), &c) in d.iter_mut().zip(a).zip(b).zip(c) {
        *d = a - b - c;
    }
}

/// `d = keep(a, mask) − b`.
#[inline(always)]
fn masked_sub(d: &mut [f32], a: &[f32], mask: &[u32], b: &[f32]) {
    for (((d, &a), &m), &b) in d.iter_mut().zip(a).zip(mask).zip(b) {
        *d = keep(a, m) - b;
    }
}

/// `d = a − keep(b, mask)`.
#[inline(always)]
fn sub_masked(d: &mut [f32], a: &[f32], b: &[f32], mask: &[u32]) {
    for (((d, &a), &b), &m) in d.iter_mut().zip(a).zip(b).zip(mask) {
        *d = a - keep(b, m);
    }
}

multiversion! {
    /// `Bᵀ d` along the columns of the tiles, from one row parity's column sub-planes `se`
    /// (columns `2tx`) and `so` (columns `2tx + 1`): the tile's columns are `so[t − 1]`, `se[t]`,
    /// `so[t]`, `se[t + 1]`, the outer two zero at the image's left and right edges.
    fn column_pass(se: &[f32], so: &[f32], m: &EdgeMasks, a: &mut [f32]) {
        let n = se.len();
        let (a0, rest) = a.split_at_mut(n);
        let (a1, rest) = rest.split_at_mut(n);
        let (a2, a3) = rest.split_at_mut(n);
        // The first tile has no left neighbour, the last no right one.
        a0[0] = -so[0];
        masked_sub(&mut a0[1..], &so[..n - 1], &m.left[1..n], &so[1..n]);
        add2(a1, se, so);
        sub2(a2, so, se);
        sub_masked(&mut a3[..n - 1], &se[..n - 1], &se[1..], &m.right[..n - 1]);
        a3[n - 1] = se[n - 1];
    }
}

multiversion! {
    /// `V = (Bᵀ d) B` down the rows of the tiles, from the column passes of the even (`ae`,
    /// rows `2ty`) and odd (`ao`, rows `2ty + 1`) rows: the tile's rows are `ao[t − tw]`, `ae[t]`,
    /// `ao[t]`, `ae[t + tw]`. Writes `v[ξ·stride + t]`, `ξ = 4r + s`.
    fn row_pass(ae: &[f32], ao: &[f32], tw: usize, m: &EdgeMasks, v: &mut [f32], stride: usize) {
        let n = m.up.len();
        let tw = tw.min(n);
        for s in 0..4 {
            let e = &ae[s * n..(s + 1) * n];
            let o = &ao[s * n..(s + 1) * n];
            // The first tile row has no row above, the last none below.
            let v0 = &mut v[s * stride..s * stride + n];
            for (d, &x) in v0[..tw].iter_mut().zip(o) {
                *d = -x;
            }
            masked_sub(&mut v0[tw..], &o[..n - tw], &m.up[tw..], &o[tw..]);
            add2(&mut v[(4 + s) * stride..(4 + s) * stride + n], e, o);
            sub2(&mut v[(8 + s) * stride..(8 + s) * stride + n], o, e);
            let v3 = &mut v[(12 + s) * stride..(12 + s) * stride + n];
            sub_masked(&mut v3[..n - tw], &e[..n - tw], &e[tw..], &m.down[..n - tw]);
            v3[n - tw..].copy_from_slice(&e[n - tw..]);
        }
    }
}

/// Splits channel `ch` of `imgs` NCHW images (`c` channels) into parity sub-planes laid out by
/// tile: `sub[k·n + i·th·tw + ty·tw + tx]`, `k` = ee, eo, oe, oo.
fn split_channel(t: &Tiles, c: usize, ch: usize, x: &[f32], sub: &mut [f32]) {
    let (hw, pi, n) = (t.h * t.w, t.per_image(), t.count());
    let (ee, rest) = sub.split_at_mut(n);
    let (eo, rest) = rest.split_at_mut(n);
    let (oe, oo) = rest.split_at_mut(n);
    for i in 0..t.imgs {
        let plane = &x[(i * c + ch) * hw..(i * c + ch + 1) * hw];
        let r = i * pi..(i + 1) * pi;
        parity::split(plane, t.w, &mut ee[r.clone()], &mut eo[r.clone()], &mut oe[r.clone()], &mut oo[r]);
    }
}

/// Transforms the input tiles of `imgs` NCHW images (`c` channels) into `v[ξ][c][m]`; the
/// padding tiles `count .. m` are zero.
fn input_transform(t: &Tiles, masks: &EdgeMasks, c: usize, x: &[f32], v: &mut [f32]) {
    let n = t.count();
    let mut scratch = vec![0f32; 12 * n];
    let (sub, a) = scratch.split_at_mut(4 * n);
    let stride = c * t.m;
    for ch in 0..c {
        split_channel(t, c, ch, x, sub);
        let (ae, ao) = a.split_at_mut(4 * n);
        column_pass(&sub[..n], &sub[n..2 * n], masks, ae);
        column_pass(&sub[2 * n..3 * n], &sub[3 * n..], masks, ao);
        row_pass(ae, ao, t.tw, masks, &mut v[ch * t.m..], stride);
        for xi in 0..XI {
            v[xi * stride + ch * t.m + n..xi * stride + (ch + 1) * t.m].fill(0.0);
        }
    }
}

multiversion! {
    /// `Aᵀ M A` for every tile of one output channel (`mm[ξ·stride + t]`) into the four parity
    /// sub-planes of the output, `y[k·n + t]` (k = ee, eo, oe, oo); `u` is scratch of `8n`.
    fn output_transform(mm: &[f32], stride: usize, u: &mut [f32], y: &mut [f32]) {
        let n = y.len() / 4;
        let p = |xi: usize| &mm[xi * stride..xi * stride + n];
        // Rows of Aᵀ M, per column s: u0 = m0 + m1 + m2, u1 = m1 − m2 − m3.
        let (u0, u1) = u.split_at_mut(4 * n);
        for s in 0..4 {
            add3(&mut u0[s * n..(s + 1) * n], p(s), p(4 + s), p(8 + s));
            sub3(&mut u1[s * n..(s + 1) * n], p(4 + s), p(8 + s), p(12 + s));
        }
        // Then the same along the columns.
        let (ee, rest) = y.split_at_mut(n);
        let (eo, rest) = rest.split_at_mut(n);
        let (oe, oo) = rest.split_at_mut(n);
        fn col(u: &[f32], n: usize, s: usize) -> &[f32] {
            &u[s * n..(s + 1) * n]
        }
        add3(ee, col(u0, n, 0), col(u0, n, 1), col(u0, n, 2));
        sub3(eo, col(u0, n, 1), col(u0, n, 2), col(u0, n, 3));
        add3(oe, col(u1, n, 0), col(u1, n, 1), col(u1, n, 2));
        sub3(oo, col(u1, n, 1), col(u1, n, 2), col(u1, n, 3));
    }
}

/// Writes the output tiles `mm[ξ][o][m]` of a group into `imgs` NCHW images (`o` channels).
fn output_tiles(t: &Tiles, o: usize, mm: &[f32], y: &mut [f32]) {
    let (hw, pi, n) = (t.h * t.w, t.per_image(), t.count());
    let stride = o * t.m;
    let mut scratch = vec![0f32; 12 * n];
    let (u, sub) = scratch.split_at_mut(8 * n);
    for oc in 0..o {
        output_transform(&mm[oc * t.m..], stride, u, sub);
        let (ee, rest) = sub.split_at(n);
        let (eo, rest) = rest.split_at(n);
        let (oe, oo) = rest.split_at(n);
        for i in 0..t.imgs {
            let r = i * pi..(i + 1) * pi;
            let plane = &mut y[(i * o + oc) * hw..(i * o + oc + 1) * hw];
            parity::merge(&ee[r.clone()], &eo[r.clone()], &oe[r.clone()], &oo[r], t.w, plane);
        }
    }
}

/// The convolution of `x (N, c, h, w)` into `y (N, o, h, w)` with transformed weights `u`,
/// `after(group index, images per group, chunk)` on each group's output while it is in cache.
#[allow(clippy::too_many_arguments)]
fn winograd_conv(
    h: usize,
    w: usize,
    c: usize,
    o: usize,
    x: &[f32],
    u: &[f32],
    y: &mut [f32],
    after: impl Fn(usize, usize, &mut [f32]) + Sync,
) {
    let (in_image, out_image) = (c * h * w, o * h * w);
    let batch = y.len() / out_image.max(1);
    let group = images_per_group(h, w, c, o, batch);
    y.par_chunks_mut(group * out_image).enumerate().for_each(|(gi, y_chunk)| {
        let imgs = y_chunk.len() / out_image;
        let t = Tiles::new(h, w, imgs);
        let xs = &x[gi * group * in_image..(gi * group + imgs) * in_image];
        let (v_len, m_len) = (XI * c * t.m, XI * o * t.m);
        with_scratch(v_len + m_len, |scratch| {
            let (v, mm) = scratch.split_at_mut(v_len);
            input_transform(&t, &EdgeMasks::new(&t), c, xs, v);
            for xi in 0..XI {
                let lhs = MatRef { data: &v[xi * c * t.m..(xi + 1) * c * t.m], rs: 1, cs: t.m };
                let rhs = MatRef { data: &u[xi * c * o..(xi + 1) * c * o], rs: o, cs: 1 };
                let dst = &mut mm[xi * o * t.m..(xi + 1) * o * t.m];
                matmul_strided(t.m, o, c, dst, 1, t.m, false, lhs, rhs);
            }
            output_tiles(&t, o, mm, y_chunk);
        });
        after(gi, group, y_chunk);
    });
}

/// Forward: `y (N, O, H, W)` of `x (N, C, H, W)` with `w (O, C, 3, 3)`, then `epi` on each
/// output plane of a group while it is in cache.
pub(crate) fn forward_with(g: &ConvGeom, x: &[f32], w: &[f32], epi: Option<&Epilogue>) -> Vec<f32> {
    let mut y = uninit_f32(g.batch * g.out_image());
    if y.is_empty() {
        return y;
    }
    let u = transform_weights(w, g.out_c, g.in_c);
    winograd_conv(g.in_h, g.in_w, g.in_c, g.out_c, x, &u, &mut y, |gi, group, chunk| {
        if let Some(epi) = epi {
            apply_epilogue(g, epi, gi * group, chunk);
        }
    });
    y
}

/// Gradients of the convolution: `(dx, dw)`, each only if asked for.
pub(crate) fn backward(
    g: &ConvGeom,
    x: &[f32],
    w: &[f32],
    dy: &[f32],
    need_dx: bool,
    need_dw: bool,
) -> (Option<Vec<f32>>, Option<Vec<f32>>) {
    let (c, o) = (g.in_c, g.out_c);
    let dx = need_dx.then(|| {
        let mut dx = uninit_f32(g.batch * g.in_image());
        if !dx.is_empty() {
            let u = transform_weights(&flip_weights(w, o, c), c, o);
            winograd_conv(g.in_h, g.in_w, o, c, dy, &u, &mut dx, |_, _, _| {});
        }
        dx
    });
    let dw = need_dw.then(|| weight_grad(g, x, dy));
    (dx, dw)
}

multiversion! {
    /// `D = A q Aᵀ` for every tile of one output-gradient channel, from its parity sub-planes
    /// (`q[k·n + t]`, k = ee, eo, oe, oo), into `d[ξ·stride + t]`.
    fn grad_transform(q: &[f32], d: &mut [f32], stride: usize) {
        let n = q.len() / 4;
        let (q00, q01, q10, q11) = (&q[..n], &q[n..2 * n], &q[2 * n..3 * n], &q[3 * n..]);
        // Along the columns: z = (q0, q0 + q1, q0 − q1, −q1); then D rows = (z0, z0 + z1, z0 − z1, −z1).
        let z = |s: usize, a: &[f32], b: &[f32], t: usize| match s {
            0 => a[t],
            1 => a[t] + b[t],
            2 => a[t] - b[t],
            _ => -b[t],
        };
        for s in 0..4 {
            for t in 0..n {
                let (z0, z1) = (z(s, q00, q01, t), z(s, q10, q11, t));
                d[s * stride + t] = z0;
                d[(4 + s) * stride + t] = z0 + z1;
                d[(8 + s) * stride + t] = z0 - z1;
                d[(12 + s) * stride + t] = -z1;
            }
        }
    }
}

/// Transforms the output-gradient tiles of `imgs` images (`o` channels) into `d[ξ][o][m]`; the
/// padding tiles are zero so that they add nothing.
fn grad_tiles(t: &Tiles, o: usize, dy: &[f32], d: &mut [f32]) {
    let n = t.count();
    let stride = o * t.m;
    let mut sub = vec![0f32; 4 * n];
    for oc in 0..o {
        split_channel(t, o, oc, dy, &mut sub);
        grad_transform(&sub, &mut d[oc * t.m..], stride);
        for xi in 0..XI {
            d[xi * stride + oc * t.m + n..xi * stride + (oc + 1) * t.m].fill(0.0);
        }
    }
}

/// `dW = Gᵀ (Σ_groups Σ_tiles V_ξᵀ D_ξ) G`, summed deterministically ([`partitioned_sum`]).
fn weight_grad(g: &ConvGeom, x: &[f32], dy: &[f32]) -> Vec<f32> {
    let (c, o, h, w) = (g.in_c, g.out_c, g.in_h, g.in_w);
    let group = images_per_group(h, w, c, o, g.batch);
    let groups = g.batch.div_ceil(group.max(1));
    let (in_image, out_image) = (g.in_image(), g.out_image());
    let process = |gi: usize, acc: &mut [f32]| {
        let n0 = gi * group;
        let imgs = group.min(g.batch - n0);
        let t = Tiles::new(h, w, imgs);
        let (v_len, d_len) = (XI * c * t.m, XI * o * t.m);
        with_scratch(v_len + d_len, |scratch| {
            let (v, d) = scratch.split_at_mut(v_len);
            input_transform(&t, &EdgeMasks::new(&t), c, &x[n0 * in_image..(n0 + imgs) * in_image], v);
            grad_tiles(&t, o, &dy[n0 * out_image..(n0 + imgs) * out_image], d);
            for xi in 0..XI {
                let lhs = MatRef { data: &v[xi * c * t.m..(xi + 1) * c * t.m], rs: t.m, cs: 1 };
                let rhs = MatRef { data: &d[xi * o * t.m..(xi + 1) * o * t.m], rs: 1, cs: t.m };
                let dst = &mut acc[xi * c * o..(xi + 1) * c * o];
                matmul_strided(c, o, t.m, dst, o, 1, true, lhs, rhs);
            }
        })
    };
    let z = partitioned_sum(groups, XI * c * o, process);
    // dW[o][c] = Gᵀ Z[c][o] G, Gᵀ = [[1, ½, ½, 0], [0, ½, −½, 0], [0, ½, ½, 1]].
    let mut dw = vec![0f32; o * c * 9];
    for ci in 0..c {
        for oc in 0..o {
            let zz = |r: usize, s: usize| z[((r * 4 + s) * c + ci) * o + oc];
            // Gᵀ Z: 3×4.
            let mut gz = [[0f32; 4]; 3];
            for (s, col) in (0..4).map(|s| (s, [zz(0, s), zz(1, s), zz(2, s), zz(3, s)])) {
                gz[0][s] = col[0] + 0.5 * (col[1] + col[2]);
                gz[1][s] = 0.5 * (col[1] - col[2]);
                gz[2][s] = 0.5 * (col[1] + col[2]) + col[3];
            }
            let out = &mut dw[(oc * c + ci) * 9..(oc * c + ci + 1) * 9];
            for (a, row) in gz.iter().enumerate() {
                out[a * 3] = row[0] + 0.5 * (row[1] + row[2]);
                out[a * 3 + 1] = 0.5 * (row[1] - row[2]);
                out[a * 3 + 2] = 0.5 * (row[1] + row[2]) + row[3];
            }
        }
    }
    dw
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conv2d::{conv2d_backward, conv2d_forward, conv_geom};
    use crate::test_support::{assert_close, data};

    /// Square and oblong, 2×2 (one tile), more images than one group, padding tiles.
    const SHAPES: &[(usize, usize, usize, usize, usize)] = &[
        (3, 8, 9, 6, 4),
        (20, 16, 16, 8, 8),
        (2, 8, 12, 4, 10),
        (3, 8, 8, 2, 2),
        (5, 32, 16, 16, 16),
        (40, 64, 64, 8, 8),
    ];

    #[test]
    fn forward_matches_im2col_path() {
        for &(n, c, o, h, w) in SHAPES {
            let g = conv_geom(&[n, c, h, w], &[o, c, 3, 3], 1, 1).unwrap();
            assert!(applies(&g));
            let x = data(n * c * h * w, 1);
            let wt = data(o * c * 9, 2);
            let want = conv2d_forward(&g, &x, &wt);
            let got = forward_with(&g, &x, &wt, None);
            assert_close(&want, &got, &format!("y n{n} c{c} o{o} {h}x{w}"));
        }
    }

    #[test]
    fn gradients_match_im2col_path() {
        for &(n, c, o, h, w) in SHAPES {
            let g = conv_geom(&[n, c, h, w], &[o, c, 3, 3], 1, 1).unwrap();
            let x = data(n * c * h * w, 3);
            let wt = data(o * c * 9, 4);
            let dy = data(n * o * h * w, 5);
            let (want_dx, want_dw) = conv2d_backward(&g, &x, &wt, &dy, true, true);
            let (dx, dw) = backward(&g, &x, &wt, &dy, true, true);
            let what = format!("n{n} c{c} o{o} {h}x{w}");
            assert_close(&want_dx.unwrap(), &dx.unwrap(), &format!("dx {what}"));
            assert_close(&want_dw.unwrap(), &dw.unwrap(), &format!("dw {what}"));
        }
    }

    #[test]
    fn applies_only_to_3x3_stride_1_same() {
        let ok = conv_geom(&[1, 16, 8, 8], &[16, 16, 3, 3], 1, 1).unwrap();
        assert!(applies(&ok));
        for (xd, wd, s, p) in [
            ([1, 16, 8, 8], [16, 16, 3, 3], 2, 1),
            ([1, 16, 8, 8], [16, 16, 1, 1], 1, 0),
            ([1, 16, 8, 8], [16, 16, 3, 3], 1, 0),
            ([1, 3, 8, 8], [16, 3, 3, 3], 1, 1),
            ([1, 16, 7, 7], [16, 16, 3, 3], 1, 1),
        ] {
            assert!(!applies(&conv_geom(&xd, &wd, s, p).unwrap()), "{xd:?} {wd:?} s{s} p{p}");
        }
    }
}
