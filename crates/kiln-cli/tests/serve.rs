//! `kiln serve` end to end: the real binary on a free port, spoken to over plain HTTP/1.1.
//! Open Inference Protocol (JSON and binary tensors) against kiln's own reference outputs,
//! raw-record predictions against `kiln predict`, generation, metrics, and bad requests.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use prost::Message;
use serde_json::{Value, json};

/// A running `kiln serve`, killed on drop.
struct Server {
    child: Child,
    port: u16,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start(dir: &Path, args: &[&str]) -> Server {
    start_logging_to(dir, args, Stdio::null())
}

fn start_logging_to(dir: &Path, args: &[&str], stderr: Stdio) -> Server {
    let port = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .arg("serve")
        .args(args)
        .args(["--port", &port.to_string()])
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .unwrap();
    let server = Server { child, port };
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return server;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("kiln serve did not start listening on {port}");
}

/// One HTTP/1.1 request; returns status, headers (lower-case names) and body.
fn http(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("header end");
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let mut lines = head.lines();
    let status: u16 = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    if headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v == "chunked")
    {
        body = dechunk(&body);
    }
    (status, headers, body)
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let line_end = b.windows(2).position(|w| w == b"\r\n").unwrap();
        let size =
            usize::from_str_radix(std::str::from_utf8(&b[..line_end]).unwrap().trim(), 16).unwrap();
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&b[line_end + 2..line_end + 2 + size]);
        b = &b[line_end + 4 + size..];
    }
}

fn post_json(port: u16, path: &str, body: &Value) -> (u16, Value) {
    let (status, _, body) = http(
        port,
        "POST",
        path,
        &[("content-type", "application/json")],
        body.to_string().as_bytes(),
    );
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

/// Reads `test_data_set_0` of an ONNX export: (name, datatype, shape, values as f64).
fn test_tensors(dir: &Path, prefix: &str) -> Vec<(String, &'static str, Vec<usize>, Vec<f64>)> {
    let mut out = Vec::new();
    for i in 0.. {
        let path = dir.join(format!("test_data_set_0/{prefix}_{i}.pb"));
        let Ok(bytes) = std::fs::read(&path) else {
            break;
        };
        let t = kiln_export::proto::TensorProto::decode(bytes.as_slice()).unwrap();
        let raw = t.raw_data.unwrap();
        let (dtype, values): (&str, Vec<f64>) = match t.data_type {
            Some(1) => (
                "FP32",
                raw.chunks_exact(4)
                    .map(|b| f32::from_le_bytes(b.try_into().unwrap()) as f64)
                    .collect(),
            ),
            _ => (
                "INT64",
                raw.chunks_exact(8)
                    .map(|b| i64::from_le_bytes(b.try_into().unwrap()) as f64)
                    .collect(),
            ),
        };
        out.push((
            t.name.unwrap(),
            dtype,
            t.dims.iter().map(|&d| d as usize).collect(),
            values,
        ));
    }
    out
}

fn json_number(v: f64) -> Value {
    if v.is_nan() { Value::Null } else { json!(v) }
}

#[test]
fn serve_matches_kiln_over_v2_json_binary_and_v1_records() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut runs = train_small_models(d);
    runs.push(train_rgb_cnn(d));
    let mut args: Vec<String> = Vec::new();
    for (name, summary) in &runs {
        let run = summary["run_dir"].as_str().unwrap().to_string();
        kiln_ok(d, &["export", &run, "--out", &format!("export/{name}")]);
        args.push(format!("{name}={run}"));
    }
    let arg_refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let server = start(d, &arg_refs);
    let port = server.port;
    assert_eq!(http(port, "GET", "/v2/health/live", &[], b"").0, 200);
    assert_eq!(http(port, "GET", "/v2/health/ready", &[], b"").0, 200);
    assert_eq!(http(port, "GET", "/v2/models/cnn/ready", &[], b"").0, 200);
    let (_, index) = post_json(port, "/v2/repository/index", &json!({}));
    assert_eq!(index.as_array().unwrap().len(), 7, "{index}");

    // v2 infer, JSON and binary, on the export's reference inputs: equal to kiln's outputs.
    for (name, _) in &runs {
        let export = d.join(format!("export/{name}"));
        let inputs = test_tensors(&export, "input");
        let expected = test_tensors(&export, "output");
        let request = json!({
            "id": "r1",
            "inputs": inputs.iter().map(|(n, t, s, v)| json!({
                "name": n, "datatype": t, "shape": s,
                "data": v.iter().map(|&x| if *t == "INT64" { json!(x as i64) } else { json_number(x) }).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
        });
        let (status, response) = post_json(port, &format!("/v2/models/{name}/infer"), &request);
        assert_eq!(status, 200, "{name}: {response}");
        assert_eq!(response["id"], "r1");
        for (out_name, _, shape, want) in &expected {
            let got = response["outputs"]
                .as_array()
                .unwrap()
                .iter()
                .find(|o| o["name"] == *out_name)
                .unwrap();
            assert_eq!(got["shape"], json!(shape), "{name}/{out_name}");
            let got: Vec<f64> = got["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap())
                .collect();
            let diff = got
                .iter()
                .zip(want)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f64::max);
            assert!(
                diff < 1e-4,
                "{name}/{out_name}: differs from kiln by {diff}"
            );
        }
        // Binary tensors in and out (tritonclient's default).
        let mut blob = Vec::new();
        let header = json!({
            "inputs": inputs.iter().map(|(n, t, s, v)| {
                let before = blob.len();
                match *t {
                    "FP32" => v.iter().for_each(|&x| blob.extend((x as f32).to_le_bytes())),
                    _ => v.iter().for_each(|&x| blob.extend((x as i64).to_le_bytes())),
                }
                json!({"name": n, "datatype": t, "shape": s, "parameters": {"binary_data_size": blob.len() - before}})
            }).collect::<Vec<_>>(),
            "parameters": {"binary_data_output": true},
        })
        .to_string();
        let mut body = header.clone().into_bytes();
        body.extend(&blob);
        let len = header.len().to_string();
        let (status, headers, body) = http(
            port,
            "POST",
            &format!("/v2/models/{name}/infer"),
            &[("Inference-Header-Content-Length", &len)],
            &body,
        );
        assert_eq!(status, 200, "{name}: {}", String::from_utf8_lossy(&body));
        let json_len: usize = headers
            .iter()
            .find(|(k, _)| k == "inference-header-content-length")
            .unwrap()
            .1
            .parse()
            .unwrap();
        let response: Value = serde_json::from_slice(&body[..json_len]).unwrap();
        let mut offset = json_len;
        for o in response["outputs"].as_array().unwrap() {
            let n = o["parameters"]["binary_data_size"].as_u64().unwrap() as usize;
            let values: Vec<f64> = body[offset..offset + n]
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().unwrap()) as f64)
                .collect();
            offset += n;
            let want = &expected
                .iter()
                .find(|e| e.0 == o["name"].as_str().unwrap())
                .unwrap()
                .3;
            let diff = values
                .iter()
                .zip(want)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f64::max);
            assert!(diff < 1e-4, "{name} binary: differs by {diff}");
        }
    }

    // v1 records equal `kiln predict --proba` on the same rows.
    let mlp_run = runs[0].1["run_dir"].as_str().unwrap();
    std::fs::write(d.join("new.csv"), churn_csv(20, 77, false, Some("Brest"))).unwrap();
    kiln_ok(
        d,
        &[
            "predict", mlp_run, "--data", "new.csv", "--out", "p.csv", "--proba",
        ],
    );
    let predicted = std::fs::read_to_string(d.join("p.csv")).unwrap();
    let mut reader = csv::Reader::from_path(d.join("new.csv")).unwrap();
    let header: Vec<String> = reader
        .headers()
        .unwrap()
        .iter()
        .map(str::to_string)
        .collect();
    let instances: Vec<Value> = reader
        .records()
        .map(|r| {
            let r = r.unwrap();
            Value::Object(
                header
                    .iter()
                    .zip(r.iter())
                    .filter(|(_, v)| !v.is_empty())
                    .map(|(k, v)| (k.clone(), json!(v)))
                    .collect(),
            )
        })
        .collect();
    // Records leave out their missing values: the request must opt in to imputing them.
    let (status, refused) = post_json(
        port,
        "/v1/models/mlp/predict",
        &json!({"instances": instances}),
    );
    assert_eq!(status, 400, "{refused}");
    assert!(
        refused["error"]
            .as_str()
            .unwrap()
            .contains("missing field(s)"),
        "{refused}"
    );
    let request = json!({"instances": instances, "impute_missing": true});
    let (status, response) = post_json(port, "/v1/models/mlp/predict", &request);
    assert_eq!(status, 200, "{response}");
    let said_imputed = response["predictions"]
        .as_array()
        .unwrap()
        .iter()
        .zip(&instances)
        .all(|(p, record)| {
            let left_out = ["age", "city", "plan", "monthly_spend"]
                .iter()
                .filter(|f| record.get(**f).is_none())
                .count();
            p["imputed"].as_array().map_or(0, Vec::len) == left_out
        });
    assert!(
        said_imputed,
        "each prediction names its imputed fields: {response}"
    );
    // KServe's v1 path answers the same.
    let (kserve_status, kserve) = post_json(port, "/v1/models/mlp:predict", &request);
    assert_eq!(kserve_status, 200, "{kserve}");
    assert_eq!(kserve["predictions"], response["predictions"]);
    let (status_other, _) = post_json(port, "/v1/models/mlp:explain", &json!({"instances": []}));
    assert_eq!(status_other, 404);
    assert!(
        response["unknown_categories"]["city"].as_u64().unwrap() >= 1,
        "{response}"
    );
    let columns: Vec<&str> = predicted.lines().next().unwrap().split(',').collect();
    let label_at = columns.iter().position(|c| *c == "churn").unwrap();
    for (line, p) in predicted
        .lines()
        .skip(1)
        .zip(response["predictions"].as_array().unwrap())
    {
        let fields: Vec<&str> = line.split(',').collect();
        assert_eq!(p["label"], fields[label_at], "{line}");
        for (c, value) in columns.iter().zip(&fields) {
            if let Some(class) = c.strip_prefix("proba_") {
                let want: f64 = value.parse().unwrap();
                let got = p["probabilities"][class].as_f64().unwrap();
                assert!((want - got).abs() < 1e-5, "{line} vs {p}");
            }
        }
    }
    // Text-only instances as strings are accepted when the model has one feature; this one
    // has tabular columns too, so an object is needed.
    let (status, response) = post_json(
        port,
        "/v1/models/text/predict",
        &json!({"instances": [{"note": "late bill refund", "age": 40, "city": "Paris", "plan": "basic", "monthly_spend": 50}]}),
    );
    assert_eq!(status, 200, "{response}");

    // Generation, whole and streamed.
    let (status, response) = post_json(
        port,
        "/v1/models/gpt/generate",
        &json!({"prompt": "the", "max_new_tokens": 8}),
    );
    assert_eq!(status, 200, "{response}");
    assert_eq!(response["generation"]["new_tokens"], 8);
    let (status, _, body) = http(
        port,
        "POST",
        "/v1/models/gpt/generate",
        &[("content-type", "application/json")],
        br#"{"prompt": "the", "max_new_tokens": 5, "stream": true}"#,
    );
    let body = String::from_utf8(body).unwrap();
    assert_eq!(status, 200);
    assert!(
        body.contains("data: {\"text\"") && body.contains("event: done"),
        "{body}"
    );

    let (_, _, metrics) = http(port, "GET", "/metrics", &[], b"");
    let metrics = String::from_utf8(metrics).unwrap();
    for name in [
        "kiln_requests_total",
        "kiln_request_duration_seconds_bucket",
        "kiln_batch_size_bucket",
        "kiln_queue_depth",
        "kiln_requests_in_flight",
    ] {
        assert!(metrics.contains(name), "no {name} in /metrics:\n{metrics}");
    }
}

/// Method, path, headers, body, expected status, a phrase the error must contain.
type BadRequest<'a> = (
    &'a str,
    &'a str,
    Vec<(&'a str, &'a str)>,
    Vec<u8>,
    u16,
    &'a str,
);

#[test]
fn bad_requests_get_clear_4xx_json_errors_and_the_server_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let runs = train_small_models(d);
    let run = |kind: &str| {
        runs.iter().find(|(n, _)| *n == kind).unwrap().1["run_dir"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let (mlp, text, gpt) = (
        format!("mlp={}", run("mlp")),
        format!("text={}", run("text")),
        format!("gpt={}", run("gpt")),
    );
    let server = start(
        d,
        &[
            &mlp,
            &text,
            &gpt,
            "--token",
            "s3cret",
            "--max-body-bytes",
            "20000",
            "--max-rows",
            "8",
            "--max-new-tokens",
            "16",
        ],
    );
    let port = server.port;
    let auth = ("authorization", "Bearer s3cret");
    let features = |rows: usize, width: usize| json!({"inputs": [{"name": "features", "datatype": "FP32", "shape": [rows, width], "data": vec![0.5; rows * width]}]});
    let width = {
        let (_, _, b) = http(port, "GET", "/v2/models/mlp", &[auth], b"");
        let meta: Value = serde_json::from_slice(&b).unwrap();
        meta["inputs"][0]["shape"][1].as_u64().unwrap() as usize
    };
    // Binary FP32 with an infinity in it (JSON cannot carry one).
    let inf_header = json!({"inputs": [{"name": "features", "datatype": "FP32", "shape": [1, width], "parameters": {"binary_data_size": 4 * width}}]}).to_string();
    let inf_len = inf_header.len().to_string();
    let mut inf_body = inf_header.into_bytes();
    for i in 0..width {
        inf_body.extend(if i == 1 { f32::INFINITY } else { 0.5 }.to_le_bytes());
    }
    let far_out: Vec<f64> = [vec![0.5; width], vec![3e38; width]].concat();
    let cases: Vec<BadRequest> = vec![
        ("POST", "/v2/models/mlp/infer", vec![], features(1, width).to_string().into_bytes(), 401, "bearer token"),
        ("POST", "/v2/models/mlp/infer", vec![("authorization", "Bearer nope")], features(1, width).to_string().into_bytes(), 401, "bearer token"),
        ("POST", "/v2/models/mlp/infer", vec![auth], b"{not json".to_vec(), 400, "invalid inference request JSON"),
        ("POST", "/v2/models/nope/infer", vec![auth], features(1, width).to_string().into_bytes(), 404, "unknown model \"nope\""),
        ("GET", "/v2/models/nope", vec![auth], vec![], 404, "unknown model"),
        ("POST", "/v2/models/mlp/versions/7/infer", vec![auth], features(1, width).to_string().into_bytes(), 404, "version \"7\""),
        ("POST", "/v2/models/mlp/infer", vec![auth], features(1, width + 1).to_string().into_bytes(), 400, "shape"),
        ("POST", "/v2/models/mlp/infer", vec![auth], json!({"inputs": [{"name": "features", "datatype": "FP32", "shape": [1, width], "data": [1.0]}]}).to_string().into_bytes(), 400, "values for shape"),
        ("POST", "/v2/models/mlp/infer", vec![auth], json!({"inputs": [{"name": "features", "datatype": "INT64", "shape": [1, width], "data": vec![1; width]}]}).to_string().into_bytes(), 400, "expected FP32"),
        ("POST", "/v2/models/mlp/infer", vec![auth], json!({"inputs": [{"name": "features", "datatype": "BYTES", "shape": [1, width], "data": vec!["a"; width]}]}).to_string().into_bytes(), 400, "datatype BYTES, expected FP32"),
        ("POST", "/v2/models/mlp/infer", vec![auth], json!({"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1, 1], "data": [1.0]}]}).to_string().into_bytes(), 400, "unknown input \"pixels\""),
        ("POST", "/v2/models/mlp/infer", vec![auth], json!({"inputs": []}).to_string().into_bytes(), 400, "missing input \"features\""),
        ("POST", "/v2/models/mlp/infer", vec![auth], json!({"inputs": [{"name": "features", "datatype": "FP32", "shape": [1, width]}]}).to_string().into_bytes(), 400, "no \"data\""),
        ("POST", "/v2/models/mlp/infer", vec![auth], features(9, width).to_string().into_bytes(), 413, "at most 8"),
        ("POST", "/v2/models/mlp/infer", vec![auth], features(0, width).to_string().into_bytes(), 400, "empty"),
        ("POST", "/v2/models/mlp/infer", vec![auth], vec![b' '; 30000], 413, "larger than 20000 bytes"),
        ("POST", "/v2/models/mlp/infer", vec![auth], {
            let mut f = features(1, width); f["outputs"] = json!([{"name": "embedding"}]); f.to_string().into_bytes()
        }, 400, "unknown output \"embedding\""),
        ("POST", "/v2/models/mlp/infer", vec![auth, ("Inference-Header-Content-Length", "99999")], features(1, width).to_string().into_bytes(), 400, "Inference-Header-Content-Length"),
        ("POST", "/v2/models/mlp/infer", vec![auth], json!({"inputs": [{"name": "features", "datatype": "FP32", "shape": [-1, width], "data": []}]}).to_string().into_bytes(), 400, "negative"),
        ("POST", "/v2/models/text/infer", vec![auth], json!({"inputs": [{"name": "tokens", "datatype": "INT64", "shape": [1, 1000], "data": vec![1; 1000]}]}).to_string().into_bytes(), 400, "tokens"),
        ("POST", "/v2/models/gpt/infer", vec![auth], json!({"inputs": [{"name": "tokens", "datatype": "INT64", "shape": [1, 2], "data": [1, 999999]}]}).to_string().into_bytes(), 400, "outside the vocabulary"),
        ("POST", "/v1/models/mlp/predict", vec![auth], json!({"rows": []}).to_string().into_bytes(), 400, "instances"),
        ("POST", "/v1/models/mlp/predict", vec![auth], json!({"instances": [42]}).to_string().into_bytes(), 400, "instances[0]"),
        ("POST", "/v1/models/mlp/predict", vec![auth], json!({"instances": [{"age": "old"}], "impute_missing": true}).to_string().into_bytes(), 400, "is not a number"),
        ("POST", "/v1/models/mlp/predict", vec![auth], json!({"instances": [{"age": 30}, {"age": 1e300}], "impute_missing": true}).to_string().into_bytes(), 400, "outside the range of 32-bit floats"),
        ("POST", "/v2/models/mlp/infer", vec![auth], json!({"inputs": [{"name": "features", "datatype": "FP32", "shape": [2, width], "data": far_out}]}).to_string().into_bytes(), 400, "row 1"),
        ("POST", "/v1/models/mlp/predict", vec![auth], json!({"instances": [{"age": [1, 2]}], "impute_missing": true}).to_string().into_bytes(), 400, "instances[0].age"),
        ("POST", "/v1/models/mlp/predict", vec![auth], json!({"instances": [{"agee": 66}]}).to_string().into_bytes(), 400, "instances[0]: unknown field \"agee\" (did you mean \"age\"?)"),
        ("POST", "/v1/models/mlp/predict", vec![auth], json!({"instances": [{"age": 66}]}).to_string().into_bytes(), 400, "missing field(s)"),
        ("POST", "/v1/models/mlp/generate", vec![auth], json!({"prompt": "x"}).to_string().into_bytes(), 400, "not a language model"),
        ("POST", "/v1/models/gpt/generate", vec![auth], json!({"prompt": "the", "max_new_tokens": 17}).to_string().into_bytes(), 400, "max_new_tokens"),
        ("POST", "/v1/models/gpt/generate", vec![auth], json!({"prompt": "the ".repeat(40)}).to_string().into_bytes(), 400, "context"),
        ("POST", "/v1/models/gpt/generate", vec![auth], json!({"prompt": "x", "top_p": 0}).to_string().into_bytes(), 400, "top_p"),
        ("POST", "/v1/models/gpt/predict", vec![auth], json!({"instances": ["x"]}).to_string().into_bytes(), 400, "language model"),
        ("GET", "/v3/anything", vec![auth], vec![], 404, "no such endpoint"),
        ("POST", "/v2/models/mlp/infer", vec![auth], json!({"inputs": [{"name": "features", "datatype": "FP32", "shape": [4_000_000_000u64, width], "data": [1.0]}]}).to_string().into_bytes(), 400, "values for shape"),
        ("POST", "/v2/models/mlp/infer", vec![auth], json!({"inputs": [{"name": "features", "datatype": "FP32", "shape": [i64::MAX, i64::MAX], "data": [1.0]}]}).to_string().into_bytes(), 400, "too large"),
        ("POST", "/v2/models/mlp/infer", vec![auth, ("Inference-Header-Content-Length", &inf_len)], inf_body.clone(), 400, "infinite"),
    ];
    assert!(cases.len() >= 20);
    for (method, path, headers, body, status, needle) in &cases {
        let (got, _, response) = http(port, method, path, headers, body);
        let text = String::from_utf8_lossy(&response);
        assert_eq!(got, *status, "{method} {path} (expect {needle}): {text}");
        let error: Value = serde_json::from_slice(&response)
            .unwrap_or_else(|_| panic!("{method} {path}: not JSON: {text}"));
        let message = error["error"]
            .as_str()
            .unwrap_or_else(|| panic!("{method} {path}: no error field: {text}"));
        assert!(
            message.contains(needle),
            "{method} {path}: error {message:?} does not mention {needle:?}"
        );
        // Still serving.
        let (ok, _, b) = http(
            port,
            "POST",
            "/v2/models/mlp/infer",
            &[auth],
            features(1, width).to_string().as_bytes(),
        );
        assert_eq!(
            ok,
            200,
            "after {method} {path}: {}",
            String::from_utf8_lossy(&b)
        );
    }
    // Health stays open without the token.
    assert_eq!(http(port, "GET", "/v2/health/live", &[], b"").0, 200);
}

/// Needs python3 with `tritonclient[http,grpc]`, onnx and numpy (`.ci/run` installs them).
#[test]
#[ignore]
fn tritonclient_http_and_grpc_list_check_and_infer_like_kiln_predict() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let runs = train_small_models(d);
    let mut serve_args = Vec::new();
    let mut check_args = Vec::new();
    for (name, summary) in &runs {
        let run = summary["run_dir"].as_str().unwrap().to_string();
        kiln_ok(d, &["export", &run, "--out", &format!("export/{name}")]);
        serve_args.push(format!("{name}={run}"));
        check_args.push(format!("{name}={}", d.join("export").join(name).display()));
    }
    let cnn_run = runs[2].1["run_dir"].as_str().unwrap();
    // kiln predict on 40 rows of the image data, for the same rows through tritonclient.
    kiln_ok(
        d,
        &[
            "predict",
            cnn_run,
            "--data",
            "img/train",
            "--out",
            "cnn.csv",
            "--proba",
        ],
    );
    let predicted = std::fs::read_to_string(d.join("cnn.csv")).unwrap();
    let head: Vec<&str> = predicted.lines().take(41).collect();
    std::fs::write(d.join("cnn40.csv"), head.join("\n") + "\n").unwrap();
    // The pretrained sentence encoder too, when installed: texts as BYTES against `kiln embed`.
    let minilm = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../data/pretrained/all-MiniLM-L6-v2")
        .canonicalize()
        .ok()
        .filter(|p| p.join("model.safetensors").is_file());
    if let Some(minilm) = &minilm {
        std::fs::write(
            d.join("texts.csv"),
            "text\nThe cat sat on the mat.\n今天天气很好。\n\"\"\nI love pizza 🍕\n",
        )
        .unwrap();
        let model = minilm.display().to_string();
        kiln_ok(
            d,
            &[
                "embed",
                &model,
                "--data",
                "texts.csv",
                "--column",
                "text",
                "--out",
                "emb.npy",
            ],
        );
        serve_args.push(format!("minilm={model}"));
    } else {
        eprintln!("SKIPPED the embedding check: scripts/setup-pretrained.sh installs the model");
    }
    // The same checks over gRPC, with tritonclient.grpc.
    let grpc_port = free_port().to_string();
    serve_args.extend(["--grpc-port".to_string(), grpc_port.clone()]);
    let refs: Vec<&str> = serve_args.iter().map(String::as_str).collect();
    let server = start(d, &refs);
    let mut args: Vec<std::ffi::OsString> = vec![
        "--url".into(),
        format!("127.0.0.1:{}", server.port).into(),
        "--grpc-url".into(),
        format!("127.0.0.1:{grpc_port}").into(),
    ];
    args.extend(check_args.iter().map(Into::into));
    args.extend(["--model".into(), "cnn".into(), "--idx".into()]);
    args.push(d.join("img/train-images-idx3-ubyte").into_os_string());
    args.push("--predict".into());
    args.push(d.join("cnn40.csv").into_os_string());
    if minilm.is_some() {
        args.extend(["--embedder".into(), "minilm".into(), "--texts".into()]);
        args.push(d.join("texts.csv").into_os_string());
        args.push("--embeddings".into());
        args.push(d.join("emb.npy").into_os_string());
    }
    python_check("check-triton.py", &args);
}

#[test]
fn concurrency_limit_answers_429_and_sigterm_lets_in_flight_requests_finish() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let runs = train_small_models(d);
    let gpt = format!("gpt={}", runs[4].1["run_dir"].as_str().unwrap());
    let mut server = start(
        d,
        &[&gpt, "--max-concurrent", "1", "--max-new-tokens", "100000"],
    );
    let port = server.port;
    // A streamed generation holds the only slot until its last event.
    {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let body = br#"{"prompt": "the", "max_new_tokens": 5000, "stream": true}"#;
        write!(
            stream,
            "POST /v1/models/gpt/generate HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .unwrap();
        stream.write_all(body).unwrap();
        let mut first = [0u8; 64];
        let n = stream.read(&mut first).unwrap();
        assert!(String::from_utf8_lossy(&first[..n]).starts_with("HTTP/1.1 200"));
        let (status, body) = post_json(
            port,
            "/v1/models/gpt/generate",
            &json!({"prompt": "the", "max_new_tokens": 2}),
        );
        assert_eq!(status, 429, "a second request while a stream runs: {body}");
    } // the client hangs up: the stream ends and frees the slot
    let deadline = Instant::now() + Duration::from_secs(10);
    while post_json(
        port,
        "/v1/models/gpt/generate",
        &json!({"prompt": "the", "max_new_tokens": 1}),
    )
    .0 != 200
    {
        assert!(
            Instant::now() < deadline,
            "the slot was not freed after the client left"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // A long generation holds the only slot.
    let slow = std::thread::spawn(move || {
        post_json(
            port,
            "/v1/models/gpt/generate",
            &json!({"prompt": "the", "max_new_tokens": 5000}),
        )
    });
    std::thread::sleep(Duration::from_millis(300));
    let (status, body) = post_json(
        port,
        "/v1/models/gpt/generate",
        &json!({"prompt": "the", "max_new_tokens": 2}),
    );
    assert_eq!(status, 429, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("more than 1 requests at once"),
        "{body}"
    );
    // GETs are not limited.
    assert_eq!(http(port, "GET", "/v2/models/gpt", &[], b"").0, 200);
    // SIGTERM while the generation runs: it still completes, then the server exits cleanly.
    let pid = server.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let (status, body) = slow.join().unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["generation"]["new_tokens"], 5000);
    let exit = server.child.wait().unwrap();
    assert!(exit.success(), "{exit:?}");
    assert!(
        TcpStream::connect(("127.0.0.1", port)).is_err(),
        "still listening after SIGTERM"
    );
}

/// Trains the small churn MLP; returns its run directory.
fn train_mlp(d: &Path) -> String {
    std::fs::write(d.join("churn.csv"), churn_csv(300, 1, true, None)).unwrap();
    let run = kiln_json(
        d,
        &[
            "train",
            "--data",
            "churn.csv",
            "--target",
            "churn",
            "--json",
            "--set",
            "trainer.epochs=1",
            "--set",
            "output.plots=false",
        ],
    );
    run["run_dir"].as_str().unwrap().to_string()
}

/// Reads until the peer closes (Ok(0) or a reset) or `limit` passes; returns what arrived and
/// whether the peer closed.
fn read_until_closed(s: &mut TcpStream, limit: Duration) -> (Vec<u8>, bool) {
    let deadline = Instant::now() + limit;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        s.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        match s.read(&mut buf) {
            Ok(0) => return (got, true),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return (got, true), // reset
        }
    }
    (got, false)
}

/// The status of one POST, or None if the connection was refused or reset.
fn try_status(port: u16, path: &str, body: &Value) -> Option<u16> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    let body = body.to_string();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .ok()?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).ok()?;
    String::from_utf8_lossy(&raw)
        .split(' ')
        .nth(1)?
        .parse()
        .ok()
}

fn metric(port: u16, line_start: &str) -> f64 {
    let (_, _, body) = http(port, "GET", "/metrics", &[], b"");
    let text = String::from_utf8(body).unwrap();
    text.lines()
        .find(|l| l.starts_with(line_start))
        .unwrap_or_else(|| panic!("no {line_start} in /metrics:\n{text}"))
        .rsplit(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn slow_and_idle_clients_are_cut_off_and_every_rejection_is_counted() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mlp = format!("mlp={}", train_mlp(d));
    let server = start(
        d,
        &[
            &mlp,
            "--header-timeout-s",
            "1",
            "--body-timeout-s",
            "1",
            "--idle-timeout-s",
            "1",
            "--max-concurrent",
            "1",
            "--max-connections",
            "4",
        ],
    );
    let port = server.port;
    let predict =
        json!({"instances": [{"age": 30, "city": "Lyon", "plan": "basic", "monthly_spend": 50}]});

    // Half a request head, then nothing: disconnected after the header timeout.
    let started = Instant::now();
    let mut half = TcpStream::connect(("127.0.0.1", port)).unwrap();
    half.write_all(b"POST /v1/models/mlp/predict HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let (_, closed) = read_until_closed(&mut half, Duration::from_secs(5));
    let header_cut = started.elapsed();
    assert!(closed, "a stalled request head was not cut off");
    assert!(header_cut >= Duration::from_millis(900), "{header_cut:?}");
    println!("half a header: disconnected after {header_cut:?}");

    // A body trickled a byte every 200 ms: 408 after the body timeout. It holds no
    // concurrency slot meanwhile: a complete request (the only slot) is served at once.
    let trickler = std::thread::spawn(move || {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let started = Instant::now();
        s.write_all(
            b"POST /v1/models/mlp/predict HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n",
        )
        .unwrap();
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        for _ in 0..25 {
            if s.write_all(b" ").is_err() {
                break;
            }
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    got.extend_from_slice(&buf[..n]);
                    if got.windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
                Err(_) => break,
            }
        }
        let (rest, _) = read_until_closed(&mut s, Duration::from_secs(2));
        got.extend(rest);
        (
            String::from_utf8_lossy(&got).into_owned(),
            started.elapsed(),
        )
    });
    std::thread::sleep(Duration::from_millis(300));
    let (status, body) = post_json(port, "/v1/models/mlp/predict", &predict);
    assert_eq!(
        status, 200,
        "a complete request while a body trickles: {body}"
    );
    let (response, body_cut) = trickler.join().unwrap();
    assert!(response.starts_with("HTTP/1.1 408"), "{response}");
    assert!(
        response.contains(r#"{"error":"the request body did not arrive within 1 s"}"#),
        "{response}"
    );
    assert!(body_cut >= Duration::from_millis(900), "{body_cut:?}");
    println!("trickled body: 408 after {body_cut:?}");

    // A kept-alive connection with no request: closed after the idle timeout.
    let mut idle = TcpStream::connect(("127.0.0.1", port)).unwrap();
    idle.write_all(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut buf = [0u8; 256];
    let n = idle.read(&mut buf).unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    let started = Instant::now();
    let (_, closed) = read_until_closed(&mut idle, Duration::from_secs(5));
    let idle_cut = started.elapsed();
    assert!(closed, "an idle keep-alive connection stayed open");
    assert!(idle_cut >= Duration::from_millis(900), "{idle_cut:?}");
    println!("idle keep-alive: closed after {idle_cut:?}");

    // The connection cap: one kept-alive client and three silent ones fill it; a fifth
    // connection gets 503, while the kept-alive client is still served.
    let mut legit = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let silent: Vec<TcpStream> = (0..3)
        .map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(100));
    let mut fifth = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let (refused, closed) = read_until_closed(&mut fifth, Duration::from_secs(2));
    let refused = String::from_utf8_lossy(&refused);
    assert!(closed, "a connection past the cap was kept open");
    assert!(refused.starts_with("HTTP/1.1 503"), "{refused}");
    legit
        .write_all(b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let n = legit.read(&mut buf).unwrap();
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );
    // The silent ones are cut at the header timeout; then new connections are served again.
    drop(silent);
    drop(legit);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if try_status(port, "/v1/models/mlp/predict", &predict) == Some(200) {
            break;
        }
        assert!(Instant::now() < deadline, "connections not freed");
        std::thread::sleep(Duration::from_millis(100));
    }

    assert!(metric(port, r#"kiln_rejections_total{reason="header_timeout"}"#) >= 1.0);
    assert_eq!(
        metric(port, r#"kiln_rejections_total{reason="body_timeout"}"#),
        1.0
    );
    assert!(metric(port, r#"kiln_rejections_total{reason="idle_timeout"}"#) >= 1.0);
    assert!(metric(port, r#"kiln_rejections_total{reason="connection_limit"}"#) >= 1.0);
    assert_eq!(
        metric(port, r#"kiln_rejections_total{reason="concurrency_limit"}"#),
        0.0
    );
}

#[test]
fn an_empty_token_is_an_error_and_an_open_address_without_one_warns() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let err = kiln_err(d, &["serve", "m=no-such-run", "--token", ""]);
    assert!(err.contains("--token is empty"), "{err}");
    let run = |env: &[(&str, &str)], args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_kiln"))
            .arg("serve")
            .args(args)
            .envs(env.iter().copied())
            .current_dir(d)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1));
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = run(&[("KILN_SERVE_TOKEN", "")], &["m=no-such-run"]);
    assert!(err.contains("KILN_SERVE_TOKEN is set but empty"), "{err}");
    // Past the token checks, the missing run is the error; the warning comes first.
    let err = run(&[], &["m=no-such-run", "--host", "0.0.0.0", "--port", "0"]);
    assert!(
        err.contains("warning: kiln serve listens on 0.0.0.0 without a token"),
        "{err}"
    );
    assert!(err.contains("not a run directory"), "{err}");
    let err = run(
        &[("KILN_SERVE_TOKEN", "s3cret")],
        &["m=no-such-run", "--host", "0.0.0.0", "--port", "0"],
    );
    assert!(!err.contains("warning"), "{err}");
    let err = run(&[], &["m=no-such-run", "--port", "0"]);
    assert!(!err.contains("warning"), "{err}");
}

/// A binary v2 request to the `minilm` model: `rows` BYTES elements in `blob` (each a 4-byte
/// length and its text), binary output asked for.
fn post_bytes(port: u16, rows: usize, blob: &[u8]) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let header = json!({
        "inputs": [{"name": "text", "datatype": "BYTES", "shape": [rows],
                    "parameters": {"binary_data_size": blob.len()}}],
        "parameters": {"binary_data_output": true}
    })
    .to_string();
    let len = header.len().to_string();
    let mut body = header.into_bytes();
    body.extend(blob);
    http(
        port,
        "POST",
        "/v2/models/minilm/infer",
        &[("inference-header-content-length", &len)],
        &body,
    )
}

#[test]
fn a_pretrained_folder_serves_sentence_embeddings_equal_to_kiln_embed() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/pretrained/all-MiniLM-L6-v2");
    if !dir.join("model.safetensors").is_file() {
        eprintln!(
            "SKIPPED: {} not found (scripts/setup-pretrained.sh installs it)",
            dir.display()
        );
        return;
    }
    let texts = [
        "The cat sat on the mat.",
        "今天天气很好。",
        "",
        "I love pizza 🍕",
    ];
    let device = kiln::models::Device::flex();
    let encoder = kiln::runtime::pretrained::PretrainedEncoder::load(&dir, &device).unwrap();
    let want: Vec<f32> = encoder.embed(&texts, 64, &device).unwrap().values;
    let close = |got: &[f64]| {
        assert_eq!(got.len(), want.len());
        let d = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (*a as f32 - b).abs())
            .fold(0.0f32, f32::max);
        assert!(d < 1e-6, "served embeddings differ from kiln's by {d}");
    };
    let work = tempfile::tempdir().unwrap();
    let server = start(
        work.path(),
        &[&format!("minilm={}", dir.canonicalize().unwrap().display())],
    );
    let port = server.port;

    // Metadata: a BYTES text input, an FP32 embedding output.
    let (status, _, body) = http(port, "GET", "/v2/models/minilm", &[], b"");
    assert_eq!(status, 200);
    let meta: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(meta["inputs"][0]["name"], "text");
    assert_eq!(meta["inputs"][0]["datatype"], "BYTES");
    assert_eq!(meta["outputs"][0]["name"], "embedding");
    assert_eq!(meta["outputs"][0]["shape"], json!([-1, 384]));

    // v2 JSON.
    let request =
        json!({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [4], "data": texts}]});
    let (status, out) = post_json(port, "/v2/models/minilm/infer", &request);
    assert_eq!(status, 200, "{out}");
    assert_eq!(out["outputs"][0]["shape"], json!([4, 384]));
    let got: Vec<f64> = serde_json::from_value(out["outputs"][0]["data"].clone()).unwrap();
    close(&got);

    // v2 binary: length-prefixed BYTES in, raw FP32 out.
    let mut blob = Vec::new();
    for t in texts {
        blob.extend((t.len() as u32).to_le_bytes());
        blob.extend(t.as_bytes());
    }
    let (status, headers, body) = post_bytes(port, texts.len(), &blob);
    assert_eq!(status, 200);
    let json_len: usize = headers
        .iter()
        .find(|(k, _)| k == "inference-header-content-length")
        .unwrap()
        .1
        .parse()
        .unwrap();
    let got: Vec<f64> = body[json_len..]
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()) as f64)
        .collect();
    close(&got);

    // v1: texts as instances, embeddings as predictions.
    let (status, out) = post_json(
        port,
        "/v1/models/minilm/predict",
        &json!({"instances": texts}),
    );
    assert_eq!(status, 200, "{out}");
    let got: Vec<f64> = out["predictions"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|row| row.as_array().unwrap().iter().map(|v| v.as_f64().unwrap()))
        .collect();
    close(&got);

    // Bad inputs: a number where text is expected, broken binary lengths, invalid UTF-8.
    let (status, out) = post_json(
        port,
        "/v2/models/minilm/infer",
        &json!({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": [5]}]}),
    );
    assert_eq!(status, 400);
    assert!(
        out["error"].as_str().unwrap().contains("not a string"),
        "{out}"
    );
    let (status, out) = post_json(
        port,
        "/v2/models/minilm/infer",
        &json!({"inputs": [{"name": "text", "datatype": "FP32", "shape": [1], "data": [5.0]}]}),
    );
    assert_eq!(status, 400);
    assert!(
        out["error"].as_str().unwrap().contains("expected BYTES"),
        "{out}"
    );
    for (blob, expected) in [
        (vec![9u8, 0, 0, 0, b'a'], "claims 9 bytes"),
        (vec![2u8, 0, 0, 0, 0xff, 0xfe], "not UTF-8"),
    ] {
        let (status, _, body) = post_bytes(port, 1, &blob);
        assert_eq!(status, 400);
        let text = String::from_utf8_lossy(&body);
        assert!(text.contains(expected), "{text}");
    }
    let (status, out) = post_json(
        port,
        "/v1/models/minilm/predict",
        &json!({"instances": [{"a": 1}]}),
    );
    assert_eq!(status, 400);
    assert!(
        out["error"].as_str().unwrap().contains("expected a string"),
        "{out}"
    );
}

#[test]
fn metrics_per_model_access_logs_and_request_ids() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let run = train_mlp(d);
    let log = std::fs::File::create(d.join("serve.log")).unwrap();
    let mut server = start_logging_to(
        d,
        &[&format!("m={run}"), "--log-format", "json"],
        Stdio::from(log),
    );
    let port = server.port;
    let record =
        json!({"instances": [{"age": 40, "city": "Paris", "plan": "basic", "monthly_spend": 50}]});
    let body = record.to_string();
    // A client's request id is echoed; without one the server makes one.
    let (status, headers, _) = http(
        port,
        "POST",
        "/v1/models/m/predict",
        &[
            ("content-type", "application/json"),
            ("x-request-id", "client-42"),
        ],
        body.as_bytes(),
    );
    assert_eq!(status, 200);
    assert!(
        headers.contains(&("x-request-id".into(), "client-42".into())),
        "{headers:?}"
    );
    let (status, headers, _) = http(port, "POST", "/v1/models/m:predict", &[], body.as_bytes());
    assert_eq!(status, 200);
    let made = &headers.iter().find(|(k, _)| k == "x-request-id").unwrap().1;
    assert_eq!(made.len(), 36, "a UUID: {made}");
    assert_eq!(
        post_json(
            port,
            "/v1/models/m/predict",
            &json!({"instances": [{"agee": 3}]})
        )
        .0,
        400
    );
    assert_eq!(post_json(port, "/v1/models/typo/predict", &record).0, 404);
    assert_eq!(
        post_json(port, "/v1/models/m/versions/7/infer", &record).0,
        404
    );

    // Requests, errors and latency by model and version; a name no model has is `unknown`.
    let count = |line: &str| metric(port, line);
    assert_eq!(
        count(
            "kiln_requests_total{code=\"200\",model=\"m\",route=\"/v1/models/{name}/predict\",version=\"1\"}"
        ),
        1.0
    );
    assert_eq!(
        count(
            "kiln_requests_total{code=\"200\",model=\"m\",route=\"/v1/models/{target}\",version=\"1\"}"
        ),
        1.0
    );
    assert_eq!(
        count(
            "kiln_request_errors_total{code=\"400\",model=\"m\",route=\"/v1/models/{name}/predict\",version=\"1\"}"
        ),
        1.0
    );
    assert_eq!(
        count("kiln_request_errors_total{code=\"404\",model=\"unknown\""),
        1.0
    );
    assert_eq!(
        count(
            "kiln_request_duration_seconds_count{model=\"m\",route=\"/v1/models/{name}/predict\",version=\"1\"}"
        ),
        2.0
    );
    // Queue time apart from compute time: two requests ran, each in one forward pass.
    assert_eq!(count("kiln_queue_seconds_count{model=\"m\"}"), 2.0);
    assert_eq!(count("kiln_compute_seconds_count{model=\"m\"}"), 2.0);
    assert!(count("kiln_compute_seconds_sum{model=\"m\"}") > 0.0);
    // Process metrics.
    assert!(count("process_resident_memory_bytes") > 1e6);
    assert!(count("process_open_fds") >= 3.0);
    assert!(count("process_cpu_seconds_total") >= 0.0);
    assert!(count("process_threads") >= 2.0);

    // One JSON access line per request, inside a span with its id.
    unsafe { libc::kill(server.child.id() as i32, libc::SIGTERM) };
    server.child.wait().unwrap();
    let text = std::fs::read_to_string(d.join("serve.log")).unwrap();
    let access: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .filter(|v| v["target"] == "kiln_serve::access")
        .collect();
    let find = |id: &str| {
        access
            .iter()
            .find(|v| v["span"]["request_id"] == id)
            .unwrap_or_else(|| panic!("no access line for {id}:\n{text}"))
    };
    let line = find("client-42");
    assert_eq!(line["fields"]["status"], 200);
    assert_eq!(line["span"]["method"], "POST");
    assert_eq!(line["span"]["path"], "/v1/models/m/predict");
    assert!(line["fields"]["latency_ms"].as_f64().unwrap() > 0.0);
    assert_eq!(find(made)["span"]["path"], "/v1/models/m:predict");
    let statuses: Vec<u64> = access
        .iter()
        .map(|v| v["fields"]["status"].as_u64().unwrap())
        .collect();
    for status in [200, 200, 400, 404, 404] {
        assert!(statuses.contains(&status), "{statuses:?}");
    }

    // At --log-level warn there are no access lines; a bad level is refused.
    let log = std::fs::File::create(d.join("quiet.log")).unwrap();
    let mut quiet = start_logging_to(
        d,
        &[&format!("m={run}"), "--log-level", "warn"],
        Stdio::from(log),
    );
    assert_eq!(
        post_json(quiet.port, "/v1/models/m/predict", &record).0,
        200
    );
    unsafe { libc::kill(quiet.child.id() as i32, libc::SIGTERM) };
    quiet.child.wait().unwrap();
    let text = std::fs::read_to_string(d.join("quiet.log")).unwrap();
    assert!(!text.contains("answered"), "{text}");
    let err = kiln_err(d, &["serve", &run, "--log-level", "loud"]);
    assert!(
        err.contains("--log-level = \"loud\": expected one of"),
        "{err}"
    );
}

/// gRPC takes the same bearer token and is counted in the same metrics, by its method's
/// route and the model it names. Needs python3 with `tritonclient[grpc]`.
#[test]
#[ignore]
fn grpc_honours_the_token_and_is_counted_by_model() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let run = train_mlp(d);
    let grpc_port = free_port().to_string();
    let server = start(
        d,
        &[
            &format!("m={run}"),
            "--token",
            "s3cret",
            "--grpc-port",
            &grpc_port,
        ],
    );
    let script = r#"
import sys
import numpy as np
import tritonclient.grpc as g
from tritonclient.utils import InferenceServerException
c = g.InferenceServerClient(url=sys.argv[1])
width = int(c.get_model_metadata("m", headers={"authorization": "Bearer s3cret"}, as_json=True)["inputs"][0]["shape"][1])
x = g.InferInput("features", [2, width], "FP32")
x.set_data_from_numpy(np.zeros((2, width), dtype=np.float32))
try:
    c.infer("m", [x])
    sys.exit("no token: answered")
except InferenceServerException as e:
    assert "UNAUTHENTICATED" in str(e.status()), e
r = c.infer("m", [x], headers={"authorization": "Bearer s3cret"})
assert r.as_numpy("probabilities").shape == (2, 2), r.as_numpy("probabilities").shape
print("ok")
"#;
    let out = std::process::Command::new("python3")
        .args(["-c", script, &format!("127.0.0.1:{grpc_port}")])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let (_, _, body) = http(
        server.port,
        "GET",
        "/metrics",
        &[("authorization", "Bearer s3cret")],
        b"",
    );
    let metrics = String::from_utf8(body).unwrap();
    for line in [
        "kiln_requests_total{code=\"200\",model=\"m\",route=\"/inference.GRPCInferenceService/ModelInfer\",version=\"1\"} 1",
        "kiln_requests_total{code=\"401\",model=\"\",route=\"/inference.GRPCInferenceService/ModelInfer\",version=\"\"} 1",
        "kiln_rejections_total{reason=\"unauthorized\"} 1",
        "kiln_compute_seconds_count{model=\"m\"} 1",
    ] {
        assert!(metrics.contains(line), "no {line} in\n{metrics}");
    }
}

#[test]
fn a_model_reading_windows_takes_token_rows_of_any_window_width() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("reviews.csv"), reviews_csv(200, 5)).unwrap();
    std::fs::write(
        d.join("windows.toml"),
        r#"
seed = 2
[data]
source = "reviews.csv"
target = "sentiment"
id_column = "id"
[text]
tokenizer = "bpe"
vocab_size = 300
windows = 3
window_overlap = 1
[model]
type = "transformer"
layers = 1
heads = 2
embd = 16
context = 8
[trainer]
epochs = 1
[output]
name = "windows"
plots = false
"#,
    )
    .unwrap();
    kiln_ok(d, &["train", "windows.toml"]);
    let server = start(d, &["runs/windows"]);
    let port = server.port;
    let infer = |width: usize, data: Vec<i64>| {
        post_json(
            port,
            "/v2/models/windows/infer",
            &json!({"inputs": [{"name": "tokens", "datatype": "INT64", "shape": [1, width], "data": data}]}),
        )
    };
    let logits = |body: &Value| -> Vec<f64> {
        body["outputs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["name"] == "logits")
            .unwrap()["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect()
    };
    // Three windows of 4 ids, and the same windows each padded to the context of 8.
    let (a, b, c) = ([5, 9, 3, 0], [7, 2, 11, 4], [12, 0, 0, 0]);
    let short: Vec<i64> = [a, b, c].concat();
    let pad = |w: [i64; 4]| [&w[..], &[0; 4]].concat();
    let full: Vec<i64> = [pad(a), pad(b), pad(c)].concat();
    let (status, narrow) = infer(12, short);
    assert_eq!(status, 200, "{narrow}");
    let (status, wide) = infer(24, full);
    assert_eq!(status, 200, "{wide}");
    let (x, y) = (logits(&narrow), logits(&wide));
    assert!(
        x.iter().zip(&y).all(|(p, q)| (p - q).abs() < 1e-5),
        "{x:?} {y:?}"
    );
    // Window 2 of another text changes the output: every window is read.
    let (_, other) = infer(12, [a, b, [30, 0, 0, 0]].concat());
    assert_ne!(logits(&other), x);
    // Rows that do not split into the windows, or windows wider than the context.
    for width in [13, 27] {
        let (status, body) = infer(width, vec![1; width]);
        assert_eq!(status, 400, "{body}");
        assert!(
            body["error"].as_str().unwrap().contains("3 windows"),
            "{body}"
        );
    }
    // An id outside the vocabulary is named at its position in the row.
    let (status, body) = infer(12, [a, [7, 2, 99999, 4], c].concat());
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("position 6"),
        "{body}"
    );
    // Raw text is read in windows as kiln predict reads it.
    let long = "the film was a plot with actors and music the film was a plot superb the film";
    let (status, body) = post_json(
        port,
        "/v1/models/windows/predict",
        &json!({"instances": [long]}),
    );
    assert_eq!(status, 200, "{body}");
    std::fs::write(d.join("new.csv"), format!("id,review\nn1,\"{long}\"\n")).unwrap();
    kiln_ok(
        d,
        &[
            "predict",
            "runs/windows",
            "--data",
            "new.csv",
            "--out",
            "pred.csv",
            "--proba",
        ],
    );
    let pred = std::fs::read_to_string(d.join("pred.csv")).unwrap();
    let served = body["predictions"][0]["probabilities"]["pos"]
        .as_f64()
        .unwrap();
    let row: Vec<&str> = pred.lines().nth(1).unwrap().split(',').collect();
    let header: Vec<&str> = pred.lines().next().unwrap().split(',').collect();
    let at = header.iter().position(|h| *h == "proba_pos").unwrap();
    let predicted: f64 = row[at].parse().unwrap();
    assert!((served - predicted).abs() < 1e-5, "{served} vs {pred}");
}
