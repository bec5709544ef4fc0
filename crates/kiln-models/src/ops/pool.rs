//! Host kernels for ReLU followed by a `k`×`k` max-pool with stride `k` (f32, NCHW, no
//! padding; trailing rows and columns that do not fill a window are dropped), forward and
//! backward in one pass each. `max(relu(x)) = relu(max(x))`, so the forward reads each input
//! once and writes a quarter (k = 2) of it; the backward finds each window's first maximum
//! again from the input (no index tensor kept) and writes every input position once.

use std::mem::MaybeUninit;

use rayon::prelude::*;

/// Sizes of one pooling: `planes = batch · channels`.
#[derive(Debug, Clone, Copy)]
pub(super) struct Geometry {
    pub planes: usize,
    pub height: usize,
    pub width: usize,
    pub k: usize,
}

impl Geometry {
    fn out(&self) -> [usize; 2] {
        [self.height / self.k, self.width / self.k]
    }
}

/// Planes per rayon task: enough work that scheduling is noise.
fn planes_per_task(g: &Geometry) -> usize {
    (1 << 14) / (g.height * g.width).max(1) + 1
}

/// The first position (row-major within the window) of the window's maximum, and the
/// maximum. `K` is the window size when known at compile time (0: use `k`).
#[inline(always)]
fn window_max<const K: usize>(
    plane: &[f32],
    width: usize,
    k: usize,
    oy: usize,
    ox: usize,
) -> (usize, f32) {
    let k = if K > 0 { K } else { k };
    let first = oy * k * width + ox * k;
    let (mut at, mut max) = (first, plane[first]);
    for dy in 0..k {
        let row = first + dy * width;
        for (i, &v) in plane[row..row + k].iter().enumerate() {
            if v > max {
                (at, max) = (row + i, v);
            }
        }
    }
    (at, max)
}

/// `relu(max_pool(x))`, `[planes, H / k, W / k]`.
pub(super) fn forward(g: &Geometry, x: &[f32]) -> Vec<f32> {
    match g.k {
        2 => forward_k::<2>(g, x),
        3 => forward_k::<3>(g, x),
        _ => forward_k::<0>(g, x),
    }
}

fn forward_k<const K: usize>(g: &Geometry, x: &[f32]) -> Vec<f32> {
    let [oh, ow] = g.out();
    let (plane_in, plane_out) = (g.height * g.width, oh * ow);
    let len = g.planes * plane_out;
    if len == 0 {
        return Vec::new();
    }
    let mut out = Vec::<f32>::with_capacity(len);
    let per = planes_per_task(g);
    out.spare_capacity_mut()[..len]
        .par_chunks_mut(per * plane_out)
        .zip(x.par_chunks(per * plane_in))
        .for_each(|(out, x)| {
            for (o, p) in out
                .chunks_exact_mut(plane_out)
                .zip(x.chunks_exact(plane_in))
            {
                if K == 2 {
                    // The common case, written so it vectorises (no argmax needed here).
                    for (oy, o) in o.chunks_exact_mut(ow).enumerate() {
                        let rows = &p[2 * oy * g.width..(2 * oy + 2) * g.width];
                        let (r0, r1) = rows.split_at(g.width);
                        for (ox, o) in o.iter_mut().enumerate() {
                            let m = r0[2 * ox]
                                .max(r0[2 * ox + 1])
                                .max(r1[2 * ox].max(r1[2 * ox + 1]));
                            *o = MaybeUninit::new(m.max(0.0));
                        }
                    }
                    continue;
                }
                for oy in 0..oh {
                    for ox in 0..ow {
                        let max = window_max::<K>(p, g.width, g.k, oy, ox).1;
                        o[oy * ow + ox] = MaybeUninit::new(max.max(0.0));
                    }
                }
            }
        });
    // SAFETY: every output element was written above (one per window of every plane).
    unsafe { out.set_len(len) };
    out
}

/// The gradient of [`forward`] with respect to `x`, given the output's gradient `grad`: each
/// window's gradient goes to its first maximum when that maximum is positive.
pub(super) fn backward(g: &Geometry, x: &[f32], grad: &[f32]) -> Vec<f32> {
    match g.k {
        2 => backward_k::<2>(g, x, grad),
        3 => backward_k::<3>(g, x, grad),
        _ => backward_k::<0>(g, x, grad),
    }
}

fn backward_k<const K: usize>(g: &Geometry, x: &[f32], grad: &[f32]) -> Vec<f32> {
    let [oh, ow] = g.out();
    let (plane_in, plane_out) = (g.height * g.width, oh * ow);
    if plane_out == 0 {
        return vec![0.0; g.planes * plane_in];
    }
    let k = g.k;
    let len = g.planes * plane_in;
    let mut dx = Vec::<f32>::with_capacity(len);
    let per = planes_per_task(g);
    dx.spare_capacity_mut()[..len]
        .par_chunks_mut(per * plane_in)
        .zip(x.par_chunks(per * plane_in))
        .zip(grad.par_chunks(per * plane_out))
        .for_each(|((dx, x), grad)| {
            for ((d, p), gr) in dx
                .chunks_exact_mut(plane_in)
                .zip(x.chunks_exact(plane_in))
                .zip(grad.chunks_exact(plane_out))
            {
                // Rows and columns past the last full window get no gradient.
                for row in d.chunks_exact_mut(g.width).skip(oh * k) {
                    row.fill(MaybeUninit::new(0.0));
                }
                for oy in 0..oh {
                    d[oy * k * g.width..(oy + 1) * k * g.width].fill(MaybeUninit::new(0.0));
                    for ox in 0..ow {
                        let (at, max) = window_max::<K>(p, g.width, k, oy, ox);
                        if max > 0.0 {
                            d[at] = MaybeUninit::new(gr[oy * ow + ox]);
                        }
                    }
                }
            }
        });
    // SAFETY: every element of every plane was written above: the rows of each band of
    // windows, then the rows below the last band.
    unsafe { dx.set_len(len) };
    dx
}
