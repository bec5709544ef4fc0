//! Text classification end to end: a `text` feature read by a transformer encoder, scored on
//! held-out rows, then `eval` and `predict` on new text.

mod common;

use common::*;

const CONFIG: &str = r#"
seed = 7
[data]
source = "reviews.csv"
target = "sentiment"
id_column = "id"
[data.split]
method = "stratified"
validation = 0.1
test = 0.2
[text]
tokenizer = "bpe"
vocab_size = 1000
[model]
type = "transformer"
layers = 1
heads = 2
embd = 32
context = 24
dropout = 0.0
hidden = [32]
[trainer]
epochs = 20
batch_size = 32
optimizer = "adamw"
lr = 0.003
weight_decay = 0.01
monitor = "f1"
keep_best = true
[output]
dir = "runs"
"#;

#[test]
fn transformer_reads_an_inferred_text_column_and_scores_held_out_reviews() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("reviews.csv"), reviews_csv(1500, 11)).unwrap();
    std::fs::write(dir.path().join("text.toml"), CONFIG).unwrap();
    let out = kiln_json(dir.path(), &["train", "text.toml", "--json"]);
    // With 3% label noise the ceiling is about 0.97.
    let acc = out["test"]["accuracy"].as_f64().unwrap();
    let f1 = out["test"]["f1"].as_f64().unwrap();
    eprintln!("synthetic reviews: test accuracy {acc:.4}, F1(pos) {f1:.4}");
    assert!(acc >= 0.9, "held-out accuracy {acc}: {out}");
    assert!(f1 >= 0.9, "held-out F1 of \"pos\" {f1}");
    assert_eq!(out["rows"]["test"], 300);
    let run = dir.path().join(out["run_dir"].as_str().unwrap());
    let schema = std::fs::read_to_string(run.join("schema.json")).unwrap();
    assert!(
        schema.contains("\"text\""),
        "review was not inferred as text: {schema}"
    );
    // The tokenizer travels inside preprocessor.json; new text is tokenized the same way.
    std::fs::write(
        dir.path().join("new.csv"),
        "id,review\nn1,\"the plot was superb and the music moving\"\nn2,\"a tedious story with clumsy actors\"\nn3,\"\"\n",
    )
    .unwrap();
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
    let lines: Vec<&str> = pred.lines().collect();
    assert_eq!(lines.len(), 4, "{pred}");
    assert!(
        lines[1].starts_with("n1,") && lines[1].ends_with("pos"),
        "{pred}"
    );
    assert!(
        lines[2].starts_with("n2,") && lines[2].ends_with("neg"),
        "{pred}"
    );
    // eval on labelled data reloads everything.
    std::fs::write(dir.path().join("more.csv"), reviews_csv(200, 99)).unwrap();
    let eval = kiln_json(
        dir.path(),
        &[
            "eval",
            run.to_str().unwrap(),
            "--data",
            "more.csv",
            "--json",
        ],
    );
    assert!(eval["test"]["accuracy"].as_f64().unwrap() >= 0.9, "{eval}");
}

#[test]
fn a_causal_encoder_from_scratch_learns_and_differs_from_the_bidirectional_one() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("reviews.csv"), reviews_csv(600, 5)).unwrap();
    std::fs::write(dir.path().join("text.toml"), CONFIG).unwrap();
    let mut losses = Vec::new();
    for causal in ["false", "true"] {
        let name = format!("output.name=\"causal-{causal}\"");
        let setting = format!("model.causal={causal}");
        let args = ["train", "text.toml", "--json", "--set", "trainer.epochs=8"];
        let out = kiln_json(
            dir.path(),
            &[&args[..], &["--set", &setting, "--set", &name]].concat(),
        );
        let acc = out["test"]["accuracy"].as_f64().unwrap();
        assert!(acc >= 0.85, "causal = {causal}: held-out accuracy {acc}");
        let run = dir.path().join(out["run_dir"].as_str().unwrap());
        let spec: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(run.join("model.json")).unwrap())
                .unwrap();
        assert_eq!(spec["text"]["causal"].to_string(), causal);
        losses.push(out["validation"]["log_loss"].clone());
    }
    assert_ne!(losses[0], losses[1], "the mask changes the network");
}

#[test]
fn text_configuration_mistakes_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("reviews.csv"), reviews_csv(100, 1)).unwrap();
    // An explicit text feature with a tabular model.
    let err = kiln_err(
        dir.path(),
        &[
            "train",
            "--data",
            "reviews.csv",
            "--target",
            "sentiment",
            "--set",
            "features=[{name=\"review\", type=\"text\"}]",
        ],
    );
    assert!(
        err.contains("review") && err.contains("model.type = \"transformer\""),
        "{err}"
    );
    // A transformer with no text to read.
    std::fs::write(
        dir.path().join("nums.csv"),
        "a,b,y\n1,2,x\n3,4,z\n5,6,x\n7,8,z\n",
    )
    .unwrap();
    let err = kiln_err(
        dir.path(),
        &[
            "train",
            "--data",
            "nums.csv",
            "--target",
            "y",
            "--set",
            "model.type=transformer",
        ],
    );
    assert!(err.contains("needs a text feature"), "{err}");
    // Free text is left out of a tabular model, with the reason shown.
    let out = kiln_json(
        dir.path(),
        &[
            "data",
            "describe",
            "reviews.csv",
            "--target",
            "sentiment",
            "--json",
        ],
    );
    let text = out.to_string();
    assert!(text.contains("free text"), "{text}");
}
