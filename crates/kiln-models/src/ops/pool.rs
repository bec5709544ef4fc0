//! Host kernels for ReLU followed by a `k`×`k` max-pool with stride `k` (f32, NCHW, no
//! padding; trailing rows and columns that do not fill a window are dropped), forward and
//! backward in one pass each. `max(relu(x)) = relu(max(x))`, so the forward reads each input
//! once and writes a quarter (k = 2) of it; the backward finds each window's first maximum
//! again from the input (no index tensor kept) and writes every input position once.

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

/// The first position (row-major within the window) of the window's maximum, and the maximum.
#[inline(always)]
fn window_max(plane: &[f32], width: usize, k: usize, oy: usize, ox: usize) -> (usize, f32) {
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
    let [oh, ow] = g.out();
    let (plane_in, plane_out) = (g.height * g.width, oh * ow);
    let mut out = vec![0.0f32; g.planes * plane_out];
    let per = planes_per_task(g);
    out.par_chunks_mut(per * plane_out.max(1))
        .zip(x.par_chunks(per * plane_in.max(1)))
        .for_each(|(out, x)| {
            for (o, p) in out
                .chunks_exact_mut(plane_out.max(1))
                .zip(x.chunks_exact(plane_in.max(1)))
            {
                if plane_out == 0 {
                    continue;
                }
                for oy in 0..oh {
                    for ox in 0..ow {
                        o[oy * ow + ox] = window_max(p, g.width, g.k, oy, ox).1.max(0.0);
                    }
                }
            }
        });
    out
}

/// The gradient of [`forward`] with respect to `x`, given the output's gradient `grad`: each
/// window's gradient goes to its first maximum when that maximum is positive.
pub(super) fn backward(g: &Geometry, x: &[f32], grad: &[f32]) -> Vec<f32> {
    let [oh, ow] = g.out();
    let (plane_in, plane_out) = (g.height * g.width, oh * ow);
    let mut dx = vec![0.0f32; g.planes * plane_in];
    let per = planes_per_task(g);
    dx.par_chunks_mut(per * plane_in.max(1))
        .zip(x.par_chunks(per * plane_in.max(1)))
        .zip(grad.par_chunks(per * plane_out.max(1)))
        .for_each(|((dx, x), grad)| {
            for ((d, p), gr) in dx
                .chunks_exact_mut(plane_in.max(1))
                .zip(x.chunks_exact(plane_in.max(1)))
                .zip(grad.chunks_exact(plane_out.max(1)))
            {
                if plane_out == 0 {
                    continue;
                }
                for oy in 0..oh {
                    for ox in 0..ow {
                        let (at, max) = window_max(p, g.width, g.k, oy, ox);
                        if max > 0.0 {
                            d[at] = gr[oy * ow + ox];
                        }
                    }
                }
            }
        });
    dx
}
