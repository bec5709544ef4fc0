use crate::SpecError;
use crate::model::{check_dropout, check_size};
use kiln_config::{Freeze, LORA_TARGETS, LoraConfig, Pooling};
use serde::{Deserialize, Serialize};

/// The activations a BERT feed-forward layer may use (`hidden_act` in `config.json`).
pub const BERT_ACTIVATIONS: [&str; 4] = ["gelu", "gelu_new", "gelu_pytorch_tanh", "relu"];

/// The architectures kiln loads from a Hugging Face folder (`model_type` in `config.json`).
pub const PRETRAINED_MODEL_TYPES: [&str; 2] = ["bert", "gpt2"];

/// Checks a `config.json` `model_type` is one kiln builds; the error lists those it does.
pub fn check_model_type(model_type: &str) -> Result<(), SpecError> {
    if PRETRAINED_MODEL_TYPES.contains(&model_type) {
        return Ok(());
    }
    Err(SpecError::Invalid {
        field: "model_type".into(),
        value: format!("\"{model_type}\""),
        expected: format!("one of the architectures kiln loads: {PRETRAINED_MODEL_TYPES:?}"),
    })
}

/// A BERT-family encoder's shape, as a Hugging Face `config.json` states it (the same field
/// names, so the file deserialises into it directly).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BertConfig {
    /// `"bert"` (the only model type kiln builds from a pretrained folder today).
    pub model_type: String,
    /// Token vocabulary (rows of the word embedding).
    pub vocab_size: usize,
    /// Width of every hidden state.
    pub hidden_size: usize,
    /// Encoder layers.
    pub num_hidden_layers: usize,
    /// Attention heads per layer.
    pub num_attention_heads: usize,
    /// Width of the feed-forward layer.
    pub intermediate_size: usize,
    /// Positions the model has embeddings for.
    pub max_position_embeddings: usize,
    /// Segment (token type) embeddings.
    #[serde(default = "two")]
    pub type_vocab_size: usize,
    /// LayerNorm epsilon.
    #[serde(default = "bert_eps")]
    pub layer_norm_eps: f64,
    /// Feed-forward activation, one of [`BERT_ACTIVATIONS`].
    #[serde(default = "gelu")]
    pub hidden_act: String,
    /// Dropout on embeddings and residual branches while fine-tuning.
    #[serde(default = "bert_dropout")]
    pub hidden_dropout_prob: f64,
    /// Dropout on attention probabilities while fine-tuning.
    #[serde(default = "bert_dropout")]
    pub attention_probs_dropout_prob: f64,
    /// Only `"absolute"` (learned positions) is supported.
    #[serde(default = "absolute")]
    pub position_embedding_type: String,
    /// The padding token's id.
    #[serde(default)]
    pub pad_token_id: usize,
}

fn two() -> usize {
    2
}
fn bert_eps() -> f64 {
    1e-12
}
fn gelu() -> String {
    "gelu".into()
}
fn bert_dropout() -> f64 {
    0.1
}
fn absolute() -> String {
    "absolute".into()
}

impl BertConfig {
    /// Width of one attention head.
    pub fn head_size(&self) -> usize {
        self.hidden_size / self.num_attention_heads.max(1)
    }

    /// Checks the shape is one kiln builds; the error names the `config.json` field, its
    /// value and what it must be (for an unknown architecture, the ones kiln supports).
    pub fn validate(&self) -> Result<(), SpecError> {
        let invalid = |field: &str, value: String, expected: String| SpecError::Invalid {
            field: field.to_string(),
            value,
            expected,
        };
        check_model_type(&self.model_type)?;
        if self.model_type != "bert" {
            return Err(invalid(
                "model_type",
                format!("\"{}\"", self.model_type),
                "\"bert\" for a BERT config".into(),
            ));
        }
        for (field, v) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("intermediate_size", self.intermediate_size),
            ("max_position_embeddings", self.max_position_embeddings),
            ("type_vocab_size", self.type_vocab_size),
        ] {
            check_size(field, v, 1)?;
        }
        if self.num_hidden_layers > crate::MAX_LAYERS {
            return Err(invalid(
                "num_hidden_layers",
                self.num_hidden_layers.to_string(),
                format!("at most {}", crate::MAX_LAYERS),
            ));
        }
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return Err(invalid(
                "hidden_size",
                self.hidden_size.to_string(),
                format!(
                    "divisible by num_attention_heads ({})",
                    self.num_attention_heads
                ),
            ));
        }
        if !BERT_ACTIVATIONS.contains(&self.hidden_act.as_str()) {
            return Err(invalid(
                "hidden_act",
                format!("\"{}\"", self.hidden_act),
                format!("one of {BERT_ACTIVATIONS:?}"),
            ));
        }
        if self.position_embedding_type != "absolute" {
            return Err(invalid(
                "position_embedding_type",
                format!("\"{}\"", self.position_embedding_type),
                "\"absolute\"".into(),
            ));
        }
        if !(self.layer_norm_eps > 0.0 && self.layer_norm_eps < 1.0) {
            return Err(invalid(
                "layer_norm_eps",
                self.layer_norm_eps.to_string(),
                "in (0, 1)".into(),
            ));
        }
        check_dropout("hidden_dropout_prob", self.hidden_dropout_prob)?;
        check_dropout(
            "attention_probs_dropout_prob",
            self.attention_probs_dropout_prob,
        )?;
        if self.pad_token_id >= self.vocab_size {
            return Err(invalid(
                "pad_token_id",
                self.pad_token_id.to_string(),
                format!("below vocab_size ({})", self.vocab_size),
            ));
        }
        Ok(())
    }
}

/// A pretrained encoder inside a network (part of [`ModelSpec`](crate::ModelSpec)): its
/// shape, how its states are pooled, what of it trains.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PretrainedEncoderSpec {
    /// The checkpoint's `config.json`.
    pub bert: BertConfig,
    /// The folder it was loaded from (for reports; a run never reads it again).
    pub source: String,
    /// How token states become one vector.
    pub pooling: Pooling,
    /// What is frozen.
    pub freeze: Freeze,
    /// Low-rank adapters, when the encoder trains through them.
    #[serde(default)]
    pub lora: Option<LoraConfig>,
}

impl PretrainedEncoderSpec {
    /// Width of the pooled output.
    pub fn output_width(&self) -> usize {
        match self.pooling {
            Pooling::MeanMax => 2 * self.bert.hidden_size,
            _ => self.bert.hidden_size,
        }
    }

    /// Checks the encoder's shape, the frozen layers and the adapters.
    pub fn validate(&self) -> Result<(), SpecError> {
        self.bert.validate()?;
        crate::model::check_freeze(self.freeze, self.bert.num_hidden_layers)?;
        if let Some(lora) = &self.lora {
            check_size("lora.rank", lora.rank, 1)?;
            if lora.rank > self.bert.hidden_size {
                return Err(SpecError::Invalid {
                    field: "lora.rank".into(),
                    value: lora.rank.to_string(),
                    expected: format!("at most the hidden size ({})", self.bert.hidden_size),
                });
            }
            check_dropout("lora.dropout", lora.dropout)?;
            for target in &lora.targets {
                if !LORA_TARGETS.contains(&target.as_str()) {
                    return Err(SpecError::Invalid {
                        field: "lora.targets".into(),
                        value: format!("\"{target}\""),
                        expected: format!("a module of a BERT layer, one of {LORA_TARGETS:?}"),
                    });
                }
            }
        }
        Ok(())
    }
}

/// A GPT-2 `config.json` (what `kiln export --format safetensors` writes for a kiln GPT):
/// the fields kiln reads to use the model as a text encoder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Gpt2Config {
    /// `"gpt2"`.
    pub model_type: String,
    /// Token vocabulary (rows of `transformer.wte`).
    pub vocab_size: usize,
    /// Positions (rows of `transformer.wpe`).
    pub n_positions: usize,
    /// Width.
    pub n_embd: usize,
    /// Blocks.
    pub n_layer: usize,
    /// Attention heads.
    pub n_head: usize,
    /// Width of the MLP (4 × `n_embd` when absent).
    #[serde(default)]
    pub n_inner: Option<usize>,
    /// MLP activation.
    #[serde(default = "gelu")]
    pub activation_function: String,
    /// LayerNorm epsilon.
    #[serde(default = "gpt2_eps")]
    pub layer_norm_epsilon: f64,
}

fn gpt2_eps() -> f64 {
    1e-5
}

impl Gpt2Config {
    /// Checks the shape is one kiln's text encoder reproduces: exact GELU, a 4× MLP and
    /// LayerNorm epsilon 1e-5 (the GPTs kiln trains and exports).
    pub fn validate(&self) -> Result<(), SpecError> {
        let invalid = |field: &str, value: String, expected: &str| SpecError::Invalid {
            field: field.to_string(),
            value,
            expected: expected.to_string(),
        };
        if self.model_type != "gpt2" {
            return Err(invalid(
                "model_type",
                format!("\"{}\"", self.model_type),
                "\"gpt2\"",
            ));
        }
        for (field, v) in [
            ("vocab_size", self.vocab_size),
            ("n_positions", self.n_positions),
            ("n_embd", self.n_embd),
            ("n_head", self.n_head),
        ] {
            check_size(field, v, 1)?;
        }
        if self.n_layer > crate::MAX_LAYERS {
            return Err(invalid("n_layer", self.n_layer.to_string(), "at most 1024"));
        }
        if !self.n_embd.is_multiple_of(self.n_head) {
            return Err(invalid(
                "n_embd",
                self.n_embd.to_string(),
                "divisible by n_head",
            ));
        }
        if self.n_inner.is_some_and(|n| n != 4 * self.n_embd) {
            return Err(invalid(
                "n_inner",
                format!("{:?}", self.n_inner),
                "4 × n_embd (kiln's GPT blocks)",
            ));
        }
        if self.activation_function != "gelu" {
            return Err(invalid(
                "activation_function",
                format!("\"{}\"", self.activation_function),
                "\"gelu\" (exact GELU, as kiln's GPTs use)",
            ));
        }
        if (self.layer_norm_epsilon - 1e-5).abs() > 1e-12 {
            return Err(invalid(
                "layer_norm_epsilon",
                self.layer_norm_epsilon.to_string(),
                "1e-5 (kiln's LayerNorm)",
            ));
        }
        Ok(())
    }
}
