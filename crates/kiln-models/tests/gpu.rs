//! The GPU device (wgpu; in CI the software Vulkan driver, lavapipe) computes what the CPU
//! device computes: each model kind's loss within 1e-5, every parameter's gradient within
//! 1e-3 of its largest, inference outputs within 1e-5, greedy generation through the KV cache
//! token for token. The same weights on both: built on the CPU, copied to the GPU. Dropout is
//! off: its masks come from each device's own random stream.
//!
//! Skipped, with the reason printed, where the build has no GPU runtime or the machine no
//! adapter.
#![cfg(feature = "wgpu")]

mod common;

use std::sync::Arc;

use burn::module::Module;
use burn::prelude::{Device, Int, Tensor, TensorData};
use kiln_config::{Activation, ConvLayer, DeviceRequest, ModelKind, Pooling};
use kiln_models::device::{OpenedDevice, open};
use kiln_models::{
    Gpt, GptConfig, InputShape, Inputs, ModelSpec, Network, SamplingConfig, TextEncoderSpec,
    generate,
};

/// The GPU, or `None` with the reason printed.
fn gpu() -> Option<OpenedDevice> {
    match open(DeviceRequest::Gpu(None)) {
        Ok(gpu) => {
            println!("GPU device: {}", gpu.description);
            Some(gpu)
        }
        Err(e) => {
            println!("skipped: no GPU device to test: {e}");
            None
        }
    }
}

/// `model`'s loss and gradients on `device` (autodiff on).
fn loss_and_grads<M: Module>(
    model: &M,
    device: &Device,
    loss: &impl Fn(&M, &Device) -> Tensor<1>,
) -> (f32, Vec<Vec<f32>>) {
    let model = model.clone().fork(device);
    let l = loss(&model, device);
    let grads = l.clone().backward();
    let out = common::parameter_grads(&model, &grads);
    (l.into_scalar::<f32>(), out)
}

/// One step of `model` on the CPU and on the GPU: the same loss and gradients.
fn assert_same_step<M: Module>(
    what: &str,
    build: impl Fn(&Device) -> M,
    gpu: &Device,
    loss: impl Fn(&M, &Device) -> Tensor<1>,
) {
    let cpu = Device::flex().autodiff();
    cpu.seed(7);
    let model = build(&cpu);
    let (lc, gc) = loss_and_grads(&model, &cpu, &loss);
    let (lg, gg) = loss_and_grads(&model, &gpu.clone().autodiff(), &loss);
    assert!(
        (lc - lg).abs() <= 1e-5 * lc.abs().max(1.0),
        "{what}: loss {lc} on the CPU, {lg} on the GPU"
    );
    assert_eq!(gc.len(), gg.len(), "{what}: parameter count");
    let mut compared = 0;
    let mut worst = 0f32;
    for (i, (a, b)) in gc.iter().zip(&gg).enumerate() {
        assert_eq!(a.len(), b.len(), "{what}: parameter {i}'s gradient");
        let scale = a.iter().fold(1e-3f32, |m, v| m.max(v.abs()));
        let d = common::max_diff(a, b) / scale;
        assert!(
            d <= 1e-3,
            "{what}: parameter {i}'s gradient differs by {d} of its largest value"
        );
        worst = worst.max(d);
        compared += usize::from(!a.is_empty());
    }
    assert!(compared > 0, "{what}: no gradients compared");
    println!(
        "{what}: loss {lc} (CPU) vs {lg} (GPU), gradients within {worst:.1e} of their largest"
    );
}

fn pixels(rows: usize, width: usize) -> Vec<f32> {
    (0..rows * width)
        .map(|i| ((i * 37) % 101) as f32 / 50.0 - 1.0)
        .collect()
}

fn dense_loss(width: usize) -> impl Fn(&Network, &Device) -> Tensor<1> {
    move |m, device| {
        let x = Tensor::<2>::from_data(TensorData::new(pixels(5, width), [5, width]), device);
        common::mean_cross_entropy(m.forward(Inputs::dense(x)), &[0, 1, 2, 0, 1])
    }
}

fn mlp() -> ModelSpec {
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

fn cnn() -> ModelSpec {
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

fn text_classifier() -> ModelSpec {
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
fn padded_tokens(device: &Device) -> Tensor<2, Int> {
    Tensor::from_data(TensorData::new(common::padded_ids(), [4, 12]), device)
}

fn gpt_config() -> GptConfig {
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

fn gpt_tokens(device: &Device) -> Tensor<2, Int> {
    let tokens: Vec<i64> = (0..3 * 24).map(|i| (i * 7 + 3) % 29).collect();
    Tensor::from_data(TensorData::new(tokens, [3, 24]), device)
}

#[test]
fn each_model_kind_takes_the_same_training_step_on_the_gpu() {
    let Some(gpu) = gpu() else { return };
    let gpu = &gpu.device;
    assert_same_step("GELU MLP", |d| Network::new(&mlp(), d), gpu, dense_loss(20));
    assert_same_step("CNN", |d| Network::new(&cnn(), d), gpu, dense_loss(96));
    assert_same_step(
        "text classifier, padded rows",
        |d| Network::new(&text_classifier(), d),
        gpu,
        |m, d| {
            let out = m.forward(Inputs {
                x: None,
                categories: None,
                tokens: Some(padded_tokens(d)),
            });
            common::mean_cross_entropy(out, &[0, 1, 2, 1])
        },
    );
    let targets: Arc<[u32]> = (0..3 * 24).map(|i| ((i * 7 + 4) % 29) as u32).collect();
    assert_same_step(
        "GPT (tied head)",
        |d| Gpt::new(&gpt_config(), d),
        gpu,
        |m, d| m.loss(gpt_tokens(d), targets.clone()),
    );
}

#[test]
fn inference_and_generation_agree_with_the_cpu() {
    let Some(gpu) = gpu() else { return };
    let gpu = &gpu.device;
    let cpu = Device::flex();
    cpu.seed(3);
    let text = Network::new(&text_classifier(), &cpu);
    let infer = |m: &Network, d: &Device| {
        common::values(m.clone().to_device(d).forward(Inputs {
            x: None,
            categories: None,
            tokens: Some(padded_tokens(d)),
        }))
    };
    let d = common::max_diff(&infer(&text, &cpu), &infer(&text, gpu));
    assert!(d < 1e-5, "text classifier outputs differ by {d}");
    let cnn = Network::new(&cnn(), &cpu);
    let x = |d: &Device| Tensor::<2>::from_data(TensorData::new(pixels(5, 96), [5, 96]), d);
    let d = common::max_diff(
        &common::values(cnn.forward(Inputs::dense(x(&cpu)))),
        &common::values(cnn.clone().to_device(gpu).forward(Inputs::dense(x(gpu)))),
    );
    assert!(d < 1e-5, "CNN outputs differ by {d}");

    let model = Gpt::new(&gpt_config(), &cpu);
    let greedy = SamplingConfig {
        temperature: 0.0,
        ..SamplingConfig::default()
    };
    let run = |m: &Gpt, d: &Device| {
        generate(m, &[1, 5, 9], 20, &greedy, d, |_| {
            std::ops::ControlFlow::Continue(())
        })
    };
    let on_cpu = run(&model, &cpu);
    let on_gpu = run(&model.clone().to_device(gpu), gpu);
    assert_eq!(on_cpu, on_gpu, "greedy generation through the KV cache");
}
