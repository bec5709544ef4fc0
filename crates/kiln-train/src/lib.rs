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
mod feed;
pub mod grads;
pub mod lm;
pub mod optim;
pub mod precision;
pub mod schedule;
mod trainer;
pub mod weights;

pub use grads::{AllReduceStats, DataParallel, GradientSync, ParamGrads, SingleProcess};
pub use kiln_dist::{DistError, World};
pub use trainer::{
    EpochRecord, LiveTeacher, Observer, Silent, StartInfo, StepRecord, TeacherLogits,
    TeacherSource, TrainOutcome, TrainSetup, ensemble_logits, loss_of, train,
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
    #[error("checkpoint {}: {problem}{}", dir.display(), usable_note(usable))]
    Checkpoint {
        /// The checkpoint (or run) directory.
        dir: std::path::PathBuf,
        /// What is wrong with it.
        #[source]
        problem: CheckpointError,
        /// Earlier checkpoints of the same run that still verify, when the latest does not.
        usable: Vec<std::path::PathBuf>,
    },
    /// Weights could not be serialised.
    #[error("weights: {0}")]
    Weights(#[from] safetensors::SafeTensorError),
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
    /// A setting that cannot work for this run.
    #[error("{key}: {reason}")]
    Setting {
        /// The config key, e.g. `trainer.batch_size`.
        key: &'static str,
        /// Why, and what to give instead.
        reason: String,
    },
    /// `trainer.monitor` names a metric the task does not have.
    #[error("trainer.monitor = \"{monitor}\" is not defined for this task")]
    UnknownMonitor {
        /// The configured monitor.
        monitor: String,
    },
    /// Rows to train on or score have no target column.
    #[error("the data has no target column to {purpose}")]
    NoTarget {
        /// What the target was needed for ("train on", "score against").
        purpose: &'static str,
    },
    /// Cleaning left no training rows.
    #[error("no training rows left after cleaning")]
    NoTrainingRows,
    /// Metric computation failed.
    #[error(transparent)]
    Metrics(#[from] kiln_metrics::MetricsError),
    /// Data problem.
    #[error(transparent)]
    Data(#[from] kiln_data::DataError),
    /// Corpus or tokenizer problem (a token file too short for one window).
    #[error(transparent)]
    Text(#[from] kiln_text::TextError),
    /// Reading or writing a run's files, weights, inference.
    #[error(transparent)]
    Runtime(#[from] kiln_runtime::RuntimeError),
    /// A collective across processes failed.
    #[error(transparent)]
    Dist(#[from] kiln_dist::DistError),
}

/// What is wrong with a checkpoint.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// No `manifest.json`.
    #[error("no manifest.json: not a kiln checkpoint, or an incomplete one")]
    NoManifest,
    /// No `checkpoints/latest` in a run directory.
    #[error("no checkpoint to resume from (no checkpoints/latest)")]
    NoLatest,
    /// `manifest.json` does not parse.
    #[error("manifest.json is not valid: {0}")]
    Manifest(#[source] serde_json::Error),
    /// Another format's manifest.
    #[error("format \"{found}\", expected \"{expected}\"")]
    Format {
        /// The manifest's format.
        found: String,
        /// The format kiln writes.
        expected: &'static str,
    },
    /// A manifest version this kiln does not read.
    #[error("checkpoint version {found}, this kiln reads version {expected}")]
    Version {
        /// The manifest's version.
        found: u32,
        /// The version kiln reads.
        expected: u32,
    },
    /// A file the manifest lists cannot be read.
    #[error("{file}: {source}")]
    Unreadable {
        /// The file.
        file: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A file's size differs from the manifest's.
    #[error(
        "{file} is {actual} bytes, the manifest says {expected}: the file is truncated or was modified"
    )]
    Truncated {
        /// The file.
        file: String,
        /// Its size on disk.
        actual: u64,
        /// The manifest's size.
        expected: u64,
    },
    /// A file fails its CRC-32.
    #[error("{file} fails its checksum: the file is corrupt")]
    Checksum {
        /// The file.
        file: String,
    },
    /// A file the trainer needs is not in the checkpoint.
    #[error("has no {file}")]
    Missing {
        /// The file.
        file: String,
    },
    /// A file verifies but its contents do not load.
    #[error("{file}: {detail}")]
    Contents {
        /// The file.
        file: String,
        /// What is wrong.
        detail: String,
    },
}

fn usable_note(usable: &[std::path::PathBuf]) -> String {
    if usable.is_empty() {
        return String::new();
    }
    let list: Vec<String> = usable.iter().map(|p| p.display().to_string()).collect();
    format!(
        "; usable earlier checkpoints: {} (pass one to --resume)",
        list.join(", ")
    )
}

impl TrainError {
    /// A [`TrainError::Checkpoint`] for `dir`.
    pub fn checkpoint(dir: &std::path::Path, problem: CheckpointError) -> Self {
        TrainError::Checkpoint {
            dir: dir.to_path_buf(),
            problem,
            usable: Vec::new(),
        }
    }
}
