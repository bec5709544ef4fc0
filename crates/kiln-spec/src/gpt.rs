use serde::{Deserialize, Serialize};

/// GPT shape (saved in `model.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GptConfig {
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Maximum sequence length.
    pub context: usize,
    /// Transformer blocks.
    pub layers: usize,
    /// Attention heads.
    pub heads: usize,
    /// Embedding width.
    pub embd: usize,
    /// Dropout on embeddings, attention and residual branches.
    pub dropout: f64,
    /// Biases in Linear and LayerNorm layers.
    pub bias: bool,
    /// Share the token embedding with the output head.
    pub tied_head: bool,
}

impl GptConfig {
    /// Checks the shape is buildable.
    pub fn validate(&self) -> Result<(), String> {
        if self.vocab_size == 0
            || self.context == 0
            || self.layers == 0
            || self.heads == 0
            || self.embd == 0
        {
            return Err(
                "vocab_size, context, layers, heads and embd must all be at least 1".into(),
            );
        }
        if !self.embd.is_multiple_of(self.heads) {
            return Err(format!(
                "embd ({}) must be divisible by heads ({})",
                self.embd, self.heads
            ));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(format!("dropout must be in [0, 1), got {}", self.dropout));
        }
        if self.layers > crate::MAX_LAYERS {
            return Err(format!(
                "layers is {}, at most {} are built",
                self.layers,
                crate::MAX_LAYERS
            ));
        }
        let largest = [
            self.vocab_size,
            self.context,
            self.layers,
            self.heads,
            self.embd,
        ];
        if let Some(v) = largest.iter().find(|&&v| v > crate::MAX_DIMENSION) {
            return Err(format!(
                "{v} is larger than any dimension kiln builds ({})",
                crate::MAX_DIMENSION
            ));
        }
        Ok(())
    }
}
