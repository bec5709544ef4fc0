//! `data.streaming`: training from a Parquet file a row group at a time.

mod common;

use std::path::Path;
use std::sync::Arc;

use arrow_array::{ArrayRef, Float64Array, RecordBatch, StringArray};
use common::{kiln_err, kiln_json};

/// 4 000 rows as `rows.parquet` (row groups of 500), `rows.arrow` (record batches of 500),
/// `rows.csv` and `rows.jsonl`: `x0..x3`,
/// a category `c`, and a `label` from a rule of them (about 5 % of labels flipped).
fn write_rows(dir: &Path) {
    let rows = 4000;
    let mut state = 3u64;
    let mut unit = || {
        // A 64-bit LCG (Knuth's MMIX constants): plenty for test data.
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 11) as f64 / (1u64 << 53) as f64
    };
    let x: Vec<Vec<f64>> = (0..4)
        .map(|_| (0..rows).map(|_| unit() * 4.0 - 2.0).collect())
        .collect();
    let c: Vec<&str> = (0..rows)
        .map(|_| ["red", "green", "blue"][(unit() * 3.0) as usize])
        .collect();
    let label: Vec<&str> = (0..rows)
        .map(|i| {
            let bias = match c[i] {
                "red" => 0.8,
                "green" => -0.8,
                _ => 0.0,
            };
            let yes = x[0][i] - 0.7 * x[1][i] + 0.5 * x[2][i] + bias > 0.0;
            if (unit() < 0.05) ^ yes { "yes" } else { "no" }
        })
        .collect();
    let mut csv = String::from("x0,x1,x2,x3,c,label\n");
    let mut jsonl = String::new();
    for i in 0..rows {
        let xs: Vec<String> = x.iter().map(|v| v[i].to_string()).collect();
        csv.push_str(&format!("{},{},{}\n", xs.join(","), c[i], label[i]));
        jsonl.push_str(&format!(
            "{{\"x0\": {}, \"x1\": {}, \"x2\": {}, \"x3\": {}, \"c\": \"{}\", \"label\": \"{}\"}}\n",
            xs[0], xs[1], xs[2], xs[3], c[i], label[i]
        ));
    }
    std::fs::write(dir.join("rows.csv"), csv).unwrap();
    std::fs::write(dir.join("rows.jsonl"), jsonl).unwrap();
    let mut columns: Vec<(String, ArrayRef)> = x
        .into_iter()
        .enumerate()
        .map(|(i, v)| (format!("x{i}"), Arc::new(Float64Array::from(v)) as ArrayRef))
        .collect();
    columns.push(("c".into(), Arc::new(StringArray::from(c))));
    columns.push(("label".into(), Arc::new(StringArray::from(label))));
    let batch = RecordBatch::try_from_iter(columns).unwrap();
    let props = parquet::file::properties::WriterProperties::builder()
        .set_max_row_group_row_count(Some(500))
        .build();
    let file = std::fs::File::create(dir.join("rows.parquet")).unwrap();
    let mut writer =
        parquet::arrow::ArrowWriter::try_new(file, batch.schema(), Some(props)).unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
    let file = std::fs::File::create(dir.join("rows.arrow")).unwrap();
    let mut writer = arrow_ipc::writer::FileWriter::try_new(file, &batch.schema()).unwrap();
    for start in (0..rows).step_by(500) {
        writer.write(&batch.slice(start, 500)).unwrap();
    }
    writer.finish().unwrap();
}

const CONFIG: &str = r#"
seed = 5
[data]
source = "rows.parquet"
target = "label"
streaming = true
shuffle_buffer = 1000
[data.split]
validation = 0.1
test = 0.1
[model]
hidden = [32]
[trainer]
epochs = 3
batch_size = 64
lr = 0.01
checkpoint_every_steps = 30
"#;

#[test]
fn a_streamed_run_learns_and_resumes_mid_epoch_bit_identically() {
    let dir = tempfile::tempdir().unwrap();
    write_rows(dir.path());
    std::fs::write(dir.path().join("run.toml"), CONFIG).unwrap();
    let mut splits = Vec::new();
    for source in ["rows.parquet", "rows.csv", "rows.jsonl", "rows.arrow"] {
        splits.push(train_and_resume(dir.path(), source));
    }
    // A row's split is drawn from its row number: Parquet, Arrow and JSON Lines number rows
    // from 1, a CSV from its line (2 for the first row under the header).
    assert_eq!(splits[0], splits[2]);
    assert_eq!(splits[0], splits[3]);
    // `kiln predict` reads an Arrow IPC file a record batch at a time: one row out per row in.
    kiln_json(
        dir.path(),
        &[
            "predict",
            "runs/rows_arrow",
            "--data",
            "rows.arrow",
            "--out",
            "p.csv",
            "--json",
        ],
    );
    let predictions = std::fs::read_to_string(dir.path().join("p.csv")).unwrap();
    assert_eq!(predictions.lines().count(), 4001);
}

/// Trains on `source`, checks the split and the accuracy, then resumes a copy of the run from
/// a checkpoint inside an epoch (and a block) and checks the weights equal the run's. Returns
/// the rows of each split.
fn train_and_resume(dir: &Path, source: &str) -> (u64, u64, u64) {
    let name = source.replace('.', "_");
    let out = kiln_json(
        dir,
        &[
            "train",
            "run.toml",
            "--json",
            "--set",
            &format!("data.source={source}"),
            "--set",
            &format!("output.name={name}"),
        ],
    );
    let rows = &out["rows"];
    let (train, validation, test) = (
        rows["train"].as_u64().unwrap(),
        rows["validation"].as_u64().unwrap(),
        rows["test"].as_u64().unwrap(),
    );
    // Each row's split is its own draw: about 80/10/10 of 4 000.
    assert_eq!(train + validation + test, 4000, "{source}");
    assert!(
        (300..500).contains(&validation) && (300..500).contains(&test),
        "{source}: {validation} validation and {test} test rows"
    );
    let accuracy = out["test"]["accuracy"].as_f64().unwrap();
    assert!(accuracy > 0.85, "{source}: held-out accuracy {accuracy}");
    let steps = out["steps"].as_u64().unwrap();
    assert_eq!(steps, 3 * train.div_ceil(64), "{source}");

    let run = dir.join("runs").join(&name);
    let reference = std::fs::read(run.join("model.safetensors")).unwrap();
    let per_epoch = train.div_ceil(64);
    // The checkpoints kept: the last one and one before it, inside an epoch.
    let mid = std::fs::read_dir(run.join("checkpoints"))
        .unwrap()
        .filter_map(|e| {
            e.unwrap()
                .file_name()
                .to_str()?
                .strip_prefix("step-")?
                .parse()
                .ok()
        })
        .find(|s: &u64| !s.is_multiple_of(per_epoch))
        .expect("a checkpoint inside an epoch");
    let state: serde_json::Value = serde_json::from_slice(
        &std::fs::read(run.join(format!("checkpoints/step-{mid:08}/trainer_state.json"))).unwrap(),
    )
    .unwrap();
    let position = &state["stream_position"];
    assert!(
        position[1].as_u64().is_some_and(|r| r > 0),
        "{source}: no position inside a block in {state}"
    );
    let copy = dir.join("runs").join(format!("{name}_resumed"));
    copy_dir(&run, &copy);
    std::fs::write(copy.join("checkpoints/latest"), format!("step-{mid:08}")).unwrap();
    std::fs::remove_file(copy.join("model.safetensors")).unwrap();
    std::fs::remove_file(copy.join("report.json")).unwrap();
    let resumed = kiln_json(
        dir,
        &["train", "--resume", copy.to_str().unwrap(), "--json"],
    );
    assert_eq!(resumed["resumed_from"].as_u64(), Some(mid));
    let weights = std::fs::read(copy.join("model.safetensors")).unwrap();
    assert!(
        weights == reference,
        "{source}: resumed at step {mid} ({position}), the weights differ from the uninterrupted run"
    );
    (train, validation, test)
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

#[test]
fn streaming_refuses_what_needs_every_row_at_once() {
    let dir = tempfile::tempdir().unwrap();
    write_rows(dir.path());
    std::fs::write(dir.path().join("run.toml"), CONFIG).unwrap();
    std::fs::write(dir.path().join("rows.csv.gz"), b"\x1f\x8b").unwrap();
    let err = kiln_err(
        dir.path(),
        &["train", "run.toml", "--set", "data.source=rows.csv.gz"],
    );
    assert!(
        err.contains("rows.csv.gz") && err.contains("decompress it first"),
        "{err}"
    );
    for (key, value) in [
        ("data.split.method", "stratified"),
        ("data.drop_duplicates", "true"),
        ("trainer.batch_size", "full"),
        ("trainer.class_weights", "balanced"),
    ] {
        let err = kiln_err(
            dir.path(),
            &["train", "run.toml", "--set", &format!("{key}={value}")],
        );
        assert!(err.contains(key) && err.contains("data.streaming"), "{err}");
    }
}
