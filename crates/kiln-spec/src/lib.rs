//! What a kiln model is, as plain data: the shapes saved in a run's `model.json` and the
//! input shape the preprocessing produces. No tensor library: the exporter, the server's
//! request checks and a dashboard read these without compiling Burn; `kiln-models` builds
//! networks from them.
#![warn(missing_docs)]

mod bert;
mod gpt;
mod input;
mod model;
mod text;

pub use bert::{
    BERT_ACTIVATIONS, BertConfig, Gpt2Config, PRETRAINED_MODEL_TYPES, PretrainedEncoderSpec,
    check_model_type,
};
pub use gpt::GptConfig;
pub use input::InputShape;
pub use model::{MAX_DIMENSION, MAX_LAYERS, ModelSpec, SpecError};
pub use text::TextEncoderSpec;
