//! Language-model training: the same optimizer, schedule, gradient seam, checkpoints and
//! metrics log as the tabular trainer, over random windows of a memory-mapped token file.

use std::path::Path;
use std::time::Instant;

use burn::prelude::{Device, Int, Tensor, TensorData};
use kiln_config::Config;
use kiln_models::{Gpt, GptConfig};
use kiln_rng::SplitMix64;
use kiln_text::{TokenFile, TokenFileMeta};
use serde::{Deserialize, Serialize};

use crate::checkpoint::{LoadedCheckpoint, write_checkpoint};
use crate::grads::{GradientSync, ParamGrads, apply_update};
use crate::optim::{Optimizer, OptimizerSettings};
use crate::precision::LossScaler;
use crate::schedule::LrSchedule;
use crate::trainer::{Observer, StartInfo, StepRecord, append_jsonl, truncate_metrics};
use crate::weights::{
    OPTIMIZER_FILE, load_into, model_to_bytes, optimizer_from_bytes, optimizer_to_bytes,
};
use crate::{CheckpointError, TrainError};
use kiln_models::ops::Autocast;

const BATCH_STREAM: u64 = 0xBA7C;
const EVAL_STREAM: u64 = 0xE7A1;

/// A validation measurement (one line of `metrics.jsonl` with `kind = "eval"`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LmEval {
    /// Optimizer steps taken.
    pub step: u64,
    /// Mean training loss since the previous evaluation.
    pub train_loss: f64,
    /// Mean validation cross-entropy (nats per token).
    pub val_loss: f64,
    /// exp(val_loss).
    pub perplexity: f64,
    /// Bits per character of the validation text: val_loss · tokens / chars / ln 2.
    pub bits_per_char: f64,
    /// Seconds since training started (this invocation).
    pub elapsed: f64,
}

/// What a language-model run produced.
#[derive(Debug)]
pub struct LmOutcome {
    /// The trained model (inference mode).
    pub model: Gpt,
    /// Steps taken.
    pub steps: u64,
    /// Every evaluation, in order (this invocation).
    pub evals: Vec<LmEval>,
    /// Wall-clock seconds.
    pub seconds: f64,
    /// Checkpoint step resumed from.
    pub resumed_from: Option<u64>,
    /// float16 training: the loss scale at the end, and the steps it skipped.
    pub loss_scaler: Option<LossScaler>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct LmState {
    step: u64,
    schedule: LrSchedule,
    loss_sum: f64,
    loss_count: u64,
    /// float16 training's loss scale (absent in f32 and bf16, and in older checkpoints).
    #[serde(default)]
    loss_scaler: Option<LossScaler>,
}

/// Mean cross-entropy of next-token prediction for `x`/`y` of shape `[b, t]`.
pub fn lm_loss(
    model: &Gpt,
    x: Vec<i64>,
    y: Vec<i64>,
    b: usize,
    t: usize,
    device: &Device,
) -> Tensor<1> {
    let x = Tensor::<2, Int>::from_data(TensorData::new(x, [b, t]), device);
    let targets: std::sync::Arc<[u32]> = y
        .iter()
        .map(|&id| u32::try_from(id).expect("token ids are non-negative and below 2^32"))
        .collect();
    model.loss(x, targets)
}

/// This process's share of a batch of `b` windows (`x`, `y` of `b × context` tokens) and
/// the share's weight in the batch mean; `None` when the share is empty.
fn local_rows(
    x: Vec<i64>,
    y: Vec<i64>,
    b: usize,
    context: usize,
    sync: &dyn GradientSync,
) -> Option<(Vec<i64>, Vec<i64>, f64)> {
    let world = sync.world_size();
    if world == 1 {
        return Some((x, y, 1.0));
    }
    let rows = kiln_dist::shard(b, sync.rank(), world);
    if rows.is_empty() {
        return None;
    }
    let share = rows.len() as f64 / b as f64;
    let span = rows.start * context..rows.end * context;
    Some((x[span.clone()].to_vec(), y[span].to_vec(), share))
}

/// Validation loss over `batches` fixed (seeded) windows; with several processes each scores
/// its share of every batch and the shares are summed.
pub fn evaluate_lm(
    model: &Gpt,
    val: &TokenFile,
    cfg: &Config,
    vocab: usize,
    device: &Device,
    sync: &mut dyn GradientSync,
) -> Result<f64, TrainError> {
    use burn::module::Module;
    let model = model.valid();
    let device = device.clone().without_autodiff();
    let t = &cfg.trainer;
    let b = match t.batch_size {
        kiln_config::BatchSize::Samples(n) => n,
        kiln_config::BatchSize::Full => 32,
    };
    let context = cfg.model.context;
    let mut rng = SplitMix64::derive(cfg.seed ^ EVAL_STREAM, 0);
    let mut total = 0.0;
    for _ in 0..t.eval_batches {
        kiln_models::ops::keep_workers_ready();
        let (x, y) = val.random_batch(&mut rng, b, context, vocab)?;
        let Some((x, y, share)) = local_rows(x, y, b, context, sync) else {
            continue;
        };
        let local_b = x.len() / context;
        total += lm_loss(&model, x, y, local_b, context, &device).into_scalar::<f64>() * share;
    }
    if sync.world_size() > 1 {
        total = sync.sum_f64(vec![total])?[0];
    }
    Ok(total / t.eval_batches as f64)
}

/// Trains a GPT on `train`, validating on `val`, writing `metrics.jsonl` and checkpoints
/// under `run_dir`.
#[allow(clippy::too_many_arguments)]
pub fn train_lm(
    config: &Config,
    gpt: &GptConfig,
    meta: &TokenFileMeta,
    train: &TokenFile,
    val: &TokenFile,
    run_dir: &Path,
    device: Device,
    resume: Option<LoadedCheckpoint>,
    observer: &mut dyn Observer,
    sync: &mut dyn GradientSync,
) -> Result<LmOutcome, TrainError> {
    let started = Instant::now();
    let t = &config.trainer;
    let device = device.without_autodiff();
    let ad = device.clone().autodiff();
    let micro = match t.batch_size {
        kiln_config::BatchSize::Samples(n) => n,
        kiln_config::BatchSize::Full => {
            return Err(TrainError::Setting {
                key: "trainer.batch_size",
                reason: "\"full\" has no meaning for a language model; give a number".into(),
            });
        }
    };
    let world = sync.world_size();
    if micro % world != 0 {
        return Err(TrainError::Setting {
            key: "trainer.batch_size",
            reason: format!(
                "{micro} does not split evenly over {world} processes; it is the global batch, \
                 so give a multiple of {world}"
            ),
        });
    }
    let leader = sync.rank() == 0;
    let context = gpt.context;
    let metrics_path = run_dir.join("metrics.jsonl");
    let checkpoints = run_dir.join("checkpoints");
    let settings = OptimizerSettings::from(t);
    device.seed(config.seed);
    let (mut model, mut optimizer, mut state, resumed_from) = match &resume {
        None => {
            if leader {
                let _ = std::fs::remove_file(&metrics_path);
            }
            let state = LmState {
                step: 0,
                schedule: LrSchedule::new(t, t.max_steps as u64),
                loss_sum: 0.0,
                loss_count: 0,
                loss_scaler: None,
            };
            // Weights are drawn here, from the seed (not lazily inside the first step), and
            // every process starts from rank 0's, as DDP broadcasts them.
            let model = kiln_models::device::build_seeded(&ad, config.seed, |ad| Gpt::new(gpt, ad));
            let model = match world {
                1 => {
                    crate::grads::trainable_parameters(&model);
                    model
                }
                _ => {
                    let bytes = sync.broadcast(model_to_bytes(&model)?)?;
                    load_into(Gpt::new(gpt, &ad), &bytes, "rank 0's initial weights")?
                }
            };
            (model, Optimizer::new(settings), state, None)
        }
        Some(ck) => {
            let origin = ck.dir.display().to_string();
            let model = load_into(Gpt::new(gpt, &ad), ck.file("model.safetensors")?, &origin)?;
            let optimizer = optimizer_from_bytes(settings, ck.file(OPTIMIZER_FILE)?, &device)
                .map_err(|p| TrainError::checkpoint(&ck.dir, p))?;
            let state: LmState =
                serde_json::from_slice(ck.file("trainer_state.json")?).map_err(|e| {
                    TrainError::checkpoint(
                        &ck.dir,
                        CheckpointError::Contents {
                            file: "trainer_state.json".into(),
                            detail: e.to_string(),
                        },
                    )
                })?;
            if leader {
                truncate_metrics(&metrics_path, state.step)?;
            }
            let mut state = state;
            state.schedule.set_total_steps(t.max_steps as u64);
            (model, optimizer, state, Some(ck.step))
        }
    };
    state.loss_scaler = LossScaler::carried(t.precision, state.loss_scaler.take());
    let compute_dtype = crate::precision::compute_dtype(t.precision);
    let parameters = crate::grads::parameter_count(&model);
    observer.on_start(&StartInfo {
        total_steps: t.max_steps as u64,
        steps_done: state.step,
        steps_per_epoch: t.max_steps as u64,
        train_rows: train.len(),
        parameters,
    });
    let tokens_per_char = meta.val_tokens as f64 / meta.val_chars.max(1) as f64;
    let mut evals = Vec::new();
    let mut window = (Instant::now(), 0usize);
    let save = |model: &Gpt, optimizer: &Optimizer, state: &LmState| -> Result<(), TrainError> {
        write_checkpoint(
            &checkpoints,
            state.step,
            &[
                ("model.safetensors", model_to_bytes(model)?),
                (OPTIMIZER_FILE, optimizer_to_bytes(optimizer)?),
                (
                    "trainer_state.json",
                    serde_json::to_vec_pretty(state).expect("state"),
                ),
            ],
        )?;
        Ok(())
    };
    while state.step < t.max_steps as u64 {
        let mut seeder = SplitMix64::derive(config.seed ^ BATCH_STREAM, state.step);
        device.seed(crate::trainer::rank_seed(seeder.next_u64(), sync.rank()));
        kiln_models::ops::keep_workers_ready();
        let mut grads = ParamGrads::default();
        let mut step_loss = 0.0;
        for _ in 0..t.grad_accum_steps {
            // Every process draws the step's windows alike and trains on its share of them.
            let (x, y) = train.random_batch(&mut seeder, micro, context, gpt.vocab_size)?;
            let Some((x, y, share)) = local_rows(x, y, micro, context, sync) else {
                continue;
            };
            let local_b = x.len() / context;
            let autocast = Autocast::enter(compute_dtype);
            let loss = lm_loss(&model, x, y, local_b, context, &ad);
            drop(autocast);
            let loss = loss.mul_scalar(share / t.grad_accum_steps as f64);
            step_loss += grads.backward_into(&model, loss, state.loss_scaler.as_ref());
        }
        if !step_loss.is_finite() {
            return Err(TrainError::Diverged {
                step: state.step + 1,
                loss: step_loss,
            });
        }
        if sync.world_size() > 1 {
            step_loss = sync.sum_f64(vec![step_loss])?[0];
        }
        let lr = state.schedule.lr(state.step, 0);
        let update = apply_update(
            model,
            grads,
            sync,
            t.grad_clip_norm,
            &mut optimizer,
            lr,
            state.loss_scaler.as_mut(),
        )?;
        model = update.model;
        state.step += 1;
        state.loss_sum += step_loss;
        state.loss_count += 1;
        window.1 += micro * context * t.grad_accum_steps;
        let record = StepRecord {
            step: state.step,
            epoch: 0,
            loss: step_loss,
            lr,
            grad_norm: update.grad_norm,
            samples_per_sec: window.1 as f64 / window.0.elapsed().as_secs_f64().max(1e-9),
            loss_scale: state.loss_scaler.as_ref().map(LossScaler::scale),
            skipped: update.skipped,
        };
        observer.on_step(&record);
        if leader && state.step % t.log_every_steps as u64 == 0 {
            append_jsonl(&metrics_path, &record, "step")?;
            window = (Instant::now(), 0);
        }
        let last = state.step == t.max_steps as u64;
        if state.step % t.eval_every_steps as u64 == 0 || last {
            let val_loss = evaluate_lm(&model, val, config, gpt.vocab_size, &device, sync)?;
            let eval = LmEval {
                step: state.step,
                train_loss: state.loss_sum / state.loss_count.max(1) as f64,
                val_loss,
                perplexity: val_loss.exp(),
                bits_per_char: val_loss * tokens_per_char / std::f64::consts::LN_2,
                elapsed: started.elapsed().as_secs_f64(),
            };
            state.loss_sum = 0.0;
            state.loss_count = 0;
            if leader {
                append_jsonl(&metrics_path, &eval, "eval")?;
            }
            observer.on_event(&format!(
                "step {:>6}: train loss {:.4}, val loss {:.4}, perplexity {:.2}, {:.3} bits/char",
                eval.step, eval.train_loss, eval.val_loss, eval.perplexity, eval.bits_per_char
            ));
            evals.push(eval);
        }
        if leader
            && ((t.checkpoint_every_steps > 0 && state.step % t.checkpoint_every_steps as u64 == 0)
                || last)
        {
            save(&model, &optimizer, &state)?;
        }
    }
    use burn::module::Module;
    Ok(LmOutcome {
        model: model.valid(),
        steps: state.step,
        evals,
        seconds: started.elapsed().as_secs_f64(),
        resumed_from,
        loss_scaler: state.loss_scaler,
    })
}
