//! Fine-tuning a pretrained Hugging Face encoder end to end (a tiny BERT folder written by the
//! test): full, frozen, first layers frozen and LoRA; the weights that must not move do not,
//! the ones that must do; predictions, resume and bad configurations.

mod common;

use std::path::Path;

use common::*;
use safetensors::SafeTensors;

const CONFIG: &str = r#"
seed = 5
[data]
source = "reviews.csv"
target = "sentiment"
id_column = "id"
[data.split]
method = "stratified"
validation = 0.1
test = 0.2
[[features]]
name = "review"
type = "text"
[model]
type = "transformer"
pretrained = "tiny-bert"
context = 24
[trainer]
epochs = 12
lr = 0.003
monitor = "f1"
keep_best = true
[output]
dir = "runs"
"#;

/// A directory with the reviews, the tiny BERT folder and the config; returns the folder's
/// tensors.
fn setup(dir: &Path) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    std::fs::write(dir.join("reviews.csv"), reviews_csv(1200, 21)).unwrap();
    std::fs::write(dir.join("run.toml"), CONFIG).unwrap();
    write_tiny_bert(&dir.join("tiny-bert"), &REVIEW_WORDS)
}

/// The f32 tensor `name` of a safetensors file.
fn tensor(file: &Path, name: &str) -> Vec<f32> {
    let bytes = std::fs::read(file).unwrap();
    let tensors = SafeTensors::deserialize(&bytes).unwrap();
    let view = tensors
        .tensor(name)
        .unwrap_or_else(|_| panic!("{} has no tensor {name}", file.display()));
    view.data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// `kiln embed MODEL` of the reviews' text column, as written to the CSV `out`.
fn embed(dir: &Path, model: &str, out: &str) -> Vec<f32> {
    kiln_ok(
        dir,
        &[
            "embed",
            model,
            "--data",
            "reviews.csv",
            "--column",
            "review",
            "--out",
            out,
        ],
    );
    std::fs::read_to_string(dir.join(out))
        .unwrap()
        .lines()
        .skip(1)
        .flat_map(|l| {
            l.split(',')
                .map(|v| v.parse::<f32>().unwrap())
                .collect::<Vec<_>>()
        })
        .collect()
}

fn names(file: &Path) -> Vec<String> {
    let bytes = std::fs::read(file).unwrap();
    let tensors = SafeTensors::deserialize(&bytes).unwrap();
    let mut names: Vec<String> = tensors.names().into_iter().map(str::to_string).collect();
    names.sort();
    names
}

/// The folder's `[out, in]` weight of `name`, transposed to kiln's `[in, out]`.
fn transposed(folder: &[(String, Vec<usize>, Vec<f32>)], name: &str) -> Vec<f32> {
    let (_, shape, values) = folder.iter().find(|(n, _, _)| n == name).unwrap();
    let (out, inp) = (shape[0], shape[1]);
    (0..inp)
        .flat_map(|i| (0..out).map(move |o| values[o * inp + i]))
        .collect()
}

fn train(dir: &Path, name: &str, extra: &[&str]) -> (serde_json::Value, std::path::PathBuf) {
    let mut args = vec![
        "train".to_string(),
        "run.toml".into(),
        "--json".into(),
        "--quiet".into(),
        "--set".into(),
        format!("output.name=\"{name}\""),
    ];
    for e in extra {
        args.push("--set".into());
        args.push(e.to_string());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    (kiln_json(dir, &args), dir.join("runs").join(name))
}

#[test]
fn full_fine_tuning_learns_held_out_reviews_and_predicts_new_ones() {
    let dir = tempfile::tempdir().unwrap();
    let folder = setup(dir.path());
    let (out, run) = train(dir.path(), "full", &[]);
    let accuracy = out["test"]["accuracy"].as_f64().unwrap();
    assert!(accuracy >= 0.85, "test accuracy {accuracy}");
    assert_eq!(out["parameters"], out["trainable_parameters"]);
    // Every part of the encoder moved.
    let weights = run.join("model.safetensors");
    assert_ne!(
        tensor(&weights, "bert.word.weight"),
        folder[0].2,
        "word embeddings"
    );
    // The run stands alone: it predicts with the folder gone.
    std::fs::remove_dir_all(dir.path().join("tiny-bert")).unwrap();
    std::fs::write(dir.path().join("new.csv"), reviews_csv(50, 77)).unwrap();
    kiln_ok(
        dir.path(),
        &[
            "predict",
            run.to_str().unwrap(),
            "--data",
            "new.csv",
            "--out",
            "pred.csv",
        ],
    );
    let pred = std::fs::read_to_string(dir.path().join("pred.csv")).unwrap();
    assert_eq!(pred.lines().count(), 51);
    let eval = kiln_json(
        dir.path(),
        &["eval", run.to_str().unwrap(), "--data", "new.csv", "--json"],
    );
    assert!(eval["test"]["accuracy"].as_f64().unwrap() >= 0.8, "{eval}");
}

#[test]
fn fine_tuning_for_regression_predicts_a_score_from_the_text() {
    let dir = tempfile::tempdir().unwrap();
    setup(dir.path());
    // A score set by the review's sentiment word (5 for a good one, 1 for a bad one) plus
    // noise the text cannot explain, so R² has a ceiling below 1.
    let good = ["great", "wonderful", "superb", "moving", "brilliant"];
    let mut scored = String::from("id,review,score\n");
    let reviews = reviews_csv(1200, 21);
    for (i, line) in reviews.lines().skip(1).enumerate() {
        let review = line.split(',').nth(1).unwrap();
        let base = if good.iter().any(|w| review.contains(w)) {
            5.0
        } else {
            1.0
        };
        let noise = ((i * 7919) % 11) as f64 / 10.0 - 0.5;
        scored.push_str(&format!("r{i},{review},{:.2}\n", base + noise));
    }
    std::fs::write(dir.path().join("reviews.csv"), scored).unwrap();
    let (out, _) = train(
        dir.path(),
        "score",
        &[
            "data.target=\"score\"",
            "data.split.method=\"random\"",
            "trainer.monitor=\"r2\"",
        ],
    );
    assert!(out["test"]["accuracy"].is_null(), "{out}");
    // Variance explained by the sentiment word: 4 / (4 + 0.1) ≈ 0.98 at best.
    let r2 = out["test"]["r2"].as_f64().unwrap();
    assert!(r2 >= 0.85, "test R² {r2}: {out}");
}

#[test]
fn fresh_weights_take_the_architecture_and_tokenizer_but_never_read_the_weights() {
    let dir = tempfile::tempdir().unwrap();
    let folder = setup(dir.path());
    // Weights that do not parse: the baseline must not need them.
    std::fs::write(
        dir.path().join("tiny-bert/model.safetensors"),
        b"not safetensors",
    )
    .unwrap();
    let (out, run) = train(
        dir.path(),
        "fresh",
        &["model.pretrained_weights=false", "trainer.epochs=1"],
    );
    assert_eq!(out["parameters"], out["trainable_parameters"]);
    let word = tensor(&run.join("model.safetensors"), "bert.word.weight");
    assert_eq!(
        word.len(),
        folder[0].2.len(),
        "the folder's vocabulary and width"
    );
    assert_ne!(word, folder[0].2);
    // With its weights, the same folder is refused, naming the file.
    let err = kiln_err(dir.path(), &["train", "run.toml"]);
    assert!(err.contains("model.safetensors"), "{err}");
}

#[test]
fn frozen_parts_keep_their_pretrained_weights() {
    let dir = tempfile::tempdir().unwrap();
    let folder = setup(dir.path());
    let word = &folder[0].2;
    let query0 = transposed(&folder, "encoder.layer.0.attention.self.query.weight");
    let up1 = transposed(&folder, "encoder.layer.1.intermediate.dense.weight");
    let c = 16;

    // Features only: no encoder weight moves, the head learns.
    let (out, run) = train(
        dir.path(),
        "frozen",
        &["model.freeze=\"encoder\"", "trainer.epochs=3"],
    );
    let weights = run.join("model.safetensors");
    assert_eq!(&tensor(&weights, "bert.word.weight"), word);
    let qkv0 = tensor(&weights, "bert.layers.0.qkv.weight");
    let q0: Vec<f32> = qkv0
        .chunks_exact(3 * c)
        .flat_map(|row| row[..c].to_vec())
        .collect();
    assert_eq!(q0, query0, "layer 0's query weight moved");
    assert_eq!(tensor(&weights, "bert.layers.1.up.weight"), up1);
    let head = out["trainable_parameters"].as_u64().unwrap();
    assert_eq!(head, 16 * 2 + 2, "only the linear head trains: {out}");
    // kiln embed of the run equals kiln embed of the folder: same tokens, same encoder.
    let from_run = embed(dir.path(), run.to_str().unwrap(), "run.csv");
    let from_folder = embed(dir.path(), "tiny-bert", "folder.csv");
    assert_eq!(from_run.len(), 1200 * 16);
    let diff = from_run
        .iter()
        .zip(&from_folder)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(diff < 1e-5, "run and folder embeddings differ by {diff}");

    // The embeddings and the first layer frozen, the second trains.
    let (_, run) = train(dir.path(), "first", &["model.freeze=1", "trainer.epochs=2"]);
    let weights = run.join("model.safetensors");
    assert_eq!(&tensor(&weights, "bert.word.weight"), word);
    assert_eq!(
        tensor(&weights, "bert.layers.0.up.weight"),
        transposed(&folder, "encoder.layer.0.intermediate.dense.weight")
    );
    assert_ne!(tensor(&weights, "bert.layers.1.up.weight"), up1);
}

#[test]
fn lora_trains_adapters_and_head_only_and_saves_them_apart() {
    let dir = tempfile::tempdir().unwrap();
    let folder = setup(dir.path());
    let (out, run) = train(
        dir.path(),
        "lora",
        &[
            "lora.rank=4",
            "lora.alpha=8",
            "lora.dropout=0.0",
            "lora.targets=[\"query\", \"value\", \"output.dense\"]",
            "trainer.lr=0.01",
        ],
    );
    let weights = run.join("model.safetensors");
    // The encoder's own weights are untouched.
    assert_eq!(&tensor(&weights, "bert.word.weight"), &folder[0].2);
    assert_eq!(
        tensor(&weights, "bert.layers.1.down.weight"),
        transposed(&folder, "encoder.layer.1.output.dense.weight")
    );
    // Trainable: per layer, query and value adapters (16·4 + 4·16 each) and the output.dense
    // one (32·4 + 4·16), plus the head.
    let per_layer = 2 * (16 * 4 + 4 * 16) + (32 * 4 + 4 * 16);
    let trainable = out["trainable_parameters"].as_u64().unwrap() as usize;
    assert_eq!(trainable, 2 * per_layer + 16 * 2 + 2, "{out}");
    // The adapters learned something: B started at zero.
    let b = tensor(&weights, "bert.layers.0.lora.value.b.weight");
    assert!(
        b.iter().any(|&v| v != 0.0),
        "the value adapter never trained"
    );
    // adapters.safetensors holds exactly the trained tensors.
    let adapters = names(&run.join("adapters.safetensors"));
    assert!(
        adapters
            .iter()
            .all(|n| n.contains(".lora.") || n.starts_with("output."))
    );
    assert_eq!(adapters.len(), 2 * 3 * 2 + 2, "{adapters:?}");
    // The tiny encoder's weights are random, so adapters of rank 4 on them learn less than
    // full fine-tuning does; still far above chance (0.5).
    let accuracy = out["test"]["accuracy"].as_f64().unwrap();
    assert!(accuracy >= 0.65, "LoRA test accuracy {accuracy}");

    // The safetensors export is a BERT folder again, adapters merged: kiln embed reads it and
    // gives what the run itself gives.
    kiln_ok(
        dir.path(),
        &[
            "export",
            run.to_str().unwrap(),
            "--format",
            "safetensors",
            "--out",
            "lora-hf",
        ],
    );
    let from_run = embed(dir.path(), run.to_str().unwrap(), "run.csv");
    let from_export = embed(dir.path(), "lora-hf", "hf.csv");
    assert_eq!(from_run.len(), from_export.len());
    let diff = from_run
        .iter()
        .zip(&from_export)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(
        diff < 1e-4,
        "the exported encoder differs from the run's by {diff}"
    );
}

#[test]
fn an_interrupted_fine_tuning_resumes_bit_identically() {
    let dir = tempfile::tempdir().unwrap();
    setup(dir.path());
    let (_, full) = train(dir.path(), "full", &["trainer.epochs=2", "lora.rank=2"]);
    // The run as it stood after epoch 1: its first checkpoint, no final files.
    let copy = dir.path().join("runs/copy");
    std::fs::create_dir_all(copy.join("checkpoints")).unwrap();
    for f in [
        "config.toml",
        "schema.json",
        "preprocessor.json",
        "model.json",
        "metrics.jsonl",
    ] {
        std::fs::copy(full.join(f), copy.join(f)).unwrap();
    }
    let mut steps: Vec<String> = std::fs::read_dir(full.join("checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("step-"))
        .collect();
    steps.sort();
    let first = &steps[0];
    let target = copy.join("checkpoints").join(first);
    std::fs::create_dir_all(&target).unwrap();
    for e in std::fs::read_dir(full.join("checkpoints").join(first)).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), target.join(e.file_name())).unwrap();
    }
    std::fs::write(copy.join("checkpoints/latest"), first).unwrap();
    kiln_ok(
        dir.path(),
        &["train", "--resume", copy.to_str().unwrap(), "--quiet"],
    );
    assert!(
        std::fs::read(copy.join("model.safetensors")).unwrap()
            == std::fs::read(full.join("model.safetensors")).unwrap(),
        "the resumed run's weights differ"
    );
}

#[test]
fn pretrained_configuration_mistakes_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    setup(dir.path());
    let d = dir.path();
    let cases: [(&[&str], &[&str]); 7] = [
        (
            &["model.causal=true"],
            &["model.causal", "BERT", "both ways"],
        ),
        (
            &["model.type=\"mlp\""],
            &["model.pretrained", "transformer"],
        ),
        (
            &["lora.rank=4", "lora.targets=[\"qery\"]"],
            &["lora.targets", "qery", "query"],
        ),
        (&["model.freeze=5"], &["model.freeze", "5", "2 layers"]),
        (&["model.context=64"], &["model.context", "32 positions"]),
        (
            &["model.pretrained=\"missing\""],
            &["missing", "config.json"],
        ),
        (
            &["model.freeze=\"some\""],
            &["freeze", "\"none\", \"encoder\" or a number"],
        ),
    ];
    for (sets, expected) in cases {
        let mut args = vec!["train", "run.toml"];
        for s in sets {
            args.extend(["--set", s]);
        }
        let err = kiln_err(d, &args);
        for e in expected {
            assert!(err.contains(e), "{sets:?}: {err:?} lacks {e:?}");
        }
    }
    // A tokenizer with more tokens than the embedding has rows.
    let folder = d.join("tiny-bert");
    let config = std::fs::read_to_string(folder.join("config.json")).unwrap();
    std::fs::write(
        folder.join("config.json"),
        config.replace("\"vocab_size\":34", "\"vocab_size\":20"),
    )
    .unwrap();
    let err = kiln_err(d, &["train", "run.toml"]);
    assert!(err.contains("tokenizer") && err.contains("20"), "{err}");
    // No tokenizer at all.
    std::fs::remove_file(folder.join("tokenizer.json")).unwrap();
    let err = kiln_err(d, &["train", "run.toml"]);
    assert!(err.contains("tokenizer.json"), "{err}");
}

#[test]
fn a_student_learns_from_a_fine_tuned_teacher_and_bad_teachers_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    setup(dir.path());
    let d = dir.path();
    let (teacher_out, teacher) = train(d, "teacher", &[]);
    let teacher = teacher.to_str().unwrap().to_string();
    // The student: a small from-scratch transformer taught by the teacher's soft targets
    // alone (alpha = 1): misaligned teacher rows would leave it at chance.
    let student = [
        "model.layers=1",
        "model.heads=2",
        "model.embd=16",
        "model.hidden=[]",
        "text.tokenizer=\"bpe\"",
        "text.vocab_size=300",
        "trainer.epochs=8",
        "trainer.batch_size=32",
        "distill.alpha=1.0",
        "distill.temperature=2.0",
    ];
    let mut sets: Vec<String> = student.iter().map(|s| s.to_string()).collect();
    sets.push(format!("distill.teacher=\"{teacher}\""));
    std::fs::write(
        d.join("student.toml"),
        CONFIG.replace("pretrained = \"tiny-bert\"\n", ""),
    )
    .unwrap();
    let mut args = vec!["train", "student.toml", "--json", "--quiet"];
    for s in &sets {
        args.extend(["--set", s.as_str()]);
    }
    let out = kiln_json(d, &args);
    let accuracy = out["test"]["accuracy"].as_f64().unwrap();
    assert!(
        accuracy >= 0.8,
        "distilled student accuracy {accuracy}: {out}"
    );
    let distill = &out["distillation"];
    assert_eq!(
        distill["teacher_parameters"].as_u64(),
        teacher_out["parameters"].as_u64()
    );
    assert!(distill["teacher_latency_ms"].as_f64().unwrap() > 0.0);
    assert_eq!(distill["cached"], true, "{distill}");
    assert!(
        distill["teacher_test"]["accuracy"].as_f64().unwrap() > 0.8,
        "{distill}"
    );
    let report =
        std::fs::read_to_string(d.join(out["run_dir"].as_str().unwrap()).join("report.txt"))
            .unwrap();
    assert!(
        report.contains("distillation (teacher") && report.contains("ms per row"),
        "{report}"
    );

    // A teacher of other classes.
    let relabelled = reviews_csv(1200, 21).replace(",pos\n", ",good\n");
    std::fs::write(d.join("relabelled.csv"), relabelled).unwrap();
    let err = kiln_err(
        d,
        &[
            "train",
            "student.toml",
            "--set",
            "data.source=\"relabelled.csv\"",
            "--set",
            &format!("distill.teacher=\"{teacher}\""),
        ],
    );
    assert!(err.contains("classes") && err.contains("good"), "{err}");
    // An incomplete teacher run.
    std::fs::remove_file(Path::new(&teacher).join("model.safetensors")).unwrap();
    let err = kiln_err(
        d,
        &[
            "train",
            "student.toml",
            "--set",
            &format!("distill.teacher=\"{teacher}\""),
        ],
    );
    assert!(
        err.contains("distill.teacher") && err.contains("model.safetensors"),
        "{err}"
    );
}

/// Needs python3 with onnx and onnxruntime (`.ci/run` installs them).
#[test]
#[ignore]
fn fine_tuned_lora_and_gpt_onnx_exports_match_kiln_in_onnxruntime() {
    let dir = tempfile::tempdir().unwrap();
    setup(dir.path());
    let d = dir.path();
    pretrain_gpt(d);
    let mut exports = Vec::new();
    for (name, sets) in [
        (
            "gpt-tuned",
            vec![
                "model.pretrained=\"gpt-hf\"",
                "model.context=32",
                "trainer.epochs=1",
            ],
        ),
        (
            "gpt-both-ways",
            vec![
                "model.pretrained=\"gpt-hf\"",
                "model.causal=false",
                "model.context=32",
                "trainer.epochs=1",
            ],
        ),
        ("full", vec!["trainer.epochs=2", "model.pooling=\"cls\""]),
        (
            "windows",
            vec![
                "trainer.epochs=1",
                "text.windows=3",
                "text.window_overlap=2",
            ],
        ),
        (
            "lora",
            vec![
                "trainer.epochs=2",
                "lora.rank=4",
                "lora.targets=[\"query\", \"key\", \"value\", \"attention.output.dense\", \"intermediate.dense\", \"output.dense\"]",
                "trainer.lr=0.01",
                "model.pooling=\"mean_max\"",
                "model.hidden=[8]",
                "model.activation=\"tanh\"",
            ],
        ),
    ] {
        let (_, run) = train(d, name, &sets);
        let out = d.join(format!("{name}-onnx"));
        kiln_ok(
            d,
            &[
                "export",
                run.to_str().unwrap(),
                "--format",
                "onnx",
                "--out",
                out.to_str().unwrap(),
            ],
        );
        exports.push(out.into_os_string());
    }
    python_check("check-onnx.py", &exports);
    // The adapters moved, so the merge had something to merge.
    let b = tensor(
        &d.join("runs/lora/model.safetensors"),
        "bert.layers.1.lora.key.b.weight",
    );
    assert!(
        b.iter().any(|&v| v.abs() > 1e-3),
        "the key adapter never trained"
    );
}

const GPT: &str = r#"
seed = 3
[data]
source = "corpus.txt"
[text]
tokenizer = "bpe"
vocab_size = 300
val_fraction = 0.1
[model]
type = "gpt"
layers = 2
heads = 2
embd = 32
context = 64
bias = true
[trainer]
max_steps = 150
batch_size = 16
optimizer = "adamw"
lr = 0.003
eval_every_steps = 50
eval_batches = 2
[output]
dir = "runs"
name = "gpt"
plots = false
"#;

/// Pretrains a GPT (byte-level BPE) on the review texts alone and exports it in the GPT-2
/// layout to `gpt-hf`.
fn pretrain_gpt(d: &Path) {
    let csv = reviews_csv(1200, 21);
    let corpus: Vec<&str> = csv
        .lines()
        .skip(1)
        .filter_map(|l| l.split('"').nth(1))
        .collect();
    std::fs::write(d.join("corpus.txt"), corpus.join("\n")).unwrap();
    std::fs::write(d.join("gpt.toml"), GPT).unwrap();
    kiln_ok(d, &["train", "gpt.toml", "--quiet"]);
    kiln_ok(
        d,
        &[
            "export",
            "runs/gpt",
            "--format",
            "safetensors",
            "--out",
            "gpt-hf",
        ],
    );
}

#[test]
fn a_gpt_kiln_pretrained_and_exported_fine_tunes_as_a_causal_text_encoder() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    setup(d);
    pretrain_gpt(d);
    let hf = d.join("gpt-hf/model.safetensors");

    // A step too small to move anything: the encoder holds the GPT's weights.
    let (_, run) = train(
        d,
        "loaded",
        &[
            "model.pretrained=\"gpt-hf\"",
            "trainer.epochs=1",
            "trainer.lr=1e-12",
        ],
    );
    let weights = run.join("model.safetensors");
    for (kiln, gpt) in [
        (
            "text.blocks.1.attn.qkv.weight",
            "transformer.h.1.attn.c_attn.weight",
        ),
        (
            "text.blocks.0.mlp.proj.bias",
            "transformer.h.0.mlp.c_proj.bias",
        ),
        ("text.ln_f.gamma", "transformer.ln_f.weight"),
    ] {
        let (a, b) = (tensor(&weights, kiln), tensor(&hf, gpt));
        let diff = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0f32, f32::max);
        assert!(
            a.len() == b.len() && diff < 1e-6,
            "{kiln} differs from {gpt} by {diff}"
        );
    }
    let wte = tensor(&weights, "text.wte.weight");
    let gpt_wte = tensor(&hf, "transformer.wte.weight");
    assert!(wte[..32].iter().all(|&v| v == 0.0), "row 0 pads");
    assert_eq!(
        &wte[32..],
        &gpt_wte[..wte.len() - 32],
        "token t is the GPT's row t - 1"
    );

    // Fine-tuned, it classifies held-out reviews; the export to ONNX keeps it causal.
    let (out, run) = train(
        d,
        "tuned",
        &[
            "model.pretrained=\"gpt-hf\"",
            "model.context=32",
            "trainer.epochs=6",
            "trainer.lr=0.002",
        ],
    );
    let accuracy = out["test"]["accuracy"].as_f64().unwrap();
    assert!(accuracy >= 0.85, "fine-tuned GPT test accuracy {accuracy}");
    let causal_loss = out["validation"]["log_loss"].clone();
    let spec: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("model.json")).unwrap()).unwrap();
    assert_eq!(spec["text"]["causal"], true);
    // `model.causal = false`: the same weights, every token seeing the whole text.
    let (out, run) = train(
        d,
        "both-ways",
        &[
            "model.pretrained=\"gpt-hf\"",
            "model.causal=false",
            "model.context=32",
            "trainer.epochs=6",
            "trainer.lr=0.002",
        ],
    );
    let both_ways = out["test"]["accuracy"].as_f64().unwrap();
    assert!(
        both_ways >= 0.85,
        "bidirectional GPT test accuracy {both_ways}"
    );
    let spec: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("model.json")).unwrap()).unwrap();
    assert_eq!(spec["text"]["causal"], false);
    assert_ne!(
        out["validation"]["log_loss"], causal_loss,
        "a different network from the causal one"
    );

    // The embeddings and the first block frozen: they keep the GPT's weights, the rest moves,
    // and the report counts only what trained.
    let (out, run) = train(
        d,
        "frozen",
        &[
            "model.pretrained=\"gpt-hf\"",
            "model.freeze=1",
            "trainer.epochs=2",
            "trainer.lr=0.002",
        ],
    );
    let weights = run.join("model.safetensors");
    let total = out["parameters"].as_u64().unwrap();
    let trainable = out["trainable_parameters"].as_u64().unwrap();
    assert!(trainable < total, "{trainable} of {total} trained");
    for (kiln, gpt, moved) in [
        ("text.wpe.weight", "transformer.wpe.weight", false),
        (
            "text.blocks.0.attn.qkv.weight",
            "transformer.h.0.attn.c_attn.weight",
            false,
        ),
        (
            "text.blocks.0.ln1.gamma",
            "transformer.h.0.ln_1.weight",
            false,
        ),
        (
            "text.blocks.1.attn.qkv.weight",
            "transformer.h.1.attn.c_attn.weight",
            true,
        ),
        ("text.ln_f.gamma", "transformer.ln_f.weight", true),
    ] {
        // The run's position table is cut to its context.
        let (a, b) = (tensor(&weights, kiln), tensor(&hf, gpt));
        let n = a.len().min(b.len());
        assert_eq!(a[..n] != b[..n], moved, "{kiln} moved: {}", !moved);
    }
    assert_eq!(
        &tensor(&weights, "text.wte.weight")[32..],
        &gpt_wte[..wte.len() - 32],
        "frozen token embeddings"
    );
    // More frozen layers than the GPT has, LoRA (BERT's only) and the first token's state of
    // a causal GPT are refused by name.
    for (setting, names) in [
        ("model.freeze=9", ["model.freeze", "layers"]),
        ("lora.rank=2", ["BERT", "GPT"]),
        ("model.pooling=\"cls\"", ["model.pooling", "causal"]),
    ] {
        let err = kiln_err(
            d,
            &[
                "train",
                "run.toml",
                "--set",
                "model.pretrained=\"gpt-hf\"",
                "--set",
                setting,
            ],
        );
        assert!(names.iter().all(|n| err.contains(n)), "{setting}: {err}");
    }
}
