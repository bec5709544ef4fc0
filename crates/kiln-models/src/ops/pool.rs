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
    /// Output rows and columns per plane.
    pub(super) fn out(&self) -> [usize; 2] {
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

/// The larger of `a` and `b` (`b` when they are equal or either is NaN).
#[inline(always)]
fn greater(a: f32, b: f32) -> f32 {
    if a > b { a } else { b }
}

/// `relu(max_pool(x))`, `[planes, H / k, W / k]`.
pub(super) fn forward(g: &Geometry, x: &[f32]) -> Vec<f32> {
    assert_eq!(
        x.len(),
        g.planes * g.height * g.width,
        "max pool: input length"
    );
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
                forward_plane_k::<K>(p, o, g);
            }
        });
    // SAFETY: every output element was written above (one per window of every plane).
    unsafe { out.set_len(len) };
    out
}

/// [`forward`] of one plane `p` `[H, W]` into `o` `[H / k, W / k]` (`g.planes` unused).
pub(super) fn forward_plane(p: &[f32], o: &mut [MaybeUninit<f32>], g: &Geometry) {
    let [oh, ow] = g.out();
    assert_eq!(p.len(), g.height * g.width, "max pool: plane length");
    assert_eq!(o.len(), oh * ow, "max pool: output plane length");
    match g.k {
        2 => forward_plane_k::<2>(p, o, g),
        3 => forward_plane_k::<3>(p, o, g),
        _ => forward_plane_k::<0>(p, o, g),
    }
}

#[inline(always)]
fn forward_plane_k<const K: usize>(p: &[f32], o: &mut [MaybeUninit<f32>], g: &Geometry) {
    if K == 2 {
        forward_plane_2x2(p, o, g.width);
        return;
    }
    let [oh, ow] = g.out();
    for oy in 0..oh {
        for ox in 0..ow {
            let max = window_max::<K>(p, g.width, g.k, oy, ox).1;
            o[oy * ow + ox] = MaybeUninit::new(max.max(0.0));
        }
    }
}

/// The gradient of [`forward`] with respect to `x`, given the output's gradient `grad`: each
/// window's gradient goes to its first maximum when that maximum is positive.
pub(super) fn backward(g: &Geometry, x: &[f32], grad: &[f32]) -> Vec<f32> {
    let [oh, ow] = g.out();
    assert_eq!(
        x.len(),
        g.planes * g.height * g.width,
        "max pool backward: input length"
    );
    assert_eq!(
        grad.len(),
        g.planes * oh * ow,
        "max pool backward: gradient length"
    );
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
                if K == 2 {
                    backward_plane_2x2(p, gr, d, g.width);
                    continue;
                }
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

/// [`forward`] of one plane `p` `[H, W]` into `o` `[H / 2, W / 2]` for 2×2 windows, with the
/// widest SIMD the CPU offers.
fn forward_plane_2x2(p: &[f32], o: &mut [MaybeUninit<f32>], width: usize) {
    crate::kernels::simd_dispatch!(forward_plane_2x2_loop(
        p: &[f32],
        o: &mut [MaybeUninit<f32>],
        width: usize
    ));
}

#[inline(always)]
fn forward_plane_2x2_loop(p: &[f32], o: &mut [MaybeUninit<f32>], width: usize) {
    let ow = width / 2;
    if ow == 0 {
        return;
    }
    for (o, rows) in o.chunks_exact_mut(ow).zip(p.chunks_exact(2 * width)) {
        let (r0, r1) = rows.split_at(width);
        for ((o, a), b) in o.iter_mut().zip(r0.chunks_exact(2)).zip(r1.chunks_exact(2)) {
            let m = greater(greater(a[0], a[1]), greater(b[0], b[1]));
            *o = MaybeUninit::new(greater(m, 0.0));
        }
    }
}

/// [`backward`] of one plane for 2×2 windows: `d` `[H, W]` from the input plane `p` and the
/// output's gradient `grad` `[H / 2, W / 2]`, with the widest SIMD the CPU offers.
fn backward_plane_2x2(p: &[f32], grad: &[f32], d: &mut [MaybeUninit<f32>], width: usize) {
    crate::kernels::simd_dispatch!(backward_plane_2x2_loop(
        p: &[f32],
        grad: &[f32],
        d: &mut [MaybeUninit<f32>],
        width: usize
    ));
}

#[inline(always)]
fn backward_plane_2x2_loop(p: &[f32], grad: &[f32], d: &mut [MaybeUninit<f32>], width: usize) {
    let ow = width / 2;
    let bands = grad.len().checked_div(ow).unwrap_or(0);
    let (windowed, rest) = d.split_at_mut(bands * 2 * width);
    // Rows below the last full band of windows get no gradient.
    rest.fill(MaybeUninit::new(0.0));
    if ow == 0 {
        return;
    }
    for ((d, rows), grad) in windowed
        .chunks_exact_mut(2 * width)
        .zip(p.chunks_exact(2 * width))
        .zip(grad.chunks_exact(ow))
    {
        let (r0, r1) = rows.split_at(width);
        let (d0, d1) = d.split_at_mut(width);
        // A trailing odd column gets no gradient.
        d0[2 * ow..].fill(MaybeUninit::new(0.0));
        d1[2 * ow..].fill(MaybeUninit::new(0.0));
        for ((((d0, d1), a), b), &g) in d0
            .chunks_exact_mut(2)
            .zip(d1.chunks_exact_mut(2))
            .zip(r0.chunks_exact(2))
            .zip(r1.chunks_exact(2))
            .zip(grad)
        {
            // The first maximum in row-major order, as `window_max` finds it.
            let mut max = a[0];
            let mut at = 0u8;
            if a[1] > max {
                (max, at) = (a[1], 1);
            }
            if b[0] > max {
                (max, at) = (b[0], 2);
            }
            if b[1] > max {
                (max, at) = (b[1], 3);
            }
            let g = if max > 0.0 { g } else { 0.0 };
            d0[0] = MaybeUninit::new(if at == 0 { g } else { 0.0 });
            d0[1] = MaybeUninit::new(if at == 1 { g } else { 0.0 });
            d1[0] = MaybeUninit::new(if at == 2 { g } else { 0.0 });
            d1[1] = MaybeUninit::new(if at == 3 { g } else { 0.0 });
        }
    }
}
