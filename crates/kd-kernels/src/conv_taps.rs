//! Stride-1 "same" convolutions (k×k kernel, padding (k−1)/2) as k² GEMMs over a zero-padded,
//! channel-major copy of the input, with no im2col.
//!
//! A group of images is copied once into a buffer laid out as `(C, rows, wp)`: each image's rows
//! are `w` values followed by `p` zeros (`wp = w + p`), images are separated by `p` zero rows.
//! With that layout the input value under kernel tap `(ki, kj)` for output position `q` sits at
//! `buf[c·plane + q + ki·wp + kj]`: for every tap the "column matrix" is the buffer itself at an
//! offset, a column-major `(positions × C)` matrix that gemm reads in place. The outputs come
//! out on the same virtual grid (`p` junk columns per row, `p` junk rows per image) and are copied
//! out to NCHW. The junk costs `(h+p)(w+p)/(h·w) − 1` extra GEMM work (6% at 32×32, 27% at 8×8)
//! and saves writing and reading a column matrix k² times the input's size.
//!
//! The same layout gives the input gradient (a "same" convolution of the output gradient with
//! the flipped, transposed kernel) and the weight gradient (per tap, `dYᵀ · window`).

use rayon::prelude::*;

use crate::conv2d::apply_epilogue;
use crate::conv_eval::Epilogue;
use crate::cpu::{matmul_strided, partitioned_sum, with_scratch, MatRef};
use crate::im2col::ConvGeom;

/// Virtual positions per GEMM that the grouping of images aims for.
const GROUP_POSITIONS: usize = 1024;

/// gemm reads a column-major left operand in place only when its row count is a multiple of
/// the SIMD width; otherwise it packs it first.
const ROW_ALIGN: usize = 16;

/// Whether a convolution takes this path: stride 1, odd square kernel, "same" padding, and a
/// grid where the junk positions cost at most [`MAX_JUNK`] extra work (measured: at 8×8 the
/// 27% junk makes it slower than im2col; at 16×16 and up it is faster).
pub(crate) fn applies(g: &ConvGeom) -> bool {
    let same = g.stride == 1 && g.k_h == g.k_w && g.k_h % 2 == 1 && g.k_h > 1 && g.pad == g.k_h / 2;
    let grid = (g.in_h + g.pad) * (g.in_w + g.pad);
    same && (grid as f64) <= (1.0 + MAX_JUNK) * (g.in_h * g.in_w) as f64
}

/// The largest fraction of junk grid positions the tap path accepts.
const MAX_JUNK: f64 = 0.15;

/// Geometry of one group of `imgs` images on the padded grid.
#[derive(Clone, Copy, Debug)]
struct Grid {
    k: usize,
    p: usize,
    h: usize,
    w: usize,
    /// Row length on the grid: `w + p`.
    wp: usize,
    /// Grid rows per image: `h + p`.
    rows: usize,
    imgs: usize,
    /// Virtual output positions (GEMM rows), rounded up to [`ROW_ALIGN`].
    m: usize,
    /// Length of one channel's plane in the padded buffer.
    plane: usize,
}

impl Grid {
    fn new(k: usize, h: usize, w: usize, imgs: usize) -> Grid {
        let p = k / 2;
        let (wp, rows) = (w + p, h + p);
        let m = (imgs * rows * wp).div_ceil(ROW_ALIGN) * ROW_ALIGN;
        // The largest index a tap reads is (m − 1) + (k − 1)·wp + (k − 1); the data's last
        // value sits at p + (p + imgs·rows − p − 1)·wp + w − 1, which is smaller.
        let plane = (m + (k - 1) * wp + k).div_ceil(ROW_ALIGN) * ROW_ALIGN;
        Grid { k, p, h, w, wp, rows, imgs, m, plane }
    }

    /// Where image `i`, row `y`, column `x` of the data sits in a channel's plane.
    fn data_index(&self, i: usize, y: usize, x: usize) -> usize {
        self.p + (self.p + i * self.rows + y) * self.wp + x
    }

    /// The virtual output position of image `i`, row `y`, column `x`.
    fn out_index(&self, i: usize, y: usize, x: usize) -> usize {
        (i * self.rows + y) * self.wp + x
    }
}

fn images_per_group(g: &ConvGeom) -> usize {
    let per_image = (g.in_h + g.pad) * (g.in_w + g.pad);
    // Keep the k shifted copies of the group's input within about half of a 1 MiB L2.
    let by_cache = BUFFER_FLOATS / (g.k_w * g.in_c).max(1);
    let positions = GROUP_POSITIONS.min(by_cache.max(ROW_ALIGN));
    positions.div_ceil(per_image.max(1)).clamp(1, g.batch.max(1))
}

/// Floats of padded input per group the grouping aims for.
const BUFFER_FLOATS: usize = 128 * 1024;

/// Copies `imgs` NCHW images (`c` channels each) into the padded buffer: `k` copies of the
/// channel-major grid, copy `kj` shifted left by `kj`, so that the `k` taps of one kernel row
/// become one GEMM with `k·c` columns of uniform stride.
fn pad_images(grid: &Grid, c: usize, src: &[f32], buf: &mut [f32]) {
    let (h, w) = (grid.h, grid.w);
    for kj in 0..grid.k {
        for ch in 0..c {
            let plane = &mut buf[(kj * c + ch) * grid.plane..(kj * c + ch + 1) * grid.plane];
            let mut cursor = 0;
            for i in 0..grid.imgs {
                let src_plane = &src[(i * c + ch) * h * w..(i * c + ch + 1) * h * w];
                for y in 0..h {
                    let d = grid.data_index(i, y, 0) - kj;
                    plane[cursor..d].fill(0.0);
                    plane[d..d + w].copy_from_slice(&src_plane[y * w..(y + 1) * w]);
                    cursor = d + w;
                }
            }
            plane[cursor..].fill(0.0);
        }
    }
}

/// Copies the valid outputs of the virtual grid (`(O, m)`) into `imgs` NCHW images.
fn unpad_outputs(grid: &Grid, o: usize, virt: &[f32], dst: &mut [f32]) {
    let (h, w) = (grid.h, grid.w);
    for i in 0..grid.imgs {
        for oc in 0..o {
            let out_plane = &mut dst[(i * o + oc) * h * w..(i * o + oc + 1) * h * w];
            let v = &virt[oc * grid.m..(oc + 1) * grid.m];
            for y in 0..h {
                let s = grid.out_index(i, y, 0);
                out_plane[y * w..(y + 1) * w].copy_from_slice(&v[s..s + w]);
            }
        }
    }
}

/// `virt (m × O, column-major) = Σ_ki window_ki (m × k·C) · W_ki (k·C × O)`, `packed_w` holding
/// `W_ki[kj·C + c, o]` at `((ki·k + kj)·C + c)·O + o`.
fn tap_gemms(grid: &Grid, c: usize, o: usize, buf: &[f32], packed_w: &[f32], virt: &mut [f32]) {
    let (k, kc) = (grid.k, grid.k * c);
    for ki in 0..k {
        let lhs = MatRef { data: &buf[ki * grid.wp..], rs: 1, cs: grid.plane };
        let rhs = MatRef { data: &packed_w[ki * kc * o..(ki + 1) * kc * o], rs: o, cs: 1 };
        matmul_strided(grid.m, o, kc, virt, 1, grid.m, ki > 0, lhs, rhs);
    }
}

/// OIHW weights `w (O, C, k, k)` as `(ki, kj, c, o)`: one `(k·C × O)` matrix per kernel row.
fn pack_weights(w: &[f32], o: usize, c: usize, k: usize) -> Vec<f32> {
    let mut packed = vec![0f32; w.len()];
    for oc in 0..o {
        for ci in 0..c {
            for ki in 0..k {
                for kj in 0..k {
                    packed[((ki * k + kj) * c + ci) * o + oc] = w[((oc * c + ci) * k + ki) * k + kj];
                }
            }
        }
    }
    packed
}

/// Forward: `y (N, O, H, W)` of `x (N, C, H, W)` with `w (O, C, k, k)`.
#[cfg(test)]
pub(crate) fn forward(g: &ConvGeom, x: &[f32], w: &[f32]) -> Vec<f32> {
    forward_with(g, x, w, None)
}

/// [`forward`], then `epi` on each output plane of a group while it is in cache.
pub(crate) fn forward_with(g: &ConvGeom, x: &[f32], w: &[f32], epi: Option<&Epilogue>) -> Vec<f32> {
    let mut y = vec![0f32; g.batch * g.out_image()];
    if y.is_empty() {
        return y;
    }
    let packed = pack_weights(w, g.out_c, g.in_c, g.k_h);
    same_conv(
        g.k_h,
        g.in_h,
        g.in_w,
        g.in_c,
        g.out_c,
        images_per_group(g),
        x,
        &packed,
        &mut y,
        |gi, group, chunk| {
            if let Some(epi) = epi {
                apply_epilogue(g, epi, gi * group, chunk);
            }
        },
    );
    y
}

/// The "same" convolution of `x (N, c, h, w)` into `y (N, o, h, w)` with weights packed by
/// [`pack_weights`].
#[allow(clippy::too_many_arguments)]
fn same_conv(
    k: usize,
    h: usize,
    wdt: usize,
    c: usize,
    o: usize,
    group: usize,
    x: &[f32],
    packed_w: &[f32],
    y: &mut [f32],
    after: impl Fn(usize, usize, &mut [f32]) + Sync,
) {
    let (in_image, out_image) = (c * h * wdt, o * h * wdt);
    y.par_chunks_mut(group * out_image).enumerate().for_each(|(gi, y_chunk)| {
        let imgs = y_chunk.len() / out_image;
        let grid = Grid::new(k, h, wdt, imgs);
        let xs = &x[gi * group * in_image..(gi * group + imgs) * in_image];
        let (buf_len, virt_len) = (k * c * grid.plane, o * grid.m);
        with_scratch(buf_len + virt_len, |scratch| {
            let (buf, virt) = scratch.split_at_mut(buf_len);
            pad_images(&grid, c, xs, buf);
            tap_gemms(&grid, c, o, buf, packed_w, virt);
            unpad_outputs(&grid, o, virt, y_chunk);
        });
        after(gi, group, y_chunk);
    });
}

/// Copies `imgs` NCHW output gradients (`o` channels) onto the virtual grid `(O, m)`, zeros at
/// the junk positions so that they add nothing to the weight gradient.
fn pad_outputs(grid: &Grid, o: usize, dy: &[f32], virt: &mut [f32]) {
    let (h, w) = (grid.h, grid.w);
    for oc in 0..o {
        let v = &mut virt[oc * grid.m..(oc + 1) * grid.m];
        let mut cursor = 0;
        for i in 0..grid.imgs {
            let src = &dy[(i * o + oc) * h * w..(i * o + oc + 1) * h * w];
            for y in 0..h {
                let d = grid.out_index(i, y, 0);
                v[cursor..d].fill(0.0);
                v[d..d + w].copy_from_slice(&src[y * w..(y + 1) * w]);
                cursor = d + w;
            }
        }
        v[cursor..].fill(0.0);
    }
}

/// The input gradient's weights: the kernel flipped in both axes with input and output
/// channels swapped, packed like [`pack_weights`] (`(ki, kj, o, c)`), so that `dX` is the
/// "same" convolution of `dY` with them.
fn pack_weights_flipped(w: &[f32], o: usize, c: usize, k: usize) -> Vec<f32> {
    let mut packed = vec![0f32; w.len()];
    for oc in 0..o {
        for ci in 0..c {
            for ki in 0..k {
                for kj in 0..k {
                    let src = ((oc * c + ci) * k + (k - 1 - ki)) * k + (k - 1 - kj);
                    packed[((ki * k + kj) * o + oc) * c + ci] = w[src];
                }
            }
        }
    }
    packed
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
    let (k, c, o, h, wdt) = (g.k_h, g.in_c, g.out_c, g.in_h, g.in_w);
    let dx = need_dx.then(|| {
        let mut dx = vec![0f32; g.batch * g.in_image()];
        if !dx.is_empty() {
            let flipped = pack_weights_flipped(w, o, c, k);
            let group = images_per_group(&ConvGeom { in_c: o, ..*g });
            same_conv(k, h, wdt, o, c, group, dy, &flipped, &mut dx, |_, _, _| {});
        }
        dx
    });
    let dw = need_dw.then(|| weight_grad(g, x, dy));
    (dx, dw)
}

/// `dW[o, c, ki, kj] = Σ_{n, y, x} dY[n, o, y, x] · X_pad[n, c, y + ki − p, x + kj − p]`: per
/// group and kernel row, `acc_ki (k·C × O) += window_kiᵀ (k·C × m) · dY_virtual (m × O)`.
/// `acc_ki` is row-major: gemm then runs along `O` and reads both operands with unit stride
/// along `m` (column-major `acc_ki` measured 40% slower: the window then packs by gathers).
fn weight_grad(g: &ConvGeom, x: &[f32], dy: &[f32]) -> Vec<f32> {
    let (k, c, o, h, wdt) = (g.k_h, g.in_c, g.out_c, g.in_h, g.in_w);
    let kc = k * c;
    let acc_len = k * kc * o;
    let group = images_per_group(g);
    let groups = g.batch.div_ceil(group.max(1));
    let (in_image, out_image) = (g.in_image(), g.out_image());
    let process = |gi: usize, acc: &mut [f32]| {
        let n0 = gi * group;
        let imgs = group.min(g.batch - n0);
        let grid = Grid::new(k, h, wdt, imgs);
        let (buf_len, virt_len) = (kc * grid.plane, o * grid.m);
        with_scratch(buf_len + virt_len, |scratch| {
            let (buf, virt) = scratch.split_at_mut(buf_len);
            pad_images(&grid, c, &x[n0 * in_image..(n0 + imgs) * in_image], buf);
            pad_outputs(&grid, o, &dy[n0 * out_image..(n0 + imgs) * out_image], virt);
            let dy_v = MatRef { data: virt, rs: 1, cs: grid.m };
            for ki in 0..k {
                let window_t = MatRef { data: &buf[ki * grid.wp..], rs: grid.plane, cs: 1 };
                let dst = &mut acc[ki * kc * o..(ki + 1) * kc * o];
                matmul_strided(kc, o, grid.m, dst, o, 1, true, window_t, dy_v);
            }
        })
    };
    let sum = partitioned_sum(groups, acc_len, process);
    // `sum` is `(ki, kj, c, o)`; return OIHW.
    let mut dw = vec![0f32; acc_len];
    for ki in 0..k {
        for kj in 0..k {
            for ci in 0..c {
                for oc in 0..o {
                    dw[((oc * c + ci) * k + ki) * k + kj] = sum[((ki * k + kj) * c + ci) * o + oc];
                }
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

    #[test]
    fn forward_matches_im2col_path() {
        for &(n, c, o, h, w, k) in
            &[(3, 4, 5, 7, 6, 3), (5, 16, 16, 8, 8, 3), (2, 3, 8, 5, 9, 5), (1, 2, 3, 1, 1, 3)]
        {
            let g = conv_geom(&[n, c, h, w], &[o, c, k, k], 1, k / 2).unwrap();
            let x = data(n * c * h * w, 1);
            let wt = data(o * c * k * k, 2);
            let want = conv2d_forward(&g, &x, &wt);
            let got = forward(&g, &x, &wt);
            assert_eq!(want.len(), got.len());
            for (i, (a, b)) in want.iter().zip(&got).enumerate() {
                assert!(
                    (a - b).abs() <= 1e-4 * (1.0 + a.abs()),
                    "{n} {c} {o} {h} {w} {k} at {i}: {a} vs {b}"
                );
            }
        }
    }

    #[test]
    fn gradients_match_im2col_path() {
        for &(n, c, o, h, w, k) in
            &[(3, 4, 5, 7, 6, 3), (20, 16, 16, 8, 8, 3), (2, 3, 8, 5, 9, 5), (1, 2, 3, 1, 1, 3)]
        {
            let g = conv_geom(&[n, c, h, w], &[o, c, k, k], 1, k / 2).unwrap();
            let x = data(n * c * h * w, 3);
            let wt = data(o * c * k * k, 4);
            let dy = data(n * o * h * w, 5);
            let (want_dx, want_dw) = conv2d_backward(&g, &x, &wt, &dy, true, true);
            let (dx, dw) = backward(&g, &x, &wt, &dy, true, true);
            let what = format!("n{n} c{c} o{o} {h}x{w} k{k}");
            assert_close(&want_dx.unwrap(), &dx.unwrap(), &format!("dx {what}"));
            assert_close(&want_dw.unwrap(), &dw.unwrap(), &format!("dw {what}"));
        }
    }
}
