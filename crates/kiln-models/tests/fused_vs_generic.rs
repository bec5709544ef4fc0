//! Every fused kernel has a generic form (Burn's ops, what any other device runs) that gives
//! the same values and gradients: whole models run through both, and the attention op with
//! padding and dropout against an op-by-op form differentiated by Burn's autodiff.
//!
//! One test function: the fused/generic switch is process-wide.

mod common;

use std::sync::Arc;

use burn::module::Module;
use burn::prelude::{Bool, Device, Int, Tensor, TensorData};
use burn::tensor::activation::softmax;
use kiln_config::{Activation, ConvLayer, ModelKind, Pooling};
use kiln_models::ops::{self, AttentionSpec, DropoutMask};
use kiln_models::{Gpt, GptConfig, InputShape, Inputs, ModelSpec, Network, TextEncoderSpec};

/// The loss and every parameter's gradient of `run` with fused kernels on or off.
fn loss_and_grads<M: Module>(
    fused: bool,
    device: &Device,
    build: impl Fn(&Device) -> M,
    loss: impl Fn(&M) -> Tensor<1>,
) -> (f32, Vec<Vec<f32>>) {
    ops::set_fused_kernels(fused);
    device.seed(11);
    let model = build(device);
    // The same dropout masks on both paths: the residual dropouts draw from the device's
    // stream, the attention dropout from a seed drawn from it.
    device.seed(12);
    let l = loss(&model);
    let grads = l.clone().backward();
    let out = common::parameter_grads(&model, &grads);
    ops::set_fused_kernels(true);
    (l.into_scalar::<f32>(), out)
}

fn assert_same(what: &str, fused: (f32, Vec<Vec<f32>>), generic: (f32, Vec<Vec<f32>>)) {
    let (lf, gf) = fused;
    let (lg, gg) = generic;
    assert!(
        (lf - lg).abs() <= 1e-5 * lg.abs().max(1.0),
        "{what}: loss {lf} fused, {lg} generic"
    );
    assert_eq!(gf.len(), gg.len(), "{what}: parameter count");
    let mut compared = 0;
    for (i, (a, b)) in gf.iter().zip(&gg).enumerate() {
        assert_eq!(
            a.len(),
            b.len(),
            "{what}: parameter {i} has no gradient on one path"
        );
        let scale = b.iter().fold(1e-3f32, |m, v| m.max(v.abs()));
        let d = common::max_diff(a, b);
        assert!(
            d <= 2e-4 * scale,
            "{what}: parameter {i}'s gradient differs by {d} (scale {scale})"
        );
        compared += usize::from(!a.is_empty());
    }
    assert!(compared > 0, "{what}: no gradients compared");
}

#[test]
fn fused_and_generic_paths_agree_on_values_and_gradients() {
    let ad = Device::flex().autodiff();
    attention_op_matches_an_op_by_op_form(&ad);
    a_row_of_padding_only_attends_uniformly_whatever_its_scores(&ad);

    // GPT with dropout everywhere nanoGPT puts it (what a default config trains).
    let gpt = GptConfig {
        vocab_size: 29,
        context: 24,
        layers: 2,
        heads: 4,
        embd: 32,
        dropout: 0.1,
        bias: true,
        tied_head: false,
    };
    let tokens: Vec<i64> = (0..3 * 24).map(|i| (i * 7 + 3) % 29).collect();
    let gpt_loss = |m: &Gpt| {
        let x = Tensor::<2, Int>::from_data(TensorData::new(tokens.clone(), [3, 24]), &ad);
        let logits = m.forward(x);
        let targets: Vec<i64> = tokens.iter().map(|t| (t + 1) % 29).collect();
        common::mean_cross_entropy(logits.reshape([3 * 24, 29]), &targets)
    };
    let build = |d: &Device| Gpt::new(&gpt, d);
    assert_same(
        "GPT, dropout 0.1",
        loss_and_grads(true, &ad, build, gpt_loss),
        loss_and_grads(false, &ad, build, gpt_loss),
    );
    // The training loss through the fused head + cross-entropy, untied and tied heads: the
    // same values and gradients on both paths and as the logits' cross-entropy above.
    let targets: Arc<[u32]> = tokens.iter().map(|&t| ((t + 1) % 29) as u32).collect();
    let head_loss = |m: &Gpt| {
        let x = Tensor::<2, Int>::from_data(TensorData::new(tokens.clone(), [3, 24]), &ad);
        m.loss(x, targets.clone())
    };
    for tied_head in [false, true] {
        let cfg = GptConfig {
            tied_head,
            ..gpt.clone()
        };
        let build = |d: &Device| Gpt::new(&cfg, d);
        let fused = loss_and_grads(true, &ad, build, head_loss);
        assert_same(
            &format!("GPT loss, fused head (tied: {tied_head})"),
            fused.clone(),
            loss_and_grads(false, &ad, build, head_loss),
        );
        assert_same(
            &format!("GPT loss, fused head against the logits (tied: {tied_head})"),
            fused,
            loss_and_grads(false, &ad, build, gpt_loss),
        );
    }
    cross_entropy_head_matches_burns_loss(&ad);

    // A text classifier on padded rows (one of them empty), with dropout.
    let text = ModelSpec {
        kind: ModelKind::Transformer,
        input: InputShape::Flat { width: 0 },
        embeddings: vec![],
        outputs: 3,
        hidden: vec![16],
        activation: Activation::Gelu,
        dropout: 0.1,
        batch_norm: false,
        conv: vec![],
        text: Some(TextEncoderSpec {
            vocab_size: 40,
            max_tokens: 12,
            layers: 2,
            heads: 4,
            embd: 32,
            dropout: 0.1,
            bias: true,
            pooling: Pooling::MeanMax,
            causal: false,
            freeze: Default::default(),
        }),
        pretrained: None,
    };
    let ids = common::padded_ids();
    let text_loss = |m: &Network| {
        let tokens = Tensor::<2, Int>::from_data(TensorData::new(ids.clone(), [4, 12]), &ad);
        let out = m.forward(Inputs {
            x: None,
            categories: None,
            tokens: Some(tokens),
            token_windows: 1,
        });
        common::mean_cross_entropy(out, &[0, 1, 2, 1])
    };
    let build = |d: &Device| Network::new(&text, d);
    assert_same(
        "text classifier, padding and dropout",
        loss_and_grads(true, &ad, build, text_loss),
        loss_and_grads(false, &ad, build, text_loss),
    );

    // A CNN (convolution, ReLU + max-pool, linear layers) and a GELU MLP.
    let conv = |filters| ConvLayer {
        filters,
        kernel: 3,
        stride: 1,
        padding: 1,
        pool: 2,
        batch_norm: false,
        dropout: 0.0,
    };
    let cnn = ModelSpec {
        kind: ModelKind::Cnn,
        input: InputShape::Image {
            channels: 2,
            height: 8,
            width: 6,
        },
        embeddings: vec![],
        outputs: 3,
        hidden: vec![12],
        activation: Activation::Relu,
        dropout: 0.0,
        batch_norm: false,
        conv: vec![conv(4), conv(5)],
        text: None,
        pretrained: None,
    };
    let pixels: Vec<f32> = (0..5 * 96)
        .map(|i| ((i * 37) % 101) as f32 / 50.0 - 1.0)
        .collect();
    let dense_loss = |width: usize| {
        let pixels = pixels.clone();
        let ad = ad.clone();
        move |m: &Network| {
            let x = Tensor::<2>::from_data(
                TensorData::new(pixels[..5 * width].to_vec(), [5, width]),
                &ad,
            );
            common::mean_cross_entropy(m.forward(Inputs::dense(x)), &[0, 1, 2, 0, 1])
        }
    };
    let build = |d: &Device| Network::new(&cnn, d);
    assert_same(
        "CNN",
        loss_and_grads(true, &ad, build, dense_loss(96)),
        loss_and_grads(false, &ad, build, dense_loss(96)),
    );
    let mlp = ModelSpec {
        kind: ModelKind::Mlp,
        input: InputShape::Flat { width: 20 },
        conv: vec![],
        hidden: vec![16, 8],
        activation: Activation::Gelu,
        ..cnn.clone()
    };
    let build = |d: &Device| Network::new(&mlp, d);
    assert_same(
        "GELU MLP",
        loss_and_grads(true, &ad, build, dense_loss(20)),
        loss_and_grads(false, &ad, build, dense_loss(20)),
    );

    // Inference (no autodiff) agrees too.
    let device = Device::flex();
    let infer = |fused: bool| {
        ops::set_fused_kernels(fused);
        device.seed(11);
        let m = Network::new(&text, &device);
        let tokens = Tensor::<2, Int>::from_data(TensorData::new(ids.clone(), [4, 12]), &device);
        let out = m.forward(Inputs {
            x: None,
            categories: None,
            tokens: Some(tokens),
            token_windows: 1,
        });
        ops::set_fused_kernels(true);
        common::values(out)
    };
    let d = common::max_diff(&infer(true), &infer(false));
    assert!(d < 1e-5, "text classifier inference differs by {d}");
}

/// The fused head + cross-entropy against Burn's `CrossEntropyLoss` of `x @ W`, differentiated
/// by Burn's autodiff: both weight layouts, a vocabulary wide enough for several row blocks
/// and a partial last block, the loss scaled (so the backward's gradient is not 1), and the
/// value without autodiff.
fn cross_entropy_head_matches_burns_loss(ad: &Device) {
    use kiln_models::ops::HeadLayout;
    let (rows, width, vocab) = (150, 24, 5000);
    let xs: Vec<f32> = (0..rows * width)
        .map(|i| ((i * 31) % 97) as f32 / 24.0 - 2.0)
        .collect();
    let ws: Vec<f32> = (0..width * vocab)
        .map(|i| ((i * 17) % 89) as f32 / 44.0 - 1.0)
        .collect();
    let targets: Vec<i64> = (0..rows as i64)
        .map(|r| (r * 611 + 7) % vocab as i64)
        .collect();
    let shared: Arc<[u32]> = targets.iter().map(|&t| t as u32).collect();
    for layout in [HeadLayout::InOut, HeadLayout::OutIn] {
        let w_shape = match layout {
            HeadLayout::InOut => [width, vocab],
            HeadLayout::OutIn => [vocab, width],
        };
        let run = |device: &Device, fused_op: bool| {
            let leaf = |t: Tensor<2>| {
                if device.is_autodiff() {
                    t.require_grad()
                } else {
                    t
                }
            };
            let x = leaf(Tensor::from_data(
                TensorData::new(xs.clone(), [rows, width]),
                device,
            ));
            let w = leaf(Tensor::from_data(
                TensorData::new(ws.clone(), w_shape),
                device,
            ));
            let loss = if fused_op {
                ops::cross_entropy_head(x.clone(), w.clone(), layout, shared.clone())
            } else {
                let wt = match layout {
                    HeadLayout::InOut => w.clone(),
                    HeadLayout::OutIn => w.clone().transpose(),
                };
                common::mean_cross_entropy(x.clone().matmul(wt), &targets)
            };
            let value = loss.clone().into_scalar::<f32>();
            if !device.is_autodiff() {
                return (value, vec![], vec![]);
            }
            let grads = loss.mul_scalar(3.0).backward();
            (
                value,
                common::values(x.grad(&grads).unwrap()),
                common::values(w.grad(&grads).unwrap()),
            )
        };
        let (reference, dx_ref, dw_ref) = run(ad, false);
        for fused in [true, false] {
            ops::set_fused_kernels(fused);
            let (loss, dx, dw) = run(ad, true);
            let (eval, _, _) = run(&Device::flex(), true);
            ops::set_fused_kernels(true);
            let what = format!("{layout:?} head, fused kernels {fused}");
            for (name, v) in [("loss", loss), ("loss without autodiff", eval)] {
                assert!(
                    (v - reference).abs() <= 1e-5 * reference.abs(),
                    "{what}: {name} {v}, Burn's {reference}"
                );
            }
            for (name, a, b) in [("x", &dx, &dx_ref), ("weight", &dw, &dw_ref)] {
                let scale = b.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
                let d = common::max_diff(a, b);
                assert!(
                    d <= 1e-4 * scale,
                    "{what}: {name} gradient differs by {d} (scale {scale})"
                );
            }
        }
    }
}

/// The attention op, fused and generic, against softmax + masked fill + a dropout mask written
/// with Burn's tensor API and differentiated by Burn's autodiff: causal and bidirectional,
/// with padding (a row of padding only among them) and dropout.
fn attention_op_matches_an_op_by_op_form(ad: &Device) {
    let (b, t, c, heads) = (3, 9, 24, 3);
    let d = c / heads;
    let values: Vec<f32> = (0..b * t * 3 * c)
        .map(|k| ((k * 7919) % 1009) as f32 / 300.0 - 1.6)
        .collect();
    let weights: Vec<f32> = (0..b * t * c)
        .map(|k| ((k * 13) % 11) as f32 - 5.0)
        .collect();
    let lengths = [9, 4, 0];
    let padding: Arc<[bool]> = (0..b * t).map(|i| i % t >= lengths[i / t]).collect();
    for causal in [false, true] {
        for dropout in [None, Some(0.25f32)] {
            let spec = AttentionSpec {
                heads,
                causal,
                key_padding: Some(padding.clone()),
                dropout: dropout.map(|prob| DropoutMask { prob, seed: 77 }),
            };
            let run = |form: &str| {
                let qkv =
                    Tensor::<3>::from_data(TensorData::new(values.clone(), [b, t, 3 * c]), ad)
                        .require_grad();
                let y = match form {
                    "fused" | "generic" => {
                        ops::set_fused_kernels(form == "fused");
                        let y = ops::attention(qkv.clone(), spec.clone());
                        ops::set_fused_kernels(true);
                        y
                    }
                    _ => op_by_op(qkv.clone(), &spec, &padding, (b, t, c, d)),
                };
                let w = Tensor::<3>::from_data(TensorData::new(weights.clone(), [b, t, c]), ad);
                let grads = (y.clone() * w).sum().backward();
                let g = qkv
                    .grad(&grads)
                    .unwrap()
                    .into_data()
                    .try_to_vec::<f32>()
                    .unwrap();
                (y.into_data().try_to_vec::<f32>().unwrap(), g)
            };
            let reference = run("op-by-op");
            for form in ["fused", "generic"] {
                let (y, g) = run(form);
                let what = format!("{form}, causal {causal}, dropout {dropout:?}");
                let dy = common::max_diff(&y, &reference.0);
                assert!(dy < 1e-5, "{what}: outputs differ by {dy}");
                let scale = reference.1.iter().fold(1.0f32, |m, v| m.max(v.abs()));
                let dg = common::max_diff(&g, &reference.1);
                assert!(
                    dg < 1e-5 * scale,
                    "{what}: gradients differ by {dg} (scale {scale})"
                );
            }
        }
    }
}

/// Scores far apart (64 and 0 here) in a row whose keys are all padding: every form attends
/// uniformly, as a masked fill does (adding the mask score instead would keep them apart).
fn a_row_of_padding_only_attends_uniformly_whatever_its_scores(ad: &Device) {
    // B = 1, T = 2, one head of width 1 (scale 1): q = k = 8 at position 0, 0 at position 1.
    let values = vec![8.0f32, 8.0, 3.0, 0.0, 0.0, 5.0];
    for causal in [false, true] {
        let spec = AttentionSpec {
            heads: 1,
            causal,
            key_padding: Some(Arc::from(vec![true, true])),
            dropout: None,
        };
        for fused in [true, false] {
            ops::set_fused_kernels(fused);
            let qkv = Tensor::<3>::from_data(TensorData::new(values.clone(), [1, 2, 3]), ad);
            let y = ops::attention(qkv, spec.clone())
                .into_data()
                .try_to_vec::<f32>()
                .unwrap();
            ops::set_fused_kernels(true);
            // Query 1 sees keys 0 and 1 either way; query 0 sees only key 0 when causal.
            let want = [if causal { 3.0 } else { 4.0 }, 4.0];
            assert!(
                common::max_diff(&y, &want) < 1e-5,
                "fused {fused}, causal {causal}: {y:?}, want {want:?}"
            );
        }
    }
}

fn op_by_op(
    qkv: Tensor<3>,
    spec: &AttentionSpec,
    padding: &[bool],
    (b, t, c, d): (usize, usize, usize, usize),
) -> Tensor<3> {
    let device = qkv.device();
    let heads = spec.heads;
    let part = |i: usize| {
        qkv.clone()
            .narrow(2, i * c, c)
            .reshape([b, t, heads, d])
            .swap_dims(1, 2)
    };
    let (q, k, v) = (part(0), part(1), part(2));
    let mut att = q.matmul(k.swap_dims(2, 3)).div_scalar((d as f64).sqrt());
    let pad = Tensor::<2, Bool>::from_data(TensorData::new(padding.to_vec(), [b, t]), &device);
    att = att.mask_fill(
        pad.reshape([b, 1, 1, t]).expand([b, heads, t, t]),
        ops::MASKED_SCORE,
    );
    if spec.causal {
        let future = Tensor::<2, Bool>::triu_mask([t, t], 1, &device)
            .bool_not()
            .unsqueeze::<4>()
            .expand([b, heads, t, t]);
        att = att.mask_fill(future, f32::NEG_INFINITY);
    }
    let mut p = softmax(att, 3);
    if let Some(dropout) = spec.dropout {
        let mut m = vec![0.0f32; b * heads * t * t];
        for (row, r) in m.chunks_exact_mut(t).enumerate() {
            ops::dropout_scales(dropout, row as u64, r);
        }
        p = p * Tensor::<4>::from_data(TensorData::new(m, [b, heads, t, t]), &device);
    }
    p.matmul(v).swap_dims(1, 2).reshape([b, t, c])
}
