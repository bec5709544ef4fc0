//! What training, evaluation, serving and export share, and nothing of training itself:
//! the run-directory layout and its checked loader ([`run`]), atomic writes ([`fs`]), model
//! weights ([`weights`]), inference over encoded rows ([`inference`]), the compute device
//! ([`device_for`]), language-model loading and sampling ([`lm`]) and pretrained Hugging Face
//! encoders ([`pretrained`]). A server links this,
//! not the trainer.
#![warn(missing_docs)]

pub mod fs;
pub mod inference;
pub mod lm;
pub mod pretrained;
pub mod run;
pub mod weights;

use burn::prelude::Device;
use kiln_config::Config;

/// Errors reading, checking or writing a run, or running its model.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Weights do not load (or save).
    #[error("{origin}: {problem}")]
    Weights {
        /// Where the weights came from (a file or checkpoint).
        origin: String,
        /// What is wrong with them.
        #[source]
        problem: weights::WeightsError,
    },
    /// A `model.json` that no network can be built from.
    #[error("{}: {source}", file.display())]
    Spec {
        /// The file.
        file: std::path::PathBuf,
        /// The field at fault.
        source: kiln_models::SpecError,
    },
    /// A run directory is missing, incomplete or inconsistent.
    #[error("{0}")]
    Run(String),
    /// A request that cannot be served as given (prompt too long, bad sampling settings).
    #[error("{0}")]
    Invalid(String),
    /// Data problem.
    #[error(transparent)]
    Data(#[from] kiln_data::DataError),
    /// Configuration problem.
    #[error(transparent)]
    Config(#[from] kiln_config::ConfigError),
}

/// The compute device a config asks for.
pub fn device_for(config: &Config) -> Result<Device, RuntimeError> {
    match config.device.as_str() {
        "cpu" => Ok(Device::flex()),
        other => Err(RuntimeError::Invalid(format!(
            "unknown device \"{other}\"; this build has: cpu"
        ))),
    }
}
