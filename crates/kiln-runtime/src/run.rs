//! The run directory: what a training run leaves behind, for `eval`, `predict`, `serve` and
//! a dashboard to read.
//!
//! ```text
//! RUN/
//!   config.toml          resolved configuration (defaults and --set applied)
//!   schema.json          column roles and types as inferred
//!   preprocessor.json    fitted preprocessing (predict applies exactly this)
//!   model.json           architecture (kiln_models::ModelSpec)
//!   model.safetensors    final weights (best on validation)
//!   metrics.jsonl        one JSON object per logged step and per epoch
//!   report.json          final report on the test split (+ report.txt, plots/*.svg)
//!   checkpoints/         step-NNNNNNNN/ directories and a `latest` pointer
//! ```

use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::prelude::Device;
use kiln_config::Config;
use kiln_data::Preprocessor;
use kiln_models::{ModelSpec, Network};

use crate::RuntimeError;
use crate::fs::write_atomic;
pub use crate::fs::{read_json, write_json};
use crate::weights::model_to_bytes;

/// File names inside a run directory.
pub mod files {
    /// Resolved config.
    pub const CONFIG: &str = "config.toml";
    /// Inferred schema.
    pub const SCHEMA: &str = "schema.json";
    /// Fitted preprocessing.
    pub const PREPROCESSOR: &str = "preprocessor.json";
    /// Architecture.
    pub const MODEL_SPEC: &str = "model.json";
    /// Final weights.
    pub const WEIGHTS: &str = "model.safetensors";
    /// LoRA fine-tuning: the adapters and the head alone.
    pub const ADAPTERS: &str = "adapters.safetensors";
    /// Metrics log.
    pub const METRICS: &str = "metrics.jsonl";
    /// Final report.
    pub const REPORT_JSON: &str = "report.json";
    /// Final report, text.
    pub const REPORT_TXT: &str = "report.txt";
}

/// Files of a language-model run besides the common ones.
pub mod lm_files {
    /// Tokenizer.
    pub const TOKENIZER: &str = "tokenizer.json";
    /// Token files and their meta.json.
    pub const DATA_DIR: &str = "data";
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> RuntimeError + '_ {
    move |e| RuntimeError::Io {
        path: path.display().to_string(),
        source: e,
    }
}

/// Creates a fresh run directory `parent/name`; when that already holds a run, the first
/// free `name-2`, `name-3`, ... (as Ludwig numbers its runs), so re-running a config never
/// overwrites an earlier run.
pub fn create(parent: &Path, name: &str) -> Result<PathBuf, RuntimeError> {
    let mut dir = parent.join(name);
    let mut n = 2;
    while dir.join(files::CONFIG).exists() {
        dir = parent.join(format!("{name}-{n}"));
        n += 1;
    }
    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    Ok(dir)
}

/// Saves the resolved config.
pub fn save_config(dir: &Path, config: &Config) -> Result<(), RuntimeError> {
    let text = toml::to_string_pretty(config).map_err(|e| RuntimeError::Run(e.to_string()))?;
    write_atomic(&dir.join(files::CONFIG), text.as_bytes())
}

/// A trained model loaded from a run directory.
#[derive(Debug)]
pub struct LoadedRun {
    /// The directory.
    pub dir: PathBuf,
    /// Its config.
    pub config: Config,
    /// Its preprocessing.
    pub preprocessor: Preprocessor,
    /// Its architecture.
    pub spec: ModelSpec,
    /// Its weights, on the requested device.
    pub model: Network,
}

/// Loads config, preprocessing, architecture and final weights of a run.
pub fn load(dir: &Path, device: &Device) -> Result<LoadedRun, RuntimeError> {
    if !dir.is_dir() {
        return Err(RuntimeError::Run(format!(
            "{}: no such run directory",
            dir.display()
        )));
    }
    let config_path = dir.join(files::CONFIG);
    let config =
        kiln_config::load(&config_path, &[]).map_err(|e| RuntimeError::Run(e.to_string()))?;
    if config.model.kind == kiln_config::ModelKind::Gpt {
        return Err(RuntimeError::Run(format!(
            "{} is a language-model run: sample from it with `kiln generate`",
            dir.display()
        )));
    }
    crate::fs::remove_stale_temporaries(dir);
    let preprocessor: Preprocessor = read_json(&dir.join(files::PREPROCESSOR))?;
    let spec: ModelSpec = read_json(&dir.join(files::MODEL_SPEC))?;
    check_agreement(dir, &preprocessor, &spec)?;
    let weights_path = dir.join(files::WEIGHTS);
    let bytes = std::fs::read(&weights_path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            RuntimeError::Run(format!(
                "{}: no model.safetensors (did training finish?)",
                dir.display()
            ))
        } else {
            RuntimeError::Io {
                path: weights_path.display().to_string(),
                source: e,
            }
        }
    })?;
    let model = Network::new(&spec, device);
    let needed = model.num_params().saturating_mul(4);
    if bytes.len() < needed {
        return Err(RuntimeError::Run(format!(
            "{}: model.json describes {} parameters ({needed} bytes of f32) but model.safetensors holds {} bytes",
            dir.display(),
            model.num_params(),
            bytes.len()
        )));
    }
    let model = crate::weights::load_into(model, &bytes, &weights_path.display().to_string())?;
    Ok(LoadedRun {
        dir: dir.to_path_buf(),
        config,
        preprocessor,
        spec,
        model,
    })
}

/// Checks that `preprocessor.json` and `model.json` describe one model before any kernel
/// sees them: each file valid on its own, and the preprocessing's output (dense width or
/// image shape, embedding tables, token table and length, classes) what the network takes.
/// A mismatch would feed the network rows of the wrong width.
pub fn check_agreement(
    dir: &Path,
    preprocessor: &Preprocessor,
    spec: &ModelSpec,
) -> Result<(), RuntimeError> {
    let file = |name: &str| dir.join(name).display().to_string();
    preprocessor
        .validate()
        .map_err(|e| RuntimeError::Run(format!("{}: {e}", file(files::PREPROCESSOR))))?;
    spec.validate().map_err(|source| RuntimeError::Spec {
        file: dir.join(files::MODEL_SPEC),
        source,
    })?;
    let disagree = |what: &str, pre: String, model: String| {
        RuntimeError::Run(format!(
            "{} and {} disagree on {what}: the preprocessing gives {pre}, the model expects {model}",
            file(files::PREPROCESSOR),
            file(files::MODEL_SPEC)
        ))
    };
    if preprocessor.input_shape() != spec.input {
        return Err(disagree(
            "the input",
            format!("{:?}", preprocessor.input_shape()),
            format!("{:?}", spec.input),
        ));
    }
    if preprocessor.embedding_dims() != spec.embeddings {
        return Err(disagree(
            "the categorical embeddings (table size, width)",
            format!("{:?}", preprocessor.embedding_dims()),
            format!("{:?}", spec.embeddings),
        ));
    }
    if let Some(p) = &spec.pretrained {
        // Token ids are the tokenizer's + 1 (0 pads): the table is the embedding's rows + 1,
        // and the texts fit the position embeddings.
        let fits = preprocessor.text_input().is_some_and(|(table, tokens)| {
            table <= p.bert.vocab_size + 1 && tokens <= p.bert.max_position_embeddings
        });
        if !fits {
            return Err(disagree(
                "the text input (token table size, longest sequence)",
                format!("{:?}", preprocessor.text_input()),
                format!(
                    "at most ({}, {}) for the pretrained encoder",
                    p.bert.vocab_size + 1,
                    p.bert.max_position_embeddings
                ),
            ));
        }
    } else if preprocessor.text_input() != spec.text.as_ref().map(|t| (t.vocab_size, t.max_tokens))
    {
        let text = spec.text.as_ref().map(|t| (t.vocab_size, t.max_tokens));
        return Err(disagree(
            "the text input (token table size, longest sequence)",
            format!("{:?}", preprocessor.text_input()),
            format!("{text:?}"),
        ));
    }
    if preprocessor.num_outputs() != spec.outputs {
        return Err(disagree(
            "the outputs (classes, or 1 for regression)",
            preprocessor.num_outputs().to_string(),
            spec.outputs.to_string(),
        ));
    }
    Ok(())
}

/// Saves what LoRA fine-tuning trained, on its own: every adapter and the head (the
/// tensors outside the pretrained encoder), as `adapters.safetensors`.
pub fn save_adapters<M: burn::module::Module>(dir: &Path, model: &M) -> Result<(), RuntimeError> {
    let bytes = model_to_bytes(model)?;
    let tensors = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| RuntimeError::Run(format!("{}: {e}", dir.join(files::ADAPTERS).display())))?;
    let mut kept: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
        .tensors()
        .into_iter()
        .filter(|(name, _)| name.contains(".lora.") || !name.starts_with("bert."))
        .collect();
    kept.sort_by(|a, b| a.0.cmp(&b.0));
    let metadata =
        std::collections::HashMap::from([("format".to_string(), "kiln-adapters".to_string())]);
    let out = safetensors::serialize(kept, Some(metadata))
        .map_err(|e| RuntimeError::Run(format!("{}: {e}", dir.join(files::ADAPTERS).display())))?;
    write_atomic(&dir.join(files::ADAPTERS), &out)
}

/// Saves the final weights atomically.
pub fn save_weights<M: burn::module::Module>(dir: &Path, model: &M) -> Result<(), RuntimeError> {
    write_atomic(&dir.join(files::WEIGHTS), &model_to_bytes(model)?)
}
