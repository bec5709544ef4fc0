//! Language models end to end: train a small GPT, generate with and without the KV cache,
//! resume bit-identically, and the bad-input cases of text.

mod common;

use std::path::Path;

use common::*;

const CONFIG: &str = r#"
seed = 5
[data]
source = "corpus.txt"
[text]
tokenizer = "TOKENIZER"
vocab_size = 300
val_fraction = 0.2
[model]
type = "gpt"
layers = 2
heads = 2
embd = 32
context = 32
dropout = 0.1
[trainer]
max_steps = 60
batch_size = 8
optimizer = "adamw"
lr = 0.003
schedule = "cosine"
warmup_steps = 10
grad_clip_norm = 1.0
eval_every_steps = 20
eval_batches = 4
checkpoint_every_steps = 25
[output]
plots = false
"#;

fn corpus() -> String {
    let lines = [
        "the cat sat on the mat.",
        "the dog sat on the log.",
        "a cat and a dog met on the mat.",
        "人民日报发表新年贺词。",
        "the bird sang on the tree.",
    ];
    (0..400)
        .map(|i| lines[i % lines.len()])
        .collect::<Vec<_>>()
        .join("\n")
}

fn setup(dir: &Path, tokenizer: &str) {
    std::fs::write(dir.join("corpus.txt"), corpus()).unwrap();
    std::fs::write(dir.join("lm.toml"), CONFIG.replace("TOKENIZER", tokenizer)).unwrap();
}

#[test]
fn char_gpt_trains_and_generates_the_same_with_and_without_cache() {
    let dir = tempfile::tempdir().unwrap();
    setup(dir.path(), "char");
    let out = kiln_json(
        dir.path(),
        &["train", "lm.toml", "--json", "--set", "output.name=lm"],
    );
    // 2 blocks of 12·32² + 8·32 (no bias), embeddings (vocab + 32 positions)·32, final norm.
    assert!(
        out["parameters"].as_u64().unwrap() > 2 * 12 * 32 * 32,
        "{}",
        out["parameters"]
    );
    let evals = out["evals"].as_array().unwrap();
    assert_eq!(evals.len(), 3);
    let first = evals[0]["val_loss"].as_f64().unwrap();
    let last = evals[2]["val_loss"].as_f64().unwrap();
    assert!(last < first, "validation loss falls: {first} -> {last}");
    assert!(last < 2.0, "a repetitive corpus is learnable: {last}");
    let run = dir.path().join("runs/lm");
    for f in [
        "model.safetensors",
        "tokenizer.json",
        "model.json",
        "data/train.bin",
        "data/val.bin",
        "data/meta.json",
    ] {
        assert!(run.join(f).exists(), "{f}");
    }
    let greedy = |cache: bool| {
        let mut args = vec![
            "generate",
            "runs/lm",
            "--prompt",
            "the cat",
            "--max-new-tokens",
            "40",
            "--temperature",
            "0",
            "--json",
        ];
        if !cache {
            args.push("--no-cache");
        }
        kiln_json(dir.path(), &args)
    };
    let (a, b) = (greedy(true), greedy(false));
    assert_eq!(
        a["text"], b["text"],
        "cached and uncached greedy decoding agree"
    );
    assert_eq!(a["new_tokens"], 40);
    // Sampling is seeded.
    let seeded = [
        "generate",
        "runs/lm",
        "--prompt",
        "the",
        "--max-new-tokens",
        "80",
        "--seed",
        "9",
        "--top-k",
        "5",
        "--top-p",
        "0.9",
        "--json",
    ];
    let s1 = kiln_json(dir.path(), &seeded);
    let s2 = kiln_json(dir.path(), &seeded);
    assert_eq!(s1["text"], s2["text"]);
    // A reader that stops early (`kiln generate ... | head`) ends kiln quietly: no panic
    // about the broken pipe.
    {
        use std::io::Read;
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
            .args([
                "generate",
                "runs/lm",
                "--prompt",
                "the",
                "--max-new-tokens",
                "20000",
            ])
            .current_dir(dir.path())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut first = [0u8; 4];
        child.stdout.take().unwrap().read_exact(&mut first).unwrap();
        // The pipe's read end is closed here (dropped with the `take`n handle).
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("panicked"), "{stderr}");
        assert!(!stderr.contains("Broken pipe"), "{stderr}");
    }
    // A temperature that is not a finite number >= 0 is refused, as the server does.
    for bad in ["nan", "-0.5", "inf"] {
        let err = kiln_err(
            dir.path(),
            &[
                "generate",
                "runs/lm",
                "--prompt",
                "the",
                &format!("--temperature={bad}"),
            ],
        );
        assert!(
            err.contains("temperature must be a finite number >= 0"),
            "{err}"
        );
    }
    // Generating past the context slides the window instead of failing.
    let long = kiln_json(
        dir.path(),
        &[
            "generate",
            "runs/lm",
            "--prompt",
            "the",
            "--max-new-tokens",
            "100",
            "--json",
        ],
    );
    assert_eq!(long["new_tokens"], 100);
    // Characters never seen become <unk> and are counted.
    let unk = kiln_json(
        dir.path(),
        &[
            "generate",
            "runs/lm",
            "--prompt",
            "the 🙂",
            "--max-new-tokens",
            "5",
            "--json",
        ],
    );
    assert_eq!(unk["unknown_prompt_tokens"], 1);
    // A prompt longer than the context is a clear error.
    let err = kiln_err(
        dir.path(),
        &[
            "generate",
            "runs/lm",
            "--prompt",
            &"the cat ".repeat(10),
            "--max-new-tokens",
            "5",
        ],
    );
    assert!(err.contains("context is 32 tokens"), "{err}");
    // eval/predict are for tabular runs.
    let err = kiln_err(dir.path(), &["eval", "runs/lm", "--data", "corpus.txt"]);
    assert!(err.contains("language-model run"), "{err}");
    // A tokenizer from another corpus does not fit the model.
    std::fs::write(dir.path().join("other.txt"), "xyz").unwrap();
    kiln_ok(
        dir.path(),
        &[
            "data",
            "prepare-text",
            "other.txt",
            "--out",
            "other",
            "--val-fraction",
            "0.3",
        ],
    );
    std::fs::copy(
        dir.path().join("other/tokenizer.json"),
        run.join("tokenizer.json"),
    )
    .unwrap();
    let err = kiln_err(dir.path(), &["generate", "runs/lm", "--prompt", "x"]);
    assert!(err.contains("do not belong together"), "{err}");
}

#[test]
fn bpe_gpt_resumes_bit_identically() {
    let dir = tempfile::tempdir().unwrap();
    setup(dir.path(), "bpe");
    kiln_ok(
        dir.path(),
        &["train", "lm.toml", "--quiet", "--set", "output.name=full"],
    );
    // Stop a copy at step 50 (checkpoint at 50), then resume it to 60.
    kiln_ok(
        dir.path(),
        &[
            "train",
            "lm.toml",
            "--quiet",
            "--set",
            "output.name=part",
            "--set",
            "trainer.max_steps=60",
            "--set",
            "trainer.checkpoint_every_steps=25",
        ],
    );
    // Rewind the finished copy to its step-50 checkpoint and resume from there.
    let ck = dir.path().join("runs/part/checkpoints/step-00000050");
    assert!(ck.exists());
    std::fs::remove_file(dir.path().join("runs/part/model.safetensors")).unwrap();
    let out = kiln_json(
        dir.path(),
        &["train", "--resume", ck.to_str().unwrap(), "--json"],
    );
    assert_eq!(out["resumed_from"], 50);
    let a = std::fs::read(dir.path().join("runs/full/model.safetensors")).unwrap();
    let b = std::fs::read(dir.path().join("runs/part/model.safetensors")).unwrap();
    assert!(a == b, "resumed language model differs");
    // A finished language model trains on with a larger max_steps, and only then.
    let part = dir.path().join("runs/part");
    let err = kiln_err(
        dir.path(),
        &[
            "train",
            "--resume",
            part.to_str().unwrap(),
            "--set",
            "trainer.max_steps=60",
        ],
    );
    assert!(
        err.contains("has finished (60 of 60 steps") && err.contains("trainer.max_steps=N"),
        "{err}"
    );
    let out = kiln_json(
        dir.path(),
        &[
            "train",
            "--resume",
            part.to_str().unwrap(),
            "--set",
            "trainer.max_steps=70",
            "--json",
        ],
    );
    assert_eq!(out["resumed_from"], 60);
    assert_eq!(out["steps"], 70);
}

#[test]
fn text_bad_inputs() {
    let dir = tempfile::tempdir().unwrap();
    setup(dir.path(), "char");
    std::fs::write(dir.path().join("corpus.txt"), "").unwrap();
    let err = kiln_err(dir.path(), &["train", "lm.toml"]);
    assert!(err.contains("corpus is empty"), "{err}");
    std::fs::write(
        dir.path().join("corpus.txt"),
        b"good line\nbad \xfe\xff line\n",
    )
    .unwrap();
    let err = kiln_err(dir.path(), &["train", "lm.toml", "--set", "output.name=b"]);
    assert!(
        err.contains("corpus.txt") && err.contains("not valid UTF-8") && err.contains("line 2"),
        "{err}"
    );
    std::fs::write(dir.path().join("corpus.txt"), "tiny corpus\n").unwrap();
    let err = kiln_err(dir.path(), &["train", "lm.toml", "--set", "output.name=c"]);
    assert!(err.contains("fewer than one context window"), "{err}");
    let err = kiln_err(
        dir.path(),
        &[
            "train",
            "lm.toml",
            "--set",
            "model.heads=3",
            "--set",
            "output.name=d",
        ],
    );
    assert!(err.contains("divisible"), "{err}");
    let err = kiln_err(dir.path(), &["generate", "nowhere", "--prompt", "x"]);
    assert!(err.contains("nowhere"), "{err}");
}
