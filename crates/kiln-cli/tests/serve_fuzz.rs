//! Property tests ("fuzzing") of the server's request decoders, in process through the router:
//! random and mutated JSON for v2 infer, v1 predict and v1 generate, and random binary tensor
//! bodies (header lengths, sizes, datatypes, shapes, NaN and infinite values). The server must
//! never panic, never answer 5xx (the models here are healthy: a 5xx would be a server bug),
//! and every 4xx must carry a JSON `{"error": "..."}` body.
//!
//! Bounded by proptest's case count: `PROPTEST_CASES` (default 256) per property.

mod common;

use std::sync::{Arc, OnceLock};

use axum::body::Body;
use axum::http::Request;
use common::*;
use proptest::prelude::*;
use serde_json::{Value, json};
use tower::ServiceExt;

struct Fixture {
    app: axum::Router,
    runtime: tokio::runtime::Runtime,
    _dir: tempfile::TempDir,
}

/// A text + tabular classifier ("text": features, categories, tokens) and a GPT ("gpt"),
/// trained once for all properties.
fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("notes.csv"), churn_with_notes(200)).unwrap();
        std::fs::write(d.join("text.toml"), TEXT).unwrap();
        std::fs::write(d.join("gpt.toml"), GPT).unwrap();
        std::fs::write(
            d.join("corpus.txt"),
            "the cat sat on the mat. 人民日报。\n".repeat(40),
        )
        .unwrap();
        let run = |toml: &str| {
            d.join(
                kiln_json(d, &["train", toml, "--json"])["run_dir"]
                    .as_str()
                    .unwrap(),
            )
        };
        let sources = vec![
            kiln_serve::ModelSource {
                name: "text".into(),
                run_dir: run("text.toml"),
            },
            kiln_serve::ModelSource {
                name: "gpt".into(),
                run_dir: run("gpt.toml"),
            },
        ];
        let config = kiln_serve::ServeConfig {
            max_body_bytes: 1 << 20,
            max_rows: 64,
            max_new_tokens: 8,
            ..Default::default()
        };
        let state = kiln_serve::AppState::load(&sources, config).unwrap();
        Fixture {
            app: kiln_serve::router(Arc::new(state)),
            runtime: tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap(),
            _dir: dir,
        }
    })
}

/// Sends one request; checks the contract; returns the status.
fn send(path: &str, headers: &[(&str, String)], body: Vec<u8>) -> Result<u16, TestCaseError> {
    let f = fixture();
    let mut request = Request::builder().method("POST").uri(path);
    for (k, v) in headers {
        request = request.header(*k, v.as_str());
    }
    let request = request.body(Body::from(body)).unwrap();
    let (status, content_type, bytes) = f.runtime.block_on(async {
        let response = f.app.clone().oneshot(request).await.unwrap();
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap_or("").to_string())
            .unwrap_or_default();
        // Streams end by themselves: at most max_new_tokens events.
        let bytes = axum::body::to_bytes(response.into_body(), 64 << 20)
            .await
            .unwrap();
        (status, content_type, bytes)
    });
    prop_assert!(
        status < 500,
        "{path}: {status} {}",
        String::from_utf8_lossy(&bytes)
    );
    if status >= 400 {
        prop_assert!(
            content_type.starts_with("application/json"),
            "{content_type}"
        );
        let v: Value = serde_json::from_slice(&bytes).map_err(|e| {
            TestCaseError::fail(format!(
                "{path}: {status} body is not JSON ({e}): {bytes:?}"
            ))
        })?;
        prop_assert!(v["error"].is_string(), "{path}: {status} {v}");
    }
    Ok(status)
}

/// Any JSON value, a few levels deep.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<u64>().prop_map(|n| json!(n)),
        any::<f64>().prop_map(|x| json!(x)),
        ".{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec(
                (
                    prop_oneof![
                        Just("inputs".to_string()),
                        Just("instances".to_string()),
                        Just("prompt".to_string()),
                        Just("name".to_string()),
                        Just("shape".to_string()),
                        Just("datatype".to_string()),
                        Just("data".to_string()),
                        "[a-z_]{1,8}"
                    ],
                    inner
                ),
                0..5
            )
            .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

fn dtype() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("FP32".to_string()),
        Just("FP64".to_string()),
        Just("INT32".to_string()),
        Just("INT64".to_string()),
        Just("BOOL".to_string()),
        Just("BYTES".to_string()),
        Just("FP16".to_string()),
        "[A-Z0-9]{0,6}",
    ]
}

fn dim() -> impl Strategy<Value = i64> {
    prop_oneof![
        6 => 0i64..5,
        2 => 0i64..40,
        1 => any::<i64>(),
        1 => Just(i64::MAX),
        1 => Just(1i64 << 32),
    ]
}

fn float() -> impl Strategy<Value = f64> {
    prop_oneof![
        4 => -3.0f64..3.0,
        1 => Just(f64::NAN),
        1 => Just(f64::INFINITY),
        1 => Just(f64::NEG_INFINITY),
        1 => any::<f64>(),
    ]
}

/// A tensor of the v2 request: name, datatype, shape, and data (JSON numbers, or raw bytes of
/// its datatype when sent binary).
fn tensor() -> impl Strategy<Value = (String, String, Vec<i64>, Vec<f64>)> {
    (
        prop_oneof![
            Just("features".to_string()),
            Just("categories".to_string()),
            Just("tokens".to_string()),
            Just("pixels".to_string()),
            "[a-z]{0,6}",
        ],
        dtype(),
        prop::collection::vec(dim(), 0..4),
        prop::collection::vec(float(), 0..48),
    )
}

fn le_bytes(dtype: &str, values: &[f64]) -> Vec<u8> {
    values
        .iter()
        .flat_map(|&v| match dtype {
            "FP64" => v.to_le_bytes().to_vec(),
            "INT64" => (v as i64).to_le_bytes().to_vec(),
            "INT32" => (v as i32).to_le_bytes().to_vec(),
            _ => (v as f32).to_le_bytes().to_vec(),
        })
        .collect()
}

/// A well-formed request for the text model (from its metadata: one row, four tokens, ones),
/// to mutate.
fn valid_infer() -> Vec<u8> {
    let f = fixture();
    let request = Request::get("/v2/models/text").body(Body::empty()).unwrap();
    let meta: Value = f.runtime.block_on(async {
        let response = f.app.clone().oneshot(request).await.unwrap();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        serde_json::from_slice(&bytes).unwrap()
    });
    let inputs: Vec<Value> = meta["inputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            let shape: Vec<i64> = t["shape"]
                .as_array()
                .unwrap()
                .iter()
                .enumerate()
                .map(|(i, d)| match d.as_i64().unwrap() {
                    -1 if i == 0 => 1,
                    -1 => 4,
                    d => d,
                })
                .collect();
            let n = shape.iter().product::<i64>() as usize;
            json!({"name": t["name"], "datatype": t["datatype"], "shape": shape, "data": vec![1; n]})
        })
        .collect();
    json!({ "inputs": inputs }).to_string().into_bytes()
}

fn valid_predict() -> Vec<u8> {
    json!({"instances": [{"customer_id": "C1", "age": 40, "city": "Lyon", "plan": "basic",
                          "monthly_spend": 55.5, "note": "late bill refund"}]})
    .to_string()
    .into_bytes()
}

fn valid_generate() -> Vec<u8> {
    br#"{"prompt": "the cat", "max_new_tokens": 4, "temperature": 0.5, "top_k": 3, "top_p": 0.9, "seed": 7}"#
        .to_vec()
}

/// Byte-level mutations of `base`: overwrite, insert, delete, truncate.
fn mutated(base: Vec<u8>) -> impl Strategy<Value = Vec<u8>> {
    let n = base.len();
    prop::collection::vec((0..4u8, 0..n + 1, any::<u8>()), 1..6).prop_map(move |edits| {
        let mut b = base.clone();
        for (kind, at, byte) in edits {
            let at = at.min(b.len());
            match kind {
                0 if at < b.len() => b[at] = byte,
                1 => b.insert(at, byte),
                2 if at < b.len() => {
                    b.remove(at);
                }
                _ => b.truncate(at),
            }
        }
        b
    })
}

const INFER: [&str; 2] = ["/v2/models/text/infer", "/v2/models/gpt/infer"];

proptest! {
    #![proptest_config(ProptestConfig { failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn v2_infer_json(path in 0..2usize, body in prop_oneof![
        any_json().prop_map(|v| v.to_string().into_bytes()),
        mutated(valid_infer()),
        prop::collection::vec(tensor(), 0..4).prop_map(|ts| {
            let inputs: Vec<Value> = ts.into_iter().map(|(name, dtype, shape, data)| {
                // NaN and infinities as Python's json writes them (NaN is read as missing).
                let data: Vec<String> = data.iter().map(|v| if v.is_nan() { "NaN".into() }
                    else if v.is_infinite() { "1e999".into() } else { v.to_string() }).collect();
                let data: Value = serde_json::from_str(&format!("[{}]", data.join(",")).replace("NaN", "null"))
                    .unwrap_or(Value::Null);
                json!({"name": name, "datatype": dtype, "shape": shape, "data": data})
            }).collect();
            json!({"inputs": inputs}).to_string().into_bytes()
        }),
    ]) {
        send(INFER[path], &[("content-type", "application/json".into())], body)?;
    }

    #[test]
    fn v2_infer_binary(
        path in 0..2usize,
        tensors in prop::collection::vec((tensor(), prop::option::of(0usize..600)), 1..4),
        header_len in prop_oneof![Just(None), (0usize..2000).prop_map(Some)],
        bad_header in prop_oneof![5 => Just(None), 1 => "[ -~]{0,8}".prop_map(Some)],
        truncate in prop::option::of(0usize..400),
        binary_out in any::<bool>(),
    ) {
        let mut blobs = Vec::new();
        let inputs: Vec<Value> = tensors.iter().map(|((name, dtype, shape, data), size)| {
            let bytes = le_bytes(dtype, data);
            // The claimed size: the real one, or a random (often wrong) one.
            let claimed = size.unwrap_or(bytes.len());
            blobs.extend(bytes);
            json!({"name": name, "datatype": dtype, "shape": shape,
                   "parameters": {"binary_data_size": claimed}})
        }).collect();
        let header = json!({"inputs": inputs, "parameters": {"binary_data_output": binary_out}})
            .to_string().into_bytes();
        let n = header_len.unwrap_or(header.len());
        let mut body = header;
        body.extend(blobs);
        if let Some(t) = truncate {
            body.truncate(t.min(body.len()));
        }
        let len = bad_header.unwrap_or_else(|| n.to_string());
        send(INFER[path], &[
            ("content-type", "application/octet-stream".into()),
            ("inference-header-content-length", len),
        ], body)?;
    }

    #[test]
    fn v1_predict(body in prop_oneof![
        any_json().prop_map(|v| v.to_string().into_bytes()),
        mutated(valid_predict()),
        prop::collection::vec(any_json(), 0..4)
            .prop_map(|rows| json!({"instances": rows}).to_string().into_bytes()),
        prop::collection::vec(
            (prop::option::of(float()), ".{0,6}", prop::option::of("[ -~]{0,40}")), 0..4)
            .prop_map(|rows| {
                let rows: Vec<Value> = rows.into_iter().map(|(age, city, note)| json!({
                    "age": age.filter(|a| a.is_finite()), "city": city,
                    "plan": "basic", "monthly_spend": 1.0, "note": note,
                })).collect();
                json!({"instances": rows}).to_string().into_bytes()
            }),
    ]) {
        send("/v1/models/text/predict", &[], body.clone())?;
        // The same body at the wrong kind of model.
        send("/v1/models/gpt/predict", &[], body)?;
    }

    #[test]
    fn v1_generate(body in prop_oneof![
        any_json().prop_map(|v| v.to_string().into_bytes()),
        mutated(valid_generate()),
        (".{0,24}", prop::option::of(0usize..12), prop_oneof![-1.0f64..3.0, any::<f64>()],
         any::<usize>(), prop_oneof![-0.5f64..1.5, any::<f64>()], any::<u64>(), any::<bool>())
            .prop_map(|(prompt, n, temperature, top_k, top_p, seed, stream)| json!({
                "prompt": prompt, "max_new_tokens": n, "temperature": temperature,
                "top_k": top_k, "top_p": top_p, "seed": seed, "stream": stream,
            }).to_string().into_bytes()),
    ]) {
        send("/v1/models/gpt/generate", &[], body.clone())?;
        send("/v1/models/text/generate", &[], body)?;
    }
}

/// The bases of the mutations are served: the properties reach the models, not only the
/// decoders' first checks.
#[test]
fn the_unmutated_requests_are_served() {
    let json = [("content-type", "application/json".to_string())];
    assert_eq!(send(INFER[0], &json, valid_infer()).unwrap(), 200);
    assert_eq!(
        send("/v1/models/text/predict", &json, valid_predict()).unwrap(),
        200
    );
    assert_eq!(
        send("/v1/models/gpt/generate", &json, valid_generate()).unwrap(),
        200
    );
    let tokens = json!({"inputs": [{"name": "tokens", "datatype": "INT64", "shape": [1, 2], "data": [1, 2]}]});
    assert_eq!(
        send(INFER[1], &json, tokens.to_string().into_bytes()).unwrap(),
        200
    );
}
