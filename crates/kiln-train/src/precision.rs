//! Mixed-precision training (`trainer.precision`): the dtype the forward pass's products
//! compute in, whether a device can, and float16's dynamic loss scaling.

use burn::prelude::Device;
use burn::tensor::FloatDType;
use kiln_config::Precision;
use serde::{Deserialize, Serialize};

use crate::TrainError;
use crate::grads::ParamGrads;

/// The dtype `precision`'s products compute in (`None`: f32 throughout).
pub fn compute_dtype(precision: Precision) -> Option<FloatDType> {
    match precision {
        Precision::F32 => None,
        Precision::Bf16Mixed => Some(FloatDType::BF16),
        Precision::F16Mixed => Some(FloatDType::F16),
    }
}

/// An error unless `device` (described as `described`) computes in `precision`'s dtype.
pub fn check_precision(
    precision: Precision,
    device: &Device,
    described: &str,
) -> Result<(), TrainError> {
    let Some(dtype) = compute_dtype(precision) else {
        return Ok(());
    };
    let dtype_name = match dtype {
        FloatDType::BF16 => "bfloat16",
        _ => "float16",
    };
    if device.supports_dtype(dtype) {
        return Ok(());
    }
    let other = match precision {
        Precision::Bf16Mixed => Precision::F16Mixed,
        _ => Precision::Bf16Mixed,
    };
    let alternative = compute_dtype(other)
        .filter(|d| device.supports_dtype(*d))
        .map(|_| format!("\"{other}\" or "))
        .unwrap_or_default();
    Err(TrainError::Setting {
        key: "trainer.precision",
        reason: format!(
            "\"{precision}\" computes in {dtype_name}, which {described} cannot; train in \
             {alternative}\"f32\" on this device (--precision, also with --resume: weights are \
             f32 in every precision)"
        ),
    })
}

/// float16's dynamic loss scaling (PyTorch's `GradScaler`, same constants): the loss is
/// multiplied by [`LossScaler::scale`] before the backward pass so small gradients survive
/// float16; the gradients are divided by it before the update. A step whose gradients
/// overflowed is skipped and halves the scale; 2000 good steps in a row double it. Kept in
/// checkpoints, so a resumed run scales as the uninterrupted one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LossScaler {
    scale: f64,
    good_steps: u32,
    skipped_steps: u64,
}

impl LossScaler {
    /// The first scale, 2^16.
    pub const INITIAL_SCALE: f64 = 65536.0;
    /// Good steps in a row after which the scale doubles.
    pub const GROWTH_INTERVAL: u32 = 2000;

    /// A scaler for `precision` (float16 only), starting at `initial_scale`.
    pub fn for_precision(precision: Precision, initial_scale: f64) -> Option<LossScaler> {
        (precision == Precision::F16Mixed).then_some(LossScaler {
            scale: initial_scale,
            good_steps: 0,
            skipped_steps: 0,
        })
    }

    /// The scaler a (resumed) run in `precision` goes on with: `saved`, a fresh one for a run
    /// that switched to float16, none for a run in another precision.
    pub fn carried(precision: Precision, saved: Option<LossScaler>) -> Option<LossScaler> {
        match precision {
            Precision::F16Mixed => {
                saved.or_else(|| LossScaler::for_precision(precision, Self::INITIAL_SCALE))
            }
            _ => None,
        }
    }

    /// What the loss is multiplied by before the backward pass.
    pub fn scale(&self) -> f64 {
        self.scale
    }

    /// `loss` times the scale, to run the backward pass on.
    pub fn scaled(&self, loss: burn::prelude::Tensor<1>) -> burn::prelude::Tensor<1> {
        loss.mul_scalar(self.scale)
    }

    /// Steps skipped so far because their gradients overflowed.
    pub fn skipped_steps(&self) -> u64 {
        self.skipped_steps
    }

    /// Divides `grads` by the scale and updates it: the gradients' global norm when the step
    /// should be taken (every gradient finite), `None` when it overflowed (skip it; the scale
    /// halves).
    pub fn unscale(&mut self, grads: &mut ParamGrads) -> Option<f64> {
        grads.scale(1.0 / self.scale);
        let norm = grads.global_norm();
        if norm.is_finite() {
            self.good_steps += 1;
            if self.good_steps >= Self::GROWTH_INTERVAL {
                self.scale *= 2.0;
                self.good_steps = 0;
            }
            Some(norm)
        } else {
            self.scale /= 2.0;
            self.good_steps = 0;
            self.skipped_steps += 1;
            None
        }
    }
}
