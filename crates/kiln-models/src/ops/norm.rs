//! Host kernels for layer normalisation over the last dimension (f32, no bias: the caller
//! adds it), forward and backward in one pass over each row. The backward recomputes each
//! row's mean and inverse deviation from the input rather than keeping them.

use std::mem::MaybeUninit;

use rayon::prelude::*;

/// Rows per rayon task: about 64 KiB of input each.
fn rows_per_task(d: usize) -> usize {
    ((1 << 14) / d.max(1)).max(1)
}

/// The mean and `1 / sqrt(var + eps)` of one row (two passes: no cancellation).
#[inline(always)]
fn moments(row: &[f32], eps: f32) -> (f32, f32) {
    let n = row.len() as f32;
    let mean = lane_sum(row.iter().copied()) / n;
    let var = lane_sum(row.iter().map(|&v| (v - mean) * (v - mean))) / n;
    (mean, 1.0 / (var + eps).sqrt())
}

/// A sum over 16 independent lanes, so the loop vectorises (a single float accumulator has
/// to add in order).
#[inline(always)]
fn lane_sum(values: impl Iterator<Item = f32>) -> f32 {
    let mut lanes = [0.0f32; 16];
    for (i, v) in values.enumerate() {
        lanes[i % 16] += v;
    }
    lanes.iter().sum()
}

/// `(x - mean) / sqrt(var + eps) * gamma` over rows of `gamma.len()` values.
pub(super) fn forward(x: &[f32], gamma: &[f32], eps: f32) -> Vec<f32> {
    let d = gamma.len();
    let len = x.len();
    let mut y = Vec::<f32>::with_capacity(len);
    if d == 0 {
        return y;
    }
    let per = rows_per_task(d) * d;
    y.spare_capacity_mut()[..len]
        .par_chunks_mut(per)
        .zip(x.par_chunks(per))
        .for_each(|(y, x)| forward_rows(x, gamma, eps, y));
    // SAFETY: `forward_rows` wrote every element of every row.
    unsafe { y.set_len(len) };
    y
}

fn forward_rows(x: &[f32], gamma: &[f32], eps: f32, y: &mut [MaybeUninit<f32>]) {
    crate::kernels::simd_dispatch!(forward_rows_loop(
        x: &[f32],
        gamma: &[f32],
        eps: f32,
        y: &mut [MaybeUninit<f32>]
    ));
}

#[inline(always)]
fn forward_rows_loop(x: &[f32], gamma: &[f32], eps: f32, y: &mut [MaybeUninit<f32>]) {
    let d = gamma.len();
    for (x, y) in x.chunks_exact(d).zip(y.chunks_exact_mut(d)) {
        let (mean, rstd) = moments(x, eps);
        for ((y, &x), &g) in y.iter_mut().zip(x).zip(gamma) {
            *y = MaybeUninit::new((x - mean) * rstd * g);
        }
    }
}

/// The gradients of [`forward`] with respect to `x` and `gamma`, given the output's
/// gradient `grad`.
pub(super) fn backward(x: &[f32], gamma: &[f32], grad: &[f32], eps: f32) -> (Vec<f32>, Vec<f32>) {
    let d = gamma.len();
    let len = x.len();
    assert_eq!(grad.len(), len, "layer norm backward: gradient length");
    let mut dx = Vec::<f32>::with_capacity(len);
    if d == 0 {
        return (dx, Vec::new());
    }
    let per = rows_per_task(d) * d;
    let dgamma = dx.spare_capacity_mut()[..len]
        .par_chunks_mut(per)
        .zip(x.par_chunks(per))
        .zip(grad.par_chunks(per))
        .map(|((dx, x), grad)| {
            let mut dgamma = vec![0.0f32; d];
            backward_rows(x, gamma, grad, eps, dx, &mut dgamma);
            dgamma
        })
        .reduce_with(|mut a, b| {
            a.iter_mut().zip(&b).for_each(|(a, b)| *a += b);
            a
        })
        .unwrap_or_else(|| vec![0.0; d]);
    // SAFETY: `backward_rows` wrote every element of every row.
    unsafe { dx.set_len(len) };
    (dx, dgamma)
}

fn backward_rows(
    x: &[f32],
    gamma: &[f32],
    grad: &[f32],
    eps: f32,
    dx: &mut [MaybeUninit<f32>],
    dgamma: &mut [f32],
) {
    crate::kernels::simd_dispatch!(backward_rows_loop(
        x: &[f32],
        gamma: &[f32],
        grad: &[f32],
        eps: f32,
        dx: &mut [MaybeUninit<f32>],
        dgamma: &mut [f32]
    ));
}

/// Per row, with `x̂ = (x - mean) · rstd` and `g = grad · gamma`:
/// `dx = rstd · (g - mean(g) - x̂ · mean(g · x̂))`, and `dgamma += grad · x̂`.
#[inline(always)]
fn backward_rows_loop(
    x: &[f32],
    gamma: &[f32],
    grad: &[f32],
    eps: f32,
    dx: &mut [MaybeUninit<f32>],
    dgamma: &mut [f32],
) {
    let d = gamma.len();
    let n = d as f32;
    for ((x, grad), dx) in x
        .chunks_exact(d)
        .zip(grad.chunks_exact(d))
        .zip(dx.chunks_exact_mut(d))
    {
        let (mean, rstd) = moments(x, eps);
        let g_mean = lane_sum(grad.iter().zip(gamma).map(|(&dy, &w)| dy * w)) / n;
        let gx_mean = lane_sum(
            grad.iter()
                .zip(gamma)
                .zip(x)
                .map(|((&dy, &w), &x)| dy * w * (x - mean) * rstd),
        ) / n;
        for ((((dx, &x), &dy), &w), dg) in dx
            .iter_mut()
            .zip(x)
            .zip(grad)
            .zip(gamma)
            .zip(dgamma.iter_mut())
        {
            let xhat = (x - mean) * rstd;
            *dg += dy * xhat;
            *dx = MaybeUninit::new(rstd * (dy * w - g_mean - xhat * gx_mean));
        }
    }
}
