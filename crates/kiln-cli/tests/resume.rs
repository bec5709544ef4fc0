//! Checkpoints: a run killed with SIGKILL mid-epoch and resumed ends with weights
//! bit-identical to an uninterrupted run; a finished run extended to more epochs equals one
//! asked for them from the start; damaged checkpoints give clear errors.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

const CONFIG: &str = r#"
seed = 3
[data]
source = "builtin:digits"
[model]
hidden = [128, 64]
dropout = 0.3
batch_norm = true
[trainer]
epochs = 25
batch_size = 16
optimizer = "adamw"
lr = 0.002
weight_decay = 0.01
schedule = "cosine"
warmup_steps = 20
grad_clip_norm = 1.0
grad_accum_steps = 2
checkpoint_every_steps = 7
[output]
plots = false
"#;

fn latest_step(run: &Path) -> Option<u64> {
    let name = std::fs::read_to_string(run.join("checkpoints/latest")).ok()?;
    name.trim().strip_prefix("step-")?.parse().ok()
}

#[test]
fn sigkill_then_resume_is_bit_identical() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("run.toml"), CONFIG).unwrap();
    // Uninterrupted reference run.
    kiln_ok(
        dir.path(),
        &["train", "run.toml", "--quiet", "--set", "output.name=full"],
    );
    let reference = std::fs::read(dir.path().join("runs/full/model.safetensors")).unwrap();

    // The same run, killed with SIGKILL once it has checkpointed past epoch 3 (40 steps an epoch).
    let mut child = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args([
            "train",
            "run.toml",
            "--quiet",
            "--set",
            "output.name=killed",
        ])
        .current_dir(dir.path())
        .spawn()
        .unwrap();
    let run = dir.path().join("runs/killed");
    let started = Instant::now();
    loop {
        if latest_step(&run).is_some_and(|s| s >= 150) {
            break;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run finished before it could be killed"
        );
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "no checkpoint appeared"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    child.kill().unwrap(); // SIGKILL on Unix
    child.wait().unwrap();
    assert!(
        !run.join("model.safetensors").exists(),
        "killed before the end"
    );
    let killed_at = latest_step(&run).unwrap();

    let out = kiln_json(
        dir.path(),
        &["train", "--resume", run.to_str().unwrap(), "--json"],
    );
    assert_eq!(out["resumed_from"].as_u64(), Some(killed_at));
    let resumed = std::fs::read(run.join("model.safetensors")).unwrap();
    assert!(
        resumed == reference,
        "resumed weights differ from the uninterrupted run (killed at step {killed_at})"
    );
    // The resumed metrics log has no duplicated steps.
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let mut steps: Vec<u64> = metrics
        .lines()
        .filter(|l| l.contains("\"kind\":\"step\""))
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["step"]
                .as_u64()
                .unwrap()
        })
        .collect();
    let n = steps.len();
    steps.dedup();
    assert_eq!(steps.len(), n, "duplicate step records after resume");
}

#[test]
fn truncated_checkpoint_is_reported_and_earlier_one_still_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let config = CONFIG.replace("epochs = 25", "epochs = 2");
    std::fs::write(dir.path().join("run.toml"), config).unwrap();
    kiln_ok(
        dir.path(),
        &["train", "run.toml", "--quiet", "--set", "output.name=r"],
    );
    let ckpts = dir.path().join("runs/r/checkpoints");
    let latest = std::fs::read_to_string(ckpts.join("latest")).unwrap();
    let weights = ckpts.join(latest.trim()).join("model.safetensors");
    let bytes = std::fs::read(&weights).unwrap();
    std::fs::write(&weights, &bytes[..bytes.len() / 2]).unwrap();
    let run = dir.path().join("runs/r");
    let err = kiln_err(dir.path(), &["train", "--resume", run.to_str().unwrap()]);
    assert!(err.contains("truncated"), "{err}");
    assert!(err.contains("usable earlier checkpoints"), "{err}");
    // The earlier checkpoint named in the message still works.
    let earlier = kiln_train::checkpoint::list_checkpoints(&ckpts)
        .unwrap()
        .into_iter()
        .find(|n| n != latest.trim())
        .unwrap();
    kiln_ok(
        dir.path(),
        &[
            "train",
            "--resume",
            ckpts.join(earlier).to_str().unwrap(),
            "--quiet",
        ],
    );
}

#[test]
fn foreign_directory_is_not_a_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let fake = dir.path().join("runs/x/checkpoints/step-00000001");
    std::fs::create_dir_all(&fake).unwrap();
    std::fs::write(
        dir.path().join("runs/x/checkpoints/latest"),
        "step-00000001",
    )
    .unwrap();
    std::fs::write(fake.join("model.safetensors"), b"not weights").unwrap();
    let err = kiln_err(
        dir.path(),
        &[
            "train",
            "--resume",
            dir.path().join("runs/x").to_str().unwrap(),
        ],
    );
    assert!(err.contains("not a kiln checkpoint"), "{err}");
}

#[test]
fn a_finished_run_extended_equals_one_asked_for_the_epochs_from_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let config = CONFIG
        .replace("epochs = 25", "epochs = 3")
        .replace("schedule = \"cosine\"", "schedule = \"constant\"");
    std::fs::write(dir.path().join("run.toml"), config).unwrap();
    let train = |name: &str, epochs: &str| {
        kiln_ok(
            dir.path(),
            &[
                "train",
                "run.toml",
                "--quiet",
                "--set",
                &format!("output.name={name}"),
                "--set",
                &format!("trainer.epochs={epochs}"),
            ],
        )
    };
    train("five", "5");
    train("three", "3");
    let run = dir.path().join("runs/three");
    let run_arg = run.to_str().unwrap();
    // Finished: a plain resume gives the report again and says how to extend; asking for
    // no more epochs than it ran is an error saying the same.
    let out = kiln_ok(dir.path(), &["train", "--resume", run_arg]);
    assert!(out.contains("--set trainer.epochs=N"), "{out}");
    let err = kiln_err(
        dir.path(),
        &["train", "--resume", run_arg, "--set", "trainer.epochs=3"],
    );
    assert!(
        err.contains("has finished (3 of 3 epochs")
            && err.contains("--set trainer.epochs=N (N > 3)"),
        "{err}"
    );
    // Only the length of the run may change, and only upwards.
    let err = kiln_err(
        dir.path(),
        &["train", "--resume", run_arg, "--set", "trainer.lr=0.1"],
    );
    assert!(
        err.contains(
            "only `trainer.epochs`, `trainer.max_steps`, `trainer.early_stopping_patience`, \
             `trainer.precision` may change"
        ),
        "{err}"
    );
    let err = kiln_err(
        dir.path(),
        &["train", "--resume", run_arg, "--set", "trainer.epochs=2"],
    );
    assert!(
        err.contains("trainer.epochs = 2 is below the 3 epochs"),
        "{err}"
    );
    let out = kiln_json(
        dir.path(),
        &[
            "train",
            "--resume",
            run_arg,
            "--set",
            "trainer.epochs=5",
            "--json",
        ],
    );
    assert_eq!(out["epochs_run"], 5);
    assert_eq!(out["resumed_from"], 120);
    let five = std::fs::read(dir.path().join("runs/five/model.safetensors")).unwrap();
    let extended = std::fs::read(run.join("model.safetensors")).unwrap();
    assert!(
        five == extended,
        "the extended run differs from a 5-epoch run"
    );
    // The new length is the run's from now on.
    let saved = std::fs::read_to_string(run.join("config.toml")).unwrap();
    assert!(saved.contains("epochs = 5"), "{saved}");
    let err = kiln_err(
        dir.path(),
        &["train", "--resume", run_arg, "--set", "trainer.epochs=5"],
    );
    assert!(err.contains("has finished (5 of 5 epochs"), "{err}");
}
