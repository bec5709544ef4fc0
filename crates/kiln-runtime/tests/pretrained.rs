//! Pretrained Hugging Face encoders: parity of all-MiniLM-L6-v2's sentence embeddings with
//! sentence-transformers (the fixture made by `scripts/make-embedding-fixture.py`; the model is
//! installed by `scripts/setup-pretrained.sh`, and the test says so and passes when it is
//! absent), and a clear error for each way a folder can be wrong (on a tiny BERT folder the
//! test writes itself).

use std::path::{Path, PathBuf};

use burn::prelude::Device;
use kiln_runtime::pretrained::{PretrainedEncoder, PretrainedError};
use safetensors::tensor::{Dtype, TensorView};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn minilm_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("KILN_MINILM_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("data/pretrained/all-MiniLM-L6-v2"));
    if dir.join("model.safetensors").is_file() {
        Some(dir)
    } else {
        eprintln!(
            "SKIPPED: {} not found (scripts/setup-pretrained.sh installs it)",
            dir.display()
        );
        None
    }
}

#[test]
fn minilm_embeddings_equal_sentence_transformers() {
    let Some(dir) = minilm_dir() else { return };
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixtures.join("minilm_sentences.json")).unwrap())
            .unwrap();
    let sentences: Vec<String> = serde_json::from_value(meta["sentences"].clone()).unwrap();
    let token_ids: Vec<Vec<u32>> = serde_json::from_value(meta["token_ids"].clone()).unwrap();
    let dim = meta["dimension"].as_u64().unwrap() as usize;
    let reference: Vec<f32> = std::fs::read(fixtures.join("minilm_embeddings.f32"))
        .unwrap()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    assert!(sentences.len() >= 100);
    assert_eq!(reference.len(), sentences.len() * dim);

    let device = Device::flex();
    let encoder = PretrainedEncoder::load(&dir, &device).unwrap();
    assert_eq!(
        encoder.max_tokens,
        meta["max_seq_length"].as_u64().unwrap() as usize
    );
    // The same token ids as sentence-transformers' tokenizer, truncation included.
    for (s, want) in sentences.iter().zip(&token_ids) {
        let (got, _) = encoder.tokenizer.encode_for_model(s).unwrap();
        assert_eq!(&got, want, "token ids of {s:?}");
    }
    assert!(token_ids.iter().any(|ids| ids.len() > 128));
    // Batches of mixed lengths, padded to each batch's longest.
    let texts: Vec<&str> = sentences.iter().map(String::as_str).collect();
    let embeddings = encoder.embed(&texts, 16, &device).unwrap();
    assert_eq!(embeddings.width, dim);
    assert_eq!(embeddings.truncated, 5);
    let mut worst = (0.0f32, 0);
    for (i, (got, want)) in embeddings
        .values
        .chunks_exact(dim)
        .zip(reference.chunks_exact(dim))
        .enumerate()
    {
        assert_eq!(got.len(), dim);
        let d = got
            .iter()
            .zip(want)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        if d > worst.0 {
            worst = (d, i);
        }
    }
    eprintln!(
        "max abs difference {:.2e} (sentence {}: {:?})",
        worst.0,
        worst.1,
        sentences[worst.1].chars().take(40).collect::<String>()
    );
    assert!(
        worst.0 <= 1e-4,
        "sentence {} differs from sentence-transformers by {}",
        worst.1,
        worst.0
    );
}

/// A tiny BERT folder: 2 layers, width 8, 2 heads, a WordPiece tokenizer of `words`.
struct TinyBert {
    dir: tempfile::TempDir,
    config: serde_json::Value,
    tensors: Vec<(String, Vec<usize>, Vec<f32>)>,
}

const WORDS: [&str; 10] = [
    "[PAD]", "[UNK]", "[CLS]", "[SEP]", "the", "cat", "sat", "on", "mat", "##s",
];

impl TinyBert {
    fn new() -> Self {
        let (c, ff, vocab, positions) = (8usize, 16usize, WORDS.len(), 16usize);
        let config = serde_json::json!({
            "model_type": "bert",
            "vocab_size": vocab,
            "hidden_size": c,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "intermediate_size": ff,
            "max_position_embeddings": positions,
            "type_vocab_size": 2,
            "layer_norm_eps": 1e-12,
            "hidden_act": "gelu",
        });
        let mut tensors = Vec::new();
        let mut seed = 1u32;
        let mut add = |name: String, shape: Vec<usize>| {
            let n = shape.iter().product();
            let values = (0..n)
                .map(|_| {
                    seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                    (seed >> 8) as f32 / (1u32 << 24) as f32 * 0.2 - 0.1
                })
                .collect();
            tensors.push((name, shape, values));
        };
        add("embeddings.word_embeddings.weight".into(), vec![vocab, c]);
        add(
            "embeddings.position_embeddings.weight".into(),
            vec![positions, c],
        );
        add("embeddings.token_type_embeddings.weight".into(), vec![2, c]);
        add("embeddings.LayerNorm.weight".into(), vec![c]);
        add("embeddings.LayerNorm.bias".into(), vec![c]);
        for i in 0..2 {
            let l = |s: &str| format!("encoder.layer.{i}.{s}");
            for p in [
                "attention.self.query",
                "attention.self.key",
                "attention.self.value",
            ] {
                add(l(&format!("{p}.weight")), vec![c, c]);
                add(l(&format!("{p}.bias")), vec![c]);
            }
            add(l("attention.output.dense.weight"), vec![c, c]);
            add(l("attention.output.dense.bias"), vec![c]);
            add(l("attention.output.LayerNorm.weight"), vec![c]);
            add(l("attention.output.LayerNorm.bias"), vec![c]);
            add(l("intermediate.dense.weight"), vec![ff, c]);
            add(l("intermediate.dense.bias"), vec![ff]);
            add(l("output.dense.weight"), vec![c, ff]);
            add(l("output.dense.bias"), vec![c]);
            add(l("output.LayerNorm.weight"), vec![c]);
            add(l("output.LayerNorm.bias"), vec![c]);
        }
        let tiny = Self {
            dir: tempfile::tempdir().unwrap(),
            config,
            tensors,
        };
        tiny.write_tokenizer();
        tiny
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn write_tokenizer(&self) {
        let vocab: serde_json::Map<String, serde_json::Value> = WORDS
            .iter()
            .enumerate()
            .map(|(i, w)| (w.to_string(), i.into()))
            .collect();
        let tokenizer = serde_json::json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
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
            "model": {"type": "WordPiece", "unk_token": "[UNK]",
                      "continuing_subword_prefix": "##", "max_input_chars_per_word": 100,
                      "vocab": vocab}
        });
        std::fs::write(
            self.path().join("tokenizer.json"),
            serde_json::to_string(&tokenizer).unwrap(),
        )
        .unwrap();
    }

    /// Writes config.json and model.safetensors as they stand.
    fn write(&self) {
        std::fs::write(
            self.path().join("config.json"),
            serde_json::to_string_pretty(&self.config).unwrap(),
        )
        .unwrap();
        let bytes: Vec<Vec<u8>> = self
            .tensors
            .iter()
            .map(|(_, _, v)| v.iter().flat_map(|x| x.to_le_bytes()).collect())
            .collect();
        let views: Vec<(String, TensorView<'_>)> = self
            .tensors
            .iter()
            .zip(&bytes)
            .map(|((name, shape, _), b)| {
                (
                    name.clone(),
                    TensorView::new(Dtype::F32, shape.clone(), b).unwrap(),
                )
            })
            .collect();
        let file = safetensors::serialize(views, None).unwrap();
        std::fs::write(self.path().join("model.safetensors"), file).unwrap();
    }

    fn load(&self) -> Result<PretrainedEncoder, PretrainedError> {
        self.write();
        PretrainedEncoder::load(self.path(), &Device::flex())
    }

    fn tensor(&mut self, name: &str) -> &mut (String, Vec<usize>, Vec<f32>) {
        self.tensors.iter_mut().find(|(n, _, _)| n == name).unwrap()
    }
}

fn error_of(result: Result<PretrainedEncoder, PretrainedError>) -> String {
    match result {
        Ok(_) => panic!("loaded a broken folder"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn a_tiny_folder_loads_and_ignores_padding() {
    let tiny = TinyBert::new();
    let encoder = tiny.load().unwrap();
    assert_eq!(
        encoder.tokenizer.encode_for_model("The cats sat").unwrap(),
        (vec![2, 4, 5, 9, 6, 3], false)
    );
    // A text alone and the same text padded in a batch beside a longer one embed alike.
    let device = Device::flex();
    let alone = encoder.embed(&["the cat"], 8, &device).unwrap().values;
    let batched = encoder
        .embed(&["the cat", "the cat sat on the mat"], 8, &device)
        .unwrap()
        .values;
    let (first, second) = batched.split_at(alone.len());
    let d = alone
        .iter()
        .zip(first)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(d < 1e-6, "padding changed an embedding by {d}");
    assert_ne!(first, second);
}

#[test]
fn each_broken_folder_gets_an_error_naming_the_problem() {
    // Missing files.
    for file in ["config.json", "model.safetensors", "tokenizer.json"] {
        let tiny = TinyBert::new();
        tiny.write();
        std::fs::remove_file(tiny.path().join(file)).unwrap();
        let e = error_of(PretrainedEncoder::load(tiny.path(), &Device::flex()));
        assert!(e.contains(file) && e.contains("is missing"), "{e}");
    }
    // An architecture kiln does not build, named with the supported ones.
    let mut tiny = TinyBert::new();
    tiny.config["model_type"] = "gpt2".into();
    let e = error_of(tiny.load());
    assert!(e.contains("\"gpt2\"") && e.contains("bert"), "{e}");
    // An activation kiln does not have.
    let mut tiny = TinyBert::new();
    tiny.config["hidden_act"] = "swish".into();
    let e = error_of(tiny.load());
    assert!(e.contains("hidden_act") && e.contains("swish"), "{e}");
    // A config without a required field: the JSON error names it.
    let mut tiny = TinyBert::new();
    tiny.config.as_object_mut().unwrap().remove("hidden_size");
    let e = error_of(tiny.load());
    assert!(
        e.contains("hidden_size") && e.contains("config.json"),
        "{e}"
    );
    // A tensor missing, of the wrong shape, or non-finite.
    let name = "encoder.layer.1.attention.self.key.weight";
    let mut tiny = TinyBert::new();
    tiny.tensors.retain(|(n, _, _)| n != name);
    let e = error_of(tiny.load());
    assert!(e.contains(name) && e.contains("is missing"), "{e}");
    let mut tiny = TinyBert::new();
    let t = tiny.tensor(name);
    t.1 = vec![8, 4];
    t.2.truncate(32);
    let e = error_of(tiny.load());
    assert!(
        e.contains(name) && e.contains("[8, 4]") && e.contains("[8, 8]"),
        "{e}"
    );
    let mut tiny = TinyBert::new();
    tiny.tensor(name).2[5] = f32::NAN;
    let e = error_of(tiny.load());
    assert!(
        e.contains(name) && e.contains("NaN") && e.contains("index 5"),
        "{e}"
    );
    // A tokenizer with more tokens than the embedding has rows.
    let mut tiny = TinyBert::new();
    tiny.config["vocab_size"] = 6.into();
    tiny.tensor("embeddings.word_embeddings.weight").1 = vec![6, 8];
    tiny.tensor("embeddings.word_embeddings.weight")
        .2
        .truncate(48);
    let e = error_of(tiny.load());
    assert!(e.contains("10 tokens") && e.contains("6 rows"), "{e}");
    // Not safetensors.
    let tiny = TinyBert::new();
    tiny.write();
    std::fs::write(tiny.path().join("model.safetensors"), b"not a tensor file").unwrap();
    let e = error_of(PretrainedEncoder::load(tiny.path(), &Device::flex()));
    assert!(
        e.contains("model.safetensors") && e.contains("safetensors"),
        "{e}"
    );
}
