//! Exporting kiln models for other runtimes.
//!
//! - [`onnx`]: ONNX graphs (opset 17) built from kiln's own model definitions for every model
//!   kiln trains (MLP, linear, CNN, text-encoder classifier, GPT), with the dense
//!   normalisation inside the graph. Burn's ONNX support only imports, and its experimental
//!   exporter covers neither LayerNorm nor attention, so kiln writes the graph itself with
//!   prost messages for the part of `onnx.proto` it needs ([`proto`]).
//! - [`hf`]: safetensors with PyTorch/HuggingFace tensor names and layouts, plus a
//!   `config.json` (GPT-2 layout and names for language models).
//! - [`test_data`]: inputs and expected outputs as ONNX `TensorProto` files, the layout of the
//!   ONNX model zoo's `test_data_set_0/`, so any runtime can check an export.
#![warn(missing_docs)]

pub mod graph;
pub mod hf;
mod layers;
pub mod onnx;
pub mod proto;
pub mod test_data;
mod weights;

pub use weights::{NamedTensor, Weights};

/// An export that cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The weights file is unreadable or does not match the architecture.
    #[error("{origin}: {message}")]
    Weights {
        /// File.
        origin: String,
        /// Problem.
        message: String,
    },
    /// A model feature the exporter does not cover.
    #[error("cannot export: {0}")]
    Unsupported(String),
}
