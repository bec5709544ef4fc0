//! Text classifiers trained from scratch on real corpora, scored on held-out splits (needs
//! scripts/setup-text-data.sh). Long: run with
//! `cargo test -p kiln-cli --test text_real -- --ignored --nocapture`.

mod common;

use common::*;

fn train_example(example: &str, data: &str, extra: &[&str]) -> serde_json::Value {
    let data = root().join(data);
    assert!(
        data.exists(),
        "{} is missing: run scripts/setup-text-data.sh first",
        data.display()
    );
    let dir = tempfile::tempdir().unwrap();
    let config = root().join("examples").join(example);
    let source = format!("data.source={}", data.display());
    let mut args = vec![
        "train",
        config.to_str().unwrap(),
        "--set",
        &source,
        "--set",
        "output.dir=runs",
        "--json",
    ];
    args.extend_from_slice(extra);
    kiln_json(dir.path(), &args)
}

/// Issue 3's target: F1(spam) >= 0.97 on the held-out mails, as the mean over three seeds
/// (each its own split, initialisation and dropout masks), so that no single lucky seed meets
/// it. The config's settings were chosen on the validation split.
#[test]
#[ignore = "long; needs data/spam.csv (scripts/setup-text-data.sh)"]
fn spam_mean_f1_over_three_seeds_reaches_0_97_on_held_out_mails() {
    let mut scores = Vec::new();
    for seed in ["42", "1", "2"] {
        let seed_setting = format!("seed={seed}");
        let out = train_example("spam.toml", "data/spam.csv", &["--set", &seed_setting]);
        let test = &out["test"];
        let f1 = test["f1"].as_f64().unwrap();
        println!(
            "spam seed {seed}: test F1(spam) {f1:.4}, precision {:.4}, recall {:.4}, accuracy {:.4}, validation F1 {:.4}, {} mails, {:.0} s",
            test["precision"].as_f64().unwrap(),
            test["recall"].as_f64().unwrap(),
            test["accuracy"].as_f64().unwrap(),
            out["validation"]["f1"].as_f64().unwrap_or(f64::NAN),
            test["samples"],
            out["train_seconds"].as_f64().unwrap()
        );
        assert!(test["samples"].as_u64().unwrap() >= 1200);
        scores.push(f1);
    }
    let mean = scores.iter().sum::<f64>() / scores.len() as f64;
    let spread = scores.iter().fold(0.0f64, |m, &f| m.max((f - mean).abs()));
    println!("spam: mean test F1(spam) {mean:.4} ± {spread:.4} over seeds 42, 1, 2");
    assert!(mean >= 0.97, "spam mean F1 {mean} ({scores:?})");
}

#[test]
#[ignore = "long; needs data/sentiment.csv (scripts/setup-text-data.sh)"]
fn chinese_sentiment_reaches_88_percent_on_held_out_reviews() {
    let out = train_example("sentiment_zh.toml", "data/sentiment.csv", &[]);
    let test = &out["test"];
    let acc = test["accuracy"].as_f64().unwrap();
    println!(
        "sentiment: test accuracy {acc:.4}, F1 macro {:.4}, ROC-AUC {:.4}, {} reviews, {:.0} s",
        test["f1_macro"].as_f64().unwrap(),
        test["roc_auc"].as_f64().unwrap(),
        test["samples"],
        out["train_seconds"].as_f64().unwrap()
    );
    assert!(test["samples"].as_u64().unwrap() >= 3000);
    assert!(acc >= 0.88, "sentiment accuracy {acc}");
}
