//! bf16 against f32 on Burn's Flex CPU backend: one GPT training step (forward, cross-entropy,
//! backward) in nanoGPT's CPU "baby" shape, with the same weights and the same batch in both
//! precisions. Prints the median time per step, the loss in each precision and how closely
//! the bf16 gradients follow the f32 ones (cosine similarity, relative norm error).
//!
//! `cargo bench -p kiln-train --bench bf16 [-- STEPS]`

use std::time::Instant;

use burn::module::Module;
use burn::prelude::Device;
use burn::tensor::FloatDType;
use kiln_models::Gpt;
use kiln_rng::SplitMix64;
use kiln_train::grads::ParamGrads;
use kiln_train::lm::lm_loss;
#[path = "common/workloads.rs"]
mod workloads;

use workloads::{CastParams, large_vocabulary_config};

/// Loss and flattened f32 gradients (in parameter-path order) of one step.
fn step(model: &Gpt, x: &[i64], y: &[i64], b: usize, t: usize, device: &Device) -> (f64, Vec<f32>) {
    let loss = lm_loss(model, x.to_vec(), y.to_vec(), b, t, device);
    let value = loss.clone().cast(FloatDType::F32).into_scalar::<f64>();
    let grads = ParamGrads::collect(model, loss.backward());
    let flat = grads
        .grads
        .values()
        .flat_map(|g| {
            g.clone()
                .cast(FloatDType::F32)
                .into_data()
                .convert::<f32>()
                .try_to_vec::<f32>()
                .expect("f32 gradients")
        })
        .collect();
    (value, flat)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let steps: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(10);
    let cfg = large_vocabulary_config();
    let (b, t) = (12, 64);
    let device = Device::flex();
    let ad = device.clone().autodiff();
    device.seed(1337);
    let f32_model = Gpt::new(&cfg, &ad);
    let bf16_model = f32_model.clone().map(&mut CastParams(FloatDType::BF16));
    // A batch with structure to learn: runs of a few repeated tokens.
    let mut rng = SplitMix64::new(7);
    let tokens: Vec<i64> = (0..b * (t + 1))
        .map(|i| ((i / 3) * 17 + rng.below(3)) as i64 % cfg.vocab_size as i64)
        .collect();
    let (mut x, mut y) = (Vec::new(), Vec::new());
    for row in tokens.chunks(t + 1) {
        x.extend_from_slice(&row[..t]);
        y.extend_from_slice(&row[1..]);
    }

    let mut results = Vec::new();
    for (name, model) in [("f32", &f32_model), ("bf16", &bf16_model)] {
        let (loss, grads) = step(model, &x, &y, b, t, &ad); // warm-up, and the values compared
        let times: Vec<f64> = (0..steps)
            .map(|_| {
                let started = Instant::now();
                step(model, &x, &y, b, t, &ad);
                started.elapsed().as_secs_f64()
            })
            .collect();
        let per_step = median(times);
        println!(
            "{name:>5}: {:.1} ms/step (median of {steps}), {:.0} tokens/s, loss {loss:.5}",
            per_step * 1e3,
            (b * t) as f64 / per_step
        );
        results.push((per_step, loss, grads));
    }
    let (f, h) = (&results[0], &results[1]);
    let dot: f64 =
        f.2.iter()
            .zip(&h.2)
            .map(|(a, b)| *a as f64 * *b as f64)
            .sum();
    let nf = f.2.iter().map(|a| (*a as f64).powi(2)).sum::<f64>().sqrt();
    let nh = h.2.iter().map(|a| (*a as f64).powi(2)).sum::<f64>().sqrt();
    let diff =
        f.2.iter()
            .zip(&h.2)
            .map(|(a, b)| (*a as f64 - *b as f64).powi(2))
            .sum::<f64>()
            .sqrt();
    println!(
        "bf16 vs f32: {:.2}x the step time, loss difference {:.2e}, gradient cosine {:.5}, relative gradient error {:.2e}",
        h.0 / f.0,
        (h.1 - f.1).abs(),
        dot / (nf * nh),
        diff / nf
    );
}
