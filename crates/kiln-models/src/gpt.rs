//! A nanoGPT-style decoder: token + learned position embeddings, pre-LayerNorm blocks of
//! causal self-attention and a GELU MLP, a final LayerNorm and a (optionally tied) head.
//! [`Gpt::forward_cached`] decodes with a key/value cache.

use burn::module::Module;
use burn::nn::{
    Dropout, DropoutConfig, Embedding, EmbeddingConfig, LayerNorm, LayerNormConfig, Linear,
    LinearConfig,
};
use burn::prelude::{Bool, Device, Int, Tensor};
use burn::tensor::activation::{gelu, softmax};
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
        Ok(())
    }
}

/// Causal multi-head self-attention.
#[derive(Module, Debug)]
pub struct CausalSelfAttention {
    qkv: Linear,
    proj: Linear,
    attn_drop: Dropout,
    resid_drop: Dropout,
    #[module(skip)]
    heads: usize,
}

/// MLP: Linear(embd, 4 embd) → GELU → Linear(4 embd, embd) → dropout.
#[derive(Module, Debug)]
pub struct Mlp {
    fc: Linear,
    proj: Linear,
    drop: Dropout,
}

/// One pre-LayerNorm block.
#[derive(Module, Debug)]
pub struct Block {
    ln1: LayerNorm,
    attn: CausalSelfAttention,
    ln2: LayerNorm,
    mlp: Mlp,
}

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

impl CausalSelfAttention {
    /// `x` is `[B, T, C]`; with a cache, `x` holds only the new positions, which attend to
    /// the cached ones and causally among themselves.
    fn forward(
        &self,
        x: Tensor<3>,
        cache: Option<&mut Option<(Tensor<4>, Tensor<4>)>>,
    ) -> Tensor<3> {
        let [b, t, c] = x.dims();
        let h = self.heads;
        let d = c / h;
        let qkv = self.qkv.forward(x);
        let split = |i: usize| {
            qkv.clone()
                .narrow(2, i * c, c)
                .reshape([b, t, h, d])
                .swap_dims(1, 2)
        };
        let (q, mut k, mut v) = (split(0), split(1), split(2));
        let mut past = 0;
        if let Some(slot) = cache {
            if let Some((pk, pv)) = slot.take() {
                past = pk.dims()[2];
                k = Tensor::cat(vec![pk, k], 2);
                v = Tensor::cat(vec![pv, v], 2);
            }
            *slot = Some((k.clone(), v.clone()));
        }
        let total = past + t;
        let att = q.matmul(k.swap_dims(2, 3)).div_scalar((d as f64).sqrt()); // [B, H, T, total]
        let att = if t > 1 {
            // New position i (absolute past + i) may see keys 0..=past + i.
            let mask =
                Tensor::<2, Bool>::triu_mask([t, total], past as i64 + 1, &att.device()).bool_not();
            let mask: Tensor<4, Bool> = mask.unsqueeze::<4>().expand([b, h, t, total]);
            att.mask_fill(mask, f32::NEG_INFINITY)
        } else {
            att
        };
        let att = self.attn_drop.forward(softmax(att, 3));
        let y = att.matmul(v).swap_dims(1, 2).reshape([b, t, c]);
        self.resid_drop.forward(self.proj.forward(y))
    }
}

impl Gpt {
    /// A freshly initialised model (GPT-2 style: N(0, 0.02) embeddings).
    pub fn new(cfg: &GptConfig, device: &Device) -> Self {
        let init = burn::nn::Initializer::Normal {
            mean: 0.0,
            std: 0.02,
        };
        let linear = |i: usize, o: usize| {
            LinearConfig::new(i, o)
                .with_bias(cfg.bias)
                .with_initializer(init.clone())
                .init(device)
        };
        let ln = || {
            LayerNormConfig::new(cfg.embd)
                .with_bias(cfg.bias)
                .init(device)
        };
        let drop = || DropoutConfig::new(cfg.dropout).init();
        let blocks = (0..cfg.layers)
            .map(|_| Block {
                ln1: ln(),
                attn: CausalSelfAttention {
                    qkv: linear(cfg.embd, 3 * cfg.embd),
                    proj: linear(cfg.embd, cfg.embd),
                    attn_drop: drop(),
                    resid_drop: drop(),
                    heads: cfg.heads,
                },
                ln2: ln(),
                mlp: Mlp {
                    fc: linear(cfg.embd, 4 * cfg.embd),
                    proj: linear(4 * cfg.embd, cfg.embd),
                    drop: drop(),
                },
            })
            .collect();
        Self {
            wte: EmbeddingConfig::new(cfg.vocab_size, cfg.embd)
                .with_initializer(init.clone())
                .init(device),
            wpe: EmbeddingConfig::new(cfg.context, cfg.embd)
                .with_initializer(init.clone())
                .init(device),
            drop: drop(),
            blocks,
            ln_f: ln(),
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

    fn run(&self, idx: Tensor<2, Int>, mut cache: Option<&mut KvCache>) -> Tensor<3> {
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
        let mut x = self.drop.forward(x);
        if let Some(c) = cache.as_deref_mut()
            && c.layers.len() != self.blocks.len()
        {
            c.layers = vec![None; self.blocks.len()];
        }
        for (i, block) in self.blocks.iter().enumerate() {
            let slot = cache.as_deref_mut().map(|c| &mut c.layers[i]);
            x = x.clone() + block.attn.forward(block.ln1.forward(x), slot);
            let m = block.mlp.fc.forward(block.ln2.forward(x.clone()));
            x = x + block.mlp.drop.forward(block.mlp.proj.forward(gelu(m)));
        }
        if let Some(c) = cache {
            c.len += t;
        }
        let x = self.ln_f.forward(x);
        match &self.head {
            Some(head) => head.forward(x),
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
        self.run(idx, None)
    }

    /// Logits for the new tokens `[B, T_new]`, using and extending `cache`.
    pub fn forward_cached(&self, idx: Tensor<2, Int>, cache: &mut KvCache) -> Tensor<3> {
        self.run(idx, Some(cache))
    }
}
