//! The shared CPU workloads of `../shared/bench/WORKLOADS.md` (W1 MLP, W2 GPT, W2D GPT with
//! dropout, W3 CNN, W4 padded text classifier training steps; I1 GPT forward latency) run through kiln's own code (`common/workloads.rs`:
//! `Network`/`Gpt`, the trainer's loss, `ParamGrads`, `apply_update`, kiln's Adam/AdamW).
//! Prints `RESULT kiln <workload> <value> <unit>` lines, as `torch_reference.py` does for
//! PyTorch.
//!
//! `cargo bench -p kiln-train --bench workloads [-- W1 W2 W2D W3 W4 I1 LV MM W2-BF16 LOADER]`: LV is
//! a large-vocabulary GPT step (below); MM is the
//! roofline's matmul microbench (best GFLOP/s per shape, `RESULT kiln MM<m>x<k>x<n> ...
//! GFLOP/s`); W2-BF16 runs W2 in f32 and in bf16 from the same weights. Everything runs on
//! a rayon worker, as the `kiln` binary does (`KILN_NO_POOL=1`: from the main thread, for
//! comparison), with the other workers kept awake (`KILN_WAIT_POLICY=passive`: let them
//! sleep). `I1_RUNS=N` times N forwards instead of 50, for profiling.

use burn::prelude::Device;
use burn::tensor::FloatDType;
use kiln_train::grads::parameter_count;
#[path = "common/workloads.rs"]
mod workloads;

use workloads::{
    MATMUL_SHAPES, classifier_steps, cnn_spec, gpt_config, gpt_flops_per_token,
    gpt_forward_latency, gpt_steps, gpt_steps_in, large_vocabulary_config,
    loader_samples_per_second, matmul_gflops, mlp_spec, text_classifier_steps, text_lengths,
};

/// mimalloc, keeping freed pages: the allocator the `kiln` binary uses.
#[global_allocator]
static ALLOCATOR: kiln_alloc::Allocator = kiln_alloc::Allocator;

fn main() {
    kiln_alloc::configure();
    // As the CLI: subnormals flushed on the compute threads.
    kiln_models::ops::configure_compute_threads();
    if std::env::var_os("KILN_NO_POOL").is_some() {
        return run_workloads();
    }
    kiln_models::ops::in_thread_pool(run_workloads);
}

/// W2's training loop (batch 16, 3 warm-up and 20 timed steps) for `cfg`: prints the RESULT
/// line under `name` and returns tokens/s.
fn gpt_tokens_per_second(
    name: &str,
    cfg: &kiln_models::GptConfig,
    batch: usize,
    device: &Device,
) -> f64 {
    let timed = 20;
    let r = gpt_steps(cfg, batch, 3, timed, device);
    eprintln!(
        "{name}: {timed} steps in {:.2} s, last loss {:.4}",
        r.seconds,
        r.losses.last().unwrap()
    );
    let tokens_per_s = (batch * cfg.context * timed) as f64 / r.seconds;
    println!("RESULT kiln {name} {tokens_per_s:.1} tokens/s");
    tokens_per_s
}

fn run_workloads() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let run = |w: &str| args.is_empty() || args.iter().any(|a| a == w);
    let device = Device::flex();
    if run("W1") {
        let r = classifier_steps(&mlp_spec(), 128, 10, 200, &device);
        eprintln!(
            "W1: 200 steps in {:.2} s, last loss {:.4}",
            r.seconds,
            r.losses.last().unwrap()
        );
        println!("RESULT kiln W1 {:.1} samples/s", 128.0 * 200.0 / r.seconds);
    }
    if run("W3") {
        let r = classifier_steps(&cnn_spec(), 64, 5, 50, &device);
        eprintln!(
            "W3: 50 steps in {:.2} s, last loss {:.4}",
            r.seconds,
            r.losses.last().unwrap()
        );
        println!("RESULT kiln W3 {:.1} samples/s", 64.0 * 50.0 / r.seconds);
    }
    if run("W2") {
        let cfg = gpt_config();
        let params = parameter_count(&kiln_models::Gpt::new(&cfg, &device));
        eprintln!("W2: {params} parameters, tied head");
        let tokens_per_s = gpt_tokens_per_second("W2", &cfg, 16, &device);
        eprintln!(
            "W2: {:.1} model GFLOP/s ({:.2} MFLOP per token)",
            tokens_per_s * gpt_flops_per_token(&cfg, params) / 1e9,
            gpt_flops_per_token(&cfg, params) / 1e6
        );
    }
    if run("W2D") {
        let cfg = kiln_models::GptConfig {
            dropout: 0.1,
            ..gpt_config()
        };
        gpt_tokens_per_second("W2D", &cfg, 16, &device);
    }
    if run("LV") {
        // nanoGPT's CPU "baby" shape over the People's Daily character vocabulary.
        gpt_tokens_per_second("LV", &large_vocabulary_config(), 12, &device);
    }
    if run("W4") {
        let lengths = text_lengths();
        let r = text_classifier_steps(3, 20, &device);
        eprintln!(
            "W4: 20 steps in {:.2} s, last loss {:.4}, lengths mean {:.1}",
            r.seconds,
            r.losses.last().unwrap(),
            lengths.iter().sum::<usize>() as f64 / lengths.len() as f64
        );
        println!(
            "RESULT kiln W4 {:.1} samples/s",
            lengths.len() as f64 * 20.0 / r.seconds
        );
    }
    if args.iter().any(|a| a == "W2-BF16") {
        // W2 with every parameter in bf16, next to f32 from the same initial weights.
        let cfg = gpt_config();
        let (batch, timed) = (16, 20);
        for (name, dtype) in [("f32", FloatDType::F32), ("bf16", FloatDType::BF16)] {
            let r = gpt_steps_in(&cfg, batch, 3, timed, dtype, &device);
            let tokens_per_s = (batch * cfg.context * timed) as f64 / r.seconds;
            eprintln!(
                "W2 {name}: {timed} steps in {:.2} s, loss after the timed steps {:.5}",
                r.seconds,
                r.losses.last().unwrap()
            );
            println!("RESULT kiln W2-{name} {tokens_per_s:.1} tokens/s");
        }
    }
    if run("I1") {
        // I1_RUNS: more timed forwards than the workload's 50, for profiling.
        let runs = std::env::var("I1_RUNS").ok().and_then(|v| v.parse().ok());
        let (times, _) = gpt_forward_latency(&gpt_config(), 128, 5, runs.unwrap_or(50), &device);
        let mean = times.iter().sum::<f64>() / times.len() as f64;
        println!("RESULT kiln I1 {:.3} ms", mean * 1e3);
    }
    if args.iter().any(|a| a == "LOADER") {
        // Fashion-MNIST's 60 000 training images, W3's batch of 64.
        let shape = kiln_data::InputShape::Image {
            channels: 1,
            height: 28,
            width: 28,
        };
        let rate = loader_samples_per_second(60_000, shape, 64, 3, &device);
        println!("RESULT kiln LOADER {rate:.1} samples/s");
    }
    if args.iter().any(|a| a == "W2-FLOPS") {
        let cfg = gpt_config();
        let params = parameter_count(&kiln_models::Gpt::new(&cfg, &device));
        println!("FLOPS_PER_TOKEN W2 {}", gpt_flops_per_token(&cfg, params));
    }
    if args.iter().any(|a| a == "MM") {
        for (m, k, n) in MATMUL_SHAPES {
            let gflops = matmul_gflops(m, k, n, 20, &device);
            println!("RESULT kiln MM{m}x{k}x{n} {gflops:.1} GFLOP/s");
        }
    }
}
