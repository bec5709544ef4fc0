//! Bad input of every kind gives a clear error naming the file, line, column or key, exit
//! code 1, and never a panic.

mod common;

use std::path::Path;

use common::*;

fn write(dir: &Path, name: &str, content: &[u8]) -> String {
    std::fs::write(dir.join(name), content).unwrap();
    name.to_string()
}

fn train_csv_err(content: &[u8], target: &str, extra: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let f = write(dir.path(), "data.csv", content);
    let mut args = vec!["train", "--data", f.as_str(), "--target", target, "--quiet"];
    args.extend_from_slice(extra);
    kiln_err(dir.path(), &args)
}

fn expect(err: &str, needles: &[&str]) {
    for n in needles {
        assert!(err.contains(n), "error should mention {n:?}:\n{err}");
    }
}

const GOOD: &str = "a,b,label\n1,2,x\n3,4,y\n5,6,x\n7,8,y\n9,10,x\n11,12,y\n";

#[test]
fn empty_file() {
    expect(&train_csv_err(b"", "label", &[]), &["data.csv", "empty"]);
}

#[test]
fn header_only() {
    expect(
        &train_csv_err(b"a,b,label\n", "label", &[]),
        &["data.csv", "only a header"],
    );
}

#[test]
fn wrong_field_count_names_line() {
    expect(
        &train_csv_err(b"a,b,label\n1,2,x\n3,4\n", "label", &[]),
        &["data.csv", "line 3", "expected 3 fields"],
    );
}

#[test]
fn malformed_rows_can_be_skipped_and_are_counted() {
    let dir = tempfile::tempdir().unwrap();
    let mut csv = String::from(GOOD);
    csv.push_str("1,2\n");
    for i in 0..40 {
        csv.push_str(&format!(
            "{},{},{}\n",
            i,
            i * 2,
            if i % 2 == 0 { "x" } else { "y" }
        ));
    }
    write(dir.path(), "d.csv", csv.as_bytes());
    let out = kiln_ok(
        dir.path(),
        &[
            "train",
            "--data",
            "d.csv",
            "--target",
            "label",
            "--quiet",
            "--set",
            "data.bad_rows=skip",
            "--set",
            "trainer.epochs=2",
        ],
    );
    assert!(out.contains("1 malformed rows skipped"), "{out}");
}

#[test]
fn unknown_target_lists_columns() {
    expect(
        &train_csv_err(GOOD.as_bytes(), "lable", &[]),
        &["no column named \"lable\"", "a, b, label"],
    );
}

#[test]
fn text_in_numeric_column_names_line_and_column() {
    let mut csv = String::from("a,b,label\n");
    for i in 0..30 {
        csv.push_str(&format!("{},{},{}\n", i, i + 1, i % 2));
    }
    csv.push_str("oops,3,1\n");
    expect(
        &train_csv_err(csv.as_bytes(), "label", &[]),
        &["line 32", "column \"a\"", "\"oops\" is not a number"],
    );
}

#[test]
fn infinity_is_rejected() {
    let mut csv = String::from("a,b,label\n");
    for i in 0..30 {
        csv.push_str(&format!("{},{},{}\n", i, i + 1, i % 2));
    }
    csv.push_str("inf,3,1\n");
    expect(
        &train_csv_err(csv.as_bytes(), "label", &[]),
        &["line 32", "not a finite number"],
    );
}

#[test]
fn non_finite_regression_target() {
    let mut csv = String::from("a,y\n");
    for i in 0..30 {
        csv.push_str(&format!("{},{}.5\n", i, i * 3));
    }
    csv.push_str("4,-inf\n");
    expect(
        &train_csv_err(csv.as_bytes(), "y", &["--set", "data.task=regression"]),
        &["column \"y\"", "finite number"],
    );
}

#[test]
fn invalid_utf8_names_line() {
    expect(
        &train_csv_err(b"a,b,label\n1,2,x\n3,\xff\xfe,y\n", "label", &[]),
        &["line 3", "UTF-8"],
    );
}

#[test]
fn duplicate_header() {
    expect(
        &train_csv_err(b"a,a,label\n1,2,x\n", "label", &[]),
        &["line 1", "appears twice"],
    );
}

#[test]
fn single_class_target() {
    expect(
        &train_csv_err(b"a,label\n1,x\n2,x\n3,x\n4,x\n", "label", &[]),
        &["needs at least 2"],
    );
}

#[test]
fn missing_data_file() {
    let dir = tempfile::tempdir().unwrap();
    expect(
        &kiln_err(
            dir.path(),
            &["train", "--data", "nope.csv", "--target", "y"],
        ),
        &["nope.csv", "No such file"],
    );
}

#[test]
fn unknown_builtin() {
    let dir = tempfile::tempdir().unwrap();
    expect(
        &kiln_err(dir.path(), &["train", "--data", "builtin:mnist"]),
        &["unknown built-in dataset \"mnist\"", "digits"],
    );
}

fn config_err(toml: &str, extra: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "c.toml", toml.as_bytes());
    let mut args = vec!["train", "c.toml", "--quiet"];
    args.extend_from_slice(extra);
    kiln_err(dir.path(), &args)
}

const CFG: &str = "[data]\nsource = \"builtin:iris\"\n\n[trainer]\nepochs = 2\n";

#[test]
fn unknown_config_key_names_line() {
    expect(
        &config_err(&format!("{CFG}lrr = 0.1\n"), &[]),
        &["c.toml", "line 6", "unknown field `lrr`"],
    );
}

#[test]
fn wrong_config_type_names_line() {
    expect(
        &config_err(&CFG.replace("epochs = 2", "epochs = \"two\""), &[]),
        &["c.toml", "line 5", "invalid type"],
    );
}

#[test]
fn out_of_range_config_value_names_key() {
    expect(
        &config_err(&format!("{CFG}lr = -0.5\n"), &[]),
        &["trainer.lr", "line 6", "positive"],
    );
}

#[test]
fn unknown_enum_value_lists_choices() {
    expect(
        &config_err(CFG, &["--set", "trainer.optimizer=adamax"]),
        &["adamax", "sgd", "adamw"],
    );
}

#[test]
fn malformed_override() {
    expect(&config_err(CFG, &["--set", "trainer.lr"]), &["KEY=VALUE"]);
}

#[test]
fn malformed_toml() {
    expect(
        &config_err("[data\nsource = 1\n", &[]),
        &["c.toml", "line 1"],
    );
}

#[test]
fn missing_config_file() {
    let dir = tempfile::tempdir().unwrap();
    expect(
        &kiln_err(dir.path(), &["train", "absent.toml"]),
        &["cannot read config absent.toml"],
    );
}

#[test]
fn cnn_on_tabular_data() {
    expect(
        &config_err(
            CFG,
            &[
                "--set",
                "model.type=cnn",
                "--set",
                "model.conv=[{filters=4}]",
            ],
        ),
        &["needs an image feature"],
    );
}

#[test]
fn truncated_idx_file() {
    let dir = tempfile::tempdir().unwrap();
    let mut images = vec![0u8, 0, 8, 3, 0, 0, 0, 10, 0, 0, 0, 28, 0, 0, 0, 28];
    images.extend(vec![0u8; 100]); // far fewer than 10 * 28 * 28 pixels
    write(dir.path(), "x-images-idx3-ubyte", &images);
    write(
        dir.path(),
        "x-labels-idx1-ubyte",
        &[0, 0, 8, 1, 0, 0, 0, 10, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0],
    );
    expect(
        &kiln_err(dir.path(), &["train", "--data", "x"]),
        &["x-images-idx3-ubyte", "not a valid IDX", "promises"],
    );
}

#[test]
fn predict_and_eval_errors() {
    let dir = tempfile::tempdir().unwrap();
    let run = churn_run(dir.path(), "churn");
    // A feature column is missing at predict time.
    write(
        dir.path(),
        "nocity.csv",
        b"customer_id,age,plan,monthly_spend\nA,30,basic,50\n",
    );
    expect(
        &kiln_err(
            dir.path(),
            &["predict", &run, "--data", "nocity.csv", "--out", "p.csv"],
        ),
        &["no column named \"city\""],
    );
    // eval needs the target.
    write(
        dir.path(),
        "unlabelled.csv",
        churn_csv(20, 5, false, None).as_bytes(),
    );
    expect(
        &kiln_err(dir.path(), &["eval", &run, "--data", "unlabelled.csv"]),
        &["no column named \"churn\"", "target"],
    );
    // A class the model never saw.
    let mut odd = churn_csv(20, 5, true, None);
    odd = odd.replacen(",no\n", ",maybe\n", 1);
    write(dir.path(), "odd.csv", odd.as_bytes());
    expect(
        &kiln_err(dir.path(), &["eval", &run, "--data", "odd.csv"]),
        &["class \"maybe\" was not seen in training"],
    );
    // Not a run directory.
    expect(
        &kiln_err(dir.path(), &["eval", "nowhere", "--data", "odd.csv"]),
        &["nowhere"],
    );
    // Unknown categories are reported, not fatal; every row gets a prediction.
    write(
        dir.path(),
        "new_city.csv",
        churn_csv(30, 11, false, Some("Brest")).as_bytes(),
    );
    let out = kiln_ok(
        dir.path(),
        &["predict", &run, "--data", "new_city.csv", "--out", "p.csv"],
    );
    assert!(
        out.contains("column \"city\"") && out.contains("not seen in training"),
        "{out}"
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("p.csv"))
            .unwrap()
            .lines()
            .count(),
        31
    );
}

#[test]
fn resume_without_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("empty")).unwrap();
    expect(
        &kiln_err(dir.path(), &["train", "--resume", "empty"]),
        &["no checkpoint to resume from"],
    );
}

#[test]
fn split_column_required() {
    expect(
        &config_err(CFG, &["--set", "data.split.method=column"]),
        &["data.split.column", "required"],
    );
}

#[test]
fn bad_split_value_names_line() {
    let mut csv = String::from("a,label,fold\n");
    for i in 0..20 {
        csv.push_str(&format!(
            "{},{},{}\n",
            i,
            i % 2,
            if i < 15 { "train" } else { "test" }
        ));
    }
    csv.push_str("3,1,holdout\n");
    expect(
        &train_csv_err(
            csv.as_bytes(),
            "label",
            &[
                "--set",
                "data.split.method=column",
                "--set",
                "data.split.column=fold",
            ],
        ),
        &["line 22", "column \"fold\"", "\"holdout\""],
    );
}

#[test]
fn resuming_a_run_that_does_not_exist_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let err = kiln_err(dir.path(), &["train", "--resume", "runs/missing"]);
    assert!(
        err.contains("--resume runs/missing: there is no such run"),
        "{err}"
    );
}

#[test]
fn missing_example_data_names_the_script_that_provides_it() {
    let dir = tempfile::tempdir().unwrap();
    for (example, script) in [
        ("spam.toml", "scripts/setup-text-data.sh"),
        ("peoples_daily_char.toml", "scripts/setup-text-data.sh"),
        ("spam_minilm.toml", "scripts/setup-pretrained.sh"),
        ("fashion_cnn.toml", "scripts/setup-data.sh"),
    ] {
        let config = root().join("examples").join(example);
        let text = std::fs::read_to_string(&config).unwrap();
        // Only where the machine lacks the data (the Fashion set lives in /usr/share).
        if text.contains("/usr/share/datasets")
            && std::path::Path::new("/usr/share/datasets/fashion-mnist").exists()
        {
            continue;
        }
        std::fs::write(dir.path().join(example), text).unwrap();
        let err = kiln_err(dir.path(), &["train", example]);
        assert!(
            err.contains("example data not installed") && err.contains(script),
            "{example}: {err}"
        );
    }
}

#[test]
fn a_run_that_fails_leaves_no_directory_or_one_marked_for_resume() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // Refused before anything is written: a monitor the task does not have.
    let err = kiln_err(
        d,
        &[
            "train",
            "--data",
            "builtin:iris",
            "--set",
            "trainer.monitor=\"rmse\"",
        ],
    );
    assert!(
        err.contains("trainer.monitor = \"rmse\" is not defined for this classification task")
            && err.contains("accuracy"),
        "{err}"
    );
    assert!(
        !d.join("runs").exists(),
        "no run directory for a refused run"
    );
    // Diverges before its first checkpoint: the directory goes.
    let diverge = [
        "train",
        "--data",
        "builtin:digits",
        "--set",
        "trainer.lr=1e30",
    ];
    let err = kiln_err(
        d,
        &[&diverge[..], &["--set", "output.name=\"early\""]].concat(),
    );
    assert!(err.contains("training diverged"), "{err}");
    assert!(!d.join("runs/early").exists(), "nothing to resume: removed");
    // Diverges after a checkpoint: kept, with a note on how to resume.
    let err = kiln_err(
        d,
        &[
            &diverge[..],
            &[
                "--set",
                "trainer.checkpoint_every_steps=1",
                "--set",
                "output.name=\"late\"",
            ],
        ]
        .concat(),
    );
    assert!(err.contains("training diverged"), "{err}");
    let note = std::fs::read_to_string(d.join("runs/late/FAILED")).unwrap();
    assert!(note.contains("kiln train --resume"), "{note}");
}

#[test]
fn devices_the_build_or_machine_lacks_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let train = |device: &str| {
        kiln_err(
            dir.path(),
            &["train", "--data", "builtin:iris", "--device", device],
        )
    };
    #[cfg(not(feature = "cuda"))]
    expect(
        &train("cuda"),
        &[
            "device \"cuda\"",
            "built without CUDA",
            "scripts/setup-cuda-build.sh",
            "--features cuda",
        ],
    );
    expect(
        &train("tpu"),
        &[
            "unknown device \"tpu\"",
            "\"cpu\", \"auto\", \"gpu\", \"gpu:N\"",
        ],
    );
    expect(&train("gpu:x"), &["device \"gpu:x\"", "must be a number"]);
    expect(&train("cpu:1"), &["\"cpu\" takes no index"]);
    // Without a GPU runtime compiled in: how to get one.
    #[cfg(not(feature = "wgpu"))]
    expect(
        &train("gpu"),
        &[
            "device \"gpu\"",
            "built without a GPU runtime",
            "--features wgpu",
        ],
    );
    // `gpu:N` past the adapters this machine has lists them.
    #[cfg(feature = "wgpu")]
    expect(
        &train("gpu:7"),
        &["device \"gpu:7\"", "there is no adapter 7"],
    );
    // `--device` on a command that reads a run is checked before the run.
    let err = kiln_err(
        dir.path(),
        &[
            "eval",
            "no-such-run",
            "--data",
            "builtin:iris",
            "--device",
            "tpu",
        ],
    );
    expect(&err, &["--device", "unknown device \"tpu\""]);
    let err = kiln_err(dir.path(), &["serve", "no-such-run", "--device", "tpu"]);
    expect(&err, &["--device", "unknown device \"tpu\""]);
    expect(&train("cpu:x"), &["\"cpu\" takes no index"]);
}
