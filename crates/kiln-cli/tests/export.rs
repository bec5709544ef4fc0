//! `kiln export`: every model kind to ONNX and to HuggingFace-style safetensors. The default
//! suite checks the files and the graphs' interfaces; the ignored test (run by `.ci/run`, needs
//! `pip install onnx onnxruntime`) runs `scripts/check-onnx.py`: onnx.checker, then
//! onnxruntime against kiln's outputs within 1e-4.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use kiln_export::proto::ModelProto;
use prost::Message;

/// Trains one small model of every kind in `dir` and exports each to ONNX and safetensors.
/// Returns the ONNX export directories.
fn train_and_export_all(dir: &Path) -> Vec<PathBuf> {
    let mut runs = train_small_models(dir);
    // Colour images from a folder: one shift and scale per channel in the graph.
    runs.push(train_rgb_cnn(dir));
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
        "cnn" | "cnn-rgb" => (&["pixels"], &["logits", "probabilities"]),
        "text" => (
            &["features", "categories", "tokens"],
            &["logits", "probabilities"],
        ),
        "gpt" => (&["tokens"], &["logits"]),
        "bert" => (&["tokens"], &["logits", "probabilities"]),
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
        "bert" => {
            // The encoder under BERT's names (LoRA merged), the head under kiln's.
            assert_eq!(config["model_type"], "bert");
            assert_eq!(
                shape("encoder.layer.1.attention.self.value.weight"),
                [16, 16]
            );
            assert_eq!(shape("encoder.layer.0.intermediate.dense.weight"), [32, 16]);
            assert_eq!(shape("output.weight"), [2, 16]);
            assert!(st.names().iter().all(|n| !n.contains("lora")));
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
    assert_eq!(exports.len(), 7);
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
    let mut exports = train_and_export_all(dir.path());
    // The text classifier reading its notes in overlapping windows.
    let d = dir.path();
    let windows = kiln_json(
        d,
        &[
            "train",
            "text.toml",
            "--json",
            "--set",
            "text.windows=3",
            "--set",
            "text.window_overlap=2",
            "--set",
            "output.name=\"text-windows\"",
        ],
    );
    let out = d.join("export/text-windows-onnx");
    kiln_ok(
        d,
        &[
            "export",
            windows["run_dir"].as_str().unwrap(),
            "--format",
            "onnx",
            "--out",
            out.to_str().unwrap(),
        ],
    );
    exports.push(out);
    let args: Vec<_> = exports.iter().map(|p| p.clone().into_os_string()).collect();
    python_check("check-onnx.py", &args);
}
