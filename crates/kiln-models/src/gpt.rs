//! A nanoGPT-style decoder: token + learned position embeddings, pre-LayerNorm blocks of
//! causal self-attention and a GELU MLP, a final LayerNorm and a (optionally tied) head.
//! [`Gpt::forward_cached`] decodes with a key/value cache.

use burn::module::Module;
use burn::nn::{Dropout, Embedding, EmbeddingConfig, LayerNorm, Linear, LinearConfig};
use burn::prelude::{Device, Int, Tensor};

use std::sync::Arc;

use crate::ops::{HeadLayout, cross_entropy_head};
use crate::transformer::{AttentionMask, Block, BlockShape, gpt2_init};
use kiln_spec::GptConfig;

/// The decoder.
#[derive(Module, Debug)]
pub struct Gpt {
    wte: Embedding,
    wpe: Embedding,
    drop: Dropout,
    blocks: Vec<Block>,
    ln_f: LayerNorm,
    head: Option<Linear>,
    #[module(skip)]
    context: usize,
}

/// Keys and values of past positions, one pair per block (`[batch, heads, past, head_dim]`).
#[derive(Debug, Clone, Default)]
pub struct KvCache {
    layers: Vec<Option<(Tensor<4>, Tensor<4>)>>,
    len: usize,
}

impl KvCache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }
    /// Positions cached.
    pub fn len(&self) -> usize {
        self.len
    }
    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Gpt {
    /// A freshly initialised model (GPT-2 style: N(0, 0.02) embeddings).
    pub fn new(cfg: &GptConfig, device: &Device) -> Self {
        let init = gpt2_init();
        let shape = BlockShape {
            embd: cfg.embd,
            heads: cfg.heads,
            dropout: cfg.dropout,
            bias: cfg.bias,
        };
        let blocks = shape.blocks(cfg.layers, device);
        Self {
            wte: EmbeddingConfig::new(cfg.vocab_size, cfg.embd)
                .with_initializer(init.clone())
                .init(device),
            wpe: EmbeddingConfig::new(cfg.context, cfg.embd)
                .with_initializer(init.clone())
                .init(device),
            drop: shape.dropout(),
            blocks,
            ln_f: shape.layer_norm(device),
            head: (!cfg.tied_head).then(|| {
                LinearConfig::new(cfg.embd, cfg.vocab_size)
                    .with_bias(false)
                    .with_initializer(init)
                    .init(device)
            }),
            context: cfg.context,
        }
    }

    /// Maximum sequence length.
    pub fn context(&self) -> usize {
        self.context
    }

    /// The final hidden states `[B, T, C]` (after the last LayerNorm) for token ids `[B, T]`.
    fn hidden(&self, idx: Tensor<2, Int>, mut cache: Option<&mut KvCache>) -> Tensor<3> {
        let [b, t] = idx.dims();
        let start = cache.as_ref().map(|c| c.len).unwrap_or(0);
        assert!(
            start + t <= self.context,
            "sequence of {} exceeds the context {}",
            start + t,
            self.context
        );
        let device = idx.device();
        let pos =
            Tensor::<1, Int>::arange(start as i64..(start + t) as i64, &device).reshape([1, t]);
        let x = self.wte.forward(idx)
            + self
                .wpe
                .forward(pos)
                .expand([b, t, self.wpe.weight.dims()[1]]);
        let mut x = crate::ops::dropout(&self.drop, x);
        if let Some(c) = cache.as_deref_mut()
            && c.layers.len() != self.blocks.len()
        {
            c.layers = vec![None; self.blocks.len()];
        }
        for (i, block) in self.blocks.iter().enumerate() {
            let slot = cache.as_deref_mut().map(|c| &mut c.layers[i]);
            x = block.forward(x, &AttentionMask::Causal, slot);
        }
        if let Some(c) = cache {
            c.len += t;
        }
        crate::ops::layer_norm(&self.ln_f, x)
    }

    /// Logits `[B, T, vocab]` of the final hidden states `x` `[B, T, C]`.
    fn logits(&self, x: Tensor<3>) -> Tensor<3> {
        let [b, _, _] = x.dims();
        match &self.head {
            Some(head) => crate::ops::linear(head, x),
            None => {
                // [B*T, C] x [C, V]: one 2-D matmul on the transposed embedding view.
                let w = self.wte.weight.val(); // [V, C]
                let [v, c] = w.dims();
                let [_, t, _] = x.dims();
                x.reshape([b * t, c])
                    .matmul(w.transpose())
                    .reshape([b, t, v])
            }
        }
    }

    /// Logits `[B, T, vocab]` for token ids `[B, T]` (T ≤ context).
    pub fn forward(&self, idx: Tensor<2, Int>) -> Tensor<3> {
        self.logits(self.hidden(idx, None))
    }

    /// Logits for the new tokens `[B, T_new]`, using and extending `cache`.
    pub fn forward_cached(&self, idx: Tensor<2, Int>, cache: &mut KvCache) -> Tensor<3> {
        self.logits(self.hidden(idx, Some(cache)))
    }

    /// Mean next-token cross-entropy `[1]` of token ids `[B, T]` against `targets` (`B * T`
    /// token ids, row-major, each below the vocabulary), through the fused head +
    /// cross-entropy ([`crate::ops::cross_entropy_head`]): no logits tensor; under autodiff
    /// only their gradient is kept for the backward.
    pub fn loss(&self, idx: Tensor<2, Int>, targets: Arc<[u32]>) -> Tensor<1> {
        let x = self.hidden(idx, None);
        let [b, t, c] = x.dims();
        let x = x.reshape([b * t, c]);
        match &self.head {
            Some(head) => cross_entropy_head(x, head.weight.val(), HeadLayout::InOut, targets),
            None => cross_entropy_head(x, self.wte.weight.val(), HeadLayout::OutIn, targets),
        }
    }
}
