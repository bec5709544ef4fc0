use kiln_config::{Freeze, Pooling};
use serde::{Deserialize, Serialize};

/// Shape of a text encoder (part of [`ModelSpec`](crate::ModelSpec)).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TextEncoderSpec {
    /// Token table size, including id 0 for padding.
    pub vocab_size: usize,
    /// Longest sequence.
    pub max_tokens: usize,
    /// Encoder blocks.
    pub layers: usize,
    /// Attention heads.
    pub heads: usize,
    /// Embedding width (the pooled output's width).
    pub embd: usize,
    /// Dropout on embeddings, attention and residual branches.
    pub dropout: f64,
    /// Biases in Linear and LayerNorm layers.
    pub bias: bool,
    /// How token states become one vector.
    #[serde(default)]
    pub pooling: Pooling,
    /// Each position attends to itself and earlier ones only: a pretrained GPT read as an
    /// encoder keeps the attention it was trained with (padding comes last, so real
    /// positions never see it).
    #[serde(default)]
    pub causal: bool,
    /// What of a pretrained GPT stays fixed while fine-tuning (`model.freeze`).
    #[serde(default)]
    pub freeze: Freeze,
}

impl TextEncoderSpec {
    /// Width of the pooled output.
    pub fn output_width(&self) -> usize {
        match self.pooling {
            Pooling::Mean | Pooling::Max | Pooling::Cls => self.embd,
            Pooling::MeanMax => 2 * self.embd,
        }
    }
}
