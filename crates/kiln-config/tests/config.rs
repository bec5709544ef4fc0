//! Parsing, overrides and validation errors.

use kiln_config::{BatchSize, ConfigError, ModelKind, OptimizerKind, from_str};

const BASE: &str = r#"
seed = 7
[data]
source = "builtin:digits"

[model]
type = "mlp"
hidden = [32]

[trainer]
epochs = 3
lr = 0.01
batch_size = "full"
"#;

#[test]
fn parses_with_defaults() {
    let c = from_str(BASE, "t.toml", &[]).unwrap();
    assert_eq!(c.seed, 7);
    assert_eq!(c.model.kind, ModelKind::Mlp);
    assert_eq!(c.trainer.batch_size, BatchSize::Full);
    assert_eq!(c.trainer.optimizer, OptimizerKind::Adam);
    assert_eq!(c.data.split.validation, 0.1);
}

#[test]
fn overrides_apply_typed_values() {
    let sets = [
        "trainer.lr=0.5".to_string(),
        "trainer.optimizer=sgd".into(),
        "model.hidden=[8, 4]".into(),
        "trainer.batch_size=1".into(),
    ];
    let c = from_str(BASE, "t.toml", &sets).unwrap();
    assert_eq!(c.trainer.lr, 0.5);
    assert_eq!(c.trainer.optimizer, OptimizerKind::Sgd);
    assert_eq!(c.model.hidden, vec![8, 4]);
    assert_eq!(c.trainer.batch_size, BatchSize::Samples(1));
}

#[test]
fn unknown_key_names_line() {
    let text = BASE.replace("lr = 0.01", "lrr = 0.01");
    let err = from_str(&text, "t.toml", &[]).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, ConfigError::Parse { line: 12, .. }), "{msg}");
    assert!(msg.contains("lrr") && msg.contains("t.toml"), "{msg}");
}

#[test]
fn wrong_type_names_line() {
    let text = BASE.replace("epochs = 3", "epochs = \"three\"");
    let err = from_str(&text, "t.toml", &[]).unwrap_err();
    assert!(matches!(err, ConfigError::Parse { line: 11, .. }), "{err}");
}

#[test]
fn out_of_range_value_names_key_and_line() {
    let text = BASE.replace("lr = 0.01", "lr = -1.0");
    let err = from_str(&text, "t.toml", &[]).unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(&err, ConfigError::Invalid { key, line: Some(12), .. } if key == "trainer.lr"),
        "{msg}"
    );
    assert!(msg.contains("positive"), "{msg}");
}

#[test]
fn bad_enum_value_lists_choices() {
    let err = from_str(BASE, "t.toml", &["trainer.optimizer=adamax".into()]).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("adamax") && msg.contains("adamw"), "{msg}");
}

#[test]
fn malformed_override_is_an_error() {
    let err = from_str(BASE, "t.toml", &["trainer.lr".into()]).unwrap_err();
    assert!(matches!(err, ConfigError::Override { .. }), "{err}");
}

#[test]
fn batch_size_zero_is_rejected() {
    let err = from_str(BASE, "t.toml", &["trainer.batch_size=0".into()]).unwrap_err();
    assert!(err.to_string().contains("at least 1"), "{err}");
}

#[test]
fn missing_source_is_an_error() {
    let err = from_str("[model]\nhidden=[4]\n", "t.toml", &[]).unwrap_err();
    assert!(err.to_string().contains("data.source"), "{err}");
}

/// With `model.pretrained`, the keys a config leaves unset take fine-tuning values; the ones
/// it sets, in the file or by `--set`, keep them; without it nothing changes.
#[test]
fn a_pretrained_model_gets_fine_tuning_defaults_for_unset_keys() {
    let text = r#"
[data]
source = "x.csv"
[model]
type = "transformer"
pretrained = "some/folder"
[trainer]
epochs = 5
"#;
    let c = kiln_config::from_str(text, "t.toml", &["trainer.batch_size=8".into()]).unwrap();
    assert_eq!(c.trainer.lr, 5e-5);
    assert_eq!(c.trainer.optimizer, kiln_config::OptimizerKind::Adamw);
    assert_eq!(c.trainer.schedule, kiln_config::ScheduleKind::Linear);
    assert_eq!(c.model.hidden, Vec::<usize>::new());
    assert_eq!(c.model.context, 128);
    assert_eq!(c.trainer.epochs, 5, "set in the file");
    assert_eq!(
        c.trainer.batch_size,
        kiln_config::BatchSize::Samples(8),
        "set by --set"
    );
    let scratch = kiln_config::from_str(
        "[data]\nsource = \"x.csv\"\n[model]\ntype = \"transformer\"\n",
        "t.toml",
        &[],
    )
    .unwrap();
    assert_eq!(scratch.trainer.lr, 1e-3);
    assert_eq!(scratch.trainer.epochs, 30);
}

#[test]
fn misspelled_keys_and_values_get_a_suggestion() {
    let text = BASE.replace("epochs = 3", "epohcs = 3");
    let e = from_str(&text, "t.toml", &[]).unwrap_err().to_string();
    assert!(
        e.contains("unknown field `epohcs` (did you mean `epochs`?)") && e.contains("line 11"),
        "{e}"
    );
    let e = from_str(BASE, "t.toml", &["trainer.optimizer=\"adamm\"".into()])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("unknown variant `adamm` (did you mean `adam`?)"),
        "{e}"
    );
    // Nothing close: no guess.
    let text = BASE.replace("epochs = 3", "zzz = 3");
    let e = from_str(&text, "t.toml", &[]).unwrap_err().to_string();
    assert!(
        e.contains("unknown field `zzz`") && !e.contains("did you mean"),
        "{e}"
    );
}

#[test]
fn relative_paths_in_a_config_file_are_relative_to_its_folder() {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("experiments/spam");
    std::fs::create_dir_all(&folder).unwrap();
    let path = folder.join("run.toml");
    std::fs::write(
        &path,
        r#"
[data]
source = "../../data/spam.csv"
test_source = "./held_out.csv"
[model]
type = "transformer"
pretrained = "/opt/models/minilm"
[distill]
teacher = "../runs/teacher"
[text]
tokenizer = "tok/tokenizer.json"
[output]
dir = "runs"
"#,
    )
    .unwrap();
    let config = kiln_config::load_user(&path, &[]).unwrap();
    let under = |p: &str| dir.path().join(p).display().to_string();
    assert_eq!(config.data.source, under("data/spam.csv"));
    assert_eq!(
        config.data.test_source.as_deref(),
        Some(under("experiments/spam/held_out.csv").as_str())
    );
    assert_eq!(
        config.model.pretrained.as_deref(),
        Some("/opt/models/minilm")
    );
    assert_eq!(
        config.distill.teacher.as_ref().map(|t| t.dirs()),
        Some(vec![under("experiments/runs/teacher").as_str()])
    );
    assert_eq!(
        config.text.tokenizer,
        under("experiments/spam/tok/tokenizer.json")
    );
    // Outputs stay under the working directory; `--set` values are the command line's.
    assert_eq!(config.output.dir, "runs");
    let config = kiln_config::load_user(
        &path,
        &["data.source=mine.csv".into(), "text.tokenizer=bpe".into()],
    )
    .unwrap();
    assert_eq!(config.data.source, "mine.csv");
    assert_eq!(config.text.tokenizer, "bpe");
    // A list of teachers (an ensemble): each is resolved; duplicates and none are refused.
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        text.replace(
            "teacher = \"../runs/teacher\"",
            "teacher = [\"../runs/a\", \"/abs/b\"]",
        ),
    )
    .unwrap();
    let config = kiln_config::load_user(&path, &[]).unwrap();
    assert_eq!(
        config.distill.teacher.as_ref().map(|t| t.dirs()),
        Some(vec![under("experiments/runs/a").as_str(), "/abs/b"])
    );
    for (teachers, expected) in [
        ("[\"a\", \"a\"]", "listed twice"),
        ("[\"runs/a\", \"./runs/a/\"]", "listed twice"),
        ("[]", "empty"),
        ("3", "a run directory or a list of run directories"),
    ] {
        let err = kiln_config::load_user(&path, &[format!("distill.teacher={teachers}")])
            .unwrap_err()
            .to_string();
        assert!(err.contains(expected), "{teachers}: {err}");
    }
    // Names that are not paths are left alone; a run's saved config is read as written.
    std::fs::write(
        &path,
        "[data]\nsource = \"builtin:iris\"\n[text]\ntokenizer = \"char\"\n",
    )
    .unwrap();
    let config = kiln_config::load_user(&path, &[]).unwrap();
    assert_eq!(config.data.source, "builtin:iris");
    assert_eq!(config.text.tokenizer, "char");
    std::fs::write(&path, "[data]\nsource = \"data/x.csv\"\n").unwrap();
    assert_eq!(
        kiln_config::load(&path, &[]).unwrap().data.source,
        "data/x.csv"
    );
}

#[test]
fn causal_attention_is_a_text_encoder_setting() {
    let err = from_str(BASE, "t.toml", &["model.causal=true".into()]).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("model.causal") && msg.contains("transformer"),
        "{msg}"
    );
    let c = from_str(
        BASE,
        "t.toml",
        &[
            "model.type=\"transformer\"".into(),
            "model.causal=true".into(),
        ],
    )
    .unwrap();
    assert_eq!(c.model.causal, Some(true));
    let err = from_str(
        BASE,
        "t.toml",
        &[
            "model.type=\"transformer\"".into(),
            "model.causal=true".into(),
            "model.pooling=\"cls\"".into(),
        ],
    )
    .unwrap_err();
    assert!(err.to_string().contains("model.pooling"), "{err}");
}
