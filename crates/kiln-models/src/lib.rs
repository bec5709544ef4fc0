//! kiln's networks.
//!
//! A [`ModelSpec`] (saved as `model.json` in a run directory) fully determines the
//! architecture; [`Network::new`] builds it on any Burn [`Device`], with or without autodiff.
//! One [`Network`] type covers the tabular MLP (with optional learned embeddings for
//! categorical features), the linear baseline (no hidden layers) and the CNN (a conv stack
//! in front of the same fully connected head) and the text classifier (a transformer
//! encoder whose mean-pooled output joins the head's input). [`Gpt`] is the decoder
//! language model; both transformers share their blocks.
#![warn(missing_docs)]

pub mod bert;
pub mod device;
mod encoder;
mod generate;
mod gpt;
pub mod kernels;
mod network;
pub mod ops;
mod transformer;

pub use bert::Bert;
pub use encoder::TextEncoder;
pub use generate::{SamplingConfig, generate, sample};
pub use gpt::{Gpt, KvCache};
pub use kiln_spec::{
    BertConfig, Gpt2Config, GptConfig, InputShape, ModelSpec, PRETRAINED_MODEL_TYPES,
    PretrainedEncoderSpec, SpecError, TextEncoderSpec, check_model_type,
};
pub use network::{Inputs, Network, Outputs};

pub use burn::prelude::{Device, Int, Tensor, TensorData};
