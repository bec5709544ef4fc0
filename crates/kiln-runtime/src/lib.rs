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
use kiln_config::{Config, DeviceRequest};
pub use kiln_models::device::OpenedDevice;

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
    Ok(open_device(config)?.device)
}

/// The compute device a config asks for (or the one [`use_device`] set), with the words a
/// report uses for it.
pub fn open_device(config: &Config) -> Result<OpenedDevice, RuntimeError> {
    let request = match DEVICE_OVERRIDE.get() {
        Some(request) => *request,
        None => config.device_request().map_err(RuntimeError::Invalid)?,
    };
    kiln_models::device::open(request).map_err(|e| RuntimeError::Invalid(e.to_string()))
}

/// The device for work without a run config (a pretrained folder served or embedded): the
/// one [`use_device`] set, else the CPU.
pub fn default_device() -> Result<Device, RuntimeError> {
    let request = DEVICE_OVERRIDE.get().copied().unwrap_or(DeviceRequest::Cpu);
    kiln_models::device::open(request)
        .map(|opened| opened.device)
        .map_err(|e| RuntimeError::Invalid(e.to_string()))
}

static DEVICE_OVERRIDE: std::sync::OnceLock<DeviceRequest> = std::sync::OnceLock::new();

/// Makes every later [`open_device`] in this process open `request`, whatever the config
/// says: `--device` on commands that read a run's saved config (`eval`, `predict`, `serve`,
/// a resumed `train`). The first call wins.
pub fn use_device(request: DeviceRequest) {
    let _ = DEVICE_OVERRIDE.set(request);
}
