//! Language-model runs: loading a GPT with its tokenizer (checked against each other and
//! the weights file), and sampling a continuation that streams whole characters.

use std::path::Path;
use std::time::Instant;

use kiln_models::{Gpt, GptConfig, SamplingConfig};
use kiln_text::TextTokenizer;
use serde::Serialize;

use crate::run::{self, files, lm_files};
use crate::{RuntimeError, device_for};

type Result<T> = std::result::Result<T, RuntimeError>;

fn text_err(e: kiln_text::TextError) -> RuntimeError {
    RuntimeError::Invalid(e.to_string())
}

/// What `kiln generate` produced.
#[derive(Debug, Serialize)]
pub struct Generation {
    /// The prompt.
    pub prompt: String,
    /// The generated continuation.
    pub text: String,
    /// Tokens generated.
    pub new_tokens: usize,
    /// Prompt tokens.
    pub prompt_tokens: usize,
    /// Prompt characters the tokenizer did not know (mapped to `<unk>`).
    pub unknown_prompt_tokens: usize,
    /// Generation speed.
    pub tokens_per_second: f64,
    /// Seconds.
    pub seconds: f64,
}

/// Loads a language-model run (model, tokenizer) for generation.
pub fn load_lm(run_dir: &Path) -> Result<(Gpt, TextTokenizer, burn::prelude::Device)> {
    let config = kiln_config::load(&run_dir.join(files::CONFIG), &[])?;
    load_lm_on(run_dir, device_for(&config)?)
}

/// [`load_lm`] onto `device`, whatever device the run names (export reads weights on the CPU).
pub fn load_lm_on(
    run_dir: &Path,
    device: burn::prelude::Device,
) -> Result<(Gpt, TextTokenizer, burn::prelude::Device)> {
    crate::fs::remove_stale_temporaries(run_dir);
    let gpt: GptConfig = run::read_json(&run_dir.join(files::MODEL_SPEC))?;
    gpt.validate().map_err(|source| RuntimeError::Spec {
        file: run_dir.join(files::MODEL_SPEC),
        source,
    })?;
    let tokenizer =
        TextTokenizer::from_file(&run_dir.join(lm_files::TOKENIZER)).map_err(text_err)?;
    if tokenizer.vocab_size() != gpt.vocab_size {
        return Err(RuntimeError::Invalid(format!(
            "{}: the tokenizer has {} tokens but the model was trained with {}: they do not belong together",
            run_dir.display(),
            tokenizer.vocab_size(),
            gpt.vocab_size
        )));
    }
    let weights = run_dir.join(files::WEIGHTS);
    let bytes = std::fs::read(&weights)
        .map_err(|e| RuntimeError::Invalid(format!("{}: {e}", weights.display())))?;
    // Parameters are initialised lazily: a model.json far larger than its weights file is
    // refused before anything is allocated.
    let model = Gpt::new(&gpt, &device);
    let parameters = burn::module::Module::num_params(&model);
    if bytes.len() < parameters.saturating_mul(4) {
        return Err(RuntimeError::Invalid(format!(
            "{}: model.json describes {parameters} parameters but model.safetensors holds {} bytes",
            run_dir.display(),
            bytes.len()
        )));
    }
    let model = crate::weights::load_into(model, &bytes, &weights.display().to_string())?;
    Ok((model, tokenizer, device))
}

/// Generates a continuation of `prompt` with a loaded model, streaming whole characters to
/// `on_text` as they are decoded; `on_text` returning `Break` stops the generation there.
pub fn generate_text(
    model: &Gpt,
    tokenizer: &TextTokenizer,
    device: &burn::prelude::Device,
    prompt: &str,
    max_new_tokens: usize,
    sampling: &SamplingConfig,
    mut on_text: impl FnMut(&str) -> std::ops::ControlFlow<()>,
) -> Result<Generation> {
    sampling.validate().map_err(RuntimeError::Invalid)?;
    let mut ids = tokenizer.encode(prompt).map_err(text_err)?;
    if ids.is_empty() {
        // An empty prompt starts from the first token of the vocabulary after <unk>.
        ids.push(
            tokenizer
                .encode("\n")
                .map_err(text_err)?
                .first()
                .copied()
                .unwrap_or(0),
        );
    }
    if ids.len() > model.context() {
        return Err(RuntimeError::Invalid(format!(
            "the prompt is {} tokens; this model's context is {} tokens: shorten the prompt",
            ids.len(),
            model.context()
        )));
    }
    let unknown = tokenizer
        .unk_id()
        .map(|u| ids.iter().filter(|&&i| i == u).count())
        .unwrap_or(0);
    let started = Instant::now();
    let mut emitted = String::new();
    let mut generated_ids = Vec::new();
    let new = kiln_models::generate(model, &ids, max_new_tokens, sampling, device, |t| {
        generated_ids.push(t);
        // Stream whole characters: decode everything so far and emit the new suffix.
        if let Ok(text) = tokenizer.decode(&generated_ids)
            && text.len() > emitted.len()
            && text.starts_with(emitted.as_str())
            && !text.ends_with('\u{FFFD}')
        {
            let flow = on_text(&text[emitted.len()..]);
            emitted = text;
            return flow;
        }
        std::ops::ControlFlow::Continue(())
    });
    let seconds = started.elapsed().as_secs_f64();
    let text = tokenizer.decode(&new).map_err(text_err)?;
    if text.len() > emitted.len() && text.starts_with(emitted.as_str()) {
        let _ = on_text(&text[emitted.len()..]);
    }
    Ok(Generation {
        prompt: prompt.to_string(),
        text,
        new_tokens: new.len(),
        prompt_tokens: ids.len(),
        unknown_prompt_tokens: unknown,
        tokens_per_second: new.len() as f64 / seconds.max(1e-9),
        seconds,
    })
}
