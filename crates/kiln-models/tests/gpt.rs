//! GPT: causal masking, and cached decoding equal to uncached decoding.

mod common;

use burn::prelude::{Device, Int, Tensor, TensorData};
use common::max_diff;
use kiln_models::{Gpt, GptConfig, KvCache};

fn config(tied: bool) -> GptConfig {
    GptConfig {
        vocab_size: 37,
        context: 32,
        layers: 2,
        heads: 4,
        embd: 32,
        dropout: 0.0,
        bias: true,
        tied_head: tied,
    }
}

fn ids(v: &[i64], device: &Device) -> Tensor<2, Int> {
    Tensor::<2, Int>::from_data(TensorData::new(v.to_vec(), [1, v.len()]), device)
}

fn row(t: Tensor<3>, pos: usize) -> Vec<f32> {
    let [_, _, v] = t.dims();
    t.narrow(1, pos, 1)
        .reshape([v])
        .into_data()
        .convert::<f32>()
        .try_to_vec()
        .unwrap()
}

#[test]
fn future_tokens_do_not_change_past_logits() {
    let device = Device::flex();
    device.seed(1);
    let gpt = Gpt::new(&config(false), &device);
    let a = gpt.forward(ids(&[1, 2, 3, 4, 5, 6], &device));
    let b = gpt.forward(ids(&[1, 2, 3, 9, 9, 9], &device));
    for pos in 0..3 {
        assert!(
            max_diff(&row(a.clone(), pos), &row(b.clone(), pos)) < 1e-6,
            "position {pos} saw the future"
        );
    }
    assert!(
        max_diff(&row(a, 3), &row(b, 3)) > 1e-4,
        "position 3 sees its own token"
    );
}

#[test]
fn cached_decoding_matches_uncached_logits() {
    for tied in [false, true] {
        let device = Device::flex();
        device.seed(2);
        let gpt = Gpt::new(&config(tied), &device);
        let tokens: Vec<i64> = (0..24).map(|i| (i * 7 + 3) % 37).collect();
        let prompt = 10;
        let mut cache = KvCache::new();
        // Prompt in one cached pass, then one token at a time.
        let first = gpt.forward_cached(ids(&tokens[..prompt], &device), &mut cache);
        let full = gpt.forward(ids(&tokens[..prompt], &device));
        for pos in 0..prompt {
            assert!(max_diff(&row(first.clone(), pos), &row(full.clone(), pos)) < 1e-4);
        }
        for t in prompt..tokens.len() {
            let step = gpt.forward_cached(ids(&tokens[t..t + 1], &device), &mut cache);
            let full = gpt.forward(ids(&tokens[..t + 1], &device));
            let d = max_diff(&row(step, 0), &row(full, t));
            assert!(
                d < 1e-4,
                "tied={tied} position {t}: cached and uncached logits differ by {d}"
            );
        }
        assert_eq!(cache.len(), tokens.len());
    }
}

#[test]
fn config_validation() {
    let mut c = config(false);
    c.heads = 5;
    assert!(c.validate().unwrap_err().to_string().contains("divisible"));
}

#[test]
fn sampling_respects_temperature_top_k_and_top_p() {
    use kiln_models::{SamplingConfig, sample};
    use kiln_rng::SplitMix64;
    let logits = [0.0f32, 3.0, 1.0, 2.9, -1.0];
    let greedy = SamplingConfig {
        temperature: 0.0,
        ..SamplingConfig::default()
    };
    assert_eq!(sample(&logits, &greedy, &mut SplitMix64::new(1)), 1);
    let top2 = SamplingConfig {
        temperature: 1.0,
        top_k: 2,
        ..SamplingConfig::default()
    };
    let mut rng = SplitMix64::new(2);
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..500 {
        seen.insert(sample(&logits, &top2, &mut rng));
    }
    assert_eq!(
        seen.into_iter().collect::<Vec<_>>(),
        vec![1, 3],
        "top-k keeps the two best"
    );
    // Probabilities (T = 1): 1 → 0.47, 3 → 0.43: top_p = 0.4 keeps token 1 alone.
    let nucleus = SamplingConfig {
        temperature: 1.0,
        top_p: 0.4,
        ..SamplingConfig::default()
    };
    for seed in 0..50 {
        assert_eq!(sample(&logits, &nucleus, &mut SplitMix64::new(seed)), 1);
    }
    // Plain sampling visits every token and follows the softmax roughly.
    let plain = SamplingConfig {
        temperature: 1.0,
        ..SamplingConfig::default()
    };
    let mut counts = [0usize; 5];
    let mut rng = SplitMix64::new(3);
    for _ in 0..20_000 {
        counts[sample(&logits, &plain, &mut rng) as usize] += 1;
    }
    let share = counts[1] as f64 / 20_000.0;
    assert!((share - 0.47).abs() < 0.03, "token 1 share {share}");
    assert!(counts.iter().all(|&c| c > 0));
}

/// Inference runs the backend's fused causal attention; training runs the op-by-op form
/// whose backward Burn derives. Both give the same logits, prompt and cached decoding alike.
#[test]
fn fused_inference_attention_matches_the_training_form() {
    use burn::module::Module;
    let device = Device::flex();
    let ad = device.clone().autodiff();
    device.seed(3);
    let gpt = Gpt::new(&config(true), &ad);
    let prompt = [3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5];
    let training_form = gpt.forward(ids(&prompt, &ad));
    assert!(training_form.is_autodiff());
    let inference = gpt.valid();
    let fused = inference.forward(ids(&prompt, &device));
    assert!(!fused.is_autodiff());
    for pos in 0..prompt.len() {
        let d = max_diff(&row(training_form.clone(), pos), &row(fused.clone(), pos));
        assert!(d < 1e-5, "position {pos}: fused attention differs by {d}");
    }
    // A cached continuation: 3 new positions attending to 8 cached ones.
    let mut cache = KvCache::default();
    let _ = inference.forward_cached(ids(&prompt[..8], &device), &mut cache);
    let tail = inference.forward_cached(ids(&prompt[8..], &device), &mut cache);
    for i in 0..3 {
        let d = max_diff(&row(training_form.clone(), 8 + i), &row(tail.clone(), i));
        assert!(d < 1e-5, "cached position {}: differs by {d}", 8 + i);
    }
}
