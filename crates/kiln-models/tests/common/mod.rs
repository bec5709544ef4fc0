//! Helpers shared by the model tests.
#![allow(dead_code)]

use std::sync::Arc;

use burn::module::{Module, ModuleVisitor, Param};
use burn::prelude::{Device, Int, Tensor, TensorData};
use burn::tensor::Gradients;
use kiln_config::{Activation, ConvLayer, ModelKind, Pooling};
use kiln_models::{GptConfig, InputShape, Inputs, ModelSpec, Network, TextEncoderSpec};

/// Largest absolute element-wise difference.
pub fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// A tensor's values as f32.
pub fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap()
}

/// Every parameter's gradient in `grads`, in `module`'s visiting order (empty where a
/// parameter has none).
pub fn parameter_grads<M: Module>(module: &M, grads: &Gradients) -> Vec<Vec<f32>> {
    let mut collect = Collect { grads, out: vec![] };
    module.visit(&mut collect);
    collect.out
}

struct Collect<'a> {
    grads: &'a Gradients,
    out: Vec<Vec<f32>>,
}

impl ModuleVisitor for Collect<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let g = param
            .val()
            .grad(self.grads)
            .map(|g| g.into_data().convert::<f32>().try_to_vec::<f32>().unwrap())
            .unwrap_or_default();
        self.out.push(g);
    }
}

/// Burn's mean cross-entropy of `logits` `[B, C]` against `targets`.
pub fn mean_cross_entropy(logits: Tensor<2>, targets: &[i64]) -> Tensor<1> {
    let [b, _] = logits.dims();
    let device = logits.device();
    let t = Tensor::<1, Int>::from_data(TensorData::new(targets.to_vec(), [b]), &device);
    burn::nn::loss::CrossEntropyLossConfig::new()
        .init(&device)
        .forward(logits, t)
}

/// Four rows of token ids padded with 0 to 12 (`[4, 12]`, row-major), one of them empty.
pub fn padded_ids() -> Vec<i64> {
    let rows: [&[i64]; 4] = [
        &[5, 9, 3],
        &[7, 7, 2, 11, 4, 8, 1, 30, 22, 9, 5, 6],
        &[],
        &[0, 4, 9, 0, 12],
    ];
    let mut ids = vec![0i64; 4 * 12];
    for (r, row) in rows.iter().enumerate() {
        ids[r * 12..r * 12 + row.len()].copy_from_slice(row);
    }
    ids
}

// Small models of each kind, and inputs for them.

/// `rows` × `width` values in [-1, 1).
pub fn pixels(rows: usize, width: usize) -> Vec<f32> {
    (0..rows * width)
        .map(|i| ((i * 37) % 101) as f32 / 50.0 - 1.0)
        .collect()
}

/// The mean cross-entropy of a network over five rows of [`pixels`].
pub fn dense_loss(width: usize) -> impl Fn(&Network, &Device) -> Tensor<1> {
    move |m, device| {
        let x = Tensor::<2>::from_data(TensorData::new(pixels(5, width), [5, width]), device);
        mean_cross_entropy(m.forward(Inputs::dense(x)), &[0, 1, 2, 0, 1])
    }
}

/// A GELU MLP over 20 values, 3 classes.
pub fn mlp() -> ModelSpec {
    ModelSpec {
        kind: ModelKind::Mlp,
        input: InputShape::Flat { width: 20 },
        embeddings: vec![],
        outputs: 3,
        hidden: vec![16, 8],
        activation: Activation::Gelu,
        dropout: 0.0,
        batch_norm: false,
        conv: vec![],
        text: None,
        pretrained: None,
    }
}

/// A two-layer CNN over 2×8×6 images.
pub fn cnn() -> ModelSpec {
    let conv = |filters| ConvLayer {
        filters,
        kernel: 3,
        stride: 1,
        padding: 1,
        pool: 2,
        batch_norm: false,
        dropout: 0.0,
    };
    ModelSpec {
        kind: ModelKind::Cnn,
        input: InputShape::Image {
            channels: 2,
            height: 8,
            width: 6,
        },
        activation: Activation::Relu,
        conv: vec![conv(4), conv(5)],
        hidden: vec![12],
        ..mlp()
    }
}

/// A two-layer text classifier (vocabulary 40, 12 tokens, mean-max pooling).
pub fn text_classifier() -> ModelSpec {
    ModelSpec {
        kind: ModelKind::Transformer,
        input: InputShape::Flat { width: 0 },
        text: Some(TextEncoderSpec {
            vocab_size: 40,
            max_tokens: 12,
            layers: 2,
            heads: 4,
            embd: 32,
            dropout: 0.0,
            bias: true,
            pooling: Pooling::MeanMax,
            causal: false,
            freeze: Default::default(),
        }),
        ..mlp()
    }
}

/// Four rows padded to 12 tokens, one of them empty.
pub fn padded_tokens(device: &Device) -> Tensor<2, Int> {
    Tensor::from_data(TensorData::new(padded_ids(), [4, 12]), device)
}

/// A two-layer GPT with a tied head, context 24.
pub fn gpt_config() -> GptConfig {
    GptConfig {
        vocab_size: 29,
        context: 24,
        layers: 2,
        heads: 4,
        embd: 32,
        dropout: 0.0,
        bias: true,
        tied_head: true,
    }
}

/// Three rows of 24 tokens for [`gpt_config`].
pub fn gpt_tokens(device: &Device) -> Tensor<2, Int> {
    let tokens: Vec<i64> = (0..3 * 24).map(|i| (i * 7 + 3) % 29).collect();
    Tensor::from_data(TensorData::new(tokens, [3, 24]), device)
}

/// The next token of each of [`gpt_tokens`].
pub fn gpt_targets() -> Arc<[u32]> {
    (0..3 * 24).map(|i| ((i * 7 + 4) % 29) as u32).collect()
}

/// The mean cross-entropy of the [`text_classifier`] over [`padded_tokens`].
pub fn text_loss(m: &Network, d: &Device) -> Tensor<1> {
    let out = m.forward(Inputs {
        x: None,
        categories: None,
        tokens: Some(padded_tokens(d)),
        token_windows: 1,
    });
    mean_cross_entropy(out, &[0, 1, 2, 1])
}

/// The [`gpt_config`] model's loss on [`gpt_tokens`] against [`gpt_targets`].
pub fn gpt_loss() -> impl Fn(&kiln_models::Gpt, &Device) -> Tensor<1> {
    let targets = gpt_targets();
    move |m, d| m.loss(gpt_tokens(d), targets.clone())
}
