//! Language-model runs: corpus → tokenizer → token files → GPT → run directory, and
//! generation from a run directory.

use std::path::{Path, PathBuf};
use std::time::Instant;

use kiln_config::Config;
use kiln_models::{Gpt, GptConfig, SamplingConfig};
use kiln_runtime::run::{self, files};
use kiln_text::{TextTokenizer, TokenFile, TokenFileMeta, TokenizerKind};
use kiln_train::lm::{LmEval, train_lm};
use kiln_train::{DataParallel, Observer, World};
use serde::Serialize;

use crate::distributed::{
    Scratch, check_batch_splits, check_model_and_data, check_program, checkpoint_facts,
};
use crate::resume::Resume;
use crate::{KilnError, Result};

pub use kiln_runtime::lm::{Generation, generate_text, load_lm};
pub use kiln_runtime::run::lm_files;

fn text_err(e: kiln_text::TextError) -> KilnError {
    KilnError::Invalid(e.to_string())
}

/// The corpus files of `data.source`: one file, or every file of a directory (sorted).
pub fn corpus_files(source: &str) -> Result<Vec<PathBuf>> {
    let p = Path::new(source);
    if p.is_dir() {
        let mut files: Vec<PathBuf> = std::fs::read_dir(p)
            .map_err(|e| KilnError::Invalid(format!("{source}: {e}")))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file())
            .collect();
        files.sort();
        if files.is_empty() {
            return Err(KilnError::Invalid(format!(
                "{source}: the directory has no files"
            )));
        }
        Ok(files)
    } else if p.is_file() {
        Ok(vec![p.to_path_buf()])
    } else {
        Err(KilnError::Invalid(format!(
            "{source}: no such file or directory"
        )))
    }
}

fn tokenizer_kind(config: &Config) -> TokenizerKind {
    TokenizerKind::from_setting(&config.text.tokenizer, config.text.vocab_size)
}

fn gpt_config(config: &Config, vocab_size: usize) -> GptConfig {
    let m = &config.model;
    GptConfig {
        vocab_size,
        context: m.context,
        layers: m.layers,
        heads: m.heads,
        embd: m.embd,
        dropout: m.dropout,
        bias: m.bias,
        tied_head: m.tied_head,
    }
}

/// The result of training a language model.
#[derive(Debug, Serialize)]
pub struct LmSummary {
    /// Run directory.
    pub run_dir: PathBuf,
    /// Token files.
    pub corpus: TokenFileMeta,
    /// Parameters.
    pub parameters: usize,
    /// Steps taken.
    pub steps: u64,
    /// Evaluations.
    pub evals: Vec<LmEval>,
    /// Final validation loss.
    pub val_loss: Option<f64>,
    /// Final bits per character.
    pub bits_per_char: Option<f64>,
    /// Seconds of training (this invocation).
    pub train_seconds: f64,
    /// Seconds preparing the corpus.
    pub prepare_seconds: f64,
    /// Resumed from this checkpoint step.
    pub resumed_from: Option<u64>,
    /// Peak resident memory of this process, in MiB (Linux).
    pub peak_rss_mib: Option<u64>,
    /// Data-parallel runs: what the gradient all-reduces cost.
    pub all_reduce: Option<kiln_train::AllReduceStats>,
    /// Which kiln ran it, when, how and where.
    pub run: crate::RunInfo,
}

/// Peak resident set size of this process in MiB (`VmHWM`), where the OS reports it.
pub fn peak_rss_mib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024)
}

/// Trains a GPT as configured into a new run directory, or resumes one.
pub fn train_lm_run(
    config: &Config,
    resume: Option<&Resume>,
    observer: &mut dyn Observer,
) -> Result<LmSummary> {
    let summary = train_lm_run_in(config, resume, observer, &World::single())?;
    Ok(summary.expect("a single process is rank 0"))
}

/// [`train_lm_run`] as one process of `world`: every rank prepares the same token files
/// (ranks other than 0 in a scratch directory, unless the data is a prepared directory or the
/// run is resumed) and trains on its share of every batch; rank 0 alone writes the run and
/// returns the summary (`None` on the other ranks).
pub fn train_lm_run_in(
    config: &Config,
    resume: Option<&Resume>,
    observer: &mut dyn Observer,
    world: &World,
) -> Result<Option<LmSummary>> {
    let mut run_info = crate::RunInfo::now(world.size());
    let scratch = Scratch::for_rank(world)?;
    let redirected;
    let config = match &scratch {
        Some(scratch) if resume.is_none() => {
            redirected = scratch.redirect(config);
            &redirected
        }
        _ => config,
    };
    if resume.is_none() {
        // Before rank 0 makes the run directory.
        check_batch_splits(world, config)?;
        check_program(world, config)?;
    }
    // A new run that fails is removed, or marked when it has a checkpoint.
    let mut unfinished = None;
    let (config, run_dir, checkpoint) = match resume {
        Some(resume) => {
            let r = crate::resume::open(resume, world)?;
            (r.config, r.run_dir, Some(r.checkpoint))
        }
        None => {
            let name = config
                .output
                .name
                .clone()
                .unwrap_or_else(|| format!("lm-{}", std::process::id()));
            let run_dir = run::create(Path::new(&config.output.dir), &name)?;
            unfinished = Some(crate::pipeline::Unfinished::new(run_dir.clone()));
            run::save_config(&run_dir, config)?;
            (config.clone(), run_dir, None)
        }
    };
    if resume.is_some() {
        check_batch_splits(world, &config)?;
        check_program(world, &config)?;
    }
    let device = crate::pipeline::training_device(&config, world, &mut run_info)?;
    // A directory written by `kiln data prepare-text` is used in place (no copy): token files
    // of any size are only ever memory-mapped.
    let prepared = Path::new(&config.data.source);
    let use_prepared = prepared.join("meta.json").is_file() && prepared.join("train.bin").is_file();
    let data_dir = if use_prepared {
        prepared.to_path_buf()
    } else {
        run_dir.join(lm_files::DATA_DIR)
    };
    let prepare_started = Instant::now();
    let meta: TokenFileMeta = if checkpoint.is_some() || use_prepared {
        if checkpoint.is_none() {
            std::fs::copy(
                data_dir.join(lm_files::TOKENIZER),
                run_dir.join(lm_files::TOKENIZER),
            )
            .map_err(|e| {
                KilnError::Invalid(format!(
                    "{}: {e}",
                    data_dir.join(lm_files::TOKENIZER).display()
                ))
            })?;
        }
        run::read_json(&data_dir.join("meta.json"))?
    } else {
        let text = corpus_files(&config.data.source)
            .and_then(|files| kiln_text::read_corpus(&files).map_err(text_err))
            .map_err(|e| crate::pipeline::with_setup_hint(&config.data.source, e))?;
        // Train the tokenizer on the training part only.
        let cut = text
            .char_indices()
            .nth(((text.chars().count() as f64) * (1.0 - config.text.val_fraction)) as usize)
            .map(|(i, _)| i)
            .unwrap_or(text.len());
        let tokenizer = TextTokenizer::build_normalized(
            &tokenizer_kind(&config),
            &[&text[..cut]],
            config.text.lowercase,
        )
        .map_err(text_err)?;
        let meta =
            kiln_text::prepare_corpus(&text, &tokenizer, &data_dir, config.text.val_fraction)
                .map_err(text_err)?;
        tokenizer
            .save(&run_dir.join(lm_files::TOKENIZER))
            .map_err(text_err)?;
        meta
    };
    let prepare_seconds = prepare_started.elapsed().as_secs_f64();
    let gpt = gpt_config(&config, meta.vocab_size);
    gpt.validate()?;
    let batch = match config.trainer.batch_size {
        kiln_config::BatchSize::Full => 1,
        kiln_config::BatchSize::Samples(n) => n,
    };
    // Parameters are initialised lazily: counting them allocates nothing.
    let parameters = burn::module::Module::num_params(&Gpt::new(&gpt, &device));
    let estimate = crate::memory::gpt_estimate(&config, &gpt, parameters as u64, batch as u64);
    let shrink = "model.embd, model.layers, model.context or trainer.batch_size";
    if let Err(e) = crate::memory::check_fits(&estimate, shrink) {
        // The vocabulary is known only now, after tokenizing: a new run refused here leaves
        // no folder behind.
        if checkpoint.is_none() {
            let _ = std::fs::remove_dir_all(&run_dir);
        }
        return Err(e);
    }
    let tokenizer_crc = std::fs::read(run_dir.join(lm_files::TOKENIZER))
        .map(|b| crc32fast::hash(&b))
        .unwrap_or(0);
    let facts = format!(
        "vocabulary {}, {} train / {} validation tokens, tokenizer {tokenizer_crc:08x}{}",
        meta.vocab_size,
        meta.train_tokens,
        meta.val_tokens,
        checkpoint_facts(checkpoint.as_ref())
    );
    check_model_and_data(world, &gpt, &facts)?;
    if world.is_leader() {
        run::write_json(&run_dir.join(files::MODEL_SPEC), &gpt)?;
    }
    let train = TokenFile::open(&data_dir.join("train.bin"), meta.dtype).map_err(text_err)?;
    let val = TokenFile::open(&data_dir.join("val.bin"), meta.dtype).map_err(text_err)?;
    if val.len() <= gpt.context {
        return Err(KilnError::Invalid(format!(
            "the validation text has {} tokens, fewer than one context window of {} + 1: use a larger corpus or text.val_fraction",
            val.len(),
            gpt.context
        )));
    }
    let resumed_at = checkpoint.as_ref().map(|c| c.step);
    let mut sync = DataParallel::new(world, (config.trainer.bucket_mb * 1e6) as usize);
    let described = run_info.machine.device.clone();
    let outcome =
        crate::memory::guard_device_memory(&device, &described, &estimate, shrink, || {
            Ok(train_lm(
                &config,
                &gpt,
                &meta,
                &train,
                &val,
                &run_dir,
                device.clone(),
                checkpoint,
                observer,
                &mut sync,
            )?)
        })?;
    if !world.is_leader() {
        return Ok(None);
    }
    run::save_weights(&run_dir, &outcome.model)?;
    // What was written must load: `generate`, `export` and `serve` start here.
    load_lm(&run_dir).map_err(|e| {
        KilnError::Invalid(format!(
            "{}: the run just written does not load back ({e}); this is a bug in kiln",
            run_dir.display()
        ))
    })?;
    // Resuming a finished run trains nothing: keep its report and its training time.
    let report_path = run_dir.join(files::REPORT_JSON);
    let finished_before =
        resumed_at.is_some_and(|step| step == outcome.steps) && report_path.exists();
    let train_seconds = match finished_before {
        true => run::read_json::<serde_json::Value>(&report_path)
            .ok()
            .and_then(|r| r["train_seconds"].as_f64())
            .unwrap_or(outcome.seconds),
        false => outcome.seconds,
    };
    let last = outcome.evals.last();
    run_info.precision =
        crate::PrecisionUsed::new(config.trainer.precision, outcome.loss_scaler.as_ref());
    let summary = LmSummary {
        run: run_info,
        run_dir: run_dir.clone(),
        corpus: meta,
        parameters: kiln_train::grads::parameter_count(&outcome.model),
        steps: outcome.steps,
        val_loss: last.map(|e| e.val_loss),
        bits_per_char: last.map(|e| e.bits_per_char),
        evals: outcome.evals,
        train_seconds,
        prepare_seconds,
        resumed_from: outcome.resumed_from,
        peak_rss_mib: peak_rss_mib(),
        all_reduce: (world.size() > 1).then(|| sync.stats()),
    };
    if let Some(unfinished) = unfinished.take() {
        unfinished.finished();
    }
    if finished_before {
        return Ok(Some(summary));
    }
    run::write_json(&report_path, &summary)?;
    if config.output.plots && !summary.evals.is_empty() {
        let dir = run_dir.join("plots");
        std::fs::create_dir_all(&dir).map_err(|e| KilnError::Output {
            path: dir.display().to_string(),
            message: e.to_string(),
        })?;
        let pts = |f: fn(&LmEval) -> f64| {
            summary
                .evals
                .iter()
                .map(|e| (e.step as f64, f(e)))
                .collect::<Vec<_>>()
        };
        kiln_report::line_chart(
            &dir.join("loss.svg"),
            "Language model loss",
            "optimizer step",
            "cross-entropy (nats/token)",
            &[
                kiln_report::Series {
                    name: "train",
                    points: pts(|e| e.train_loss),
                },
                kiln_report::Series {
                    name: "validation",
                    points: pts(|e| e.val_loss),
                },
            ],
        )?;
    }
    Ok(Some(summary))
}

/// Generates a continuation of `prompt` with a trained run. The prompt must fit the model's
/// context; characters the tokenizer does not know become `<unk>` and are counted.
pub fn generate_run(
    run_dir: &Path,
    prompt: &str,
    max_new_tokens: usize,
    sampling: &SamplingConfig,
    mut on_text: impl FnMut(&str),
) -> Result<Generation> {
    sampling.validate().map_err(KilnError::Invalid)?;
    let (model, tokenizer, device) = load_lm(run_dir)?;
    Ok(generate_text(
        &model,
        &tokenizer,
        &device,
        prompt,
        max_new_tokens,
        sampling,
        |piece| {
            on_text(piece);
            std::ops::ControlFlow::Continue(())
        },
    )?)
}
