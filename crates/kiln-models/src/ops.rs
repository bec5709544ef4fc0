//! kiln's differentiable ops with their own Flex kernels, through Burn's backend-extension
//! mechanism: a trait with a Flex implementation (host kernels from [`crate::kernels`]) and an
//! `Autodiff` implementation that registers a hand-written backward calling the inner
//! backend's kernel. Every other backend gets the default bodies, which are Burn's own ops, so
//! models stay device-agnostic.
//!
//! [`gelu`] is the first: Flex evaluates libm's scalar `erff` per element in GELU's forward
//! and backward; kiln's kernels vectorise (AVX-512/AVX2 chosen at run time) and run across
//! rayon's threads.

use burn::backend::TensorMetadata;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::{Flex, FlexTensor};
use burn::backend::ops::{ActivationOps, ModuleOps};
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, Dispatch, backend_extension};
use burn::prelude::{Tensor, TensorData};
use burn::tensor::ops::ConvOptions;
use burn::tensor::{DType, FloatDType, Shape};
use rayon::prelude::*;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

mod adam;
mod attention;
mod conv;
mod cross_entropy;
mod dropout;
mod gemm;
mod norm;
mod pool;
mod precision;
mod threads;

pub use adam::AdamStep;
pub use attention::{AttentionSpec, MASKED_SCORE};
pub use cross_entropy::{CrossEntropySpec, HeadLayout};
pub use dropout::{DropoutMask, dropout_scales};
pub use precision::{Autocast, autocast_dtype};
pub use threads::{
    blocktime, compute_threads, configure_compute_threads, flush_subnormals, in_thread_pool,
    keep_workers_ready,
};

use gemm::gemm_into;

/// Elements per rayon task: large enough that scheduling is noise.
const CHUNK: usize = 1 << 15;

/// Ops kiln implements itself where Burn's backend is slow.
#[backend_extension(Flex, Autodiff, Cube: cfg(any(feature = "wgpu", feature = "cuda")))]
pub trait KilnOps: Backend {
    /// Exact (erf) GELU.
    fn kiln_gelu(x: FloatTensor<Self>) -> FloatTensor<Self> {
        <Self as ActivationOps<Self>>::gelu(x)
    }

    /// `grad * gelu'(x)`.
    fn kiln_gelu_backward(x: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
        <Self as ActivationOps<Self>>::gelu_backward(x, grad)
    }

    /// `x [.., in] @ w [in, out]`: a linear layer without its bias.
    fn kiln_linear(x: FloatTensor<Self>, w: FloatTensor<Self>) -> FloatTensor<Self> {
        linear_reference::<Self>(x, w)
    }

    /// The input's gradient of [`KilnOps::kiln_linear`]: `grad [.., out] @ wᵀ`.
    fn kiln_linear_grad_input(grad: FloatTensor<Self>, w: FloatTensor<Self>) -> FloatTensor<Self> {
        linear_grad_input_reference::<Self>(grad, w)
    }

    /// The weight's gradient of [`KilnOps::kiln_linear`]: `xᵀ @ grad`, rows flattened.
    fn kiln_linear_grad_weight(x: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
        linear_grad_weight_reference::<Self>(x, grad)
    }

    /// 2-D convolution of `x` `[B, Cin, H, W]` with `w` `[Cout, Cin / groups, kh, kw]`, no
    /// bias.
    fn kiln_conv2d(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self> {
        <Self as ModuleOps<Self>>::conv2d(x, w, None, options)
    }

    /// [`KilnOps::kiln_conv2d`] plus a bias `b` `[Cout]`, added as the output is written.
    fn kiln_conv2d_bias(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        b: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self> {
        <Self as ModuleOps<Self>>::conv2d(x, w, Some(b), options)
    }

    /// A convolution bias's gradient: the output's gradient `grad` `[B, Cout, H, W]` summed
    /// over everything but the channel, `[Cout]`.
    fn kiln_conv2d_bias_grad(grad: FloatTensor<Self>) -> FloatTensor<Self> {
        conv2d_bias_grad_reference::<Self>(grad)
    }

    /// The input's and the weight's gradients of [`KilnOps::kiln_conv2d`] given the output's
    /// gradient `grad`.
    fn kiln_conv2d_grads(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let dx = <Self as ModuleOps<Self>>::conv2d_x_backward(
            x.clone(),
            w.clone(),
            grad.clone(),
            options.clone(),
        );
        (
            dx,
            <Self as ModuleOps<Self>>::conv2d_weight_backward(x, w, grad, options),
        )
    }

    /// The weight's gradient of [`KilnOps::kiln_conv2d`] alone (the input is a constant).
    fn kiln_conv2d_grad_weight(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self> {
        <Self as ModuleOps<Self>>::conv2d_weight_backward(x, w, grad, options)
    }

    /// `relu(max_pool2d(x))` with a `k`×`k` window and stride `k`, no padding (equal to
    /// pooling after the ReLU).
    fn kiln_relu_max_pool2d(x: FloatTensor<Self>, k: usize) -> FloatTensor<Self> {
        let pooled =
            <Self as ModuleOps<Self>>::max_pool2d(x, [k, k], [k, k], [0, 0], [1, 1], false);
        <Self as ActivationOps<Self>>::relu(pooled)
    }

    /// The gradient of [`KilnOps::kiln_relu_max_pool2d`] with respect to `x`, given the
    /// output's gradient `grad`.
    fn kiln_relu_max_pool2d_backward(
        x: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        k: usize,
    ) -> FloatTensor<Self> {
        relu_max_pool2d_backward_reference::<Self>(x, grad, k)
    }

    /// `x ∘ mask`: dropout with `mask`'s probability and seed, the same mask for the same
    /// shape and seed on every backend (rows of 16 384 elements of [`dropout_scales`]).
    fn kiln_dropout(x: FloatTensor<Self>, mask: DropoutMask) -> FloatTensor<Self> {
        dropout::apply_reference::<Self>(x, mask)
    }

    /// Multi-head self-attention over packed projections: `qkv` is `[B, T, 3C]` (queries,
    /// keys, values side by side, `spec.heads` heads of `C / heads` each), causal or not,
    /// with `spec`'s padding mask and dropout; returns the heads' outputs merged back to
    /// `[B, T, C]`, ready for the output projection.
    fn kiln_attention(qkv: FloatTensor<Self>, spec: AttentionSpec) -> FloatTensor<Self> {
        attention::forward_reference::<Self>(qkv, &spec)
    }

    /// Layer normalisation over the last dimension without the bias:
    /// `(x - mean) / sqrt(var + eps) * gamma`.
    fn kiln_layer_norm(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        eps: f64,
    ) -> FloatTensor<Self> {
        <Self as ModuleOps<Self>>::layer_norm(x, gamma, None, eps)
    }

    /// The gradients of [`KilnOps::kiln_layer_norm`] with respect to `x` and `gamma`, given
    /// the output's gradient `grad`.
    fn kiln_layer_norm_backward(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        eps: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        layer_norm_backward_reference::<Self>(x, gamma, grad, eps)
    }

    /// The gradient of [`KilnOps::kiln_attention`] with respect to `qkv`, given the output's
    /// gradient `grad` `[B, T, C]` (the same dropout mask, drawn again from its seed).
    fn kiln_attention_backward(
        qkv: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        spec: AttentionSpec,
    ) -> FloatTensor<Self> {
        attention::backward_reference::<Self>(qkv, grad, &spec)
    }

    /// The mean cross-entropy `[1]` of the logits `x [N, C] @ W` (`W` laid out as
    /// `spec.layout` says) against `spec.targets`.
    fn kiln_cross_entropy_head(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        spec: CrossEntropySpec,
    ) -> FloatTensor<Self> {
        cross_entropy::forward_reference::<Self>(x, w, &spec, false).0
    }

    /// [`KilnOps::kiln_cross_entropy_head`] and the logits' gradient of the summed loss,
    /// `softmax - onehot` `[N, V]`.
    fn kiln_cross_entropy_head_with_grad(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        spec: CrossEntropySpec,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let (loss, grad) = cross_entropy::forward_reference::<Self>(x, w, &spec, true);
        (loss, grad.expect("asked for the gradient"))
    }
}

/// [`KilnOps::kiln_layer_norm_backward`] as Burn ops.
fn layer_norm_backward_reference<B: Backend>(
    x: FloatTensor<B>,
    gamma: FloatTensor<B>,
    grad: FloatTensor<B>,
    eps: f64,
) -> (FloatTensor<B>, FloatTensor<B>) {
    let shape = x.shape();
    let last = shape.num_dims() - 1;
    let d = shape[last];
    let rows = shape.num_elements() / d.max(1);
    let mean = B::float_mean_dim(x.clone(), last);
    let centered = B::float_sub(x, mean);
    let var = B::float_mean_dim(B::float_mul(centered.clone(), centered.clone()), last);
    let rstd = B::float_recip(B::float_sqrt(B::float_add_scalar(var, eps.into())));
    let xhat = B::float_mul(centered, rstd.clone());
    let mut wide = vec![1; shape.num_dims()];
    wide[last] = d;
    let g = B::float_mul(grad.clone(), B::float_reshape(gamma, Shape::from(wide)));
    let g_mean = B::float_mean_dim(g.clone(), last);
    let gx_mean = B::float_mean_dim(B::float_mul(g.clone(), xhat.clone()), last);
    let dx = B::float_mul(
        rstd,
        B::float_sub(B::float_sub(g, g_mean), B::float_mul(xhat.clone(), gx_mean)),
    );
    let dgamma = B::float_sum_dim(
        B::float_reshape(B::float_mul(grad, xhat), Shape::from([rows, d])),
        0,
    );
    (dx, B::float_reshape(dgamma, Shape::from([d])))
}

/// [`KilnOps::kiln_linear`] as Burn ops.
fn linear_reference<B: Backend>(x: FloatTensor<B>, w: FloatTensor<B>) -> FloatTensor<B> {
    let (rows, shape) = rows_of(&x.shape(), w.shape()[1]);
    let x = B::float_reshape(x, Shape::new([rows, w.shape()[0]]));
    B::float_reshape(B::float_matmul(x, w), shape)
}

/// [`KilnOps::kiln_linear_grad_input`] as Burn ops.
fn linear_grad_input_reference<B: Backend>(
    grad: FloatTensor<B>,
    w: FloatTensor<B>,
) -> FloatTensor<B> {
    let (rows, shape) = rows_of(&grad.shape(), w.shape()[0]);
    let grad = B::float_reshape(grad, Shape::new([rows, w.shape()[1]]));
    B::float_reshape(B::float_matmul(grad, B::float_transpose(w)), shape)
}

/// [`KilnOps::kiln_linear_grad_weight`] as Burn ops.
fn linear_grad_weight_reference<B: Backend>(
    x: FloatTensor<B>,
    grad: FloatTensor<B>,
) -> FloatTensor<B> {
    let dims = x.shape();
    let input = dims[dims.num_dims() - 1];
    let rows = dims.num_elements() / input.max(1);
    let x = B::float_reshape(x, Shape::new([rows, input]));
    let out = grad.shape()[grad.shape().num_dims() - 1];
    let grad = B::float_reshape(grad, Shape::new([rows, out]));
    B::float_matmul(B::float_transpose(x), grad)
}

/// Rows of a `[.., width]` tensor and the shape with its last dimension set to `last`.
fn rows_of(shape: &Shape, last: usize) -> (usize, Shape) {
    let d = shape.num_dims();
    let rows = shape.num_elements() / shape[d - 1].max(1);
    let mut dims = shape.to_vec();
    dims[d - 1] = last;
    (rows, Shape::from(dims))
}

/// The f32 values of a Flex tensor, contiguous (copied only if it is a strided view), where
/// kiln's kernels take it: the one gate of every fused kernel on Flex. `None` (the op falls
/// back to Burn's) for other dtypes and while [`fused_kernels`] is off.
fn f32_values(t: &FlexTensor) -> Option<FlexTensor> {
    (t.dtype() == DType::F32 && fused_kernels()).then(|| t.to_contiguous())
}

/// [`KilnOps::kiln_conv2d_bias_grad`] as Burn ops.
fn conv2d_bias_grad_reference<B: Backend>(grad: FloatTensor<B>) -> FloatTensor<B> {
    let channels = grad.shape()[1];
    let summed = B::float_sum_dims(grad, &[0, 2, 3]);
    B::float_reshape(summed, Shape::new([channels]))
}

/// [`KilnOps::kiln_conv2d_grads`] as Burn ops.
fn conv2d_grads_reference<B: Backend>(
    x: FloatTensor<B>,
    w: FloatTensor<B>,
    grad: FloatTensor<B>,
    options: ConvOptions<2>,
) -> (FloatTensor<B>, FloatTensor<B>) {
    let dx = B::conv2d_x_backward(x.clone(), w.clone(), grad.clone(), options.clone());
    (dx, B::conv2d_weight_backward(x, w, grad, options))
}

/// [`KilnOps::kiln_relu_max_pool2d_backward`] as Burn ops: the max-pool's backward (through
/// its indices) after the ReLU's.
fn relu_max_pool2d_backward_reference<B: Backend>(
    x: FloatTensor<B>,
    grad: FloatTensor<B>,
    k: usize,
) -> FloatTensor<B> {
    // Indices in the device's own integer type: a GPU runtime without 64-bit integers
    // (WGSL) would read I64 indices wrongly.
    let int_dtype = burn::backend::get_or_init_device_settings::<B>(&x.device()).int_dtype;
    let relu = B::relu(x);
    let pooled = B::max_pool2d_with_indices(
        relu.clone(),
        [k, k],
        [k, k],
        [0, 0],
        [1, 1],
        false,
        int_dtype,
    );
    let grad = B::relu_backward(pooled.output, grad);
    B::max_pool2d_with_indices_backward(
        relu,
        [k, k],
        [k, k],
        [0, 0],
        [1, 1],
        false,
        grad,
        pooled.indices,
    )
    .x_grad
}

/// The sizes of a pooling over `[B, C, H, W]`.
fn pool_geometry(x: &Shape, k: usize) -> pool::Geometry {
    pool::Geometry {
        planes: x[0] * x[1],
        height: x[2],
        width: x[3],
        k,
    }
}

/// The sizes of a convolution kiln's kernels handle (one group), from the operands' shapes.
fn conv_geometry(x: &Shape, w: &Shape, options: &ConvOptions<2>) -> Option<conv::Geometry> {
    if options.groups != 1 || x.num_dims() != 4 || w.num_dims() != 4 || x[1] != w[1] {
        return None;
    }
    let out = |i: usize| {
        let (begin, end) = options.padding[i];
        let span = options.dilation[i] * (w[2 + i] - 1) + 1;
        let padded = x[2 + i] + begin + end;
        (padded >= span).then(|| (padded - span) / options.stride[i] + 1)
    };
    Some(conv::Geometry {
        batch: x[0],
        channels_in: x[1],
        height: x[2],
        width: x[3],
        channels_out: w[0],
        kernel: [w[2], w[3]],
        stride: options.stride,
        padding: [options.padding[0].0, options.padding[1].0],
        dilation: options.dilation,
        out: [out(0)?, out(1)?],
    })
}

/// kiln's convolution forward on Flex (f32, one group), Flex's own conv otherwise.
fn conv2d_flex(
    x: FlexTensor,
    w: FlexTensor,
    b: Option<FlexTensor>,
    options: ConvOptions<2>,
) -> FlexTensor {
    let fallback = |x, w, b| <Flex as ModuleOps<Flex>>::conv2d(x, w, b, options.clone());
    let (Some(xc), Some(wc)) = (f32_values(&x), f32_values(&w)) else {
        return fallback(x, w, b);
    };
    let bc = b.as_ref().map(f32_values);
    if matches!(bc, Some(None)) {
        return fallback(x, w, b);
    }
    let bc = bc.flatten();
    let geometry = conv_geometry(xc.layout().shape(), wc.layout().shape(), &options).filter(|g| {
        bc.as_ref()
            .is_none_or(|b| b.layout().shape().num_elements() == g.channels_out)
    });
    let Some(g) = geometry else {
        return fallback(x, w, b);
    };
    let bias = bc.as_ref().map(|b| b.storage::<f32>());
    let y = conv::forward(&g, xc.storage::<f32>(), wc.storage::<f32>(), bias);
    FlexTensor::from_data(TensorData::new(
        y,
        [g.batch, g.channels_out, g.out[0], g.out[1]],
    ))
}

/// kiln's convolution gradients on Flex: the input's (when `input_grad`) and the weight's;
/// `None` where kiln's kernels do not apply (the caller falls back to Burn's).
fn conv2d_grads_flex(
    x: &FlexTensor,
    w: &FlexTensor,
    grad: &FlexTensor,
    options: &ConvOptions<2>,
    input_grad: bool,
) -> Option<(Option<FlexTensor>, FlexTensor)> {
    let (xc, wc, gc) = (f32_values(x)?, f32_values(w)?, f32_values(grad)?);
    let g = conv_geometry(xc.layout().shape(), wc.layout().shape(), options)?;
    let (dx, dw) = conv::backward(
        &g,
        xc.storage::<f32>(),
        wc.storage::<f32>(),
        gc.storage::<f32>(),
        input_grad,
    );
    let dx = dx.map(|dx| FlexTensor::from_data(TensorData::new(dx, xc.layout().shape().clone())));
    let dw = FlexTensor::from_data(TensorData::new(dw, wc.layout().shape().clone()));
    Some((dx, dw))
}

/// Every cubecl runtime (the GPUs wgpu drives): the trait's default bodies, Burn's own ops.
#[cfg(any(feature = "wgpu", feature = "cuda"))]
impl KilnOps for burn::backend::Cube {}

impl KilnOps for Flex {
    fn kiln_gelu(x: FloatTensor<Self>) -> FloatTensor<Self> {
        let Some(x) = f32_values(&x) else {
            return <Flex as ActivationOps<Flex>>::gelu(x);
        };
        let shape = x.layout().shape().clone();
        let len = shape.num_elements();
        let mut out = Vec::<f32>::with_capacity(len);
        out.spare_capacity_mut()[..len]
            .par_chunks_mut(CHUNK)
            .zip(x.storage::<f32>().par_chunks(CHUNK))
            .for_each(|(o, x)| crate::kernels::gelu_into(x, o));
        // SAFETY: `gelu_into` wrote every element (the chunks cover `len`).
        unsafe { out.set_len(len) };
        FlexTensor::from_data(TensorData::new(out, shape))
    }

    fn kiln_gelu_backward(x: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
        let (Some(x), Some(grad)) = (f32_values(&x), f32_values(&grad)) else {
            return <Flex as ActivationOps<Flex>>::gelu_backward(x, grad);
        };
        let shape = x.layout().shape().clone();
        let len = shape.num_elements();
        assert_eq!(
            grad.storage::<f32>().len(),
            len,
            "gelu backward: gradient shape"
        );
        let mut out = Vec::<f32>::with_capacity(len);
        out.spare_capacity_mut()[..len]
            .par_chunks_mut(CHUNK)
            .zip(x.storage::<f32>().par_chunks(CHUNK))
            .zip(grad.storage::<f32>().par_chunks(CHUNK))
            .for_each(|((o, x), g)| crate::kernels::gelu_backward_into(x, g, o));
        // SAFETY: `gelu_backward_into` wrote every element (the chunks cover `len`).
        unsafe { out.set_len(len) };
        FlexTensor::from_data(TensorData::new(out, shape))
    }

    fn kiln_linear(x: FloatTensor<Self>, w: FloatTensor<Self>) -> FloatTensor<Self> {
        let (Some(xc), Some(wc)) = (f32_values(&x), f32_values(&w)) else {
            return linear_reference::<Flex>(x, w);
        };
        let [input, out] = [wc.layout().shape()[0], wc.layout().shape()[1]];
        let xs = xc.layout().shape();
        assert_eq!(
            xs[xs.num_dims() - 1],
            input,
            "linear: the input's last dimension must equal the weight's input width"
        );
        let (rows, shape) = rows_of(xs, out);
        let y = gemm_into(
            rows,
            input,
            out,
            xc.storage::<f32>(),
            (input as isize, 1),
            wc.storage::<f32>(),
            (out as isize, 1),
        );
        FlexTensor::from_data(TensorData::new(y, shape))
    }

    fn kiln_linear_grad_input(grad: FloatTensor<Self>, w: FloatTensor<Self>) -> FloatTensor<Self> {
        let (Some(gc), Some(wc)) = (f32_values(&grad), f32_values(&w)) else {
            return linear_grad_input_reference::<Flex>(grad, w);
        };
        let [input, out] = [wc.layout().shape()[0], wc.layout().shape()[1]];
        let gs = gc.layout().shape();
        assert_eq!(
            gs[gs.num_dims() - 1],
            out,
            "linear backward: the gradient's last dimension must equal the weight's output width"
        );
        let (rows, shape) = rows_of(gs, input);
        // wᵀ [out, in]: element (o, i) is w[i, o].
        let g = gemm_into(
            rows,
            out,
            input,
            gc.storage::<f32>(),
            (out as isize, 1),
            wc.storage::<f32>(),
            (1, out as isize),
        );
        FlexTensor::from_data(TensorData::new(g, shape))
    }

    fn kiln_linear_grad_weight(x: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
        let (Some(xc), Some(gc)) = (f32_values(&x), f32_values(&grad)) else {
            return linear_grad_weight_reference::<Flex>(x, grad);
        };
        let xs = xc.layout().shape();
        let input = xs[xs.num_dims() - 1];
        let rows = xs.num_elements() / input.max(1);
        let gs = gc.layout().shape();
        let out = gs[gs.num_dims() - 1];
        assert_eq!(
            gs.num_elements(),
            rows * out,
            "linear weight gradient: input and gradient rows differ"
        );
        // xᵀ [in, rows]: element (i, r) is x[r, i].
        let g = gemm_into(
            input,
            rows,
            out,
            xc.storage::<f32>(),
            (1, input as isize),
            gc.storage::<f32>(),
            (out as isize, 1),
        );
        FlexTensor::from_data(TensorData::new(g, [input, out]))
    }

    fn kiln_conv2d(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self> {
        conv2d_flex(x, w, None, options)
    }

    fn kiln_conv2d_bias(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        b: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self> {
        conv2d_flex(x, w, Some(b), options)
    }

    fn kiln_conv2d_bias_grad(grad: FloatTensor<Self>) -> FloatTensor<Self> {
        let Some(gc) = f32_values(&grad).filter(|g| g.layout().shape().num_dims() == 4) else {
            return conv2d_bias_grad_reference::<Flex>(grad);
        };
        let s = gc.layout().shape();
        let db = conv::bias_grad(s[0], s[1], gc.storage::<f32>());
        FlexTensor::from_data(TensorData::new(db, [s[1]]))
    }

    fn kiln_conv2d_grads(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        match conv2d_grads_flex(&x, &w, &grad, &options, true) {
            Some((dx, dw)) => (dx.expect("asked for the input's gradient"), dw),
            None => conv2d_grads_reference::<Flex>(x, w, grad, options),
        }
    }

    fn kiln_conv2d_grad_weight(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self> {
        match conv2d_grads_flex(&x, &w, &grad, &options, false) {
            Some((_, dw)) => dw,
            None => <Flex as ModuleOps<Flex>>::conv2d_weight_backward(x, w, grad, options),
        }
    }

    fn kiln_relu_max_pool2d(x: FloatTensor<Self>, k: usize) -> FloatTensor<Self> {
        let Some(xc) = f32_values(&x).filter(|x| x.layout().shape().num_dims() == 4) else {
            let pooled =
                <Flex as ModuleOps<Flex>>::max_pool2d(x, [k, k], [k, k], [0, 0], [1, 1], false);
            return <Flex as ActivationOps<Flex>>::relu(pooled);
        };
        let g = pool_geometry(xc.layout().shape(), k);
        let y = pool::forward(&g, xc.storage::<f32>());
        let s = xc.layout().shape();
        FlexTensor::from_data(TensorData::new(y, [s[0], s[1], s[2] / k, s[3] / k]))
    }

    fn kiln_relu_max_pool2d_backward(
        x: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        k: usize,
    ) -> FloatTensor<Self> {
        let (Some(xc), Some(gc)) = (
            f32_values(&x).filter(|x| x.layout().shape().num_dims() == 4),
            f32_values(&grad),
        ) else {
            return relu_max_pool2d_backward_reference::<Flex>(x, grad, k);
        };
        let g = pool_geometry(xc.layout().shape(), k);
        let dx = pool::backward(&g, xc.storage::<f32>(), gc.storage::<f32>());
        FlexTensor::from_data(TensorData::new(dx, xc.layout().shape().clone()))
    }

    fn kiln_dropout(x: FloatTensor<Self>, mask: DropoutMask) -> FloatTensor<Self> {
        let Some(xc) = f32_values(&x) else {
            return dropout::apply_reference::<Flex>(x, mask);
        };
        let y = dropout::apply(xc.storage::<f32>(), mask);
        FlexTensor::from_data(TensorData::new(y, xc.layout().shape().clone()))
    }

    fn kiln_attention(qkv: FloatTensor<Self>, spec: AttentionSpec) -> FloatTensor<Self> {
        let Some(qkv) = f32_values(&qkv) else {
            return attention::forward_reference::<Flex>(qkv, &spec);
        };
        let s = qkv.layout().shape();
        let [b, t, c3] = [s[0], s[1], s[2]];
        let y = attention::forward(qkv.storage::<f32>(), [b, t, c3], &spec);
        FlexTensor::from_data(TensorData::new(y, [b, t, c3 / 3]))
    }

    fn kiln_layer_norm(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        eps: f64,
    ) -> FloatTensor<Self> {
        let (Some(xc), Some(gc)) = (f32_values(&x), f32_values(&gamma)) else {
            return <Flex as ModuleOps<Flex>>::layer_norm(x, gamma, None, eps);
        };
        let shape = xc.layout().shape().clone();
        let y = norm::forward(xc.storage::<f32>(), gc.storage::<f32>(), eps as f32);
        FlexTensor::from_data(TensorData::new(y, shape))
    }

    fn kiln_layer_norm_backward(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        eps: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let (Some(xc), Some(wc), Some(gc)) =
            (f32_values(&x), f32_values(&gamma), f32_values(&grad))
        else {
            return layer_norm_backward_reference::<Flex>(x, gamma, grad, eps);
        };
        let shape = xc.layout().shape().clone();
        let d = wc.layout().shape().num_elements();
        let (dx, dgamma) = norm::backward(
            xc.storage::<f32>(),
            wc.storage::<f32>(),
            gc.storage::<f32>(),
            eps as f32,
        );
        (
            FlexTensor::from_data(TensorData::new(dx, shape)),
            FlexTensor::from_data(TensorData::new(dgamma, [d])),
        )
    }

    fn kiln_attention_backward(
        qkv: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        spec: AttentionSpec,
    ) -> FloatTensor<Self> {
        let (Some(qc), Some(gc)) = (f32_values(&qkv), f32_values(&grad)) else {
            return attention::backward_reference::<Flex>(qkv, grad, &spec);
        };
        let s = qc.layout().shape();
        let [b, t, c3] = [s[0], s[1], s[2]];
        let g = attention::backward(qc.storage::<f32>(), gc.storage::<f32>(), [b, t, c3], &spec);
        FlexTensor::from_data(TensorData::new(g, [b, t, c3]))
    }
    fn kiln_cross_entropy_head(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        spec: CrossEntropySpec,
    ) -> FloatTensor<Self> {
        match cross_entropy_head_flex(&x, &w, &spec, false) {
            Some((loss, _)) => loss,
            None => cross_entropy::forward_reference::<Flex>(x, w, &spec, false).0,
        }
    }

    fn kiln_cross_entropy_head_with_grad(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        spec: CrossEntropySpec,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        match cross_entropy_head_flex(&x, &w, &spec, true) {
            Some((loss, grad)) => (loss, grad.expect("asked for the gradient")),
            None => {
                let (loss, grad) = cross_entropy::forward_reference::<Flex>(x, w, &spec, true);
                (loss, grad.expect("asked for the gradient"))
            }
        }
    }
}

/// kiln's fused head + cross-entropy on Flex f32 tensors: the mean loss `[1]` and, with
/// `keep_grad`, the logits' gradient; `None` where the fused kernel does not apply.
fn cross_entropy_head_flex(
    x: &FlexTensor,
    w: &FlexTensor,
    spec: &CrossEntropySpec,
    keep_grad: bool,
) -> Option<(FlexTensor, Option<FlexTensor>)> {
    let (xc, wc) = (f32_values(x)?, f32_values(w)?);
    let dims = spec.check(xc.layout().shape(), wc.layout().shape());
    let [rows, _, vocab] = dims;
    let (sum, grad) = cross_entropy::forward(
        xc.storage::<f32>(),
        wc.storage::<f32>(),
        dims,
        spec,
        keep_grad,
    );
    let loss = (sum / rows.max(1) as f64) as f32;
    Some((
        FlexTensor::from_data(TensorData::new(vec![loss], [1])),
        grad.map(|g| FlexTensor::from_data(TensorData::new(g, [rows, vocab]))),
    ))
}

/// A differentiable op of [`KilnOps`] on an input and a parameter: which one, with its
/// settings.
#[derive(Debug, Clone, Copy)]
enum Binary {
    /// `x @ w`.
    Linear,
    /// LayerNorm of `x` scaled by `w` (gamma).
    LayerNorm { eps: f64 },
}

impl Binary {
    fn forward<B: KilnOps>(self, x: FloatTensor<B>, w: FloatTensor<B>) -> FloatTensor<B> {
        match self {
            Binary::Linear => B::kiln_linear(x, w),
            Binary::LayerNorm { eps } => B::kiln_layer_norm(x, w, eps),
        }
    }

    /// The gradients of `x` and `w` that are `wanted`, given the forward inputs and the
    /// output's gradient.
    fn backward<B: KilnOps>(
        self,
        (x, w): (FloatTensor<B>, FloatTensor<B>),
        grad: FloatTensor<B>,
        wanted: [bool; 2],
    ) -> [Option<FloatTensor<B>>; 2] {
        match self {
            Binary::Linear => [
                wanted[0].then(|| B::kiln_linear_grad_input(grad.clone(), w)),
                wanted[1].then(|| B::kiln_linear_grad_weight(x, grad)),
            ],
            // One pass gives both.
            Binary::LayerNorm { eps } => {
                let (dx, dw) = B::kiln_layer_norm_backward(x, w, grad, eps);
                [Some(dx), Some(dw)]
            }
        }
    }
}

/// The backward of a [`Binary`] op: its state is the forward input and parameter.
#[derive(Debug)]
struct BinaryBackward(Binary);

impl<B: Backend + KilnOps> Backward<B, 2> for BinaryBackward {
    type State = (FloatTensor<B>, FloatTensor<B>);

    fn backward(
        self,
        ops: Ops<Self::State, 2>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let grad = grads.consume::<B>(&ops.node);
        let wanted = ops.parents.each_ref().map(Option::is_some);
        let computed = self.0.backward::<B>(ops.state, grad, wanted);
        for (node, g) in ops.parents.into_iter().zip(computed) {
            if let (Some(node), Some(g)) = (node, g) {
                grads.register::<B>(node.id, g);
            }
        }
    }
}

/// Records a [`Binary`] op on the autodiff graph (or just runs it when nothing is tracked).
fn binary<B: Backend + KilnOps, C: CheckpointStrategy>(
    op: Binary,
    x: FloatTensor<Autodiff<B, C>>,
    w: FloatTensor<Autodiff<B, C>>,
) -> FloatTensor<Autodiff<B, C>> {
    match BinaryBackward(op)
        .prepare::<C>([x.node(), w.node()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => {
            let (x, w) = (x.primitive().clone(), w.primitive().clone());
            let y = op.forward::<B>(x.clone(), w.clone());
            prep.finish((x, w), y)
        }
        OpsKind::UnTracked(prep) => {
            prep.finish(op.forward::<B>(x.into_primitive(), w.into_primitive()))
        }
    }
}

/// A differentiable one-input op of [`KilnOps`]: which one, with its settings.
#[derive(Debug, Clone)]
enum Unary {
    Gelu,
    ReluMaxPool2d { k: usize },
    Attention(AttentionSpec),
}

impl Unary {
    fn forward<B: KilnOps>(self, x: FloatTensor<B>) -> FloatTensor<B> {
        match self {
            Unary::Gelu => B::kiln_gelu(x),
            Unary::ReluMaxPool2d { k } => B::kiln_relu_max_pool2d(x, k),
            Unary::Attention(spec) => B::kiln_attention(x, spec),
        }
    }

    /// The input's gradient given the forward input `x` and the output's gradient.
    fn backward<B: KilnOps>(self, x: FloatTensor<B>, grad: FloatTensor<B>) -> FloatTensor<B> {
        match self {
            Unary::Gelu => B::kiln_gelu_backward(x, grad),
            Unary::ReluMaxPool2d { k } => B::kiln_relu_max_pool2d_backward(x, grad, k),
            Unary::Attention(spec) => B::kiln_attention_backward(x, grad, spec),
        }
    }
}

/// The backward of a [`Unary`] op: its state is the forward input.
#[derive(Debug)]
struct UnaryBackward(Unary);

impl<B: Backend + KilnOps> Backward<B, 1> for UnaryBackward {
    type State = FloatTensor<B>;

    fn backward(
        self,
        ops: Ops<Self::State, 1>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let [parent] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        if let Some(node) = parent {
            grads.register::<B>(node.id, self.0.backward::<B>(ops.state, grad));
        }
    }
}

/// Runs a [`Unary`] op under autodiff: the inner backend's forward, its backward registered
/// when the input is tracked (keeping the input as the state).
fn unary<B: Backend + KilnOps, C: CheckpointStrategy>(
    op: Unary,
    x: FloatTensor<Autodiff<B, C>>,
) -> FloatTensor<Autodiff<B, C>> {
    match UnaryBackward(op.clone())
        .prepare::<C>([x.node()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => {
            let input = x.primitive().clone();
            prep.finish(input.clone(), op.forward::<B>(input))
        }
        OpsKind::UnTracked(prep) => prep.finish(op.forward::<B>(x.into_primitive())),
    }
}

/// The backward of dropout: the output's gradient times the same mask, drawn again from its
/// seed (nothing kept from the forward).
#[derive(Debug)]
struct DropoutBackward(DropoutMask);

impl<B: Backend + KilnOps> Backward<B, 1> for DropoutBackward {
    type State = ();

    fn backward(
        self,
        ops: Ops<Self::State, 1>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let [parent] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        if let Some(node) = parent {
            grads.register::<B>(node.id, B::kiln_dropout(grad, self.0));
        }
    }
}

/// Registers a convolution's input and weight gradients for whichever of the two are
/// tracked (both from one pass over the im2col matrices where both are).
fn register_conv2d_grads<B: Backend + KilnOps>(
    grads: &mut Gradients,
    [node_x, node_w]: [Option<burn::backend::autodiff::NodeId>; 2],
    x: FloatTensor<B>,
    w: FloatTensor<B>,
    grad: FloatTensor<B>,
    options: ConvOptions<2>,
) {
    match (node_x, node_w) {
        (Some(nx), Some(nw)) => {
            let (dx, dw) = B::kiln_conv2d_grads(x, w, grad, options);
            grads.register::<B>(nx, dx);
            grads.register::<B>(nw, dw);
        }
        (None, Some(nw)) => {
            let dw = B::kiln_conv2d_grad_weight(x, w, grad, options);
            grads.register::<B>(nw, dw);
        }
        (Some(nx), None) => grads.register::<B>(nx, B::conv2d_x_backward(x, w, grad, options)),
        (None, None) => {}
    }
}

impl<B: Backend + KilnOps, C: CheckpointStrategy> KilnOps for Autodiff<B, C> {
    fn kiln_gelu(x: FloatTensor<Self>) -> FloatTensor<Self> {
        unary::<B, C>(Unary::Gelu, x)
    }

    fn kiln_linear(x: FloatTensor<Self>, w: FloatTensor<Self>) -> FloatTensor<Self> {
        binary::<B, C>(Binary::Linear, x, w)
    }

    fn kiln_layer_norm(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        eps: f64,
    ) -> FloatTensor<Self> {
        binary::<B, C>(Binary::LayerNorm { eps }, x, gamma)
    }

    fn kiln_conv2d(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct Conv2dBackward {
            options: ConvOptions<2>,
        }

        impl<B: Backend + KilnOps> Backward<B, 2> for Conv2dBackward {
            /// The forward input and weight.
            type State = (FloatTensor<B>, FloatTensor<B>);

            fn backward(
                self,
                ops: Ops<Self::State, 2>,
                grads: &mut Gradients,
                _checkpointer: &mut Checkpointer,
            ) {
                let [node_x, node_w] = ops.parents;
                let grad = grads.consume::<B>(&ops.node);
                let (x, w) = ops.state;
                let nodes = [node_x.map(|n| n.id), node_w.map(|n| n.id)];
                register_conv2d_grads::<B>(grads, nodes, x, w, grad, self.options);
            }
        }

        let op = Conv2dBackward {
            options: options.clone(),
        };
        match op
            .prepare::<C>([x.node(), w.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (x, w) = (x.primitive().clone(), w.primitive().clone());
                let y = B::kiln_conv2d(x.clone(), w.clone(), options);
                prep.finish((x, w), y)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::kiln_conv2d(
                x.into_primitive(),
                w.into_primitive(),
                options,
            )),
        }
    }

    fn kiln_conv2d_bias(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        b: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct Conv2dBiasBackward {
            options: ConvOptions<2>,
        }

        impl<B: Backend + KilnOps> Backward<B, 3> for Conv2dBiasBackward {
            /// The forward input and weight.
            type State = (FloatTensor<B>, FloatTensor<B>);

            fn backward(
                self,
                ops: Ops<Self::State, 3>,
                grads: &mut Gradients,
                _checkpointer: &mut Checkpointer,
            ) {
                let [node_x, node_w, node_b] = ops.parents;
                let grad = grads.consume::<B>(&ops.node);
                let (x, w) = ops.state;
                if let Some(nb) = node_b {
                    grads.register::<B>(nb.id, B::kiln_conv2d_bias_grad(grad.clone()));
                }
                let nodes = [node_x.map(|n| n.id), node_w.map(|n| n.id)];
                register_conv2d_grads::<B>(grads, nodes, x, w, grad, self.options);
            }
        }

        let op = Conv2dBiasBackward {
            options: options.clone(),
        };
        match op
            .prepare::<C>([x.node(), w.node(), b.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (x, w) = (x.primitive().clone(), w.primitive().clone());
                let y = B::kiln_conv2d_bias(x.clone(), w.clone(), b.primitive().clone(), options);
                prep.finish((x, w), y)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::kiln_conv2d_bias(
                x.into_primitive(),
                w.into_primitive(),
                b.into_primitive(),
                options,
            )),
        }
    }

    fn kiln_relu_max_pool2d(x: FloatTensor<Self>, k: usize) -> FloatTensor<Self> {
        unary::<B, C>(Unary::ReluMaxPool2d { k }, x)
    }

    fn kiln_attention(qkv: FloatTensor<Self>, spec: AttentionSpec) -> FloatTensor<Self> {
        unary::<B, C>(Unary::Attention(spec), qkv)
    }

    fn kiln_dropout(x: FloatTensor<Self>, mask: DropoutMask) -> FloatTensor<Self> {
        let y = B::kiln_dropout(x.primitive().clone(), mask);
        DropoutBackward(mask)
            .prepare::<C>([x.node()])
            .compute_bound()
            .stateless(y)
    }
    fn kiln_cross_entropy_head(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        spec: CrossEntropySpec,
    ) -> FloatTensor<Self> {
        let op = CrossEntropyBackward {
            layout: spec.layout,
            rows: spec.targets.len(),
        };
        match op
            .prepare::<C>([x.node(), w.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (x, w) = (x.primitive().clone(), w.primitive().clone());
                let (loss, grad) = B::kiln_cross_entropy_head_with_grad(x.clone(), w.clone(), spec);
                prep.finish((x, w, grad), loss)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::kiln_cross_entropy_head(
                x.into_primitive(),
                w.into_primitive(),
                spec,
            )),
        }
    }
}

/// The backward of the head + cross-entropy: the logits' gradient kept from the forward
/// (`softmax - onehot`), scaled by the loss's gradient over the rows, times the weight for the
/// input's gradient and times the input for the weight's: two products, through the linear
/// layer's ops.
#[derive(Debug)]
struct CrossEntropyBackward {
    layout: HeadLayout,
    rows: usize,
}

impl<B: Backend + KilnOps> Backward<B, 2> for CrossEntropyBackward {
    /// The input, the weight and the logits' gradient.
    type State = (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>);

    fn backward(
        self,
        ops: Ops<Self::State, 2>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let [node_x, node_w] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        let (x, w, logits_grad) = ops.state;
        // Under mixed precision the products run in the inputs' dtype (the loss and its
        // gradient are f32).
        let dtype = x.dtype();
        let logits_grad = precision::cast_to::<B>(logits_grad, dtype);
        // d mean / d row = grad / rows, broadcast over the smaller operand of each product.
        let scale = precision::cast_to::<B>(
            B::float_reshape(
                B::float_div_scalar(grad, (self.rows.max(1) as f32).into()),
                Shape::new([1, 1]),
            ),
            dtype,
        );
        if let Some(node) = node_x {
            let dx = match self.layout {
                HeadLayout::InOut => B::kiln_linear_grad_input(logits_grad.clone(), w),
                HeadLayout::OutIn => B::kiln_linear(logits_grad.clone(), w),
            };
            grads.register::<B>(node.id, B::float_mul(dx, scale.clone()));
        }
        if let Some(node) = node_w {
            let x = B::float_mul(x, scale);
            let dw = match self.layout {
                HeadLayout::InOut => B::kiln_linear_grad_weight(x, logits_grad),
                HeadLayout::OutIn => B::kiln_linear_grad_weight(logits_grad, x),
            };
            grads.register::<B>(node.id, dw);
        }
    }
}

/// A linear layer `x W + b` through [`KilnOps`]: kiln's gemm calls on Flex (one output
/// allocation, no copy; the backward's two products likewise), Burn's matmul elsewhere. The
/// bias, when present, is added with Burn's broadcasting add.
pub fn linear<const D: usize>(layer: &burn::nn::Linear, x: Tensor<D>) -> Tensor<D> {
    let y = product(x, layer.weight.val(), |x, w| {
        Tensor::from_dispatch(<Dispatch as KilnOps>::kiln_linear(
            x.into_dispatch(),
            w.into_dispatch(),
        ))
    });
    match &layer.bias {
        Some(bias) => y + bias.val().unsqueeze(),
        None => y,
    }
}

/// `a [m, k] @ b [k, n]` through [`KilnOps`]: the product kiln's linear layers run (on Flex
/// one gemm call per thread into an output that is never zero-filled; Burn's matmul
/// elsewhere).
pub fn matmul(a: Tensor<2>, b: Tensor<2>) -> Tensor<2> {
    product(a, b, |a, b| {
        Tensor::from_dispatch(<Dispatch as KilnOps>::kiln_linear(
            a.into_dispatch(),
            b.into_dispatch(),
        ))
    })
}

/// `op(a, b)`, a product: under an [`Autocast`] with both operands taken to its dtype and
/// the result back to f32; as it is otherwise.
fn product<const A: usize, const B: usize, const C: usize>(
    a: Tensor<A>,
    b: Tensor<B>,
    op: impl FnOnce(Tensor<A>, Tensor<B>) -> Tensor<C>,
) -> Tensor<C> {
    match autocast_dtype() {
        Some(dtype) => op(a.cast(dtype), b.cast(dtype)).cast(FloatDType::F32),
        None => op(a, b),
    }
}

/// The epsilon of every LayerNorm kiln builds ([`layer_norm`] relies on it: Burn's
/// `LayerNorm` keeps its own private).
pub const LAYER_NORM_EPSILON: f64 = 1e-5;

/// A LayerNorm built with [`LAYER_NORM_EPSILON`] through [`KilnOps`]: on Flex one pass per
/// row forward and one backward (the row's moments recomputed, not stored) instead of
/// Burn's nine-op decomposition and its autodiff graph; the bias, when present, is added
/// with Burn's broadcasting add.
pub fn layer_norm<const D: usize>(layer: &burn::nn::LayerNorm, x: Tensor<D>) -> Tensor<D> {
    layer_norm_with_epsilon(layer, x, LAYER_NORM_EPSILON)
}

/// [`layer_norm`] for a LayerNorm built with epsilon `epsilon` (a pretrained checkpoint's,
/// e.g. BERT's 1e-12): Burn's `LayerNorm` keeps its own private.
pub fn layer_norm_with_epsilon<const D: usize>(
    layer: &burn::nn::LayerNorm,
    x: Tensor<D>,
    epsilon: f64,
) -> Tensor<D> {
    let y = Tensor::from_dispatch(<Dispatch as KilnOps>::kiln_layer_norm(
        x.into_dispatch(),
        layer.gamma.val().into_dispatch(),
        epsilon,
    ));
    match &layer.beta {
        Some(beta) => y + beta.val().unsqueeze(),
        None => y,
    }
}

/// A 2-D convolution layer through [`KilnOps`]: on Flex (f32, one group) an im2col matrix
/// per sample in cache and one gemm call per sample, forward and backward (no im2col tensor
/// for the batch, no transposed convolution for the input's gradient; the bias added as the
/// output is written and its gradient summed in one pass); Burn's conv elsewhere.
pub fn conv2d(layer: &burn::nn::conv::Conv2d, x: Tensor<4>) -> Tensor<4> {
    check_conv_input(layer, &x);
    let Some(options) = conv_options(layer) else {
        // `Same` padding (kiln builds none): Burn's layer, in f32 even under autocast.
        return layer.forward(x);
    };
    let w = layer.weight.val();
    let b = layer.bias.as_ref().map(|b| b.val());
    let dtype = autocast_dtype();
    let (x, w, b) = match dtype {
        Some(d) => (x.cast(d), w.cast(d), b.map(|b| b.cast(d))),
        None => (x, w, b),
    };
    let y = Tensor::from_dispatch(match b {
        Some(bias) => <Dispatch as KilnOps>::kiln_conv2d_bias(
            x.into_dispatch(),
            w.into_dispatch(),
            bias.into_dispatch(),
            options,
        ),
        None => <Dispatch as KilnOps>::kiln_conv2d(x.into_dispatch(), w.into_dispatch(), options),
    });
    match dtype {
        Some(_) => Tensor::<4>::cast(y, FloatDType::F32),
        None => y,
    }
}

/// Panics unless `x` has the channels `layer` convolves: Burn's own convolution does not
/// check them, and would read a weight's channels that the input does not have.
fn check_conv_input(layer: &burn::nn::conv::Conv2d, x: &Tensor<4>) {
    let [_, channels, _, _] = x.dims();
    let w = layer.weight.shape();
    assert_eq!(
        channels,
        w[1] * layer.groups,
        "conv2d: the input has {channels} channels, the layer convolves {}",
        w[1] * layer.groups
    );
}

/// A convolution layer's options with its padding spelled out; `None` for `Same` padding
/// (Burn's layer computes that itself).
fn conv_options(layer: &burn::nn::conv::Conv2d) -> Option<ConvOptions<2>> {
    let padding = match &layer.padding {
        burn::nn::PaddingConfig2d::Valid => [(0, 0), (0, 0)],
        burn::nn::PaddingConfig2d::Explicit(top, left, bottom, right) => {
            [(*top, *bottom), (*left, *right)]
        }
        _ => return None,
    };
    Some(ConvOptions::new_with_padding(
        layer.stride,
        padding,
        layer.dilation,
        layer.groups,
    ))
}

/// `relu_max_pool2d(conv2d(layer, x), k)` for inference: on Flex f32 tensors without
/// autodiff, each sample's convolution output is pooled from a per-thread buffer in cache
/// instead of being written out at full resolution and read back (the serving path of a
/// CNN); the two ops otherwise.
pub fn conv2d_relu_max_pool2d(layer: &burn::nn::conv::Conv2d, x: Tensor<4>, k: usize) -> Tensor<4> {
    check_conv_input(layer, &x);
    let composed = |x| relu_max_pool2d(conv2d(layer, x), k);
    if k == 0
        || x.is_autodiff()
        || !on_flex(&x.device())
        || x.dtype() != DType::F32
        || !fused_kernels()
    {
        return composed(x);
    }
    let geometry = conv_options(layer)
        .and_then(|options| conv_geometry(&x.shape(), &layer.weight.shape(), &options));
    let Some(g) = geometry else {
        return composed(x);
    };
    let device = x.device();
    let (x, w) = (x.into_data(), layer.weight.val().into_data());
    let b = layer.bias.as_ref().map(|b| b.val().into_data());
    let (Ok(xs), Ok(ws)) = (x.as_slice::<f32>(), w.as_slice::<f32>()) else {
        return composed(Tensor::from_data(x, &device));
    };
    let bias = match &b {
        Some(b) => match b.as_slice::<f32>() {
            Ok(b) => Some(b),
            Err(_) => return composed(Tensor::from_data(x, &device)),
        },
        None => None,
    };
    let y = conv::forward_relu_max_pool(&g, xs, ws, bias, k);
    let shape = [g.batch, g.channels_out, g.out[0] / k, g.out[1] / k];
    Tensor::from_data(TensorData::new(y, shape), &device)
}

/// ReLU then a `k`×`k` max-pool with stride `k` (no padding), through [`KilnOps`]: one pass
/// forward and one backward on Flex f32 tensors (the backward finds each window's maximum
/// again instead of keeping an index tensor); Burn's ops elsewhere.
pub fn relu_max_pool2d(x: Tensor<4>, k: usize) -> Tensor<4> {
    Tensor::from_dispatch(<Dispatch as KilnOps>::kiln_relu_max_pool2d(
        x.into_dispatch(),
        k,
    ))
}

/// `pool`, a `k`×`k` max-pool with stride `k` and no padding: kiln's pass over contiguous
/// rows for inference on host f32 tensors ([`crate::kernels::max_pool2d_inference`]), the
/// module's Burn op otherwise.
pub fn max_pool2d(pool: &burn::nn::pool::MaxPool2d, k: usize, x: Tensor<4>) -> Tensor<4> {
    if !x.is_autodiff() && x.dtype() == DType::F32 && on_flex(&x.device()) && fused_kernels() {
        return crate::kernels::max_pool2d_inference(x, k);
    }
    pool.forward(x)
}

/// Exact GELU through [`KilnOps`]: kiln's vectorised kernels on Flex (forward and, under
/// autodiff, backward), Burn's op elsewhere.
pub fn gelu<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    if !x.is_autodiff() && x.dtype() == DType::F32 && on_flex(&x.device()) && fused_kernels() {
        // Inference on the host: in place in the tensor's own buffer.
        return crate::kernels::gelu_inference(x);
    }
    Tensor::from_dispatch(<Dispatch as KilnOps>::kiln_gelu(x.into_dispatch()))
}

/// Self-attention over packed `[B, T, 3C]` projections through [`KilnOps`] (causal or
/// bidirectional, with `spec`'s padding mask and dropout): on Flex f32 tensors one fused pass
/// per batch row and head, forward and backward (scores and probabilities live in per-head
/// scratch buffers and are recomputed in the backward rather than stored; keys past a row's
/// last real token are not computed); Burn ops on any other device, with the same values.
pub fn attention(qkv: Tensor<3>, spec: AttentionSpec) -> Tensor<3> {
    let run = |qkv: Tensor<3>| {
        Tensor::from_dispatch(<Dispatch as KilnOps>::kiln_attention(
            qkv.into_dispatch(),
            spec,
        ))
    };
    match autocast_dtype() {
        // The two products in the autocast dtype, scores and softmax in f32.
        Some(dtype) => Tensor::<3>::cast(run(qkv.cast(dtype)), FloatDType::F32),
        None => run(qkv),
    }
}

/// The mask `drop` asks for in one call on `device`: none outside training (as Burn's
/// `Dropout`: no autodiff, a frozen layer, or probability 0), else a fresh seed drawn from the
/// device's random stream, which the trainer seeds per step, so a resumed run draws the same
/// masks.
pub fn dropout_mask(
    drop: &burn::nn::Dropout,
    device: &burn::prelude::Device,
) -> Option<DropoutMask> {
    if drop.prob == 0.0 || !drop.training.is_enabled() || !device.is_autodiff() {
        return None;
    }
    let bits = Tensor::<1>::random([2], burn::tensor::Distribution::Default, device)
        .into_data()
        .try_to_vec::<f32>()
        .expect("f32 random values");
    Some(DropoutMask {
        prob: drop.prob as f32,
        seed: (u64::from(bits[0].to_bits()) << 32) | u64::from(bits[1].to_bits()),
    })
}

/// `drop` applied to `x` through [`KilnOps`]: while training, `x` times a mask regenerated in
/// the backward from its seed (one pass each way, nothing stored; on Flex rows of the mask in
/// parallel); `x` itself otherwise.
pub fn dropout<const D: usize>(drop: &burn::nn::Dropout, x: Tensor<D>) -> Tensor<D> {
    match dropout_mask(drop, &x.device()) {
        Some(mask) => {
            Tensor::from_dispatch(<Dispatch as KilnOps>::kiln_dropout(x.into_dispatch(), mask))
        }
        None => x,
    }
}

/// [`attention`] with a causal mask, no padding and no dropout.
pub fn causal_attention(qkv: Tensor<3>, heads: usize) -> Tensor<3> {
    attention(
        qkv,
        AttentionSpec {
            heads,
            causal: true,
            key_padding: None,
            dropout: None,
        },
    )
}

/// The mean cross-entropy of an output head's logits `x [N, C] @ W` against `targets` (one per
/// row, each below the vocabulary), `W` laid out as `layout` says (a `Linear`'s `[C, V]` or a
/// tied embedding's `[V, C]`), through [`KilnOps`]. On Flex f32 tensors the logits are
/// computed a cache-sized block of rows at a time and each row turned into its loss and, under
/// autodiff, its gradient in one pass; the backward is two products. Burn's ops elsewhere.
pub fn cross_entropy_head(
    x: Tensor<2>,
    w: Tensor<2>,
    layout: HeadLayout,
    targets: Arc<[u32]>,
) -> Tensor<1> {
    let spec = CrossEntropySpec { layout, targets };
    spec.check(&x.shape(), &w.shape());
    // Under autocast the logits' product in its dtype; the loss is f32 either way.
    let (x, w) = match autocast_dtype() {
        Some(dtype) => (x.cast(dtype), w.cast(dtype)),
        None => (x, w),
    };
    Tensor::from_dispatch(<Dispatch as KilnOps>::kiln_cross_entropy_head(
        x.into_dispatch(),
        w.into_dispatch(),
        spec,
    ))
}

/// One Adam/AdamW step of a flat parameter `p` with gradient `g` and moments `m`, `v`
/// (zeros before the first step): `(p, m, v)` after it. On host f32 tensors (with
/// `fused` and [`fused_kernels`]) one pass over memory instead of a dozen tensor ops, bit-equal
/// to the tensor ops every other device runs.
pub fn adam_update(
    p: Tensor<1>,
    g: Tensor<1>,
    m: Tensor<1>,
    v: Tensor<1>,
    step: &AdamStep,
    fused: bool,
) -> (Tensor<1>, Tensor<1>, Tensor<1>) {
    let host = |t: &Tensor<1>| t.dtype() == DType::F32 && on_flex(&t.device());
    if !(fused && fused_kernels() && host(&p) && host(&g) && host(&m) && host(&v)) {
        return adam::update_reference(p, g, m, v, step);
    }
    let device = p.device();
    let (p, m, v) = adam::update_host(
        p.into_data(),
        g.into_data(),
        m.into_data(),
        v.into_data(),
        step,
    );
    (
        Tensor::from_data(p, &device),
        Tensor::from_data(m, &device),
        Tensor::from_data(v, &device),
    )
}

/// Whether the ops of this module run kiln's fused kernels where they have one (the default),
/// or Burn's generic ops everywhere (`KILN_KERNELS=generic` at start, or
/// [`set_fused_kernels`]). The generic form is what every non-host device runs; tests run a
/// model through both and compare values and gradients.
pub fn fused_kernels() -> bool {
    fused_switch().load(Ordering::Relaxed)
}

/// Turns kiln's fused kernels on or off for the whole process (see [`fused_kernels`]).
pub fn set_fused_kernels(enabled: bool) {
    fused_switch().store(enabled, Ordering::Relaxed);
}

fn fused_switch() -> &'static AtomicBool {
    static FUSED: std::sync::OnceLock<AtomicBool> = std::sync::OnceLock::new();
    FUSED.get_or_init(|| {
        let generic =
            std::env::var("KILN_KERNELS").is_ok_and(|v| v.eq_ignore_ascii_case("generic"));
        AtomicBool::new(!generic)
    })
}

/// Whether `device` is Flex's (with or without autodiff): where kiln's host kernels and
/// fused backwards ([`causal_attention`], the fused Adam) exist. f32 tensors only — callers
/// check the dtype.
pub fn on_flex(device: &burn::prelude::Device) -> bool {
    use burn::backend::DispatchDevice;
    #[allow(unreachable_patterns)]
    match device.as_dispatch() {
        DispatchDevice::Flex(_) => true,
        DispatchDevice::Autodiff(inner) => matches!(**inner, DispatchDevice::Flex(_)),
        _ => false,
    }
}
