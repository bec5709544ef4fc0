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

/// Reviews of 24–28 filler words whose one sentiment word sits between words 12 and 20:
/// never in the first 10 tokens.
fn long_reviews_csv(rows: usize, seed: u64) -> String {
    let mut next = below(seed);
    let filler = [
        "the", "film", "was", "a", "plot", "with", "actors", "and", "music",
    ];
    let mut out = String::from("id,review,sentiment\n");
    for i in 0..rows {
        let positive = next(2) == 0;
        let at = 12 + next(8);
        let words: Vec<&str> = (0..24 + next(5))
            .map(|w| match w {
                _ if w == at && positive => ["great", "superb"][next(2)],
                _ if w == at => ["awful", "boring"][next(2)],
                _ => filler[next(filler.len())],
            })
            .collect();
        let label = if positive { "pos" } else { "neg" };
        out.push_str(&format!("r{i},\"{}\",{label}\n", words.join(" ")));
    }
    out
}

#[test]
fn windows_let_a_classifier_read_past_its_context() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("reviews.csv"), long_reviews_csv(800, 3)).unwrap();
    std::fs::write(dir.path().join("text.toml"), CONFIG).unwrap();
    let train = |windows: usize| {
        let args = [
            "train",
            "text.toml",
            "--json",
            "--set",
            "trainer.epochs=10",
            "--set",
            "model.context=10",
        ];
        let windows_set = format!("text.windows={windows}");
        let name = format!("output.name=\"windows-{windows}\"");
        kiln_json(
            dir.path(),
            &[&args[..], &["--set", &windows_set, "--set", &name]].concat(),
        )
    };
    // One window of 10 tokens never holds the sentiment word: a coin toss.
    let one = train(1);
    let acc = one["test"]["accuracy"].as_f64().unwrap();
    assert!(acc < 0.7, "one window: held-out accuracy {acc}");
    // Three windows of 10 hold all of it; the windows' pooled states are averaged.
    let three = train(3);
    let acc = three["test"]["accuracy"].as_f64().unwrap();
    assert!(acc >= 0.9, "three windows: held-out accuracy {acc}");
    let run = dir.path().join(three["run_dir"].as_str().unwrap());
    // predict and eval read new text in windows too.
    std::fs::write(
        dir.path().join("new.csv"),
        "id,review\nn1,\"the film was a plot with actors and music the film was a plot superb the film\"\nn2,\"the film was a plot with actors and music the film was a plot awful the film\"\nn3,\"\"\n",
    )
    .unwrap();
    let r = run.to_str().unwrap();
    kiln_ok(
        dir.path(),
        &["predict", r, "--data", "new.csv", "--out", "pred.csv"],
    );
    let pred = std::fs::read_to_string(dir.path().join("pred.csv")).unwrap();
    let lines: Vec<&str> = pred.lines().collect();
    assert_eq!(lines.len(), 4, "{pred}");
    assert!(
        lines[1].ends_with("pos") && lines[2].ends_with("neg"),
        "{pred}"
    );
    std::fs::write(dir.path().join("more.csv"), long_reviews_csv(200, 99)).unwrap();
    let eval = kiln_json(dir.path(), &["eval", r, "--data", "more.csv", "--json"]);
    assert!(eval["test"]["accuracy"].as_f64().unwrap() >= 0.9, "{eval}");
    // Windows are for text classifiers; the overlap needs windows and room.
    for (setting, key) in [
        ("text.window_overlap=2", "text.window_overlap"),
        ("text.windows=0", "text.windows"),
        ("text.windows=65", "text.windows"),
    ] {
        let err = kiln_err(dir.path(), &["train", "text.toml", "--set", setting]);
        assert!(err.contains(key), "{setting}: {err}");
    }
    let err = kiln_err(
        dir.path(),
        &[
            "train",
            "text.toml",
            "--set",
            "text.windows=2",
            "--set",
            "text.window_overlap=5",
            "--set",
            "model.context=10",
        ],
    );
    assert!(err.contains("half of model.context"), "{err}");
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
