//! Mixed precision: the dtype training's products compute in, set per thread around a
//! forward pass (as PyTorch's `autocast`), and the casts the ops make at their boundaries.

use burn::backend::Backend;
use burn::backend::TensorMetadata;
use burn::backend::tensor::FloatTensor;
use burn::tensor::{DType, FloatDType};
use std::cell::Cell;

thread_local! {
    static COMPUTE: Cell<Option<FloatDType>> = const { Cell::new(None) };
}

/// While alive, [`crate::ops`]'s products on this thread (linear layers, convolutions,
/// attention's two products, the output head's logits) take their f32 inputs and weights
/// down to a half-precision dtype, compute there and hand f32 back; everything else
/// (normalisation, softmax, the loss, activations, gradients reaching the parameters) stays
/// f32. Parameters stay f32 (master weights): each cast is a differentiable op, so their
/// gradients come back as f32. Dropping it restores what was set before.
#[derive(Debug)]
#[must_use = "autocast ends when the guard is dropped"]
pub struct Autocast {
    previous: Option<FloatDType>,
}

impl Autocast {
    /// Products compute in `dtype` (`None`, or `F32`: everything in f32) until the guard is
    /// dropped.
    pub fn enter(dtype: Option<FloatDType>) -> Autocast {
        let dtype = dtype.filter(|d| *d != FloatDType::F32);
        Autocast {
            previous: COMPUTE.with(|c| c.replace(dtype)),
        }
    }
}

impl Drop for Autocast {
    fn drop(&mut self) {
        COMPUTE.with(|c| c.set(self.previous));
    }
}

/// The dtype products compute in on this thread, when an [`Autocast`] is alive.
pub fn autocast_dtype() -> Option<FloatDType> {
    COMPUTE.with(Cell::get)
}

/// `t` in `dtype` (itself when it already is).
pub(super) fn cast_to<B: Backend>(t: FloatTensor<B>, dtype: DType) -> FloatTensor<B> {
    if t.dtype() == dtype {
        t
    } else {
        B::float_cast(t, FloatDType::from(dtype))
    }
}

/// `t` in f32 (itself when it already is): where reductions (softmax, the loss) run.
pub(super) fn to_f32<B: Backend>(t: FloatTensor<B>) -> FloatTensor<B> {
    cast_to::<B>(t, DType::F32)
}
