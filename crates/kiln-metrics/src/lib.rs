//! Evaluation metrics for kiln.
//!
//! Pure functions over plain slices: no tensor library, so the same code scores training
//! batches, `kiln eval`, and (later) a serving endpoint. Definitions follow scikit-learn
//! (zero division gives 0, ROC-AUC by the trapezoid rule with ties counted half, log loss on
//! row-normalised, clipped probabilities); `tests/sklearn.rs` checks them against values
//! computed by scikit-learn.
//!
//! Every metric terminates on any input: NaN or infinite scores, probabilities and targets
//! are an error naming the sample ([`MetricsError::NonFinite`]); `tests/properties.rs` checks
//! this over random inputs.
#![warn(missing_docs)]

mod classification;
mod regression;

pub use classification::{
    ClassMetrics, ClassificationMetrics, RocCurve, log_loss, roc_auc_binary, roc_curve,
    top_k_accuracy,
};
pub use regression::RegressionMetrics;

/// Errors raised when metric inputs are inconsistent.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum MetricsError {
    /// Two inputs that must describe the same samples have different lengths.
    #[error("length mismatch: {what} has {got} values, expected {expected}")]
    LengthMismatch {
        /// Which input is wrong.
        what: &'static str,
        /// Its length.
        got: usize,
        /// The expected length.
        expected: usize,
    },
    /// No samples at all.
    #[error("cannot compute metrics on zero samples")]
    Empty,
    /// A label is outside `0..num_classes`.
    #[error("label {label} at index {index} is outside 0..{num_classes}")]
    LabelOutOfRange {
        /// The label.
        label: usize,
        /// Its position.
        index: usize,
        /// The number of classes.
        num_classes: usize,
    },
    /// A score, probability or target is NaN or infinite (the model's output for that sample
    /// overflowed, or the input was not a number).
    #[error("{what} of sample {index} is {value}, expected a finite number")]
    NonFinite {
        /// Which input holds it.
        what: &'static str,
        /// The sample's position.
        index: usize,
        /// The value.
        value: f32,
    },
}

/// The first sample whose values (`width` per sample) are not all finite.
pub(crate) fn check_finite(
    what: &'static str,
    values: &[f32],
    width: usize,
) -> Result<(), MetricsError> {
    match values.iter().position(|v| !v.is_finite()) {
        None => Ok(()),
        Some(i) => Err(MetricsError::NonFinite {
            what,
            index: i / width.max(1),
            value: values[i],
        }),
    }
}
