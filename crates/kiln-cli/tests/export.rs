//! `kiln export`: every model kind to ONNX and to HuggingFace-style safetensors. The default
//! suite checks the files and the graphs' interfaces; the ignored test (run by `.ci/run`, needs
//! `pip install onnx onnxruntime`) runs `scripts/check-onnx.py`: onnx.checker, then
//! onnxruntime against kiln's outputs within 1e-4.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use kiln_export::proto::ModelProto;
use prost::Message;

/// Writes an IDX image/label pair of `n` random `size`x`size` images: the label is which half
/// of the image is brighter.
fn write_idx(dir: &Path, prefix: &str, n: usize, size: usize) {
    let mut state = 99u64;
    let mut next = move || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 33) as u32
    };
    let mut images = vec![0, 0, 8, 3];
    let mut labels = vec![0, 0, 8, 1];
    for v in [n, size, size] {
        images.extend((v as u32).to_be_bytes());
    }
    labels.extend((n as u32).to_be_bytes());
    for _ in 0..n {
        let label = (next() % 2) as u8;
        for r in 0..size {
            for _ in 0..size {
                let bright = (r < size / 2) == (label == 0);
                images.push((next() % 128) as u8 + if bright { 100 } else { 0 });
            }
        }
        labels.push(label);
    }
    std::fs::write(dir.join(format!("{prefix}-images-idx3-ubyte")), images).unwrap();
    std::fs::write(dir.join(format!("{prefix}-labels-idx1-ubyte")), labels).unwrap();
}

/// Churn rows with a free-text note per customer.
fn churn_with_notes(rows: usize) -> String {
    let words = [
        "call", "bill", "late", "happy", "router", "slow", "thanks", "refund",
    ];
    let csv = churn_csv(rows, 3, true, None);
    let mut lines = csv.lines();
    let header = lines.next().unwrap();
    let mut out = format!("{header},note\n");
    for (i, line) in lines.enumerate() {
        let n = 4 + i % 9;
        let note: Vec<&str> = (0..n)
            .map(|j| words[(i * 7 + j * 3) % words.len()])
            .collect();
        out.push_str(&format!("{line},\"{}\"\n", note.join(" ")));
    }
    out
}

const CNN: &str = r#"
seed = 3
[data]
source = "img/train"
[model]
type = "cnn"
hidden = [16]
[[model.conv]]
filters = 4
kernel = 3
padding = 1
pool = 2
batch_norm = true
[[model.conv]]
filters = 6
kernel = 3
[trainer]
epochs = 1
batch_size = 32
[output]
plots = false
"#;

const TEXT: &str = r#"
seed = 4
[data]
source = "notes.csv"
target = "churn"
id_column = "customer_id"
encoding = "embedding"
[[features]]
name = "note"
type = "text"
[text]
tokenizer = "bpe"
vocab_size = 300
[model]
type = "transformer"
layers = 2
heads = 2
embd = 16
context = 12
pooling = "mean_max"
hidden = [16]
[trainer]
epochs = 1
batch_size = 32
[output]
plots = false
"#;

const GPT: &str = r#"
seed = 5
[data]
source = "corpus.txt"
[text]
tokenizer = "char"
val_fraction = 0.2
[model]
type = "gpt"
layers = 2
heads = 2
embd = 16
context = 16
tied_head = false
bias = false
[trainer]
max_steps = 5
batch_size = 4
eval_every_steps = 5
eval_batches = 1
[output]
plots = false
"#;

/// Trains one small model of every kind in `dir` and exports each to ONNX and safetensors.
/// Returns the ONNX export directories.
fn train_and_export_all(dir: &Path) -> Vec<PathBuf> {
    std::fs::write(dir.join("churn.csv"), churn_csv(300, 1, true, None)).unwrap();
    std::fs::write(dir.join("notes.csv"), churn_with_notes(300)).unwrap();
    std::fs::create_dir_all(dir.join("img")).unwrap();
    write_idx(&dir.join("img"), "train", 200, 12);
    std::fs::write(dir.join("cnn.toml"), CNN).unwrap();
    std::fs::write(dir.join("text.toml"), TEXT).unwrap();
    std::fs::write(dir.join("gpt.toml"), GPT).unwrap();
    std::fs::write(
        dir.join("corpus.txt"),
        "the cat sat on the mat. 人民日报。\n".repeat(40),
    )
    .unwrap();
    let runs = [
        (
            "mlp",
            kiln_json(
                dir,
                &[
                    "train",
                    "--data",
                    "churn.csv",
                    "--target",
                    "churn",
                    "--json",
                    "--set",
                    "model.batch_norm=true",
                    "--set",
                    "trainer.epochs=2",
                    "--set",
                    "output.plots=false",
                ],
            ),
        ),
        (
            "regression",
            kiln_json(
                dir,
                &[
                    "train",
                    "--data",
                    "churn.csv",
                    "--target",
                    "monthly_spend",
                    "--json",
                    "--set",
                    "data.encoding=embedding",
                    "--set",
                    "trainer.epochs=2",
                    "--set",
                    "output.plots=false",
                ],
            ),
        ),
        ("cnn", kiln_json(dir, &["train", "cnn.toml", "--json"])),
        ("text", kiln_json(dir, &["train", "text.toml", "--json"])),
        ("gpt", kiln_json(dir, &["train", "gpt.toml", "--json"])),
    ];
    let mut onnx_dirs = Vec::new();
    for (name, summary) in runs {
        let run = summary["run_dir"].as_str().expect("run_dir").to_string();
        let out = format!("export/{name}-onnx");
        let s = kiln_json(
            dir,
            &["export", &run, "--format", "onnx", "--out", &out, "--json"],
        );
        let files: Vec<&str> = s["files"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f.as_str().unwrap())
            .collect();
        assert!(files.contains(&"model.onnx"), "{s}");
        assert!(files.contains(&"test_data_set_0/input_0.pb"), "{s}");
        assert!(files.contains(&"test_data_set_0/output_0.pb"), "{s}");
        let hf = format!("export/{name}-hf");
        kiln_ok(
            dir,
            &["export", &run, "--format", "safetensors", "--out", &hf],
        );
        check_onnx_interface(name, &dir.join(&out).join("model.onnx"));
        check_hf(name, &dir.join(&hf));
        onnx_dirs.push(dir.join(out));
    }
    onnx_dirs
}

fn names(values: &[kiln_export::proto::ValueInfoProto]) -> Vec<String> {
    values
        .iter()
        .map(|v| v.name.clone().unwrap_or_default())
        .collect()
}

/// The graph's inputs and outputs are the documented ones for each kind.
fn check_onnx_interface(kind: &str, path: &Path) {
    let model =
        ModelProto::decode(std::fs::read(path).unwrap().as_slice()).expect("valid protobuf");
    assert_eq!(model.producer_name.as_deref(), Some("kiln"));
    let graph = model.graph.expect("a graph");
    let (inputs, outputs) = (names(&graph.input), names(&graph.output));
    let expected: (&[&str], &[&str]) = match kind {
        "mlp" => (&["features"], &["logits", "probabilities"]),
        "regression" => (&["features", "categories"], &["prediction"]),
        "cnn" => (&["pixels"], &["logits", "probabilities"]),
        "text" => (
            &["features", "categories", "tokens"],
            &["logits", "probabilities"],
        ),
        "gpt" => (&["tokens"], &["logits"]),
        _ => unreachable!(),
    };
    assert_eq!(inputs, expected.0, "{kind} inputs");
    assert_eq!(outputs, expected.1, "{kind} outputs");
    // Every node input is a graph input, an initializer or an earlier node's output.
    let mut known: std::collections::HashSet<String> = inputs.into_iter().collect();
    known.extend(graph.initializer.iter().filter_map(|t| t.name.clone()));
    for node in &graph.node {
        for i in node.input.iter().filter(|i| !i.is_empty()) {
            assert!(
                known.contains(i),
                "{kind}: node {:?} reads undefined {i}",
                node.name
            );
        }
        known.extend(node.output.iter().cloned());
    }
}

/// HuggingFace-style files: PyTorch layouts and, for GPT, GPT-2's names.
fn check_hf(kind: &str, dir: &Path) {
    let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let shape = |n: &str| {
        st.tensor(n)
            .unwrap_or_else(|_| panic!("{kind}: no {n}"))
            .shape()
            .to_vec()
    };
    match kind {
        "gpt" => {
            assert_eq!(config["model_type"], "gpt2");
            let e = config["n_embd"].as_u64().unwrap() as usize;
            let v = config["vocab_size"].as_u64().unwrap() as usize;
            assert_eq!(shape("transformer.h.1.attn.c_attn.weight"), [e, 3 * e]);
            // Trained without biases: GPT-2's biases are present and zero.
            let b = st.tensor("transformer.h.0.mlp.c_fc.bias").unwrap();
            assert!(b.data().iter().all(|&x| x == 0));
            assert_eq!(shape("lm_head.weight"), [v, e]);
        }
        _ => {
            assert_eq!(config["model_type"], "kiln");
            // nn.Linear layout: [out, in].
            let out = shape("output.weight");
            let hidden = config["kiln_model"]["hidden"].as_array().unwrap();
            assert_eq!(
                out[1],
                hidden.last().unwrap().as_u64().unwrap() as usize,
                "{kind}"
            );
            if kind == "mlp" {
                assert_eq!(config["id2label"].as_object().unwrap().len(), 2);
                assert!(st.tensor("hidden.0.norm.weight").is_ok());
            }
        }
    }
}

#[test]
fn every_model_kind_exports_to_onnx_and_safetensors() {
    let dir = tempfile::tempdir().unwrap();
    let exports = train_and_export_all(dir.path());
    assert_eq!(exports.len(), 5);
}

#[test]
fn export_errors_are_clear() {
    let dir = tempfile::tempdir().unwrap();
    let err = kiln_err(dir.path(), &["export", "nope", "--out", "x"]);
    assert!(err.contains("nope"), "{err}");
    let out = kiln(
        dir.path(),
        &["export", ".", "--format", "tflite", "--out", "x"],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("tflite"), "{err}");
}

/// Needs python3 with onnx and onnxruntime (`.ci/run` installs them).
#[test]
#[ignore]
fn onnx_exports_match_kiln_in_onnxruntime() {
    let dir = tempfile::tempdir().unwrap();
    let exports = train_and_export_all(dir.path());
    let script = root().join("scripts/check-onnx.py");
    let out = std::process::Command::new("python3")
        .arg(script)
        .args(&exports)
        .output()
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "check-onnx.py failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
