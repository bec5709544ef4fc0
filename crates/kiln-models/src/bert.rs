//! A BERT-family encoder, built from a Hugging Face checkpoint's tensors by their original
//! names: word + position + segment embeddings and a LayerNorm, then post-LayerNorm layers of
//! bidirectional self-attention that ignores padding and a feed-forward layer. The query, key
//! and value projections are packed into one `[C, 3C]` product, so the attention runs on the
//! same fused kernels (forward and backward, padding, dropout) as kiln's own encoder.

use std::sync::Arc;

use burn::module::{Module, Param};
use burn::nn::{
    Dropout, DropoutConfig, Embedding, EmbeddingConfig, Initializer, LayerNorm, LayerNormConfig,
    Linear, LinearConfig,
};
use burn::prelude::{Device, Int, Tensor, TensorData};

use crate::ops::{self, AttentionSpec};
use kiln_config::{Freeze, LoraConfig};
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

/// A low-rank adapter on one projection: `scale · dropout(x)·A·B`, `A` `[in, rank]`, `B`
/// `[rank, out]`.
#[derive(Module, Debug)]
pub struct LoraAdapter {
    a: Linear,
    b: Linear,
    drop: Dropout,
    #[module(skip)]
    scale: f64,
}

impl LoraAdapter {
    /// PEFT's initialisation: `A` uniform in ±1/√in (Kaiming-uniform with a = √5), `B` zero,
    /// so the adapted model starts equal to the pretrained one.
    fn new(input: usize, output: usize, cfg: &LoraConfig, device: &Device) -> Self {
        let bound = 1.0 / (input as f64).sqrt();
        Self {
            a: LinearConfig::new(input, cfg.rank)
                .with_bias(false)
                .with_initializer(Initializer::Uniform {
                    min: -bound,
                    max: bound,
                })
                .init(device),
            b: LinearConfig::new(cfg.rank, output)
                .with_bias(false)
                .with_initializer(Initializer::Zeros)
                .init(device),
            drop: DropoutConfig::new(cfg.dropout).init(),
            scale: cfg.alpha / cfg.rank as f64,
        }
    }

    fn delta(&self, x: Tensor<3>) -> Tensor<3> {
        let x = ops::dropout(&self.drop, x);
        ops::linear(&self.b, ops::linear(&self.a, x)).mul_scalar(self.scale)
    }

    /// `scale · A·B` `[in, out]`: what merging adds to the projection's weight.
    fn weight_delta(&self) -> Tensor<2> {
        self.a
            .weight
            .val()
            .matmul(self.b.weight.val())
            .mul_scalar(self.scale)
    }
}

/// The adapters of one layer, by the projection they adapt.
#[derive(Module, Debug)]
pub struct LayerAdapters {
    query: Option<LoraAdapter>,
    key: Option<LoraAdapter>,
    value: Option<LoraAdapter>,
    attn_out: Option<LoraAdapter>,
    up: Option<LoraAdapter>,
    down: Option<LoraAdapter>,
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
    lora: Option<LayerAdapters>,
}

/// `layer(x)`, plus the adapter's update where there is one.
fn adapted(layer: &Linear, adapter: Option<&LoraAdapter>, x: Tensor<3>) -> Tensor<3> {
    match adapter {
        Some(adapter) => ops::linear(layer, x.clone()) + adapter.delta(x),
        None => ops::linear(layer, x),
    }
}

/// `w + delta` for an optional delta.
fn merged(layer: Linear, delta: Option<Tensor<2>>) -> Linear {
    match delta {
        Some(delta) => Linear {
            weight: Param::from_tensor(layer.weight.val() + delta),
            bias: layer.bias,
        },
        None => layer,
    }
}

impl BertLayer {
    /// The packed query/key/value projection, with the adapters' updates in their column
    /// ranges.
    fn qkv(&self, x: Tensor<3>) -> Tensor<3> {
        let y = ops::linear(&self.qkv, x.clone());
        let Some(lora) = self
            .lora
            .as_ref()
            .filter(|l| l.query.is_some() || l.key.is_some() || l.value.is_some())
        else {
            return y;
        };
        let [b, t, c] = x.dims();
        let device = x.device();
        let parts = [&lora.query, &lora.key, &lora.value]
            .into_iter()
            .map(|adapter| match adapter {
                Some(adapter) => adapter.delta(x.clone()),
                None => Tensor::zeros([b, t, c], &device),
            })
            .collect();
        y + Tensor::cat(parts, 2)
    }

    /// The layer with each adapter's update added to its projection's weight.
    fn merge_lora(mut self) -> Self {
        let Some(lora) = self.lora.take() else {
            return self;
        };
        let delta = |a: &Option<LoraAdapter>| a.as_ref().map(LoraAdapter::weight_delta);
        if lora.query.is_some() || lora.key.is_some() || lora.value.is_some() {
            let [c, c3] = self.qkv.weight.dims();
            let device = self.qkv.weight.device();
            let parts = [&lora.query, &lora.key, &lora.value]
                .into_iter()
                .map(|a| delta(a).unwrap_or_else(|| Tensor::zeros([c, c3 / 3], &device)))
                .collect();
            self.qkv = merged(self.qkv, Some(Tensor::cat(parts, 1)));
        }
        self.attn_out = merged(self.attn_out, delta(&lora.attn_out));
        self.up = merged(self.up, delta(&lora.up));
        self.down = merged(self.down, delta(&lora.down));
        self
    }

    /// Every weight of the layer but its adapters frozen.
    fn freeze_base(self) -> Self {
        Self {
            qkv: self.qkv.no_grad(),
            attn_out: self.attn_out.no_grad(),
            attn_norm: self.attn_norm.no_grad(),
            up: self.up.no_grad(),
            down: self.down.no_grad(),
            out_norm: self.out_norm.no_grad(),
            ..self
        }
    }
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
    /// A freshly initialised encoder of `cfg`'s shape (BERT's initialisation: normal weights
    /// with standard deviation 0.02, unit LayerNorms, zero biases), its tensors allocated on
    /// first use: what a saved run's weights are loaded into. `cfg` must be valid.
    pub fn new(cfg: &BertConfig, device: &Device) -> Self {
        let (c, ff) = (cfg.hidden_size, cfg.intermediate_size);
        let init = Initializer::Normal {
            mean: 0.0,
            std: 0.02,
        };
        let linear = |i: usize, o: usize| {
            LinearConfig::new(i, o)
                .with_initializer(init.clone())
                .init(device)
        };
        let embedding = |n: usize| {
            EmbeddingConfig::new(n, c)
                .with_initializer(init.clone())
                .init(device)
        };
        let norm = || {
            LayerNormConfig::new(c)
                .with_epsilon(cfg.layer_norm_eps)
                .init(device)
        };
        Self {
            word: embedding(cfg.vocab_size),
            position: embedding(cfg.max_position_embeddings),
            segment: embedding(cfg.type_vocab_size),
            embed_norm: norm(),
            embed_drop: DropoutConfig::new(cfg.hidden_dropout_prob).init(),
            layers: (0..cfg.num_hidden_layers)
                .map(|_| BertLayer {
                    qkv: linear(c, 3 * c),
                    attn_out: linear(c, c),
                    attn_norm: norm(),
                    up: linear(c, ff),
                    down: linear(ff, c),
                    out_norm: norm(),
                    attn_drop: DropoutConfig::new(cfg.attention_probs_dropout_prob).init(),
                    drop: DropoutConfig::new(cfg.hidden_dropout_prob).init(),
                    lora: None,
                })
                .collect(),
            heads: cfg.num_attention_heads,
            epsilon: cfg.layer_norm_eps,
            activation: BertActivation::of(&cfg.hidden_act),
        }
    }

    /// This encoder with fresh adapters on `cfg.targets` ([`kiln_config::LORA_TARGETS`]
    /// names; others are ignored: the config is validated before) in every layer.
    pub fn with_lora(mut self, cfg: &LoraConfig, device: &Device) -> Self {
        let c = self.width();
        for layer in &mut self.layers {
            let ff = layer.up.weight.dims()[1];
            let on = |name: &str| cfg.targets.iter().any(|t| t == name);
            let adapter = |name: &str, i: usize, o: usize| {
                on(name).then(|| LoraAdapter::new(i, o, cfg, device))
            };
            layer.lora = Some(LayerAdapters {
                query: adapter("query", c, c),
                key: adapter("key", c, c),
                value: adapter("value", c, c),
                attn_out: adapter("attention.output.dense", c, c),
                up: adapter("intermediate.dense", c, ff),
                down: adapter("output.dense", ff, c),
            });
        }
        self
    }

    /// This encoder with what `freeze` names frozen (no gradient, never updated); with
    /// `lora`, every weight but the adapters.
    pub fn frozen(mut self, freeze: Freeze, lora: bool) -> Self {
        let layers = if lora {
            self.layers.len()
        } else {
            match freeze {
                Freeze::None => return self,
                Freeze::Encoder => self.layers.len(),
                Freeze::Layers(k) => k.min(self.layers.len()),
            }
        };
        self.word = self.word.no_grad();
        self.position = self.position.no_grad();
        self.segment = self.segment.no_grad();
        self.embed_norm = self.embed_norm.no_grad();
        self.layers = self
            .layers
            .into_iter()
            .enumerate()
            .map(|(i, layer)| {
                if i < layers {
                    layer.freeze_base()
                } else {
                    layer
                }
            })
            .collect();
        self
    }

    /// The encoder with every adapter merged into its projection (`W + scale · A·B`): the
    /// same function, one product per projection, no adapters left.
    pub fn merge_lora(mut self) -> Self {
        self.layers = self.layers.into_iter().map(BertLayer::merge_lora).collect();
        self
    }

    /// Encoder layers.
    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

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
                lora: None,
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
            let lora = layer.lora.as_ref();
            let qkv = layer.qkv(x.clone());
            let spec = AttentionSpec {
                heads: self.heads,
                causal: false,
                key_padding: Some(padding.clone()),
                dropout: ops::dropout_mask(&layer.attn_drop, &device),
            };
            let a = adapted(
                &layer.attn_out,
                lora.and_then(|l| l.attn_out.as_ref()),
                ops::attention(qkv, spec),
            );
            let a = ops::dropout(&layer.drop, a);
            x = ops::layer_norm_with_epsilon(&layer.attn_norm, x + a, self.epsilon);
            let h = adapted(&layer.up, lora.and_then(|l| l.up.as_ref()), x.clone());
            let h = self.activation.apply(h);
            let h = adapted(&layer.down, lora.and_then(|l| l.down.as_ref()), h);
            let h = ops::dropout(&layer.drop, h);
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
