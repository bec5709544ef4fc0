//! Autoregressive sampling from a [`Gpt`]: temperature, top-k, top-p (nucleus), seeded, with
//! or without the key/value cache.

use burn::module::Module;
use burn::prelude::{Device, Int, Tensor, TensorData};
use kiln_rng::SplitMix64;

use crate::gpt::{Gpt, KvCache};

/// Sampling settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplingConfig {
    /// Softmax temperature; 0 means greedy (arg-max).
    pub temperature: f64,
    /// Keep only the `k` most likely tokens (0 = all).
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probability reaches `p` (1.0 = all).
    pub top_p: f64,
    /// Seed of the sampling stream.
    pub seed: u64,
    /// Use the key/value cache.
    pub use_cache: bool,
}

impl Default for SamplingConfig {
    fn default() -> Self {
        Self {
            temperature: 0.8,
            top_k: 0,
            top_p: 1.0,
            seed: 1337,
            use_cache: true,
        }
    }
}

impl SamplingConfig {
    /// Checks the settings: a finite temperature >= 0 and a top-p in (0, 1]. NaN or a
    /// negative temperature would otherwise sample from NaN probabilities.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return Err(format!(
                "temperature must be a finite number >= 0 (0 = greedy), got {}",
                self.temperature
            ));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(format!("top_p must be in (0, 1], got {}", self.top_p));
        }
        Ok(())
    }
}

/// Picks the next token from `logits` of one position.
pub fn sample(logits: &[f32], cfg: &SamplingConfig, rng: &mut SplitMix64) -> u32 {
    if cfg.temperature <= 0.0 {
        return logits
            .iter()
            .enumerate()
            .fold(0, |b, (i, &v)| if v > logits[b] { i } else { b }) as u32;
    }
    if cfg.top_k == 0 && cfg.top_p >= 1.0 {
        // Plain temperature sampling: no need to sort the vocabulary.
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        let weights: Vec<f64> = logits
            .iter()
            .map(|&l| ((l as f64 - max) / cfg.temperature).exp())
            .collect();
        let total: f64 = weights.iter().sum();
        let u = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64 * total;
        let mut acc = 0.0;
        for (i, w) in weights.iter().enumerate() {
            acc += w;
            if u < acc {
                return i as u32;
            }
        }
        return (logits.len() - 1) as u32;
    }
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
    if cfg.top_k > 0 {
        order.truncate(cfg.top_k);
    }
    let max = logits[order[0]] as f64;
    let mut probs: Vec<f64> = order
        .iter()
        .map(|&i| ((logits[i] as f64 - max) / cfg.temperature).exp())
        .collect();
    let sum: f64 = probs.iter().sum();
    probs.iter_mut().for_each(|p| *p /= sum);
    if cfg.top_p < 1.0 {
        let mut acc = 0.0;
        let keep = probs.iter().position(|p| {
            acc += p;
            acc >= cfg.top_p
        });
        let keep = keep.map(|i| i + 1).unwrap_or(probs.len());
        order.truncate(keep);
        probs.truncate(keep);
        let s: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|p| *p /= s);
    }
    let u = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
    let mut acc = 0.0;
    for (i, p) in probs.iter().enumerate() {
        acc += p;
        if u < acc {
            return order[i] as u32;
        }
    }
    order[order.len() - 1] as u32
}

fn last_logits(logits: Tensor<3>) -> Vec<f32> {
    let [_, t, v] = logits.dims();
    logits
        .narrow(1, t - 1, 1)
        .reshape([v])
        .into_data()
        .convert::<f32>()
        .try_to_vec()
        .expect("f32 logits")
}

fn ids_tensor(ids: &[u32], device: &Device) -> Tensor<2, Int> {
    let v: Vec<i64> = ids.iter().map(|&i| i as i64).collect();
    Tensor::<2, Int>::from_data(TensorData::new(v, [1, ids.len()]), device)
}

/// Generates `max_new` tokens after `prompt` (which must fit the context). When the window
/// would exceed the context length it slides: it restarts from the last half context of
/// tokens (the cache is rebuilt from them), the same with and without the cache. `on_token` sees each new token as it is made (for streaming)
/// and stops the generation early by returning `ControlFlow::Break` (a streaming client left).
pub fn generate(
    model: &Gpt,
    prompt: &[u32],
    max_new: usize,
    cfg: &SamplingConfig,
    device: &Device,
    mut on_token: impl FnMut(u32) -> std::ops::ControlFlow<()>,
) -> Vec<u32> {
    let model = model.valid();
    let context = model.context();
    assert!(
        !prompt.is_empty() && prompt.len() <= context,
        "prompt length must be in 1..=context"
    );
    let mut rng = SplitMix64::derive(cfg.seed, 0x6E4E);
    let mut tokens = prompt.to_vec();
    let mut cache = KvCache::new();
    let mut logits = if cfg.use_cache {
        last_logits(model.forward_cached(ids_tensor(&tokens, device), &mut cache))
    } else {
        last_logits(model.forward(ids_tensor(&tokens, device)))
    };
    // Both paths see the same window: tokens[start..]. When it would exceed the context it
    // restarts from the last half context of tokens, so cached and uncached decoding agree.
    let mut start = 0;
    for _ in 0..max_new {
        crate::ops::keep_workers_ready();
        let next = sample(&logits, cfg, &mut rng);
        tokens.push(next);
        if on_token(next).is_break() {
            break;
        }
        let slide = tokens.len() - start > context;
        if slide {
            start = tokens.len() - context / 2;
        }
        logits = if !cfg.use_cache {
            last_logits(model.forward(ids_tensor(&tokens[start..], device)))
        } else if slide {
            cache = KvCache::new();
            last_logits(model.forward_cached(ids_tensor(&tokens[start..], device), &mut cache))
        } else {
            last_logits(model.forward_cached(ids_tensor(&[next], device), &mut cache))
        };
    }
    tokens[prompt.len()..].to_vec()
}
