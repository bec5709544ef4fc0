//! The shared CPU benchmark workloads (`../shared/bench/WORKLOADS.md`) run through kiln's own
//! code: `Network`/`Gpt` from kiln-models, the trainer's loss (`loss_of`, `lm_loss`),
//! `ParamGrads`, `apply_update` and kiln's Adam/AdamW.
//!
//! - W1: MLP 784-512-256-10, ReLU, cross-entropy, Adam 1e-3, batch 128.
//! - W2: char GPT (vocab 65, context 128, 4 layers, 4 heads, 256 wide, no bias, tied head),
//!   AdamW 3e-4 with weight decay 0.1, batch 16.
//! - W3: PyTorch's MNIST CNN (conv 32, conv 64, max-pool 2, dense 128), Adam 1e-3, batch 64.
//! - W2D: W2 with dropout 0.1 after the embeddings, on the attention probabilities and on each
//!   residual branch (what a default config trains).
//! - W4: text classifier (vocab 8000, 2 encoder blocks, 4 heads, 256 wide, dropout 0.1, mean
//!   pooling, Linear(256, 2)), AdamW 1e-4 with weight decay 0.01, batch 32 of lengths
//!   `32 + (i * 97) % 225` padded to 242.
//! - I1: W2's model, one forward pass over a 128-token prompt, batch 1, no KV cache.
//! - LV (kiln's, not in WORKLOADS.md): W2's step in nanoGPT's CPU "baby" shape (4 layers,
//!   4 heads, 128 wide, context 64, batch 12, tied head) over a 4 616-symbol vocabulary (the
//!   People's Daily characters), where the output head and cross-entropy dominate;
//!   `scripts/torch-large-vocab.py` runs it in PyTorch.
//!
//! The workload bench (`cargo bench -p kiln-train --bench workloads`) times these; the test
//! `tests/workloads.rs` pins the loss after a few steps, so an optimisation that changes what a
//! step computes is caught. Not part of the trainer's API: the benches and tests include this
//! file (`#[path]`), each using what it needs.
#![allow(dead_code)]

use std::time::Instant;

use burn::module::{Module, ModuleMapper, Param};
use burn::prelude::{Device, Int, Tensor, TensorData};
use burn::tensor::FloatDType;
use kiln_config::{Activation, ConvLayer, ModelKind, OptimizerKind, Pooling, TrainerConfig};
use kiln_data::{InputShape, Target};
use kiln_models::{Gpt, GptConfig, Inputs, ModelSpec, Network, TextEncoderSpec};
use kiln_rng::SplitMix64;

use kiln_train::grads::{ParamGrads, apply_update};
use kiln_train::lm::lm_loss;
use kiln_train::optim::{Optimizer, OptimizerSettings};
use kiln_train::{SingleProcess, loss_of};

/// Timed training steps: seconds for the timed steps and the loss of every step (warm-up
/// included), in order.
#[derive(Debug, Clone)]
pub struct StepRun {
    /// Wall seconds of the timed steps.
    pub seconds: f64,
    /// The loss of each step, warm-up steps first.
    pub losses: Vec<f64>,
}

/// Adam or AdamW with PyTorch's defaults (kiln's trainer defaults) and the given weight decay.
pub fn adam(kind: OptimizerKind, weight_decay: f64) -> Optimizer {
    Optimizer::new(OptimizerSettings {
        kind,
        weight_decay,
        ..OptimizerSettings::from(&TrainerConfig::default())
    })
}

/// W1's model: 784-512-256-10 MLP with ReLU.
pub fn mlp_spec() -> ModelSpec {
    ModelSpec {
        kind: ModelKind::Mlp,
        input: InputShape::Flat { width: 784 },
        embeddings: Vec::new(),
        outputs: 10,
        hidden: vec![512, 256],
        activation: Activation::Relu,
        dropout: 0.0,
        batch_norm: false,
        conv: Vec::new(),
        text: None,
        pretrained: None,
    }
}

/// W3's model: PyTorch's MNIST example CNN.
pub fn cnn_spec() -> ModelSpec {
    let conv = |filters, pool| ConvLayer {
        filters,
        kernel: 3,
        stride: 1,
        padding: 0,
        pool,
        batch_norm: false,
        dropout: 0.0,
    };
    ModelSpec {
        kind: ModelKind::Cnn,
        input: InputShape::Image {
            channels: 1,
            height: 28,
            width: 28,
        },
        embeddings: Vec::new(),
        outputs: 10,
        hidden: vec![128],
        activation: Activation::Relu,
        dropout: 0.0,
        batch_norm: false,
        conv: vec![conv(32, 1), conv(64, 2)],
        text: None,
        pretrained: None,
    }
}

/// W4's model: a text classifier with two encoder blocks, mean pooling and a linear head.
pub fn text_spec() -> ModelSpec {
    ModelSpec {
        kind: ModelKind::Transformer,
        input: InputShape::Flat { width: 0 },
        embeddings: Vec::new(),
        outputs: 2,
        hidden: Vec::new(),
        activation: Activation::Gelu,
        dropout: 0.0,
        batch_norm: false,
        conv: Vec::new(),
        text: Some(TextEncoderSpec {
            vocab_size: 8000,
            max_tokens: 256,
            layers: 2,
            heads: 4,
            embd: 256,
            dropout: 0.1,
            bias: true,
            pooling: Pooling::Mean,
            causal: false,
            freeze: Default::default(),
        }),
        pretrained: None,
    }
}

/// W4's text lengths: 32..242, mean 136.3.
pub fn text_lengths() -> Vec<usize> {
    (0..32).map(|i| 32 + (i * 97) % 225).collect()
}

/// W4: `warmup` then `timed` AdamW steps of the text classifier on one fixed batch of random
/// token ids (1..vocab) padded with 0 to the longest row.
pub fn text_classifier_steps(warmup: usize, timed: usize, device: &Device) -> StepRun {
    let spec = text_spec();
    let vocab = spec.text.as_ref().expect("text spec").vocab_size;
    let ad = device.clone().autodiff();
    device.seed(5);
    let model = Network::new(&spec, &ad);
    let optimizer = adam(OptimizerKind::Adamw, 0.01);
    let mut rng = SplitMix64::new(6);
    let lengths = text_lengths();
    let (b, t) = (lengths.len(), *lengths.iter().max().expect("rows"));
    let mut ids = vec![0i64; b * t];
    for (row, &len) in ids.chunks_mut(t).zip(&lengths) {
        for id in &mut row[..len] {
            *id = 1 + rng.below(vocab - 1) as i64;
        }
    }
    let tokens = Tensor::<2, Int>::from_data(TensorData::new(ids, [b, t]), &ad);
    let labels: Vec<u32> = (0..b).map(|_| rng.below(2) as u32).collect();
    let inputs = Inputs {
        x: None,
        categories: None,
        tokens: Some(tokens),
        token_windows: 1,
    };
    let target = Target::Classes(labels);
    fixed_batch_steps(
        (model, optimizer, 1e-4),
        inputs,
        &target,
        (warmup, timed, true),
        device,
    )
}

/// `warmup` then `timed` steps of forward, cross-entropy, backward and an optimizer step with
/// learning rate `lr` on one fixed batch, the workers woken before each step and, with
/// `reseed`, the device reseeded (as the trainer does, so dropout draws the same masks in every
/// run; W1/W3 keep their recorded initialisation, which Burn draws lazily at the first forward).
fn fixed_batch_steps(
    (mut model, mut optimizer, lr): (Network, Optimizer, f64),
    inputs: Inputs,
    target: &Target,
    (warmup, timed, reseed): (usize, usize, bool),
    device: &Device,
) -> StepRun {
    let ad = device.clone().autodiff();
    let batch = match target {
        Target::Classes(v) => v.len(),
        Target::Values(v) => v.len(),
    };
    let rows: Vec<usize> = (0..batch).collect();
    let mut started = Instant::now();
    let mut losses = Vec::with_capacity(warmup + timed);
    for step in 0..warmup + timed {
        if step == warmup {
            started = Instant::now();
        }
        // As the trainer does at every step: wake workers a serial stretch parked.
        kiln_models::ops::keep_workers_ready();
        if reseed {
            device.seed(100 + step as u64);
        }
        let out = model.forward(inputs.clone());
        let loss = loss_of(out, target, &rows, None, &ad);
        let grads = ParamGrads::collect(&model, loss.backward());
        losses.push(loss.into_scalar::<f64>());
        model = apply_update(
            model,
            grads,
            &mut SingleProcess,
            0.0,
            &mut optimizer,
            lr,
            None,
        )
        .expect("single process")
        .model;
    }
    StepRun {
        seconds: started.elapsed().as_secs_f64(),
        losses,
    }
}

/// W2's and I1's model: the char GPT, tied head, no bias, no dropout.
pub fn gpt_config() -> GptConfig {
    GptConfig {
        vocab_size: 65,
        context: 128,
        layers: 4,
        heads: 4,
        embd: 256,
        dropout: 0.0,
        bias: false,
        tied_head: true,
    }
}

/// LV's model: nanoGPT's CPU "baby" shape with the People's Daily character vocabulary.
pub fn large_vocabulary_config() -> GptConfig {
    GptConfig {
        vocab_size: 4616,
        context: 64,
        layers: 4,
        heads: 4,
        embd: 128,
        dropout: 0.0,
        bias: false,
        tied_head: true,
    }
}

fn uniform(rng: &mut SplitMix64, n: usize) -> Vec<f32> {
    (0..n)
        .map(|_| (rng.next_u64() >> 40) as f32 / (1u64 << 24) as f32)
        .collect()
}

/// W1/W3: `warmup` then `timed` steps of forward, cross-entropy, backward and an Adam step on
/// one fixed batch of uniform inputs and random labels.
pub fn classifier_steps(
    spec: &ModelSpec,
    batch: usize,
    warmup: usize,
    timed: usize,
    device: &Device,
) -> StepRun {
    let ad = device.clone().autodiff();
    device.seed(1);
    let model = Network::new(spec, &ad);
    let optimizer = adam(OptimizerKind::Adam, 0.0);
    let mut rng = SplitMix64::new(2);
    let x = Tensor::<2>::from_data(
        TensorData::new(
            uniform(&mut rng, batch * spec.input.size()),
            [batch, spec.input.size()],
        ),
        &ad,
    );
    let labels: Vec<u32> = (0..batch).map(|_| rng.below(spec.outputs) as u32).collect();
    fixed_batch_steps(
        (model, optimizer, 1e-3),
        Inputs::dense(x),
        &Target::Classes(labels),
        (warmup, timed, false),
        device,
    )
}

/// Casts every float parameter to a dtype, as a fresh trainable leaf (mixed-precision runs).
pub struct CastParams(pub FloatDType);

impl ModuleMapper for CastParams {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let dtype = self.0;
        param.map(|t| t.cast(dtype).detach().require_grad())
    }
}

/// W2: `warmup` then `timed` AdamW steps of the GPT on fresh random token windows of
/// `batch` x `context`.
pub fn gpt_steps(
    cfg: &GptConfig,
    batch: usize,
    warmup: usize,
    timed: usize,
    device: &Device,
) -> StepRun {
    gpt_steps_in(cfg, batch, warmup, timed, FloatDType::F32, device)
}

/// [`gpt_steps`] with every parameter (hence activations, gradients and optimizer state) in
/// `dtype`, initialised from the same f32 weights.
pub fn gpt_steps_in(
    cfg: &GptConfig,
    batch: usize,
    warmup: usize,
    timed: usize,
    dtype: FloatDType,
    device: &Device,
) -> StepRun {
    let (b, t) = (batch, cfg.context);
    let ad = device.clone().autodiff();
    device.seed(3);
    let mut model = Gpt::new(cfg, &ad);
    if dtype != FloatDType::F32 {
        model = model.map(&mut CastParams(dtype));
    }
    let mut optimizer = adam(OptimizerKind::Adamw, 0.1);
    let mut rng = SplitMix64::new(4);
    let mut started = Instant::now();
    let mut losses = Vec::with_capacity(warmup + timed);
    for step in 0..warmup + timed {
        if step == warmup {
            started = Instant::now();
        }
        // As the trainer does at every step: wake workers a serial stretch parked.
        kiln_models::ops::keep_workers_ready();
        let tokens: Vec<i64> = (0..b * (t + 1))
            .map(|_| rng.below(cfg.vocab_size) as i64)
            .collect();
        let (mut x, mut y) = (Vec::with_capacity(b * t), Vec::with_capacity(b * t));
        for row in tokens.chunks(t + 1) {
            x.extend_from_slice(&row[..t]);
            y.extend_from_slice(&row[1..]);
        }
        let loss = lm_loss(&model, x, y, b, t, &ad);
        let grads = ParamGrads::collect(&model, loss.backward());
        losses.push(loss.into_scalar::<f64>());
        model = apply_update(
            model,
            grads,
            &mut SingleProcess,
            0.0,
            &mut optimizer,
            3e-4,
            None,
        )
        .expect("single process")
        .model;
    }
    StepRun {
        seconds: started.elapsed().as_secs_f64(),
        losses,
    }
}

/// I1: per-run seconds of `runs` forward passes (after `warmup`) of the GPT over one
/// `prompt`-token window, and the logits of the last run.
pub fn gpt_forward_latency(
    cfg: &GptConfig,
    prompt: usize,
    warmup: usize,
    runs: usize,
    device: &Device,
) -> (Vec<f64>, Vec<f32>) {
    device.seed(5);
    let model = Gpt::new(cfg, device);
    let mut rng = SplitMix64::new(6);
    let ids: Vec<i64> = (0..prompt)
        .map(|_| rng.below(cfg.vocab_size) as i64)
        .collect();
    let x = Tensor::<2, Int>::from_data(TensorData::new(ids, [1, prompt]), device);
    let mut times = Vec::with_capacity(runs);
    let mut logits = Vec::new();
    for i in 0..warmup + runs {
        kiln_models::ops::keep_workers_ready();
        let started = Instant::now();
        let out = model.forward(x.clone()).into_data();
        if i >= warmup {
            times.push(started.elapsed().as_secs_f64());
        }
        if i + 1 == warmup + runs {
            logits = out.convert::<f32>().try_into_vec::<f32>().expect("f32");
        }
    }
    (times, logits)
}

/// The input pipeline alone: samples per second that the trainer's batch assembly
/// (`evaluate::batch_inputs`: rows gathered in shuffled order into a tensor, as every
/// training step does before its forward) delivers for `rows` encoded images of `shape`,
/// batches of `batch`, over `epochs` passes. Compared with a workload's step rate, it says what
/// share of a step waits on data.
pub fn loader_samples_per_second(
    rows: usize,
    shape: InputShape,
    batch: usize,
    epochs: usize,
    device: &Device,
) -> f64 {
    let mut rng = SplitMix64::new(7);
    let data = kiln_data::Encoded {
        x: uniform(&mut rng, rows * shape.size()),
        rows,
        shape,
        categories: Vec::new(),
        tokens: Vec::new(),
        seq_len: 0,
        windows: 1,
        texts_truncated: 0,
        cardinalities: Vec::new(),
        y: None,
        ids: None,
        source_rows: (0..rows).collect(),
        unknown_categories: Default::default(),
        missing_filled: 0,
        missing_dropped: 0,
        missing_target_dropped: 0,
    };
    let mut order: Vec<usize> = (0..rows).collect();
    let started = Instant::now();
    for _ in 0..epochs {
        rng.shuffle(&mut order);
        for idx in order.chunks(batch) {
            std::hint::black_box(kiln_train::evaluate::batch_inputs(&data, idx, device));
        }
    }
    (rows * epochs) as f64 / started.elapsed().as_secs_f64()
}

/// Model FLOPs per trained token of a GPT, as nanoGPT's `estimate_mfu` (PaLM appendix B)
/// counts them: 6 per non-embedding parameter (forward 2, backward 4; the tied head's
/// matmul is the token embedding's) plus attention's 12 x layers x width x context.
pub fn gpt_flops_per_token(cfg: &GptConfig, parameters: usize) -> f64 {
    let non_embedding = parameters - cfg.context * cfg.embd;
    6.0 * non_embedding as f64 + 12.0 * (cfg.layers * cfg.embd * cfg.context) as f64
}

/// The matrix products of the roofline figure: a square 1024 product (what a BLAS peaks on)
/// and W2's own shapes (batch x context = 2048 rows; qkv, attention output, MLP up, MLP down).
pub const MATMUL_SHAPES: [(usize, usize, usize); 5] = [
    (1024, 1024, 1024),
    (2048, 256, 768),
    (2048, 256, 256),
    (2048, 256, 1024),
    (2048, 1024, 256),
];

/// Best-of-`repeats` GFLOP/s of kiln's f32 matmul (`kiln_models::ops::matmul`, the product
/// behind its linear layers; on Flex the `gemm` crate's kernels) for an `m x k` by `k x n`
/// product.
pub fn matmul_gflops(m: usize, k: usize, n: usize, repeats: usize, device: &Device) -> f64 {
    let mut rng = SplitMix64::new(7);
    let a = Tensor::<2>::from_data(TensorData::new(uniform(&mut rng, m * k), [m, k]), device);
    let b = Tensor::<2>::from_data(TensorData::new(uniform(&mut rng, k * n), [k, n]), device);
    let _ = kiln_models::ops::matmul(a.clone(), b.clone()).into_data();
    let mut best = f64::INFINITY;
    for _ in 0..repeats {
        let started = Instant::now();
        let _ = kiln_models::ops::matmul(a.clone(), b.clone()).into_data();
        best = best.min(started.elapsed().as_secs_f64());
    }
    2.0 * (m * k * n) as f64 / best / 1e9
}
