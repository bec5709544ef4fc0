//! Robustness at the mechanism: numbers that overflow f32, run folders whose files disagree,
//! outputs that would replace inputs, temporaries left by a killed writer, and models too
//! large for memory. Each case ends in a clear error or a correct result, never a hang, a
//! panic, a NaN answer or a run that cannot be read back.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;

fn write(dir: &Path, name: &str, content: &[u8]) -> String {
    std::fs::write(dir.join(name), content).unwrap();
    name.to_string()
}

fn expect(err: &str, needles: &[&str]) {
    for n in needles {
        assert!(err.contains(n), "error should mention {n:?}:\n{err}");
    }
}

/// `churn_csv` with the `age` of data row `row` (0-based) replaced by `value`.
fn with_age(rows: usize, row: usize, value: &str, target: bool) -> String {
    let csv = churn_csv(rows, 17, target, None);
    let mut lines: Vec<String> = csv.lines().map(str::to_string).collect();
    let mut fields: Vec<String> = lines[row + 1].split(',').map(str::to_string).collect();
    fields[1] = value.to_string();
    lines[row + 1] = fields.join(",");
    lines.join("\n") + "\n"
}

#[test]
fn values_beyond_f32_are_refused_with_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let run = churn_run(dir.path(), "churn");
    // The outside probe's repro: `eval` on a row with age = 1e300 used to loop forever in
    // roc_curve while its memory grew. It must answer at once, naming line and column.
    for value in ["1e300", "-4e38", "1e39"] {
        write(
            dir.path(),
            "big.csv",
            with_age(50, 9, value, true).as_bytes(),
        );
        let started = Instant::now();
        let err = kiln_err(dir.path(), &["eval", &run, "--data", "big.csv"]);
        assert!(started.elapsed() < Duration::from_secs(60));
        expect(
            &err,
            &[
                "big.csv",
                "line 11",
                "column \"age\"",
                "outside the range of 32-bit floats",
            ],
        );
        let err = kiln_err(
            dir.path(),
            &["predict", &run, "--data", "big.csv", "--out", "p.csv"],
        );
        expect(&err, &["big.csv", "line 11", "column \"age\""]);
    }
    // Training on such a value: an error by default, a counted skip on request, and the run
    // written then loads back (it used to hold "scale": null).
    write(
        dir.path(),
        "bad_train.csv",
        with_age(400, 30, "1e300", true).as_bytes(),
    );
    let err = kiln_err(
        dir.path(),
        &[
            "train",
            "--data",
            "bad_train.csv",
            "--target",
            "churn",
            "--quiet",
        ],
    );
    expect(&err, &["line 32", "column \"age\"", "32-bit floats"]);
    let out = kiln_json(
        dir.path(),
        &[
            "train",
            "--data",
            "bad_train.csv",
            "--target",
            "churn",
            "--set",
            "data.bad_rows=skip",
            "--set",
            "trainer.epochs=1",
            "--set",
            "output.name=skipped",
            "--json",
        ],
    );
    let rows = &out["rows"];
    let kept: u64 = ["train", "validation", "test"]
        .iter()
        .map(|s| rows[s].as_u64().unwrap())
        .sum();
    assert_eq!(kept, 399, "one of 400 rows skipped: {out}");
    let skipped = out["run_dir"].as_str().unwrap();
    let pre: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join(skipped).join("preprocessor.json")).unwrap(),
    )
    .unwrap();
    for f in pre["features"].as_array().unwrap() {
        if f["type"] == "numeric" {
            for key in ["fill", "shift", "scale"] {
                assert!(f[key].as_f64().is_some_and(f64::is_finite), "{f}");
            }
        }
    }
    write(
        dir.path(),
        "ok.csv",
        churn_csv(30, 5, true, None).as_bytes(),
    );
    kiln_ok(dir.path(), &["eval", skipped, "--data", "ok.csv"]);
}

#[test]
fn far_out_values_never_give_a_silent_nan() {
    let dir = tempfile::tempdir().unwrap();
    let run = churn_run(dir.path(), "churn");
    // Finite in f32 but far outside the training range: either a finite prediction or an
    // error naming the line; never NaN written as a prediction.
    for value in ["3.4e38", "-3.4e38", "1e30", "1e20"] {
        write(
            dir.path(),
            "far.csv",
            with_age(20, 4, value, false).as_bytes(),
        );
        let out = kiln(
            dir.path(),
            &[
                "predict",
                &run,
                "--data",
                "far.csv",
                "--out",
                "far_p.csv",
                "--proba",
            ],
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("panicked"), "{stderr}");
        if out.status.success() {
            let written = std::fs::read_to_string(dir.path().join("far_p.csv")).unwrap();
            let lower = written.to_lowercase();
            assert!(
                !lower.contains("nan") && !lower.contains("inf"),
                "{value}: {written}"
            );
        } else {
            expect(&stderr, &["far.csv", "line 6"]);
        }
    }
}

#[test]
fn run_files_that_disagree_are_refused_naming_both() {
    let dir = tempfile::tempdir().unwrap();
    let run = churn_run(dir.path(), "churn");
    let run_dir = dir.path().join(&run);
    let pre_path = run_dir.join("preprocessor.json");
    let original = std::fs::read_to_string(&pre_path).unwrap();
    let mut pre: serde_json::Value = serde_json::from_str(&original).unwrap();
    // Drop one input column from the preprocessing: the model still expects it. This used
    // to make predict read past the end of each row.
    let features = pre["features"].as_array_mut().unwrap();
    let numeric = features
        .iter()
        .position(|f| f["type"] == "numeric")
        .unwrap();
    features.remove(numeric);
    std::fs::write(&pre_path, serde_json::to_string(&pre).unwrap()).unwrap();
    write(
        dir.path(),
        "new.csv",
        churn_csv(20, 9, false, None).as_bytes(),
    );
    let err = kiln_err(
        dir.path(),
        &["predict", &run, "--data", "new.csv", "--out", "p.csv"],
    );
    expect(
        &err,
        &["preprocessor.json", "model.json", "disagree", "input"],
    );
    // A statistic that cannot be used.
    let mut pre: serde_json::Value = serde_json::from_str(&original).unwrap();
    let f = pre["features"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|f| f["type"] == "numeric")
        .unwrap();
    f["scale"] = serde_json::json!(0.0);
    std::fs::write(&pre_path, serde_json::to_string(&pre).unwrap()).unwrap();
    let err = kiln_err(
        dir.path(),
        &["predict", &run, "--data", "new.csv", "--out", "p.csv"],
    );
    expect(&err, &["preprocessor.json", "scale", "positive"]);
    // Other classes than the model's outputs.
    let mut pre: serde_json::Value = serde_json::from_str(&original).unwrap();
    pre["target"]["classes"]
        .as_array_mut()
        .unwrap()
        .push("maybe".into());
    std::fs::write(&pre_path, serde_json::to_string(&pre).unwrap()).unwrap();
    let err = kiln_err(dir.path(), &["serve", &run, "--port", "0"]);
    expect(&err, &["disagree", "outputs"]);
    std::fs::write(&pre_path, &original).unwrap();
    // Weights holding a NaN.
    let weights = run_dir.join("model.safetensors");
    let bytes = std::fs::read(&weights).unwrap();
    let header = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut broken = bytes.clone();
    broken[8 + header..8 + header + 4].copy_from_slice(&f32::NAN.to_le_bytes());
    std::fs::write(&weights, &broken).unwrap();
    let err = kiln_err(
        dir.path(),
        &["predict", &run, "--data", "new.csv", "--out", "p.csv"],
    );
    expect(&err, &["model.safetensors", "NaN", "finite"]);
    std::fs::write(&weights, &bytes).unwrap();
    kiln_ok(
        dir.path(),
        &["predict", &run, "--data", "new.csv", "--out", "p.csv"],
    );
}

#[test]
fn outputs_never_replace_inputs() {
    let dir = tempfile::tempdir().unwrap();
    let run = churn_run(dir.path(), "churn");
    let run_dir = dir.path().join(&run);
    let weights = std::fs::read(run_dir.join("model.safetensors")).unwrap();
    // Export into the run itself would replace its weights with transposed ones.
    let err = kiln_err(
        dir.path(),
        &["export", &run, "--format", "safetensors", "--out", &run],
    );
    expect(&err, &["holds a kiln run", "--out"]);
    assert_eq!(
        std::fs::read(run_dir.join("model.safetensors")).unwrap(),
        weights
    );
    // Predictions over their own input, or over a file of the run.
    write(
        dir.path(),
        "x.csv",
        churn_csv(20, 9, false, None).as_bytes(),
    );
    let input = std::fs::read(dir.path().join("x.csv")).unwrap();
    let err = kiln_err(
        dir.path(),
        &["predict", &run, "--data", "x.csv", "--out", "x.csv"],
    );
    expect(&err, &["x.csv", "input data"]);
    assert_eq!(std::fs::read(dir.path().join("x.csv")).unwrap(), input);
    let target = format!("{run}/preprocessor.json");
    let err = kiln_err(
        dir.path(),
        &["predict", &run, "--data", "x.csv", "--out", &target],
    );
    expect(&err, &["a file of the run"]);
    // Predictions written beside the run's files are fine.
    kiln_ok(
        dir.path(),
        &[
            "predict",
            &run,
            "--data",
            "x.csv",
            "--out",
            &format!("{run}/predictions.csv"),
        ],
    );
}

#[test]
fn resuming_a_finished_run_keeps_its_report() {
    let dir = tempfile::tempdir().unwrap();
    let run = churn_run(dir.path(), "churn");
    let report_path = dir.path().join(&run).join("report.json");
    let before = std::fs::read(&report_path).unwrap();
    let out = kiln_json(dir.path(), &["train", "--resume", &run, "--json"]);
    assert_eq!(std::fs::read(&report_path).unwrap(), before);
    let original: serde_json::Value = serde_json::from_slice(&before).unwrap();
    assert_eq!(out["train_seconds"], original["train_seconds"]);
}

#[test]
fn temporaries_of_a_killed_writer_are_removed_on_the_next_open() {
    let dir = tempfile::tempdir().unwrap();
    let run = churn_run(dir.path(), "churn");
    let run_dir = dir.path().join(&run);
    // PIDs far above any live process (Linux caps them at 2^22).
    let dead = 4_999_999;
    let stale_file = run_dir.join(format!(".model.safetensors.tmp-{dead}"));
    let stale_checkpoint = run_dir.join(format!("checkpoints/.step-00000009.tmp-{dead}"));
    std::fs::write(&stale_file, b"half written").unwrap();
    std::fs::create_dir_all(&stale_checkpoint).unwrap();
    std::fs::write(stale_checkpoint.join("model.safetensors"), b"half").unwrap();
    // A dead writer's temporary that changed a moment ago may belong to another host sharing
    // the folder: it stays until it has not changed for a minute.
    let recent = run_dir.join(format!(".schema.json.tmp-{dead}"));
    std::fs::write(&recent, b"just written").unwrap();
    let old = std::time::SystemTime::now() - Duration::from_secs(120);
    for path in [&stale_file, &stale_checkpoint] {
        std::fs::File::open(path)
            .unwrap()
            .set_modified(old)
            .unwrap();
    }
    // One of a live process (this test's) stays: it may still be written.
    let live = run_dir.join(format!(".report.json.tmp-{}", std::process::id()));
    std::fs::write(&live, b"being written").unwrap();
    write(
        dir.path(),
        "x.csv",
        churn_csv(20, 9, false, None).as_bytes(),
    );
    kiln_ok(
        dir.path(),
        &["predict", &run, "--data", "x.csv", "--out", "p.csv"],
    );
    assert!(!stale_file.exists());
    assert!(live.exists());
    assert!(recent.exists());
    kiln_json(dir.path(), &["train", "--resume", &run, "--json"]);
    assert!(!stale_checkpoint.exists());
}

#[test]
fn a_model_larger_than_memory_is_refused_before_allocating() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "train.csv",
        churn_csv(100, 3, true, None).as_bytes(),
    );
    let started = Instant::now();
    let err = kiln_err(
        dir.path(),
        &[
            "train",
            "--data",
            "train.csv",
            "--target",
            "churn",
            "--set",
            "model.hidden=[100000, 100000]",
            "--set",
            "output.name=huge",
            "--quiet",
        ],
    );
    assert!(started.elapsed() < Duration::from_secs(60));
    expect(&err, &["GiB", "parameters", "model.hidden"]);
    assert!(
        !dir.path().join("runs/huge").exists(),
        "a refused run leaves no directory"
    );
}

#[test]
fn an_output_that_overflows_is_refused_naming_the_line_and_the_input() {
    let dir = tempfile::tempdir().unwrap();
    let mut csv = String::from("age,spend,y\n");
    for i in 0..300 {
        let (age, spend) = (18.0 + (i * 37 % 60) as f64, 20.0 + (i * 13 % 80) as f64);
        csv.push_str(&format!("{age},{spend},{:.2}\n", 2.0 * age + 0.5 * spend));
    }
    write(dir.path(), "train.csv", csv.as_bytes());
    let out = kiln_json(
        dir.path(),
        &[
            "train",
            "--data",
            "train.csv",
            "--target",
            "y",
            "--set",
            "trainer.epochs=3",
            "--json",
        ],
    );
    let run = out["run_dir"].as_str().unwrap();
    // Finite f32 inputs whose prediction overflows: refused, never written as inf.
    write(dir.path(), "far.csv", b"age,spend\n30,50\n3.4e38,3.4e38\n");
    let err = kiln_err(
        dir.path(),
        &["predict", run, "--data", "far.csv", "--out", "p.csv"],
    );
    expect(
        &err,
        &["far.csv, line 3", "the model's output is", "\"age\""],
    );
    assert!(!dir.path().join("p.csv").exists());
}
