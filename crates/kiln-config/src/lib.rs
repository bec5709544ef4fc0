//! kiln's run configuration.
//!
//! A run is described by one TOML file ([`Config`]); every key has a default, and any key can
//! be overridden with `--set section.key=value`. [`load`] parses, applies overrides and
//! validates; errors name the file, the key, the line and what was expected.
#![warn(missing_docs)]

mod device;
mod schema;

use std::path::Path;

pub use device::{DEVICE_CHOICES, DeviceRequest};
pub use schema::*;

/// A configuration problem, with enough context to fix it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The TOML is malformed, a key is unknown or a value has the wrong type.
    #[error("{origin}, line {line}, column {column}: {message}")]
    Parse {
        /// The file (or `--set`).
        origin: String,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What toml/serde said.
        message: String,
    },
    /// An override is not `key=value` or names no key.
    #[error("--set {assignment}: {message}")]
    Override {
        /// The override as given.
        assignment: String,
        /// What is wrong with it.
        message: String,
    },
    /// A value parses but is out of range or inconsistent.
    #[error("{origin}: `{key}`{}: {message}", line.map(|l| format!(" (line {l})")).unwrap_or_default())]
    Invalid {
        /// The file (or `--set`/defaults).
        origin: String,
        /// Dotted key.
        key: String,
        /// 1-based line where the key is set, when it is set in the file.
        line: Option<usize>,
        /// What was expected.
        message: String,
    },
}

/// Reads, overrides and validates a config file.
pub fn load(path: &Path, overrides: &[String]) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
        path: path.display().to_string(),
        source,
    })?;
    from_str(&text, &path.display().to_string(), overrides)
}

/// The keys whose values are input paths. In a config file a person wrote ([`load_user`]),
/// a relative one is relative to the file's folder, as Cargo reads paths in `Cargo.toml`;
/// `output.dir` is not among them: runs go under the working directory.
pub const PATH_KEYS: [&str; 5] = [
    "data.source",
    "data.test_source",
    "model.pretrained",
    "distill.teacher",
    "text.tokenizer",
];

/// Reads a config file a person wrote: relative paths under [`PATH_KEYS`] in it are relative
/// to its folder (`--set` values stay relative to the working directory), then overrides and
/// validates. A run's own `config.toml` holds resolved paths: read that with [`load`].
pub fn load_user(path: &Path, overrides: &[String]) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
        path: path.display().to_string(),
        source,
    })?;
    let folder = path.parent().unwrap_or(Path::new(""));
    from_str_in(&text, &path.display().to_string(), overrides, Some(folder))
}

/// `folder.join(value)` for a relative path, with `.` and `..` taken out lexically
/// (`examples/../data/x.csv` is `data/x.csv`); other values as they are.
fn resolve_path(folder: &Path, key: &str, value: &str) -> String {
    let not_a_path = value.is_empty()
        || value.starts_with("builtin:")
        || (key == "text.tokenizer" && matches!(value, "char" | "bpe"));
    let path = Path::new(value);
    if not_a_path || path.is_absolute() || folder.as_os_str().is_empty() {
        return value.to_string();
    }
    let mut out = std::path::PathBuf::new();
    for part in folder.join(path).components() {
        match part {
            std::path::Component::CurDir => {}
            std::path::Component::ParentDir
                if matches!(
                    out.components().next_back(),
                    Some(std::path::Component::Normal(_))
                ) =>
            {
                out.pop();
            }
            other => out.push(other),
        }
    }
    if out.as_os_str().is_empty() {
        return ".".into();
    }
    out.display().to_string()
}

/// Parses config text (named `origin` in errors), applies overrides and validates.
pub fn from_str(text: &str, origin: &str, overrides: &[String]) -> Result<Config, ConfigError> {
    from_str_in(text, origin, overrides, None)
}

/// [`from_str`], with the relative paths of the text resolved against `folder` when given.
fn from_str_in(
    text: &str,
    origin: &str,
    overrides: &[String],
    folder: Option<&Path>,
) -> Result<Config, ConfigError> {
    // Deserialize the file as written first so errors point into it.
    let parse_error = |e: toml::de::Error, origin: &str, text: &str| {
        let (line, column) = e.span().map(|s| line_col(text, s.start)).unwrap_or((1, 1));
        ConfigError::Parse {
            origin: origin.to_string(),
            line,
            column,
            message: did_you_mean(e.message().trim()),
        }
    };
    let config: Config = toml::from_str(text).map_err(|e| parse_error(e, origin, text))?;
    let mut table: toml::Table = toml::from_str(text).map_err(|e| parse_error(e, origin, text))?;
    let mut resolved = false;
    if let Some(folder) = folder {
        for key in PATH_KEYS {
            let (section, name) = key.split_once('.').expect("section.key");
            let values: Vec<&mut String> = match table
                .get_mut(section)
                .and_then(|s| s.as_table_mut())
                .and_then(|s| s.get_mut(name))
            {
                Some(toml::Value::String(value)) => vec![value],
                // `distill.teacher` may list several runs.
                Some(toml::Value::Array(values)) => values
                    .iter_mut()
                    .filter_map(|v| match v {
                        toml::Value::String(value) => Some(value),
                        _ => None,
                    })
                    .collect(),
                _ => Vec::new(),
            };
            for value in values {
                let path = resolve_path(folder, key, value);
                resolved |= path != *value;
                *value = path;
            }
        }
    }
    for assignment in overrides {
        apply_override(&mut table, assignment)?;
    }
    let defaulted = fine_tuning_defaults(&mut table);
    let config = if overrides.is_empty() && !defaulted && !resolved {
        config
    } else {
        let merged = toml::to_string(&table).expect("a TOML table serializes");
        toml::from_str(&merged).map_err(|e| {
            let key = overrides.join(", ");
            ConfigError::Override {
                assignment: key,
                message: did_you_mean(e.message().trim()),
            }
        })?
    };
    validate(&config).map_err(|(key, message)| {
        let line = find_key_line(text, &key);
        let origin = if line.is_some() {
            origin.to_string()
        } else if overrides.iter().any(|o| o.starts_with(&format!("{key}="))) {
            "--set".to_string()
        } else {
            origin.to_string()
        };
        ConfigError::Invalid {
            origin,
            key,
            line,
            message,
        }
    })?;
    Ok(config)
}

/// Adds the closest accepted name to serde's "unknown field `x`, expected one of `a`, `b`"
/// (or "unknown variant ...") when one is close enough to be a typo.
fn did_you_mean(message: &str) -> String {
    let names: Vec<&str> = message.split('`').skip(1).step_by(2).collect();
    let (Some((given, accepted)), true) = (
        names.split_first(),
        message.starts_with("unknown field") || message.starts_with("unknown variant"),
    ) else {
        return message.to_string();
    };
    let best = accepted
        .iter()
        .map(|name| (strsim::jaro_winkler(given, name), *name))
        .max_by(|a, b| a.0.total_cmp(&b.0));
    match best {
        Some((score, name)) if score >= 0.85 => {
            let head = format!("`{given}`");
            message.replacen(&head, &format!("{head} (did you mean `{name}`?)"), 1)
        }
        _ => message.to_string(),
    }
}

/// The defaults of fine-tuning a pretrained encoder (Hugging Face Trainer's, with a batch
/// of 32 and no hidden head layer), for the keys a config with `model.pretrained` leaves
/// unset; a from-scratch network's defaults would wreck pretrained weights in a few steps.
pub const FINE_TUNING_DEFAULTS: [(&str, &str); 9] = [
    ("model.hidden", "[]"),
    ("model.context", "128"),
    ("trainer.epochs", "3"),
    ("trainer.batch_size", "32"),
    ("trainer.optimizer", "\"adamw\""),
    ("trainer.lr", "5e-5"),
    ("trainer.weight_decay", "0.01"),
    ("trainer.schedule", "\"linear\""),
    ("trainer.grad_clip_norm", "1.0"),
];

/// Fills [`FINE_TUNING_DEFAULTS`] into `table` where it has `model.pretrained` and lacks the
/// key; whether it had `model.pretrained`.
fn fine_tuning_defaults(table: &mut toml::Table) -> bool {
    let pretrained = table
        .get("model")
        .and_then(|m| m.get("pretrained"))
        .is_some();
    if !pretrained {
        return false;
    }
    for (key, value) in FINE_TUNING_DEFAULTS {
        let (section, name) = key.split_once('.').expect("section.key");
        let present = table.get(section).and_then(|s| s.get(name)).is_some();
        if !present {
            apply_override(table, &format!("{key}={value}")).expect("a valid default");
        }
    }
    true
}

/// What training without a config file does beyond a config file's defaults: stop after
/// five epochs without a better validation value of `trainer.monitor` and keep the best
/// epoch's weights (Ludwig's `early_stop`, HF's `load_best_model_at_end`). `--set` changes
/// either.
pub const ZERO_CONFIG_DEFAULTS: [(&str, &str); 2] = [
    ("trainer.early_stopping_patience", "5"),
    ("trainer.keep_best", "true"),
];

/// Builds a config from overrides alone (the zero-config path, with
/// [`ZERO_CONFIG_DEFAULTS`] under them), then validates it.
pub fn from_overrides(overrides: &[String]) -> Result<Config, ConfigError> {
    let all: Vec<String> = ZERO_CONFIG_DEFAULTS
        .iter()
        .filter(|(key, _)| {
            !overrides
                .iter()
                .any(|o| o.trim_start().starts_with(&format!("{key}=")))
        })
        .map(|(key, value)| format!("{key}={value}"))
        .chain(overrides.iter().cloned())
        .collect();
    from_str("", "command line", &all)
}

/// Applies `a.b.c=value` to a TOML table. The value is read as TOML (`0.01`, `true`,
/// `[64, 32]`, `"adam"`), and as a bare string when it is not valid TOML.
pub fn apply_override(table: &mut toml::Table, assignment: &str) -> Result<(), ConfigError> {
    let err = |message: String| ConfigError::Override {
        assignment: assignment.to_string(),
        message,
    };
    let (key, raw) = assignment
        .split_once('=')
        .ok_or_else(|| err("expected KEY=VALUE, e.g. trainer.lr=0.01".into()))?;
    let key = key.trim();
    if key.is_empty() || key.split('.').any(str::is_empty) {
        return Err(err("empty key".into()));
    }
    let value: toml::Value = toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()));
    let parts: Vec<&str> = key.split('.').collect();
    let mut cursor = table;
    for part in &parts[..parts.len() - 1] {
        let entry = cursor
            .entry(part.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        cursor = entry
            .as_table_mut()
            .ok_or_else(|| err(format!("`{part}` is not a section")))?;
    }
    cursor.insert(parts[parts.len() - 1].to_string(), value);
    Ok(())
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map(|i| i + 1).unwrap_or(0) + 1;
    (line, column)
}

/// Finds the line that sets a dotted key, following `[section]` headers.
pub fn find_key_line(text: &str, key: &str) -> Option<usize> {
    let (section, leaf) = match key.rsplit_once('.') {
        Some((s, l)) => (s, l),
        None => ("", key),
    };
    let mut current = String::new();
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim();
        if trimmed.starts_with('[') {
            current = trimmed
                .trim_matches(|c| c == '[' || c == ']')
                .trim()
                .to_string();
            continue;
        }
        let Some((k, _)) = trimmed.split_once('=') else {
            continue;
        };
        let k = k.trim().trim_matches('"');
        let full = if current.is_empty() {
            k.to_string()
        } else {
            format!("{current}.{k}")
        };
        if full == key || (current == section && k == leaf) {
            return Some(i + 1);
        }
    }
    None
}

type Invalid = (String, String);

fn bad(key: &str, message: impl Into<String>) -> Invalid {
    (key.to_string(), message.into())
}

/// The key of a setting that needs every training row in memory at once, and why: what a
/// streamed run (`data.streaming`) cannot do.
pub fn needs_every_row(c: &Config) -> Option<(&'static str, &'static str)> {
    let d = &c.data;
    if d.drop_duplicates {
        return Some((
            "data.drop_duplicates",
            "finding duplicates needs every row in memory; a streamed run cannot",
        ));
    }
    if matches!(
        d.split.method,
        Some(SplitMethod::Stratified | SplitMethod::Kfold)
    ) {
        return Some((
            "data.split.method",
            "a streamed run splits row by row: use \"random\" or \"column\"",
        ));
    }
    if c.trainer.batch_size == BatchSize::Full {
        return Some((
            "trainer.batch_size",
            "a full batch holds every row in memory; give a number of rows",
        ));
    }
    if c.trainer.class_weights == ClassWeights::Balanced {
        return Some((
            "trainer.class_weights",
            "balanced weights count every training row's class first; not yet for a streamed run",
        ));
    }
    if c.distill.teacher.is_some() {
        return Some((
            "distill.teacher",
            "distillation keeps the teacher's outputs for every training row in memory",
        ));
    }
    None
}

/// Checks ranges and cross-field consistency. Returns the offending dotted key.
pub fn validate(c: &Config) -> Result<(), Invalid> {
    c.device_request()
        .map_err(|message| bad("device", message))?;
    let d = &c.data;
    if d.source.trim().is_empty() {
        return Err(bad(
            "data.source",
            "required: builtin:NAME, a CSV file or an IDX directory",
        ));
    }
    let s = &d.split;
    for (key, v) in [
        ("data.split.validation", s.validation),
        ("data.split.test", s.test),
    ] {
        if !(0.0..1.0).contains(&v) || !v.is_finite() {
            return Err(bad(key, format!("expected a fraction in [0, 1), got {v}")));
        }
    }
    if s.validation + s.test >= 1.0 {
        return Err(bad(
            "data.split.test",
            "validation + test must leave rows for training",
        ));
    }
    if s.method == Some(SplitMethod::Column) && s.column.is_none() {
        return Err(bad(
            "data.split.column",
            "required when split.method = \"column\"",
        ));
    }
    if s.method == Some(SplitMethod::Kfold) {
        if s.folds < 2 {
            return Err(bad(
                "data.split.folds",
                format!("expected at least 2, got {}", s.folds),
            ));
        }
        if s.fold >= s.folds {
            return Err(bad(
                "data.split.fold",
                format!("expected 0..{}, got {}", s.folds, s.fold),
            ));
        }
    }
    if let Some(size) = d.image.size
        && size.iter().any(|&n| n == 0 || n > 8192)
    {
        return Err(bad(
            "data.image.size",
            format!("expected [height, width], each 1 to 8192, got {size:?}"),
        ));
    }
    let a = &d.augment;
    if !(0.0..=180.0).contains(&a.rotate_degrees) {
        return Err(bad(
            "data.augment.rotate_degrees",
            format!("expected 0 to 180 degrees, got {}", a.rotate_degrees),
        ));
    }
    for (key, v) in [
        ("data.augment.brightness", a.brightness),
        ("data.augment.contrast", a.contrast),
        ("data.augment.saturation", a.saturation),
    ] {
        if !(0.0..1.0).contains(&v) {
            return Err(bad(key, format!("expected a fraction in [0, 1), got {v}")));
        }
    }
    if a.crop_padding > 1024 {
        return Err(bad(
            "data.augment.crop_padding",
            format!("expected at most 1024 pixels, got {}", a.crop_padding),
        ));
    }
    if d.shuffle_buffer == 0 {
        return Err(bad(
            "data.shuffle_buffer",
            "expected at least 1 row, got 0".to_string(),
        ));
    }
    if d.streaming == Streaming::On
        && let Some((key, why)) = needs_every_row(c)
    {
        return Err(bad(key, format!("{why} (data.streaming = true)")));
    }
    if let Some(delim) = d.delimiter
        && (delim == '"' || delim == '\n' || !delim.is_ascii())
    {
        return Err(bad(
            "data.delimiter",
            format!("{delim:?} cannot be a delimiter"),
        ));
    }
    let mut seen = std::collections::HashSet::new();
    for (i, f) in c.features.iter().enumerate() {
        let key = format!("features[{i}]");
        if !seen.insert(f.name.as_str()) {
            return Err(bad(&key, format!("column \"{}\" is listed twice", f.name)));
        }
        if f.missing == Some(MissingStrategy::Constant) && f.fill_value.is_none() {
            return Err(bad(&key, "missing = \"constant\" needs fill_value"));
        }
        if f.embedding_dim == Some(0) {
            return Err(bad(&key, "embedding_dim must be at least 1"));
        }
    }
    let m = &c.model;
    if m.hidden.contains(&0) {
        return Err(bad("model.hidden", "layer widths must be at least 1"));
    }
    if !(0.0..1.0).contains(&m.dropout) {
        return Err(bad(
            "model.dropout",
            format!("expected a probability in [0, 1), got {}", m.dropout),
        ));
    }
    if m.kind == ModelKind::Cnn && m.conv.is_empty() {
        return Err(bad("model.conv", "a CNN needs at least one conv layer"));
    }
    for (i, layer) in m.conv.iter().enumerate() {
        let key = format!("model.conv[{i}]");
        if layer.filters == 0 || layer.kernel == 0 || layer.stride == 0 {
            return Err(bad(&key, "filters, kernel and stride must be at least 1"));
        }
        if !(0.0..1.0).contains(&layer.dropout) {
            return Err(bad(
                &key,
                format!("dropout must be in [0, 1), got {}", layer.dropout),
            ));
        }
    }
    if matches!(m.kind, ModelKind::Gpt | ModelKind::Transformer) {
        if m.layers == 0 || m.heads == 0 || m.embd == 0 || m.context < 2 {
            return Err(bad(
                "model",
                "a transformer needs layers, heads, embd >= 1 and context >= 2",
            ));
        }
        if !m.embd.is_multiple_of(m.heads) {
            return Err(bad(
                "model.heads",
                format!("embd ({}) must be divisible by heads ({})", m.embd, m.heads),
            ));
        }
    }
    if matches!(m.kind, ModelKind::Gpt | ModelKind::Transformer)
        && c.text.tokenizer == "bpe"
        && c.text.vocab_size < 257
    {
        return Err(bad(
            "text.vocab_size",
            format!("BPE needs at least 257 tokens, got {}", c.text.vocab_size),
        ));
    }
    if m.kind == ModelKind::Gpt {
        if c.trainer.max_steps == 0 {
            return Err(bad("trainer.max_steps", "expected at least 1"));
        }
        if c.trainer.eval_every_steps == 0 || c.trainer.eval_batches == 0 {
            return Err(bad(
                "trainer.eval_every_steps",
                "eval_every_steps and eval_batches must be at least 1",
            ));
        }
        if !(c.text.val_fraction > 0.0 && c.text.val_fraction < 0.5) {
            return Err(bad(
                "text.val_fraction",
                format!(
                    "expected a fraction in (0, 0.5), got {}",
                    c.text.val_fraction
                ),
            ));
        }
    }
    validate_windows(c)?;
    validate_pretrained(c)?;
    let t = &c.trainer;
    if t.epochs == 0 {
        return Err(bad("trainer.epochs", "expected at least 1"));
    }
    let positive = [("trainer.lr", t.lr), ("trainer.eps", t.eps)];
    for (key, v) in positive {
        if !(v > 0.0 && v.is_finite()) {
            return Err(bad(key, format!("expected a positive number, got {v}")));
        }
    }
    let unit = [
        ("trainer.momentum", t.momentum),
        ("trainer.beta1", t.beta1),
        ("trainer.beta2", t.beta2),
        ("trainer.alpha", t.alpha),
    ];
    for (key, v) in unit {
        if !(0.0..1.0).contains(&v) {
            return Err(bad(key, format!("expected a value in [0, 1), got {v}")));
        }
    }
    if !(t.weight_decay >= 0.0 && t.weight_decay.is_finite()) {
        return Err(bad(
            "trainer.weight_decay",
            format!("expected >= 0, got {}", t.weight_decay),
        ));
    }
    if !(t.bucket_mb > 0.0 && t.bucket_mb <= 4096.0) {
        return Err(bad(
            "trainer.bucket_mb",
            format!("expected megabytes in (0, 4096], got {}", t.bucket_mb),
        ));
    }
    if !(t.grad_clip_norm >= 0.0 && t.grad_clip_norm.is_finite()) {
        return Err(bad(
            "trainer.grad_clip_norm",
            format!("expected >= 0 (0 = off), got {}", t.grad_clip_norm),
        ));
    }
    if !(t.gamma > 0.0 && t.gamma <= 1.0) {
        return Err(bad(
            "trainer.gamma",
            format!("expected a factor in (0, 1], got {}", t.gamma),
        ));
    }
    if !(t.plateau_factor > 0.0 && t.plateau_factor < 1.0) {
        return Err(bad(
            "trainer.plateau_factor",
            format!("expected a factor in (0, 1), got {}", t.plateau_factor),
        ));
    }
    if !(t.min_lr >= 0.0 && t.min_lr <= t.lr) {
        return Err(bad(
            "trainer.min_lr",
            format!("expected 0 <= min_lr <= lr, got {}", t.min_lr),
        ));
    }
    if t.nesterov && (t.optimizer != OptimizerKind::Sgd || t.momentum == 0.0) {
        return Err(bad(
            "trainer.nesterov",
            "Nesterov needs optimizer = \"sgd\" and momentum > 0",
        ));
    }
    if t.grad_accum_steps == 0 {
        return Err(bad("trainer.grad_accum_steps", "expected at least 1"));
    }
    if t.step_epochs == 0 {
        return Err(bad("trainer.step_epochs", "expected at least 1"));
    }
    if t.log_every_steps == 0 {
        return Err(bad("trainer.log_every_steps", "expected at least 1"));
    }
    const MONITORS: [&str; 10] = [
        "loss",
        "accuracy",
        "f1_macro",
        "f1",
        "precision",
        "recall",
        "roc_auc",
        "rmse",
        "mae",
        "r2",
    ];
    if !MONITORS.contains(&t.monitor.as_str()) {
        return Err(bad(
            "trainer.monitor",
            format!(
                "unknown metric \"{}\", expected one of {MONITORS:?}",
                t.monitor
            ),
        ));
    }
    if c.output.dir.trim().is_empty() {
        return Err(bad("output.dir", "must not be empty"));
    }
    Ok(())
}

/// Most windows a text may be read in.
pub const MAX_TEXT_WINDOWS: usize = 64;

fn validate_windows(c: &Config) -> Result<(), Invalid> {
    let t = &c.text;
    if !(1..=MAX_TEXT_WINDOWS).contains(&t.windows) {
        return Err(bad(
            "text.windows",
            format!(
                "expected 1 to {MAX_TEXT_WINDOWS} windows per text, got {}",
                t.windows
            ),
        ));
    }
    if t.windows > 1 && c.model.kind != ModelKind::Transformer {
        return Err(bad(
            "text.windows",
            format!(
                "model.type = \"{}\" does not read text in windows; windows are for text classifiers (model.type = \"transformer\")",
                format!("{:?}", c.model.kind).to_lowercase()
            ),
        ));
    }
    if t.window_overlap > 0 && t.windows == 1 {
        return Err(bad(
            "text.window_overlap",
            "one window has nothing to overlap: set text.windows above 1",
        ));
    }
    if t.window_overlap > 0 && t.window_overlap >= c.model.context / 2 {
        return Err(bad(
            "text.window_overlap",
            format!(
                "{} tokens of overlap leave each window little new text: expected less than half of model.context ({})",
                t.window_overlap, c.model.context
            ),
        ));
    }
    Ok(())
}

/// The keys of pretrained fine-tuning, LoRA and distillation.
fn validate_pretrained(c: &Config) -> Result<(), Invalid> {
    let m = &c.model;
    if m.pretrained.is_some() && m.kind != ModelKind::Transformer {
        return Err(bad(
            "model.pretrained",
            format!(
                "a pretrained encoder needs model.type = \"transformer\", not \"{}\"",
                format!("{:?}", m.kind).to_lowercase()
            ),
        ));
    }
    if m.causal.is_some() && m.kind != ModelKind::Transformer {
        return Err(bad(
            "model.causal",
            "applies to text encoders (model.type = \"transformer\"); a GPT language model is always causal",
        ));
    }
    if m.causal == Some(true) && m.pooling == Pooling::Cls {
        return Err(bad(
            "model.pooling",
            "\"cls\" pools the first token, which under causal attention has seen only itself: \
             use mean, max or mean_max",
        ));
    }
    if m.pretrained.is_none() {
        if m.freeze != Freeze::None {
            return Err(bad("model.freeze", "needs model.pretrained"));
        }
        if c.lora.rank > 0 {
            return Err(bad("lora.rank", "LoRA needs model.pretrained"));
        }
        if c.trainer.layer_lr_decay != 1.0 || c.trainer.head_lr.is_some() {
            return Err(bad(
                "trainer.layer_lr_decay",
                "layer_lr_decay and head_lr need model.pretrained",
            ));
        }
    }
    let t = &c.trainer;
    if !(t.layer_lr_decay > 0.0 && t.layer_lr_decay <= 1.0) {
        return Err(bad(
            "trainer.layer_lr_decay",
            format!("expected a factor in (0, 1], got {}", t.layer_lr_decay),
        ));
    }
    if let Some(lr) = t.head_lr
        && !(lr > 0.0 && lr.is_finite())
    {
        return Err(bad(
            "trainer.head_lr",
            format!("expected a positive number, got {lr}"),
        ));
    }
    let l = &c.lora;
    if l.rank > 0 {
        if m.freeze != Freeze::None {
            return Err(bad(
                "model.freeze",
                "LoRA freezes the encoder already; leave model.freeze unset",
            ));
        }
        if !(l.alpha > 0.0 && l.alpha.is_finite()) {
            return Err(bad(
                "lora.alpha",
                format!("expected a positive number, got {}", l.alpha),
            ));
        }
        if !(0.0..1.0).contains(&l.dropout) {
            return Err(bad(
                "lora.dropout",
                format!("expected a probability in [0, 1), got {}", l.dropout),
            ));
        }
        if l.targets.is_empty() {
            return Err(bad(
                "lora.targets",
                format!("expected some of {LORA_TARGETS:?}"),
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for target in &l.targets {
            if !LORA_TARGETS.contains(&target.as_str()) {
                return Err(bad(
                    "lora.targets",
                    format!(
                        "no module \"{target}\" in a BERT layer; expected some of {LORA_TARGETS:?}"
                    ),
                ));
            }
            if !seen.insert(target) {
                return Err(bad("lora.targets", format!("\"{target}\" is listed twice")));
            }
        }
    }
    let d = &c.distill;
    if let Some(teachers) = &d.teacher {
        let dirs = teachers.dirs();
        if dirs.is_empty() {
            return Err(bad(
                "distill.teacher",
                "the list of teacher runs is empty; give one run directory or several",
            ));
        }
        let same = |a: &str, b: &str| {
            let parts = |p| {
                Path::new(p)
                    .components()
                    .filter(|c| *c != std::path::Component::CurDir)
            };
            parts(a).eq(parts(b))
        };
        if let Some(dir) = dirs
            .iter()
            .enumerate()
            .find_map(|(i, dir)| dirs[..i].iter().any(|d| same(d, dir)).then_some(dir))
        {
            return Err(bad("distill.teacher", format!("\"{dir}\" is listed twice")));
        }
        if m.kind == ModelKind::Gpt {
            return Err(bad(
                "distill.teacher",
                "distillation trains classifiers, not GPTs",
            ));
        }
        if !(d.temperature > 0.0 && d.temperature.is_finite()) {
            return Err(bad(
                "distill.temperature",
                format!("expected a positive number, got {}", d.temperature),
            ));
        }
        if !(0.0..=1.0).contains(&d.alpha) {
            return Err(bad(
                "distill.alpha",
                format!("expected a weight in [0, 1], got {}", d.alpha),
            ));
        }
        if !d.cache && !c.data.augment.enabled() {
            return Err(bad(
                "distill.cache",
                "false runs the teacher on each augmented batch; without data.augment the cached logits are the same, so leave it true",
            ));
        }
    }
    Ok(())
}

/// Whether a higher value of the monitored metric is better.
pub fn monitor_higher_is_better(metric: &str) -> bool {
    matches!(
        metric,
        "accuracy" | "f1_macro" | "f1" | "precision" | "recall" | "roc_auc" | "r2"
    )
}
