//! Transformer parts shared by the GPT decoder and the text encoder: pre-LayerNorm blocks of
//! multi-head self-attention and a GELU MLP.

use burn::module::Module;
use burn::nn::{Dropout, DropoutConfig, LayerNorm, LayerNormConfig, Linear, LinearConfig};
use std::sync::Arc;

use burn::prelude::{Device, Tensor};
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;

use crate::ops::AttentionSpec;

/// Which keys a query may attend to.
#[derive(Debug, Clone)]
pub(crate) enum AttentionMask {
    /// Each position sees itself and earlier positions (decoder).
    Causal,
    /// Every position sees every key except padding; `[B * T]` row-major, true at padding
    /// (encoder).
    Padding(Arc<[bool]>),
}

/// Multi-head self-attention.
#[derive(Module, Debug)]
pub struct SelfAttention {
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

/// One pre-LayerNorm block: `x + attn(ln1(x))`, then `x + mlp(ln2(x))`.
#[derive(Module, Debug)]
pub struct Block {
    ln1: LayerNorm,
    attn: SelfAttention,
    ln2: LayerNorm,
    mlp: Mlp,
}

/// Width, heads and regularisation of a stack of blocks.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BlockShape {
    pub embd: usize,
    pub heads: usize,
    pub dropout: f64,
    pub bias: bool,
}

/// GPT-2's initialiser: N(0, 0.02).
pub(crate) fn gpt2_init() -> burn::nn::Initializer {
    burn::nn::Initializer::Normal {
        mean: 0.0,
        std: 0.02,
    }
}

impl BlockShape {
    pub(crate) fn linear(&self, i: usize, o: usize, device: &Device) -> Linear {
        LinearConfig::new(i, o)
            .with_bias(self.bias)
            .with_initializer(gpt2_init())
            .init(device)
    }

    pub(crate) fn layer_norm(&self, device: &Device) -> LayerNorm {
        LayerNormConfig::new(self.embd)
            .with_epsilon(crate::ops::LAYER_NORM_EPSILON)
            .with_bias(self.bias)
            .init(device)
    }

    pub(crate) fn dropout(&self) -> Dropout {
        DropoutConfig::new(self.dropout).init()
    }

    /// `n` freshly initialised blocks.
    pub(crate) fn blocks(&self, n: usize, device: &Device) -> Vec<Block> {
        let e = self.embd;
        (0..n)
            .map(|_| Block {
                ln1: self.layer_norm(device),
                attn: SelfAttention {
                    qkv: self.linear(e, 3 * e, device),
                    proj: self.linear(e, e, device),
                    attn_drop: self.dropout(),
                    resid_drop: self.dropout(),
                    heads: self.heads,
                },
                ln2: self.layer_norm(device),
                mlp: Mlp {
                    fc: self.linear(e, 4 * e, device),
                    proj: self.linear(4 * e, e, device),
                    drop: self.dropout(),
                },
            })
            .collect()
    }
}

impl SelfAttention {
    /// `x` is `[B, T, C]`. With a cache (causal only), `x` holds only the new positions,
    /// which attend to the cached ones and causally among themselves.
    fn forward(
        &self,
        x: Tensor<3>,
        mask: &AttentionMask,
        cache: Option<&mut Option<(Tensor<4>, Tensor<4>)>>,
    ) -> Tensor<3> {
        let qkv = crate::ops::linear(&self.qkv, x);
        let y = match cache {
            Some(slot) => self.cached(qkv, slot),
            None => {
                let spec = AttentionSpec {
                    heads: self.heads,
                    causal: matches!(mask, AttentionMask::Causal),
                    key_padding: match mask {
                        AttentionMask::Causal => None,
                        AttentionMask::Padding(pad) => Some(pad.clone()),
                    },
                    dropout: crate::ops::dropout_mask(&self.attn_drop, &qkv.device()),
                };
                crate::ops::attention(qkv, spec)
            }
        };
        crate::ops::dropout(&self.resid_drop, crate::ops::linear(&self.proj, y))
    }

    /// Causal attention of new positions `qkv` `[B, t, 3C]` over the cached keys and values
    /// plus their own (decoding), through the backend's attention op. New position `i`
    /// (absolute `past + i`) sees keys `0..=past + i`: the op's causal mask is aligned
    /// bottom-right.
    fn cached(&self, qkv: Tensor<3>, slot: &mut Option<(Tensor<4>, Tensor<4>)>) -> Tensor<3> {
        let [b, t, c3] = qkv.dims();
        let (c, h) = (c3 / 3, self.heads);
        let split = |i: usize| {
            qkv.clone()
                .narrow(2, i * c, c)
                .reshape([b, t, h, c / h])
                .swap_dims(1, 2)
        };
        let (q, mut k, mut v) = (split(0), split(1), split(2));
        if let Some((pk, pv)) = slot.take() {
            k = Tensor::cat(vec![pk, k], 2);
            v = Tensor::cat(vec![pv, v], 2);
        }
        *slot = Some((k.clone(), v.clone()));
        let options = AttentionModuleOptions {
            scale: None,
            softcap: None,
            is_causal: t > 1,
        };
        attention(q, k, v, None, None, options)
            .swap_dims(1, 2)
            .reshape([b, t, c])
    }
}

impl Block {
    /// One block over `x` `[B, T, C]`.
    pub(crate) fn forward(
        &self,
        x: Tensor<3>,
        mask: &AttentionMask,
        cache: Option<&mut Option<(Tensor<4>, Tensor<4>)>>,
    ) -> Tensor<3> {
        let x = x.clone()
            + self
                .attn
                .forward(crate::ops::layer_norm(&self.ln1, x), mask, cache);
        let m = crate::ops::linear(&self.mlp.fc, crate::ops::layer_norm(&self.ln2, x.clone()));
        let m = crate::ops::gelu(m);
        x + crate::ops::dropout(&self.mlp.drop, crate::ops::linear(&self.mlp.proj, m))
    }
}
