use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::nn::{
    BatchNorm, BatchNormConfig, Dropout, DropoutConfig, Embedding, EmbeddingConfig, Linear,
    LinearConfig, PaddingConfig2d,
};
use burn::prelude::{Device, Int, Tensor, TensorData};
use burn::tensor::activation;
use kiln_config::{Activation, ModelKind, Pooling};

use crate::bert::Bert;
use crate::encoder::{TextEncoder, padding_on_host, pool};
use kiln_spec::{InputShape, ModelSpec, PretrainedEncoderSpec};

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
    bert: Option<Bert>,
    hidden: Vec<DenseBlock>,
    output: Linear,
    #[module(skip)]
    pooling: Pooling,
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
    /// Windows each row of `tokens` holds, `tokens / token_windows` ids each: the model
    /// pools every window that holds a token and averages them (1: the row is one window).
    pub token_windows: usize,
}

impl Inputs {
    /// Dense inputs only.
    pub fn dense(x: Tensor<2>) -> Self {
        Self {
            x: Some(x),
            categories: None,
            tokens: None,
            token_windows: 1,
        }
    }
}

/// The raw outputs of a forward pass: logits for classification, standardised values for
/// regression.
pub type Outputs = Tensor<2>;

/// A convolution with the inference-mode batch norm after it folded in (weight `w·s`, bias
/// `(b − mean)·s + β`, `s = γ / √(var + ε)`).
fn fold_batch_norm(conv: &Conv2d, norm: &BatchNorm) -> Conv2d {
    use burn::module::Param;
    let device = conv.weight.device();
    let mean = norm.running_mean.value().to_device(&device);
    let var = norm.running_var.value().to_device(&device);
    let scale = norm.gamma.val() / (var + norm.epsilon).sqrt();
    let [channels] = scale.dims();
    let weight = conv.weight.val() * scale.clone().reshape([channels, 1, 1, 1]);
    let shifted = match &conv.bias {
        Some(bias) => bias.val() - mean,
        None => -mean,
    };
    let mut folded = conv.clone();
    folded.weight = Param::from_tensor(weight);
    folded.bias = Some(Param::from_tensor(shifted * scale + norm.beta.val()));
    folded
}

fn act<const D: usize>(a: Activation, x: Tensor<D>) -> Tensor<D> {
    match a {
        Activation::Relu => activation::relu(x),
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
        let bert = spec
            .pretrained
            .as_ref()
            .map(|p| prepare_pretrained(Bert::new(&p.bert, device), p, device));
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
            bert,
            hidden,
            output,
            pooling: spec
                .pretrained
                .as_ref()
                .map(|p| p.pooling)
                .unwrap_or_default(),
            activation: spec.activation,
            input: spec.input,
        }
    }

    /// This network with `bert` (a checkpoint's weights, of `spec.pretrained`'s shape) as its
    /// pretrained encoder, adapters added and parts frozen as the spec says: where
    /// fine-tuning starts. A network without a pretrained encoder is returned as it is.
    pub fn with_pretrained_encoder(
        mut self,
        bert: Bert,
        spec: &ModelSpec,
        device: &Device,
    ) -> Self {
        if let Some(p) = &spec.pretrained {
            self.bert = Some(prepare_pretrained(bert, p, device));
        }
        self
    }

    /// This network with the parts `spec` freezes frozen again (after loading weights, which
    /// may mark every parameter trainable).
    pub fn frozen_as(mut self, spec: &ModelSpec) -> Self {
        if let (Some(p), Some(bert)) = (&spec.pretrained, self.bert.take()) {
            self.bert = Some(bert.frozen(p.freeze, p.lora.is_some()));
        }
        if let (Some(t), Some(text)) = (&spec.text, self.text.take()) {
            self.text = Some(text.frozen(t.freeze));
        }
        self
    }

    /// The pretrained encoder, if the network has one.
    pub fn pretrained_encoder(&self) -> Option<&Bert> {
        self.bert.as_ref()
    }

    /// The network for inference only (serving): each convolution's batch norm folded into
    /// it, so a forward makes one pass over the activations where it made five. Outputs
    /// equal the unfolded network's in inference mode within float rounding; the result
    /// has no batch-norm parameters and must not be trained or saved.
    pub fn folded_for_inference(mut self) -> Self {
        for block in &mut self.convs {
            if let Some(norm) = block.norm.take() {
                block.conv = fold_batch_norm(&block.conv, &norm);
            }
        }
        self.bert = self.bert.take().map(Bert::merge_lora);
        self
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
                    // ReLU and a pool with no norm in between: conv, ReLU and pool in one
                    // pass where kiln has it (inference on the host), the two ops otherwise.
                    if block.pool.is_some()
                        && block.norm.is_none()
                        && self.activation == Activation::Relu
                    {
                        img = crate::ops::conv2d_relu_max_pool2d(&block.conv, img, block.pool_size);
                        img = block.dropout.forward(img);
                        continue;
                    }
                    img = crate::ops::conv2d(&block.conv, img);
                    if let Some(norm) = &block.norm {
                        img = norm.forward(img);
                    }
                    let k = block.pool_size;
                    img = match &block.pool {
                        // One pass each way (kiln's op; ReLU commutes with the max).
                        Some(_) if self.activation == Activation::Relu => {
                            crate::ops::relu_max_pool2d(img, k)
                        }
                        // Max-pool commutes with a strictly increasing activation (max of f
                        // = f of max, the same element chosen), so pool first and activate
                        // a quarter of the values.
                        Some(pool) if self.activation == Activation::LeakyRelu => {
                            act(self.activation, crate::ops::max_pool2d(pool, k, img))
                        }
                        Some(pool) => crate::ops::max_pool2d(pool, k, act(self.activation, img)),
                        None => act(self.activation, img),
                    };
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
            parts.push(pool_windows(tokens, inputs.token_windows, |t| {
                encoder.forward(t)
            }));
        } else if let Some(bert) = &self.bert {
            let tokens = inputs.tokens.expect("the model reads text: pass token ids");
            parts.push(pool_windows(tokens, inputs.token_windows, |tokens| {
                // Token ids are the tokenizer's + 1, 0 pads.
                let pad = tokens.clone().equal_elem(0);
                let padding = padding_on_host(&pad);
                let states = bert.forward((tokens - 1).clamp_min(0), padding);
                pool(states, pad, self.pooling)
            }));
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

/// `encode` (token ids `[N, T]` to pooled states `[N, C]`) of each row of `tokens`
/// `[B, windows * T]`: with one window, of the row; otherwise of the windows that hold a
/// token only, their pooled states averaged per row (a row without any pools to zeros).
fn pool_windows(
    tokens: Tensor<2, Int>,
    windows: usize,
    encode: impl Fn(Tensor<2, Int>) -> Tensor<2>,
) -> Tensor<2> {
    if windows <= 1 {
        return encode(tokens);
    }
    let [b, width] = tokens.dims();
    assert!(
        width.is_multiple_of(windows),
        "{width} tokens per row do not split into {windows} windows"
    );
    let t = width / windows;
    let device = tokens.device();
    let tokens = tokens.reshape([b * windows, t]);
    let pad = padding_on_host(&tokens.clone().equal_elem(0));
    let used: Vec<usize> = (0..b * windows)
        .filter(|&w| pad[w * t..(w + 1) * t].iter().any(|&p| !p))
        .collect();
    if used.is_empty() {
        // Nothing but padding: every row pools as one empty window.
        let first: Vec<i64> = (0..b).map(|r| (r * windows) as i64).collect();
        let first = Tensor::<1, Int>::from_data(TensorData::new(first, [b]), &device);
        return encode(tokens.select(0, first));
    }
    let mut count = vec![0usize; b];
    for &w in &used {
        count[w / windows] += 1;
    }
    // [B, used]: 1 / (windows the row uses) where window k belongs to the row.
    let mut average = vec![0f32; b * used.len()];
    for (k, &w) in used.iter().enumerate() {
        let row = w / windows;
        average[row * used.len() + k] = 1.0 / count[row] as f32;
    }
    let n = used.len();
    let used: Vec<i64> = used.into_iter().map(|w| w as i64).collect();
    let used = Tensor::<1, Int>::from_data(TensorData::new(used, [n]), &device);
    let pooled = encode(tokens.select(0, used)); // [used, C]
    let average = Tensor::<2>::from_data(TensorData::new(average, [b, n]), &device);
    average.matmul(pooled)
}

/// A pretrained encoder with the spec's adapters and frozen parts.
fn prepare_pretrained(bert: Bert, spec: &PretrainedEncoderSpec, device: &Device) -> Bert {
    let bert = match &spec.lora {
        Some(lora) => bert.with_lora(lora, device),
        None => bert,
    };
    bert.frozen(spec.freeze, spec.lora.is_some())
}

#[cfg(test)]
mod tests {
    use burn::module::{Param, RunningState};
    use burn::nn::BatchNormConfig;
    use burn::nn::conv::Conv2dConfig;
    use burn::prelude::{Device, Tensor, TensorData};

    /// The folded convolution + batch norm equals the two layers one after the other, with
    /// running statistics, scale and shift away from their initial values.
    #[test]
    fn folded_batch_norm_equals_conv_then_norm() {
        let device = Device::flex();
        let values = |n: usize, step: usize, lo: f32| -> Vec<f32> {
            (0..n)
                .map(|i| lo + ((i * step) % 17) as f32 / 8.0)
                .collect()
        };
        for bias in [true, false] {
            device.seed(3);
            let conv = Conv2dConfig::new([3, 5], [3, 3])
                .with_bias(bias)
                .init(&device);
            let mut norm = BatchNormConfig::new(5).init(&device);
            let t = |v: Vec<f32>| Tensor::<1>::from_data(TensorData::new(v, [5]), &device);
            norm.gamma = Param::from_tensor(t(values(5, 3, 0.3)));
            norm.beta = Param::from_tensor(t(values(5, 5, -1.0)));
            norm.running_mean = RunningState::new(t(values(5, 7, -0.5)));
            norm.running_var = RunningState::new(t(values(5, 11, 0.2)));
            let x = Tensor::<4>::from_data(
                TensorData::new(values(2 * 3 * 7 * 6, 13, -1.0), [2, 3, 7, 6]),
                &device,
            );
            let want = norm.forward(conv.forward(x.clone()));
            let got = crate::ops::conv2d(&super::fold_batch_norm(&conv, &norm), x);
            let (want, got) = (
                want.into_data().try_to_vec::<f32>().unwrap(),
                got.into_data().try_to_vec::<f32>().unwrap(),
            );
            let scale = want.iter().fold(1.0f32, |m, v| m.max(v.abs()));
            let diff = want
                .iter()
                .zip(&got)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max);
            assert!(
                diff <= 1e-5 * scale,
                "bias {bias}: differs by {diff} (scale {scale})"
            );
        }
    }
}
