//! The benchmark workloads compute what they computed before kiln's performance work: the loss
//! after a few training steps of W1 (MLP), W2 (GPT) and W3 (CNN), and I1's logits, against
//! values recorded before the optimisations (fused host-side Adam, AVX-512 GEMM kernels, the
//! allocator) landed. Tolerances cover float reassociation (a different GEMM kernel sums in a
//! different order), not a changed computation: a wrong update, a dropped bias or a skipped
//! gradient moves these losses by far more.

use std::sync::{Mutex, MutexGuard};

use burn::prelude::Device;
#[path = "../benches/common/workloads.rs"]
mod workloads;

use workloads::{classifier_steps, cnn_spec, gpt_config, gpt_forward_latency, gpt_steps, mlp_spec};

/// Model initialisation draws from Burn's process-wide seeded RNG: tests that seed it must not
/// interleave.
static SEEDED: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SEEDED
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn assert_close(what: &str, got: &[f64], want: &[f64], rel: f64) {
    assert_eq!(got.len(), want.len(), "{what}: step count");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= rel * w.abs().max(1.0),
            "{what}: loss after step {i} is {g}, recorded {w} (all: {got:?})"
        );
    }
}

/// Recorded at commit "Perf: gemm AVX-512 kernels ... and mimalloc" (before any change to what a
/// step computes) with `cargo test -p kiln-train --test workloads`.
const W1_LOSSES: [f64; 12] = [
    2.2981719970703125,
    2.2308592796325684,
    2.1885650157928467,
    2.1372385025024414,
    2.081108808517456,
    2.0147604942321777,
    1.9373430013656616,
    1.8473076820373535,
    1.7454174757003784,
    1.6293160915374756,
    1.5004065036773682,
    1.3621559143066406,
];
const W3_LOSSES: [f64; 4] = [
    2.3139140605926514,
    2.0139002799987793,
    1.8201639652252197,
    1.7226098775863647,
];
const W2_LOSSES: [f64; 4] = [
    4.222752094268799,
    4.242156028747559,
    4.238166809082031,
    4.22727108001709,
];

#[test]
fn mlp_adam_steps_give_the_recorded_losses() {
    let _serial = serial();
    let run = classifier_steps(&mlp_spec(), 128, 0, 12, &Device::flex());
    assert_close("W1", &run.losses, &W1_LOSSES, 1e-4);
}

#[test]
fn cnn_adam_steps_give_the_recorded_losses() {
    let _serial = serial();
    let run = classifier_steps(&cnn_spec(), 16, 0, 4, &Device::flex());
    assert_close("W3 (batch 16)", &run.losses, &W3_LOSSES, 1e-4);
}

#[test]
fn gpt_adamw_steps_give_the_recorded_losses() {
    let _serial = serial();
    let run = gpt_steps(&gpt_config(), 4, 0, 4, &Device::flex());
    assert_close("W2 (batch 4)", &run.losses, &W2_LOSSES, 1e-4);
}

#[test]
fn gpt_forward_gives_the_recorded_logits() {
    let _serial = serial();
    let (_, logits) = gpt_forward_latency(&gpt_config(), 128, 0, 1, &Device::flex());
    assert_eq!(logits.len(), 128 * 65);
    let sum: f64 = logits.iter().map(|&v| v as f64).sum();
    let sum_sq: f64 = logits.iter().map(|&v| (v as f64).powi(2)).sum();
    assert_close("I1 logit sum", &[sum], &[-187.3746302310483], 1e-4);
    assert_close(
        "I1 logit sum of squares",
        &[sum_sq],
        &[818.8205407183086],
        1e-5,
    );
    let ends: Vec<f64> = logits[..4]
        .iter()
        .chain(&logits[logits.len() - 4..])
        .map(|&v| v as f64)
        .collect();
    let want = [
        0.023880942,
        0.046296883,
        0.64034,
        0.044562776,
        -0.573223,
        -0.15732214,
        -0.22498697,
        -0.6748488,
    ];
    for (g, w) in ends.iter().zip(want) {
        assert!(
            (g - w).abs() < 1e-5,
            "I1 logits {ends:?}, recorded {want:?}"
        );
    }
}

/// Recorded when kiln's fused dropout and padded attention landed (session 9), equal on the
/// fused and the generic path (`kiln-models/tests/fused_vs_generic.rs`): W2 with dropout 0.1.
const W2D_LOSSES: [f64; 4] = [
    4.228144645690918,
    4.240384101867676,
    4.205509185791016,
    4.219700336456299,
];

/// Recorded as [`W2D_LOSSES`]: W4, the padded text classifier with dropout 0.1.
const W4_LOSSES: [f64; 3] = [0.6609154939651489, 0.801120400428772, 0.7553094029426575];

#[test]
fn gpt_with_dropout_steps_give_the_recorded_losses() {
    let _serial = serial();
    let cfg = kiln_models::GptConfig {
        dropout: 0.1,
        ..gpt_config()
    };
    let run = gpt_steps(&cfg, 4, 0, 4, &Device::flex());
    assert_close("W2D (batch 4)", &run.losses, &W2D_LOSSES, 1e-4);
}

#[test]
fn padded_text_classifier_steps_give_the_recorded_losses() {
    let _serial = serial();
    let run = workloads::text_classifier_steps(0, 3, &Device::flex());
    assert_close("W4", &run.losses, &W4_LOSSES, 1e-4);
}
