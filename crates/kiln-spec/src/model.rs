use kiln_config::{Activation, ConvLayer, ModelConfig, ModelKind};
use serde::{Deserialize, Serialize};

use crate::{InputShape, PretrainedEncoderSpec, TextEncoderSpec};

/// Everything needed to rebuild a network: the model config plus what the data decided.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelSpec {
    /// Model family.
    pub kind: ModelKind,
    /// Dense input shape.
    pub input: InputShape,
    /// `(table size, width)` of each categorical embedding.
    pub embeddings: Vec<(usize, usize)>,
    /// Output width: classes, or 1 for regression.
    pub outputs: usize,
    /// Hidden widths of the fully connected head.
    pub hidden: Vec<usize>,
    /// Activation.
    pub activation: Activation,
    /// Dropout after hidden layers.
    pub dropout: f64,
    /// Batch norm after hidden linear layers.
    pub batch_norm: bool,
    /// Conv blocks (CNN).
    pub conv: Vec<ConvLayer>,
    /// Text encoder (transformer), whose pooled output joins the head's input.
    #[serde(default)]
    pub text: Option<TextEncoderSpec>,
    /// A pretrained text encoder (in place of `text`), whose pooled output joins the head's
    /// input.
    #[serde(default)]
    pub pretrained: Option<PretrainedEncoderSpec>,
}

/// A model config that does not fit the data.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SpecError {
    /// A CNN needs image input.
    #[error(
        "model.type = \"cnn\" needs an image feature (e.g. an IDX source); this data is tabular"
    )]
    CnnNeedsImages,
    /// A transformer needs a text feature.
    #[error("model.type = \"transformer\" needs a text feature (a column with type = \"text\")")]
    TransformerNeedsText,
    /// A text feature needs a transformer.
    #[error("a text feature needs model.type = \"transformer\"")]
    TextNeedsTransformer,
    /// The conv stack shrinks the image to nothing.
    #[error(
        "model.conv[{layer}]: the feature map is {height}x{width} before this layer, too small for kernel {kernel} (pool {pool})"
    )]
    ConvTooSmall {
        /// Layer index.
        layer: usize,
        /// Height before the layer.
        height: usize,
        /// Width before the layer.
        width: usize,
        /// Kernel.
        kernel: usize,
        /// Pool.
        pool: usize,
    },
    /// A `model.json` value no network can be built from (zero or absurd sizes, heads that
    /// do not divide the width, a dropout outside [0, 1)): what a damaged or hand-edited file
    /// holds.
    #[error("{field} is {value}: {expected}")]
    Invalid {
        /// The field, e.g. `hidden[1]` or `text.heads`.
        field: String,
        /// Its value.
        value: String,
        /// What it must be.
        expected: String,
    },
}

/// Largest single dimension [`ModelSpec::validate`] accepts (16 M): far above any real
/// layer, low enough that no dimension alone can exhaust memory before the parameter count
/// is checked.
pub const MAX_DIMENSION: usize = 1 << 24;

/// Most layers (hidden layers, conv blocks, transformer blocks) [`ModelSpec::validate`] and
/// [`GptConfig::validate`](crate::GptConfig::validate) accept, so that building the
/// (lazily initialised) network from a damaged file stays cheap and its parameter count
/// cannot overflow.
pub const MAX_LAYERS: usize = 1024;

/// `model.freeze` against an encoder of `layers` layers: K frozen layers must exist.
pub(crate) fn check_freeze(freeze: kiln_config::Freeze, layers: usize) -> Result<(), SpecError> {
    match freeze {
        kiln_config::Freeze::Layers(k) if k > layers => Err(SpecError::Invalid {
            field: "model.freeze".into(),
            value: k.to_string(),
            expected: format!(
                "at most the encoder's {layers} layers (\"encoder\" freezes all of it)"
            ),
        }),
        _ => Ok(()),
    }
}

pub(crate) fn check_size(
    field: impl Into<String>,
    value: usize,
    min: usize,
) -> Result<(), SpecError> {
    if (min..=MAX_DIMENSION).contains(&value) {
        Ok(())
    } else {
        Err(SpecError::Invalid {
            field: field.into(),
            value: value.to_string(),
            expected: format!("expected {min} to {MAX_DIMENSION}"),
        })
    }
}

pub(crate) fn check_dropout(field: impl Into<String>, p: f64) -> Result<(), SpecError> {
    if (0.0..1.0).contains(&p) {
        Ok(())
    } else {
        Err(SpecError::Invalid {
            field: field.into(),
            value: p.to_string(),
            expected: "expected a probability in [0, 1)".into(),
        })
    }
}

impl ModelSpec {
    /// Combines the model config with the data's input shape, embeddings, text input
    /// (`(token table size, longest sequence)`) and outputs.
    pub fn from_config(
        config: &ModelConfig,
        input: InputShape,
        embeddings: Vec<(usize, usize)>,
        text: Option<(usize, usize)>,
        outputs: usize,
    ) -> Result<Self, SpecError> {
        match (config.kind, text) {
            (ModelKind::Transformer, None) => return Err(SpecError::TransformerNeedsText),
            (kind, Some(_)) if kind != ModelKind::Transformer => {
                return Err(SpecError::TextNeedsTransformer);
            }
            _ => {}
        }
        let spec = Self {
            kind: config.kind,
            input,
            embeddings,
            outputs,
            hidden: if config.kind == ModelKind::Linear {
                Vec::new()
            } else {
                config.hidden.clone()
            },
            activation: config.activation,
            dropout: config.dropout,
            batch_norm: config.batch_norm,
            conv: if config.kind == ModelKind::Cnn {
                config.conv.clone()
            } else {
                Vec::new()
            },
            text: text.map(|(vocab_size, max_tokens)| TextEncoderSpec {
                vocab_size,
                max_tokens,
                layers: config.layers,
                heads: config.heads,
                embd: config.embd,
                dropout: config.dropout,
                bias: config.bias,
                pooling: config.pooling,
                causal: config.causal.unwrap_or(false),
                freeze: Default::default(),
            }),
            pretrained: None,
        };
        if spec.kind == ModelKind::Cnn {
            if !matches!(input, InputShape::Image { .. }) {
                return Err(SpecError::CnnNeedsImages);
            }
            spec.conv_output()?;
        }
        Ok(spec)
    }

    /// Checks that a network can be built from this spec, as read from a `model.json`: every
    /// size between 1 (0 where a part may be empty) and [`MAX_DIMENSION`], heads that divide
    /// the text width, dropouts in [0, 1), a conv stack that fits its image and a head with
    /// an input. Nothing is allocated.
    pub fn validate(&self) -> Result<(), SpecError> {
        match self.input {
            InputShape::Flat { width } => check_size("input.width", width, 0)?,
            InputShape::Image {
                channels,
                height,
                width,
            } => {
                check_size("input.channels", channels, 1)?;
                check_size("input.height", height, 1)?;
                check_size("input.width", width, 1)?;
                let size = channels
                    .checked_mul(height)
                    .and_then(|s| s.checked_mul(width))
                    .unwrap_or(usize::MAX);
                check_size("input.size", size, 1)?;
            }
        }
        let kind_mismatch = |field: &str, expected: &str| SpecError::Invalid {
            field: field.into(),
            value: format!("{:?}", self.kind),
            expected: expected.into(),
        };
        if (self.kind == ModelKind::Cnn) == self.conv.is_empty() {
            return Err(kind_mismatch(
                "kind",
                "conv layers if and only if the kind is cnn",
            ));
        }
        if (self.kind == ModelKind::Transformer)
            != (self.text.is_some() || self.pretrained.is_some())
            || (self.text.is_some() && self.pretrained.is_some())
        {
            return Err(kind_mismatch(
                "kind",
                "one text encoder (trained from scratch or pretrained) if and only if the kind is transformer",
            ));
        }
        if let Some(p) = &self.pretrained {
            p.validate()?;
        }
        if self.kind == ModelKind::Gpt {
            return Err(kind_mismatch("kind", "a network, not a language model"));
        }
        check_size("outputs", self.outputs, 1)?;
        let too_deep = |field: &str, n: usize| SpecError::Invalid {
            field: field.into(),
            value: n.to_string(),
            expected: format!("expected at most {MAX_LAYERS} layers"),
        };
        if self.hidden.len() > MAX_LAYERS {
            return Err(too_deep("hidden", self.hidden.len()));
        }
        if self.conv.len() > MAX_LAYERS {
            return Err(too_deep("conv", self.conv.len()));
        }
        if let Some(t) = self.text.as_ref().filter(|t| t.layers > MAX_LAYERS) {
            return Err(too_deep("text.layers", t.layers));
        }
        for (i, &h) in self.hidden.iter().enumerate() {
            check_size(format!("hidden[{i}]"), h, 1)?;
        }
        check_dropout("dropout", self.dropout)?;
        for (i, &(n, d)) in self.embeddings.iter().enumerate() {
            check_size(format!("embeddings[{i}] table size"), n, 1)?;
            check_size(format!("embeddings[{i}] width"), d, 1)?;
        }
        for (i, c) in self.conv.iter().enumerate() {
            check_size(format!("conv[{i}].filters"), c.filters, 1)?;
            check_size(format!("conv[{i}].kernel"), c.kernel, 1)?;
            check_size(format!("conv[{i}].stride"), c.stride, 1)?;
            check_size(format!("conv[{i}].padding"), c.padding, 0)?;
            check_size(format!("conv[{i}].pool"), c.pool, 0)?;
            check_dropout(format!("conv[{i}].dropout"), c.dropout)?;
        }
        if !self.conv.is_empty() {
            if !matches!(self.input, InputShape::Image { .. }) {
                return Err(SpecError::CnnNeedsImages);
            }
            let (c, h, w) = self.conv_output()?;
            check_size("conv output size", c * h * w, 1)?;
        }
        if let Some(t) = &self.text {
            check_size("text.vocab_size", t.vocab_size, 1)?;
            check_size("text.max_tokens", t.max_tokens, 1)?;
            check_size("text.layers", t.layers, 0)?;
            check_size("text.heads", t.heads, 1)?;
            check_size("text.embd", t.embd, 1)?;
            check_dropout("text.dropout", t.dropout)?;
            if !t.embd.is_multiple_of(t.heads) {
                return Err(SpecError::Invalid {
                    field: "text.embd".into(),
                    value: t.embd.to_string(),
                    expected: format!("expected a multiple of text.heads ({})", t.heads),
                });
            }
            check_freeze(t.freeze, t.layers)?;
        }
        check_size("head input width", self.head_input(), 1)?;
        Ok(())
    }

    /// `(channels, height, width)` after the conv stack, or the input's for no convs.
    pub fn conv_output(&self) -> Result<(usize, usize, usize), SpecError> {
        let (mut c, mut h, mut w) = match self.input {
            InputShape::Image {
                channels,
                height,
                width,
            } => (channels, height, width),
            InputShape::Flat { width } => (1, 1, width),
        };
        for (layer, conv) in self.conv.iter().enumerate() {
            let too_small = SpecError::ConvTooSmall {
                layer,
                height: h,
                width: w,
                kernel: conv.kernel,
                pool: conv.pool,
            };
            let (ph, pw) = (h + 2 * conv.padding, w + 2 * conv.padding);
            if ph < conv.kernel || pw < conv.kernel {
                return Err(too_small);
            }
            h = (ph - conv.kernel) / conv.stride + 1;
            w = (pw - conv.kernel) / conv.stride + 1;
            if conv.pool > 1 {
                if h < conv.pool || w < conv.pool {
                    return Err(too_small);
                }
                h /= conv.pool;
                w /= conv.pool;
            }
            c = conv.filters;
        }
        Ok((c, h, w))
    }

    /// Width of the fully connected head's input.
    pub fn head_input(&self) -> usize {
        let dense = if self.conv.is_empty() {
            self.input.size()
        } else {
            let (c, h, w) = self.conv_output().expect("validated in from_config");
            c * h * w
        };
        dense
            + self.embeddings.iter().map(|(_, d)| d).sum::<usize>()
            + self
                .text
                .as_ref()
                .map(TextEncoderSpec::output_width)
                .unwrap_or(0)
            + self
                .pretrained
                .as_ref()
                .map(PretrainedEncoderSpec::output_width)
                .unwrap_or(0)
    }

    /// This spec with `encoder` in place of the from-scratch text encoder.
    pub fn with_pretrained(mut self, encoder: PretrainedEncoderSpec) -> Self {
        self.text = None;
        self.pretrained = Some(encoder);
        self
    }
}
