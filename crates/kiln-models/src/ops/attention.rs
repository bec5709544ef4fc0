//! Multi-head self-attention over packed `[B, T, 3C]` projections: causal (decoder) or
//! bidirectional (encoder), with an optional key padding mask and attention dropout.
//!
//! Two implementations of one definition: fused host kernels (one pass per batch row and
//! head, forward and backward, the probabilities recomputed in the backward instead of
//! stored) and Burn ops for any other device. Both draw the dropout mask from the same
//! counter-based stream ([`dropout_scales`], row `(b * heads + h) * T + i` per query), so they
//! agree element for element and a step replays bit-identically from its seed.

use std::sync::Arc;

use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, TensorMetadata};
use burn::prelude::TensorData;
use burn::tensor::{Shape, Slice};
use rayon::prelude::*;

use super::dropout::{DropoutMask, dropout_scales};
use super::gemm::{DstRegion, SharedDst};
use super::precision::{cast_to, to_f32};

/// Score of a padding key in the Burn-ops form: finite, so a row whose keys are all padding
/// attends uniformly over its allowed keys instead of producing NaN. The fused kernels give
/// the same uniform row.
pub const MASKED_SCORE: f32 = -1e9;

/// What one attention call computes besides the projections.
#[derive(Debug, Clone)]
pub struct AttentionSpec {
    /// Heads; the width `C` divides by it.
    pub heads: usize,
    /// Whether query `i` sees keys `0..=i` only (a decoder) rather than every key.
    pub causal: bool,
    /// Keys to ignore: `[B * T]` row-major, true at padding.
    pub key_padding: Option<Arc<[bool]>>,
    /// Dropout on the attention probabilities, if any; row `(b * heads + h) * T + i` of the
    /// mask ([`dropout_scales`]) is query `i`'s.
    pub dropout: Option<DropoutMask>,
}

impl AttentionSpec {
    /// Panics unless `qkv`'s `[B, T, 3C]` fits the heads and the padding mask.
    fn check(&self, b: usize, t: usize, c3: usize) -> (usize, usize) {
        assert!(
            self.heads > 0 && c3.is_multiple_of(3 * self.heads),
            "attention: the packed width {c3} is not 3 x heads ({}) x head width",
            self.heads
        );
        if let Some(pad) = &self.key_padding {
            assert_eq!(
                pad.len(),
                b * t,
                "attention: the padding mask has {} entries for {b} rows of {t} tokens",
                pad.len()
            );
        }
        if let Some(dropout) = self.dropout {
            assert!(
                (0.0..1.0).contains(&dropout.prob),
                "attention dropout must be in [0, 1), got {}",
                dropout.prob
            );
        }
        (c3 / 3, c3 / 3 / self.heads)
    }

    /// The padding of batch row `bi`, `[T]`, if any.
    fn padding(&self, bi: usize, t: usize) -> Option<&[bool]> {
        self.key_padding
            .as_deref()
            .map(|p| &p[bi * t..(bi + 1) * t])
    }
}

/// How the rows of one batch row's attention look: the key columns computed and, per query,
/// the keys it may see.
struct RowPlan<'a> {
    t: usize,
    /// Key columns computed: all `T`, or up to the last real key when padding ends the row
    /// (keys past it only ever get zero probability).
    keys: usize,
    causal: bool,
    padding: Option<&'a [bool]>,
}

impl<'a> RowPlan<'a> {
    fn new(spec: &'a AttentionSpec, bi: usize, t: usize) -> Self {
        let padding = spec.padding(bi, t);
        let keys = match padding {
            Some(pad) if !spec.causal => match pad.iter().rposition(|&p| !p) {
                Some(last) => last + 1,
                // Every key is padding: each row attends uniformly over all of them.
                None => t,
            },
            _ => t,
        };
        Self {
            t,
            keys,
            causal: spec.causal,
            padding,
        }
    }

    /// Keys query `i` may see (before padding): `0..allowed`.
    fn allowed(&self, i: usize) -> usize {
        if self.causal { i + 1 } else { self.t }
    }

    /// Whether query `i`'s allowed keys are all padding (it then attends uniformly, and its
    /// scores get no gradient, as with a masked fill).
    fn uniform(&self, i: usize) -> bool {
        let allowed = self.allowed(i);
        self.padding
            .is_some_and(|pad| pad[..allowed].iter().all(|&p| p))
    }

    /// Turns row `i` of scaled scores (`keys` wide) into probabilities in place.
    fn softmax_row(&self, i: usize, row: &mut [f32]) {
        let allowed = self.allowed(i);
        if self.uniform(i) {
            let u = 1.0 / allowed as f32;
            row[..allowed].fill(u);
            row[allowed..].fill(0.0);
            return;
        }
        let seen = allowed.min(self.keys);
        let (row, unseen) = row.split_at_mut(seen);
        unseen.fill(0.0);
        if let Some(pad) = self.padding {
            for (s, &p) in row.iter_mut().zip(pad) {
                if p {
                    *s = f32::NEG_INFINITY;
                }
            }
        }
        crate::kernels::softmax_in_place(row);
    }
}

/// `dst = scale * lhs [m, k] @ rhs [k, n]`, single-threaded (the caller parallelises over
/// heads), every operand strided `(row, column)` and checked against its buffer.
///
/// # Safety
/// No other task touches `dst`'s region during the call.
unsafe fn gemm(
    [m, k, n]: [usize; 3],
    dst: DstRegion,
    lhs: (&[f32], (isize, isize)),
    rhs: (&[f32], (isize, isize)),
    scale: f32,
) {
    // SAFETY: the caller's contract for `dst`; gemm_checked checks every extent.
    unsafe {
        super::gemm::gemm_checked(
            [m, k, n],
            dst,
            false,
            lhs,
            rhs,
            scale,
            gemm::Parallelism::None,
        )
    }
}

/// One head's queries, keys and values in a batch row of packed projections: each slice starts
/// at the head's first value and runs to the end of `qkv`.
struct Head<'a> {
    q: &'a [f32],
    k: &'a [f32],
    v: &'a [f32],
    /// Distance between two positions' projections (`3C`).
    row: isize,
}

impl<'a> Head<'a> {
    /// Head `h` of batch row `bi` in `qkv` `[b, t, 3c]` (`d` values per head).
    fn new(qkv: &'a [f32], bi: usize, h: usize, (t, c, d): (usize, usize, usize)) -> Self {
        let base = bi * t * 3 * c + h * d;
        Head {
            q: &qkv[base..],
            k: &qkv[base + c..],
            v: &qkv[base + 2 * c..],
            row: (3 * c) as isize,
        }
    }
}

/// The probabilities of one head into `p` `[T, keys]` (row stride `keys`).
fn probabilities(plan: &RowPlan, head: &Head, d: usize, p: &mut [f32]) {
    let (t, n) = (plan.t, plan.keys);
    let scale = 1.0 / (d as f32).sqrt();
    super::gemm::gemm_slice(
        [t, d, n],
        p,
        (n as isize, 1),
        false,
        (head.q, (head.row, 1)),
        (head.k, (1, head.row)),
        scale,
        gemm::Parallelism::None,
    );
    for (i, r) in p[..t * n].chunks_exact_mut(n).enumerate() {
        plan.softmax_row(i, r);
    }
}

/// Fills `m` `[T, keys]` with the dropout factors of batch row `bi`, head `h`.
fn dropout_mask(
    dropout: DropoutMask,
    (bi, h, heads): (usize, usize, usize),
    plan: &RowPlan,
    m: &mut [f32],
) {
    let (t, n) = (plan.t, plan.keys);
    for (i, r) in m[..t * n].chunks_exact_mut(n).enumerate() {
        dropout_scales(dropout, ((bi * heads + h) * t + i) as u64, r);
    }
}

/// `y [b, t, c]` from `qkv [b, t, 3c]`.
pub(super) fn forward(qkv: &[f32], [b, t, c3]: [usize; 3], spec: &AttentionSpec) -> Vec<f32> {
    assert_eq!(qkv.len(), b * t * c3, "attention: qkv length");
    let (c, d) = spec.check(b, t, c3);
    if b * t == 0 {
        return Vec::new();
    }
    let heads = spec.heads;
    let mut y = vec![0.0f32; b * t * c];
    let out = SharedDst::new(&mut y);
    (0..b * heads).into_par_iter().for_each_init(
        || (vec![0.0f32; t * t], Vec::new()),
        |(p, m), bh| {
            let (bi, h) = (bh / heads, bh % heads);
            let plan = RowPlan::new(spec, bi, t);
            let head = Head::new(qkv, bi, h, (t, c, d));
            probabilities(&plan, &head, d, p);
            let n = plan.keys;
            if let Some(dropout) = spec.dropout {
                m.resize(t * n, 0.0);
                dropout_mask(dropout, (bi, h, heads), &plan, m);
                for (pv, mv) in p[..t * n].iter_mut().zip(m.iter()) {
                    *pv *= mv;
                }
            }
            // SAFETY: each task writes its own head's d columns of its batch row's [t, c]
            // block of y.
            unsafe {
                gemm(
                    [t, n, d],
                    out.region(bi * t * c + h * d, (c as isize, 1)),
                    (p, (n as isize, 1)),
                    (head.v, (head.row, 1)),
                    1.0,
                );
            }
        },
    );
    y
}

/// `dqkv [b, t, 3c]` from `qkv` and the output gradient `dy [b, t, c]`.
pub(super) fn backward(
    qkv: &[f32],
    dy: &[f32],
    [b, t, c3]: [usize; 3],
    spec: &AttentionSpec,
) -> Vec<f32> {
    assert_eq!(qkv.len(), b * t * c3, "attention backward: qkv length");
    let (c, d) = spec.check(b, t, c3);
    assert_eq!(dy.len(), b * t * c, "attention backward: gradient length");
    if b * t == 0 {
        return Vec::new();
    }
    let heads = spec.heads;
    let scale = 1.0 / (d as f32).sqrt();
    let mut g = vec![0.0f32; b * t * 3 * c];
    let out = SharedDst::new(&mut g);
    (0..b * heads).into_par_iter().for_each_init(
        || (vec![0.0f32; t * t], vec![0.0f32; t * t], Vec::new()),
        |(p, dp, m), bh| {
            let (bi, h) = (bh / heads, bh % heads);
            let plan = RowPlan::new(spec, bi, t);
            let n = plan.keys;
            let head = Head::new(qkv, bi, h, (t, c, d));
            let dyb = &dy[bi * t * c + h * d..];
            let (yrow, nn) = (c as isize, n as isize);
            // This head's d columns of the q, k and v blocks of this batch row of g (keys past
            // `n` keep their zero gradient): no other task writes them.
            let gbase = bi * t * 3 * c;
            let (dq, dk, dv) = (
                out.region(gbase + h * d, (head.row, 1)),
                out.region(gbase + c + h * d, (head.row, 1)),
                out.region(gbase + 2 * c + h * d, (head.row, 1)),
            );
            probabilities(&plan, &head, d, p);
            let (p, dp) = (&mut p[..t * n], &mut dp[..t * n]);
            // dV = (P ∘ M)ᵀ dY, with the dropped probabilities staged in dp.
            let dropped = match spec.dropout {
                Some(dropout) => {
                    m.resize(t * n, 0.0);
                    dropout_mask(dropout, (bi, h, heads), &plan, m);
                    for ((x, &pv), &mv) in dp.iter_mut().zip(p.iter()).zip(m.iter()) {
                        *x = pv * mv;
                    }
                    &*dp
                }
                None => &*p,
            };
            // SAFETY: dv is this task's own region of g.
            unsafe { gemm([n, t, d], dv, (dropped, (1, nn)), (dyb, (yrow, 1)), 1.0) };
            // dP = (dY Vᵀ) ∘ M
            super::gemm::gemm_slice(
                [t, d, n],
                dp,
                (nn, 1),
                false,
                (dyb, (yrow, 1)),
                (head.v, (1, head.row)),
                1.0,
                gemm::Parallelism::None,
            );
            if spec.dropout.is_some() {
                for (x, &mv) in dp.iter_mut().zip(m.iter()) {
                    *x *= mv;
                }
            }
            // dS = P ∘ (dP − rowsum(dP ∘ P)), times the score scale; none for a row of
            // padding only.
            for (i, (pr, dr)) in p.chunks_exact(n).zip(dp.chunks_exact_mut(n)).enumerate() {
                if plan.uniform(i) {
                    dr.fill(0.0);
                    continue;
                }
                let s: f32 = pr.iter().zip(dr.iter()).map(|(a, b)| a * b).sum();
                for (x, &pv) in dr.iter_mut().zip(pr) {
                    *x = pv * (*x - s) * scale;
                }
            }
            // dQ = dS K, dK = dSᵀ Q
            // SAFETY: dq and dk are this task's own regions of g.
            unsafe {
                gemm([t, n, d], dq, (dp, (nn, 1)), (head.k, (head.row, 1)), 1.0);
                gemm([n, t, d], dk, (dp, (1, nn)), (head.q, (head.row, 1)), 1.0);
            }
        },
    );
    g
}

/// Host tensors that spell out `spec` for the Burn-ops form, `[B, 1, T, T]` each (the same for
/// every head): which scores are kept (1) or replaced (0), what replaces them (`-inf` past the
/// causal diagonal, [`MASKED_SCORE`] at padding: a replacement, not an addition, so a row of
/// padding only is exactly uniform whatever its scores), and where scores receive gradient.
fn mask_tensors(spec: &AttentionSpec, b: usize, t: usize) -> [TensorData; 3] {
    let mut keep = vec![1.0f32; b * t * t];
    let mut bias = vec![0.0f32; b * t * t];
    let mut pass = vec![1.0f32; b * t * t];
    for bi in 0..b {
        let plan = RowPlan::new(spec, bi, t);
        let padding = spec.padding(bi, t);
        for i in 0..t {
            let allowed = plan.allowed(i);
            let uniform = plan.uniform(i);
            let row = (bi * t + i) * t;
            for j in 0..t {
                let padded = padding.is_some_and(|p| p[j]);
                if j >= allowed {
                    bias[row + j] = f32::NEG_INFINITY;
                } else if padded {
                    bias[row + j] = MASKED_SCORE;
                }
                if j >= allowed || padded {
                    keep[row + j] = 0.0;
                }
                if j >= allowed || padded || uniform {
                    pass[row + j] = 0.0;
                }
            }
        }
    }
    let shape = [b, 1, t, t];
    [keep, bias, pass].map(|m| TensorData::new(m, shape))
}

/// The dropout factors of every row, `[B, H, T, T]`.
fn dropout_tensor(dropout: DropoutMask, b: usize, heads: usize, t: usize) -> TensorData {
    let mut m = vec![0.0f32; b * heads * t * t];
    for (row, r) in m.chunks_exact_mut(t.max(1)).enumerate() {
        dropout_scales(dropout, row as u64, r);
    }
    TensorData::new(m, [b, heads, t, t])
}

/// One of q, k, v of `qkv` `[B, T, 3C]` as `[B, H, T, D]`.
fn split_heads<B: Backend>(qkv: &FloatTensor<B>, i: usize, heads: usize) -> FloatTensor<B> {
    let s = qkv.shape();
    let [b, t, c] = [s[0], s[1], s[2] / 3];
    let x = B::float_slice(
        qkv.clone(),
        &[
            Slice::from(0..b),
            Slice::from(0..t),
            Slice::from(i * c..(i + 1) * c),
        ],
    );
    let x = B::float_reshape(x, Shape::new([b, t, heads, c / heads]));
    B::float_swap_dims(x, 1, 2)
}

/// `[B, H, T, D]` back to `[B, T, H * D]`.
fn merge_heads<B: Backend>(x: FloatTensor<B>) -> FloatTensor<B> {
    let s = x.shape();
    let [b, h, t, d] = [s[0], s[1], s[2], s[3]];
    B::float_reshape(B::float_swap_dims(x, 1, 2), Shape::new([b, t, h * d]))
}

/// What both Burn-ops forms need: q, k, v, the probabilities (before dropout) and the
/// mask tensors.
struct Unfused<B: Backend> {
    q: FloatTensor<B>,
    k: FloatTensor<B>,
    v: FloatTensor<B>,
    p: FloatTensor<B>,
    pass: FloatTensor<B>,
    drop: Option<FloatTensor<B>>,
    scale: f32,
}

fn unfused<B: Backend>(qkv: FloatTensor<B>, spec: &AttentionSpec) -> Unfused<B> {
    let s = qkv.shape();
    let [b, t] = [s[0], s[1]];
    let (_, d) = spec.check(b, t, s[2]);
    let device = qkv.device();
    let (q, k, v) = (
        split_heads::<B>(&qkv, 0, spec.heads),
        split_heads::<B>(&qkv, 1, spec.heads),
        split_heads::<B>(&qkv, 2, spec.heads),
    );
    let scale = 1.0 / (d as f32).sqrt();
    let [keep, bias, pass] = mask_tensors(spec, b, t);
    // Under mixed precision the products run in the inputs' dtype, scores and softmax in f32.
    let scores = B::float_mul_scalar(
        to_f32::<B>(B::float_matmul(
            q.clone(),
            B::float_swap_dims(k.clone(), 2, 3),
        )),
        scale.into(),
    );
    let scores = B::float_add(
        B::float_mul(scores, B::float_from_data(keep, &device)),
        B::float_from_data(bias, &device),
    );
    let max = B::float_max_dim(scores.clone(), 3);
    let e = B::float_exp(B::float_sub(scores, max));
    let p = B::float_div(e.clone(), B::float_sum_dim(e, 3));
    let drop = spec
        .dropout
        .map(|dropout| B::float_from_data(dropout_tensor(dropout, b, spec.heads, t), &device));
    Unfused {
        q,
        k,
        v,
        p,
        pass: B::float_from_data(pass, &device),
        drop,
        scale,
    }
}

/// The attention forward as Burn ops, for any backend: `[B, T, C]`.
pub(super) fn forward_reference<B: Backend>(
    qkv: FloatTensor<B>,
    spec: &AttentionSpec,
) -> FloatTensor<B> {
    let u = unfused::<B>(qkv, spec);
    let p = match u.drop {
        Some(m) => B::float_mul(u.p, m),
        None => u.p,
    };
    let dtype = u.v.dtype();
    merge_heads::<B>(B::float_matmul(cast_to::<B>(p, dtype), u.v))
}

/// The attention backward as Burn ops, for any backend: `dqkv [B, T, 3C]` from the output's
/// gradient `grad` `[B, T, C]`.
pub(super) fn backward_reference<B: Backend>(
    qkv: FloatTensor<B>,
    grad: FloatTensor<B>,
    spec: &AttentionSpec,
) -> FloatTensor<B> {
    let s = qkv.shape();
    let [b, t] = [s[0], s[1]];
    let dtype = qkv.dtype();
    let u = unfused::<B>(qkv, spec);
    let dy = B::float_swap_dims(
        B::float_reshape(grad, Shape::new([b, t, spec.heads, s[2] / 3 / spec.heads])),
        1,
        2,
    );
    let dropped = match &u.drop {
        Some(m) => B::float_mul(u.p.clone(), m.clone()),
        None => u.p.clone(),
    };
    let dy = cast_to::<B>(dy, dtype);
    let dv = B::float_matmul(
        B::float_swap_dims(cast_to::<B>(dropped, dtype), 2, 3),
        dy.clone(),
    );
    let mut dp = to_f32::<B>(B::float_matmul(dy, B::float_swap_dims(u.v, 2, 3)));
    if let Some(m) = u.drop {
        dp = B::float_mul(dp, m);
    }
    let rows = B::float_sum_dim(B::float_mul(dp.clone(), u.p.clone()), 3);
    let ds = B::float_mul(u.p, B::float_sub(dp, rows));
    let ds = B::float_mul(B::float_mul_scalar(ds, u.scale.into()), u.pass);
    let ds = cast_to::<B>(ds, dtype);
    let dq = B::float_matmul(ds.clone(), u.k);
    let dk = B::float_matmul(B::float_swap_dims(ds, 2, 3), u.q);
    B::float_cat(
        vec![
            merge_heads::<B>(dq),
            merge_heads::<B>(dk),
            merge_heads::<B>(dv),
        ],
        2,
    )
}
