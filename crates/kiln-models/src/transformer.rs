//! Transformer parts shared by the GPT decoder and the text encoder: pre-LayerNorm blocks of
//! multi-head self-attention and a GELU MLP.

use burn::module::Module;
use burn::nn::{Dropout, DropoutConfig, LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::prelude::{Bool, Device, Tensor};
use burn::tensor::activation::softmax;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;

/// Which keys a query may attend to.
#[derive(Debug, Clone)]
#[allow(clippy::large_enum_variant)] // built once per forward pass
pub(crate) enum AttentionMask {
    /// Each position sees itself and earlier positions (decoder).
    Causal,
    /// Every position sees every key except padding; `[B, T]`, true at padding (encoder).
    Padding(Tensor<2, Bool>),
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

/// Score given to masked keys: finite, so a row whose keys are all padding (an empty text)
/// attends uniformly instead of producing NaN.
const MASKED: f32 = -1e9;

impl SelfAttention {
    /// `x` is `[B, T, C]`. With a cache (causal only), `x` holds only the new positions,
    /// which attend to the cached ones and causally among themselves.
    fn forward(
        &self,
        x: Tensor<3>,
        mask: &AttentionMask,
        cache: Option<&mut Option<(Tensor<4>, Tensor<4>)>>,
    ) -> Tensor<3> {
        let [b, t, c] = x.dims();
        let h = self.heads;
        let d = c / h;
        let qkv = crate::ops::linear(&self.qkv, x);
        if matches!(mask, AttentionMask::Causal)
            && cache.is_none()
            && qkv.dtype() == burn::tensor::DType::F32
            && crate::ops::on_flex(&qkv.device())
            && (self.attn_drop.prob == 0.0 || !qkv.is_autodiff())
        {
            // On the host without a KV cache (training, or inference over a whole window):
            // kiln's fused attention, forward and backward, straight from the packed
            // projections (no head split, score or mask tensors).
            let y = crate::ops::causal_attention(qkv, h);
            return self.resid_drop.forward(crate::ops::linear(&self.proj, y));
        }
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
        if matches!(mask, AttentionMask::Causal) && !q.is_autodiff() {
            // Inference: the backend's fused attention (Flex: one pass per head, no score
            // tensors, no mask tensor). Its causal mask is aligned bottom-right, i.e. new
            // position i sees keys 0..=past + i, as below. Training keeps the op-by-op form,
            // whose backward Burn derives.
            let options = AttentionModuleOptions {
                scale: None,
                softcap: None,
                is_causal: t > 1,
            };
            let y = attention(q, k, v, None, None, options)
                .swap_dims(1, 2)
                .reshape([b, t, c]);
            return self.resid_drop.forward(crate::ops::linear(&self.proj, y));
        }
        let att = q.matmul(k.swap_dims(2, 3)).div_scalar((d as f64).sqrt()); // [B, H, T, total]
        let att = match mask {
            AttentionMask::Causal if t > 1 => {
                // New position i (absolute past + i) may see keys 0..=past + i.
                let mask = Tensor::<2, Bool>::triu_mask([t, total], past as i64 + 1, &att.device())
                    .bool_not();
                let mask: Tensor<4, Bool> = mask.unsqueeze::<4>().expand([b, h, t, total]);
                att.mask_fill(mask, f32::NEG_INFINITY)
            }
            AttentionMask::Causal => att,
            AttentionMask::Padding(pad) => {
                let mask: Tensor<4, Bool> = pad
                    .clone()
                    .reshape([b, 1, 1, total])
                    .expand([b, h, t, total]);
                att.mask_fill(mask, MASKED)
            }
        };
        let att = self.attn_drop.forward(softmax(att, 3));
        let y = att.matmul(v).swap_dims(1, 2).reshape([b, t, c]);
        self.resid_drop.forward(crate::ops::linear(&self.proj, y))
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
        let m = if m.is_autodiff() {
            crate::ops::gelu(m)
        } else {
            crate::kernels::gelu_inference(m)
        };
        x + self.mlp.drop.forward(crate::ops::linear(&self.mlp.proj, m))
    }
}
