//! Models loaded from run directories, their tensor interface (the same as the ONNX export's)
//! and the conversion of request tensors and records into model rows.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use kiln_config::ModelKind;
use kiln_data::{
    Column, Encoded, FeatureTransform, InputShape, Preprocessor, Table, TargetTransform,
};
use kiln_models::{Device, Gpt, GptConfig, ModelSpec};
use kiln_text::TextTokenizer;
use serde::Serialize;

use crate::batcher::{BatchSettings, Batcher};
use crate::error::ApiError;
use crate::metrics::Metrics;

/// A served model.
#[derive(Debug)]
pub struct ServedModel {
    /// Name in URLs.
    pub name: String,
    /// Where it was loaded from.
    pub run_dir: PathBuf,
    /// The model.
    pub body: Body,
}

/// What kind of model, with what it needs to run (one per served model: size is no concern).
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
pub enum Body {
    /// An MLP, CNN or text classifier behind a batcher.
    Network {
        /// Fitted preprocessing.
        preprocessor: Preprocessor,
        /// Columns of the training data the model leaves out (`schema.json`'s ignored ones):
        /// a request may send them, they are not misspellings.
        ignored_columns: Vec<String>,
        /// Architecture.
        spec: ModelSpec,
        /// Queue to the worker thread that owns the weights.
        batcher: Batcher,
    },
    /// A pretrained sentence encoder (a Hugging Face folder): texts in, embeddings out.
    Embedder {
        /// The encoder with its tokenizer and pooling (read-only, shared by requests).
        encoder: Arc<kiln_runtime::pretrained::PretrainedEncoder>,
        /// Device.
        device: Device,
    },
    /// A language model.
    Gpt {
        /// Weights (read-only, shared by generation tasks).
        model: Arc<Gpt>,
        /// Its tokenizer.
        tokenizer: Arc<TextTokenizer>,
        /// Shape.
        config: GptConfig,
        /// Device.
        device: Device,
    },
}

/// A tensor in model metadata: `shape` uses -1 for dynamic axes.
#[derive(Debug, Clone, Serialize)]
pub struct TensorSpec {
    /// Name.
    pub name: String,
    /// Open Inference Protocol datatype ("FP32", "INT64").
    pub datatype: &'static str,
    /// Shape.
    pub shape: Vec<i64>,
}

fn spec(name: &str, datatype: &'static str, shape: Vec<i64>) -> TensorSpec {
    TensorSpec {
        name: name.into(),
        datatype,
        shape,
    }
}

impl ServedModel {
    /// Loads the run in `dir` under `name`.
    pub fn load(
        name: &str,
        dir: &Path,
        settings: BatchSettings,
        metrics: Arc<Metrics>,
    ) -> Result<Self, kiln_runtime::RuntimeError> {
        if !dir.join("config.toml").is_file() {
            if dir.join(kiln_runtime::pretrained::CONFIG_FILE).is_file() {
                // A Hugging Face folder: served as a sentence encoder.
                let device = kiln_runtime::default_device()?;
                let encoder = kiln_runtime::pretrained::PretrainedEncoder::load(dir, &device)
                    .map_err(|e| kiln_runtime::RuntimeError::Invalid(e.to_string()))?;
                return Ok(Self {
                    name: name.to_string(),
                    run_dir: dir.to_path_buf(),
                    body: Body::Embedder {
                        encoder: Arc::new(encoder),
                        device,
                    },
                });
            }
            return Err(kiln_runtime::RuntimeError::Invalid(format!(
                "{}: not a run directory (no config.toml) nor a pretrained Hugging Face folder \
                 (no config.json); pass the directory `kiln train` printed",
                dir.display()
            )));
        }
        let config = kiln_config::load(&dir.join("config.toml"), &[])?;
        let body = if config.model.kind == ModelKind::Gpt {
            let (model, tokenizer, device) = kiln_runtime::lm::load_lm(dir)?;
            let config: GptConfig = kiln_runtime::run::read_json(&dir.join("model.json"))?;
            Body::Gpt {
                model: Arc::new(model),
                tokenizer: Arc::new(tokenizer),
                config,
                device,
            }
        } else {
            let device = kiln_runtime::device_for(&config)?;
            let run = kiln_runtime::run::load(dir, &device)?;
            let width = run.preprocessor.num_outputs();
            let ignored_columns = kiln_runtime::run::read_json::<kiln_data::Schema>(
                &dir.join(kiln_runtime::run::files::SCHEMA),
            )
            .map(|schema| schema.ignored.into_iter().map(|(name, _)| name).collect())
            .unwrap_or_default();
            Body::Network {
                ignored_columns,
                batcher: Batcher::spawn(
                    name,
                    run.model.folded_for_inference(),
                    device,
                    width,
                    settings,
                    metrics,
                ),
                preprocessor: run.preprocessor,
                spec: run.spec,
            }
        };
        Ok(Self {
            name: name.to_string(),
            run_dir: dir.to_path_buf(),
            body,
        })
    }

    /// Whether the model can answer: a network's batch worker is still running (a GPT runs
    /// each request on its own task, so it always can).
    pub fn is_ready(&self) -> bool {
        match &self.body {
            Body::Network { batcher, .. } => batcher.is_alive(),
            Body::Gpt { .. } | Body::Embedder { .. } => true,
        }
    }

    /// Model family, as in `config.toml`.
    pub fn kind(&self) -> String {
        match &self.body {
            Body::Network { spec, .. } => format!("{:?}", spec.kind).to_lowercase(),
            Body::Gpt { .. } => "gpt".into(),
            Body::Embedder { encoder, .. } => encoder.config.model_type.clone(),
        }
    }

    /// Input tensors (the ONNX export's interface).
    pub fn inputs(&self) -> Vec<TensorSpec> {
        match &self.body {
            Body::Network { spec: s, .. } => {
                let mut v = Vec::new();
                match s.input {
                    InputShape::Image {
                        channels,
                        height,
                        width,
                    } => v.push(spec(
                        "pixels",
                        "FP32",
                        vec![-1, channels as i64, height as i64, width as i64],
                    )),
                    InputShape::Flat { width } if width > 0 => {
                        v.push(spec("features", "FP32", vec![-1, width as i64]))
                    }
                    InputShape::Flat { .. } => {}
                }
                if !s.embeddings.is_empty() {
                    v.push(spec(
                        "categories",
                        "INT64",
                        vec![-1, s.embeddings.len() as i64],
                    ));
                }
                if s.text.is_some() || s.pretrained.is_some() {
                    v.push(spec("tokens", "INT64", vec![-1, -1]));
                }
                v
            }
            Body::Gpt { .. } => vec![spec("tokens", "INT64", vec![-1, -1])],
            Body::Embedder { .. } => vec![spec("text", "BYTES", vec![-1])],
        }
    }

    /// Output tensors.
    pub fn outputs(&self) -> Vec<TensorSpec> {
        match &self.body {
            Body::Network { preprocessor, .. } => match &preprocessor.target {
                TargetTransform::Classes { classes, .. } => {
                    let k = classes.len() as i64;
                    vec![
                        spec("logits", "FP32", vec![-1, k]),
                        spec("probabilities", "FP32", vec![-1, k]),
                    ]
                }
                TargetTransform::Regression { .. } => vec![spec("prediction", "FP32", vec![-1, 1])],
            },
            Body::Gpt { config, .. } => {
                vec![spec(
                    "logits",
                    "FP32",
                    vec![-1, -1, config.vocab_size as i64],
                )]
            }
            Body::Embedder { encoder, .. } => vec![spec(
                "embedding",
                "FP32",
                vec![-1, encoder.model.width() as i64],
            )],
        }
    }
}

/// Sentence embeddings of `texts` with `encoder`, off the async runtime: `rows x width`
/// values, or a 400 naming the text that cannot be embedded.
pub async fn embed_texts(
    encoder: &Arc<kiln_runtime::pretrained::PretrainedEncoder>,
    device: &Device,
    texts: Vec<String>,
    metrics: &Metrics,
    name: &str,
) -> Result<Vec<f32>, ApiError> {
    let (encoder, device) = (encoder.clone(), device.clone());
    let (queue, compute) = (
        metrics.queue_seconds.with_label_values(&[name]),
        metrics.compute_seconds.with_label_values(&[name]),
    );
    let queued = std::time::Instant::now();
    let embedded = tokio::task::spawn_blocking(move || {
        queue.observe(queued.elapsed().as_secs_f64());
        let _timing = crate::metrics::Timer::new(compute);
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        kiln_models::ops::in_thread_pool(|| encoder.embed(&refs, 64, &device))
    })
    .await
    .map_err(|_| ApiError::internal("the forward pass failed"))?
    .map_err(|e| ApiError::bad_request(e.to_string()))?;
    Ok(embedded.values)
}

/// An empty [`Encoded`] with the model's shapes.
pub fn empty_rows(pre: &Preprocessor) -> Encoded {
    Encoded {
        x: Vec::new(),
        rows: 0,
        shape: pre.input_shape(),
        categories: Vec::new(),
        tokens: Vec::new(),
        seq_len: pre
            .text_input()
            .map(|(_, t)| t * pre.text_windows())
            .unwrap_or(0),
        windows: pre.text_windows(),
        texts_truncated: 0,
        cardinalities: pre.cardinalities(),
        y: None,
        ids: None,
        source_rows: Vec::new(),
        unknown_categories: BTreeMap::new(),
        missing_filled: 0,
        missing_dropped: 0,
        missing_target_dropped: 0,
    }
}

/// A table of the records' fields under the preprocessor's feature names: strings as they
/// are, numbers and booleans as text (as a CSV would hold them), null or absent = missing.
pub fn records_table(pre: &Preprocessor, records: &[serde_json::Value]) -> Result<Table, ApiError> {
    let text_features: Vec<&str> = pre
        .features
        .iter()
        .filter(|f| matches!(f, FeatureTransform::Text { .. }))
        .map(FeatureTransform::name)
        .collect();
    let mut columns: Vec<Vec<Option<String>>> =
        vec![Vec::with_capacity(records.len()); pre.features.len()];
    for (i, record) in records.iter().enumerate() {
        let fields = match record {
            serde_json::Value::Object(map) => map.clone(),
            serde_json::Value::String(s) if pre.features.len() == 1 && text_features.len() == 1 => {
                serde_json::Map::from_iter([(
                    text_features[0].to_string(),
                    serde_json::Value::String(s.clone()),
                )])
            }
            other => {
                return Err(ApiError::bad_request(format!(
                    "instances[{i}]: expected an object of column values{}, got {}",
                    if text_features.len() == 1 && pre.features.len() == 1 {
                        " or a string"
                    } else {
                        ""
                    },
                    json_kind(other)
                )));
            }
        };
        for (c, f) in pre.features.iter().enumerate() {
            if let FeatureTransform::Image { .. } = f {
                return Err(ApiError::bad_request(
                    "image models take pixels through the v2 infer endpoint (input \"pixels\")",
                ));
            }
            let value = match fields.get(f.name()) {
                None | Some(serde_json::Value::Null) => None,
                Some(serde_json::Value::String(s)) => Some(s.clone()),
                Some(serde_json::Value::Number(n)) => Some(n.to_string()),
                Some(serde_json::Value::Bool(b)) => Some(b.to_string()),
                Some(other) => {
                    return Err(ApiError::bad_request(format!(
                        "instances[{i}].{}: expected a string, number or null, got {}",
                        f.name(),
                        json_kind(other)
                    )));
                }
            };
            columns[c].push(value);
        }
    }
    let mut names: Vec<String> = pre.features.iter().map(|f| f.name().to_string()).collect();
    if let Some(id) = &pre.id_column {
        // Optional in a request; echoed back with each prediction when given.
        names.push(id.clone());
        columns.push(
            records
                .iter()
                .map(|r| match r.get(id) {
                    Some(serde_json::Value::String(s)) => Some(s.clone()),
                    Some(serde_json::Value::Number(n)) => Some(n.to_string()),
                    _ => None,
                })
                .collect(),
        );
    }
    Ok(Table {
        origin: "request".into(),
        names,
        columns: columns.into_iter().map(Column::texts).collect(),
        lines: (1..=records.len() as u64).collect(),
        report: Default::default(),
    })
}

/// "an array", "a number", ... for messages.
pub fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// The 400 for a request row whose outputs (`width` per row) are NaN or infinite: its
/// inputs were finite but so far outside the training range that the network overflowed.
/// Such a row is refused, never answered with NaN or `null`. `row_word` is "row" (v2) or
/// "instance" (v1).
pub fn refuse_non_finite(
    values: &[f32],
    width: usize,
    encoded: &Encoded,
    preprocessor: &Preprocessor,
    row_word: &str,
) -> Result<(), ApiError> {
    match kiln_runtime::inference::non_finite_output(values, width, encoded, preprocessor) {
        None => Ok(()),
        Some(bad) => Err(ApiError::bad_request(format!(
            "{row_word} {}: {bad}",
            bad.row
        ))),
    }
}

/// Row-wise softmax of `rows x width` logits.
pub fn softmax_rows(logits: &[f32], width: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(logits.len());
    for row in logits.chunks(width) {
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let exp: Vec<f32> = row.iter().map(|v| (v - max).exp()).collect();
        let sum: f32 = exp.iter().sum();
        out.extend(exp.into_iter().map(|e| e / sum));
    }
    out
}
