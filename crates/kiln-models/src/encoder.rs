//! The text encoder of `model.type = "transformer"`: token + learned position embeddings,
//! pre-LayerNorm blocks of bidirectional self-attention that ignore padding, a final
//! LayerNorm and mean pooling over the real tokens.

use std::sync::Arc;

use burn::module::Module;
use burn::nn::{Dropout, Embedding, EmbeddingConfig, LayerNorm};
use burn::prelude::{Device, Int, Tensor};
use kiln_config::{Freeze, Pooling};

use kiln_spec::TextEncoderSpec;

use crate::transformer::{AttentionMask, Block, BlockShape, gpt2_init};

/// A transformer encoder that turns `[B, T]` token ids (0 = padding) into `[B, embd]`.
#[derive(Module, Debug)]
pub struct TextEncoder {
    wte: Embedding,
    wpe: Embedding,
    drop: Dropout,
    blocks: Vec<Block>,
    ln_f: LayerNorm,
    #[module(skip)]
    pooling: Pooling,
    #[module(skip)]
    causal: bool,
}

/// Fill for padding before the max-pool: below any real activation after LayerNorm.
const PAD_FOR_MAX: f32 = -1e4;

impl TextEncoder {
    /// A freshly initialised encoder.
    pub fn new(spec: &TextEncoderSpec, device: &Device) -> Self {
        let shape = BlockShape {
            embd: spec.embd,
            heads: spec.heads,
            dropout: spec.dropout,
            bias: spec.bias,
        };
        Self {
            wte: EmbeddingConfig::new(spec.vocab_size, spec.embd)
                .with_initializer(gpt2_init())
                .init(device),
            wpe: EmbeddingConfig::new(spec.max_tokens, spec.embd)
                .with_initializer(gpt2_init())
                .init(device),
            drop: shape.dropout(),
            blocks: shape.blocks(spec.layers, device),
            ln_f: shape.layer_norm(device),
            pooling: spec.pooling,
            causal: spec.causal,
        }
    }

    /// This encoder with what `freeze` names frozen (no gradient, never updated): the
    /// embeddings and the first `K` blocks, or everything up to the final LayerNorm.
    pub fn frozen(mut self, freeze: Freeze) -> Self {
        let blocks = match freeze {
            Freeze::None => return self,
            Freeze::Encoder => self.blocks.len(),
            Freeze::Layers(k) => k.min(self.blocks.len()),
        };
        self.wte = self.wte.no_grad();
        self.wpe = self.wpe.no_grad();
        self.blocks = self
            .blocks
            .into_iter()
            .enumerate()
            .map(|(i, b)| if i < blocks { b.no_grad() } else { b })
            .collect();
        if freeze == Freeze::Encoder {
            self.ln_f = self.ln_f.no_grad();
        }
        self
    }

    /// The final hidden states pooled over the non-padding positions (mean, max, or both
    /// side by side), `[B, width]`. A row of padding only (an empty text) pools to zeros.
    pub fn forward(&self, tokens: Tensor<2, Int>) -> Tensor<2> {
        let [b, t] = tokens.dims();
        let device = tokens.device();
        let pad = tokens.clone().equal_elem(0);
        let pos = Tensor::<1, Int>::arange(0..t as i64, &device).reshape([1, t]);
        let embd = self.wpe.weight.dims()[1];
        let x = self.wte.forward(tokens) + self.wpe.forward(pos).expand([b, t, embd]);
        let mut x = crate::ops::dropout(&self.drop, x);
        let mask = if self.causal {
            // Padding comes last: causal attention never lets a real position see it.
            AttentionMask::Causal
        } else {
            AttentionMask::Padding(padding_on_host(&pad))
        };
        for block in &self.blocks {
            x = block.forward(x, &mask, None);
        }
        let x = crate::ops::layer_norm(&self.ln_f, x);
        pool(x, pad, self.pooling)
    }
}

/// A padding mask `[B, T]` on the host, row-major, read once per forward: the attention
/// kernels read it per row.
pub(crate) fn padding_on_host(pad: &Tensor<2, burn::prelude::Bool>) -> Arc<[bool]> {
    pad.clone()
        .int()
        .into_data()
        .convert::<i64>()
        .try_to_vec::<i64>()
        .expect("integer padding mask")
        .into_iter()
        .map(|p| p != 0)
        .collect()
}

/// Token states `x` `[B, T, C]` pooled over the positions where `pad` `[B, T]` is false (mean,
/// max, both side by side, or the first token's), `[B, width]`. A row of padding only pools to
/// zeros.
pub(crate) fn pool(
    x: Tensor<3>,
    pad: Tensor<2, burn::prelude::Bool>,
    pooling: Pooling,
) -> Tensor<2> {
    let [b, t, embd] = x.dims();
    let keep: Tensor<3> = pad.clone().bool_not().float().reshape([b, t, 1]);
    let mean = || {
        let count = keep.clone().sum_dim(1).clamp_min(1.0); // [B, 1, 1]
        (x.clone() * keep.clone())
            .sum_dim(1)
            .div(count)
            .reshape([b, embd])
    };
    let max = || {
        let pad: Tensor<3, burn::prelude::Bool> =
            pad.clone().reshape([b, t, 1]).expand([b, t, embd]);
        let m = x
            .clone()
            .mask_fill(pad, PAD_FOR_MAX)
            .max_dim(1)
            .reshape([b, embd]);
        // An all-padding row would pool to the fill value: zero it like the mean.
        let any: Tensor<2> = keep.clone().max_dim(1).reshape([b, 1]);
        m * any
    };
    match pooling {
        Pooling::Mean => mean(),
        Pooling::Max => max(),
        Pooling::MeanMax => Tensor::cat(vec![mean(), max()], 1),
        Pooling::Cls => {
            let first: Tensor<2> = keep.clone().narrow(1, 0, 1).reshape([b, 1]);
            x.clone().narrow(1, 0, 1).reshape([b, embd]) * first
        }
    }
}
