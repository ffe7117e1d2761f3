//! gemm's blocked products sum every output over the depth in one fixed order, whatever kernels
//! (AVX2 or AVX-512) the machine runs, so the `x86-v4` kernels can be on without making rows
//! depend on the machine (vendor/README.md). Each product here is compared bit for bit with a
//! scalar reference that has no vector width at all: per output, per depth block of `kc`, one
//! fused multiply-add chain from zero, then the block's sum added to the destination. On an
//! AVX2 machine this checks the AVX2 kernels, on an AVX-512 machine the AVX-512 ones; both
//! equal to the reference means both equal to each other. The products gemm runs on
//! lane-reducing paths (small products, gemv) go to the AVX2 kernels everywhere
//! (`gemm_common::gemm::sums_in_depth_order`), checked at the end.

/// Deterministic values in [-1, 1) with a spread of exponents, so a reordered sum shows.
fn values(len: usize, seed: u64) -> Vec<f32> {
    let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let unit = (state >> 40) as f32 / (1u64 << 24) as f32;
            let scale = [1.0, 1e-3, 37.0, 0.25][(state >> 20) as usize % 4];
            (unit * 2.0 - 1.0) * scale
        })
        .collect()
}

/// The depth blocks gemm splits a product into: `min(k, 512)` for products with both sides at
/// most 64, otherwise `kernel_params`' even split of `k` into blocks of at most 512.
fn depth_blocks(m: usize, n: usize, k: usize) -> Vec<std::ops::Range<usize>> {
    let kc = if m <= 64 && n <= 64 {
        k.min(512)
    } else {
        let blocks = k.div_ceil(512);
        k.div_ceil(blocks)
    };
    (0..k).step_by(kc).map(|start| start..(start + kc).min(k)).collect()
}

struct Layout {
    /// Row-major (`true`) or column-major storage of each operand.
    lhs_rows: bool,
    rhs_rows: bool,
    dst_rows: bool,
}

fn index(rows: bool, r: usize, c: usize, n_rows: usize, n_cols: usize) -> usize {
    if rows {
        r * n_cols + c
    } else {
        c * n_rows + r
    }
}

fn check(m: usize, n: usize, k: usize, layout: &Layout, accumulate: bool, threads: usize) {
    let lhs = values(m * k, (m * 31 + k) as u64);
    let rhs = values(k * n, (n * 17 + k) as u64);
    let start = values(m * n, 7);
    let dst_index = |i, j| index(layout.dst_rows, i, j, m, n);
    let mut expected = if accumulate { start.clone() } else { vec![0.0; m * n] };
    for i in 0..m {
        for j in 0..n {
            let mut out = expected[dst_index(i, j)];
            for (b, block) in depth_blocks(m, n, k).into_iter().enumerate() {
                let mut acc = 0f32;
                for p in block {
                    let a = lhs[index(layout.lhs_rows, i, p, m, k)];
                    let w = rhs[index(layout.rhs_rows, p, j, k, n)];
                    acc = a.mul_add(w, acc);
                }
                out = if b == 0 && !accumulate { acc } else { out + acc };
            }
            expected[dst_index(i, j)] = out;
        }
    }
    let strides = |rows: bool, n_rows: usize, n_cols: usize| -> (isize, isize) {
        // (column stride, row stride)
        if rows {
            (1, n_cols as isize)
        } else {
            (n_rows as isize, 1)
        }
    };
    let (dst_cs, dst_rs) = strides(layout.dst_rows, m, n);
    let (lhs_cs, lhs_rs) = strides(layout.lhs_rows, m, k);
    let (rhs_cs, rhs_rs) = strides(layout.rhs_rows, k, n);
    let mut got = if accumulate { start } else { vec![f32::NAN; m * n] };
    let parallelism = if threads > 1 { gemm::Parallelism::Rayon(threads) } else { gemm::Parallelism::None };
    // SAFETY: every operand is a dense m×k, k×n or m×n buffer with the strides above.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            got.as_mut_ptr(),
            dst_cs,
            dst_rs,
            accumulate,
            lhs.as_ptr(),
            lhs_cs,
            lhs_rs,
            rhs.as_ptr(),
            rhs_cs,
            rhs_rs,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
    for (e, (x, y)) in expected.iter().zip(&got).enumerate() {
        assert_eq!(
            x.to_bits(),
            y.to_bits(),
            "{m}×{k} · {k}×{n} (lhs rows {}, rhs rows {}, dst rows {}, accumulate {accumulate}, \
             {threads} threads): element {e} is {y}, the in-order sum is {x}",
            layout.lhs_rows,
            layout.rhs_rows,
            layout.dst_rows
        );
    }
}

#[test]
fn blocked_products_sum_in_depth_order_on_this_machine() {
    // Shapes of the models' products (BERT's 2048 tokens × 384/1536, convolution GEMMs with
    // 9·C depths, the classifier) cut to keep the scalar reference quick, plus odd edges that
    // leave partial micro-tiles on either side and depths that split into several blocks.
    let shapes = [
        (17, 33, 70),
        (64, 64, 600),
        (65, 100, 1100),
        (96, 384, 384),
        (128, 1536, 96),
        (200, 144, 1536),
        (576, 64, 300),
        (33, 10, 64),
        (3, 257, 129),
    ];
    for (m, n, k) in shapes {
        for lhs_rows in [true, false] {
            for rhs_rows in [true, false] {
                for dst_rows in [true, false] {
                    let layout = Layout { lhs_rows, rhs_rows, dst_rows };
                    check(m, n, k, &layout, false, 1);
                }
            }
        }
        let layout = Layout { lhs_rows: true, rhs_rows: true, dst_rows: true };
        check(m, n, k, &layout, true, 1);
        check(m, n, k, &layout, false, 2);
    }
}

#[test]
fn lane_reducing_paths_are_not_sent_to_the_wide_kernels() {
    use gemm_common::gemm::sums_in_depth_order as blocked;
    // (m, n, k, dst_cs, dst_rs, lhs_cs, lhs_rs, rhs_cs, rhs_rs) as gemm_basic sees them.
    // A 16 × 16 product with both operands contiguous along the depth: horizontal kernels.
    assert!(!blocked(16, 16, 300, 16, 1, 1, 300, 300, 1, false, false, false));
    // A matrix-vector product either way round: gemv.
    assert!(!blocked(500, 1, 300, 500, 1, 500, 1, 1, 1, false, false, false));
    assert!(!blocked(1, 500, 300, 1, 1, 1, 300, 300, 1, false, false, false));
    // Depth 2: gevv.
    assert!(!blocked(100, 100, 2, 100, 1, 100, 1, 100, 1, false, false, false));
    // BERT's FFN product and a convolution GEMM: the blocked kernels.
    assert!(blocked(1536, 2048, 384, 1536, 1, 1536, 1, 384, 1, false, false, false));
    assert!(blocked(64, 128, 576, 64, 1, 64, 1, 576, 1, false, false, false));
}
