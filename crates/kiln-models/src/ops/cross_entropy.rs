//! An output head and its cross-entropy as one op: `mean_i(-log softmax(x_i W)[t_i])` from the
//! last hidden states `x` `[N, C]`, the head's weight `W` and the targets, and its gradient
//! `softmax(x W) - onehot(t)` `[N, V]`, from which the backward's two products give the input's
//! and the weight's gradients.
//!
//! Two implementations of one definition: a fused host kernel that computes the logits a block
//! of rows at a time (the block stays in cache) and turns each row into its loss and gradient
//! in one pass, never writing the logits, the log-probabilities or a gathered copy; and Burn
//! ops for any other device. Without a gradient (evaluation) the fused kernel keeps only one
//! block per thread.

use std::sync::Arc;

use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, TensorMetadata};
use burn::prelude::TensorData;
use burn::tensor::{IndexingUpdateOp, Shape};
use rayon::prelude::*;

use super::gemm::{SharedDst, gemm_checked};
use super::precision::to_f32;

/// How a head's weight is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadLayout {
    /// `[C, V]`: a `Linear` layer's weight (input rows, output columns).
    InOut,
    /// `[V, C]`: an embedding table used as the head (a tied head).
    OutIn,
}

/// What one head + cross-entropy call computes besides its operands.
#[derive(Debug, Clone)]
pub struct CrossEntropySpec {
    /// The head weight's layout.
    pub layout: HeadLayout,
    /// The target class of each row of `x`, each below the vocabulary.
    pub targets: Arc<[u32]>,
}

impl CrossEntropySpec {
    /// `[rows, width, vocab]` of the operands' shapes; panics unless they and the targets
    /// agree.
    pub(super) fn check(&self, x: &Shape, w: &Shape) -> [usize; 3] {
        assert!(
            x.num_dims() == 2 && w.num_dims() == 2,
            "cross-entropy head: x and the weight must be matrices, got {x:?} and {w:?}"
        );
        let (rows, width) = (x[0], x[1]);
        let (w_width, vocab) = match self.layout {
            HeadLayout::InOut => (w[0], w[1]),
            HeadLayout::OutIn => (w[1], w[0]),
        };
        assert_eq!(
            width, w_width,
            "cross-entropy head: x is {width} wide, the weight takes {w_width}"
        );
        assert_eq!(
            self.targets.len(),
            rows,
            "cross-entropy head: {} targets for {rows} rows",
            self.targets.len()
        );
        if let Some(&t) = self.targets.iter().find(|&&t| t as usize >= vocab) {
            panic!("cross-entropy head: target {t} outside the vocabulary of {vocab}");
        }
        [rows, width, vocab]
    }

    /// The weight's element strides `(row, column)` as the `[C, V]` operand of `x @ W`.
    fn weight_strides(&self, width: usize, vocab: usize) -> (isize, isize) {
        match self.layout {
            HeadLayout::InOut => (vocab as isize, 1),
            HeadLayout::OutIn => (1, width as isize),
        }
    }
}

/// Bytes of logits a block of rows should occupy: well inside a core's L2 cache, so the softmax
/// pass reads what the product just wrote from cache.
const BLOCK_BYTES: usize = 1 << 20;

/// The fused host kernel: the summed loss over rows (in row order, in f64, so the result does
/// not depend on the thread count) and, with `keep_grad`, `softmax - onehot` `[rows, vocab]`.
pub(super) fn forward(
    x: &[f32],
    w: &[f32],
    [rows, width, vocab]: [usize; 3],
    spec: &CrossEntropySpec,
    keep_grad: bool,
) -> (f64, Option<Vec<f32>>) {
    assert_eq!(x.len(), rows * width, "cross-entropy head: x's length");
    assert_eq!(
        w.len(),
        width * vocab,
        "cross-entropy head: the weight's length"
    );
    let block = (BLOCK_BYTES / (4 * vocab.max(1))).clamp(8, 256);
    let w_strides = spec.weight_strides(width, vocab);
    let targets = &spec.targets;
    let mut losses = vec![0.0f32; rows];
    // Logits of rows `r0..r0 + losses.len()` into `dst`, then each row's loss (and gradient).
    let block_rows = |r0: usize, dst: &mut [std::mem::MaybeUninit<f32>], losses: &mut [f32]| {
        let n = losses.len();
        assert!(dst.len() >= n * vocab, "cross-entropy head: block buffer");
        // SAFETY: `dst` is this block's own buffer; gemm only writes it (no accumulation).
        unsafe {
            gemm_checked(
                [n, width, vocab],
                SharedDst::uninit(dst).region(0, (vocab as isize, 1)),
                false,
                (&x[r0 * width..(r0 + n) * width], (width as isize, 1)),
                (w, w_strides),
                1.0,
                gemm::Parallelism::None,
            );
        }
        // SAFETY: the product above initialised the first `n * vocab` elements.
        let logits =
            unsafe { std::slice::from_raw_parts_mut(dst.as_mut_ptr().cast::<f32>(), n * vocab) };
        for (i, (row, loss)) in logits.chunks_exact_mut(vocab).zip(losses).enumerate() {
            *loss = crate::kernels::softmax_cross_entropy(row, targets[r0 + i] as usize, keep_grad);
        }
    };
    let grad = if keep_grad {
        let mut grad = Vec::<f32>::with_capacity(rows * vocab);
        grad.spare_capacity_mut()[..rows * vocab]
            .par_chunks_mut(block * vocab)
            .zip(losses.par_chunks_mut(block))
            .enumerate()
            .for_each(|(i, (dst, losses))| block_rows(i * block, dst, losses));
        // SAFETY: the blocks cover all `rows * vocab` elements, each written above.
        unsafe { grad.set_len(rows * vocab) };
        Some(grad)
    } else {
        losses.par_chunks_mut(block).enumerate().for_each_init(
            || Vec::<f32>::with_capacity(block * vocab),
            |scratch, (i, losses)| {
                block_rows(
                    i * block,
                    &mut scratch.spare_capacity_mut()[..block * vocab],
                    losses,
                )
            },
        );
        None
    };
    (losses.iter().map(|&l| f64::from(l)).sum(), grad)
}

/// The same op as Burn ops, for any backend: the mean loss `[1]` and, with `keep_grad`,
/// `softmax - onehot` `[rows, vocab]`.
pub(super) fn forward_reference<B: Backend>(
    x: FloatTensor<B>,
    w: FloatTensor<B>,
    spec: &CrossEntropySpec,
    keep_grad: bool,
) -> (FloatTensor<B>, Option<FloatTensor<B>>) {
    let [rows, _, _] = spec.check(&x.shape(), &w.shape());
    let device = x.device();
    let w = match spec.layout {
        HeadLayout::InOut => w,
        HeadLayout::OutIn => B::float_transpose(w),
    };
    // Under mixed precision the product runs in the inputs' dtype, the loss in f32.
    let logits = to_f32::<B>(B::float_matmul(x, w));
    let shifted = B::float_sub(logits.clone(), B::float_max_dim(logits, 1));
    let e = B::float_exp(shifted.clone());
    let sum = B::float_sum_dim(e.clone(), 1);
    // Targets in the device's own integer type: WGSL has no 64-bit integers.
    let int_dtype = burn::backend::get_or_init_device_settings::<B>(&device).int_dtype;
    let targets: Vec<i64> = spec.targets.iter().map(|&t| i64::from(t)).collect();
    let targets = B::int_from_data(
        TensorData::new(targets, [rows, 1]).convert_dtype(int_dtype.into()),
        &device,
    );
    let picked = B::float_gather(1, shifted, targets.clone());
    let loss = B::float_reshape(
        B::float_mean(B::float_sub(B::float_log(sum.clone()), picked)),
        Shape::new([1]),
    );
    let grad = keep_grad.then(|| {
        let minus_one =
            B::float_from_data(TensorData::new(vec![-1.0f32; rows], [rows, 1]), &device);
        B::float_scatter(
            1,
            B::float_div(e, sum),
            targets,
            minus_one,
            IndexingUpdateOp::Add,
        )
    });
    (loss, grad)
}
