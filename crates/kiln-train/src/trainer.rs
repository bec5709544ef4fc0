//! The training loop.
//!
//! One optimizer step is: for each micro-batch of the step's group, forward, loss weighted by
//! the micro-batch's share of the group, backward, collect gradients by path and add them up;
//! then [`GradientSync::all_reduce`] (the data-parallel seam), global-norm clipping, and the
//! optimizer update. Dropout is seeded from `(seed, step)` and shuffling from
//! `(seed, epoch)`, so a run resumed from a checkpoint replays exactly what an uninterrupted
//! run does.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::mpsc::sync_channel;
use std::time::{Duration, Instant};

use burn::module::Module;
use burn::prelude::{Device, Int, Tensor, TensorData};
use burn::tensor::activation::log_softmax;
use kiln_config::{BatchSize, ClassWeights, Config};
use kiln_data::{Encoded, Preprocessor, Target};
use kiln_models::{ModelSpec, Network};
use kiln_rng::SplitMix64;
use kiln_runtime::inference::HostBatch;
use serde::{Deserialize, Serialize};

use crate::checkpoint::{LoadedCheckpoint, write_atomic, write_checkpoint};
use crate::evaluate::{Evaluation, evaluate_sharded};
use crate::feed::{Feed, MicroBatch};
use crate::grads::{GradientSync, ParamGrads, apply_update};
use crate::optim::{LayerwiseLr, Optimizer, OptimizerSettings};
use crate::precision::LossScaler;
use crate::schedule::LrSchedule;
use crate::weights::{
    OPTIMIZER_FILE, model_from_bytes, model_to_bytes, optimizer_from_bytes, optimizer_to_bytes,
};
use crate::{CheckpointError, TrainError};
use kiln_models::ops::Autocast;

/// One line of `metrics.jsonl` for an optimizer step.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepRecord {
    /// Optimizer steps taken, including this one.
    pub step: u64,
    /// 0-based epoch.
    pub epoch: usize,
    /// Training loss of this step's samples.
    pub loss: f64,
    /// Learning rate used.
    pub lr: f64,
    /// Global gradient norm before clipping, when clipping is on.
    pub grad_norm: Option<f64>,
    /// Training throughput since the last record.
    pub samples_per_sec: f64,
    /// float16 training: the loss scale after this step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss_scale: Option<f64>,
    /// float16 training: the step was skipped, its gradients having overflowed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub skipped: bool,
}

/// One line of `metrics.jsonl` at the end of an epoch.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EpochRecord {
    /// 0-based epoch.
    pub epoch: usize,
    /// Optimizer steps taken so far.
    pub step: u64,
    /// Mean training loss over the epoch's steps.
    pub train_loss: f64,
    /// Validation scores, when there is a validation split.
    pub validation: Option<serde_json::Value>,
    /// Learning rate at the end of the epoch.
    pub lr: f64,
    /// Wall-clock seconds of the epoch (training and validation).
    pub seconds: f64,
    /// Seconds of the epoch's optimizer steps (validation not included).
    #[serde(default)]
    pub step_seconds: f64,
    /// Of `step_seconds`, the time the loop waited for its batches.
    #[serde(default)]
    pub data_wait_seconds: f64,
    /// Whether the monitored validation metric improved (the best model was kept).
    pub improved: bool,
}

/// Facts the observer gets before the first step.
#[derive(Debug, Clone)]
pub struct StartInfo {
    /// Optimizer steps of the whole run.
    pub total_steps: u64,
    /// Steps already done (resume).
    pub steps_done: u64,
    /// Steps per epoch.
    pub steps_per_epoch: u64,
    /// Training rows.
    pub train_rows: usize,
    /// Trainable parameters.
    pub parameters: usize,
}

/// Receives progress (the CLI draws progress bars from it).
pub trait Observer {
    /// Before the first step.
    fn on_start(&mut self, _info: &StartInfo) {}
    /// After every optimizer step.
    fn on_step(&mut self, _record: &StepRecord) {}
    /// After every epoch.
    fn on_epoch(&mut self, _record: &EpochRecord) {}
    /// A notable event (checkpoint written, LR reduced, early stop).
    fn on_event(&mut self, _message: &str) {}
}

/// An observer that ignores everything.
pub struct Silent;
impl Observer for Silent {}

/// Everything a training run needs.
pub struct TrainSetup<'a> {
    /// Resolved configuration.
    pub config: &'a Config,
    /// Architecture.
    pub spec: &'a ModelSpec,
    /// Fitted preprocessing (for scoring validation).
    pub preprocessor: &'a Preprocessor,
    /// Training rows.
    pub train: &'a Encoded,
    /// Validation rows.
    pub validation: Option<&'a Encoded>,
    /// Run directory (metrics.jsonl and checkpoints go here).
    pub run_dir: &'a Path,
    /// Compute device (without autodiff; the trainer adds it).
    pub device: Device,
    /// Where training starts instead of fresh weights (a network holding a pretrained
    /// encoder, on `device.autodiff()`); a resumed run starts from its checkpoint instead.
    pub initial_model: Option<Network>,
    /// Distillation: the teacher's outputs for every training row.
    pub teacher: Option<TeacherLogits<'a>>,
    /// A streamed run's training rows, read a block at a time each epoch (`train` then holds
    /// no rows, only their shape).
    pub stream: Option<&'a kiln_data::TrainStream>,
}

/// A teacher for distillation, and how the student learns from it.
#[derive(Debug, Clone)]
pub struct TeacherLogits<'a> {
    /// Where the teacher's logits come from.
    pub source: TeacherSource<'a>,
    /// Classes (the student's outputs).
    pub classes: usize,
    /// Softmax temperature of the soft term.
    pub temperature: f64,
    /// Weight of the soft term (`1 - alpha` weighs the labels).
    pub alpha: f64,
}

/// The teacher's logits: computed before training, or by the teacher on each batch.
#[derive(Debug, Clone)]
pub enum TeacherSource<'a> {
    /// `[train rows, classes]`, row-major, in the training rows' order.
    Cached(&'a [f32]),
    /// The teacher itself, run on every batch as the student sees it (augmented).
    Live(LiveTeacher<'a>),
}

/// Teachers run on the student's batches: each takes one image of the student's shape, and
/// the student's standardised pixels are mapped to each teacher's per channel.
#[derive(Debug, Clone)]
pub struct LiveTeacher<'a> {
    /// The teachers (several: an ensemble), each in inference mode on the device without
    /// autodiff, with its per-channel map: teacher input = student input × scale + shift.
    pub members: Vec<(&'a Network, Vec<f32>, Vec<f32>)>,
}

impl LiveTeacher<'_> {
    /// The teacher's logits for `batch` (an image batch of the student's), row-major, an
    /// ensemble's combined by [`ensemble_logits`]; an error at `step` when one is not finite.
    fn logits(
        &self,
        batch: &HostBatch,
        device: &Device,
        classes: usize,
        temperature: f64,
        step: u64,
    ) -> Result<Vec<f32>, TrainError> {
        let x = batch.x.as_deref().unwrap_or_default();
        let mut members = Vec::with_capacity(self.members.len());
        for (i, (model, scale, shift)) in self.members.iter().enumerate() {
            let plane = batch.width / scale.len().max(1);
            let mut mapped = Vec::with_capacity(x.len());
            for row in x.chunks_exact(batch.width) {
                for (ch, values) in row.chunks_exact(plane).enumerate() {
                    let (a, b) = (scale[ch], shift[ch]);
                    mapped.extend(values.iter().map(|v| v * a + b));
                }
            }
            let inputs = HostBatch {
                rows: batch.rows,
                x: Some(mapped),
                width: batch.width,
                categories: None,
                categories_width: 0,
                tokens: None,
                tokens_width: 0,
                token_windows: 1,
            }
            .into_inputs(device);
            let logits = model
                .forward(inputs)
                .into_data()
                .convert::<f32>()
                .try_to_vec::<f32>()
                .expect("f32 logits");
            if logits.iter().any(|v| !v.is_finite()) {
                return Err(TrainError::Setting {
                    key: "distill.teacher",
                    reason: match self.members.len() {
                        1 => format!("the teacher's output at step {} is not finite", step + 1),
                        n => format!(
                            "the output of teacher {} of {n} at step {} is not finite",
                            i + 1,
                            step + 1
                        ),
                    },
                });
            }
            members.push(logits);
        }
        Ok(ensemble_logits(&members, classes, temperature))
    }
}

/// One teacher's logits from several teachers' (each `[rows, classes]`, row-major): one is
/// returned as it is; several become `T · log(mean_i softmax(z_i / T))`, whose softmax at
/// temperature `T` is the average of the teachers' (the distillation target of an ensemble).
pub fn ensemble_logits(members: &[Vec<f32>], classes: usize, temperature: f64) -> Vec<f32> {
    if let [one] = members {
        return one.clone();
    }
    let Some(first) = members.first() else {
        return Vec::new();
    };
    let k = classes.max(1);
    let mut out = vec![0f32; first.len()];
    let mut mean = vec![0f64; k];
    for (r, row) in out.chunks_exact_mut(k).enumerate() {
        mean.iter_mut().for_each(|m| *m = 0.0);
        for member in members {
            let z = &member[r * k..(r + 1) * k];
            let top = z.iter().fold(f64::NEG_INFINITY, |a, &v| a.max(v as f64));
            let exp: Vec<f64> = z
                .iter()
                .map(|&v| ((v as f64 - top) / temperature).exp())
                .collect();
            let sum: f64 = exp.iter().sum();
            for (m, e) in mean.iter_mut().zip(&exp) {
                *m += e / sum / members.len() as f64;
            }
        }
        for (o, m) in row.iter_mut().zip(&mean) {
            // A class every teacher rules out keeps a finite logit (p · log p must not be NaN).
            *o = (temperature * m.max(f64::MIN_POSITIVE).ln()) as f32;
        }
    }
    out
}

/// The distillation loss of a batch: `alpha · T² · KL(p_teacher ‖ p_student)` at temperature
/// `T`, averaged over rows (PyTorch's `kl_div(reduction = "batchmean")`), plus `1 − alpha`
/// times `hard`, the labels' loss. `teacher_rows` holds the batch's teacher logits.
fn distillation_loss(
    outputs: Tensor<2>,
    hard: Tensor<1>,
    teacher: &TeacherLogits<'_>,
    teacher_rows: Vec<f32>,
    device: &Device,
) -> Tensor<1> {
    let k = teacher.classes;
    let t = teacher.temperature;
    let n = teacher_rows.len() / k.max(1);
    let teacher_logits = Tensor::<2>::from_data(TensorData::new(teacher_rows, [n, k]), device);
    let log_p_teacher = log_softmax(teacher_logits.div_scalar(t), 1);
    let p_teacher = log_p_teacher.clone().exp();
    let log_p_student = log_softmax(outputs.div_scalar(t), 1);
    let kl = (p_teacher * (log_p_teacher - log_p_student))
        .sum_dim(1)
        .mean();
    kl.mul_scalar(teacher.alpha * t * t) + hard.mul_scalar(1.0 - teacher.alpha)
}

/// What a finished run produced.
#[derive(Debug)]
pub struct TrainOutcome {
    /// Final model: the last epoch's, or the best on validation with `trainer.keep_best`.
    pub model: Network,
    /// Epochs completed.
    pub epochs_run: usize,
    /// Optimizer steps taken.
    pub steps: u64,
    /// Whether early stopping ended the run.
    pub stopped_early: bool,
    /// Epoch of the kept model (0-based).
    pub best_epoch: Option<usize>,
    /// Mean training loss of the last epoch.
    pub final_train_loss: f64,
    /// Last validation evaluation.
    pub last_validation: Option<Evaluation>,
    /// Wall-clock seconds of this invocation.
    pub seconds: f64,
    /// The checkpoint step this run resumed from.
    pub resumed_from: Option<u64>,
    /// Parameters the optimizer updated (all of them but a frozen or LoRA-adapted encoder's).
    pub trainable_parameters: usize,
    /// float16 training: the loss scale at the end, and the steps it skipped.
    pub loss_scaler: Option<LossScaler>,
    /// Seconds of optimizer steps in this invocation (validation not included).
    pub step_seconds: f64,
    /// Of `step_seconds`, the time the loop waited for its batches.
    pub data_wait_seconds: f64,
}

/// Resumable trainer state (`trainer_state.json` in a checkpoint).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct TrainerState {
    /// Epoch to continue in.
    epoch: usize,
    /// Step groups of that epoch already done.
    group_in_epoch: usize,
    /// Optimizer steps taken.
    global_step: u64,
    /// Sum and count of this epoch's step losses so far.
    epoch_loss_sum: f64,
    epoch_loss_steps: u64,
    schedule: LrSchedule,
    best: Option<f64>,
    best_epoch: Option<usize>,
    bad_epochs: usize,
    /// float16 training's loss scale (absent in f32 and bf16, and in older checkpoints).
    #[serde(default)]
    loss_scaler: Option<LossScaler>,
    /// A streamed run: the block of the epoch it is in, and the rows of that block taken.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    stream_position: Option<(usize, usize)>,
}

const STEP_STREAM: u64 = 0xD0_0D;
const EPOCH_STREAM: u64 = 0xE9_0C;

/// Loss weight of each class under `trainer.class_weights` (`None`: all equal).
fn class_weights(setting: ClassWeights, target: &Target, classes: usize) -> Option<Vec<f32>> {
    let (ClassWeights::Balanced, Target::Classes(labels)) = (setting, target) else {
        return None;
    };
    let mut counts = vec![0usize; classes];
    for &l in labels {
        counts[l as usize] += 1;
    }
    let n = labels.len() as f64;
    Some(
        counts
            .iter()
            .map(|&c| {
                if c == 0 {
                    0.0
                } else {
                    (n / (classes as f64 * c as f64)) as f32
                }
            })
            .collect(),
    )
}

/// The training loss of a batch: mean cross-entropy (optionally sample-weighted by class) for
/// classes, MSE of standardised values for regression.
pub fn loss_of(
    outputs: Tensor<2>,
    target: &Target,
    idx: &[usize],
    weights: Option<&[f32]>,
    device: &Device,
) -> Tensor<1> {
    match target {
        Target::Classes(labels) => {
            let t: Vec<i64> = idx.iter().map(|&i| labels[i] as i64).collect();
            let t = Tensor::<1, Int>::from_data(TensorData::new(t, [idx.len()]), device)
                .reshape([idx.len(), 1]);
            let nll = log_softmax(outputs, 1).gather(1, t).neg();
            match weights {
                // Sample weights, as scikit-learn: mean of weight × loss, not renormalised
                // per batch, so gradient accumulation sees the same objective.
                Some(w) => {
                    let w: Vec<f32> = idx.iter().map(|&i| w[labels[i] as usize]).collect();
                    let w = Tensor::<2>::from_data(TensorData::new(w, [idx.len(), 1]), device);
                    (nll * w).mean()
                }
                None => nll.mean(),
            }
        }
        Target::Values(values) => {
            let t: Vec<f32> = idx.iter().map(|&i| values[i]).collect();
            let t = Tensor::<2>::from_data(TensorData::new(t, [idx.len(), 1]), device);
            (outputs - t).powi_scalar(2).mean()
        }
    }
}

pub(crate) fn append_jsonl(
    path: &Path,
    value: &impl Serialize,
    kind: &str,
) -> Result<(), TrainError> {
    let mut v = serde_json::to_value(value).expect("record serializes");
    v.as_object_mut()
        .expect("records are objects")
        .insert("kind".into(), kind.into());
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| TrainError::Io {
            path: path.display().to_string(),
            source: e,
        })?;
    writeln!(f, "{v}").map_err(|e| TrainError::Io {
        path: path.display().to_string(),
        source: e,
    })
}

/// Keeps only `metrics.jsonl` records up to `step` (the lines a resumed run will redo go).
pub(crate) fn truncate_metrics(path: &Path, step: u64) -> Result<(), TrainError> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(());
    };
    let kept: String = text
        .lines()
        .filter(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .ok()
                .and_then(|v| v.get("step").and_then(|s| s.as_u64()))
                .is_some_and(|s| s <= step)
        })
        .map(|l| format!("{l}\n"))
        .collect();
    Ok(write_atomic(path, kept.as_bytes())?)
}

/// Batches of similar text length, as HF's `LengthGroupedSampler`: the shuffled `order` is
/// sorted longest first within windows of 50 groups, cut into groups, and the groups are
/// shuffled (the longest group first, so running out of memory shows at once).
fn group_by_length<'a>(
    order: &'a mut [usize],
    lengths: &[usize],
    group: usize,
    rng: &mut SplitMix64,
) -> Vec<&'a [usize]> {
    for window in order.chunks_mut(group * 50) {
        window.sort_by_key(|&r| std::cmp::Reverse(lengths[r]));
    }
    let mut groups: Vec<&[usize]> = order.chunks(group).collect();
    rng.shuffle(&mut groups);
    if let Some(longest) = (0..groups.len()).max_by_key(|&g| lengths[groups[g][0]]) {
        groups.swap(0, longest);
    }
    groups
}

/// The dropout seed of process `rank` for a step whose single-process seed is `seed`: rank 0
/// keeps it, so one process trains exactly as before.
pub(crate) fn rank_seed(seed: u64, rank: usize) -> u64 {
    if rank == 0 {
        seed
    } else {
        SplitMix64::derive(seed, rank as u64).next_u64()
    }
}

/// What every optimizer step of a run shares.
struct StepContext<'a> {
    config: &'a Config,
    device: &'a Device,
    ad: &'a Device,
    rank: usize,
    world: usize,
    local_micro: usize,
    compute_dtype: Option<burn::tensor::FloatDType>,
    weights: Option<&'a [f32]>,
    teacher: Option<&'a TeacherLogits<'a>>,
    metrics_path: &'a Path,
    leader: bool,
}

/// One optimizer step over `rows` of `data` (through `feed`, which hands out `data`'s
/// batches): this process's share in micro-batches, forward, loss, backward, gradients summed
/// over processes, update; the step is recorded in `state`, reported, and logged.
#[allow(clippy::too_many_arguments)]
fn train_group(
    ctx: &StepContext<'_>,
    model: Network,
    optimizer: &mut Optimizer,
    state: &mut TrainerState,
    sync: &mut dyn GradientSync,
    observer: &mut dyn Observer,
    window: &mut (Instant, usize),
    (feed, data): (&mut Feed<'_>, &Encoded),
    rows: &[usize],
    last_in_epoch: bool,
) -> Result<Network, TrainError> {
    let t = &ctx.config.trainer;
    let (device, ad) = (ctx.device, ctx.ad);
    let Some(target) = data.y.as_ref() else {
        return Err(TrainError::NoTarget {
            purpose: "train on",
        });
    };
    let mut seeder = SplitMix64::derive(ctx.config.seed ^ STEP_STREAM, state.global_step);
    device.seed(rank_seed(seeder.next_u64(), ctx.rank));
    kiln_models::ops::keep_workers_ready();
    let mut grads = ParamGrads::default();
    let mut step_loss = 0.0;
    let local_range = kiln_dist::shard(rows.len(), ctx.rank, ctx.world);
    let local_start = local_range.start;
    let local = &rows[local_range];
    if local.is_empty() {
        // Fewer rows than processes in the last step: this one adds nothing.
        for (path, shape) in crate::grads::trainable_parameters(&model) {
            let n = shape.iter().product::<usize>();
            grads.grads.insert(path, Tensor::zeros([n], device));
        }
    }
    for (k, micro_rows) in local.chunks(ctx.local_micro).enumerate() {
        let batch = feed.next(MicroBatch {
            rows: micro_rows.to_vec(),
            step: state.global_step,
            offset: local_start + k * ctx.local_micro,
        });
        let teacher_rows = match ctx.teacher.map(|teacher| &teacher.source) {
            Some(TeacherSource::Cached(logits)) => {
                let k = ctx.teacher.map_or(0, |teacher| teacher.classes);
                Some(
                    micro_rows
                        .iter()
                        .flat_map(|&i| logits[i * k..(i + 1) * k].iter().copied())
                        .collect(),
                )
            }
            Some(TeacherSource::Live(live)) => {
                let teacher = ctx.teacher.expect("a teacher");
                Some(live.logits(
                    &batch,
                    device,
                    teacher.classes,
                    teacher.temperature,
                    state.global_step,
                )?)
            }
            None => None,
        };
        let autocast = Autocast::enter(ctx.compute_dtype);
        let out = model.forward(batch.into_inputs(ad));
        let loss = match (ctx.teacher, teacher_rows) {
            (Some(teacher), Some(rows)) => {
                let hard = loss_of(out.clone(), target, micro_rows, ctx.weights, ad);
                distillation_loss(out, hard, teacher, rows, ad)
            }
            _ => loss_of(out, target, micro_rows, ctx.weights, ad),
        };
        drop(autocast);
        let weight = micro_rows.len() as f64 / rows.len() as f64;
        let loss = loss.mul_scalar(weight);
        step_loss += grads.backward_into(&model, loss, state.loss_scaler.as_ref());
    }
    if !step_loss.is_finite() {
        return Err(TrainError::Diverged {
            step: state.global_step + 1,
            loss: step_loss,
        });
    }
    if ctx.world > 1 {
        step_loss = sync.sum_f64(vec![step_loss])?[0];
    }
    let lr = state.schedule.lr(state.global_step, state.epoch);
    let update = apply_update(
        model,
        grads,
        sync,
        t.grad_clip_norm,
        optimizer,
        lr,
        state.loss_scaler.as_mut(),
    )?;
    state.global_step += 1;
    state.group_in_epoch += 1;
    state.epoch_loss_sum += step_loss;
    state.epoch_loss_steps += 1;
    window.1 += rows.len();
    let record = StepRecord {
        step: state.global_step,
        epoch: state.epoch,
        loss: step_loss,
        lr,
        grad_norm: update.grad_norm,
        samples_per_sec: window.1 as f64 / window.0.elapsed().as_secs_f64().max(1e-9),
        loss_scale: state.loss_scaler.as_ref().map(LossScaler::scale),
        skipped: update.skipped,
    };
    observer.on_step(&record);
    if ctx.leader && (state.global_step.is_multiple_of(t.log_every_steps as u64) || last_in_epoch) {
        append_jsonl(ctx.metrics_path, &record, "step")?;
        *window = (Instant::now(), 0);
    }
    Ok(update.model)
}

/// Trains as configured, from scratch or from `resume`. With several processes
/// ([`GradientSync::world_size`] > 1) each takes its share of every step's rows and of the
/// validation rows; only rank 0 writes `metrics.jsonl` and checkpoints.
pub fn train(
    setup: TrainSetup<'_>,
    resume: Option<LoadedCheckpoint>,
    observer: &mut dyn Observer,
    sync: &mut dyn GradientSync,
) -> Result<TrainOutcome, TrainError> {
    let started = Instant::now();
    let cfg = setup.config;
    let t = &cfg.trainer;
    let device = setup.device.clone().without_autodiff();
    let ad = device.clone().autodiff();
    let train = setup.train;
    let Some(target) = train.y.as_ref() else {
        return Err(TrainError::NoTarget {
            purpose: "train on",
        });
    };
    let train_rows = setup.stream.map_or(train.rows, |s| s.rows());
    if train_rows == 0 {
        return Err(TrainError::NoTrainingRows);
    }
    let micro = match t.batch_size {
        BatchSize::Full => train_rows.div_ceil(t.grad_accum_steps),
        BatchSize::Samples(n) => n.min(train_rows),
    };
    let group = (micro * t.grad_accum_steps).min(train_rows);
    // Data-parallel: every process takes its contiguous share of each step's rows.
    let (world, rank) = (sync.world_size(), sync.rank());
    let leader = rank == 0;
    if let BatchSize::Samples(n) = t.batch_size
        && n % world != 0
    {
        return Err(TrainError::Setting {
            key: "trainer.batch_size",
            reason: format!(
                "{n} does not split evenly over {world} processes; it is the global batch, so \
                 give a multiple of {world}"
            ),
        });
    }
    let local_micro = micro.div_ceil(world);
    let steps_per_epoch = train_rows.div_ceil(group) as u64;
    let total_steps = steps_per_epoch * t.epochs as u64;
    let metrics_path = setup.run_dir.join("metrics.jsonl");
    let checkpoints_dir = setup.run_dir.join("checkpoints");
    let settings = OptimizerSettings::from(t);
    let higher = kiln_config::monitor_higher_is_better(&t.monitor);

    device.seed(cfg.seed);
    let (mut model, mut optimizer, mut state, mut best_model, resumed_from) = match &resume {
        None => {
            if leader {
                let _ = std::fs::remove_file(&metrics_path);
            }
            let model = match setup.initial_model {
                Some(model) => model,
                None => kiln_models::device::build_seeded(&ad, cfg.seed, |ad| {
                    Network::new(setup.spec, ad)
                }),
            }
            .frozen_as(setup.spec);
            // Every process starts from rank 0's weights, as DDP broadcasts them.
            let model = match world {
                1 => model,
                _ => {
                    let bytes = sync.broadcast(model_to_bytes(&model)?)?;
                    model_from_bytes(setup.spec, &bytes, &ad, "rank 0's initial weights")?
                        .frozen_as(setup.spec)
                }
            };
            let state = TrainerState {
                epoch: 0,
                group_in_epoch: 0,
                global_step: 0,
                epoch_loss_sum: 0.0,
                epoch_loss_steps: 0,
                schedule: LrSchedule::new(t, total_steps),
                best: None,
                best_epoch: None,
                bad_epochs: 0,
                loss_scaler: None,
                stream_position: None,
            };
            (model, Optimizer::new(settings), state, None, None)
        }
        Some(ckpt) => {
            let origin = ckpt.dir.display().to_string();
            let model =
                model_from_bytes(setup.spec, ckpt.file("model.safetensors")?, &ad, &origin)?
                    .frozen_as(setup.spec);
            let optimizer = optimizer_from_bytes(settings, ckpt.file(OPTIMIZER_FILE)?, &device)
                .map_err(|p| TrainError::checkpoint(&ckpt.dir, p))?;
            let state: TrainerState = serde_json::from_slice(ckpt.file("trainer_state.json")?)
                .map_err(|e| {
                    TrainError::checkpoint(
                        &ckpt.dir,
                        CheckpointError::Contents {
                            file: "trainer_state.json".into(),
                            detail: e.to_string(),
                        },
                    )
                })?;
            let best = match ckpt.files.get("best_model.safetensors") {
                Some(bytes) => Some(model_from_bytes(setup.spec, bytes, &device, &origin)?),
                None => None,
            };
            if leader {
                truncate_metrics(&metrics_path, state.global_step)?;
            }
            let mut state = state;
            state.schedule.set_total_steps(total_steps);
            (model, optimizer, state, best, Some(ckpt.step))
        }
    };

    state.loss_scaler = LossScaler::carried(t.precision, state.loss_scaler.take());
    let compute_dtype = crate::precision::compute_dtype(t.precision);

    let pretrained_layers = match (&setup.spec.pretrained, &setup.spec.text) {
        (Some(p), _) => Some(p.bert.num_hidden_layers),
        (None, Some(t)) if cfg.model.pretrained.is_some() => Some(t.layers),
        _ => None,
    };
    if let Some(layers) = pretrained_layers {
        optimizer = optimizer.with_layerwise_lr(LayerwiseLr {
            layers,
            decay: t.layer_lr_decay,
            head: t.head_lr.map(|h| h / t.lr).unwrap_or(1.0),
        });
    }
    let parameters = crate::grads::parameter_count(&model);
    let trainable_parameters = crate::grads::trainable_parameters(&model)
        .iter()
        .map(|(_, shape)| shape.iter().product::<usize>())
        .sum();
    observer.on_start(&StartInfo {
        total_steps,
        steps_done: state.global_step,
        steps_per_epoch,
        train_rows,
        parameters,
    });

    let save_checkpoint = |model: &Network,
                           optimizer: &Optimizer,
                           state: &TrainerState,
                           best_model: &Option<Network>|
     -> Result<Option<PathBuf>, TrainError> {
        if !leader {
            return Ok(None);
        }
        let mut files = vec![
            // `valid()` first: batch norm's running statistics hold their latest update
            // apart until synchronised, and a record taken without it lacks that update.
            ("model.safetensors", model_to_bytes(&model.valid())?),
            (OPTIMIZER_FILE, optimizer_to_bytes(optimizer)?),
            (
                "trainer_state.json",
                serde_json::to_vec_pretty(state).expect("state serializes"),
            ),
        ];
        if let Some(best) = best_model {
            files.push(("best_model.safetensors", model_to_bytes(best)?));
        }
        write_checkpoint(&checkpoints_dir, state.global_step, &files).map(Some)
    };

    let augmenter =
        kiln_data::ImageAugmenter::new(&cfg.data.augment, setup.preprocessor).map_err(|e| {
            TrainError::Setting {
                key: "data.augment",
                reason: e.to_string(),
            }
        })?;
    let (mut step_seconds, mut data_wait_seconds) = (0.0, 0.0);
    let text_lengths = (train.seq_len > 0 && t.group_by_length).then(|| train.text_lengths());
    let weights = class_weights(t.class_weights, target, setup.preprocessor.num_outputs());
    // A run that early stopping ended stays ended, unless resumed with a larger patience.
    let mut stopped_early =
        t.early_stopping_patience > 0 && state.bad_epochs >= t.early_stopping_patience;
    let mut last_validation = None;
    let mut final_train_loss = f64::NAN;
    let mut epochs_run = state.epoch;
    let mut window = (Instant::now(), 0usize);
    let ctx = StepContext {
        config: cfg,
        device: &device,
        ad: &ad,
        rank,
        world,
        local_micro,
        compute_dtype,
        weights: weights.as_deref(),
        teacher: setup.teacher.as_ref(),
        metrics_path: &metrics_path,
        leader,
    };
    let checkpoint_due = |state: &TrainerState, last_in_epoch: bool| {
        t.checkpoint_every_steps > 0
            && state
                .global_step
                .is_multiple_of(t.checkpoint_every_steps as u64)
            && !last_in_epoch
    };
    while !stopped_early && state.epoch < t.epochs {
        let epoch = state.epoch;
        let epoch_started = Instant::now();
        let steps_started = Instant::now();
        let mut epoch_wait = Duration::ZERO;
        // Where the epoch resumes: its step groups done, the step, a stream's position.
        let (groups_done, step_at_start, stream_position) = (
            state.group_in_epoch,
            state.global_step,
            state.stream_position,
        );
        // One optimizer step over `rows` of `data`, then a checkpoint when one is due; a
        // streamed run's position after the step is `position`.
        let mut take_step = |model: Network,
                             feed: &mut Feed<'_>,
                             data: &Encoded,
                             rows: &[usize],
                             last_in_epoch: bool,
                             position: Option<(usize, usize)>|
         -> Result<Network, TrainError> {
            let model = train_group(
                &ctx,
                model,
                &mut optimizer,
                &mut state,
                sync,
                observer,
                &mut window,
                (feed, data),
                rows,
                last_in_epoch,
            )?;
            if position.is_some() {
                state.stream_position = position;
            }
            if checkpoint_due(&state, last_in_epoch)
                && let Some(dir) = save_checkpoint(&model, &optimizer, &state, &best_model)?
            {
                observer.on_event(&format!("checkpoint {}", dir.display()));
            }
            Ok(model)
        };
        model = match setup.stream {
            None => {
                let mut order: Vec<usize> = (0..train.rows).collect();
                let mut rng = SplitMix64::derive(cfg.seed ^ EPOCH_STREAM, epoch as u64);
                if t.batch_size != BatchSize::Full {
                    rng.shuffle(&mut order);
                }
                let groups: Vec<&[usize]> = match &text_lengths {
                    Some(lengths) if t.batch_size != BatchSize::Full => {
                        group_by_length(&mut order, lengths, group, &mut rng)
                    }
                    _ => order.chunks(group).collect(),
                };
                // Every micro-batch of the rest of the epoch, in the order the loop takes
                // them: what a batch thread makes ahead (none without one).
                let jobs: Vec<MicroBatch> = groups
                    .iter()
                    .take(if augmenter.is_some() { groups.len() } else { 0 })
                    .enumerate()
                    .skip(groups_done)
                    .flat_map(|(gi, rows)| {
                        let step = step_at_start + (gi - groups_done) as u64;
                        let local = kiln_dist::shard(rows.len(), rank, world);
                        let start = local.start;
                        rows[local]
                            .chunks(local_micro)
                            .enumerate()
                            .map(move |(k, chunk)| MicroBatch {
                                rows: chunk.to_vec(),
                                step,
                                offset: start + k * local_micro,
                            })
                    })
                    .collect();
                std::thread::scope(|scope| -> Result<Network, TrainError> {
                    let mut model = model;
                    let mut feed = Feed::new(scope, train, augmenter.as_ref(), cfg.seed, jobs);
                    for (gi, rows) in groups.iter().enumerate().skip(groups_done) {
                        let last_in_epoch = gi + 1 == groups.len();
                        model = take_step(model, &mut feed, train, rows, last_in_epoch, None)?;
                    }
                    epoch_wait = feed.waited;
                    Ok(model)
                })?
            }
            Some(stream) => {
                let blocks = stream.blocks(epoch);
                let (first_block, first_skip) = stream_position.unwrap_or((0, 0));
                std::thread::scope(|scope| -> Result<Network, TrainError> {
                    // The next block is read and encoded while this one trains, and handed
                    // over when the loop asks for it (two blocks in memory at most).
                    let (sender, receiver) = sync_channel(0);
                    let blocks = &blocks;
                    std::thread::Builder::new()
                        .name("kiln-blocks".into())
                        .spawn_scoped(scope, move || {
                            for (b, shards) in blocks.iter().enumerate().skip(first_block) {
                                let read = stream.read_block(epoch, b, shards);
                                let failed = read.is_err();
                                if sender.send(read).is_err() || failed {
                                    return;
                                }
                            }
                        })
                        .expect("spawn the block thread");
                    let mut model = model;
                    // Rows of a block that did not fill a step, taken first in the next one.
                    let mut carried: Option<Encoded> = None;
                    // Steps of the epoch taken: the last is the epoch's last (a trailing block
                    // may hold no training rows).
                    let mut taken = groups_done as u64;
                    for b in first_block..blocks.len() {
                        let waiting = Instant::now();
                        let block = receiver.recv().expect("the block thread ended early")?;
                        epoch_wait += waiting.elapsed();
                        let last_block = b + 1 == blocks.len();
                        // The next row of the block to train on.
                        let mut start = if b == first_block {
                            first_skip.min(block.rows)
                        } else {
                            0
                        };
                        if let Some(mut step_rows) = carried.take() {
                            let need = (group - step_rows.rows).min(block.rows - start);
                            let topping: Vec<usize> = (start..start + need).collect();
                            step_rows.append(block.select(&topping), 0)?;
                            start += need;
                            let rows_left = !(last_block && start == block.rows);
                            if step_rows.rows < group && rows_left {
                                carried = Some(step_rows); // a block smaller than a step
                                continue;
                            }
                            taken += 1;
                            let last_in_epoch = taken == steps_per_epoch;
                            let all: Vec<usize> = (0..step_rows.rows).collect();
                            let mut feed = Feed::inline(&step_rows, cfg.seed);
                            let position = Some((b, start));
                            model = take_step(
                                model,
                                &mut feed,
                                &step_rows,
                                &all,
                                last_in_epoch,
                                position,
                            )?;
                            epoch_wait += feed.waited;
                        }
                        let end = match last_block {
                            true => block.rows,
                            false => start + (block.rows - start) / group * group,
                        };
                        let order: Vec<usize> = (start..block.rows).collect();
                        let mut feed = Feed::inline(&block, cfg.seed);
                        for (k, rows) in order[..end - start].chunks(group).enumerate() {
                            let done = start + k * group + rows.len();
                            taken += 1;
                            let last_in_epoch = taken == steps_per_epoch;
                            let position = Some((b, done));
                            model =
                                take_step(model, &mut feed, &block, rows, last_in_epoch, position)?;
                        }
                        epoch_wait += feed.waited;
                        if end < block.rows {
                            carried = Some(block.select(&order[end - start..]));
                        }
                    }
                    Ok(model)
                })?
            }
        };
        let epoch_steps = steps_started.elapsed().as_secs_f64();
        step_seconds += epoch_steps;
        data_wait_seconds += epoch_wait.as_secs_f64();
        // End of epoch: validate, schedule, early stopping, best model.
        if world > 1 {
            // Parameters agree on every rank, buffers (batch-norm running statistics) do not:
            // every rank takes rank 0's, as DDP's `broadcast_buffers`, so validation, the kept
            // model and a resumed run see the same network.
            let bytes = sync.broadcast(model_to_bytes(&model.valid())?)?;
            if !leader {
                model = model_from_bytes(setup.spec, &bytes, &ad, "rank 0's weights")?
                    .frozen_as(setup.spec);
            }
        }
        let train_loss = state.epoch_loss_sum / state.epoch_loss_steps.max(1) as f64;
        final_train_loss = train_loss;
        let mut improved = false;
        let validation = match setup.validation {
            Some(v) if v.rows > 0 => {
                let eval = evaluate_sharded(&model, v, setup.preprocessor, &device, sync)?;
                let value = eval
                    .metric(&t.monitor)
                    .ok_or_else(|| TrainError::UnknownMonitor {
                        monitor: t.monitor.clone(),
                    })?;
                if state.schedule.observe(value) {
                    observer.on_event(&format!(
                        "epoch {}: {} plateaued, learning rate reduced",
                        epoch + 1,
                        t.monitor
                    ));
                }
                improved = match state.best {
                    None => true,
                    Some(b) => {
                        if higher {
                            value > b
                        } else {
                            value < b
                        }
                    }
                };
                if improved {
                    state.best = Some(value);
                    state.best_epoch = Some(epoch);
                    state.bad_epochs = 0;
                    best_model = Some(model.valid());
                } else {
                    state.bad_epochs += 1;
                }
                let summary = eval.summary();
                last_validation = Some(eval);
                Some(summary)
            }
            _ => None,
        };
        let record = EpochRecord {
            epoch,
            step: state.global_step,
            train_loss,
            validation,
            lr: state.schedule.lr(state.global_step, epoch + 1),
            seconds: epoch_started.elapsed().as_secs_f64(),
            step_seconds: epoch_steps,
            data_wait_seconds: epoch_wait.as_secs_f64(),
            improved,
        };
        if leader {
            append_jsonl(&metrics_path, &record, "epoch")?;
        }
        observer.on_epoch(&record);
        state.epoch += 1;
        state.group_in_epoch = 0;
        state.stream_position = None;
        state.epoch_loss_sum = 0.0;
        state.epoch_loss_steps = 0;
        epochs_run = state.epoch;
        if t.early_stopping_patience > 0 && state.bad_epochs >= t.early_stopping_patience {
            stopped_early = true;
            observer.on_event(&format!(
                "early stopping after epoch {}: no {} improvement for {} epochs",
                epoch + 1,
                t.monitor,
                t.early_stopping_patience
            ));
        }
        save_checkpoint(&model, &optimizer, &state, &best_model)?;
        if stopped_early {
            break;
        }
    }
    let best_epoch = state.best_epoch;
    let model = match best_model {
        Some(best) if t.keep_best => best,
        _ => model.valid(),
    };
    let best_epoch = if t.keep_best {
        best_epoch
    } else {
        epochs_run.checked_sub(1)
    };
    Ok(TrainOutcome {
        model,
        epochs_run,
        steps: state.global_step,
        stopped_early,
        best_epoch,
        final_train_loss,
        last_validation,
        seconds: started.elapsed().as_secs_f64(),
        resumed_from,
        trainable_parameters,
        loss_scaler: state.loss_scaler,
        step_seconds,
        data_wait_seconds,
    })
}
