//! The checked entry points to the gemm crate that kiln's host kernels share: operand extents
//! are validated against each call's sizes and strides before any pointer is formed.

use rayon::prelude::*;

/// `dst [m, n] = lhs [m, k] @ rhs [k, n]` with element strides `(row, column)` for each
/// operand, through the gemm crate (what Flex's matmul uses), into a fresh buffer that is
/// never zero-filled (gemm writes every element).
///
/// A large product is cut into one block of rows (or of columns, when the output is wider
/// than tall) per rayon thread, each a single-threaded gemm call: on the W2 shapes
/// (`k` = 256) that ran 10-20% faster than gemm's own rayon split, which synchronises its
/// threads per cache block.
#[allow(clippy::too_many_arguments)]
pub(super) fn gemm_into(
    m: usize,
    k: usize,
    n: usize,
    lhs: &[f32],
    lhs_strides: (isize, isize),
    rhs: &[f32],
    rhs_strides: (isize, isize),
) -> Vec<f32> {
    check_operand("lhs", lhs.len(), [m, k], lhs_strides);
    check_operand("rhs", rhs.len(), [k, n], rhs_strides);
    let len = m * n;
    let mut dst = Vec::<f32>::with_capacity(len);
    if len == 0 || k == 0 {
        dst.resize(len, 0.0);
        return dst;
    }
    let threads = rayon::current_num_threads().max(1);
    let base = SharedDst(dst.as_mut_ptr());
    let (rows_split, parts) = if threads > 1 && m * n * k >= 192 * 192 * 192 {
        (m >= n, threads)
    } else {
        (true, 1)
    };
    let extent = if rows_split { m } else { n };
    // Blocks of whole 16-element tiles where the extent allows it.
    let per = extent.div_ceil(parts).next_multiple_of(16).min(extent);
    let blocks = extent.div_ceil(per);
    (0..blocks).into_par_iter().for_each(|i| {
        let start = i * per;
        let size = per.min(extent - start);
        let (mnk, dst_at, lhs_at, rhs_at) = if rows_split {
            ([size, k, n], start * n, start as isize * lhs_strides.0, 0)
        } else {
            ([m, k, size], start, 0, start as isize * rhs_strides.1)
        };
        // SAFETY: each block writes its own rows (or columns) of `dst`, which has room for
        // `m * n` elements; the operand offsets address the block's first row of `lhs` (or
        // column of `rhs`), inside the operands the caller passed.
        unsafe {
            gemm_strided(
                mnk,
                base.ptr().add(dst_at),
                n as isize,
                false,
                lhs.as_ptr().offset(lhs_at),
                lhs_strides,
                rhs.as_ptr().offset(rhs_at),
                rhs_strides,
                gemm::Parallelism::None,
            );
        }
    });
    // SAFETY: the blocks above cover all `m * n` elements, each written by gemm (alpha 0).
    unsafe { dst.set_len(len) };
    dst
}

/// Panics unless a `[rows, cols]` operand with element strides `(row, column)` lies inside a
/// slice of `len` values. A release-mode check: the gemm crate reads raw pointers, so a
/// mismatched shape (say a weight wider than its input) would otherwise read past the end.
fn check_operand(what: &str, len: usize, [rows, cols]: [usize; 2], (rs, cs): (isize, isize)) {
    if rows == 0 || cols == 0 {
        return;
    }
    assert!(
        rs >= 0 && cs >= 0,
        "gemm {what}: negative strides ({rs}, {cs})"
    );
    let last = (rows - 1).checked_mul(rs as usize).and_then(|r| {
        (cols - 1)
            .checked_mul(cs as usize)
            .and_then(|c| r.checked_add(c))
    });
    assert!(
        last.is_some_and(|last| last < len),
        "gemm {what}: a [{rows}, {cols}] operand with strides ({rs}, {cs}) does not fit in {len} values"
    );
}

/// A destination pointer shared by tasks that write disjoint blocks (of rows, columns or
/// heads).
#[derive(Clone, Copy)]
pub(super) struct SharedDst(pub(super) *mut f32);
// SAFETY: every task writes its own block only.
unsafe impl Send for SharedDst {}
unsafe impl Sync for SharedDst {}

impl SharedDst {
    /// The pointer (a method, so closures capture the `Sync` wrapper, not the field).
    pub(super) fn ptr(self) -> *mut f32 {
        self.0
    }
}

/// `dst [m, n] (= or, with `accumulate`, +=) lhs [m, k] @ rhs [k, n]`, `dst` row-major and
/// the operands with element strides `(row, column)`, through the gemm crate.
///
/// # Safety
/// `lhs` and `rhs` must hold every element their strides reach; `dst` must be valid for
/// `m * n` writes, and initialised when `accumulate` (otherwise gemm never reads it: alpha 0,
/// read_dst false).
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn gemm_raw(
    mnk: [usize; 3],
    dst: *mut f32,
    accumulate: bool,
    lhs: &[f32],
    lhs_strides: (isize, isize),
    rhs: &[f32],
    rhs_strides: (isize, isize),
    parallelism: gemm::Parallelism,
) {
    let [m, k, n] = mnk;
    check_operand("lhs", lhs.len(), [m, k], lhs_strides);
    check_operand("rhs", rhs.len(), [k, n], rhs_strides);
    // SAFETY: the caller's contract for `dst`; the operands were checked above.
    unsafe {
        gemm_strided(
            mnk,
            dst,
            mnk[2] as isize,
            accumulate,
            lhs.as_ptr(),
            lhs_strides,
            rhs.as_ptr(),
            rhs_strides,
            parallelism,
        )
    }
}

/// [`gemm_raw`] with `dst`'s row stride given (its column stride is 1) and raw operands.
///
/// # Safety
/// As [`gemm_raw`], with `dst` rows `dst_rs` elements apart.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn gemm_strided(
    [m, k, n]: [usize; 3],
    dst: *mut f32,
    dst_rs: isize,
    accumulate: bool,
    lhs: *const f32,
    (lhs_rs, lhs_cs): (isize, isize),
    rhs: *const f32,
    (rhs_rs, rhs_cs): (isize, isize),
    parallelism: gemm::Parallelism,
) {
    // SAFETY: the caller's contract.
    unsafe {
        gemm_call(
            [m, k, n],
            (dst, (dst_rs, 1)),
            accumulate,
            (lhs, (lhs_rs, lhs_cs)),
            (rhs, (rhs_rs, rhs_cs)),
            1.0,
            parallelism,
        )
    }
}

/// The one call into the gemm crate: `dst = [dst +] scale * lhs [m, k] @ rhs [k, n]`, every
/// operand with element strides `(row, column)`. Nothing is read or written when the product
/// is empty.
///
/// # Safety
/// Every element the strides reach must lie inside its allocation; `dst` must be valid for
/// those writes, and initialised when `accumulate`.
pub(super) unsafe fn gemm_call(
    [m, k, n]: [usize; 3],
    (dst, (dst_rs, dst_cs)): (*mut f32, (isize, isize)),
    accumulate: bool,
    (lhs, (lhs_rs, lhs_cs)): (*const f32, (isize, isize)),
    (rhs, (rhs_rs, rhs_cs)): (*const f32, (isize, isize)),
    scale: f32,
    parallelism: gemm::Parallelism,
) {
    if m == 0 || n == 0 {
        return;
    }
    // SAFETY: the caller's contract.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            dst_cs,
            dst_rs,
            accumulate,
            lhs,
            lhs_cs,
            lhs_rs,
            rhs,
            rhs_cs,
            rhs_rs,
            if accumulate { 1.0 } else { 0.0 },
            scale,
            false,
            false,
            false,
            parallelism,
        );
    }
}
