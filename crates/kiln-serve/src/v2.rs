//! The Open Inference Protocol (KServe v2, as spoken by Triton and `tritonclient`), with the
//! binary tensor data extension: a JSON header of `Inference-Header-Content-Length` bytes
//! followed by raw little-endian tensors.

use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::model::{Body, ServedModel, empty_rows, refuse_non_finite, softmax_rows};

/// Header carrying the JSON part's length in binary requests and responses.
pub const HEADER_LENGTH: &str = "inference-header-content-length";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct InferRequest {
    id: Option<String>,
    inputs: Vec<InputTensor>,
    outputs: Option<Vec<RequestedOutput>>,
    parameters: Option<serde_json::Map<String, Value>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct InputTensor {
    pub name: String,
    pub shape: Vec<i64>,
    pub datatype: String,
    /// JSON data; `None` when the tensor comes as raw bytes.
    pub data: Option<Value>,
    pub parameters: Option<serde_json::Map<String, Value>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RequestedOutput {
    name: String,
    parameters: Option<serde_json::Map<String, Value>>,
}

/// A decoded input tensor.
#[derive(Debug)]
struct Tensor {
    shape: Vec<usize>,
    values: Values,
}

#[derive(Debug)]
enum Values {
    F32(Vec<f32>),
    I64(Vec<i64>),
    /// BYTES elements, each valid UTF-8.
    Text(Vec<String>),
}

fn flatten(name: &str, v: &Value, out: &mut Vec<Value>) -> Result<(), ApiError> {
    match v {
        Value::Array(items) => {
            for item in items {
                flatten(name, item, out)?;
            }
            Ok(())
        }
        Value::Number(_) | Value::Null | Value::Bool(_) | Value::String(_) => {
            out.push(v.clone());
            Ok(())
        }
        other => Err(ApiError::bad_request(format!(
            "input \"{name}\": data must be numbers or strings, got {}",
            crate::model::json_kind(other)
        ))),
    }
}

/// The elements of a BYTES tensor's binary data: each a 4-byte little-endian length and that
/// many bytes, here required to be UTF-8 text.
fn bytes_elements(name: &str, mut bytes: &[u8], count: usize) -> Result<Vec<String>, ApiError> {
    let mut out = Vec::with_capacity(count.min(bytes.len() / 4));
    for i in 0..count {
        let Some((len, rest)) = bytes.split_first_chunk::<4>() else {
            return Err(ApiError::bad_request(format!(
                "input \"{name}\": BYTES element {i} has no 4-byte length"
            )));
        };
        let len = u32::from_le_bytes(*len) as usize;
        if len > rest.len() {
            return Err(ApiError::bad_request(format!(
                "input \"{name}\": BYTES element {i} claims {len} bytes, {} are left",
                rest.len()
            )));
        }
        let (text, rest) = rest.split_at(len);
        out.push(String::from_utf8(text.to_vec()).map_err(|e| {
            ApiError::bad_request(format!(
                "input \"{name}\": BYTES element {i} is not UTF-8 text ({e})"
            ))
        })?);
        bytes = rest;
    }
    if !bytes.is_empty() {
        return Err(ApiError::bad_request(format!(
            "input \"{name}\": {} bytes left after {count} BYTES elements",
            bytes.len()
        )));
    }
    Ok(out)
}

/// Decodes `t` (JSON `data` or its slice of the binary part) as `want`, the datatype the model
/// takes ("FP32", "INT64" or "BYTES"; FP64 and INT32 are accepted for the first two).
fn decode(t: &InputTensor, binary: Option<&[u8]>, want: &str) -> Result<Tensor, ApiError> {
    let name = &t.name;
    if t.shape.iter().any(|&d| d < 0) {
        return Err(ApiError::bad_request(format!(
            "input \"{name}\": shape {:?} has a negative dimension",
            t.shape
        )));
    }
    let shape: Vec<usize> = t.shape.iter().map(|&d| d as usize).collect();
    let count = shape
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .filter(|&n| n <= isize::MAX as usize / 8)
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "input \"{name}\": shape {:?} is too large",
                t.shape
            ))
        })?;
    let dtype = t.datatype.as_str();
    let values = match binary {
        Some(bytes) if dtype == "BYTES" => Values::Text(bytes_elements(name, bytes, count)?),
        Some(bytes) => {
            let size = match dtype {
                "FP32" | "INT32" => 4,
                "FP64" | "INT64" => 8,
                other => {
                    return Err(ApiError::bad_request(format!(
                        "input \"{name}\": datatype {other} is not supported (FP32, FP64, INT32, INT64)"
                    )));
                }
            };
            if bytes.len() != count * size {
                return Err(ApiError::bad_request(format!(
                    "input \"{name}\": {} bytes of {dtype} data for shape {:?} ({} expected)",
                    bytes.len(),
                    t.shape,
                    count * size
                )));
            }
            match dtype {
                "FP32" => Values::F32(
                    bytes
                        .chunks_exact(4)
                        .map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes")))
                        .collect(),
                ),
                "FP64" => Values::F32(
                    bytes
                        .chunks_exact(8)
                        .map(|b| f64::from_le_bytes(b.try_into().expect("8 bytes")) as f32)
                        .collect(),
                ),
                "INT32" => Values::I64(
                    bytes
                        .chunks_exact(4)
                        .map(|b| i64::from(i32::from_le_bytes(b.try_into().expect("4 bytes"))))
                        .collect(),
                ),
                _ => Values::I64(
                    bytes
                        .chunks_exact(8)
                        .map(|b| i64::from_le_bytes(b.try_into().expect("8 bytes")))
                        .collect(),
                ),
            }
        }
        None => {
            let data = t.data.as_ref().ok_or_else(|| {
                ApiError::bad_request(format!(
                    "input \"{name}\": no \"data\" (and no binary_data_size parameter)"
                ))
            })?;
            // Not sized by the claimed shape: the data decides what is allocated.
            let mut flat = Vec::new();
            flatten(name, data, &mut flat)?;
            if flat.len() != count {
                return Err(ApiError::bad_request(format!(
                    "input \"{name}\": {} values for shape {:?} ({count} expected)",
                    flat.len(),
                    t.shape
                )));
            }
            match dtype {
                "FP32" | "FP64" => Values::F32(
                    flat.iter()
                        .enumerate()
                        .map(|(i, v)| match v {
                            Value::Null => Ok(f32::NAN), // missing
                            v => v.as_f64().map(|x| x as f32).ok_or_else(|| {
                                ApiError::bad_request(format!(
                                    "input \"{name}\": value {i} is not a number"
                                ))
                            }),
                        })
                        .collect::<Result<_, _>>()?,
                ),
                "INT32" | "INT64" => Values::I64(
                    flat.iter()
                        .enumerate()
                        .map(|(i, v)| {
                            v.as_i64().ok_or_else(|| {
                                ApiError::bad_request(format!(
                                    "input \"{name}\": value {i} ({v}) is not an integer"
                                ))
                            })
                        })
                        .collect::<Result<_, _>>()?,
                ),
                "BYTES" => Values::Text(
                    flat.iter()
                        .enumerate()
                        .map(|(i, v)| {
                            v.as_str().map(str::to_string).ok_or_else(|| {
                                ApiError::bad_request(format!(
                                    "input \"{name}\": value {i} is not a string"
                                ))
                            })
                        })
                        .collect::<Result<_, _>>()?,
                ),
                other => {
                    return Err(ApiError::bad_request(format!(
                        "input \"{name}\": datatype {other} is not supported (FP32, FP64, INT32, INT64, BYTES)"
                    )));
                }
            }
        }
    };
    match (&values, want) {
        (Values::F32(_), "FP32") | (Values::I64(_), "INT64") | (Values::Text(_), "BYTES") => {
            Ok(Tensor { shape, values })
        }
        (_, "INT64") => Err(ApiError::bad_request(format!(
            "input \"{name}\": datatype {dtype}, expected INT64 (or INT32)"
        ))),
        (_, "BYTES") => Err(ApiError::bad_request(format!(
            "input \"{name}\": datatype {dtype}, expected BYTES"
        ))),
        _ => Err(ApiError::bad_request(format!(
            "input \"{name}\": datatype {dtype}, expected FP32 (or FP64)"
        ))),
    }
}

/// Python's `json` (and so tritonclient) writes a missing float as the bare token `NaN`, which
/// JSON does not have: read it as `null` (missing) outside strings.
fn nan_to_null(json: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    if !json.windows(3).any(|w| w == b"NaN") {
        return std::borrow::Cow::Borrowed(json);
    }
    let mut out = Vec::with_capacity(json.len() + 8);
    let (mut in_string, mut escaped) = (false, false);
    let mut i = 0;
    while i < json.len() {
        let b = json[i];
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
        } else if b == b'"' {
            in_string = true;
        } else if json[i..].starts_with(b"NaN") {
            out.extend_from_slice(b"null");
            i += 3;
            continue;
        }
        out.push(b);
        i += 1;
    }
    std::borrow::Cow::Owned(out)
}

/// An output to return.
pub(crate) struct Output {
    pub name: String,
    pub shape: Vec<usize>,
    pub values: Vec<f32>,
}

/// Splits the body into the JSON header and the binary part.
fn split_body<'a>(headers: &HeaderMap, body: &'a [u8]) -> Result<(&'a [u8], &'a [u8]), ApiError> {
    match headers.get(HEADER_LENGTH) {
        None => Ok((body, &[])),
        Some(v) => {
            let n: usize = v
                .to_str()
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .ok_or_else(|| {
                    ApiError::bad_request("Inference-Header-Content-Length is not a number")
                })?;
            if n > body.len() {
                return Err(ApiError::bad_request(format!(
                    "Inference-Header-Content-Length is {n} but the body has {} bytes",
                    body.len()
                )));
            }
            Ok(body.split_at(n))
        }
    }
}

fn binary_size(p: &Option<serde_json::Map<String, Value>>) -> Option<Option<usize>> {
    p.as_ref()
        .and_then(|p| p.get("binary_data_size"))
        .map(|v| v.as_u64().map(|n| n as usize))
}

fn param_true(p: &Option<serde_json::Map<String, Value>>, key: &str) -> bool {
    p.as_ref()
        .and_then(|p| p.get(key))
        .and_then(Value::as_bool)
        .unwrap_or(false)
}

/// Limits applied to one request.
#[derive(Debug, Clone, Copy)]
pub struct RequestLimits {
    /// Rows per request.
    pub max_rows: usize,
}

/// `POST /v2/models/{name}/infer`.
pub async fn infer(
    model: &ServedModel,
    headers: &HeaderMap,
    body: &[u8],
    limits: RequestLimits,
    metrics: &Metrics,
) -> Result<Response, ApiError> {
    let (json_part, mut binary) = split_body(headers, body)?;
    let json_part = nan_to_null(json_part);
    let request: InferRequest = serde_json::from_slice(&json_part)
        .map_err(|e| ApiError::bad_request(format!("invalid inference request JSON: {e}")))?;
    let mut inputs = Vec::with_capacity(request.inputs.len());
    for input in &request.inputs {
        let bytes = match binary_size(&input.parameters) {
            None => None,
            Some(None) => {
                return Err(ApiError::bad_request(format!(
                    "input \"{}\": binary_data_size must be a non-negative integer",
                    input.name
                )));
            }
            Some(Some(n)) => {
                if n > binary.len() {
                    return Err(ApiError::bad_request(format!(
                        "input \"{}\": binary_data_size {n} exceeds the {} binary bytes left",
                        input.name,
                        binary.len()
                    )));
                }
                let (head, rest) = binary.split_at(n);
                binary = rest;
                Some(head)
            }
        };
        inputs.push((input, bytes));
    }
    if !binary.is_empty() {
        return Err(ApiError::bad_request(format!(
            "{} bytes of binary data not claimed by any input's binary_data_size",
            binary.len()
        )));
    }
    let outputs = infer_inputs(model, &inputs, limits, metrics).await?;
    let all_binary = param_true(&request.parameters, "binary_data_output");
    let selected: Vec<(Output, bool)> = match &request.outputs {
        None => outputs.into_iter().map(|o| (o, all_binary)).collect(),
        Some(requested) => {
            let mut outputs = outputs;
            let mut chosen = Vec::new();
            for r in requested {
                let binary = param_true(&r.parameters, "binary_data") || all_binary;
                chosen.push((take_output(model, &mut outputs, &r.name)?, binary));
            }
            chosen
        }
    };
    let mut blobs: Vec<u8> = Vec::new();
    let outputs_json: Vec<Value> = selected
        .into_iter()
        .map(|(o, binary)| {
            if binary {
                let bytes: Vec<u8> = o.values.iter().flat_map(|v| v.to_le_bytes()).collect();
                let n = bytes.len();
                blobs.extend(bytes);
                json!({"name": o.name, "datatype": "FP32", "shape": o.shape, "parameters": {"binary_data_size": n}})
            } else {
                json!({"name": o.name, "datatype": "FP32", "shape": o.shape, "data": o.values})
            }
        })
        .collect();
    let mut response = json!({
        "model_name": model.name,
        "model_version": "1",
        "outputs": outputs_json,
    });
    if let Some(id) = request.id {
        response["id"] = json!(id);
    }
    let header = serde_json::to_vec(&response).expect("serialisable");
    if blobs.is_empty() {
        return Ok((
            StatusCode::OK,
            [("content-type", "application/json")],
            header,
        )
            .into_response());
    }
    let len = header.len();
    let mut body = header;
    body.extend(blobs);
    let mut r = (StatusCode::OK, body).into_response();
    r.headers_mut().insert(
        "content-type",
        HeaderValue::from_static("application/octet-stream"),
    );
    r.headers_mut()
        .insert(HEADER_LENGTH, HeaderValue::from(len));
    Ok(r)
}

/// Checks the decoded inputs against the model's (names, types, shapes, one batch size, the
/// row limit) and runs them: the outputs of every model output. `inputs` pairs each tensor
/// with its raw bytes when it came as such (HTTP binary extension, gRPC raw contents).
pub(crate) async fn infer_inputs(
    model: &ServedModel,
    inputs: &[(&InputTensor, Option<&[u8]>)],
    limits: RequestLimits,
    metrics: &Metrics,
) -> Result<Vec<Output>, ApiError> {
    let wanted = model.inputs();
    let mut tensors: Vec<(String, Tensor)> = Vec::new();
    for &(input, bytes) in inputs {
        let Some(spec) = wanted.iter().find(|s| s.name == input.name) else {
            return Err(ApiError::bad_request(format!(
                "unknown input \"{}\"; model \"{}\" takes {}",
                input.name,
                model.name,
                names(wanted.iter().map(|s| s.name.as_str()))
            )));
        };
        if tensors.iter().any(|(n, _)| *n == input.name) {
            return Err(ApiError::bad_request(format!(
                "input \"{}\" given twice",
                input.name
            )));
        }
        let t = decode(input, bytes, spec.datatype)?;
        if t.shape.len() != spec.shape.len()
            || t.shape
                .iter()
                .zip(&spec.shape)
                .any(|(&d, &w)| w >= 0 && d as i64 != w)
        {
            return Err(ApiError::bad_request(format!(
                "input \"{}\": shape {:?}, expected {:?} (-1 = any)",
                input.name, t.shape, spec.shape
            )));
        }
        if let (Body::Network { preprocessor, .. }, "tokens") = (&model.body, input.name.as_str())
            && let Some((_, max_tokens)) = preprocessor.text_input()
            && t.shape[1] > max_tokens * preprocessor.text_windows()
        {
            return Err(ApiError::bad_request(tokens_too_long(
                t.shape[1],
                max_tokens,
                preprocessor.text_windows(),
            )));
        }
        tensors.push((input.name.clone(), t));
    }
    for spec in &wanted {
        if !tensors.iter().any(|(n, _)| *n == spec.name) {
            return Err(ApiError::bad_request(format!(
                "missing input \"{}\" ({} {:?})",
                spec.name, spec.datatype, spec.shape
            )));
        }
    }
    let rows = tensors[0].1.shape[0];
    if let Some((n, t)) = tensors.iter().find(|(_, t)| t.shape[0] != rows) {
        return Err(ApiError::bad_request(format!(
            "input \"{n}\" has {} rows, input \"{}\" has {rows}: every input needs the same batch size",
            t.shape[0], tensors[0].0
        )));
    }
    if rows == 0 {
        return Err(ApiError::bad_request("the batch is empty (shape[0] = 0)"));
    }
    if rows > limits.max_rows {
        return Err(ApiError::too_large(format!(
            "{rows} rows in one request; this server takes at most {}",
            limits.max_rows
        )));
    }
    run(model, tensors, rows, metrics).await
}

/// Takes the output `name` out of `outputs`, or a 400 naming the model's outputs.
pub(crate) fn take_output(
    model: &ServedModel,
    outputs: &mut Vec<Output>,
    name: &str,
) -> Result<Output, ApiError> {
    match outputs.iter().position(|o| o.name == name) {
        Some(i) => Ok(outputs.remove(i)),
        None => Err(ApiError::bad_request(format!(
            "unknown output \"{name}\"; model \"{}\" gives {}",
            model.name,
            names(model.outputs().iter().map(|s| s.name.as_str()))
        ))),
    }
}

fn names<'a>(it: impl Iterator<Item = &'a str>) -> String {
    it.map(|n| format!("\"{n}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

async fn run(
    model: &ServedModel,
    tensors: Vec<(String, Tensor)>,
    rows: usize,
    metrics: &Metrics,
) -> Result<Vec<Output>, ApiError> {
    match &model.body {
        Body::Network {
            preprocessor,
            batcher,
            ..
        } => {
            let mut encoded = empty_rows(preprocessor);
            encoded.rows = rows;
            for (name, t) in tensors {
                match (name.as_str(), t.values) {
                    ("features" | "pixels", Values::F32(v)) => {
                        if let Some(i) = v.iter().position(|x| x.is_infinite()) {
                            let width = v.len() / rows;
                            return Err(ApiError::bad_request(format!(
                                "input \"{name}\": row {} column {} is infinite; values must be finite (NaN or null = missing)",
                                i / width,
                                i % width
                            )));
                        }
                        encoded.x = preprocessor
                            .normalise_dense(&v)
                            .map_err(|e| ApiError::bad_request(format!("input \"{name}\": {e}")))?;
                    }
                    ("categories", Values::I64(v)) => {
                        let cards = preprocessor.cardinalities();
                        let mut out = Vec::with_capacity(v.len());
                        for (i, &c) in v.iter().enumerate() {
                            let col = i % cards.len();
                            if c < 0 || c as usize >= cards[col] {
                                return Err(ApiError::bad_request(format!(
                                    "input \"categories\": row {} column {col} is {c}; valid indices are 0..{} (0 = unknown)",
                                    i / cards.len(),
                                    cards[col]
                                )));
                            }
                            out.push(c as u32);
                        }
                        encoded.categories = out;
                    }
                    ("tokens", Values::I64(v)) => {
                        let (vocab_size, max_tokens) =
                            preprocessor.text_input().expect("text model");
                        let windows = preprocessor.text_windows();
                        let t = t.shape[1];
                        if t > max_tokens * windows || !t.is_multiple_of(windows) {
                            return Err(ApiError::bad_request(tokens_too_long(
                                t, max_tokens, windows,
                            )));
                        }
                        // A row holds `windows` windows of `t / windows` ids each; kiln's
                        // rows hold windows of `max_tokens`.
                        let per_window = t / windows;
                        let mut out = Vec::with_capacity(rows * max_tokens * windows);
                        for (r, row) in v.chunks(t.max(1)).enumerate().take(rows) {
                            for (w, window) in row.chunks(per_window.max(1)).enumerate() {
                                for (i, &id) in window.iter().enumerate() {
                                    if id < 0 || id as usize >= vocab_size {
                                        return Err(ApiError::bad_request(format!(
                                            "input \"tokens\": row {r} position {} is {id}; valid ids are 0..{vocab_size} (0 = padding)",
                                            w * per_window + i
                                        )));
                                    }
                                    out.push(id as u32);
                                }
                                out.resize((r * windows + w + 1) * max_tokens, 0);
                            }
                            out.resize((r + 1) * windows * max_tokens, 0);
                        }
                        out.resize(rows * windows * max_tokens, 0);
                        encoded.tokens = out;
                    }
                    _ => unreachable!("datatypes checked against the model's inputs"),
                }
            }
            let raw = batcher.run(encoded.clone()).await?;
            let width = batcher.width();
            refuse_non_finite(&raw, width, &encoded, preprocessor, "row")?;
            if let kiln_data::TargetTransform::Regression { .. } = &preprocessor.target {
                let values: Vec<f32> = raw.iter().map(|&v| preprocessor.denormalize(v)).collect();
                refuse_non_finite(&values, 1, &encoded, preprocessor, "row")?;
            }
            Ok(match &preprocessor.target {
                kiln_data::TargetTransform::Classes { .. } => vec![
                    Output {
                        name: "logits".into(),
                        shape: vec![rows, width],
                        values: raw.clone(),
                    },
                    Output {
                        name: "probabilities".into(),
                        shape: vec![rows, width],
                        values: softmax_rows(&raw, width),
                    },
                ],
                kiln_data::TargetTransform::Regression { .. } => vec![Output {
                    name: "prediction".into(),
                    shape: vec![rows, 1],
                    values: raw
                        .into_iter()
                        .map(|v| preprocessor.denormalize(v))
                        .collect(),
                }],
            })
        }
        Body::Embedder { encoder, device } => {
            let (_, t) = tensors.into_iter().next().expect("one input");
            let Values::Text(texts) = t.values else {
                unreachable!("checked BYTES")
            };
            let width = encoder.model.width();
            let values =
                crate::model::embed_texts(encoder, device, texts, metrics, &model.name).await?;
            Ok(vec![Output {
                name: "embedding".into(),
                shape: vec![rows, width],
                values,
            }])
        }
        Body::Gpt {
            model: gpt,
            config,
            device,
            ..
        } => {
            let (_, t) = tensors.into_iter().next().expect("one input");
            let Values::I64(ids) = t.values else {
                unreachable!("checked INT64")
            };
            let len = t.shape[1];
            if len == 0 || len > config.context {
                return Err(ApiError::bad_request(format!(
                    "input \"tokens\": {len} tokens per row; this model takes 1..={}",
                    config.context
                )));
            }
            // The logits are rows x len x vocab floats: bound them (256 MiB).
            const MAX_LOGITS: usize = 64 << 20;
            if rows * len * config.vocab_size > MAX_LOGITS {
                return Err(ApiError::too_large(format!(
                    "{rows} rows x {len} tokens x {} vocabulary = {} logits; at most {MAX_LOGITS} per request",
                    config.vocab_size,
                    rows * len * config.vocab_size
                )));
            }
            if let Some(bad) = ids
                .iter()
                .find(|&&i| i < 0 || i as usize >= config.vocab_size)
            {
                return Err(ApiError::bad_request(format!(
                    "input \"tokens\": id {bad} is outside the vocabulary 0..{}",
                    config.vocab_size
                )));
            }
            let (gpt, device) = (gpt.clone(), device.clone());
            let values = tokio::task::spawn_blocking(move || {
                use kiln_models::{Int, Tensor};
                let x = Tensor::<2, Int>::from_data(
                    kiln_models::TensorData::new(ids, [rows, len]),
                    &device,
                );
                gpt.forward(x)
                    .into_data()
                    .convert::<f32>()
                    .try_to_vec::<f32>()
            })
            .await
            .map_err(|_| ApiError::internal("the forward pass failed"))?
            .map_err(|e| ApiError::internal(format!("reading logits: {e:?}")))?;
            Ok(vec![Output {
                name: "logits".into(),
                shape: vec![rows, len, config.vocab_size],
                values,
            }])
        }
    }
}

/// The message for a `tokens` input row that does not fit the model's windows.
fn tokens_too_long(t: usize, max_tokens: usize, windows: usize) -> String {
    if windows == 1 {
        format!("input \"tokens\": {t} tokens per row; this model reads at most {max_tokens}")
    } else {
        format!(
            "input \"tokens\": {t} tokens per row; this model reads {windows} windows of at most {max_tokens} tokens, a row of {windows} × n tokens with n <= {max_tokens}"
        )
    }
}
