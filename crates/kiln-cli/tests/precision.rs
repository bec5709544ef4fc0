//! `trainer.precision` on the CPU: bf16 and f16 mixed precision train the digits MLP to f32's
//! accuracy and say so in the report; float16's loss scale is checkpointed, so a resumed run
//! goes on with the scale it stopped at and ends bit-identical to the uninterrupted one; a
//! run may change precision on resume; an unknown precision is a clear error; a GPT (with
//! dropout) follows its f32 validation losses within 1 % in either mixed precision.

mod common;

use common::*;

const CONFIG: &str = r#"
seed = 4
[data]
source = "builtin:digits"
[model]
hidden = [64]
dropout = 0.0
[trainer]
epochs = 12
batch_size = 8
optimizer = "adam"
lr = 0.001
schedule = "constant"
checkpoint_every_steps = 0
[output]
plots = false
"#;

fn accuracy(summary: &serde_json::Value) -> f64 {
    summary["test"]["accuracy"].as_f64().unwrap()
}

#[test]
fn mixed_precision_trains_as_well_as_f32_and_the_report_says_so() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("run.toml"), CONFIG).unwrap();
    let train = |precision: &str| {
        kiln_json(
            dir.path(),
            &[
                "train",
                "run.toml",
                "--json",
                "--precision",
                precision,
                "--set",
                &format!("output.name={precision}"),
            ],
        )
    };
    let f32 = train("f32");
    assert_eq!(f32["run"]["precision"]["name"], "f32");
    for precision in ["bf16-mixed", "f16-mixed"] {
        let run = train(precision);
        println!(
            "{precision}: test accuracy {:.4} (f32 {:.4})",
            accuracy(&run),
            accuracy(&f32)
        );
        assert!(
            (accuracy(&run) - accuracy(&f32)).abs() <= 0.02,
            "{precision}: accuracy {} against f32's {}",
            accuracy(&run),
            accuracy(&f32)
        );
        assert_ne!(
            run["validation"]["loss"], f32["validation"]["loss"],
            "{precision} computed as f32 did"
        );
        assert_eq!(run["run"]["precision"]["name"], precision);
        let report =
            std::fs::read_to_string(dir.path().join(format!("runs/{precision}/report.txt")))
                .unwrap();
        assert!(report.contains(&format!("in {precision}")), "{report}");
    }
    let f16 = &train("f16-mixed");
    assert!(f16["run"]["precision"]["loss_scale"].is_f64(), "{f16}");
}

/// The loss scale of each step record in a run's `metrics.jsonl`.
fn loss_scales(run: &std::path::Path) -> Vec<(u64, f64)> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|r| r["kind"] == "step")
        .map(|r| {
            (
                r["step"].as_u64().unwrap(),
                r["loss_scale"].as_f64().unwrap(),
            )
        })
        .collect()
}

#[test]
fn an_f16_run_resumes_with_its_loss_scale_bit_identically() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("run.toml"), CONFIG).unwrap();
    let train = |name: &str, epochs: &str| {
        kiln_json(
            dir.path(),
            &[
                "train",
                "run.toml",
                "--json",
                "--precision",
                "f16-mixed",
                "--set",
                &format!("output.name={name}"),
                "--set",
                &format!("trainer.epochs={epochs}"),
            ],
        )
    };
    // 158 steps an epoch. The first epoch overflows once at the initial scale (halved to
    // 32768), and 2000 good steps later, in epoch 14, it doubles again: a run split after
    // epoch 6 must carry the halved scale and its count of good steps across.
    let whole = train("whole", "16");
    let scales = loss_scales(&dir.path().join("runs/whole"));
    let distinct: std::collections::BTreeSet<u64> = scales.iter().map(|s| s.1 as u64).collect();
    assert!(distinct.len() >= 2, "the scale never changed: {distinct:?}");
    train("split", "6");
    let run = dir.path().join("runs/split");
    let resumed = kiln_json(
        dir.path(),
        &[
            "train",
            "--resume",
            run.to_str().unwrap(),
            "--set",
            "trainer.epochs=16",
            "--json",
        ],
    );
    assert_eq!(resumed["run"]["precision"], whole["run"]["precision"]);
    assert_eq!(loss_scales(&run), scales, "the resumed run's loss scales");
    assert!(
        std::fs::read(run.join("model.safetensors")).unwrap()
            == std::fs::read(dir.path().join("runs/whole/model.safetensors")).unwrap(),
        "the resumed f16 run's weights differ from the uninterrupted run's"
    );
}

#[test]
fn a_run_changes_precision_on_resume_and_refuses_unknown_ones() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("run.toml"), CONFIG).unwrap();
    kiln_ok(
        dir.path(),
        &[
            "train",
            "run.toml",
            "--quiet",
            "--precision",
            "f16-mixed",
            "--set",
            "output.name=r",
            "--set",
            "trainer.epochs=1",
        ],
    );
    let resumed = kiln_json(
        dir.path(),
        &[
            "train",
            "--resume",
            "runs/r",
            "--precision",
            "bf16-mixed",
            "--set",
            "trainer.epochs=2",
            "--json",
        ],
    );
    assert_eq!(resumed["run"]["precision"]["name"], "bf16-mixed");
    assert!(resumed["run"]["precision"]["loss_scale"].is_null());
    let err = kiln_err(dir.path(), &["train", "run.toml", "--precision", "fp8"]);
    assert!(
        err.contains("trainer.precision") && err.contains("bf16-mixed"),
        "{err}"
    );
    let err = kiln_err(dir.path(), &["train", "run.toml", "--precision", "bf16"]);
    assert!(err.contains("did you mean `bf16-mixed`"), "{err}");
}

#[test]
fn a_language_model_trains_in_each_precision_along_f32() {
    let dir = lm_dir();
    let train = |precision: &str| {
        let out = kiln_json(
            dir.path(),
            &[
                "train",
                "lm.toml",
                "--json",
                "--precision",
                precision,
                "--set",
                &format!("output.name={precision}"),
                "--set",
                "model.dropout=0.1",
                "--set",
                "trainer.eval_every_steps=20",
            ],
        );
        assert_eq!(out["run"]["precision"]["name"], precision);
        val_losses(&out)
    };
    let f32 = train("f32");
    for precision in ["bf16-mixed", "f16-mixed"] {
        let losses = train(precision);
        println!("{precision}: val losses {losses:?} (f32 {f32:?})");
        assert_eq!(losses.len(), f32.len());
        for (a, b) in losses.iter().zip(&f32) {
            assert!(
                (a - b).abs() <= 0.01 * b,
                "{precision}: val loss {a} against f32's {b}"
            );
        }
        assert_ne!(losses, f32, "{precision} computed as f32 did");
    }
}
