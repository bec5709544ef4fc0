//! Convenience endpoints: predictions from raw records with the run's saved preprocessing
//! (KServe v1's `{"instances": [...]}` shape), and text generation, streamed as server-sent
//! events.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use axum::Json;
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use kiln_data::TargetTransform;
use kiln_models::SamplingConfig;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio_stream::wrappers::UnboundedReceiverStream;

use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::model::{Body, ServedModel, records_table, refuse_non_finite, softmax_rows};
use crate::v2::RequestLimits;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PredictRequest {
    instances: Vec<Value>,
    /// Impute features an instance leaves out (otherwise a 400 names them).
    #[serde(default)]
    impute_missing: bool,
}

/// Checks each object instance against the model's columns: an unknown field is a 400 naming
/// it (with the closest column); a feature left out is a 400 unless `impute_missing`. Returns,
/// per instance, the features that will be imputed (left out, or given as `null`).
fn check_fields(
    preprocessor: &kiln_data::Preprocessor,
    ignored_columns: &[String],
    instances: &[Value],
    impute_missing: bool,
) -> Result<Vec<Vec<String>>, ApiError> {
    let features: Vec<&str> = preprocessor.features.iter().map(|f| f.name()).collect();
    let target = match &preprocessor.target {
        TargetTransform::Classes { name, .. } | TargetTransform::Regression { name, .. } => name,
    };
    let known = |k: &str| {
        features.contains(&k)
            || Some(k) == preprocessor.id_column.as_deref()
            || k == target
            || ignored_columns.iter().any(|c| c == k)
    };
    let mut imputed = Vec::with_capacity(instances.len());
    for (i, instance) in instances.iter().enumerate() {
        let Value::Object(fields) = instance else {
            imputed.push(Vec::new());
            continue;
        };
        if let Some(unknown) = fields.keys().find(|k| !known(k)) {
            let closest = features
                .iter()
                .map(|f| (strsim::jaro_winkler(unknown, f), *f))
                .max_by(|a, b| a.0.total_cmp(&b.0))
                .filter(|(score, _)| *score >= 0.8)
                .map(|(_, f)| format!(" (did you mean \"{f}\"?)"))
                .unwrap_or_default();
            return Err(ApiError::bad_request(format!(
                "instances[{i}]: unknown field \"{unknown}\"{closest}; the model's columns are {}",
                features.join(", ")
            )));
        }
        let missing: Vec<&str> = features
            .iter()
            .copied()
            .filter(|f| !fields.contains_key(*f))
            .collect();
        if !missing.is_empty() && !impute_missing {
            return Err(ApiError::bad_request(format!(
                "instances[{i}]: missing field(s) {}; send them (null for a missing value) or \
                 set \"impute_missing\": true to impute them as training did",
                missing.join(", ")
            )));
        }
        imputed.push(
            features
                .iter()
                .filter(|f| fields.get(**f).is_none_or(Value::is_null))
                .map(|f| f.to_string())
                .collect(),
        );
    }
    Ok(imputed)
}

/// `POST /v1/models/{name}/predict`: `{"instances": [{column: value, ...}, ...]}` (or strings
/// for a model whose only feature is text) to labels and probabilities.
pub async fn predict(
    model: &ServedModel,
    body: &[u8],
    limits: RequestLimits,
    metrics: &Metrics,
) -> Result<Response, ApiError> {
    let request: PredictRequest = serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(format!(
            "invalid predict request: {e} (expected {{\"instances\": [{{\"column\": value, ...}}]}})"
        ))
    })?;
    let n = request.instances.len();
    if n == 0 {
        return Err(ApiError::bad_request("\"instances\" is empty"));
    }
    if n > limits.max_rows {
        return Err(ApiError::too_large(format!(
            "{n} instances in one request; this server takes at most {}",
            limits.max_rows
        )));
    }
    let (preprocessor, ignored_columns, batcher) = match &model.body {
        Body::Network {
            preprocessor,
            ignored_columns,
            batcher,
            ..
        } => (preprocessor, ignored_columns, batcher),
        Body::Embedder { encoder, device } => {
            // A sentence encoder: instances are texts, predictions their embeddings.
            let texts = request
                .instances
                .iter()
                .enumerate()
                .map(|(i, v)| match v {
                    Value::String(s) => Ok(s.clone()),
                    other => Err(ApiError::bad_request(format!(
                        "instances[{i}]: expected a string (a text to embed), got {}",
                        crate::model::json_kind(other)
                    ))),
                })
                .collect::<Result<Vec<_>, _>>()?;
            let width = encoder.model.width();
            let values =
                crate::model::embed_texts(encoder, device, texts, metrics, &model.name).await?;
            let predictions: Vec<&[f32]> = values.chunks_exact(width).collect();
            return Ok(Json(json!({ "predictions": predictions })).into_response());
        }
        Body::Gpt { .. } => {
            return Err(ApiError::bad_request(format!(
                "model \"{}\" is a language model: use /v1/models/{}/generate",
                model.name, model.name
            )));
        }
    };
    let imputed = check_fields(
        preprocessor,
        ignored_columns,
        &request.instances,
        request.impute_missing,
    )?;
    let table = records_table(preprocessor, &request.instances)?;
    let rows: Vec<usize> = (0..n).collect();
    let encoded = preprocessor
        .transform(&table, &rows, false, false)
        .map_err(|e| ApiError::bad_request(e.to_string().replace("request: line ", "instance ")))?;
    let unknown = encoded.unknown_categories.clone();
    let ids_given = request.instances.iter().any(|r| {
        preprocessor
            .id_column
            .as_ref()
            .is_some_and(|id| r.get(id).is_some())
    });
    let truncated = encoded.texts_truncated;
    let ids = encoded.ids.clone();
    let raw = batcher.run(encoded.clone()).await?;
    let width = batcher.width();
    refuse_non_finite(&raw, width, &encoded, preprocessor, "instance")?;
    if let TargetTransform::Regression { .. } = &preprocessor.target {
        let values: Vec<f32> = raw.iter().map(|&v| preprocessor.denormalize(v)).collect();
        refuse_non_finite(&values, 1, &encoded, preprocessor, "instance")?;
    }
    let mut predictions: Vec<Value> = match &preprocessor.target {
        TargetTransform::Classes { classes, .. } => softmax_rows(&raw, width)
            .chunks(width)
            .map(|p| {
                let best = p
                    .iter()
                    .enumerate()
                    .fold(0, |b, (i, &v)| if v > p[b] { i } else { b });
                let probabilities: serde_json::Map<String, Value> = classes
                    .iter()
                    .zip(p)
                    .map(|(c, &v)| (c.clone(), json!(v)))
                    .collect();
                json!({"label": classes[best], "probabilities": probabilities})
            })
            .collect(),
        TargetTransform::Regression { .. } => raw
            .iter()
            .map(|&v| json!({"prediction": preprocessor.denormalize(v)}))
            .collect(),
    };
    for (p, fields) in predictions.iter_mut().zip(&imputed) {
        if !fields.is_empty() {
            p["imputed"] = json!(fields);
        }
    }
    if let Some(ids) = ids.filter(|_| ids_given) {
        for (p, id) in predictions.iter_mut().zip(ids) {
            p["id"] = json!(id);
        }
    }
    let mut out = json!({"model_name": model.name, "predictions": predictions});
    if !unknown.is_empty() {
        out["unknown_categories"] = json!(unknown);
    }
    if truncated > 0 {
        out["texts_truncated"] = json!(truncated);
    }
    Ok(Json(out).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GenerateRequest {
    prompt: String,
    max_new_tokens: Option<usize>,
    #[serde(default = "default_temperature")]
    temperature: f64,
    #[serde(default)]
    top_k: usize,
    #[serde(default = "default_top_p")]
    top_p: f64,
    #[serde(default = "default_seed")]
    seed: u64,
    #[serde(default)]
    stream: bool,
}

fn default_temperature() -> f64 {
    0.8
}
fn default_top_p() -> f64 {
    1.0
}
fn default_seed() -> u64 {
    1337
}

/// `POST /v1/models/{name}/generate`: `{"prompt": ..., "max_new_tokens": ..., "stream": true}`.
/// Streams `data: {"text": ...}` events and a final `event: done` with the summary.
pub async fn generate(
    model: &ServedModel,
    body: &[u8],
    max_new_tokens: usize,
    metrics: &Arc<Metrics>,
) -> Result<Response, ApiError> {
    let Body::Gpt {
        model: gpt,
        tokenizer,
        device,
        ..
    } = &model.body
    else {
        return Err(ApiError::bad_request(format!(
            "model \"{}\" is not a language model: use /v1/models/{}/predict",
            model.name, model.name
        )));
    };
    let request: GenerateRequest = serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(format!(
            "invalid generate request: {e} (expected {{\"prompt\": \"...\", \"max_new_tokens\": N}})"
        ))
    })?;
    // Unset: 64 tokens, or the server's limit if lower.
    let new_tokens = request.max_new_tokens.unwrap_or(64.min(max_new_tokens));
    if new_tokens == 0 || new_tokens > max_new_tokens {
        return Err(ApiError::bad_request(format!(
            "max_new_tokens is {new_tokens}; this server allows 1..={max_new_tokens}"
        )));
    }
    if !(request.top_p > 0.0 && request.top_p <= 1.0) {
        return Err(ApiError::bad_request(format!(
            "top_p must be in (0, 1], got {}",
            request.top_p
        )));
    }
    if !(request.temperature >= 0.0 && request.temperature.is_finite()) {
        return Err(ApiError::bad_request(format!(
            "temperature must be >= 0, got {}",
            request.temperature
        )));
    }
    let sampling = SamplingConfig {
        temperature: request.temperature,
        top_k: request.top_k,
        top_p: request.top_p,
        seed: request.seed,
        use_cache: true,
    };
    // Check the prompt here, so a bad one is a 400 and not a broken stream.
    let ids = tokenizer
        .encode(&request.prompt)
        .map_err(|e| ApiError::bad_request(format!("prompt: {e}")))?;
    if ids.len() > gpt.context() {
        return Err(ApiError::bad_request(format!(
            "the prompt is {} tokens; this model's context is {} tokens",
            ids.len(),
            gpt.context()
        )));
    }
    let (gpt, tokenizer, device) = (gpt.clone(), tokenizer.clone(), device.clone());
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Result<Event, Infallible>>();
    let stream = request.stream;
    let (metrics, name, queued) = (metrics.clone(), model.name.clone(), Instant::now());
    let task = tokio::task::spawn_blocking(move || {
        let _timing = metrics.time_compute(&name, queued);
        kiln_runtime::lm::generate_text(
            &gpt,
            &tokenizer,
            &device,
            &request.prompt,
            new_tokens,
            &sampling,
            |piece| {
                let gone = stream
                    && tx
                        .send(Ok(Event::default().data(json!({"text": piece}).to_string())))
                        .is_err();
                // A streaming client that left stops the generation.
                if gone {
                    std::ops::ControlFlow::Break(())
                } else {
                    std::ops::ControlFlow::Continue(())
                }
            },
        )
        .inspect(|g| {
            if stream {
                let _ = tx.send(Ok(Event::default()
                    .event("done")
                    .data(serde_json::to_string(g).expect("serialisable"))));
            }
        })
    });
    if stream {
        let events = UnboundedReceiverStream::new(rx);
        return Ok(Sse::new(events).into_response());
    }
    let g = task
        .await
        .map_err(|_| ApiError::internal("generation failed"))?
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    Ok(Json(json!({"model_name": model.name, "generation": g})).into_response())
}
