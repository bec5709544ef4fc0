//! The shared CPU workloads of `../shared/bench/WORKLOADS.md` (W1 MLP, W2 GPT, W3 CNN training
//! steps; I1 GPT forward latency) run through kiln's own code: `Network`/`Gpt` from
//! kiln-models, the trainer's loss (`loss_of`, `lm_loss`), `ParamGrads` and `apply_update`
//! with kiln's Adam/AdamW. Prints `RESULT kiln <workload> <value> <unit>` lines, as
//! `torch_reference.py` does for PyTorch.
//!
//! `cargo bench -p kiln-train --bench workloads [-- W1 W2 W3 I1]`

use std::time::Instant;

#[global_allocator]
static ALLOCATOR: kiln_alloc::Allocator = kiln_alloc::Allocator;

use burn::prelude::{Device, Int, Tensor, TensorData};
use kiln_config::{Activation, ConvLayer, ModelKind, OptimizerKind};
use kiln_data::{InputShape, Target};
use kiln_models::{Gpt, GptConfig, Inputs, ModelSpec, Network};
use kiln_rng::SplitMix64;
use kiln_train::grads::{ParamGrads, apply_update, parameter_count};
use kiln_train::lm::lm_loss;
use kiln_train::optim::{Optimizer, OptimizerSettings};
use kiln_train::{SingleProcess, loss_of};

fn adam(kind: OptimizerKind, weight_decay: f64) -> Optimizer {
    Optimizer::new(OptimizerSettings {
        kind,
        momentum: 0.0,
        nesterov: false,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        alpha: 0.99,
        weight_decay,
    })
}

fn uniform(rng: &mut SplitMix64, n: usize) -> Vec<f32> {
    (0..n)
        .map(|_| (rng.next_u64() >> 40) as f32 / (1u64 << 24) as f32)
        .collect()
}

/// Warm-up steps, then timed steps of forward, loss, backward and an optimizer step; returns
/// seconds for the timed steps and the last loss.
fn classifier_steps(
    spec: &ModelSpec,
    batch: usize,
    warmup: usize,
    timed: usize,
    device: &Device,
) -> (f64, f64) {
    let ad = device.clone().autodiff();
    device.seed(1);
    let mut model = Network::new(spec, &ad);
    let mut optimizer = adam(OptimizerKind::Adam, 0.0);
    let mut rng = SplitMix64::new(2);
    let x = Tensor::<2>::from_data(
        TensorData::new(
            uniform(&mut rng, batch * spec.input.size()),
            [batch, spec.input.size()],
        ),
        &ad,
    );
    let labels: Vec<u32> = (0..batch).map(|_| rng.below(spec.outputs) as u32).collect();
    let target = Target::Classes(labels);
    let idx: Vec<usize> = (0..batch).collect();
    let mut started = Instant::now();
    let mut last = 0.0;
    for step in 0..warmup + timed {
        if step == warmup {
            started = Instant::now();
        }
        let out = model.forward(Inputs::dense(x.clone()));
        let loss = loss_of(out, &target, &idx, None, &ad);
        let grads = ParamGrads::collect(&model, loss.backward());
        last = loss.into_scalar::<f64>();
        model = apply_update(model, grads, &mut SingleProcess, 0.0, &mut optimizer, 1e-3)
            .expect("single process")
            .0;
    }
    (started.elapsed().as_secs_f64(), last)
}

fn w2_config() -> GptConfig {
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

fn main() {
    kiln_alloc::configure();
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let run = |w: &str| args.is_empty() || args.iter().any(|a| a == w);
    let device = Device::default();
    if run("W1") {
        let spec = ModelSpec {
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
        };
        let (secs, loss) = classifier_steps(&spec, 128, 10, 200, &device);
        eprintln!("W1: 200 steps in {secs:.2} s, last loss {loss:.4}");
        println!("RESULT kiln W1 {:.1} samples/s", 128.0 * 200.0 / secs);
    }
    if run("W3") {
        let conv = |filters, pool| ConvLayer {
            filters,
            kernel: 3,
            stride: 1,
            padding: 0,
            pool,
            batch_norm: false,
            dropout: 0.0,
        };
        let spec = ModelSpec {
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
        };
        let (secs, loss) = classifier_steps(&spec, 64, 5, 50, &device);
        eprintln!("W3: 50 steps in {secs:.2} s, last loss {loss:.4}");
        println!("RESULT kiln W3 {:.1} samples/s", 64.0 * 50.0 / secs);
    }
    if run("W2") {
        let cfg = w2_config();
        let (b, t) = (16, 128);
        let ad = device.clone().autodiff();
        device.seed(3);
        let mut model = Gpt::new(&cfg, &ad);
        eprintln!("W2: {} parameters, tied head", parameter_count(&model));
        let mut optimizer = adam(OptimizerKind::Adamw, 0.1);
        let mut rng = SplitMix64::new(4);
        let (warmup, timed) = (3, 20);
        let mut started = Instant::now();
        let mut last = 0.0;
        for step in 0..warmup + timed {
            if step == warmup {
                started = Instant::now();
            }
            let tokens: Vec<i64> = (0..b * (t + 1)).map(|_| rng.below(65) as i64).collect();
            let (mut x, mut y) = (Vec::with_capacity(b * t), Vec::with_capacity(b * t));
            for row in tokens.chunks(t + 1) {
                x.extend_from_slice(&row[..t]);
                y.extend_from_slice(&row[1..]);
            }
            let loss = lm_loss(&model, x, y, b, t, &ad);
            let grads = ParamGrads::collect(&model, loss.backward());
            last = loss.into_scalar::<f64>();
            model = apply_update(model, grads, &mut SingleProcess, 0.0, &mut optimizer, 3e-4)
                .expect("single process")
                .0;
        }
        let secs = started.elapsed().as_secs_f64();
        eprintln!("W2: {timed} steps in {secs:.2} s, last loss {last:.4}");
        println!(
            "RESULT kiln W2 {:.1} tokens/s",
            (b * t * timed) as f64 / secs
        );
    }
    if run("I1") {
        let cfg = w2_config();
        device.seed(5);
        let model = Gpt::new(&cfg, &device);
        let mut rng = SplitMix64::new(6);
        let ids: Vec<i64> = (0..128).map(|_| rng.below(65) as i64).collect();
        let x = Tensor::<2, Int>::from_data(TensorData::new(ids, [1, 128]), &device);
        let mut times = Vec::new();
        for i in 0..55 {
            let started = Instant::now();
            let _ = model.forward(x.clone()).into_data();
            if i >= 5 {
                times.push(started.elapsed().as_secs_f64());
            }
        }
        let mean = times.iter().sum::<f64>() / times.len() as f64;
        println!("RESULT kiln I1 {:.3} ms", mean * 1e3);
    }
}
