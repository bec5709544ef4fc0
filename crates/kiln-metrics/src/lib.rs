//! Evaluation metrics for kiln.
//!
//! Pure functions over plain slices: no tensor library, so the same code scores training
//! batches, `kiln eval`, and (later) a serving endpoint. Definitions follow scikit-learn
//! (zero division gives 0, ROC-AUC by the trapezoid rule with ties counted half, log loss on
//! row-normalised, clipped probabilities); `tests/sklearn.rs` checks them against values
//! computed by scikit-learn.
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
}
