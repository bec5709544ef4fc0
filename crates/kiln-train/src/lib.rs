//! kiln's trainer.
//!
//! [`train`] runs the optimisation loop over encoded data with kiln's own
//! [`Optimizer`](optim::Optimizer)s and [`LrSchedule`](schedule::LrSchedule), writes
//! `metrics.jsonl` and atomic [checkpoints](checkpoint), and resumes bit-identically.
//! [`evaluate`](evaluate::evaluate) scores a model. What training shares with serving and
//! export (the run-directory layout, weights, inference) is `kiln-runtime`.
#![warn(missing_docs)]

pub mod checkpoint;
pub mod evaluate;
pub mod grads;
pub mod lm;
pub mod optim;
pub mod schedule;
mod trainer;
pub mod weights;

pub use grads::{GradientSync, ParamGrads, SingleProcess};
pub use trainer::{
    EpochRecord, Observer, Silent, StartInfo, StepRecord, TrainOutcome, TrainSetup, loss_of, train,
};

/// Training errors.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A checkpoint is missing, truncated, corrupt or foreign.
    #[error("checkpoint error: {0}")]
    Checkpoint(String),
    /// Weights do not load.
    #[error("weights: {0}")]
    Weights(String),
    /// The loss became NaN or infinite.
    #[error(
        "training diverged at step {step}: loss is {loss} (lower trainer.lr, or set trainer.grad_clip_norm)"
    )]
    Diverged {
        /// The step.
        step: u64,
        /// The loss.
        loss: f64,
    },
    /// Inconsistent inputs.
    #[error("{0}")]
    Invalid(String),
    /// Metric computation failed.
    #[error(transparent)]
    Metrics(#[from] kiln_metrics::MetricsError),
    /// Data problem.
    #[error(transparent)]
    Data(#[from] kiln_data::DataError),
    /// Run directory problem.
    #[error("{0}")]
    Run(String),
    /// Reading or writing a run's files, weights, inference.
    #[error(transparent)]
    Runtime(#[from] kiln_runtime::RuntimeError),
}
