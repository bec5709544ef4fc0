//! Helpers shared by the CLI tests: run the real `kiln` binary and inspect its output.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The workspace root (examples live there).
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

/// The kiln binary under test: the one cargo built for these tests, or `KILN_TEST_BIN` when
/// set (`.ci/run` runs a long suite on a copy of the CPU build while cargo rebuilds
/// `target/debug/kiln` with other features).
pub fn kiln_bin() -> PathBuf {
    std::env::var_os("KILN_TEST_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_kiln")))
}

/// Runs `kiln ARGS` in `dir`.
pub fn kiln(dir: &Path, args: &[&str]) -> Output {
    Command::new(kiln_bin())
        .args(args)
        .current_dir(dir)
        .output()
        .expect("kiln runs")
}

/// Runs kiln, asserts success, returns stdout.
pub fn kiln_ok(dir: &Path, args: &[&str]) -> String {
    let out = kiln(dir, args);
    assert!(
        out.status.success(),
        "kiln {args:?} failed:\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Runs kiln with `--json` output and parses the last stdout line.
pub fn kiln_json(dir: &Path, args: &[&str]) -> serde_json::Value {
    let stdout = kiln_ok(dir, args);
    serde_json::from_str(stdout.lines().last().expect("some output")).expect("JSON output")
}

/// Runs kiln expecting failure; returns stderr. Asserts there was no panic.
pub fn kiln_err(dir: &Path, args: &[&str]) -> String {
    let out = kiln(dir, args);
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        !out.status.success(),
        "kiln {args:?} should fail but succeeded: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        !stderr.contains("panicked"),
        "kiln {args:?} panicked: {stderr}"
    );
    assert_eq!(
        out.status.code(),
        Some(1),
        "kiln {args:?} exit code: {stderr}"
    );
    stderr
}

/// Runs `python3 scripts/SCRIPT ARGS`, prints its output and asserts it succeeded.
pub fn python_check(script: &str, args: &[std::ffi::OsString]) {
    let out = Command::new("python3")
        .arg(root().join("scripts").join(script))
        .args(args)
        .output()
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "{script} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A synthetic churn table with numeric, categorical and binary columns, missing values and
/// an id column. The label follows a noisy rule, so a model can learn it.
pub fn churn_csv(rows: usize, seed: u64, with_target: bool, extra_city: Option<&str>) -> String {
    let mut state = seed;
    let mut next = move || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 33) as f64 / (1u64 << 31) as f64
    };
    let cities = ["Lyon", "Paris", "Nice", "Lille"];
    let mut out = String::from(if with_target {
        "customer_id,age,city,plan,monthly_spend,churn\n"
    } else {
        "customer_id,age,city,plan,monthly_spend\n"
    });
    for i in 0..rows {
        let age = 18.0 + 60.0 * next();
        let city = match extra_city {
            Some(c) if i % 7 == 0 => c,
            _ => cities[(next() * 4.0) as usize % 4],
        };
        let premium = next() < 0.4;
        let spend = 20.0 + 80.0 * next();
        let score = (age - 45.0) / 20.0
            + if premium { -1.0 } else { 0.8 }
            + if city == "Nice" { 1.0 } else { 0.0 }
            + (spend - 60.0) / 40.0
            + 0.5 * (next() - 0.5);
        let churn = if score > 0.3 { "yes" } else { "no" };
        let age_s = if next() < 0.08 {
            String::new()
        } else {
            format!("{age:.1}")
        };
        let city_s = if next() < 0.05 { "NA" } else { city };
        let plan = if premium { "premium" } else { "basic" };
        if with_target {
            out.push_str(&format!(
                "C{i:05},{age_s},{city_s},{plan},{spend:.2},{churn}\n"
            ));
        } else {
            out.push_str(&format!("C{i:05},{age_s},{city_s},{plan},{spend:.2}\n"));
        }
    }
    out
}

/// Trains a small churn model (`churn_csv` rows, an id column, 2 epochs) from
/// `dir/train.csv` into `runs/NAME` and returns its run directory.
pub fn churn_run(dir: &Path, name: &str) -> String {
    std::fs::write(dir.join("train.csv"), churn_csv(400, 3, true, None)).unwrap();
    let name = format!("output.name={name}");
    let out = kiln_json(
        dir,
        &[
            "train",
            "--data",
            "train.csv",
            "--target",
            "churn",
            "--set",
            "data.id_column=customer_id",
            "--set",
            "trainer.epochs=2",
            "--set",
            &name,
            "--json",
        ],
    );
    out["run_dir"].as_str().unwrap().to_string()
}

/// Writes `per_class` noisy colour images of `size` x `size` per class into
/// `root/top` and `root/bottom`: the named half is brighter (in every channel, more in red).
pub fn write_image_folder(root: &Path, per_class: usize, size: u32, seed: u64) {
    let mut state = seed;
    let mut next = move || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 33) as u32
    };
    for class in ["top", "bottom"] {
        std::fs::create_dir_all(root.join(class)).unwrap();
        for i in 0..per_class {
            let img = image::RgbImage::from_fn(size, size, |_, y| {
                let bright = (y < size / 2) == (class == "top");
                let lift = if bright { 90 } else { 0 };
                let mut c = || (next() % 120) as u8 + lift;
                image::Rgb([c().saturating_add(30), c(), c()])
            });
            img.save(root.join(class).join(format!("{i:03}.png")))
                .unwrap();
        }
    }
}

/// Trains [`CNN`] on a colour image folder (`rgb/`, see [`write_image_folder`]) in `dir`:
/// per-channel normalisation, three input planes.
pub fn train_rgb_cnn(dir: &Path) -> (&'static str, serde_json::Value) {
    write_image_folder(&dir.join("rgb"), 12, 8, 6);
    std::fs::write(
        dir.join("cnn-rgb.toml"),
        CNN.replace("img/train", "rgb")
            .replace("epochs = 1", "epochs = 2"),
    )
    .unwrap();
    (
        "cnn-rgb",
        kiln_json(dir, &["train", "cnn-rgb.toml", "--json"]),
    )
}

/// Writes an IDX image/label pair of `n` random `size`x`size` images: the label is which half
/// of the image is brighter.
pub fn write_idx(dir: &Path, prefix: &str, n: usize, size: usize) {
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
pub fn churn_with_notes(rows: usize) -> String {
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

/// A small CNN on `img/train` (see `write_idx`), batch norm in its first block.
pub const CNN: &str = r#"
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

pub const TEXT: &str = r#"
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

pub const GPT: &str = r#"
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

/// A tiny BERT folder (`write_tiny_bert`) fine-tuned with LoRA adapters on reviews.
const BERT: &str = r#"
seed = 2
[data]
source = "reviews.csv"
target = "sentiment"
id_column = "id"
[[features]]
name = "review"
type = "text"
[model]
type = "transformer"
pretrained = "tiny-bert"
context = 24
pooling = "cls"
[lora]
rank = 2
targets = ["query", "value", "intermediate.dense"]
[trainer]
epochs = 1
lr = 0.01
[output]
plots = false
"#;

/// Trains one small model of every kind in `dir` (MLP with one-hot/binary/missing values, a
/// regression MLP with an embedding, a CNN with batch norm, a text + tabular transformer, a
/// GPT without biases and with an untied head, a tiny pretrained BERT fine-tuned with LoRA).
/// Returns `(kind, training summary)` pairs.
pub fn train_small_models(dir: &Path) -> Vec<(&'static str, serde_json::Value)> {
    std::fs::write(dir.join("churn.csv"), churn_csv(300, 1, true, None)).unwrap();
    std::fs::write(dir.join("notes.csv"), churn_with_notes(300)).unwrap();
    std::fs::create_dir_all(dir.join("img")).unwrap();
    write_idx(&dir.join("img"), "train", 200, 12);
    std::fs::write(dir.join("cnn.toml"), CNN).unwrap();
    std::fs::write(dir.join("text.toml"), TEXT).unwrap();
    std::fs::write(dir.join("gpt.toml"), GPT).unwrap();
    std::fs::write(dir.join("bert.toml"), BERT).unwrap();
    std::fs::write(dir.join("reviews.csv"), reviews_csv(300, 4)).unwrap();
    write_tiny_bert(&dir.join("tiny-bert"), &REVIEW_WORDS);
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
        ("bert", kiln_json(dir, &["train", "bert.toml", "--json"])),
    ];
    runs.into_iter().collect()
}

/// A seeded draw in `0..n` (a 64-bit LCG's high bits), for test data.
pub fn below(seed: u64) -> impl FnMut(usize) -> usize {
    let mut state = seed;
    move |n: usize| {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((state >> 33) as usize) % n
    }
}

/// Reviews of random filler words with one opinion word placed anywhere; the label is the
/// opinion's polarity, with 3% of labels flipped. Only a model that reads the words (not
/// the length, not a fixed position) can learn it.
pub fn reviews_csv(rows: usize, seed: u64) -> String {
    let mut next = below(seed);
    let filler = [
        "the", "film", "was", "a", "plot", "with", "actors", "and", "music", "scenes", "it",
        "story", "ending", "quite", "some", "director", "camera", "very", "of", "this",
    ];
    let good = ["great", "wonderful", "superb", "moving", "brilliant"];
    let bad = ["awful", "boring", "dreadful", "clumsy", "tedious"];
    let mut out = String::from("id,review,sentiment\n");
    for i in 0..rows {
        let positive = next(2) == 0;
        let len = 6 + next(14);
        let at = next(len);
        let words: Vec<&str> = (0..len)
            .map(|w| {
                if w == at {
                    if positive {
                        good[next(5)]
                    } else {
                        bad[next(5)]
                    }
                } else {
                    filler[next(filler.len())]
                }
            })
            .collect();
        let flipped = next(100) < 3;
        let label = if positive != flipped { "pos" } else { "neg" };
        out.push_str(&format!("r{i},\"{}\",{label}\n", words.join(" ")));
    }
    out
}

/// The words of [`reviews_csv`].
pub const REVIEW_WORDS: [&str; 30] = [
    "the",
    "film",
    "was",
    "a",
    "plot",
    "with",
    "actors",
    "and",
    "music",
    "scenes",
    "it",
    "story",
    "ending",
    "quite",
    "some",
    "director",
    "camera",
    "very",
    "of",
    "this",
    "great",
    "wonderful",
    "superb",
    "moving",
    "brilliant",
    "awful",
    "boring",
    "dreadful",
    "clumsy",
    "tedious",
];

/// Writes a tiny BERT folder in the Hugging Face layout (`config.json`, `model.safetensors`
/// with the original tensor names and PyTorch's `[out, in]` linear weights, a WordPiece
/// `tokenizer.json` of `[PAD] [UNK] [CLS] [SEP]` and `words`): 2 layers, width 16, 2 heads,
/// seeded random weights. Returns the tensors by name.
pub fn write_tiny_bert(dir: &Path, words: &[&str]) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    use safetensors::tensor::{Dtype, TensorView};
    std::fs::create_dir_all(dir).unwrap();
    let specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"];
    let vocab: Vec<&str> = specials.iter().chain(words).copied().collect();
    let (c, ff, layers, positions) = (16usize, 32usize, 2usize, 32usize);
    let config = serde_json::json!({
        "model_type": "bert", "vocab_size": vocab.len(), "hidden_size": c,
        "num_hidden_layers": layers, "num_attention_heads": 2, "intermediate_size": ff,
        "max_position_embeddings": positions, "type_vocab_size": 2, "layer_norm_eps": 1e-12,
        "hidden_act": "gelu", "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0,
    });
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let mut tensors = Vec::new();
    let mut seed = 7u32;
    let mut add = |name: String, shape: Vec<usize>, base: f32| {
        let n = shape.iter().product();
        let values: Vec<f32> = (0..n)
            .map(|_| {
                seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                base + ((seed >> 8) as f32 / (1u32 << 24) as f32 - 0.5) * 0.4
            })
            .collect();
        tensors.push((name, shape, values));
    };
    add(
        "embeddings.word_embeddings.weight".into(),
        vec![vocab.len(), c],
        0.0,
    );
    add(
        "embeddings.position_embeddings.weight".into(),
        vec![positions, c],
        0.0,
    );
    add(
        "embeddings.token_type_embeddings.weight".into(),
        vec![2, c],
        0.0,
    );
    add("embeddings.LayerNorm.weight".into(), vec![c], 1.0);
    add("embeddings.LayerNorm.bias".into(), vec![c], 0.0);
    for i in 0..layers {
        let l = |s: &str| format!("encoder.layer.{i}.{s}");
        for (p, out, inp) in [
            ("attention.self.query", c, c),
            ("attention.self.key", c, c),
            ("attention.self.value", c, c),
            ("attention.output.dense", c, c),
            ("intermediate.dense", ff, c),
            ("output.dense", c, ff),
        ] {
            add(l(&format!("{p}.weight")), vec![out, inp], 0.0);
            add(l(&format!("{p}.bias")), vec![out], 0.0);
        }
        for p in ["attention.output.LayerNorm", "output.LayerNorm"] {
            add(l(&format!("{p}.weight")), vec![c], 1.0);
            add(l(&format!("{p}.bias")), vec![c], 0.0);
        }
    }
    let bytes: Vec<Vec<u8>> = tensors
        .iter()
        .map(|(_, _, v)| v.iter().flat_map(|x| x.to_le_bytes()).collect())
        .collect();
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .zip(&bytes)
        .map(|((name, shape, _), b)| {
            (
                name.clone(),
                TensorView::new(Dtype::F32, shape.clone(), b).unwrap(),
            )
        })
        .collect();
    std::fs::write(
        dir.join("model.safetensors"),
        safetensors::serialize(views, None).unwrap(),
    )
    .unwrap();
    let ids: serde_json::Map<String, serde_json::Value> = vocab
        .iter()
        .enumerate()
        .map(|(i, w)| (w.to_string(), i.into()))
        .collect();
    let tokenizer = serde_json::json!({
        "version": "1.0", "truncation": {"max_length": 8, "strategy": "LongestFirst", "stride": 0},
        "padding": {"strategy": {"Fixed": 8}, "direction": "Right", "pad_to_multiple_of": null,
                    "pad_id": 0, "pad_type_id": 0, "pad_token": "[PAD]"},
        "added_tokens": [],
        "normalizer": {"type": "BertNormalizer", "clean_text": true,
                       "handle_chinese_chars": true, "strip_accents": null, "lowercase": true},
        "pre_tokenizer": {"type": "BertPreTokenizer"},
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "[CLS]", "type_id": 0}},
                       {"Sequence": {"id": "A", "type_id": 0}},
                       {"SpecialToken": {"id": "[SEP]", "type_id": 0}}],
            "pair": [{"Sequence": {"id": "A", "type_id": 0}}],
            "special_tokens": {
                "[CLS]": {"id": "[CLS]", "ids": [2], "tokens": ["[CLS]"]},
                "[SEP]": {"id": "[SEP]", "ids": [3], "tokens": ["[SEP]"]}
            }
        },
        "decoder": null,
        "model": {"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##",
                  "max_input_chars_per_word": 100, "vocab": ids}
    });
    std::fs::write(dir.join("tokenizer.json"), tokenizer.to_string()).unwrap();
    tensors
}

/// A two-layer char GPT without dropout, 40 steps, validated every 10 (see [`lm_dir`]).
pub const LM: &str = r#"
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
embd = 32
context = 32
dropout = 0.0
[trainer]
max_steps = 40
batch_size = 8
optimizer = "adamw"
lr = 0.003
schedule = "cosine"
warmup_steps = 5
grad_clip_norm = 1.0
eval_every_steps = 10
eval_batches = 4
[output]
plots = false
"#;

/// A directory with `lm.toml` ([`LM`]) and its corpus.
pub fn lm_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let corpus = (0..300)
        .map(|i| ["the cat sat on the mat.", "a dog met a cat."][i % 2])
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(dir.path().join("corpus.txt"), corpus).unwrap();
    std::fs::write(dir.path().join("lm.toml"), LM).unwrap();
    dir
}

/// Every evaluation's validation loss of an LM run's summary.
pub fn val_losses(summary: &serde_json::Value) -> Vec<f64> {
    summary["evals"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["val_loss"].as_f64().unwrap())
        .collect()
}
