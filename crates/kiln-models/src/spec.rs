use kiln_config::{Activation, ConvLayer, ModelConfig, ModelKind};
use kiln_data::InputShape;
use serde::{Deserialize, Serialize};

use crate::encoder::TextEncoderSpec;

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
            }),
        };
        if spec.kind == ModelKind::Cnn {
            if !matches!(input, InputShape::Image { .. }) {
                return Err(SpecError::CnnNeedsImages);
            }
            spec.conv_output()?;
        }
        Ok(spec)
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
    }
}
