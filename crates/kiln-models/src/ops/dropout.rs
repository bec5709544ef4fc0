//! Dropout masks drawn from a counter-based stream: element `e` of row `r` under seed `s` is
//! kept or dropped as a pure function of `(s, r, e)`, so a backward pass regenerates its
//! forward's mask instead of storing it, the fused kernels and Burn's ops draw the same masks
//! on any device, and a step replays bit-identically from its seed.

use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, TensorMetadata};
use burn::prelude::TensorData;
use rayon::prelude::*;

use crate::kernels::simd_dispatch;

/// The probability and seed of one dropout mask.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DropoutMask {
    /// Probability of zeroing an element, in `[0, 1)`; kept elements are scaled by
    /// `1 / (1 - prob)`.
    pub prob: f32,
    /// Seed of the mask: a fresh one per call, drawn from the step's random stream.
    pub seed: u64,
}

/// Elements per row of an elementwise dropout (rows are the unit of parallel work).
pub(crate) const ROW: usize = 1 << 14;

/// SplitMix64's increment and finaliser (Steele, Lea, Flood 2014).
const GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

#[inline(always)]
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The factors of row `row` of `mask`: `0` or `1 / (1 - prob)` for elements
/// `0..out.len()`, element `e` from the top 32 bits of SplitMix64's `e`-th output of a stream
/// seeded from `(seed, row)`. A row's factors do not depend on its length, so a row cut short
/// (by padding or causality) draws the same values for the elements it has.
pub fn dropout_scales(mask: DropoutMask, row: u64, out: &mut [f32]) {
    assert!(
        (0.0..1.0).contains(&mask.prob),
        "dropout probability must be in [0, 1), got {}",
        mask.prob
    );
    let threshold = (mask.prob as f64 * 4_294_967_296.0) as u64;
    let keep = 1.0 / (1.0 - mask.prob);
    let base = mix(mask.seed ^ mix(row.wrapping_add(GAMMA)));
    simd_dispatch!(scales_loop(base: u64, threshold: u64, keep: f32, out: &mut [f32]));
}

#[inline(always)]
fn scales_loop(base: u64, threshold: u64, keep: f32, out: &mut [f32]) {
    for (e, o) in out.iter_mut().enumerate() {
        let bits = mix(base.wrapping_add((e as u64 + 1).wrapping_mul(GAMMA))) >> 32;
        *o = if bits >= threshold { keep } else { 0.0 };
    }
}

/// `x ∘ mask` over a flat buffer, rows of [`ROW`] elements in parallel.
pub(super) fn apply(x: &[f32], mask: DropoutMask) -> Vec<f32> {
    let mut y = vec![0.0f32; x.len()];
    y.par_chunks_mut(ROW)
        .zip(x.par_chunks(ROW))
        .enumerate()
        .for_each(|(row, (y, x))| {
            dropout_scales(mask, row as u64, y);
            for (y, x) in y.iter_mut().zip(x) {
                *y *= x;
            }
        });
    y
}

/// `x ∘ mask` as Burn ops, for any backend (the mask built on the host).
pub(super) fn apply_reference<B: Backend>(x: FloatTensor<B>, mask: DropoutMask) -> FloatTensor<B> {
    let shape = x.shape();
    let mut m = vec![0.0f32; shape.num_elements()];
    for (row, r) in m.chunks_mut(ROW).enumerate() {
        dropout_scales(mask, row as u64, r);
    }
    let m = B::float_from_data(TensorData::new(m, shape), &x.device());
    B::float_mul(x, m)
}
