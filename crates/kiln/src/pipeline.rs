//! Config to run directory, and run directory to predictions.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::prelude::Device;
use kiln_config::{Config, FeatureType, Pooling, Task};
use kiln_data::{Encoded, LoadReport, Preprocessor, Schema, Split, Table};
use kiln_models::{ModelSpec, PretrainedEncoderSpec};
use kiln_runtime::inference::{Predictions, non_finite_output, predict};
use kiln_runtime::pretrained::PretrainedEncoder;
use kiln_runtime::run::{self, files};
use kiln_train::checkpoint::LoadedCheckpoint;
use kiln_train::evaluate::{Evaluation, predict_sharded, score};
use kiln_train::{DataParallel, Observer, TrainOutcome, TrainSetup, World};
use serde::Serialize;

use crate::distributed::{
    Scratch, check_batch_splits, check_model_and_data, check_program, checkpoint_facts,
};
use crate::predictions::{Prediction, PredictionsFormat, PredictionsWriter};
use crate::resume::Resume;
use crate::{KilnError, Result};

/// The compute device a config asks for.
pub fn device_for(config: &Config) -> Result<Device> {
    Ok(kiln_runtime::device_for(config)?)
}

/// The device a training run computes on, named in `run_info` for the report. One GPU per
/// process is all there is so far: several ranks would share the first one.
pub(crate) fn training_device(
    config: &Config,
    world: &World,
    run_info: &mut crate::RunInfo,
) -> Result<Device> {
    let opened = kiln_runtime::open_device(config)?;
    if world.size() > 1 && opened.is_gpu {
        return Err(KilnError::Invalid(format!(
            "data-parallel training on GPUs is not built yet: every rank would open the same \
             GPU ({}); train across processes on the CPU (--device cpu), or on the GPU in one \
             process",
            opened.description
        )));
    }
    kiln_train::precision::check_precision(
        config.trainer.precision,
        &opened.device,
        &opened.description,
    )?;
    run_info.machine.device = opened.description;
    run_info.precision = crate::PrecisionUsed::new(config.trainer.precision, None);
    Ok(opened.device)
}

/// Loads any data source kiln reads (CSV, JSON Lines, Parquet, Arrow, IDX prefix,
/// `builtin:NAME`), honouring the config's format, delimiter and bad-row policy.
/// A CSV keeps the columns the config declares categorical or text as written, whatever they hold.
pub fn load_table(spec: &str, config: &Config) -> Result<Table> {
    load_table_with_text(spec, config, &[])
}

/// The config's data settings, with images read at the size and channels `pre` was fitted
/// on (a folder of other images is resized and converted the same way).
fn data_for_model(config: &Config, pre: &Preprocessor) -> kiln_config::DataConfig {
    let mut data = config.data.clone();
    if let Some(image) = pre.image_input() {
        data.image.size = Some([image.height, image.width]);
        data.image.channels = match image.channels {
            3 => kiln_config::ImageChannels::Rgb,
            _ => kiln_config::ImageChannels::Grey,
        };
    }
    data
}

/// [`load_table`], keeping `text_columns` as written too.
fn load_table_with_text(spec: &str, config: &Config, text_columns: &[String]) -> Result<Table> {
    let text_columns: Vec<String> = config
        .features
        .iter()
        .filter(|f| matches!(f.kind, Some(FeatureType::Categorical | FeatureType::Text)))
        .map(|f| f.name.clone())
        .chain(text_columns.iter().cloned())
        .collect();
    kiln_data::load_source_columns(spec, &config.data, None, &text_columns)
        .map_err(|e| with_setup_hint(spec, e.into()))
}

/// A trained model's input, a chunk of rows at a time where the format allows (CSV; see
/// `kiln_data::TableChunks`): a Parquet or Arrow source decodes only the columns `pre`
/// reads, its id column and the target (when the file has them); a CSV keeps the columns
/// `pre` matches as text as written; images are read at the size and channels `pre` was
/// fitted on.
fn model_input_chunks(
    spec: &str,
    config: &Config,
    pre: &kiln_data::Preprocessor,
) -> Result<kiln_data::TableChunks> {
    // New images to label: a folder of them, without class folders.
    let path = Path::new(spec);
    if pre.image_input().is_some() && path.is_dir() && kiln_data::is_flat_image_folder(path) {
        let table = kiln_data::read_image_files(path, &data_for_model(config, pre))?;
        return Ok(kiln_data::TableChunks::Whole(Some(table)));
    }
    let text_columns = pre.text_columns();
    let columns: Vec<String> = pre
        .features
        .iter()
        .map(|f| f.name().to_string())
        .chain(text_columns.iter().cloned())
        .collect();
    kiln_data::source_chunks(
        spec,
        &data_for_model(config, pre),
        Some(&columns),
        &text_columns,
    )
    .map_err(|e| with_setup_hint(spec, e.into()))
}

/// The script that provides an example's data, for a path the examples use.
fn setup_script(path: &str) -> Option<&'static str> {
    if path.contains("/usr/share/datasets/fashion-mnist") {
        return Some("scripts/setup-data.sh installs it (apt-get install dataset-fashion-mnist)");
    }
    if path.contains("data/pretrained/") {
        return Some("scripts/setup-pretrained.sh installs it");
    }
    [
        "data/peoples_daily.txt",
        "data/sentiment.csv",
        "data/spam.csv",
    ]
    .iter()
    .any(|f| path.ends_with(f))
    .then_some("scripts/setup-text-data.sh makes it")
}

/// `error`, with the setup script that provides `path` when it is missing example data.
pub(crate) fn with_setup_hint(path: &str, error: KilnError) -> KilnError {
    match setup_script(path) {
        Some(script) if !Path::new(path).exists() => {
            KilnError::Invalid(format!("{error} (example data not installed: {script})"))
        }
        _ => error,
    }
}

/// `trainer.monitor` must name a validation metric of the task (checked before a run
/// directory exists, not at the end of the first epoch).
fn check_monitor(config: &Config, preprocessor: &Preprocessor) -> Result<()> {
    let monitor = config.trainer.monitor.as_str();
    let classes = preprocessor.classes().map_or(0, <[String]>::len);
    let defined = kiln_train::evaluate::metric_names(preprocessor.task, classes);
    if defined.contains(&monitor) {
        return Ok(());
    }
    Err(KilnError::Invalid(format!(
        "trainer.monitor = \"{monitor}\" is not defined for this {} task; use one of {}",
        format!("{:?}", preprocessor.task).to_lowercase(),
        defined.join(", ")
    )))
}

/// A new run's directory until the run finishes: if the run fails, the directory is removed,
/// or, when it holds a checkpoint, kept with a `FAILED` note saying how to resume it.
pub(crate) struct Unfinished(Option<PathBuf>);

impl Unfinished {
    pub(crate) fn new(dir: PathBuf) -> Self {
        Unfinished(Some(dir))
    }

    /// The run finished: keep its directory as it is.
    pub(crate) fn finished(mut self) {
        self.0 = None;
    }
}

impl Drop for Unfinished {
    fn drop(&mut self) {
        let Some(dir) = self.0.take() else {
            return;
        };
        if dir.join("checkpoints").join("latest").exists() {
            let note = format!(
                "This run stopped with an error before it finished (the command printed it).\n\
                 `kiln train --resume {}` continues from its last checkpoint.\n",
                dir.display()
            );
            let _ = std::fs::write(dir.join("FAILED"), note);
        } else {
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
}

/// A `--resume` path that does not exist is no run at all.
/// Data after cleaning, splitting and preprocessing.
pub struct PreparedData {
    /// The training source after cleaning.
    pub table: Table,
    /// Column roles.
    pub schema: Schema,
    /// Row split of `table`.
    pub split: Split,
    /// Fitted on the training rows.
    pub preprocessor: Preprocessor,
    /// Encoded training rows.
    pub train: Encoded,
    /// Encoded validation rows.
    pub validation: Encoded,
    /// Encoded test rows (from the split or `data.test_source`).
    pub test: Encoded,
    /// Counts for the report.
    pub summary: DataSummary,
    /// A streamed run's training rows (`train` then holds none, only their shape; `table`
    /// holds only the held-out rows' line numbers).
    pub stream: Option<kiln_data::TrainStream>,
}

impl PreparedData {
    /// Training rows, in memory or streamed.
    pub fn train_rows(&self) -> usize {
        self.stream.as_ref().map_or(self.train.rows, |s| s.rows())
    }
}

/// What happened to the rows, for reports.
#[derive(Debug, Clone, Serialize)]
pub struct DataSummary {
    /// Source.
    pub source: String,
    /// Separate test source.
    pub test_source: Option<String>,
    /// Loading and cleaning counts of the source.
    pub load: LoadReport,
    /// Rows per split after cleaning.
    pub train_rows: usize,
    /// Validation rows.
    pub validation_rows: usize,
    /// Test rows.
    pub test_rows: usize,
    /// Missing values filled, over all splits.
    pub missing_filled: usize,
    /// Rows dropped for missing values.
    pub missing_dropped: usize,
    /// Rows dropped for a missing target.
    pub missing_target_dropped: usize,
    /// Unknown categories met in validation/test, by column.
    pub unknown_categories: BTreeMap<String, usize>,
    /// Texts longer than `model.context` tokens (cut as `text.truncation` says), over all splits.
    pub texts_truncated: usize,
    /// Columns not used, with the reason.
    pub ignored_columns: Vec<(String, String)>,
    /// Task.
    pub task: Task,
    /// Target column.
    pub target: String,
    /// Input features used.
    pub features: Vec<String>,
    /// The training rows were streamed (`data.streaming`), not held in memory.
    #[serde(default)]
    pub streamed: bool,
}

/// The rows of `data.test_source`, encoded by the fitted `preprocessor`.
fn encode_test_source(
    config: &Config,
    path: &str,
    schema: &Schema,
    preprocessor: &Preprocessor,
) -> Result<Encoded> {
    // Its categories as written in the training file, even where it holds only numbers.
    let mut test_config = config.clone();
    test_config.data = data_for_model(config, preprocessor);
    let mut test_table = load_table_with_text(path, &test_config, &preprocessor.text_columns())?;
    kiln_data::drop_bad_values(&mut test_table, schema, config.data.bad_rows)?;
    let rows: Vec<usize> = (0..test_table.num_rows()).collect();
    Ok(preprocessor.transform(&test_table, &rows, true, true)?)
}

/// [`prepare`] for `data.streaming`: one pass over the source fits the preprocessing and
/// keeps the held-out rows; the training rows are read again every epoch.
fn prepare_streamed(config: &Config) -> Result<PreparedData> {
    let streamed = kiln_data::prepare_streamed(config)?;
    let test = match &config.data.test_source {
        Some(path) => encode_test_source(config, path, &streamed.schema, &streamed.preprocessor)?,
        None => streamed.test,
    };
    let validation = streamed.validation;
    let stream = streamed.train;
    let schema = streamed.schema;
    let held_out = [&validation, &test];
    let mut unknown = BTreeMap::new();
    for e in held_out {
        for (k, v) in &e.unknown_categories {
            *unknown.entry(k.clone()).or_insert(0) += v;
        }
    }
    let summary = DataSummary {
        source: config.data.source.clone(),
        test_source: config.data.test_source.clone(),
        load: streamed.held_out.report.clone(),
        train_rows: stream.rows(),
        validation_rows: validation.rows,
        test_rows: test.rows,
        missing_filled: stream.missing_filled()
            + held_out.iter().map(|e| e.missing_filled).sum::<usize>(),
        missing_dropped: stream.dropped()
            + held_out.iter().map(|e| e.missing_dropped).sum::<usize>(),
        missing_target_dropped: held_out.iter().map(|e| e.missing_target_dropped).sum(),
        unknown_categories: unknown,
        texts_truncated: 0,
        ignored_columns: schema.ignored.clone(),
        task: schema.task,
        target: schema.target.clone(),
        features: schema.features.iter().map(|f| f.name.clone()).collect(),
        streamed: true,
    };
    if stream.rows() == 0 {
        return Err(KilnError::Invalid(format!(
            "{}: no training rows left after cleaning ({} dropped for missing values)",
            config.data.source, summary.missing_dropped
        )));
    }
    Ok(PreparedData {
        table: streamed.held_out,
        schema,
        split: kiln_data::Split::default(),
        preprocessor: streamed.preprocessor,
        train: validation.select(&[]),
        validation,
        test,
        summary,
        stream: Some(stream),
    })
}

/// `data.streaming = "auto"` decided: on for a source that, held in memory, would take more
/// than half the machine's memory (four times its columns' size: a Parquet source's
/// uncompressed size, a CSV or JSON Lines file's size), for a tabular model (MLP or linear,
/// no image or text feature declared), unless a setting needs every row at once; off
/// otherwise. The run saves the decision,
/// so a resumed run reads its data the same way.
pub fn resolve_streaming(mut config: Config) -> Config {
    if config.data.streaming == kiln_config::Streaming::Auto {
        let size = kiln_data::streamable_size(&config.data.source, &config.data);
        config.data.streaming = decide_streaming(&config, size, crate::memory::total_bytes());
    }
    config
}

/// [`resolve_streaming`]'s rule, for a source of `size` bytes (`None`: it cannot stream) on a
/// machine of `memory` bytes.
fn decide_streaming(
    config: &Config,
    size: Option<u64>,
    memory: Option<u64>,
) -> kiln_config::Streaming {
    // A run in memory peaks at about four times its columns' size (the table, its encoding,
    // the splits' copies: 1.8 GB for 468 MB of Parquet columns, BENCHMARKS.md).
    let large = matches!((size, memory), (Some(size), Some(memory)) if 4 * size > memory / 2);
    // Streaming reads numbers and categories: a model of images or text reads the table whole.
    let tabular = matches!(
        config.model.kind,
        kiln_config::ModelKind::Mlp | kiln_config::ModelKind::Linear
    ) && config.data.image.column.is_none()
        && !config
            .features
            .iter()
            .any(|f| matches!(f.kind, Some(FeatureType::Text | FeatureType::Image)));
    match large && tabular && kiln_config::needs_every_row(config).is_none() {
        true => kiln_config::Streaming::On,
        false => kiln_config::Streaming::Off,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_config::Streaming;

    #[test]
    fn auto_streams_a_source_larger_than_half_the_memory_when_the_config_allows() {
        let mut config = Config::default();
        let gib = 1u64 << 30;
        assert_eq!(
            decide_streaming(&config, Some(5 * gib), Some(8 * gib)),
            Streaming::On
        );
        assert_eq!(
            decide_streaming(&config, Some(gib + 1), Some(8 * gib)),
            Streaming::On
        );
        assert_eq!(
            decide_streaming(&config, Some(gib), Some(8 * gib)),
            Streaming::Off
        );
        assert_eq!(
            decide_streaming(&config, None, Some(8 * gib)),
            Streaming::Off
        );
        assert_eq!(
            decide_streaming(&config, Some(5 * gib), None),
            Streaming::Off
        );
        config.model.kind = kiln_config::ModelKind::Transformer;
        assert_eq!(
            decide_streaming(&config, Some(5 * gib), Some(8 * gib)),
            Streaming::Off
        );
        config.model.kind = kiln_config::ModelKind::Mlp;
        config.data.drop_duplicates = true;
        assert_eq!(
            decide_streaming(&config, Some(5 * gib), Some(8 * gib)),
            Streaming::Off
        );
        // A decided setting stays as it is.
        config.data.streaming = Streaming::Off;
        assert_eq!(resolve_streaming(config).data.streaming, Streaming::Off);
    }
}

/// The in-memory source of `config`, loaded, cleaned (duplicates, bad values) and split, as
/// training uses it (`kiln data split` writes the same rows).
pub(crate) fn load_and_split(config: &Config) -> Result<(Table, Schema, Split)> {
    let mut table = load_table(&config.data.source, config)?;
    if config.data.drop_duplicates {
        table.drop_duplicates();
    }
    let schema = kiln_data::infer_schema(&table, config)?;
    kiln_data::drop_bad_values(&mut table, &schema, config.data.bad_rows)?;
    let split = kiln_data::split_rows(&table, &schema, &config.data, config.seed)?;
    Ok((table, schema, split))
}

/// Loads, cleans, splits and preprocesses the data of `config`.
pub fn prepare(config: &Config) -> Result<PreparedData> {
    if config.data.streaming == kiln_config::Streaming::On {
        return prepare_streamed(config);
    }
    let (table, schema, split) = load_and_split(config)?;
    let all: Vec<usize> = (0..table.num_rows()).collect();
    let preprocessor = Preprocessor::fit(&table, &schema, &split.train, &all)?;
    let train = preprocessor.transform(&table, &split.train, true, true)?;
    let validation = preprocessor.transform(&table, &split.validation, true, true)?;
    let test = match &config.data.test_source {
        Some(path) => encode_test_source(config, path, &schema, &preprocessor)?,
        None => preprocessor.transform(&table, &split.test, true, true)?,
    };
    let mut unknown = BTreeMap::new();
    for e in [&validation, &test] {
        for (k, v) in &e.unknown_categories {
            *unknown.entry(k.clone()).or_insert(0) += v;
        }
    }
    let parts = [&train, &validation, &test];
    let summary = DataSummary {
        source: config.data.source.clone(),
        test_source: config.data.test_source.clone(),
        load: table.report.clone(),
        train_rows: train.rows,
        validation_rows: validation.rows,
        test_rows: test.rows,
        missing_filled: parts.iter().map(|e| e.missing_filled).sum(),
        missing_dropped: parts.iter().map(|e| e.missing_dropped).sum(),
        missing_target_dropped: parts.iter().map(|e| e.missing_target_dropped).sum(),
        unknown_categories: unknown,
        texts_truncated: parts.iter().map(|e| e.texts_truncated).sum(),
        ignored_columns: schema.ignored.clone(),
        task: schema.task,
        target: schema.target.clone(),
        features: schema.features.iter().map(|f| f.name.clone()).collect(),
        streamed: false,
    };
    if train.rows == 0 {
        return Err(KilnError::Invalid(format!(
            "{}: no training rows left after cleaning ({} dropped for missing values)",
            config.data.source, summary.missing_dropped
        )));
    }
    Ok(PreparedData {
        table,
        schema,
        split,
        preprocessor,
        train,
        validation,
        test,
        summary,
        stream: None,
    })
}

/// A pretrained folder to fine-tune.
enum Pretrained {
    /// A BERT encoder, loaded.
    Bert(Box<PretrainedEncoder>),
    /// A GPT (kiln's safetensors export), read as a causal text encoder once the data's
    /// tokens are known.
    Gpt2 {
        /// The folder.
        dir: PathBuf,
        /// Its `config.json`.
        config: kiln_models::Gpt2Config,
    },
}

/// The pretrained model of `model.pretrained` (a BERT on the training device, or a GPT's
/// config), checked against the config.
fn load_pretrained(config: &Config, dir: &Path, device: &Device) -> Result<Pretrained> {
    let (pretrained, positions) = match kiln_runtime::pretrained::model_type(dir)?.as_str() {
        "gpt2" => {
            let gpt = kiln_runtime::pretrained::read_gpt2_config(dir)?;
            if config.lora.rank > 0 {
                return Err(KilnError::Invalid(format!(
                    "LoRA works on BERT encoders; {} is a GPT (model.freeze works on both)",
                    dir.display()
                )));
            }
            if config.model.causal.unwrap_or(true) && config.model.pooling == Pooling::Cls {
                return Err(KilnError::Invalid(format!(
                    "model.pooling = \"cls\": {} is a causal GPT, whose first token has seen \
                     only itself; use mean, max or mean_max, or model.causal = false",
                    dir.display()
                )));
            }
            let positions = gpt.n_positions;
            (
                Pretrained::Gpt2 {
                    dir: dir.to_path_buf(),
                    config: gpt,
                },
                positions,
            )
        }
        _ => {
            if config.model.causal == Some(true) {
                return Err(KilnError::Invalid(format!(
                    "model.causal = true: {} is a BERT encoder, which attends both ways",
                    dir.display()
                )));
            }
            let ad = device.clone().autodiff();
            let encoder = if config.model.pretrained_weights {
                PretrainedEncoder::load(dir, &ad)?
            } else {
                PretrainedEncoder::architecture(dir, &ad)?
            };
            let positions = encoder.config.max_position_embeddings;
            (Pretrained::Bert(Box::new(encoder)), positions)
        }
    };
    if config.model.context > positions {
        return Err(KilnError::Invalid(format!(
            "model.context = {} exceeds the {positions} positions of {}",
            config.model.context,
            dir.display()
        )));
    }
    Ok(pretrained)
}

/// Architecture for `config` on `preprocessor`'s inputs.
fn model_spec(config: &Config, preprocessor: &Preprocessor) -> Result<ModelSpec> {
    let input = preprocessor.input_shape();
    Ok(ModelSpec::from_config(
        &config.model,
        input,
        preprocessor.embedding_dims(),
        preprocessor.text_input(),
        preprocessor.num_outputs(),
    )?)
}

/// How long the training loop waited for its batches (gathered, and augmented on a thread
/// of their own), against the time its optimizer steps took.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct DataWait {
    /// Seconds of optimizer steps (validation not included).
    pub step_seconds: f64,
    /// Of those, seconds spent waiting for batches.
    pub wait_seconds: f64,
}

impl DataWait {
    /// The wait as a share of the steps' time (0 when nothing ran).
    pub fn fraction(&self) -> f64 {
        if self.step_seconds > 0.0 {
            self.wait_seconds / self.step_seconds
        } else {
            0.0
        }
    }
}

/// The result of `kiln train`.
#[derive(Debug, Serialize)]
pub struct RunSummary {
    /// The run directory.
    pub run_dir: PathBuf,
    /// Data counts.
    pub data: DataSummary,
    /// Test-split scores of the kept model.
    pub test: Option<Evaluation>,
    /// Validation scores of the kept model.
    pub validation: Option<Evaluation>,
    /// Epochs run.
    pub epochs_run: usize,
    /// Optimizer steps.
    pub steps: u64,
    /// Epoch whose model was kept.
    pub best_epoch: Option<usize>,
    /// Early stopping ended the run.
    pub stopped_early: bool,
    /// Mean training loss of the last epoch.
    pub final_train_loss: f64,
    /// Wall-clock seconds of training in this invocation.
    pub train_seconds: f64,
    /// Of the optimizer steps' time in this invocation, how long the loop waited for batches.
    pub data_wait: DataWait,
    /// Checkpoint step resumed from.
    pub resumed_from: Option<u64>,
    /// Parameters of the model.
    pub parameters: usize,
    /// Parameters training updated (fewer than `parameters` with a frozen encoder or LoRA).
    pub trainable_parameters: usize,
    /// Class names (classification).
    pub classes: Option<Vec<String>>,
    /// The teacher next to this student, for a distilled run.
    pub distillation: Option<crate::DistillSummary>,
    /// Data-parallel runs: what the gradient all-reduces cost.
    pub all_reduce: Option<kiln_train::AllReduceStats>,
    /// Which kiln ran it, when, how and where.
    pub run: crate::RunInfo,
}

fn default_run_name(config: &Config) -> String {
    let source = &config.data.source;
    let stem = source
        .strip_prefix("builtin:")
        .map(str::to_string)
        .unwrap_or_else(|| {
            Path::new(source)
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or("data")
                .to_string()
        });
    let stem = stem.trim_end_matches(".csv").replace(
        |c: char| !c.is_ascii_alphanumeric() && c != '-' && c != '_',
        "_",
    );
    let model = format!("{:?}", config.model.kind).to_lowercase();
    format!("{stem}-{model}-{}", utc_timestamp())
}

/// `YYYYmmdd-HHMMSS` in UTC.
fn utc_timestamp() -> String {
    let (y, m, d, hh, mm, ss) = crate::run_info::utc_now();
    format!("{y:04}{m:02}{d:02}-{hh:02}{mm:02}{ss:02}")
}

/// Trains `config` into a new run directory, or continues the run at `resume` (a run
/// directory or one of its checkpoints) with the config saved there.
pub fn train_run(
    config: &Config,
    resume: Option<&Resume>,
    observer: &mut dyn Observer,
) -> Result<RunSummary> {
    let summary = train_run_in(config, resume, observer, &World::single())?;
    Ok(summary.expect("a single process is rank 0"))
}

/// [`train_run`] as one process of `world`: every rank loads the data and trains on its
/// share of each batch; rank 0 alone writes the run directory and returns the summary
/// (`None` on the other ranks).
pub fn train_run_in(
    config: &Config,
    resume: Option<&Resume>,
    observer: &mut dyn Observer,
    world: &World,
) -> Result<Option<RunSummary>> {
    let mut run_info = crate::RunInfo::now(world.size());
    let scratch = Scratch::for_rank(world)?;
    let (config, run_dir, checkpoint): (Config, Option<PathBuf>, Option<LoadedCheckpoint>) =
        match resume {
            Some(resume) => {
                let r = crate::resume::open(resume, world)?;
                (r.config, Some(r.run_dir), Some(r.checkpoint))
            }
            None => match &scratch {
                Some(scratch) => (scratch.redirect(config), None, None),
                None => (config.clone(), None, None),
            },
        };
    let config = resolve_streaming(config);
    check_batch_splits(world, &config)?;
    check_program(world, &config)?;
    let device = training_device(&config, world, &mut run_info)?;
    // A pretrained folder is checked (and its weights read) before the data: its tokenizer
    // reads the text.
    let pretrained = match (&config.model.pretrained, &checkpoint) {
        (Some(dir), None) => Some(
            load_pretrained(&config, Path::new(dir), &device)
                .map_err(|e| with_setup_hint(dir, e))?,
        ),
        _ => None,
    };
    let data = prepare(&config)?;
    let spec = match (&checkpoint, &run_dir) {
        // A resumed run continues the network its checkpoints hold.
        (Some(_), Some(dir)) => run::read_json(&dir.join(files::MODEL_SPEC))?,
        _ => {
            let spec = model_spec(&config, &data.preprocessor)?;
            match &pretrained {
                Some(Pretrained::Bert(encoder)) => spec.with_pretrained(PretrainedEncoderSpec {
                    bert: encoder.config.clone(),
                    source: encoder.dir.display().to_string(),
                    pooling: config.model.pooling,
                    freeze: config.model.freeze,
                    lora: (config.lora.rank > 0).then(|| config.lora.clone()),
                }),
                Some(Pretrained::Gpt2 { config: gpt, .. }) => {
                    let mut spec = spec;
                    if let Some(text) = spec.text.as_mut() {
                        text.layers = gpt.n_layer;
                        text.heads = gpt.n_head;
                        text.embd = gpt.n_embd;
                        text.bias = true;
                        text.causal = config.model.causal.unwrap_or(true);
                        text.freeze = config.model.freeze;
                    }
                    spec
                }
                None => spec,
            }
        }
    };
    spec.validate()?;
    // The micro-batch a step's forward and backward hold at once, as the trainer cuts it.
    let batch = match config.trainer.batch_size {
        kiln_config::BatchSize::Full => data
            .train_rows()
            .div_ceil(config.trainer.grad_accum_steps.max(1)),
        kiln_config::BatchSize::Samples(n) => n.min(data.train_rows()),
    };
    // Parameters are initialised lazily: counting them allocates nothing.
    let parameters = burn::module::Module::num_params(&kiln_models::Network::new(&spec, &device));
    let estimate = crate::memory::network_estimate(&config, &spec, parameters as u64, batch as u64);
    let shrink = if config.text.windows > 1 {
        "model.hidden, model.embd, model.context, text.windows or trainer.batch_size"
    } else {
        "model.hidden, model.conv, model.embd or trainer.batch_size"
    };
    crate::memory::check_fits(&estimate, shrink)?;
    // Everything every rank reads is read before rank 0 writes: a rank that cannot read the
    // teacher or the pretrained weights stops the job before a run directory exists.
    let teacher = match &config.distill.teacher {
        Some(teachers) => Some(crate::distill::load_teacher(
            &teachers.dirs(),
            &data,
            &device,
            config.distill.cache,
            config.distill.temperature,
        )?),
        None => None,
    };
    let initial_model = initial_model(pretrained, &config, &spec, &device)?;
    let facts = format!(
        "{} train / {} validation / {} test rows, preprocessing {:08x}{}",
        data.train_rows(),
        data.validation.rows,
        data.test.rows,
        crc32fast::hash(&serde_json::to_vec(&data.preprocessor).expect("serializes")),
        checkpoint_facts(checkpoint.as_ref())
    );
    check_model_and_data(world, &spec, &facts)?;
    check_monitor(&config, &data.preprocessor)?;
    // The run directory is made only once the data and the model are known to fit; a new
    // run that fails is removed, or marked when it has a checkpoint to resume from.
    let (run_dir, unfinished) = match run_dir {
        Some(dir) => (dir, None),
        None => {
            let name = config
                .output
                .name
                .clone()
                .unwrap_or_else(|| default_run_name(&config));
            let dir = run::create(Path::new(&config.output.dir), &name)?;
            (dir.clone(), Some(Unfinished::new(dir)))
        }
    };
    if checkpoint.is_some() {
        let saved: Preprocessor = run::read_json(&run_dir.join(files::PREPROCESSOR))?;
        if saved != data.preprocessor {
            return Err(KilnError::Invalid(format!(
                "{}: the data no longer gives the preprocessing this run was started with; the source changed since",
                config.data.source
            )));
        }
    } else {
        run::save_config(&run_dir, &config)?;
        run::write_json(&run_dir.join(files::SCHEMA), &data.schema)?;
        run::write_json(&run_dir.join(files::PREPROCESSOR), &data.preprocessor)?;
        run::write_json(&run_dir.join(files::MODEL_SPEC), &spec)?;
    }
    let setup = TrainSetup {
        config: &config,
        spec: &spec,
        preprocessor: &data.preprocessor,
        train: &data.train,
        validation: Some(&data.validation),
        run_dir: &run_dir,
        device: device.clone(),
        initial_model,
        teacher: teacher.as_ref().map(|t| kiln_train::TeacherLogits {
            source: t.source(),
            classes: t.classes,
            temperature: config.distill.temperature,
            alpha: config.distill.alpha,
        }),
        stream: data.stream.as_ref(),
    };
    let resumed_at = checkpoint.as_ref().map(|c| c.step);
    let bucket_bytes = (config.trainer.bucket_mb * 1e6) as usize;
    let mut sync = DataParallel::new(world, bucket_bytes);
    let described = run_info.machine.device.clone();
    let outcome: TrainOutcome =
        crate::memory::guard_device_memory(&device, &described, &estimate, shrink, || {
            Ok(kiln_train::train(setup, checkpoint, observer, &mut sync)?)
        })?;
    // Predict each split once, every rank its share; the test predictions also feed the
    // report's ROC curve.
    let mut predict_split = |e: &Encoded| -> Result<Option<Predictions>> {
        Ok(match e.rows > 0 {
            true => Some(predict_sharded(
                &outcome.model,
                e,
                &data.preprocessor,
                &device,
                &mut sync,
            )?),
            false => None,
        })
    };
    let test_predictions = predict_split(&data.test)?;
    let validation_predictions = predict_split(&data.validation)?;
    if !world.is_leader() {
        return Ok(None);
    }
    run::save_weights(&run_dir, &outcome.model)?;
    if spec.pretrained.as_ref().is_some_and(|p| p.lora.is_some()) {
        run::save_adapters(&run_dir, &outcome.model)?;
    }
    // What was written must load: every later command starts here.
    run::load(&run_dir, &device).map_err(|e| {
        KilnError::Invalid(format!(
            "{}: the run just written does not load back ({e}); this is a bug in kiln",
            run_dir.display()
        ))
    })?;
    let parameters = kiln_train::grads::parameter_count(&outcome.model);
    let score_split = |e: &Encoded, p: &Option<Predictions>| -> Result<Option<Evaluation>> {
        Ok(match p {
            Some(p) => Some(score(e, p, &data.preprocessor)?),
            None => None,
        })
    };
    let test_source = config
        .data
        .test_source
        .as_deref()
        .unwrap_or(&config.data.source);
    // Which table each held-out split's rows index: a separate test file has its own lines.
    let separate_test = config.data.test_source.is_some();
    for (source, encoded, predictions, lines) in [
        (
            test_source,
            &data.test,
            &test_predictions,
            (!separate_test).then_some(&data.table.lines),
        ),
        (
            config.data.source.as_str(),
            &data.validation,
            &validation_predictions,
            Some(&data.table.lines),
        ),
    ] {
        if let Some(p) = predictions
            && let Some(bad) = non_finite_output(&p.values, p.width, encoded, &data.preprocessor)
        {
            let line = lines
                .zip(encoded.source_rows.get(bad.row))
                .and_then(|(lines, &r)| lines.get(r))
                .map(|l| format!(", line {l}"))
                .unwrap_or_default();
            return Err(KilnError::Invalid(format!(
                "{source}{line}: the trained model's prediction for this held-out row is not finite: {bad}"
            )));
        }
    }
    let test = score_split(&data.test, &test_predictions)?;
    let validation = score_split(&data.validation, &validation_predictions)?;
    let finished_before = resumed_at.is_some_and(|step| step == outcome.steps)
        && run_dir.join(files::REPORT_JSON).exists();
    let train_seconds = if finished_before {
        // Resuming a finished run trains nothing: keep its report and its training time.
        run::read_json::<serde_json::Value>(&run_dir.join(files::REPORT_JSON))
            .ok()
            .and_then(|r| r["train_seconds"].as_f64())
            .unwrap_or(outcome.seconds)
    } else {
        outcome.seconds
    };
    let distillation = match &teacher {
        Some(t) => Some(crate::distill::summarize(
            t,
            &outcome.model,
            &data,
            &config,
            &device,
        )?),
        None => None,
    };
    run_info.precision =
        crate::PrecisionUsed::new(config.trainer.precision, outcome.loss_scaler.as_ref());
    let summary = RunSummary {
        run: run_info,
        distillation,
        all_reduce: (world.size() > 1).then(|| sync.stats()),
        run_dir: run_dir.clone(),
        data: data.summary.clone(),
        test,
        validation,
        epochs_run: outcome.epochs_run,
        steps: outcome.steps,
        best_epoch: outcome.best_epoch,
        stopped_early: outcome.stopped_early,
        final_train_loss: outcome.final_train_loss,
        train_seconds,
        data_wait: DataWait {
            step_seconds: outcome.step_seconds,
            wait_seconds: outcome.data_wait_seconds,
        },
        resumed_from: outcome.resumed_from,
        parameters,
        trainable_parameters: outcome.trainable_parameters,
        classes: data.preprocessor.classes().map(<[String]>::to_vec),
    };
    if !finished_before {
        crate::report::write_report(
            &run_dir,
            &config,
            &summary,
            &data.test,
            test_predictions.as_ref(),
        )?;
    }
    if let Some(unfinished) = unfinished {
        unfinished.finished();
    }
    Ok(Some(summary))
}

/// The network training starts from: the pretrained encoder's weights in a fresh network, or
/// `None` for fresh weights.
fn initial_model(
    pretrained: Option<Pretrained>,
    config: &Config,
    spec: &ModelSpec,
    device: &Device,
) -> Result<Option<kiln_models::Network>> {
    Ok(
        match pretrained.filter(|_| config.model.pretrained_weights) {
            Some(Pretrained::Bert(encoder)) => {
                let ad = device.clone().autodiff();
                Some(
                    kiln_models::Network::new(spec, &ad).with_pretrained_encoder(
                        encoder.model,
                        spec,
                        &ad,
                    ),
                )
            }
            Some(Pretrained::Gpt2 { dir, config: gpt }) => {
                let text = spec.text.as_ref().expect("a GPT encoder is a text encoder");
                let bytes = kiln_runtime::pretrained::gpt2_encoder_weights(&dir, &gpt, text)?;
                let ad = device.clone().autodiff();
                let origin = dir.join(kiln_runtime::pretrained::WEIGHTS_FILE);
                Some(kiln_runtime::weights::load_part_into(
                    kiln_models::Network::new(spec, &ad),
                    &bytes,
                    &origin.display().to_string(),
                )?)
            }
            None => None,
        },
    )
}

/// Refuses a predictions file that would replace its own input or a file of the run.
fn refuse_overwrite(out: &Path, run_dir: &Path, data_spec: &str) -> Result<()> {
    let Ok(target) = out.canonicalize() else {
        return Ok(()); // a new file replaces nothing
    };
    let run_files = [
        files::CONFIG,
        files::SCHEMA,
        files::PREPROCESSOR,
        files::MODEL_SPEC,
        files::WEIGHTS,
        files::METRICS,
        files::REPORT_JSON,
        files::REPORT_TXT,
    ];
    let protected = std::iter::once((Path::new(data_spec).to_path_buf(), "the input data")).chain(
        run_files
            .iter()
            .map(|f| (run_dir.join(f), "a file of the run")),
    );
    for (path, what) in protected {
        if path.canonicalize().is_ok_and(|p| p == target) {
            return Err(KilnError::Output {
                path: out.display().to_string(),
                message: format!("this is {what}; write the predictions to another --out"),
            });
        }
    }
    Ok(())
}

/// The error for the first row whose prediction is NaN or infinite, naming its line in
/// `source`: such a row is refused, never written or scored as NaN.
fn refuse_non_finite(
    source: &str,
    table: &Table,
    encoded: &Encoded,
    predictions: &Predictions,
    preprocessor: &Preprocessor,
) -> Result<()> {
    match non_finite_output(
        &predictions.values,
        predictions.width,
        encoded,
        preprocessor,
    ) {
        None => Ok(()),
        Some(bad) => {
            let line = encoded
                .source_rows
                .get(bad.row)
                .and_then(|&r| table.lines.get(r))
                .map(|l| format!(", line {l}"))
                .unwrap_or_default();
            Err(KilnError::Invalid(format!("{source}{line}: {bad}")))
        }
    }
}

/// The result of `kiln eval`.
#[derive(Debug, Serialize)]
pub struct EvalSummary {
    /// Run evaluated.
    pub run_dir: PathBuf,
    /// Data evaluated on.
    pub data: String,
    /// Rows scored.
    pub rows: usize,
    /// Rows dropped (missing target or `missing = "drop"` values, or malformed and skipped
    /// under `data.bad_rows = "skip"`).
    pub rows_dropped: usize,
    /// Unknown categories met.
    pub unknown_categories: BTreeMap<String, usize>,
    /// Scores.
    pub evaluation: Evaluation,
    /// Class names.
    pub classes: Option<Vec<String>>,
}

/// Scores a run's model on labelled data.
pub fn evaluate_run(run_dir: &Path, data_spec: &str) -> Result<EvalSummary> {
    let config = kiln_config::load(&run_dir.join(files::CONFIG), &[])?;
    let device = device_for(&config)?;
    let loaded = run::load(run_dir, &device)?;
    let pre = &loaded.preprocessor;
    // A CSV is read and scored a chunk at a time; only targets and outputs are kept.
    let mut chunks = model_input_chunks(data_spec, &loaded.config, pre)?;
    let mut y: Option<kiln_data::Target> = None;
    let mut outputs = Predictions {
        rows: 0,
        width: pre.num_outputs(),
        values: Vec::new(),
    };
    let (mut rows_dropped, mut unknown_categories) = (0, BTreeMap::<String, usize>::new());
    while let Some(table) = chunks
        .next_chunk(chunk_rows(pre))
        .map_err(|e| with_setup_hint(data_spec, e.into()))?
    {
        rows_dropped += table.report.bad_rows_skipped;
        let rows: Vec<usize> = (0..table.num_rows()).collect();
        let mut encoded = pre.transform(&table, &rows, true, true)?;
        let p = predict(&loaded.model, &encoded, pre, &device);
        refuse_non_finite(data_spec, &table, &encoded, &p, pre)?;
        rows_dropped += encoded.missing_dropped + encoded.missing_target_dropped;
        for (k, v) in &encoded.unknown_categories {
            *unknown_categories.entry(k.clone()).or_default() += v;
        }
        match (&mut y, encoded.y.take()) {
            (Some(all), Some(chunk)) => all.extend(chunk)?,
            (None, chunk) => y = chunk,
            (Some(_), None) => {}
        }
        outputs.rows += p.rows;
        outputs.values.extend(p.values);
    }
    if outputs.rows == 0 {
        return Err(KilnError::Invalid(format!(
            "{data_spec}: no rows to score after cleaning"
        )));
    }
    let evaluation = kiln_train::evaluate::score_target(y.as_ref(), &outputs, pre)?;
    Ok(EvalSummary {
        run_dir: run_dir.to_path_buf(),
        data: data_spec.to_string(),
        rows: outputs.rows,
        rows_dropped,
        unknown_categories,
        evaluation,
        classes: pre.classes().map(<[String]>::to_vec),
    })
}

/// The result of `kiln predict`.
#[derive(Debug, Serialize)]
pub struct PredictSummary {
    /// Run used.
    pub run_dir: PathBuf,
    /// Input data.
    pub data: String,
    /// Output file.
    pub out: PathBuf,
    /// Rows written (one per input row read).
    pub rows: usize,
    /// Malformed rows (or unreadable images) skipped under `data.bad_rows = "skip"`.
    pub rows_skipped: usize,
    /// Missing values filled with training statistics.
    pub missing_filled: usize,
    /// Unknown categories met, by column (encoded as all-zero / the unknown embedding).
    pub unknown_categories: BTreeMap<String, usize>,
}

/// Rows of a streamed input (CSV, Parquet) read, encoded and predicted at a time, at most.
const PREDICT_CHUNK_ROWS: usize = 65_536;

/// Rows a chunk holds: [`PREDICT_CHUNK_ROWS`], fewer for wide rows (images), so that a
/// chunk's encoded inputs stay near 256 MiB.
fn chunk_rows(pre: &Preprocessor) -> usize {
    const BUDGET: usize = 256 << 20;
    let values = pre.input_shape().size()
        + pre.cardinalities().len()
        + pre
            .text_input()
            .map_or(0, |(_, tokens)| tokens * pre.text_windows());
    (BUDGET / (4 * values.max(1))).clamp(1, PREDICT_CHUNK_ROWS)
}

/// Writes one prediction per input row to `out` (CSV, TSV, JSON Lines, Parquet or Arrow by
/// its extension): the id column first when the run has one, then the prediction (named
/// after the target), then `proba_<class>` columns with `proba`. A CSV input is read, scored
/// and written a chunk of rows at a time, so its size is not bounded by memory; the output
/// takes its name only once complete.
pub fn predict_run(
    run_dir: &Path,
    data_spec: &str,
    out: &Path,
    proba: bool,
) -> Result<PredictSummary> {
    refuse_overwrite(out, run_dir, data_spec)?;
    let format = PredictionsFormat::of(out)?;
    let config = kiln_config::load(&run_dir.join(files::CONFIG), &[])?;
    let device = device_for(&config)?;
    let loaded = run::load(run_dir, &device)?;
    let pre = &loaded.preprocessor;
    let mut chunks = model_input_chunks(data_spec, &loaded.config, pre)?;
    let target_name = match &pre.target {
        kiln_data::TargetTransform::Classes { name, .. }
        | kiln_data::TargetTransform::Regression { name, .. } => name,
    };
    let mut writer: Option<PredictionsWriter> = None;
    let (mut missing_filled, mut rows_skipped) = (0, 0);
    let mut unknown_categories: BTreeMap<String, usize> = BTreeMap::new();
    while let Some(table) = chunks
        .next_chunk(chunk_rows(pre))
        .map_err(|e| with_setup_hint(data_spec, e.into()))?
    {
        let rows: Vec<usize> = (0..table.num_rows()).collect();
        let encoded = pre.transform(&table, &rows, false, false)?;
        let p = predict(&loaded.model, &encoded, pre, &device);
        refuse_non_finite(data_spec, &table, &encoded, &p, pre)?;
        missing_filled += encoded.missing_filled;
        rows_skipped += table.report.bad_rows_skipped;
        for (k, v) in &encoded.unknown_categories {
            *unknown_categories.entry(k.clone()).or_default() += v;
        }
        let writer = match &mut writer {
            Some(w) => w,
            None => {
                let mut header: Vec<String> = Vec::new();
                if let (Some(id), Some(_)) = (&pre.id_column, &encoded.ids) {
                    header.push(id.clone());
                }
                header.push(target_name.clone());
                if proba && let Some(classes) = pre.classes() {
                    header.extend(classes.iter().map(|c| format!("proba_{c}")));
                }
                writer.insert(PredictionsWriter::create(out, format, header)?)
            }
        };
        // Each row: the id, the prediction and the probabilities.
        let records = (0..p.rows).map(|r| {
            let row = &p.values[r * p.width..(r + 1) * p.width];
            let mut text: Vec<String> = Vec::with_capacity(2);
            if let Some(ids) = &encoded.ids {
                text.push(ids[r].clone());
            }
            let mut numbers: Vec<f32> = Vec::new();
            let prediction = match pre.classes() {
                Some(classes) => {
                    let best = row
                        .iter()
                        .enumerate()
                        .fold(0, |b, (i, &v)| if v > row[b] { i } else { b });
                    if proba {
                        numbers.extend_from_slice(row);
                    }
                    Prediction::Label(classes[best].clone())
                }
                None => Prediction::Value(row[0]),
            };
            (text, prediction, numbers)
        });
        writer.write(records)?;
    }
    let writer = writer.ok_or_else(|| KilnError::Invalid(format!("{data_spec}: no rows")))?;
    let rows = writer.rows();
    writer.finish()?;
    Ok(PredictSummary {
        run_dir: run_dir.to_path_buf(),
        data: data_spec.to_string(),
        out: out.to_path_buf(),
        rows,
        rows_skipped,
        missing_filled,
        unknown_categories,
    })
}
