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
    let base = SharedDst::uninit(&mut dst.spare_capacity_mut()[..len]);
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
        let offset = |at: usize, stride: isize| at * stride as usize;
        let (mnk, dst_at, lhs_at, rhs_at) = if rows_split {
            ([size, k, n], start * n, offset(start, lhs_strides.0), 0)
        } else {
            ([m, k, size], start, 0, offset(start, rhs_strides.1))
        };
        // SAFETY: each block writes its own rows (or columns) of `dst`, never reading them
        // (no accumulation).
        unsafe {
            gemm_checked(
                mnk,
                base.region(dst_at, (n as isize, 1)),
                false,
                (&lhs[lhs_at..], lhs_strides),
                (&rhs[rhs_at..], rhs_strides),
                1.0,
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

/// A destination buffer that parallel tasks write, each its own strided regions: the base
/// pointer and the buffer's length, so every region is checked against the buffer.
#[derive(Clone, Copy)]
pub(super) struct SharedDst {
    ptr: *mut f32,
    len: usize,
}
// SAFETY: a pointer and a length; the writers' disjointness is `gemm_checked`'s contract.
unsafe impl Send for SharedDst {}
unsafe impl Sync for SharedDst {}

impl SharedDst {
    /// The whole of `buf`.
    pub(super) fn new(buf: &mut [f32]) -> Self {
        Self {
            ptr: buf.as_mut_ptr(),
            len: buf.len(),
        }
    }

    /// The whole of `buf`, whose elements may be uninitialised (written before they are read).
    pub(super) fn uninit(buf: &mut [std::mem::MaybeUninit<f32>]) -> Self {
        Self {
            ptr: buf.as_mut_ptr().cast(),
            len: buf.len(),
        }
    }

    /// A `[rows, cols]` region of this buffer starting at element `at`, with element strides
    /// `(row, column)`.
    pub(super) fn region(self, at: usize, strides: (isize, isize)) -> DstRegion {
        DstRegion {
            buf: self,
            at,
            strides,
        }
    }
}

/// Where a product goes: a strided region of a [`SharedDst`].
#[derive(Clone, Copy)]
pub(super) struct DstRegion {
    buf: SharedDst,
    at: usize,
    strides: (isize, isize),
}

/// The one checked entry to the gemm crate: `dst = [dst +] scale * lhs [m, k] @ rhs [k, n]`,
/// the operands slices with element strides `(row, column)`. All three extents are checked
/// against their buffers before any pointer is formed (a panic, never a read or write past an
/// end).
///
/// # Safety
/// No other thread reads or writes the elements of `dst`'s region during the call, and they
/// are initialised when `accumulate` (otherwise gemm only writes them).
pub(super) unsafe fn gemm_checked(
    [m, k, n]: [usize; 3],
    dst: DstRegion,
    accumulate: bool,
    (lhs, lhs_strides): (&[f32], (isize, isize)),
    (rhs, rhs_strides): (&[f32], (isize, isize)),
    scale: f32,
    parallelism: gemm::Parallelism,
) {
    check_operand("lhs", lhs.len(), [m, k], lhs_strides);
    check_operand("rhs", rhs.len(), [k, n], rhs_strides);
    if m == 0 || n == 0 {
        return;
    }
    assert!(
        dst.at <= dst.buf.len,
        "gemm dst: region starts at {} in {} values",
        dst.at,
        dst.buf.len
    );
    check_operand("dst", dst.buf.len - dst.at, [m, n], dst.strides);
    // SAFETY: every element each operand's strides reach lies inside it (checked above), and
    // the caller's contract for `dst`'s region.
    unsafe {
        gemm_call(
            [m, k, n],
            (dst.buf.ptr.add(dst.at), dst.strides),
            accumulate,
            (lhs.as_ptr(), lhs_strides),
            (rhs.as_ptr(), rhs_strides),
            scale,
            parallelism,
        )
    }
}

/// [`gemm_checked`] into a buffer this call owns: `dst [m, n] (= or += ) scale * lhs @ rhs`,
/// single-threaded. Safe: `dst` is borrowed exclusively and initialised.
#[allow(clippy::too_many_arguments)]
pub(super) fn gemm_slice(
    mnk: [usize; 3],
    dst: &mut [f32],
    dst_strides: (isize, isize),
    accumulate: bool,
    lhs: (&[f32], (isize, isize)),
    rhs: (&[f32], (isize, isize)),
    scale: f32,
    parallelism: gemm::Parallelism,
) {
    // SAFETY: `dst` is borrowed exclusively for the call and initialised.
    unsafe {
        gemm_checked(
            mnk,
            SharedDst::new(dst).region(0, dst_strides),
            accumulate,
            lhs,
            rhs,
            scale,
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
unsafe fn gemm_call(
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

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(m: usize, k: usize, n: usize, a: &[f32], b: &[f32]) -> Vec<f32> {
        let mut out = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                out[i * n + j] = (0..k).map(|p| a[i * k + p] * b[p * n + j]).sum();
            }
        }
        out
    }

    #[test]
    fn products_match_a_naive_loop_whatever_the_split() {
        for [m, k, n] in [[3, 5, 7], [300, 200, 190], [40, 64, 700]] {
            let a: Vec<f32> = (0..m * k).map(|i| (i % 13) as f32 - 6.0).collect();
            let b: Vec<f32> = (0..k * n).map(|i| (i % 7) as f32 - 3.0).collect();
            let want = naive(m, k, n, &a, &b);
            assert_eq!(
                gemm_into(m, k, n, &a, (k as isize, 1), &b, (n as isize, 1)),
                want
            );
            // A region of a larger buffer, at an offset, with a row stride wider than n.
            let mut big = vec![f32::NAN; 5 + (m - 1) * (n + 3) + n + 2];
            gemm_slice(
                [m, k, n],
                &mut big[5..],
                ((n + 3) as isize, 1),
                false,
                (&a, (k as isize, 1)),
                (&b, (n as isize, 1)),
                1.0,
                gemm::Parallelism::None,
            );
            for i in 0..m {
                assert_eq!(&big[5 + i * (n + 3)..][..n], &want[i * n..][..n]);
            }
        }
    }

    #[test]
    #[should_panic(expected = "gemm dst")]
    fn a_destination_region_past_its_buffer_panics() {
        let (a, b) = (vec![1.0; 6], vec![1.0; 6]);
        // [2, 3] @ [3, 2] into rows 4 apart: the second row would end at 4 + 1 = 5 >= 5.
        let mut dst = vec![0.0; 5];
        gemm_slice(
            [2, 3, 2],
            &mut dst,
            (4, 1),
            false,
            (&a, (3, 1)),
            (&b, (2, 1)),
            1.0,
            gemm::Parallelism::None,
        );
    }

    #[test]
    #[should_panic(expected = "gemm rhs")]
    fn an_operand_shorter_than_its_shape_panics() {
        let (a, b) = (vec![1.0; 6], vec![1.0; 5]);
        let mut dst = vec![0.0; 4];
        gemm_slice(
            [2, 3, 2],
            &mut dst,
            (2, 1),
            false,
            (&a, (3, 1)),
            (&b, (2, 1)),
            1.0,
            gemm::Parallelism::None,
        );
    }
}
