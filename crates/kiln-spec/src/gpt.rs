use crate::SpecError;
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
    /// Checks the shape is buildable; the error names the field (`model.heads`, ...), its
    /// value and what it must be.
    pub fn validate(&self) -> Result<(), SpecError> {
        let invalid = |field: &str, value: String, expected: String| SpecError::Invalid {
            field: format!("model.{field}"),
            value,
            expected,
        };
        for (field, v) in [
            ("vocab_size", self.vocab_size),
            ("context", self.context),
            ("layers", self.layers),
            ("heads", self.heads),
            ("embd", self.embd),
        ] {
            if v == 0 {
                return Err(invalid(field, "0".into(), "at least 1".into()));
            }
            if v > crate::MAX_DIMENSION {
                return Err(invalid(
                    field,
                    v.to_string(),
                    format!(
                        "at most {} (larger than any dimension kiln builds)",
                        crate::MAX_DIMENSION
                    ),
                ));
            }
        }
        if !self.embd.is_multiple_of(self.heads) {
            return Err(invalid(
                "embd",
                self.embd.to_string(),
                format!("divisible by heads ({})", self.heads),
            ));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(invalid(
                "dropout",
                self.dropout.to_string(),
                "in [0, 1)".into(),
            ));
        }
        if self.layers > crate::MAX_LAYERS {
            return Err(invalid(
                "layers",
                self.layers.to_string(),
                format!("at most {} layers are built", crate::MAX_LAYERS),
            ));
        }
        Ok(())
    }
}
