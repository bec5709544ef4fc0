//! `kiln` on the GPU device (built with `--features wgpu`; in CI the software Vulkan driver):
//! a GPT's loss curve (within 5e-4) and greedy text match the CPU's, a tabular run checkpointed on the CPU
//! continues on the GPU to the weights a CPU run reaches, and its scores are the same on
//! either device. Dropout is off: its masks come from each device's own random stream.
//!
//! Skipped, with the reason printed, where the machine has no GPU adapter.
#![cfg(feature = "wgpu")]

mod common;

use std::path::Path;

use common::*;
use kiln::config::DeviceRequest;

fn gpu_available() -> bool {
    match kiln::models::device::open(DeviceRequest::Gpu(None)) {
        Ok(gpu) => {
            println!("GPU device: {}", gpu.description);
            true
        }
        Err(e) => {
            println!("skipped: no GPU device to test: {e}");
            false
        }
    }
}

fn close(a: f64, b: f64, rel: f64) -> bool {
    (a - b).abs() <= rel * a.abs().max(b.abs()).max(1.0)
}

#[test]
fn a_gpt_trains_on_the_gpu_along_the_cpu_loss_curve() {
    if !gpu_available() {
        return;
    }
    let dir = lm_dir();
    let train = |device: &str| {
        kiln_json(
            dir.path(),
            &[
                "train",
                "lm.toml",
                "--json",
                "--device",
                device,
                "--set",
                &format!("output.name={device}"),
            ],
        )
    };
    let cpu = train("cpu");
    let gpu = train("gpu");
    let device = gpu["run"]["machine"]["device"].as_str().unwrap();
    assert!(device.starts_with("gpu:"), "report names the GPU: {device}");
    let (ce, ge) = (
        cpu["evals"].as_array().unwrap(),
        gpu["evals"].as_array().unwrap(),
    );
    assert_eq!(ce.len(), 4);
    assert_eq!(ce.len(), ge.len());
    for (c, g) in ce.iter().zip(ge) {
        let (c, g) = (
            c["val_loss"].as_f64().unwrap(),
            g["val_loss"].as_f64().unwrap(),
        );
        println!("val loss {c:.5} on the CPU, {g:.5} on the GPU");
        assert!(
            close(c, g, 5e-4),
            "validation loss {c} on the CPU, {g} on the GPU"
        );
    }
    // The GPU-trained model generates the same greedy text on either device.
    let greedy = |device: &str| {
        kiln_json(
            dir.path(),
            &[
                "generate",
                "runs/gpu",
                "--prompt",
                "the",
                "--max-new-tokens",
                "30",
                "--temperature",
                "0",
                "--device",
                device,
                "--json",
            ],
        )["text"]
            .clone()
    };
    assert_eq!(greedy("gpu"), greedy("cpu"));
}

/// bfloat16, which WGSL lacks, is refused naming the adapter, also for a CPU run resumed on
/// the GPU, which continues once given a precision the GPU has; float16 mixed precision on the
/// GPU follows the CPU's float16 loss curve (where the adapter has float16: lavapipe has not).
#[test]
fn mixed_precision_on_the_gpu() {
    if !gpu_available() {
        return;
    }
    let dir = lm_dir();
    let train = |name: &str, device: &str, precision: &str| {
        kiln(
            dir.path(),
            &[
                "train",
                "lm.toml",
                "--json",
                "--device",
                device,
                "--precision",
                precision,
                "--set",
                &format!("output.name={name}"),
            ],
        )
    };
    let out = train("bf16", "gpu", "bf16-mixed");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("bfloat16") && err.contains("gpu:0") && err.contains("f16-mixed"),
        "{err}"
    );
    // A bfloat16 run checkpointed on the CPU is refused on the GPU, then goes on there in f32.
    let parse = |out: std::process::Output| -> serde_json::Value {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let cpu_bf16 = parse(train("moving", "cpu", "bf16-mixed"));
    let run = dir.path().join("runs/moving");
    let run_arg = run.to_str().unwrap();
    let more = ["--set", "trainer.max_steps=50"];
    let err = kiln_err(
        dir.path(),
        &[
            &["train", "--resume", run_arg, "--device", "gpu"][..],
            &more,
        ]
        .concat(),
    );
    assert!(
        err.contains("bfloat16") && err.contains("--precision"),
        "{err}"
    );
    let resumed = kiln_json(
        dir.path(),
        &[
            &[
                "train",
                "--resume",
                run_arg,
                "--device",
                "gpu",
                "--precision",
                "f32",
                "--json",
            ][..],
            &more,
        ]
        .concat(),
    );
    assert_eq!(
        (resumed["resumed_from"].as_u64(), resumed["steps"].as_u64()),
        (Some(40), Some(50))
    );
    assert_eq!(resumed["run"]["precision"]["name"], "f32");
    let (before, after) = (val_losses(&cpu_bf16), val_losses(&resumed));
    let (before, after) = (*before.last().unwrap(), *after.last().unwrap());
    println!(
        "bf16-mixed on the CPU to step 40: val loss {before:.5}; f32 on the GPU to 50: {after:.5}"
    );
    assert!(close(before, after, 0.05), "val loss {before} then {after}");

    let gpu = kiln::models::device::open(DeviceRequest::Gpu(None)).unwrap();
    let f16 = kiln::config::Precision::F16Mixed;
    if kiln_train::precision::check_precision(f16, &gpu.device, &gpu.description).is_err() {
        println!("skipped: {} has no float16", gpu.description);
        return;
    }
    let cpu = parse(train("cpu16", "cpu", "f16-mixed"));
    let on_gpu = parse(train("gpu16", "gpu", "f16-mixed"));
    assert_eq!(on_gpu["run"]["precision"]["name"], "f16-mixed");
    for (c, g) in val_losses(&cpu).iter().zip(val_losses(&on_gpu)) {
        println!("f16-mixed val loss {c:.5} on the CPU, {g:.5} on the GPU");
        assert!(
            close(*c, g, 2e-3),
            "validation loss {c} on the CPU, {g} on the GPU"
        );
    }
}

const TABULAR: &str = r#"
seed = 3
[data]
source = "builtin:digits"
[model]
hidden = [64, 32]
dropout = 0.0
[trainer]
epochs = 4
batch_size = 32
optimizer = "adamw"
lr = 0.002
schedule = "constant"
checkpoint_every_steps = 20
[output]
plots = false
"#;

fn test_loss(summary: &serde_json::Value) -> f64 {
    summary["test"]["loss"]
        .as_f64()
        .unwrap_or_else(|| panic!("a test loss in {summary}"))
}

#[test]
fn a_cpu_checkpoint_continues_on_the_gpu_and_its_run_scores_on_either_device() {
    if !gpu_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("run.toml"), TABULAR).unwrap();
    let train = |name: &str, epochs: &str| {
        kiln_json(
            dir.path(),
            &[
                "train",
                "run.toml",
                "--json",
                "--set",
                &format!("output.name={name}"),
                "--set",
                &format!("trainer.epochs={epochs}"),
            ],
        )
    };
    let four = train("four", "4");
    train("two", "2");
    let run = dir.path().join("runs/two");
    let run_arg = run.to_str().unwrap();
    let resumed = kiln_json(
        dir.path(),
        &[
            "train",
            "--resume",
            run_arg,
            "--device",
            "gpu",
            "--set",
            "trainer.epochs=4",
            "--json",
        ],
    );
    assert_eq!(resumed["epochs_run"], 4);
    assert!(
        resumed["run"]["machine"]["device"]
            .as_str()
            .unwrap()
            .starts_with("gpu:")
    );
    let (a, b) = (test_loss(&four), test_loss(&resumed));
    println!("test loss after 4 epochs: {a:.6} on the CPU, {b:.6} with the last 2 on the GPU");
    assert!(close(a, b, 1e-3), "CPU {a}, CPU then GPU {b}");

    // The run scores the same on either device, and predicts on the CPU.
    let eval = |run: &Path, device: &str| {
        kiln_json(
            dir.path(),
            &[
                "eval",
                run.to_str().unwrap(),
                "--data",
                "builtin:digits",
                "--device",
                device,
                "--json",
            ],
        )
    };
    let (on_cpu, on_gpu) = (eval(&run, "cpu"), eval(&run, "gpu"));
    let (a, b) = (
        on_cpu["test"]["loss"].as_f64(),
        on_gpu["test"]["loss"].as_f64(),
    );
    assert!(a.is_some(), "{on_cpu}");
    assert!(
        close(a.unwrap(), b.unwrap(), 1e-5),
        "eval loss {a:?} on the CPU, {b:?} on the GPU"
    );
    kiln_ok(
        dir.path(),
        &[
            "predict",
            run_arg,
            "--data",
            "builtin:digits",
            "--out",
            "preds.csv",
            "--device",
            "cpu",
        ],
    );
    assert!(dir.path().join("preds.csv").is_file());

    // `auto` takes a hardware GPU, never the software renderer (slower than the CPU).
    let auto = kiln_json(
        dir.path(),
        &[
            "train",
            "run.toml",
            "--json",
            "--device",
            "auto",
            "--set",
            "trainer.epochs=1",
        ],
    );
    let ran = auto["run"]["machine"]["device"]
        .as_str()
        .unwrap()
        .to_string();
    let hardware = kiln::models::device::gpu_adapters()
        .iter()
        .any(|(_, kind)| *kind != "software");
    assert_eq!(ran.starts_with("gpu:"), hardware, "auto ran on {ran}");
}
