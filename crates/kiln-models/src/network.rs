use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::nn::{
    BatchNorm, BatchNormConfig, Dropout, DropoutConfig, Embedding, EmbeddingConfig, Linear,
    LinearConfig, PaddingConfig2d,
};
use burn::prelude::{Device, Int, Tensor};
use burn::tensor::activation;
use kiln_config::{Activation, ModelKind};

use crate::encoder::TextEncoder;
use crate::spec::ModelSpec;
use kiln_data::InputShape;

/// Conv, optional batch norm, activation, optional max-pool, dropout.
#[derive(Module, Debug)]
pub struct ConvBlock {
    conv: Conv2d,
    norm: Option<BatchNorm>,
    pool: Option<MaxPool2d>,
    #[module(skip)]
    pool_size: usize,
    dropout: Dropout,
}

/// Linear, optional batch norm, activation, dropout.
#[derive(Module, Debug)]
pub struct DenseBlock {
    linear: Linear,
    norm: Option<BatchNorm>,
    dropout: Dropout,
}

/// An MLP, linear model, CNN or text classifier, as described by a [`ModelSpec`].
#[derive(Module, Debug)]
pub struct Network {
    convs: Vec<ConvBlock>,
    embeddings: Vec<Embedding>,
    text: Option<TextEncoder>,
    hidden: Vec<DenseBlock>,
    output: Linear,
    #[module(skip)]
    activation: Activation,
    #[module(skip)]
    input: InputShape,
}

/// One batch of model inputs.
#[derive(Debug, Clone)]
pub struct Inputs {
    /// Dense inputs `[batch, input size]` (images flattened row-major); `None` when the
    /// model has no dense inputs (text only).
    pub x: Option<Tensor<2>>,
    /// Embedding indices `[batch, embeddings]`, when the model has embeddings.
    pub categories: Option<Tensor<2, Int>>,
    /// Token ids `[batch, tokens]` (0 = padding), when the model reads text.
    pub tokens: Option<Tensor<2, Int>>,
}

impl Inputs {
    /// Dense inputs only.
    pub fn dense(x: Tensor<2>) -> Self {
        Self {
            x: Some(x),
            categories: None,
            tokens: None,
        }
    }
}

/// The raw outputs of a forward pass: logits for classification, standardised values for
/// regression.
pub type Outputs = Tensor<2>;

fn act<const D: usize>(a: Activation, x: Tensor<D>) -> Tensor<D> {
    match a {
        Activation::Relu => activation::relu(x),
        Activation::Gelu if !x.is_autodiff() => crate::kernels::gelu_inference(x),
        Activation::Gelu => crate::ops::gelu(x),
        Activation::Tanh => activation::tanh(x),
        Activation::Sigmoid => activation::sigmoid(x),
        Activation::LeakyRelu => activation::leaky_relu(x, 0.01),
        Activation::Silu => activation::silu(x),
    }
}

impl Network {
    /// Builds a freshly initialised network on `device` (seed the device first for
    /// reproducible weights).
    pub fn new(spec: &ModelSpec, device: &Device) -> Self {
        let mut in_channels = match spec.input {
            InputShape::Image { channels, .. } => channels,
            InputShape::Flat { .. } => 1,
        };
        let convs = spec
            .conv
            .iter()
            .map(|layer| {
                let conv =
                    Conv2dConfig::new([in_channels, layer.filters], [layer.kernel, layer.kernel])
                        .with_stride([layer.stride, layer.stride])
                        .with_padding(PaddingConfig2d::Explicit(
                            layer.padding,
                            layer.padding,
                            layer.padding,
                            layer.padding,
                        ))
                        .init(device);
                in_channels = layer.filters;
                ConvBlock {
                    conv,
                    norm: layer
                        .batch_norm
                        .then(|| BatchNormConfig::new(layer.filters).init(device)),
                    pool_size: layer.pool,
                    pool: (layer.pool > 1).then(|| {
                        MaxPool2dConfig::new([layer.pool, layer.pool])
                            .with_strides([layer.pool, layer.pool])
                            .init()
                    }),
                    dropout: DropoutConfig::new(layer.dropout).init(),
                }
            })
            .collect();
        let embeddings = spec
            .embeddings
            .iter()
            .map(|&(n, d)| EmbeddingConfig::new(n, d).init(device))
            .collect();
        let text = spec.text.as_ref().map(|t| TextEncoder::new(t, device));
        let mut width = spec.head_input();
        let hidden = spec
            .hidden
            .iter()
            .map(|&h| {
                let block = DenseBlock {
                    linear: LinearConfig::new(width, h).init(device),
                    norm: spec
                        .batch_norm
                        .then(|| BatchNormConfig::new(h).init(device)),
                    dropout: DropoutConfig::new(spec.dropout).init(),
                };
                width = h;
                block
            })
            .collect();
        let output = LinearConfig::new(width, spec.outputs).init(device);
        debug_assert!(spec.kind != ModelKind::Cnn || !spec.conv.is_empty());
        Self {
            convs,
            embeddings,
            text,
            hidden,
            output,
            activation: spec.activation,
            input: spec.input,
        }
    }

    /// Forward pass over one batch.
    ///
    /// # Panics
    /// When `inputs` lacks a part the model reads (dense values, category indices, tokens).
    pub fn forward(&self, inputs: Inputs) -> Outputs {
        let mut parts = Vec::with_capacity(2 + self.embeddings.len());
        if let Some(x) = inputs.x {
            let [batch, _] = x.dims();
            parts.push(if self.convs.is_empty() {
                x
            } else {
                let InputShape::Image {
                    channels,
                    height,
                    width,
                } = self.input
                else {
                    unreachable!("a CNN is only built for image input")
                };
                let mut img: Tensor<4> = x.reshape([batch, channels, height, width]);
                for block in &self.convs {
                    img = crate::ops::conv2d(&block.conv, img);
                    if let Some(norm) = &block.norm {
                        img = norm.forward(img);
                    }
                    match &block.pool {
                        // One pass each way (kiln's op; ReLU commutes with the max).
                        Some(_) if self.activation == Activation::Relu => {
                            img = crate::ops::relu_max_pool2d(img, block.pool_size);
                        }
                        Some(pool) if img.is_autodiff() => {
                            img = pool.forward(act(self.activation, img));
                        }
                        // Inference: max-pool commutes with a piecewise-linear monotone
                        // activation (max of f = f of max, exactly), so pool first and
                        // activate a quarter of the values.
                        Some(_)
                            if matches!(
                                self.activation,
                                Activation::Relu | Activation::LeakyRelu
                            ) =>
                        {
                            img = crate::kernels::max_pool2d_inference(img, block.pool_size);
                            img = act(self.activation, img);
                        }
                        Some(_) => {
                            img = act(self.activation, img);
                            img = crate::kernels::max_pool2d_inference(img, block.pool_size);
                        }
                        None => img = act(self.activation, img),
                    }
                    img = block.dropout.forward(img);
                }
                img.flatten(1, 3)
            });
        }
        if !self.embeddings.is_empty() {
            let categories = inputs
                .categories
                .expect("the model has embeddings: pass category indices");
            for (i, emb) in self.embeddings.iter().enumerate() {
                let idx = categories.clone().narrow(1, i, 1); // [batch, 1]
                let e: Tensor<3> = emb.forward(idx); // [batch, 1, d]
                parts.push(e.flatten(1, 2));
            }
        }
        if let Some(encoder) = &self.text {
            let tokens = inputs.tokens.expect("the model reads text: pass token ids");
            parts.push(encoder.forward(tokens));
        }
        let mut h = if parts.len() == 1 {
            parts.pop().expect("one part")
        } else {
            Tensor::cat(parts, 1)
        };
        for block in &self.hidden {
            h = crate::ops::linear(&block.linear, h);
            if let Some(norm) = &block.norm {
                h = norm.forward(h);
            }
            h = act(self.activation, h);
            h = block.dropout.forward(h);
        }
        crate::ops::linear(&self.output, h)
    }
}
