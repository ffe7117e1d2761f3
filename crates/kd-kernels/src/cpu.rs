//! Small CPU helpers shared by the kernels: slice access to candle storage, a checked GEMM
//! wrapper, per-thread scratch buffers and vectorisable reductions.

use std::cell::RefCell;

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, Layout, Result, Storage, Tensor};

use crate::simd::multiversion;
use crate::KernelError;

/// The contiguous `f32` data of a CPU storage, or an error naming `tensor` if it is not
/// contiguous f32.
pub(crate) fn f32_slice<'a>(
    op: &'static str,
    tensor: &'static str,
    storage: &'a CpuStorage,
    layout: &Layout,
) -> Result<&'a [f32]> {
    let data = match storage {
        CpuStorage::F32(data) => data.as_slice(),
        other => return Err(KernelError::DType { op, tensor, dtype: other.dtype() }.into()),
    };
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => Err(KernelError::NotContiguous { op, tensor }.into()),
    }
}

/// Runs `f` on the contiguous `f32` data of a CPU tensor (made contiguous first if needed).
pub(crate) fn with_f32_data<R>(
    op: &'static str,
    name: &'static str,
    tensor: &Tensor,
    f: impl FnOnce(&[f32]) -> Result<R>,
) -> Result<R> {
    let tensor = tensor.contiguous()?;
    let (storage, layout) = tensor.storage_and_layout();
    match &*storage {
        Storage::Cpu(cpu) => f(f32_slice(op, name, cpu, layout)?),
        _ => Err(KernelError::Device { op, tensor: name }.into()),
    }
}

/// Whether every tensor is an `f32` tensor on the CPU, i.e. whether the hand-written kernels apply.
pub(crate) fn all_cpu_f32(tensors: &[&Tensor]) -> bool {
    tensors.iter().all(|t| t.device().is_cpu() && t.dtype() == candle_core::DType::F32)
}

/// A strided matrix view for [`matmul_strided`]: element `(i, j)` is at `data[i * rs + j * cs]`.
#[derive(Clone, Copy)]
pub(crate) struct MatRef<'a> {
    pub data: &'a [f32],
    pub rs: usize,
    pub cs: usize,
}

fn max_index(rows: usize, cols: usize, rs: usize, cs: usize) -> usize {
    if rows == 0 || cols == 0 {
        0
    } else {
        (rows - 1) * rs + (cols - 1) * cs
    }
}

/// `dst (m×n) (+)= lhs (m×k) · rhs (k×n)`, destination element `(i, j)` at
/// `dst[i * dst_rs + j * dst_cs]`; single threaded: the callers parallelise over images, so
/// gemm must not spawn its own work.
#[allow(clippy::too_many_arguments)]
pub(crate) fn matmul_strided(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [f32],
    dst_rs: usize,
    dst_cs: usize,
    accumulate: bool,
    lhs: MatRef<'_>,
    rhs: MatRef<'_>,
) {
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for i in 0..m {
                for j in 0..n {
                    dst[i * dst_rs + j * dst_cs] = 0.0;
                }
            }
        }
        return;
    }
    // The bounds checks make the raw-pointer call below sound.
    assert!(max_index(m, n, dst_rs, dst_cs) < dst.len(), "matmul: dst too short");
    assert!(max_index(m, k, lhs.rs, lhs.cs) < lhs.data.len(), "matmul: lhs too short");
    assert!(max_index(k, n, rhs.rs, rhs.cs) < rhs.data.len(), "matmul: rhs too short");
    // SAFETY: every index the kernel touches is within the slices (checked above), `dst` is
    // borrowed mutably and does not alias `lhs` or `rhs`.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            dst_cs as isize,
            dst_rs as isize,
            accumulate,
            lhs.data.as_ptr(),
            lhs.cs as isize,
            lhs.rs as isize,
            rhs.data.as_ptr(),
            rhs.cs as isize,
            rhs.rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        )
    }
}

/// Partitions of a deterministic sum over groups: fixed, so results do not depend on thread
/// timing or count (enough to keep two to eight cores busy).
pub(crate) const SUM_PARTITIONS: usize = 8;

/// `Σ_g f(g)` over `groups` groups of work, each adding its part into an accumulator of `len`
/// floats. Deterministic: the groups are split into a fixed number of contiguous partitions
/// (not by work stealing), each partition sums its groups in order, and the partial sums are
/// added in partition order, so the float summation order never varies.
pub(crate) fn partitioned_sum(groups: usize, len: usize, f: impl Fn(usize, &mut [f32]) + Sync) -> Vec<f32> {
    use rayon::prelude::*;
    let parts = groups.clamp(1, SUM_PARTITIONS);
    let per = groups.div_ceil(parts);
    let partials: Vec<Vec<f32>> = (0..parts)
        .into_par_iter()
        .map(|pi| {
            let mut acc = vec![0f32; len];
            for gi in pi * per..((pi + 1) * per).min(groups) {
                f(gi, &mut acc);
            }
            acc
        })
        .collect();
    let mut sum = vec![0f32; len];
    for part in &partials {
        for (s, v) in sum.iter_mut().zip(part) {
            *s += v;
        }
    }
    sum
}

/// Elements per rayon task for the element-wise maps below (any size gives the same values).
const ELEMENTWISE_CHUNK: usize = 1 << 15;

/// A fresh vector of `x.len()` floats filled by `f(out_chunk, x_chunk)` over matching chunks,
/// in parallel: the shape of every element-wise forward pass.
pub(crate) fn par_map1(x: &[f32], f: impl Fn(&mut [f32], &[f32]) + Sync) -> Vec<f32> {
    use rayon::prelude::*;
    let mut out = uninit_f32(x.len());
    out.par_chunks_mut(ELEMENTWISE_CHUNK).zip(x.par_chunks(ELEMENTWISE_CHUNK)).for_each(|(o, x)| f(o, x));
    out
}

/// [`par_map1`] over two inputs of the same length (an element-wise gradient, a residual join).
pub(crate) fn par_map2(a: &[f32], b: &[f32], f: impl Fn(&mut [f32], &[f32], &[f32]) + Sync) -> Vec<f32> {
    use rayon::prelude::*;
    debug_assert_eq!(a.len(), b.len());
    let mut out = uninit_f32(a.len());
    out.par_chunks_mut(ELEMENTWISE_CHUNK)
        .zip(a.par_chunks(ELEMENTWISE_CHUNK).zip(b.par_chunks(ELEMENTWISE_CHUNK)))
        .for_each(|(o, (a, b))| f(o, a, b));
    out
}

/// A vector of `len` floats whose contents are unspecified, for outputs that the caller
/// overwrites completely: skips the memset of `vec![0.0; len]`, a whole extra pass over every
/// activation-sized output (measured ~7% of a ResNet-20 training step).
#[allow(clippy::uninit_vec)] // on purpose, see the safety note
pub(crate) fn uninit_f32(len: usize) -> Vec<f32> {
    let mut v = Vec::with_capacity(len);
    // SAFETY: the capacity is `len`; `f32` has no invalid bit patterns, and every caller writes
    // each element before the vector is read (as candle's own `alloc_uninit` does).
    unsafe { v.set_len(len) };
    v
}

thread_local! {
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Lends `f` a per-thread scratch buffer of at least `len` floats (contents unspecified), so the
/// large im2col buffers are allocated once per worker thread rather than once per call.
pub(crate) fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buf) => {
            if buf.len() < len {
                buf.resize(len, 0.0);
            }
            f(&mut buf[..len])
        }
        // Re-entered on the same thread (should not happen): fall back to a fresh buffer.
        Err(_) => f(&mut vec![0.0; len]),
    })
}

const LANES: usize = 16;

multiversion! {
/// `(Σ (x - shift), Σ (x - shift)²)` with independent lanes so that LLVM vectorises it.
pub(crate) fn shifted_sums(x: &[f32], shift: f32) -> (f64, f64) {
    let mut s = [0f32; LANES];
    let mut q = [0f32; LANES];
    let chunks = x.chunks_exact(LANES);
    let rest = chunks.remainder();
    for c in chunks {
        for l in 0..LANES {
            let d = c[l] - shift;
            s[l] += d;
            q[l] += d * d;
        }
    }
    let mut sum: f64 = s.iter().map(|&v| v as f64).sum();
    let mut sq: f64 = q.iter().map(|&v| v as f64).sum();
    for &v in rest {
        let d = (v - shift) as f64;
        sum += d;
        sq += d * d;
    }
    (sum, sq)
}

}

/// `(Σ g, Σ g·(x - shift))` where `g = dy`, or `g = dy · [y > 0]` when `relu_out` is given.
pub(crate) fn grad_sums(dy: &[f32], x: &[f32], shift: f32, relu_out: Option<&[f32]>) -> (f64, f64) {
    match relu_out {
        None => grad_sums_plain(dy, x, shift),
        Some(y) => grad_sums_masked(dy, x, y, shift),
    }
}

multiversion! {
    fn grad_sums_plain(dy: &[f32], x: &[f32], shift: f32) -> (f64, f64) {
        let mut s = [0f32; LANES];
        let mut p = [0f32; LANES];
        let full = dy.len().min(x.len()) / LANES * LANES;
        for i in (0..full).step_by(LANES) {
            let g: &[f32; LANES] = dy[i..i + LANES].try_into().expect("lane chunk");
            let xv: &[f32; LANES] = x[i..i + LANES].try_into().expect("lane chunk");
            for l in 0..LANES {
                s[l] += g[l];
                p[l] += g[l] * (xv[l] - shift);
            }
        }
        let mut sum: f64 = s.iter().map(|&v| v as f64).sum();
        let mut dot: f64 = p.iter().map(|&v| v as f64).sum();
        for i in full..dy.len() {
            sum += dy[i] as f64;
            dot += (dy[i] * (x[i] - shift)) as f64;
        }
        (sum, dot)
    }
}

multiversion! {
    fn grad_sums_masked(dy: &[f32], x: &[f32], y: &[f32], shift: f32) -> (f64, f64) {
        let mut s = [0f32; LANES];
        let mut p = [0f32; LANES];
        let full = dy.len().min(x.len()).min(y.len()) / LANES * LANES;
        for i in (0..full).step_by(LANES) {
            let g: &[f32; LANES] = dy[i..i + LANES].try_into().expect("lane chunk");
            let xv: &[f32; LANES] = x[i..i + LANES].try_into().expect("lane chunk");
            let yv: &[f32; LANES] = y[i..i + LANES].try_into().expect("lane chunk");
            for l in 0..LANES {
                // Branch-free mask so that the loop vectorises.
                let keep = ((yv[l] > 0.0) as u32).wrapping_neg();
                let gm = f32::from_bits(g[l].to_bits() & keep);
                s[l] += gm;
                p[l] += gm * (xv[l] - shift);
            }
        }
        let mut sum: f64 = s.iter().map(|&v| v as f64).sum();
        let mut dot: f64 = p.iter().map(|&v| v as f64).sum();
        for i in full..dy.len() {
            let gm = if y[i] > 0.0 { dy[i] } else { 0.0 };
            sum += gm as f64;
            dot += (gm * (x[i] - shift)) as f64;
        }
        (sum, dot)
    }
}
