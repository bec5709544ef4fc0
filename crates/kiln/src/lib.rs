//! kiln as a library.
//!
//! [`train_run`] takes a validated [`Config`](kiln_config::Config) to a finished run
//! directory: load and clean the data, infer the schema, split, fit preprocessing on the
//! training rows, train, evaluate the kept model on the test split, and write the report with
//! its charts. [`evaluate_run`] and [`predict_run`] load a run directory and apply it to new
//! data with exactly the saved preprocessing. The `kiln` binary is a thin layer over these.
#![warn(missing_docs)]

mod distill;
mod distributed;
mod embed;
mod export;
mod lm;
pub mod memory;
mod pipeline;
mod predictions;
mod report;
mod resume;
mod run_info;
mod split_files;

pub use distill::DistillSummary;
pub use embed::{EmbedSummary, embed_file};
pub use export::{ExportFormat, ExportSummary, export_files, export_run};
pub use lm::{
    Generation, LmSummary, corpus_files, generate_run, generate_text, load_lm, train_lm_run,
    train_lm_run_in,
};
pub use pipeline::{
    DataSummary, DataWait, EvalSummary, PredictSummary, PreparedData, RunSummary, device_for,
    evaluate_run, load_table, predict_run, prepare, train_run, train_run_in,
};
pub use report::format_evaluation;
pub use resume::{RESUME_KEYS, Resume};
pub use run_info::{Machine, PrecisionUsed, RunInfo};
pub use split_files::{SplitFiles, write_split_files};

pub use kiln_config as config;
pub use kiln_data as data;
pub use kiln_export as export_formats;
pub use kiln_metrics as metrics;
pub use kiln_models as models;
pub use kiln_runtime as runtime;
pub use kiln_text as text;
pub use kiln_train as train;

/// Any kiln error, by layer.
#[derive(Debug, thiserror::Error)]
pub enum KilnError {
    /// Configuration.
    #[error(transparent)]
    Config(#[from] kiln_config::ConfigError),
    /// Data.
    #[error(transparent)]
    Data(#[from] kiln_data::DataError),
    /// Training and checkpoints.
    #[error(transparent)]
    Train(#[from] kiln_train::TrainError),
    /// Run directories, weights, inference.
    #[error(transparent)]
    Runtime(#[from] kiln_runtime::RuntimeError),
    /// The model config does not fit the data.
    #[error(transparent)]
    Spec(#[from] kiln_models::SpecError),
    /// A pretrained model folder.
    #[error(transparent)]
    Pretrained(#[from] kiln_runtime::pretrained::PretrainedError),
    /// Training across processes.
    #[error(transparent)]
    Dist(#[from] kiln_train::DistError),
    /// Charts.
    #[error(transparent)]
    Plot(#[from] kiln_report::PlotError),
    /// Writing outputs.
    #[error("{path}: {message}")]
    Output {
        /// File.
        path: String,
        /// Problem.
        message: String,
    },
    /// Anything else that is the caller's to fix.
    #[error("{0}")]
    Invalid(String),
}

/// Result alias.
pub type Result<T, E = KilnError> = std::result::Result<T, E>;
