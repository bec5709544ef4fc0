//! A BERT-family encoder, built from a Hugging Face checkpoint's tensors by their original
//! names: word + position + segment embeddings and a LayerNorm, then post-LayerNorm layers of
//! bidirectional self-attention that ignores padding and a feed-forward layer. The query, key
//! and value projections are packed into one `[C, 3C]` product, so the attention runs on the
//! same fused kernels (forward and backward, padding, dropout) as kiln's own encoder.

use std::sync::Arc;

use burn::module::{Module, Param};
use burn::nn::{Dropout, DropoutConfig, Embedding, LayerNorm, LayerNormConfig, Linear};
use burn::prelude::{Device, Int, Tensor, TensorData};

use crate::ops::{self, AttentionSpec};
use kiln_spec::BertConfig;

/// The feed-forward activation of a [`Bert`] (`hidden_act`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BertActivation {
    /// Exact (erf) GELU: `"gelu"`.
    #[default]
    Gelu,
    /// GELU's tanh approximation: `"gelu_new"`, `"gelu_pytorch_tanh"`.
    GeluTanh,
    /// `"relu"`.
    Relu,
}

impl BertActivation {
    fn of(name: &str) -> Self {
        match name {
            "gelu_new" | "gelu_pytorch_tanh" => Self::GeluTanh,
            "relu" => Self::Relu,
            _ => Self::Gelu,
        }
    }

    fn apply(self, x: Tensor<3>) -> Tensor<3> {
        match self {
            Self::Gelu => ops::gelu(x),
            Self::Relu => burn::tensor::activation::relu(x),
            Self::GeluTanh => {
                // 0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3)))
                let inner = (x.clone() + x.clone().powi_scalar(3).mul_scalar(0.044715))
                    .mul_scalar((2.0 / std::f64::consts::PI).sqrt());
                x.clone().mul_scalar(0.5) * (inner.tanh() + 1.0)
            }
        }
    }
}

/// One encoder layer: `x = LN(x + attn(x))`, then `x = LN(x + ff(x))`.
#[derive(Module, Debug)]
pub struct BertLayer {
    qkv: Linear,
    attn_out: Linear,
    attn_norm: LayerNorm,
    up: Linear,
    down: Linear,
    out_norm: LayerNorm,
    attn_drop: Dropout,
    drop: Dropout,
}

/// A BERT encoder: `[B, T]` token ids and their padding mask in, `[B, T, C]` hidden states out.
#[derive(Module, Debug)]
pub struct Bert {
    word: Embedding,
    position: Embedding,
    segment: Embedding,
    embed_norm: LayerNorm,
    embed_drop: Dropout,
    layers: Vec<BertLayer>,
    #[module(skip)]
    heads: usize,
    #[module(skip)]
    epsilon: f64,
    #[module(skip)]
    activation: BertActivation,
}

/// Builds modules from named checkpoint tensors.
struct Loader<'a, F> {
    tensor: &'a mut F,
    device: &'a Device,
    epsilon: f64,
}

impl<F, E> Loader<'_, F>
where
    F: FnMut(&str, &[usize]) -> Result<Vec<f32>, E>,
{
    fn param<const D: usize>(
        &mut self,
        name: &str,
        shape: [usize; D],
    ) -> Result<Param<Tensor<D>>, E> {
        let values = (self.tensor)(name, &shape)?;
        Ok(Param::from_tensor(Tensor::from_data(
            TensorData::new(values, shape),
            self.device,
        )))
    }

    fn embedding(&mut self, name: &str, rows: usize, width: usize) -> Result<Embedding, E> {
        Ok(Embedding {
            weight: self.param(name, [rows, width])?,
        })
    }

    fn layer_norm(&mut self, prefix: &str, width: usize) -> Result<LayerNorm, E> {
        let mut ln = LayerNormConfig::new(width)
            .with_epsilon(self.epsilon)
            .init(self.device);
        ln.gamma = self.param(&format!("{prefix}.weight"), [width])?;
        ln.beta = Some(self.param(&format!("{prefix}.bias"), [width])?);
        Ok(ln)
    }

    /// One linear layer from the PyTorch projections `names` (`[output, input]` weights and
    /// `[output]` biases), transposed to Burn's `[input, outputs]` and placed side by side.
    fn linear(&mut self, names: &[&str], input: usize, output: usize) -> Result<Linear, E> {
        let width = output * names.len();
        let mut w = vec![0.0f32; input * width];
        let mut b = Vec::with_capacity(width);
        for (part, name) in names.iter().enumerate() {
            let pt = (self.tensor)(&format!("{name}.weight"), &[output, input])?;
            for (o, row) in pt.chunks_exact(input).enumerate() {
                for (j, &v) in row.iter().enumerate() {
                    w[j * width + part * output + o] = v;
                }
            }
            b.extend((self.tensor)(&format!("{name}.bias"), &[output])?);
        }
        Ok(Linear {
            weight: Param::from_tensor(Tensor::from_data(
                TensorData::new(w, [input, width]),
                self.device,
            )),
            bias: Some(Param::from_tensor(Tensor::from_data(
                TensorData::new(b, [width]),
                self.device,
            ))),
        })
    }
}

/// The Hugging Face names of one layer's tensors: `encoder.layer.{i}.{suffix}`.
fn layer_name(i: usize, suffix: &str) -> String {
    format!("encoder.layer.{i}.{suffix}")
}

impl Bert {
    /// An encoder of `cfg`'s shape with every tensor from `tensor(name, shape)`: the values of
    /// the checkpoint tensor `name` (Hugging Face's names, PyTorch's `[out, in]` layout for
    /// linear weights), which must have `shape`; the first error it returns is returned.
    /// `cfg` must be valid ([`BertConfig::validate`]).
    pub fn from_tensors<E>(
        cfg: &BertConfig,
        device: &Device,
        mut tensor: impl FnMut(&str, &[usize]) -> Result<Vec<f32>, E>,
    ) -> Result<Self, E> {
        let (c, ff) = (cfg.hidden_size, cfg.intermediate_size);
        let mut load = Loader {
            tensor: &mut tensor,
            device,
            epsilon: cfg.layer_norm_eps,
        };
        let word = load.embedding("embeddings.word_embeddings.weight", cfg.vocab_size, c)?;
        let position = load.embedding(
            "embeddings.position_embeddings.weight",
            cfg.max_position_embeddings,
            c,
        )?;
        let segment = load.embedding(
            "embeddings.token_type_embeddings.weight",
            cfg.type_vocab_size,
            c,
        )?;
        let embed_norm = load.layer_norm("embeddings.LayerNorm", c)?;
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let name = |suffix: &str| layer_name(i, suffix);
            layers.push(BertLayer {
                qkv: load.linear(
                    &[
                        &name("attention.self.query"),
                        &name("attention.self.key"),
                        &name("attention.self.value"),
                    ],
                    c,
                    c,
                )?,
                attn_out: load.linear(&[&name("attention.output.dense")], c, c)?,
                attn_norm: load.layer_norm(&name("attention.output.LayerNorm"), c)?,
                up: load.linear(&[&name("intermediate.dense")], c, ff)?,
                down: load.linear(&[&name("output.dense")], ff, c)?,
                out_norm: load.layer_norm(&name("output.LayerNorm"), c)?,
                attn_drop: DropoutConfig::new(cfg.attention_probs_dropout_prob).init(),
                drop: DropoutConfig::new(cfg.hidden_dropout_prob).init(),
            });
        }
        Ok(Self {
            word,
            position,
            segment,
            embed_norm,
            embed_drop: DropoutConfig::new(cfg.hidden_dropout_prob).init(),
            layers,
            heads: cfg.num_attention_heads,
            epsilon: cfg.layer_norm_eps,
            activation: BertActivation::of(&cfg.hidden_act),
        })
    }

    /// Width of the hidden states.
    pub fn width(&self) -> usize {
        self.word.weight.dims()[1]
    }

    /// Rows of the word embedding.
    pub fn vocab_size(&self) -> usize {
        self.word.weight.dims()[0]
    }

    /// The longest sequence the position embeddings cover.
    pub fn max_positions(&self) -> usize {
        self.position.weight.dims()[0]
    }

    /// The hidden states `[B, T, C]` of token ids `[B, T]` (all of segment 0), `padding`
    /// `[B * T]` row-major and true at padding: padded keys are ignored; padded positions get
    /// hidden states too, which pooling must skip.
    pub fn forward(&self, ids: Tensor<2, Int>, padding: Arc<[bool]>) -> Tensor<3> {
        let [b, t] = ids.dims();
        assert!(
            t <= self.max_positions(),
            "BERT: {t} tokens exceed the {} position embeddings",
            self.max_positions()
        );
        assert_eq!(padding.len(), b * t, "BERT: padding mask length");
        let c = self.width();
        let device = ids.device();
        let pos = Tensor::<1, Int>::arange(0..t as i64, &device).reshape([1, t]);
        let segment = self.segment.weight.val().narrow(0, 0, 1).reshape([1, 1, c]);
        let x = self.word.forward(ids) + self.position.forward(pos).expand([b, t, c]) + segment;
        let x = ops::layer_norm_with_epsilon(&self.embed_norm, x, self.epsilon);
        let mut x = ops::dropout(&self.embed_drop, x);
        for layer in &self.layers {
            let qkv = ops::linear(&layer.qkv, x.clone());
            let spec = AttentionSpec {
                heads: self.heads,
                causal: false,
                key_padding: Some(padding.clone()),
                dropout: ops::dropout_mask(&layer.attn_drop, &device),
            };
            let a = ops::linear(&layer.attn_out, ops::attention(qkv, spec));
            let a = ops::dropout(&layer.drop, a);
            x = ops::layer_norm_with_epsilon(&layer.attn_norm, x + a, self.epsilon);
            let h = self.activation.apply(ops::linear(&layer.up, x.clone()));
            let h = ops::dropout(&layer.drop, ops::linear(&layer.down, h));
            x = ops::layer_norm_with_epsilon(&layer.out_norm, x + h, self.epsilon);
        }
        x
    }
}

/// The mean of `hidden` `[B, T, C]` over each row's real (non-padding) positions, `[B, C]`;
/// a row of padding only pools to zeros.
pub fn mean_pool(hidden: Tensor<3>, padding: &[bool]) -> Tensor<2> {
    let [b, t, c] = hidden.dims();
    assert_eq!(padding.len(), b * t, "mean pooling: padding mask length");
    let keep: Vec<f32> = padding.iter().map(|&p| if p { 0.0 } else { 1.0 }).collect();
    let keep = Tensor::<3>::from_data(TensorData::new(keep, [b, t, 1]), &hidden.device());
    let count = keep.clone().sum_dim(1).clamp_min(1e-9); // [B, 1, 1]
    (hidden * keep).sum_dim(1).div(count).reshape([b, c])
}

/// Each row of `x` `[B, C]` divided by its L2 norm (at least 1e-12), as sentence-transformers'
/// `Normalize` does.
pub fn l2_normalize(x: Tensor<2>) -> Tensor<2> {
    let norm = x.clone().powi_scalar(2).sum_dim(1).sqrt().clamp_min(1e-12);
    x / norm
}
