//! Host kernels for 2-D convolution (f32, NCHW, one group) and its gradients.
//!
//! One sample at a time: its im2col matrix `[Cin·kh·kw, Hout·Wout]` is built in a per-thread
//! scratch buffer small enough to stay in cache, then one gemm call does the sample's product;
//! samples are spread over rayon's threads (gemm itself runs multi-threaded only when there
//! are fewer samples than threads). The backward builds the same matrix once per sample for
//! both products: the weight's gradient accumulates in a per-thread buffer (summed at the
//! end), and the input's gradient is the im2col matrix's gradient scattered back (col2im) into
//! the sample's own slice. A 1×1, stride-1, unpadded convolution reads the input directly.

use rayon::prelude::*;

use super::gemm::SharedDst;

/// The sizes of one convolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Geometry {
    pub batch: usize,
    pub channels_in: usize,
    pub height: usize,
    pub width: usize,
    pub channels_out: usize,
    pub kernel: [usize; 2],
    pub stride: [usize; 2],
    /// Padding before the first row and column (the end padding only shapes the output).
    pub padding: [usize; 2],
    pub dilation: [usize; 2],
    pub out: [usize; 2],
}

impl Geometry {
    /// Rows of the im2col matrix: `Cin·kh·kw`.
    fn patch(&self) -> usize {
        self.channels_in * self.kernel[0] * self.kernel[1]
    }

    /// Output positions per channel.
    fn positions(&self) -> usize {
        self.out[0] * self.out[1]
    }

    fn input_len(&self) -> usize {
        self.channels_in * self.height * self.width
    }

    fn output_len(&self) -> usize {
        self.channels_out * self.positions()
    }

    /// Panics unless the operands hold exactly what the geometry describes: the kernels
    /// below write every output slot once per input sample, so a short operand would leave
    /// output uninitialised or read past its end.
    fn check(&self, x: &[f32], w: &[f32], bias: Option<&[f32]>) {
        assert_eq!(
            x.len(),
            self.batch * self.input_len(),
            "conv2d: input length"
        );
        assert_eq!(
            w.len(),
            self.channels_out * self.patch(),
            "conv2d: weight length"
        );
        if let Some(b) = bias {
            assert_eq!(b.len(), self.channels_out, "conv2d: bias length");
        }
    }

    /// Whether the im2col matrix is the input itself.
    fn pointwise(&self) -> bool {
        self.kernel == [1, 1]
            && self.stride == [1, 1]
            && self.padding == [0, 0]
            && self.out == [self.height, self.width]
    }

    /// The output columns `ox` whose input column `ox·stride + offset` lies inside the row.
    fn valid_columns(&self, offset: isize) -> std::ops::Range<usize> {
        let (s, w) = (self.stride[1] as isize, self.width as isize);
        let ow = self.out[1] as isize;
        // ox·s + offset >= 0  <=>  ox >= ceil(-offset / s)
        let lo = if offset >= 0 {
            0
        } else {
            (-offset + s - 1) / s
        };
        // ox·s + offset <= w - 1  <=>  ox <= floor((w - 1 - offset) / s)
        let hi = if w - 1 - offset < 0 {
            0
        } else {
            (w - 1 - offset) / s + 1
        };
        let (lo, hi) = (lo.min(ow), hi.min(ow));
        lo as usize..hi.max(lo) as usize
    }

    /// The input row read by output row `oy` at kernel row `ky`, if inside the image.
    fn input_row(&self, oy: usize, ky: usize) -> Option<usize> {
        let iy = (oy * self.stride[0] + ky * self.dilation[0]) as isize - self.padding[0] as isize;
        (0..self.height as isize)
            .contains(&iy)
            .then_some(iy as usize)
    }

    /// Input column offset of kernel column `kx`: input column = `ox·stride + offset`.
    fn column_offset(&self, kx: usize) -> isize {
        (kx * self.dilation[1]) as isize - self.padding[1] as isize
    }
}

/// The im2col matrix of one sample `x` `[Cin, H, W]` into `col` `[Cin·kh·kw, Hout·Wout]`.
fn im2col(g: &Geometry, x: &[f32], col: &mut [f32]) {
    let [kh, kw] = g.kernel;
    let [oh, ow] = g.out;
    let n = g.positions();
    let mut rows = col.chunks_exact_mut(n);
    for ci in 0..g.channels_in {
        let plane = &x[ci * g.height * g.width..][..g.height * g.width];
        for ky in 0..kh {
            for kx in 0..kw {
                let dst = rows.next().expect("one row per (ci, ky, kx)");
                let offset = g.column_offset(kx);
                let valid = g.valid_columns(offset);
                for oy in 0..oh {
                    let out = &mut dst[oy * ow..][..ow];
                    let Some(iy) = g.input_row(oy, ky) else {
                        out.fill(0.0);
                        continue;
                    };
                    let src = &plane[iy * g.width..][..g.width];
                    out[..valid.start].fill(0.0);
                    out[valid.end..].fill(0.0);
                    if g.stride[1] == 1 {
                        let from = (valid.start as isize + offset) as usize;
                        out[valid.clone()].copy_from_slice(&src[from..from + valid.len()]);
                    } else {
                        for ox in valid.clone() {
                            out[ox] = src[(ox as isize * g.stride[1] as isize + offset) as usize];
                        }
                    }
                }
            }
        }
    }
}

/// The adjoint of [`im2col`]: adds `col`'s entries into the input positions they were read
/// from (`dx` `[Cin, H, W]`, zeroed by the caller).
fn col2im(g: &Geometry, col: &[f32], dx: &mut [f32]) {
    let [kh, kw] = g.kernel;
    let [oh, ow] = g.out;
    let n = g.positions();
    let mut rows = col.chunks_exact(n);
    for ci in 0..g.channels_in {
        let plane = &mut dx[ci * g.height * g.width..][..g.height * g.width];
        for ky in 0..kh {
            for kx in 0..kw {
                let src = rows.next().expect("one row per (ci, ky, kx)");
                let offset = g.column_offset(kx);
                let valid = g.valid_columns(offset);
                for oy in 0..oh {
                    let Some(iy) = g.input_row(oy, ky) else {
                        continue;
                    };
                    let from = &src[oy * ow..][..ow];
                    let dst = &mut plane[iy * g.width..][..g.width];
                    if g.stride[1] == 1 {
                        let start = (valid.start as isize + offset) as usize;
                        for (d, s) in dst[start..start + valid.len()]
                            .iter_mut()
                            .zip(&from[valid.clone()])
                        {
                            *d += s;
                        }
                    } else {
                        for ox in valid.clone() {
                            dst[(ox as isize * g.stride[1] as isize + offset) as usize] += from[ox];
                        }
                    }
                }
            }
        }
    }
}

/// `dst [m, n] (= or +=) lhs [m, k] @ rhs [k, n]`, strides `(row, column)` in elements.
#[allow(clippy::too_many_arguments)]
fn gemm(
    mnk: [usize; 3],
    dst: &mut [f32],
    accumulate: bool,
    lhs: &[f32],
    lhs_strides: (isize, isize),
    rhs: &[f32],
    rhs_strides: (isize, isize),
    parallel: bool,
) {
    let [_, _, n] = mnk;
    super::gemm::gemm_slice(
        mnk,
        dst,
        (n as isize, 1),
        accumulate,
        (lhs, lhs_strides),
        (rhs, rhs_strides),
        1.0,
        parallelism(mnk, parallel),
    );
}

/// Splitting one sample's product across threads pays only for large ones (a one-row
/// Fashion-MNIST CNN forward, 64 x 196 x 288 in its second layer, ran slower split).
fn parallelism([m, k, n]: [usize; 3], parallel: bool) -> gemm::Parallelism {
    if parallel && m * n * k >= 256 * 256 * 256 {
        gemm::Parallelism::Rayon(0)
    } else {
        gemm::Parallelism::None
    }
}

/// Samples per rayon task, and whether gemm should parallelise inside a task instead.
fn split(batch: usize) -> (usize, bool) {
    let threads = rayon::current_num_threads().max(1);
    if batch < threads {
        (batch.max(1), true)
    } else {
        (batch.div_ceil(threads), false)
    }
}

/// One sample's convolution `x` `[Cin, H, W]` into `out` (`Cout * n` slots, possibly
/// uninitialised): its im2col matrix built in `col` (unless pointwise), the bias written
/// first when given, then the product added to it. Every slot of `out` is written.
fn sample_forward(
    g: &Geometry,
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    col: &mut [f32],
    out: &mut [std::mem::MaybeUninit<f32>],
    parallel: bool,
) {
    let (k, n) = (g.patch(), g.positions());
    assert_eq!(out.len(), g.output_len());
    let src: &[f32] = if g.pointwise() {
        x
    } else {
        im2col(g, x, col);
        col
    };
    if let Some(bias) = bias {
        for (row, &b) in out.chunks_exact_mut(n).zip(bias) {
            row.fill(std::mem::MaybeUninit::new(b));
        }
    }
    // SAFETY: `out` is this sample's `Cout * n` slots, initialised when read (`accumulate`
    // only after the bias was written).
    let mnk = [g.channels_out, k, n];
    unsafe {
        super::gemm::gemm_checked(
            mnk,
            SharedDst::uninit(out).region(0, (n as isize, 1)),
            bias.is_some(),
            (w, (k as isize, 1)),
            (src, (n as isize, 1)),
            1.0,
            parallelism(mnk, parallel),
        );
    }
}

/// The convolution of `x` `[B, Cin, H, W]` with `w` `[Cout, Cin, kh, kw]`, plus `bias`
/// `[Cout]` when given: `[B, Cout, Hout, Wout]`.
pub(super) fn forward(g: &Geometry, x: &[f32], w: &[f32], bias: Option<&[f32]>) -> Vec<f32> {
    g.check(x, w, bias);
    let (k, n) = (g.patch(), g.positions());
    let len = g.batch * g.output_len();
    if len == 0 || g.input_len() == 0 {
        return vec![0.0; len];
    }
    // Every output element is written by exactly one gemm call below: no zero-fill.
    let mut out = Vec::<f32>::with_capacity(len);
    let (per, parallel) = split(g.batch);
    out.spare_capacity_mut()[..len]
        .par_chunks_mut(per * g.output_len())
        .zip(x.par_chunks(per * g.input_len()))
        .for_each(|(out, x)| {
            let mut col = if g.pointwise() {
                Vec::new()
            } else {
                vec![0.0f32; k * n]
            };
            for (out, x) in out
                .chunks_exact_mut(g.output_len())
                .zip(x.chunks_exact(g.input_len()))
            {
                sample_forward(g, x, w, bias, &mut col, out, parallel);
            }
        });
    // SAFETY: the loop above wrote all `len` elements (one gemm per sample's output).
    unsafe { out.set_len(len) };
    out
}

/// `relu(max_pool(forward(x)))` for inference, with a `k`×`k` window and stride `k`: each
/// sample's convolution output goes to a per-thread scratch buffer that stays in cache and is
/// pooled from there, so the full-resolution output is never written to memory (four times
/// the pooled size at `k` = 2). `[B, Cout, Hout / k, Wout / k]`.
pub(super) fn forward_relu_max_pool(
    g: &Geometry,
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    k: usize,
) -> Vec<f32> {
    g.check(x, w, bias);
    let (patch, n) = (g.patch(), g.positions());
    let pool = super::pool::Geometry {
        planes: 1,
        height: g.out[0],
        width: g.out[1],
        k,
    };
    let [ph, pw] = pool.out();
    let pooled = g.channels_out * ph * pw;
    let len = g.batch * pooled;
    if len == 0 || g.input_len() == 0 {
        return vec![0.0; len];
    }
    let mut out = Vec::<f32>::with_capacity(len);
    let (per, parallel) = split(g.batch);
    out.spare_capacity_mut()[..len]
        .par_chunks_mut(per * pooled)
        .zip(x.par_chunks(per * g.input_len()))
        .for_each(|(out, x)| {
            let mut col = if g.pointwise() {
                Vec::new()
            } else {
                vec![0.0f32; patch * n]
            };
            let mut conv = Vec::<f32>::with_capacity(g.output_len());
            for (out, x) in out
                .chunks_exact_mut(pooled)
                .zip(x.chunks_exact(g.input_len()))
            {
                let slots = &mut conv.spare_capacity_mut()[..g.output_len()];
                sample_forward(g, x, w, bias, &mut col, slots, parallel);
                // SAFETY: `sample_forward` wrote all `Cout * n` slots.
                let planes = unsafe { std::slice::from_raw_parts(conv.as_ptr(), g.output_len()) };
                for (o, plane) in out.chunks_exact_mut(ph * pw).zip(planes.chunks_exact(n)) {
                    super::pool::forward_plane(plane, o, &pool);
                }
            }
        });
    // SAFETY: every pooled element was written above (one plane per output channel).
    unsafe { out.set_len(len) };
    out
}

/// The gradients of [`forward`] given the output's gradient `grad`: the input's (when
/// `input_grad`) and the weight's `[Cout, Cin, kh, kw]`.
pub(super) fn backward(
    g: &Geometry,
    x: &[f32],
    w: &[f32],
    grad: &[f32],
    input_grad: bool,
) -> (Option<Vec<f32>>, Vec<f32>) {
    g.check(x, w, None);
    assert_eq!(
        grad.len(),
        g.batch * g.output_len(),
        "conv2d backward: gradient length"
    );
    let (k, n) = (g.patch(), g.positions());
    if g.batch * g.output_len() == 0 || g.input_len() == 0 {
        let dx = input_grad.then(|| vec![0.0; g.batch * g.input_len()]);
        return (dx, vec![0.0; g.channels_out * k]);
    }
    let (per, parallel) = split(g.batch);
    let task = |first: usize, dx: Option<&mut [f32]>| -> Vec<f32> {
        let samples = per.min(g.batch - first);
        let mut dw = vec![0.0f32; g.channels_out * k];
        let mut col = if g.pointwise() {
            Vec::new()
        } else {
            vec![0.0f32; k * n]
        };
        let mut dcol = if input_grad && !g.pointwise() {
            vec![0.0f32; k * n]
        } else {
            Vec::new()
        };
        let mut dx = dx.map(|d| d.chunks_exact_mut(g.input_len()));
        for s in first..first + samples {
            let xs = &x[s * g.input_len()..][..g.input_len()];
            let gs = &grad[s * g.output_len()..][..g.output_len()];
            let src: &[f32] = if g.pointwise() {
                xs
            } else {
                im2col(g, xs, &mut col);
                &col
            };
            // dW [Cout, k] += grad_s [Cout, n] @ colᵀ [n, k].
            gemm(
                [g.channels_out, n, k],
                &mut dw,
                true,
                gs,
                (n as isize, 1),
                src,
                (1, n as isize),
                parallel,
            );
            if let Some(dx) = dx.as_mut().and_then(Iterator::next) {
                // dcol [k, n] = wᵀ [k, Cout] @ grad_s [Cout, n], scattered back into dx.
                let product = |target: &mut [f32]| {
                    gemm(
                        [k, g.channels_out, n],
                        target,
                        false,
                        w,
                        (1, k as isize),
                        gs,
                        (n as isize, 1),
                        parallel,
                    )
                };
                if g.pointwise() {
                    product(dx);
                } else {
                    product(&mut dcol);
                    col2im(g, &dcol, dx);
                }
            }
        }
        dw
    };
    let sum = |mut a: Vec<f32>, b: Vec<f32>| {
        a.iter_mut().zip(&b).for_each(|(a, b)| *a += b);
        a
    };
    let tasks = g.batch.div_ceil(per);
    if input_grad {
        let mut dx = vec![0.0f32; g.batch * g.input_len()];
        let dw = dx
            .par_chunks_mut(per * g.input_len())
            .enumerate()
            .map(|(t, d)| task(t * per, Some(d)))
            // In task order (rayon's reduction would group by how work was stolen).
            .collect::<Vec<_>>()
            .into_iter()
            .reduce(sum)
            .unwrap_or_else(|| vec![0.0; g.channels_out * k]);
        (Some(dx), dw)
    } else {
        let dw = (0..tasks)
            .into_par_iter()
            .map(|t| task(t * per, None))
            .collect::<Vec<_>>()
            .into_iter()
            .reduce(sum)
            .unwrap_or_else(|| vec![0.0; g.channels_out * k]);
        (None, dw)
    }
}

/// The bias's gradient of a convolution: `grad` `[B, Cout, Hout·Wout]` summed over samples
/// and positions, `[Cout]` (f64 partial sums per row).
pub(super) fn bias_grad(batch: usize, channels: usize, grad: &[f32]) -> Vec<f32> {
    let n = grad.len() / (batch * channels).max(1);
    if n == 0 {
        return vec![0.0; channels];
    }
    let (per, _) = split(batch);
    grad.par_chunks(per * channels * n)
        .map(|samples| {
            let mut sums = vec![0.0f64; channels];
            for sample in samples.chunks_exact(channels * n) {
                for (sum, row) in sums.iter_mut().zip(sample.chunks_exact(n)) {
                    *sum += lane_sum(row) as f64;
                }
            }
            sums
        })
        .collect::<Vec<_>>()
        .into_iter()
        .reduce(|mut a, b| {
            a.iter_mut().zip(&b).for_each(|(a, b)| *a += b);
            a
        })
        .unwrap_or_else(|| vec![0.0; channels])
        .into_iter()
        .map(|s| s as f32)
        .collect()
}

/// The sum of `values` over 16 independent lanes (so the loop vectorises; a plain fold is
/// one sequential chain of scalar adds).
fn lane_sum(values: &[f32]) -> f32 {
    let mut lanes = [0.0f32; 16];
    let mut chunks = values.chunks_exact(16);
    for chunk in &mut chunks {
        for (lane, v) in lanes.iter_mut().zip(chunk) {
            *lane += v;
        }
    }
    lanes.iter().sum::<f32>() + chunks.remainder().iter().sum::<f32>()
}
