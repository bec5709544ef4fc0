//! What a training run will need in memory, checked before anything is allocated.
//!
//! The estimate counts the weights, their gradients and the optimizer's state (one or two
//! moments), and the activations a step keeps for its backward pass. It is deliberately
//! rough (within a small factor): its job is to turn "memory allocation of 40000000000
//! bytes failed" into a message that says which setting to shrink, not to predict RSS.

use kiln_config::{Config, OptimizerKind};
use kiln_models::{GptConfig, ModelSpec};

use crate::{KilnError, Result};

/// f32 values.
const F32: u64 = 4;

/// Bytes of memory the OS can still give this process (`MemAvailable`), where it says.
pub fn available_bytes() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Bytes of memory of the machine (`MemTotal`), where it says.
pub fn total_bytes() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Copies of the parameters a training step holds: weights, gradients, the accumulated
/// gradient, and the optimizer's moments.
fn parameter_copies(config: &Config) -> u64 {
    3 + match config.trainer.optimizer {
        OptimizerKind::Adam | OptimizerKind::Adamw => 2,
        OptimizerKind::Sgd => u64::from(config.trainer.momentum > 0.0),
        _ => 1,
    }
}

/// A training run's estimated memory, in words for the error message.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Estimate {
    /// Trainable parameters.
    pub parameters: u64,
    /// Bytes for parameters, gradients and optimizer state.
    pub parameter_bytes: u64,
    /// Bytes of activations of one micro-batch, forward and backward.
    pub activation_bytes: u64,
}

impl Estimate {
    /// Total bytes.
    pub fn total(&self) -> u64 {
        self.parameter_bytes.saturating_add(self.activation_bytes)
    }
}

/// The estimate for a tabular, image or text-classifier network of `parameters` parameters
/// trained in batches of `batch` rows.
pub fn network_estimate(
    config: &Config,
    spec: &ModelSpec,
    parameters: u64,
    batch: u64,
) -> Estimate {
    // Per row: every layer's output, kept for the backward, with its gradient and (for
    // dropout / batch norm) a mask or normalised copy.
    let mut per_row: u64 = spec.input.size() as u64 + spec.outputs as u64;
    per_row += spec.hidden.iter().map(|&h| h as u64).sum::<u64>();
    if !spec.conv.is_empty()
        && let kiln_data::InputShape::Image { height, width, .. } = spec.input
    {
        let (mut h, mut w) = (height as u64, width as u64);
        for c in &spec.conv {
            let (ph, pw) = (h + 2 * c.padding as u64, w + 2 * c.padding as u64);
            h = ph.saturating_sub(c.kernel as u64) / c.stride.max(1) as u64 + 1;
            w = pw.saturating_sub(c.kernel as u64) / c.stride.max(1) as u64 + 1;
            per_row = per_row.saturating_add(c.filters as u64 * h * w * 2);
            if c.pool > 1 {
                h /= c.pool as u64;
                w /= c.pool as u64;
            }
        }
    }
    // A text read in windows is that many sequences.
    let windows = config.text.windows.max(1) as u64;
    if let Some(t) = &spec.text {
        let (tokens, embd, heads) = (t.max_tokens as u64, t.embd as u64, t.heads as u64);
        // Per block: LayerNorms, qkv, attention output, MLP (4x), residuals; and the
        // attention probabilities, [heads, T, T].
        let block = tokens
            .saturating_mul(embd)
            .saturating_mul(12)
            .saturating_add(tokens.saturating_mul(tokens).saturating_mul(heads));
        per_row = per_row.saturating_add(
            (t.layers as u64)
                .saturating_mul(block)
                .saturating_mul(windows),
        );
    }
    if let Some(p) = &spec.pretrained {
        let b = &p.bert;
        let tokens = config.model.context.min(b.max_position_embeddings) as u64;
        let (embd, heads, ff) = (
            b.hidden_size as u64,
            b.num_attention_heads as u64,
            b.intermediate_size as u64,
        );
        let block = tokens
            .saturating_mul(embd.saturating_mul(8).saturating_add(ff.saturating_mul(2)))
            .saturating_add(tokens.saturating_mul(tokens).saturating_mul(heads));
        per_row = per_row.saturating_add(
            (b.num_hidden_layers as u64)
                .saturating_mul(block)
                .saturating_mul(windows),
        );
    }
    Estimate {
        parameters,
        parameter_bytes: parameters.saturating_mul(F32 * parameter_copies(config)),
        activation_bytes: batch
            .saturating_mul(per_row.saturating_mul(3))
            .saturating_mul(F32),
    }
}

/// The estimate for a GPT of `parameters` parameters trained on `batch` windows.
pub fn gpt_estimate(config: &Config, gpt: &GptConfig, parameters: u64, batch: u64) -> Estimate {
    let (t, c, v) = (gpt.context as u64, gpt.embd as u64, gpt.vocab_size as u64);
    let block = t
        .saturating_mul(c)
        .saturating_mul(16)
        .saturating_add(t.saturating_mul(t).saturating_mul(gpt.heads as u64));
    let per_window = (gpt.layers as u64)
        .saturating_mul(block)
        .saturating_add(t.saturating_mul(v).saturating_mul(3));
    Estimate {
        parameters,
        parameter_bytes: parameters.saturating_mul(F32 * parameter_copies(config)),
        activation_bytes: batch.saturating_mul(per_window).saturating_mul(F32),
    }
}

fn gib(bytes: u64) -> f64 {
    bytes as f64 / (1u64 << 30) as f64
}

/// The error for training that ran out of memory on `device` (the runtime said `runtime`):
/// the estimate, and what to change.
pub fn out_of_memory(device: &str, runtime: &str, estimate: &Estimate, shrink: &str) -> KilnError {
    KilnError::Invalid(format!(
        "out of memory on {device} while training ({runtime}): this model needs about {:.1} GiB \
         ({} parameters: {:.1} GiB with gradients and optimizer state; activations {:.1} GiB per \
         batch); make trainer.batch_size smaller (trainer.grad_accum_steps keeps the effective \
         batch), train with --precision f16-mixed, or make {shrink} smaller",
        gib(estimate.total()),
        estimate.parameters,
        gib(estimate.parameter_bytes),
        gib(estimate.activation_bytes),
    ))
}

/// Runs `train` on `device`; on a GPU, a runtime's out-of-memory panic becomes
/// [`out_of_memory`]'s error.
pub(crate) fn guard_device_memory<R>(
    device: &burn::prelude::Device,
    described: &str,
    estimate: &Estimate,
    shrink: &str,
    train: impl FnOnce() -> Result<R>,
) -> Result<R> {
    if kiln_models::ops::on_flex(device) {
        return train();
    }
    kiln_models::device::catch_out_of_memory(train)
        .unwrap_or_else(|runtime| Err(out_of_memory(described, &runtime, estimate, shrink)))
}

/// Refuses a run whose estimate exceeds the memory available now, naming what to shrink.
pub fn check_fits(estimate: &Estimate, shrink: &str) -> Result<()> {
    let Some(available) = available_bytes() else {
        return Ok(());
    };
    if estimate.total() <= available {
        return Ok(());
    }
    Err(KilnError::Invalid(format!(
        "this model needs about {:.1} GiB to train ({} parameters: {:.1} GiB with gradients and optimizer state; activations {:.1} GiB per batch) but {:.1} GiB of memory are available: make {shrink} smaller",
        gib(estimate.total()),
        estimate.parameters,
        gib(estimate.parameter_bytes),
        gib(estimate.activation_bytes),
        gib(available)
    )))
}
