//! Mixed precision ([`Autocast`]): each model kind's training step in bf16 and f16 stays
//! close to its f32 step (loss within 0.1 %, gradients within 3 % (bf16) and 0.5 % (f16) of each parameter's largest),
//! its gradients reach the f32 parameters as f32, the products really ran in half precision
//! (the loss is not f32's to the bit), and with autocast off the step is f32's exactly.

mod common;

use burn::module::Module;
use burn::prelude::{Device, Tensor};
use burn::tensor::{DType, FloatDType};
use common::{cnn, dense_loss, gpt_config, gpt_loss, mlp, text_classifier, text_loss};
use kiln_models::ops::{Autocast, autocast_dtype};
use kiln_models::{Gpt, Network};

/// The loss and every parameter's gradient of one step under `dtype` (f32 when `None`).
fn step<M: Module>(
    model: &M,
    device: &Device,
    loss: &impl Fn(&M, &Device) -> Tensor<1>,
    dtype: Option<FloatDType>,
) -> (f32, Vec<Vec<f32>>) {
    let l = {
        let _autocast = Autocast::enter(dtype);
        loss(model, device)
    };
    assert_eq!(l.dtype(), DType::F32, "the loss is f32 under {dtype:?}");
    let grads = l.clone().backward();
    let mut dtypes = Vec::new();
    model.visit(&mut GradDtypes {
        grads: &grads,
        out: &mut dtypes,
    });
    assert!(
        dtypes.iter().all(|d| *d == DType::F32),
        "gradients under {dtype:?} reach the parameters as {dtypes:?}"
    );
    (
        l.into_scalar::<f32>(),
        common::parameter_grads(model, &grads),
    )
}

struct GradDtypes<'a> {
    grads: &'a burn::tensor::Gradients,
    out: &'a mut Vec<DType>,
}

impl burn::module::ModuleVisitor for GradDtypes<'_> {
    fn visit_float<const D: usize>(&mut self, param: &burn::module::Param<Tensor<D>>) {
        if let Some(g) = param.val().grad(self.grads) {
            self.out.push(g.dtype());
        }
    }
}

fn assert_close_to_f32<M: Module>(
    what: &str,
    build: impl Fn(&Device) -> M,
    loss: impl Fn(&M, &Device) -> Tensor<1>,
) {
    let device = Device::flex().autodiff();
    device.seed(11);
    let model = build(&device);
    let (l32, g32) = step(&model, &device, &loss, None);
    let (off, g_off) = step(&model, &device, &loss, Some(FloatDType::F32));
    assert_eq!(
        l32.to_bits(),
        off.to_bits(),
        "{what}: autocast to f32 is f32"
    );
    assert_eq!(g32, g_off, "{what}: autocast to f32 gives f32's gradients");
    for (dtype, tolerance) in [(FloatDType::BF16, 3e-2), (FloatDType::F16, 5e-3)] {
        let (l, g) = step(&model, &device, &loss, Some(dtype));
        assert_ne!(
            l.to_bits(),
            l32.to_bits(),
            "{what}: {dtype:?} changed nothing"
        );
        assert!(
            (l - l32).abs() <= 1e-3 * l32.abs().max(1.0),
            "{what}: loss {l} in {dtype:?}, {l32} in f32"
        );
        let mut worst = 0f32;
        for (i, (a, b)) in g32.iter().zip(&g).enumerate() {
            assert_eq!(a.len(), b.len(), "{what}: parameter {i}'s gradient");
            let scale = a.iter().fold(1e-3f32, |m, v| m.max(v.abs()));
            let d = common::max_diff(a, b) / scale;
            assert!(
                d <= tolerance,
                "{what}: parameter {i}'s gradient in {dtype:?} differs by {d} of its largest"
            );
            worst = worst.max(d);
        }
        println!("{what}: {dtype:?} loss {l} vs f32 {l32}, gradients within {worst:.1e}");
    }
}

#[test]
fn each_model_kind_trains_in_half_precision_close_to_f32() {
    assert_close_to_f32("GELU MLP", |d| Network::new(&mlp(), d), dense_loss(20));
    assert_close_to_f32("CNN", |d| Network::new(&cnn(), d), dense_loss(96));
    assert_close_to_f32(
        "text classifier, padded rows",
        |d| Network::new(&text_classifier(), d),
        text_loss,
    );
    assert_close_to_f32(
        "GPT (tied head)",
        |d| Gpt::new(&gpt_config(), d),
        gpt_loss(),
    );
}

#[test]
fn autocast_is_per_thread_and_ends_with_its_guard() {
    assert_eq!(autocast_dtype(), None);
    {
        let _outer = Autocast::enter(Some(FloatDType::BF16));
        assert_eq!(autocast_dtype(), Some(FloatDType::BF16));
        {
            let _inner = Autocast::enter(None);
            assert_eq!(autocast_dtype(), None);
        }
        assert_eq!(autocast_dtype(), Some(FloatDType::BF16));
        let other = std::thread::spawn(autocast_dtype).join().unwrap();
        assert_eq!(other, None, "another thread is not under this autocast");
    }
    assert_eq!(autocast_dtype(), None);
}
