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

use burn::module::Module;
use burn::prelude::{Device, Tensor, TensorData};
use burn::tensor::FloatDType;
use common::{
    cnn, dense_loss, gpt_config, gpt_loss, mlp, padded_tokens, pixels, text_classifier, text_loss,
};
use kiln_config::DeviceRequest;
use kiln_models::device::{OpenedDevice, open};
use kiln_models::ops::Autocast;
use kiln_models::{Gpt, Inputs, Network, SamplingConfig, generate};

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

/// `model`'s loss and gradients on `device` (autodiff on), its products in `precision`.
fn loss_and_grads<M: Module>(
    model: &M,
    device: &Device,
    loss: &impl Fn(&M, &Device) -> Tensor<1>,
    precision: Option<FloatDType>,
) -> (f32, Vec<Vec<f32>>) {
    let model = model.clone().fork(device);
    let l = {
        let _autocast = Autocast::enter(precision);
        loss(&model, device)
    };
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
    assert_same_step_in(what, build, gpu, loss, [None, None], [1e-5, 1e-3]);
}

/// [`assert_same_step`] with the products in `precision[0]` on the CPU and `precision[1]` on
/// the GPU, the loss within `tolerance[0]` and gradients within `tolerance[1]` of their largest.
fn assert_same_step_in<M: Module>(
    what: &str,
    build: impl Fn(&Device) -> M,
    gpu: &Device,
    loss: impl Fn(&M, &Device) -> Tensor<1>,
    precision: [Option<FloatDType>; 2],
    tolerance: [f32; 2],
) {
    let cpu = Device::flex().autodiff();
    cpu.seed(7);
    let model = build(&cpu);
    let (lc, gc) = loss_and_grads(&model, &cpu, &loss, precision[0]);
    let (lg, gg) = loss_and_grads(&model, &gpu.clone().autodiff(), &loss, precision[1]);
    assert!(
        (lc - lg).abs() <= tolerance[0] * lc.abs().max(1.0),
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
            d <= tolerance[1],
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
        text_loss,
    );
    assert_same_step(
        "GPT (tied head)",
        |d| Gpt::new(&gpt_config(), d),
        gpu,
        gpt_loss(),
    );
}

/// float16 mixed precision where the adapter computes in f16 (Debian's lavapipe 22.3.6-1+deb12u2
/// does): each model kind's f16 step on the GPU is as close to the CPU's f32 step as
/// `tests/precision.rs` asks of the CPU's own f16 step (loss 1e-3, gradients 5e-3 of their
/// largest). Not GPU f16 against CPU f16: the two round and accumulate differently, so each may
/// sit on its own side of f32. bfloat16: WGSL has no
/// such type, so the adapter must say it cannot.
#[test]
fn mixed_precision_steps_follow_the_cpu() {
    let Some(gpu) = gpu() else { return };
    let gpu = &gpu.device;
    assert!(
        !gpu.supports_dtype(FloatDType::BF16),
        "a wgpu adapter claims bfloat16"
    );
    if !gpu.supports_dtype(FloatDType::F16) {
        println!("skipped: this adapter has no float16");
        return;
    }
    let f16 = [None, Some(FloatDType::F16)];
    let tolerance = [1e-3, 5e-3];
    assert_same_step_in(
        "GELU MLP in f16",
        |d| Network::new(&mlp(), d),
        gpu,
        dense_loss(20),
        f16,
        tolerance,
    );
    assert_same_step_in(
        "CNN in f16",
        |d| Network::new(&cnn(), d),
        gpu,
        dense_loss(96),
        f16,
        tolerance,
    );
    assert_same_step_in(
        "GPT in f16",
        |d| Gpt::new(&gpt_config(), d),
        gpu,
        gpt_loss(),
        f16,
        tolerance,
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
            token_windows: 1,
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
