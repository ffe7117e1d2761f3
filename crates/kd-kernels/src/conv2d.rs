//! Conv2d forward and backward on CPU f32 via im2col + GEMM.
//!
//! Images are processed in groups whose column matrices sit side by side, so each layer runs a few
//! GEMMs with about [`GROUP_POSITIONS`] columns instead of one tiny GEMM per image (the 8×8 layers
//! of a CIFAR ResNet have only 64 positions per image). Groups run in parallel on rayon's pool and
//! each GEMM is single threaded, so the two never oversubscribe the cores.

use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::conv_eval::Epilogue;
use crate::conv_taps;
use crate::cpu::{
    f32_slice, matmul_strided, partitioned_sum, with_f32_data, with_scratch, MatRef, SUM_PARTITIONS,
};
use crate::im2col::{col2im_add, im2col, ConvGeom};
use crate::winograd;
use crate::KernelError;

/// Output positions per GEMM that the image grouping aims for.
pub(crate) const GROUP_POSITIONS: usize = 1024;

fn group_size(g: &ConvGeom) -> usize {
    GROUP_POSITIONS.div_ceil(g.out_positions().max(1)).clamp(1, g.batch.max(1))
}

/// Checks the shapes of `x (N, C, H, W)` and `w (O, C, KH, KW)` and derives the geometry.
pub(crate) fn conv_geom(
    x_dims: &[usize],
    w_dims: &[usize],
    stride: usize,
    pad: usize,
) -> std::result::Result<ConvGeom, KernelError> {
    let op = "conv2d";
    let &[batch, in_c, in_h, in_w] = x_dims else {
        return Err(KernelError::Rank { op, tensor: "x", expected: 4, dims: x_dims.to_vec() });
    };
    let &[out_c, w_c, k_h, k_w] = w_dims else {
        return Err(KernelError::Rank { op, tensor: "w", expected: 4, dims: w_dims.to_vec() });
    };
    if w_c != in_c {
        return Err(KernelError::Shape {
            op,
            msg: format!("weight has {w_c} input channels, x has {in_c} (x {x_dims:?}, w {w_dims:?})"),
        });
    }
    if stride == 0 {
        return Err(KernelError::Shape { op, msg: "stride must be at least 1".into() });
    }
    let (ph, pw) = (in_h + 2 * pad, in_w + 2 * pad);
    if k_h == 0 || k_w == 0 || ph < k_h || pw < k_w {
        return Err(KernelError::Shape {
            op,
            msg: format!(
                "kernel {k_h}×{k_w} does not fit the padded input {ph}×{pw} (x {x_dims:?}, w {w_dims:?}, padding {pad})"
            ),
        });
    }
    Ok(ConvGeom {
        batch,
        in_c,
        in_h,
        in_w,
        out_c,
        k_h,
        k_w,
        stride,
        pad,
        out_h: (ph - k_h) / stride + 1,
        out_w: (pw - k_w) / stride + 1,
    })
}

/// The convolution through the fastest path for its geometry: Winograd F(2×2, 3×3) for 3×3
/// stride-1 padding-1 layers ([`winograd`]), the tap GEMMs for other stride-1 "same"
/// convolutions at 16×16 and up ([`conv_taps`]), im2col + GEMM otherwise; then `epi`.
pub(crate) fn forward_auto(g: &ConvGeom, x: &[f32], w: &[f32], epi: Option<&Epilogue>) -> Vec<f32> {
    if winograd::applies(g) {
        winograd::forward_with(g, x, w, epi)
    } else if conv_taps::applies(g) {
        conv_taps::forward_with(g, x, w, epi)
    } else {
        conv2d_forward_with(g, x, w, epi)
    }
}

/// The gradients through the same path as [`forward_auto`].
pub(crate) fn backward_auto(
    g: &ConvGeom,
    x: &[f32],
    w: &[f32],
    dy: &[f32],
    need_dx: bool,
    need_dw: bool,
) -> (Option<Vec<f32>>, Option<Vec<f32>>) {
    if winograd::applies(g) {
        winograd::backward(g, x, w, dy, need_dx, need_dw)
    } else if conv_taps::applies(g) {
        conv_taps::backward(g, x, w, dy, need_dx, need_dw)
    } else {
        conv2d_backward(g, x, w, dy, need_dx, need_dw)
    }
}

/// `y (N, O, OH, OW)` of the convolution of `x` with `w`.
#[cfg(test)]
pub(crate) fn conv2d_forward(g: &ConvGeom, x: &[f32], w: &[f32]) -> Vec<f32> {
    conv2d_forward_with(g, x, w, None)
}

/// [`conv2d_forward`], then `epi` on each output plane of a group while it is in cache.
pub(crate) fn conv2d_forward_with(g: &ConvGeom, x: &[f32], w: &[f32], epi: Option<&Epilogue>) -> Vec<f32> {
    let out_image = g.out_image();
    let mut y = vec![0f32; g.batch * out_image];
    if y.is_empty() {
        return y;
    }
    let group = group_size(g);
    y.par_chunks_mut(group * out_image).enumerate().for_each(|(gi, y_chunk)| {
        forward_group(g, x, w, gi, group, y_chunk);
        if let Some(epi) = epi {
            apply_epilogue(g, epi, gi * group, y_chunk);
        }
    });
    y
}

/// The convolution of images `gi·group ..` into `y_chunk`.
fn forward_group(g: &ConvGeom, x: &[f32], w: &[f32], gi: usize, group: usize, y_chunk: &mut [f32]) {
    let (positions, rows, out_image) = (g.out_positions(), g.col_rows(), g.out_image());
    let n0 = gi * group;
    let imgs = y_chunk.len() / out_image;
    let image = |i: usize| &x[(n0 + i) * g.in_image()..(n0 + i + 1) * g.in_image()];
    if imgs == 1 && g.is_pointwise() {
        columns_times_weights(g, image(0), positions, w, y_chunk);
        return;
    }
    let lp = imgs * positions;
    let col_len = rows * lp;
    let tmp_len = if imgs == 1 { 0 } else { g.out_c * lp };
    with_scratch(col_len + tmp_len, |scratch| {
        let (col, tmp) = scratch.split_at_mut(col_len);
        for i in 0..imgs {
            im2col(g, image(i), col, lp, i * positions);
        }
        if imgs == 1 {
            columns_times_weights(g, col, lp, w, y_chunk);
            return;
        }
        columns_times_weights(g, col, lp, w, tmp);
        // Scatter the (O, imgs·P) result into NCHW.
        for i in 0..imgs {
            for o in 0..g.out_c {
                let src = &tmp[o * lp + i * positions..o * lp + (i + 1) * positions];
                let dst = (i * g.out_c + o) * positions;
                y_chunk[dst..dst + positions].copy_from_slice(src);
            }
        }
    })
}

/// `out (O, lp) = W (O, rows) · col (rows, lp)`, computed as `outᵀ = colᵀ · Wᵀ` so that the
/// GEMM's long dimension is the positions: gemm then runs its widest micro-kernel down `lp`
/// and reads the column matrix in place (with `O` as the rows, 16–64 output channels fill only
/// its narrow edge kernels; measured 2× slower on the stride-2 ResNet layers).
fn columns_times_weights(g: &ConvGeom, col: &[f32], lp: usize, w: &[f32], out: &mut [f32]) {
    let rows = g.col_rows();
    let col_t = MatRef { data: col, rs: 1, cs: lp };
    let w_t = MatRef { data: w, rs: 1, cs: rows };
    matmul_strided(lp, g.out_c, rows, out, 1, lp, false, col_t, w_t);
}

/// Applies `epi` to every output plane of `y_chunk`, whose first image is `n0`.
pub(crate) fn apply_epilogue(g: &ConvGeom, epi: &Epilogue, n0: usize, y_chunk: &mut [f32]) {
    let positions = g.out_positions();
    for (pi, plane) in y_chunk.chunks_mut(positions).enumerate() {
        epi.apply(plane, pi % g.out_c, n0 * g.out_image() + pi * positions);
    }
}

/// Gradients of the convolution: `(dx, dw)`, each only if asked for.
pub(crate) fn conv2d_backward(
    g: &ConvGeom,
    x: &[f32],
    w: &[f32],
    dy: &[f32],
    need_dx: bool,
    need_dw: bool,
) -> (Option<Vec<f32>>, Option<Vec<f32>>) {
    let (positions, rows, out_image, in_image) =
        (g.out_positions(), g.col_rows(), g.out_image(), g.in_image());
    let group = group_size(g);
    let groups = g.batch.div_ceil(group);
    let dw_len = if need_dw { g.out_c * rows } else { 0 };

    // One group: accumulate its weight gradient into `dw_acc`, write its input gradient.
    let process = |gi: usize, dx_chunk: Option<&mut [f32]>, dw_acc: &mut [f32]| {
        let n0 = gi * group;
        let imgs = group.min(g.batch - n0);
        let lp = imgs * positions;
        let image = |i: usize| &x[(n0 + i) * in_image..(n0 + i + 1) * in_image];
        let dy_group = &dy[n0 * out_image..(n0 + imgs) * out_image];
        let direct = imgs == 1;
        let gather_len = if direct { 0 } else { g.out_c * lp };
        let col_len = if need_dw && !(direct && g.is_pointwise()) { rows * lp } else { 0 };
        let dcol_len = if need_dx && !(direct && g.is_pointwise()) { rows * lp } else { 0 };
        with_scratch(gather_len + col_len + dcol_len, |scratch| {
            let (gathered, rest) = scratch.split_at_mut(gather_len);
            let (col, dcol) = rest.split_at_mut(col_len);
            // dY of the group as one (O, imgs·P) matrix.
            let dy_mat: &[f32] = if direct {
                dy_group
            } else {
                for i in 0..imgs {
                    for o in 0..g.out_c {
                        let src = (i * g.out_c + o) * positions;
                        gathered[o * lp + i * positions..o * lp + (i + 1) * positions]
                            .copy_from_slice(&dy_group[src..src + positions]);
                    }
                }
                gathered
            };
            let dy_ref = MatRef { data: dy_mat, rs: lp, cs: 1 };
            if need_dw {
                let col: &[f32] = if direct && g.is_pointwise() {
                    image(0)
                } else {
                    for i in 0..imgs {
                        im2col(g, image(i), col, lp, i * positions);
                    }
                    col
                };
                // dW (O, rows) += dY (O, lp) · colᵀ (lp, rows), accumulated transposed
                // (`dw_acc` is rows × O) so gemm reads the column matrix along its unit stride
                // instead of packing it.
                let col_t = MatRef { data: col, rs: 1, cs: lp };
                matmul_strided(g.out_c, rows, lp, dw_acc, 1, g.out_c, true, dy_ref, col_t);
            }
            if let Some(dx_chunk) = dx_chunk {
                // dcol (rows, lp) = Wᵀ (rows, O) · dY (O, lp), computed as dcolᵀ = dYᵀ · W
                // with the positions as the GEMM's long dimension (see `columns_times_weights`).
                let dy_t = MatRef { data: dy_mat, rs: 1, cs: lp };
                let w_mat = MatRef { data: w, rs: rows, cs: 1 };
                if direct && g.is_pointwise() {
                    matmul_strided(positions, rows, g.out_c, dx_chunk, 1, positions, false, dy_t, w_mat);
                    return;
                }
                matmul_strided(lp, rows, g.out_c, dcol, 1, lp, false, dy_t, w_mat);
                // Then scatter-add into dX.
                for i in 0..imgs {
                    col2im_add(g, dcol, lp, i * positions, &mut dx_chunk[i * in_image..(i + 1) * in_image]);
                }
            }
        })
    };

    // Deterministic as `partitioned_sum` (fixed partitions summed in order); when dX is wanted
    // too, each partition also owns its images' slice of dX.
    let parts = groups.clamp(1, SUM_PARTITIONS);
    let per = groups.div_ceil(parts);
    let mut dx = need_dx.then(|| vec![0f32; g.batch * in_image]);
    let dw = match dx.as_mut() {
        Some(dx) if !dx.is_empty() => {
            let partials: Vec<Vec<f32>> = dx
                .par_chunks_mut(per * group * in_image)
                .enumerate()
                .map(|(pi, part)| {
                    let mut acc = vec![0f32; dw_len];
                    for (k, chunk) in part.chunks_mut(group * in_image).enumerate() {
                        process(pi * per + k, Some(chunk), &mut acc);
                    }
                    acc
                })
                .collect();
            partials.into_iter().reduce(add_into).unwrap_or_else(|| vec![0f32; dw_len])
        }
        _ => partitioned_sum(groups, dw_len, |gi, acc| process(gi, None, acc)),
    };
    // `dw` was accumulated as (rows, O); return it as (O, rows).
    let dw = need_dw.then(|| {
        let mut out = vec![0f32; dw_len];
        for r in 0..rows {
            for o in 0..g.out_c {
                out[o * rows + r] = dw[r * g.out_c + o];
            }
        }
        out
    });
    (dx, dw)
}

fn add_into(mut a: Vec<f32>, b: Vec<f32>) -> Vec<f32> {
    for (x, y) in a.iter_mut().zip(&b) {
        *x += y;
    }
    a
}

/// `conv2d(x, w)` as a candle op with a hand-written backward.
pub(crate) struct Conv2dOp {
    pub stride: usize,
    pub padding: usize,
}

impl CustomOp2 for Conv2dOp {
    fn name(&self) -> &'static str {
        "kd-conv2d"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = conv_geom(xl.dims(), wl.dims(), self.stride, self.padding)?;
        let x = f32_slice(self.name(), "x", xs, xl)?;
        let w = f32_slice(self.name(), "w", ws, wl)?;
        let y = forward_auto(&g, x, w, None);
        Ok((CpuStorage::F32(y), Shape::from((g.batch, g.out_c, g.out_h, g.out_w))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (need_dx, need_dw) = (x.track_op(), w.track_op());
        if !need_dx && !need_dw {
            return Ok((None, None));
        }
        let g = conv_geom(x.dims(), w.dims(), self.stride, self.padding)?;
        let name = self.name();
        let (dx, dw) = with_f32_data(name, "x", x, |xd| {
            with_f32_data(name, "w", w, |wd| {
                with_f32_data(name, "grad", grad, |gd| Ok(backward_auto(&g, xd, wd, gd, need_dx, need_dw)))
            })
        })?;
        let dx = dx.map(|v| Tensor::from_vec(v, x.shape(), x.device())).transpose()?;
        let dw = dw.map(|v| Tensor::from_vec(v, w.shape(), w.device())).transpose()?;
        Ok((dx, dw))
    }
}
