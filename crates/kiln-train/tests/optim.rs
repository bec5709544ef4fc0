//! Optimizer updates against their closed forms, global-norm clipping, schedules.

#[path = "../benches/common/workloads.rs"]
mod workloads;

use burn::module::Module;
use burn::prelude::{Device, Tensor, TensorData};
use kiln_config::{Activation, ModelKind, OptimizerKind, ScheduleKind, TrainerConfig};
use kiln_models::{InputShape, ModelSpec, Network};
use kiln_train::grads::{ParamGrads, trainable_parameters};
use kiln_train::optim::{Optimizer, OptimizerSettings};
use kiln_train::schedule::LrSchedule;

fn linear_model(device: &Device) -> Network {
    let spec = ModelSpec {
        kind: ModelKind::Linear,
        input: InputShape::Flat { width: 2 },
        embeddings: vec![],
        outputs: 1,
        hidden: vec![],
        activation: Activation::Relu,
        dropout: 0.0,
        batch_norm: false,
        conv: vec![],
        text: None,
        pretrained: None,
    };
    Network::new(&spec, device)
}

/// All parameters of the model as one flat vector, in path order.
fn flat_params(model: &Network) -> Vec<f32> {
    let record = kiln_train::weights::model_to_bytes(model).unwrap();
    let st = safetensors::SafeTensors::deserialize(&record).unwrap();
    let mut names: Vec<String> = st.names().into_iter().map(str::to_string).collect();
    names.sort();
    names
        .iter()
        .flat_map(|n| {
            st.tensor(n)
                .unwrap()
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect::<Vec<_>>()
        })
        .collect()
}

/// `values` split over the model's parameters in sorted path order (for the linear model:
/// output.bias, 1 value, then output.weight, 2 values).
fn grads_of(model: &Network, values: &[f32], device: &Device) -> ParamGrads {
    let mut params = trainable_parameters(model);
    params.sort();
    let mut g = ParamGrads::default();
    let mut offset = 0;
    for (path, shape) in params {
        let n: usize = shape.iter().product();
        let v = values[offset..offset + n].to_vec();
        g.grads.insert(
            path,
            Tensor::<1>::from_data(TensorData::new(v, [n]), device),
        );
        offset += n;
    }
    g
}

fn settings(kind: OptimizerKind) -> OptimizerSettings {
    OptimizerSettings {
        kind,
        momentum: 0.0,
        nesterov: false,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        alpha: 0.99,
        weight_decay: 0.0,
    }
}

fn close(a: &[f32], b: &[f32]) {
    for (x, y) in a.iter().zip(b) {
        assert!((x - y).abs() < 1e-5, "{a:?} vs {b:?}");
    }
}

const G1: [f32; 3] = [0.5, -1.0, 2.0];
const G2: [f32; 3] = [-0.25, 0.5, 1.0];

fn run(s: OptimizerSettings, lr: f64, steps: &[[f32; 3]]) -> (Vec<f32>, Vec<f32>) {
    let device = Device::flex();
    let mut model = linear_model(&device.clone().autodiff());
    let p0 = flat_params(&model);
    let mut opt = Optimizer::new(s);
    for g in steps {
        let grads = grads_of(&model, g, &device);
        model = opt.step(model, grads, lr);
    }
    (p0, flat_params(&model))
}

#[test]
fn sgd_plain() {
    let (p0, p1) = run(settings(OptimizerKind::Sgd), 0.1, &[G1]);
    let want: Vec<f32> = p0.iter().zip(G1).map(|(p, g)| p - 0.1 * g).collect();
    close(&p1, &want);
}

#[test]
fn sgd_momentum_and_nesterov() {
    let mut s = settings(OptimizerKind::Sgd);
    s.momentum = 0.9;
    let (p0, p2) = run(s, 0.1, &[G1, G2]);
    let want: Vec<f32> = (0..3)
        .map(|i| p0[i] - 0.1 * G1[i] - 0.1 * (0.9 * G1[i] + G2[i]))
        .collect();
    close(&p2, &want);
    s.nesterov = true;
    let (p0, p2) = run(s, 0.1, &[G1, G2]);
    let want: Vec<f32> = (0..3)
        .map(|i| {
            let buf2 = 0.9 * G1[i] + G2[i];
            p0[i] - 0.1 * (G1[i] + 0.9 * G1[i]) - 0.1 * (G2[i] + 0.9 * buf2)
        })
        .collect();
    close(&p2, &want);
}

#[test]
fn adam_first_step_is_lr_times_sign() {
    let (p0, p1) = run(settings(OptimizerKind::Adam), 0.01, &[G1]);
    let want: Vec<f32> = p0
        .iter()
        .zip(G1)
        .map(|(p, g)| p - 0.01 * g.signum())
        .collect();
    close(&p1, &want);
}

#[test]
fn adamw_decays_weights_decoupled() {
    let mut s = settings(OptimizerKind::Adamw);
    s.weight_decay = 0.1;
    let (p0, p1) = run(s, 0.01, &[G1]);
    let want: Vec<f32> = p0
        .iter()
        .zip(G1)
        .map(|(p, g)| p * (1.0 - 0.01 * 0.1) - 0.01 * g.signum())
        .collect();
    close(&p1, &want);
}

#[test]
fn adagrad_and_rmsprop_first_steps() {
    let (p0, p1) = run(settings(OptimizerKind::Adagrad), 0.1, &[G1]);
    close(
        &p1,
        &p0.iter()
            .zip(G1)
            .map(|(p, g)| p - 0.1 * g.signum())
            .collect::<Vec<_>>(),
    );
    let (p0, p1) = run(settings(OptimizerKind::Rmsprop), 0.01, &[G1]);
    // v = 0.01 g^2, step = g / sqrt(v) = 10 sign(g).
    close(
        &p1,
        &p0.iter()
            .zip(G1)
            .map(|(p, g)| p - 0.01 * 10.0 * g.signum())
            .collect::<Vec<_>>(),
    );
}

#[test]
fn optimizer_state_round_trips() {
    let device = Device::flex();
    let model = linear_model(&device.clone().autodiff());
    let mut s = settings(OptimizerKind::Adamw);
    s.weight_decay = 0.01;
    let mut a = Optimizer::new(s);
    let g1 = grads_of(&model, &G1, &device);
    let model = a.step(model, g1, 0.01);
    let bytes = kiln_train::weights::optimizer_to_bytes(&a).unwrap();
    let mut b = kiln_train::weights::optimizer_from_bytes(s, &bytes, &device).unwrap();
    let ma = a.step(model.clone(), grads_of(&model, &G2, &device), 0.01);
    let mb = b.step(model.clone(), grads_of(&model, &G2, &device), 0.01);
    assert_eq!(flat_params(&ma), flat_params(&mb));
    assert!(kiln_train::weights::optimizer_from_bytes(s, b"garbage", &device).is_err());
}

#[test]
fn global_norm_clipping_scales_all_gradients_together() {
    let device = Device::flex();
    let model = linear_model(&device.clone().autodiff());
    let mut g = grads_of(&model, &[0.0, 3.0, 4.0], &device);
    let norm = g.clip_global_norm(1.0);
    assert!((norm - 5.0).abs() < 1e-6);
    assert!((g.global_norm() - 1.0).abs() < 1e-5);
    let mut small = grads_of(&model, &[0.0, 0.3, 0.4], &device);
    small.clip_global_norm(1.0);
    assert!(
        (small.global_norm() - 0.5).abs() < 1e-6,
        "below the limit nothing changes"
    );
}

#[test]
fn gradients_from_backward_are_collected_by_path() {
    let device = Device::flex().autodiff();
    let model = linear_model(&device);
    let x = Tensor::<2>::from_data(TensorData::new(vec![1.0f32, 2.0], [1, 2]), &device);
    let loss = model.forward(kiln_models::Inputs::dense(x)).sum();
    let grads = ParamGrads::collect(&model, loss.backward());
    let paths: Vec<&String> = grads.grads.keys().collect();
    assert_eq!(paths, ["output.bias", "output.weight"]);
    let w: Vec<f32> = grads.grads["output.weight"]
        .clone()
        .into_data()
        .convert::<f32>()
        .try_to_vec()
        .unwrap();
    assert_eq!(w, vec![1.0, 2.0], "d(sum(xW+b))/dW = x");
    assert_eq!(model.num_params(), 3);
}

fn trainer(schedule: ScheduleKind) -> TrainerConfig {
    TrainerConfig {
        schedule,
        lr: 1.0,
        warmup_steps: 10,
        min_lr: 0.1,
        step_epochs: 2,
        gamma: 0.5,
        ..TrainerConfig::default()
    }
}

#[test]
fn schedules() {
    let cos = LrSchedule::new(&trainer(ScheduleKind::Cosine), 110);
    assert!(
        (cos.lr(0, 0) - 0.1).abs() < 1e-12,
        "warm-up starts at lr/10"
    );
    assert!((cos.lr(9, 0) - 1.0).abs() < 1e-12, "warm-up ends at lr");
    assert!((cos.lr(10, 0) - 1.0).abs() < 1e-12);
    assert!(
        (cos.lr(60, 0) - 0.55).abs() < 1e-9,
        "half way is the mean of lr and min_lr"
    );
    assert!((cos.lr(110, 0) - 0.1).abs() < 1e-12);
    let linear = LrSchedule::new(&trainer(ScheduleKind::Linear), 110);
    assert!((linear.lr(9, 0) - 1.0).abs() < 1e-12, "warm-up ends at lr");
    assert!(
        (linear.lr(35, 0) - 0.775).abs() < 1e-9,
        "a quarter of the way down"
    );
    assert!((linear.lr(110, 0) - 0.1).abs() < 1e-12, "ends at min_lr");
    let step = LrSchedule::new(&trainer(ScheduleKind::Step), 100);
    assert_eq!(step.lr(50, 1), 1.0);
    assert_eq!(step.lr(50, 2), 0.5);
    assert_eq!(step.lr(50, 5), 0.25);
    let exp = LrSchedule::new(&trainer(ScheduleKind::Exponential), 100);
    assert_eq!(exp.lr(50, 3), 0.125);
    let mut cfg = trainer(ScheduleKind::Plateau);
    cfg.plateau_patience = 1;
    let mut plateau = LrSchedule::new(&cfg, 100);
    assert!(!plateau.observe(1.0));
    assert!(!plateau.observe(0.9));
    assert!(!plateau.observe(0.95));
    assert!(
        plateau.observe(0.95),
        "two epochs without improvement with patience 1"
    );
    assert_eq!(plateau.lr(50, 4), 0.5);
}

/// The fused host-memory Adam/AdamW gives the same parameters and moments as the tensor-op
/// path it replaces on the CPU, bit for bit, over several steps of an MLP.
#[test]
fn fused_host_adam_equals_the_tensor_op_path() {
    let device = Device::flex();
    let ad = device.clone().autodiff();
    let spec = workloads::mlp_spec();
    // One initial model for both paths (Burn's seeded RNG is process-wide: other tests may
    // draw from it in between, so the two runs must not re-initialise).
    let initial = Network::new(&spec, &ad);
    let n: usize = trainable_parameters(&initial)
        .iter()
        .map(|(_, s)| s.iter().product::<usize>())
        .sum();
    let mut rng = kiln_rng::SplitMix64::new(9);
    let grads: Vec<Vec<f32>> = (0..4)
        .map(|_| {
            (0..n)
                .map(|_| (rng.next_u64() >> 40) as f32 / (1u64 << 23) as f32 - 1.0)
                .collect()
        })
        .collect();
    for (kind, wd) in [
        (OptimizerKind::Adam, 0.0),
        (OptimizerKind::Adam, 0.05),
        (OptimizerKind::Adamw, 0.1),
    ] {
        let mut s = settings(kind);
        s.weight_decay = wd;
        let run = |host: bool| {
            let mut model = initial.clone();
            let mut opt = Optimizer::new(s);
            opt.set_host_kernels(host);
            for g in &grads {
                let pg = grads_of(&model, g, &device);
                model = opt.step(model, pg, 3e-3);
            }
            (flat_params(&model), opt.export().1)
        };
        let (tensor_params, tensor_state) = run(false);
        let (host_params, host_state) = run(true);
        assert_eq!(tensor_params.len(), host_params.len());
        let differing = tensor_params
            .iter()
            .zip(&host_params)
            .filter(|(a, b)| a.to_bits() != b.to_bits())
            .count();
        assert_eq!(differing, 0, "{kind:?} wd {wd}: parameters differ");
        assert_eq!(tensor_state.len(), host_state.len());
        for ((name_a, a), (name_b, b)) in tensor_state.iter().zip(&host_state) {
            assert_eq!(name_a, name_b);
            assert!(
                a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits()),
                "{kind:?} wd {wd}: state {name_a} differs"
            );
        }
    }
}

/// Layer-wise decay: the top encoder layer at the full rate, each one below one factor
/// lower, the embeddings below the first; the head at its own factor; BERT and GPT names.
#[test]
fn layerwise_learning_rates_follow_depth() {
    use kiln_train::optim::LayerwiseLr;
    let l = LayerwiseLr {
        layers: 6,
        decay: 0.5,
        head: 20.0,
    };
    let cases = [
        ("bert.layers.5.qkv.weight", 1.0),
        ("bert.layers.4.lora.query.a.weight", 0.5),
        ("bert.layers.0.out_norm.gamma", 0.5f64.powi(5)),
        ("bert.word.weight", 0.5f64.powi(6)),
        ("bert.embed_norm.beta", 0.5f64.powi(6)),
        ("text.blocks.5.attn.qkv.weight", 1.0),
        ("text.blocks.2.mlp.fc.bias", 0.5f64.powi(3)),
        ("text.wte.weight", 0.5f64.powi(6)),
        ("output.weight", 20.0),
        ("hidden.0.linear.bias", 20.0),
    ];
    for (path, want) in cases {
        assert_eq!(l.factor(path), want, "{path}");
    }
}
