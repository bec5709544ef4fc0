//! Pretrained encoders in the Hugging Face folder layout: `config.json` (the architecture),
//! `model.safetensors` (the weights, by their original names), `tokenizer.json`, and where
//! present sentence-transformers' files (`sentence_bert_config.json` for the sequence length,
//! `1_Pooling/config.json` and `modules.json` for how sentence embeddings are pooled and
//! normalised). Everything is checked before a tensor is built: the architecture, every
//! tensor's presence, dtype, shape and finiteness, and the tokenizer's vocabulary against the
//! embedding.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use burn::prelude::{Device, Int, Tensor, TensorData};
use kiln_models::bert::{self, Bert};
use kiln_models::{BertConfig, Gpt2Config, SpecError};
use kiln_text::{TextError, TextTokenizer};
use safetensors::tensor::{Dtype, SafeTensors};

/// The architecture file of a Hugging Face folder.
pub const CONFIG_FILE: &str = "config.json";
/// The weights file of a Hugging Face folder.
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// The tokenizer file of a Hugging Face folder.
pub const TOKENIZER_FILE: &str = "tokenizer.json";

/// Why a pretrained folder does not load.
#[derive(Debug, thiserror::Error)]
pub enum PretrainedError {
    /// A required file is missing.
    #[error(
        "{}: not a Hugging Face model folder: {file} is missing (kiln reads {CONFIG_FILE}, {WEIGHTS_FILE} and {TOKENIZER_FILE})",
        dir.display()
    )]
    MissingFile {
        /// The folder.
        dir: PathBuf,
        /// The missing file.
        file: &'static str,
    },
    /// A file cannot be read.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A JSON file is malformed or lacks a field.
    #[error("{}: {source}", path.display())]
    Json {
        /// The file.
        path: PathBuf,
        /// The parse error (line and column included).
        source: serde_json::Error,
    },
    /// `config.json` describes a model kiln does not build.
    #[error("{}: {source}", path.display())]
    Architecture {
        /// `config.json`.
        path: PathBuf,
        /// The field at fault.
        source: SpecError,
    },
    /// The weights file is not safetensors.
    #[error("{}: not a valid safetensors file: {source}", path.display())]
    NotSafetensors {
        /// The file.
        path: PathBuf,
        /// The parse error.
        source: safetensors::SafeTensorError,
    },
    /// A tensor the architecture needs is missing or unusable.
    #[error("{}: tensor \"{name}\" {problem}", path.display())]
    Tensor {
        /// The weights file.
        path: PathBuf,
        /// The tensor's name.
        name: String,
        /// What is wrong with it.
        problem: TensorProblem,
    },
    /// The tokenizer does not load.
    #[error("{}: {source}", path.display())]
    Tokenizer {
        /// `tokenizer.json`.
        path: PathBuf,
        /// Why.
        source: TextError,
    },
    /// The tokenizer produces ids the embedding has no rows for.
    #[error(
        "{}: the tokenizer has {tokenizer} tokens but {CONFIG_FILE}'s word embedding has {embedding} rows",
        dir.display()
    )]
    VocabularyMismatch {
        /// The folder.
        dir: PathBuf,
        /// Tokens of the tokenizer.
        tokenizer: usize,
        /// Rows of the word embedding.
        embedding: usize,
    },
    /// A sentence-transformers setting kiln does not implement.
    #[error("{}: {message}", path.display())]
    Unsupported {
        /// The file.
        path: PathBuf,
        /// What and what is supported.
        message: String,
    },
}

/// What is wrong with one checkpoint tensor.
#[derive(Debug, thiserror::Error)]
pub enum TensorProblem {
    /// The file does not have it.
    #[error("is missing")]
    Missing,
    /// It has another shape.
    #[error("has shape {found:?}, expected {expected:?}")]
    Shape {
        /// The shape the architecture needs.
        expected: Vec<usize>,
        /// The file's.
        found: Vec<usize>,
    },
    /// Its values are not floats kiln reads.
    #[error("has dtype {found}; kiln reads F32, F16 and BF16 weights")]
    Dtype {
        /// The file's dtype.
        found: String,
    },
    /// It holds NaN or an infinity.
    #[error("holds {value} at index {index}; weights must be finite")]
    NonFinite {
        /// The first bad element.
        index: usize,
        /// Its value.
        value: f32,
    },
}

/// How token states become one sentence vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SentencePooling {
    /// The mean over real tokens (sentence-transformers' default).
    Mean,
    /// The first token's (`[CLS]`) state.
    Cls,
}

/// A pretrained BERT encoder with its tokenizer and sentence-embedding settings.
#[derive(Debug)]
pub struct PretrainedEncoder {
    /// The encoder.
    pub model: Bert,
    /// `tokenizer.json`, with the model's special tokens and truncation.
    pub tokenizer: TextTokenizer,
    /// `config.json`.
    pub config: BertConfig,
    /// Tokens per text at most, special tokens included.
    pub max_tokens: usize,
    /// The padding token.
    pub pad_id: u32,
    /// Sentence pooling.
    pub pooling: SentencePooling,
    /// Whether sentence vectors are scaled to unit length.
    pub normalize: bool,
    /// The folder it came from.
    pub dir: PathBuf,
}

/// Sentence embeddings of a list of texts.
#[derive(Debug, Clone)]
pub struct Embeddings {
    /// `[texts, width]` row-major, in the texts' order.
    pub values: Vec<f32>,
    /// Values per embedding.
    pub width: usize,
    /// Texts cut to the model's `max_tokens`.
    pub truncated: usize,
}

/// Why texts could not be embedded.
#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    /// Tokenizing failed.
    #[error(transparent)]
    Text(#[from] TextError),
    /// A text's embedding holds NaN or an infinity (never returned as a value).
    #[error("text {index}: its embedding is not finite")]
    NonFinite {
        /// The text's position in the input.
        index: usize,
    },
}

/// A batch of tokenised texts, padded to its longest row.
#[derive(Debug, Clone)]
pub struct TokenBatch {
    /// `[rows * len]` token ids, row-major.
    pub ids: Vec<i64>,
    /// `[rows * len]`, true at padding.
    pub padding: Arc<[bool]>,
    /// Rows.
    pub rows: usize,
    /// Tokens per row.
    pub len: usize,
}

fn read(path: &Path) -> Result<Vec<u8>, PretrainedError> {
    std::fs::read(path).map_err(|source| PretrainedError::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, PretrainedError> {
    parse_json(path, &read(path)?)
}

fn parse_json<T: serde::de::DeserializeOwned>(
    path: &Path,
    bytes: &[u8],
) -> Result<T, PretrainedError> {
    serde_json::from_slice(bytes).map_err(|source| PretrainedError::Json {
        path: path.to_path_buf(),
        source,
    })
}

/// The `model_type` of `dir`'s `config.json`, checked to be one kiln loads
/// ([`kiln_models::PRETRAINED_MODEL_TYPES`]).
pub fn model_type(dir: &Path) -> Result<String, PretrainedError> {
    let path = require(dir, CONFIG_FILE)?;
    // The architecture first, so a T5 folder is named as such rather than reported as a
    // config missing fields.
    #[derive(serde::Deserialize)]
    struct Kind {
        model_type: Option<String>,
    }
    let kind: Kind = parse_json(&path, &read(&path)?)?;
    let model_type = kind.model_type.unwrap_or_default();
    kiln_models::check_model_type(&model_type)
        .map_err(|source| PretrainedError::Architecture { path, source })?;
    Ok(model_type)
}

/// Reads `config.json` of `dir` and checks the architecture is one kiln builds.
pub fn read_config(dir: &Path) -> Result<BertConfig, PretrainedError> {
    model_type(dir)?;
    let path = require(dir, CONFIG_FILE)?;
    let config: BertConfig = parse_json(&path, &read(&path)?)?;
    config
        .validate()
        .map_err(|source| PretrainedError::Architecture { path, source })?;
    Ok(config)
}

/// Reads the GPT-2 `config.json` of `dir` (a kiln GPT exported with `--format
/// safetensors`) and checks kiln's text encoder reproduces it; its weights and tokenizer
/// files must exist.
pub fn read_gpt2_config(dir: &Path) -> Result<Gpt2Config, PretrainedError> {
    let path = require(dir, CONFIG_FILE)?;
    let config: Gpt2Config = parse_json(&path, &read(&path)?)?;
    config
        .validate()
        .map_err(|source| PretrainedError::Architecture { path, source })?;
    require(dir, WEIGHTS_FILE)?;
    require(dir, TOKENIZER_FILE)?;
    Ok(config)
}

/// The GPT-2 weights of `dir` under the names of a network's text encoder of shape `spec`
/// (`text.wte.weight`, `text.blocks.{i}.attn.qkv.weight`, ...), as safetensors bytes to load
/// into the network: token row 0 is padding (zeros), token `t` is the GPT's row `t - 1`;
/// the first `spec.max_tokens` positions are kept. Every tensor is checked for shape and
/// finiteness.
pub fn gpt2_encoder_weights(
    dir: &Path,
    cfg: &Gpt2Config,
    spec: &kiln_models::TextEncoderSpec,
) -> Result<Vec<u8>, PretrainedError> {
    let path = require(dir, WEIGHTS_FILE)?;
    let bytes = read(&path)?;
    let tensors =
        SafeTensors::deserialize(&bytes).map_err(|source| PretrainedError::NotSafetensors {
            path: path.clone(),
            source,
        })?;
    let e = cfg.n_embd;
    let get = |name: &str, shape: &[usize]| tensor_values(&tensors, &path, name, shape);
    let mut out: Vec<(String, Vec<usize>, Vec<f32>)> = Vec::new();
    let tokens = spec.vocab_size - 1;
    if tokens > cfg.vocab_size {
        return Err(PretrainedError::VocabularyMismatch {
            dir: dir.to_path_buf(),
            tokenizer: tokens,
            embedding: cfg.vocab_size,
        });
    }
    let wte = get("transformer.wte.weight", &[cfg.vocab_size, e])?;
    let mut table = vec![0.0f32; e];
    table.extend_from_slice(&wte[..tokens * e]);
    out.push(("text.wte.weight".into(), vec![tokens + 1, e], table));
    let wpe = get("transformer.wpe.weight", &[cfg.n_positions, e])?;
    out.push((
        "text.wpe.weight".into(),
        vec![spec.max_tokens, e],
        wpe[..spec.max_tokens * e].to_vec(),
    ));
    let norm = |out: &mut Vec<_>, from: &str, to: &str| -> Result<(), PretrainedError> {
        out.push((
            format!("{to}.gamma"),
            vec![e],
            get(&format!("{from}.weight"), &[e])?,
        ));
        out.push((
            format!("{to}.beta"),
            vec![e],
            get(&format!("{from}.bias"), &[e])?,
        ));
        Ok(())
    };
    for i in 0..cfg.n_layer {
        let (h, k) = (format!("transformer.h.{i}"), format!("text.blocks.{i}"));
        norm(&mut out, &format!("{h}.ln_1"), &format!("{k}.ln1"))?;
        norm(&mut out, &format!("{h}.ln_2"), &format!("{k}.ln2"))?;
        for (from, to, input, output) in [
            ("attn.c_attn", "attn.qkv", e, 3 * e),
            ("attn.c_proj", "attn.proj", e, e),
            ("mlp.c_fc", "mlp.fc", e, 4 * e),
            ("mlp.c_proj", "mlp.proj", 4 * e, e),
        ] {
            // GPT-2's Conv1D weights are [in, out], as Burn's Linear.
            out.push((
                format!("{k}.{to}.weight"),
                vec![input, output],
                get(&format!("{h}.{from}.weight"), &[input, output])?,
            ));
            out.push((
                format!("{k}.{to}.bias"),
                vec![output],
                get(&format!("{h}.{from}.bias"), &[output])?,
            ));
        }
    }
    norm(&mut out, "transformer.ln_f", "text.ln_f")?;
    let raw: Vec<Vec<u8>> = out
        .iter()
        .map(|(_, _, v)| v.iter().flat_map(|x| x.to_le_bytes()).collect())
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = out
        .iter()
        .zip(&raw)
        .map(|((name, shape, _), b)| {
            let view = safetensors::tensor::TensorView::new(Dtype::F32, shape.clone(), b)
                .expect("sizes match their shapes");
            (name.clone(), view)
        })
        .collect();
    Ok(safetensors::serialize(views, None).expect("f32 tensors serialise"))
}

fn require(dir: &Path, file: &'static str) -> Result<PathBuf, PretrainedError> {
    let path = dir.join(file);
    if path.is_file() {
        Ok(path)
    } else {
        Err(PretrainedError::MissingFile {
            dir: dir.to_path_buf(),
            file,
        })
    }
}

/// The values of tensor `name` of `tensors` as f32, checked to have `shape` and be finite.
fn tensor_values(
    tensors: &SafeTensors<'_>,
    path: &Path,
    name: &str,
    shape: &[usize],
) -> Result<Vec<f32>, PretrainedError> {
    let fail = |problem| PretrainedError::Tensor {
        path: path.to_path_buf(),
        name: name.to_string(),
        problem,
    };
    let view = tensors
        .tensor(name)
        .map_err(|_| fail(TensorProblem::Missing))?;
    if view.shape() != shape {
        return Err(fail(TensorProblem::Shape {
            expected: shape.to_vec(),
            found: view.shape().to_vec(),
        }));
    }
    let bytes = view.data();
    let values: Vec<f32> = match view.dtype() {
        Dtype::F32 => bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        Dtype::F16 => bytes
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        Dtype::BF16 => bytes
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        other => {
            return Err(fail(TensorProblem::Dtype {
                found: format!("{other:?}"),
            }));
        }
    };
    if let Some((index, &value)) = values.iter().enumerate().find(|(_, v)| !v.is_finite()) {
        return Err(fail(TensorProblem::NonFinite { index, value }));
    }
    Ok(values)
}

/// sentence-transformers' sequence length and pooling, where the folder has its files.
fn sentence_settings(
    dir: &Path,
    config: &BertConfig,
) -> Result<(usize, SentencePooling, bool), PretrainedError> {
    #[derive(serde::Deserialize)]
    struct SentenceConfig {
        max_seq_length: Option<usize>,
    }
    #[derive(serde::Deserialize, Default)]
    #[serde(default)]
    struct PoolingConfig {
        pooling_mode_cls_token: bool,
        pooling_mode_mean_tokens: bool,
        pooling_mode_max_tokens: bool,
        pooling_mode_mean_sqrt_len_tokens: bool,
    }
    #[derive(serde::Deserialize)]
    struct Module {
        #[serde(rename = "type")]
        kind: String,
    }
    let sentence = dir.join("sentence_bert_config.json");
    let max_tokens = if sentence.is_file() {
        read_json::<SentenceConfig>(&sentence)?.max_seq_length
    } else {
        None
    }
    .unwrap_or(config.max_position_embeddings)
    .min(config.max_position_embeddings);
    let pooling_file = dir.join("1_Pooling").join("config.json");
    let pooling = if pooling_file.is_file() {
        let p: PoolingConfig = read_json(&pooling_file)?;
        match (
            p.pooling_mode_mean_tokens,
            p.pooling_mode_cls_token,
            p.pooling_mode_max_tokens || p.pooling_mode_mean_sqrt_len_tokens,
        ) {
            (true, false, false) => SentencePooling::Mean,
            (false, true, false) => SentencePooling::Cls,
            _ => {
                return Err(PretrainedError::Unsupported {
                    path: pooling_file,
                    message: "kiln pools sentence embeddings by the mean or the [CLS] token only"
                        .into(),
                });
            }
        }
    } else {
        SentencePooling::Mean
    };
    let modules = dir.join("modules.json");
    let normalize = modules.is_file()
        && read_json::<Vec<Module>>(&modules)?
            .iter()
            .any(|m| m.kind.ends_with(".Normalize"));
    Ok((max_tokens, pooling, normalize))
}

impl PretrainedEncoder {
    /// Loads the Hugging Face folder `dir` onto `device`, checking every file first.
    pub fn load(dir: &Path, device: &Device) -> Result<Self, PretrainedError> {
        Self::open(dir, device, true)
    }

    /// The folder's architecture and tokenizer with fresh weights (BERT's initialisation),
    /// its weight file never read: the from-scratch baseline of `pretrained_weights = false`.
    pub fn architecture(dir: &Path, device: &Device) -> Result<Self, PretrainedError> {
        Self::open(dir, device, false)
    }

    fn open(dir: &Path, device: &Device, weights: bool) -> Result<Self, PretrainedError> {
        let config = read_config(dir)?;
        let weights_path = require(dir, WEIGHTS_FILE)?;
        let tokenizer_path = require(dir, TOKENIZER_FILE)?;
        let (max_tokens, pooling, normalize) = sentence_settings(dir, &config)?;
        let tokenizer =
            TextTokenizer::from_pretrained_file(&tokenizer_path, max_tokens).map_err(|source| {
                PretrainedError::Tokenizer {
                    path: tokenizer_path.clone(),
                    source,
                }
            })?;
        if tokenizer.vocab_size() > config.vocab_size {
            return Err(PretrainedError::VocabularyMismatch {
                dir: dir.to_path_buf(),
                tokenizer: tokenizer.vocab_size(),
                embedding: config.vocab_size,
            });
        }
        let pad_id = tokenizer.pad_id().unwrap_or(config.pad_token_id as u32);
        let model = if weights {
            let bytes = read(&weights_path)?;
            let tensors = SafeTensors::deserialize(&bytes).map_err(|source| {
                PretrainedError::NotSafetensors {
                    path: weights_path.clone(),
                    source,
                }
            })?;
            Bert::from_tensors(&config, device, |name, shape| {
                tensor_values(&tensors, &weights_path, name, shape)
            })?
        } else {
            Bert::new(&config, device)
        };
        Ok(Self {
            model,
            tokenizer,
            config,
            max_tokens,
            pad_id,
            pooling,
            normalize,
            dir: dir.to_path_buf(),
        })
    }

    /// The fine-tuned encoder of a run (adapters merged) with the tokenizer its training
    /// used; embeddings are pooled as the run pools them for its head, not normalised.
    pub fn from_run(run: &crate::run::LoadedRun) -> Result<Self, PretrainedError> {
        let unsupported = |message: String| PretrainedError::Unsupported {
            path: run.dir.join(crate::run::files::MODEL_SPEC),
            message,
        };
        let (Some(spec), Some(bert)) =
            (run.spec.pretrained.as_ref(), run.model.pretrained_encoder())
        else {
            return Err(unsupported(
                "a run without a pretrained encoder: kiln embed reads a pretrained folder or a run fine-tuned from one".into(),
            ));
        };
        let pooling = match spec.pooling {
            kiln_config::Pooling::Mean => SentencePooling::Mean,
            kiln_config::Pooling::Cls => SentencePooling::Cls,
            other => {
                return Err(unsupported(format!(
                    "the run pools by {other:?}; kiln embed pools by the mean or the [CLS] token"
                )));
            }
        };
        let tokenizer_error = |source| PretrainedError::Tokenizer {
            path: run.dir.join(crate::run::files::PREPROCESSOR),
            source,
        };
        let Some((json, max_tokens)) = run.preprocessor.features.iter().find_map(|f| match f {
            kiln_data::FeatureTransform::Text {
                tokenizer,
                max_tokens,
                ..
            } => Some((tokenizer, *max_tokens)),
            _ => None,
        }) else {
            return Err(unsupported("the run has no text feature".into()));
        };
        let windows = run.preprocessor.text_windows();
        if windows > 1 {
            return Err(unsupported(format!(
                "the run reads each text in {windows} windows of {max_tokens} tokens and averages them; kiln embed embeds one window per text"
            )));
        }
        let tokenizer = TextTokenizer::from_json(json)
            .and_then(|t| t.for_model(max_tokens))
            .map_err(tokenizer_error)?;
        let pad_id = tokenizer.pad_id().unwrap_or(spec.bert.pad_token_id as u32);
        Ok(Self {
            model: bert.clone().merge_lora(),
            tokenizer,
            config: spec.bert.clone(),
            max_tokens,
            pad_id,
            pooling,
            normalize: false,
            dir: run.dir.clone(),
        })
    }

    /// Token ids of `text` (special tokens, truncation) and whether it was cut.
    pub fn encode(&self, text: &str) -> Result<(Vec<u32>, bool), TextError> {
        self.tokenizer.encode_for_model(text)
    }

    /// Token id rows (as [`Self::encode`] gives them) padded to the longest of them.
    pub fn pad(&self, rows: &[&(Vec<u32>, bool)]) -> TokenBatch {
        let len = rows
            .iter()
            .map(|(ids, _)| ids.len())
            .max()
            .unwrap_or(0)
            .max(1);
        let mut ids = vec![i64::from(self.pad_id); rows.len() * len];
        let mut padding = vec![true; rows.len() * len];
        for (r, (row, _)) in rows.iter().enumerate() {
            for (j, &id) in row.iter().enumerate() {
                ids[r * len + j] = i64::from(id);
                padding[r * len + j] = false;
            }
        }
        TokenBatch {
            ids,
            padding: padding.into(),
            rows: rows.len(),
            len,
        }
    }

    /// Tokenises `texts` (special tokens, truncation) and pads them to the longest.
    pub fn tokenize(&self, texts: &[&str]) -> Result<TokenBatch, TextError> {
        let encoded = texts
            .iter()
            .map(|t| self.encode(t))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(self.pad(&encoded.iter().collect::<Vec<_>>()))
    }

    /// Sentence embeddings `[rows, C]` of a tokenised batch: pooled as the folder says, unit
    /// length when it normalises.
    pub fn embed_batch(&self, batch: &TokenBatch, device: &Device) -> Tensor<2> {
        let ids = Tensor::<2, Int>::from_data(
            TensorData::new(batch.ids.clone(), [batch.rows, batch.len]),
            device,
        );
        let hidden = self.model.forward(ids, batch.padding.clone());
        let pooled = match self.pooling {
            SentencePooling::Mean => bert::mean_pool(hidden, &batch.padding),
            SentencePooling::Cls => {
                let c = self.model.width();
                hidden.narrow(1, 0, 1).reshape([batch.rows, c])
            }
        };
        if self.normalize {
            bert::l2_normalize(pooled)
        } else {
            pooled
        }
    }

    /// Sentence embeddings of `texts` in their order, computed in batches of `batch` texts
    /// of similar token counts (longest first, as sentence-transformers does: little padding),
    /// with `progress(done, total)` after each batch. A non-finite embedding is an error
    /// naming its text.
    pub fn embed_with_progress(
        &self,
        texts: &[&str],
        batch: usize,
        device: &Device,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Embeddings, EmbedError> {
        let encoded = texts
            .iter()
            .map(|t| self.encode(t))
            .collect::<Result<Vec<_>, _>>()?;
        let mut order: Vec<usize> = (0..texts.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(encoded[i].0.len()));
        let width = self.model.width();
        let mut values = vec![0.0f32; texts.len() * width];
        let mut done = 0;
        for chunk in order.chunks(batch.max(1)) {
            kiln_models::ops::keep_workers_ready();
            let rows: Vec<&(Vec<u32>, bool)> = chunk.iter().map(|&i| &encoded[i]).collect();
            let batch_values = self
                .embed_batch(&self.pad(&rows), device)
                .into_data()
                .convert::<f32>()
                .try_into_vec::<f32>()
                .expect("f32 embeddings");
            for (&i, v) in chunk.iter().zip(batch_values.chunks_exact(width)) {
                if v.iter().any(|x| !x.is_finite()) {
                    return Err(EmbedError::NonFinite { index: i });
                }
                values[i * width..(i + 1) * width].copy_from_slice(v);
            }
            done += chunk.len();
            progress(done, texts.len());
        }
        Ok(Embeddings {
            values,
            width,
            truncated: encoded.iter().filter(|(_, cut)| *cut).count(),
        })
    }

    /// [`Self::embed_with_progress`] without progress.
    pub fn embed(
        &self,
        texts: &[&str],
        batch: usize,
        device: &Device,
    ) -> Result<Embeddings, EmbedError> {
        self.embed_with_progress(texts, batch, device, &mut |_, _| {})
    }
}
