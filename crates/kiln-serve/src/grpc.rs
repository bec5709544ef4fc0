//! The Open Inference Protocol over gRPC: KServe v2's `inference.GRPCInferenceService`
//! (`ServerLive`, `ServerReady`, `ModelReady`, `ServerMetadata`, `ModelMetadata`,
//! `ModelInfer`) and Triton's `RepositoryIndex`, the interface `tritonclient.grpc` speaks,
//! on its own port.
//!
//! The messages are declared here with `prost`'s derive, field for field after the
//! protocol's published definition, so the build needs no `protoc`; the service dispatches on
//! the method path with tonic's unary handler. `ModelInfer` shares the HTTP endpoint's
//! checks and model runs ([`crate::v2::infer_inputs`]); the same token, concurrency limit,
//! metrics and access lines apply.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::http::{HeaderValue, Request, Response, StatusCode};
use serde_json::Value;
use tonic::body::Body;
use tonic::server::NamedService;
use tonic::{Code, Status};
use tower_http::request_id::{MakeRequestId, MakeRequestUuid};
use tracing::Instrument;

use crate::error::ApiError;
use crate::metrics::Rejection;
use crate::v2::{InputTensor, Output};
use crate::{AppState, InFlight, record_labels};

/// The protocol's messages.
#[allow(missing_docs)]
pub mod proto {
    use std::collections::HashMap;

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ServerLiveRequest {}

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ServerLiveResponse {
        #[prost(bool, tag = "1")]
        pub live: bool,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ServerReadyRequest {}

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ServerReadyResponse {
        #[prost(bool, tag = "1")]
        pub ready: bool,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ModelReadyRequest {
        #[prost(string, tag = "1")]
        pub name: String,
        #[prost(string, tag = "2")]
        pub version: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ModelReadyResponse {
        #[prost(bool, tag = "1")]
        pub ready: bool,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ServerMetadataRequest {}

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ServerMetadataResponse {
        #[prost(string, tag = "1")]
        pub name: String,
        #[prost(string, tag = "2")]
        pub version: String,
        #[prost(string, repeated, tag = "3")]
        pub extensions: Vec<String>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ModelMetadataRequest {
        #[prost(string, tag = "1")]
        pub name: String,
        #[prost(string, tag = "2")]
        pub version: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct TensorMetadata {
        #[prost(string, tag = "1")]
        pub name: String,
        #[prost(string, tag = "2")]
        pub datatype: String,
        #[prost(int64, repeated, tag = "3")]
        pub shape: Vec<i64>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ModelMetadataResponse {
        #[prost(string, tag = "1")]
        pub name: String,
        #[prost(string, repeated, tag = "2")]
        pub versions: Vec<String>,
        #[prost(string, tag = "3")]
        pub platform: String,
        #[prost(message, repeated, tag = "4")]
        pub inputs: Vec<TensorMetadata>,
        #[prost(message, repeated, tag = "5")]
        pub outputs: Vec<TensorMetadata>,
    }

    /// Triton's model repository extension (`RepositoryIndex`), which `tritonclient` lists
    /// models with.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct RepositoryIndexRequest {
        #[prost(string, tag = "1")]
        pub repository_name: String,
        #[prost(bool, tag = "2")]
        pub ready: bool,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ModelIndex {
        #[prost(string, tag = "1")]
        pub name: String,
        #[prost(string, tag = "2")]
        pub version: String,
        #[prost(string, tag = "3")]
        pub state: String,
        #[prost(string, tag = "4")]
        pub reason: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct RepositoryIndexResponse {
        #[prost(message, repeated, tag = "1")]
        pub models: Vec<ModelIndex>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct InferParameter {
        #[prost(oneof = "ParameterChoice", tags = "1, 2, 3")]
        pub parameter_choice: Option<ParameterChoice>,
    }

    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum ParameterChoice {
        #[prost(bool, tag = "1")]
        Bool(bool),
        #[prost(int64, tag = "2")]
        Int64(i64),
        #[prost(string, tag = "3")]
        Text(String),
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct InferTensorContents {
        #[prost(bool, repeated, tag = "1")]
        pub bool_contents: Vec<bool>,
        #[prost(int32, repeated, tag = "2")]
        pub int_contents: Vec<i32>,
        #[prost(int64, repeated, tag = "3")]
        pub int64_contents: Vec<i64>,
        #[prost(uint32, repeated, tag = "4")]
        pub uint_contents: Vec<u32>,
        #[prost(uint64, repeated, tag = "5")]
        pub uint64_contents: Vec<u64>,
        #[prost(float, repeated, tag = "6")]
        pub fp32_contents: Vec<f32>,
        #[prost(double, repeated, tag = "7")]
        pub fp64_contents: Vec<f64>,
        #[prost(bytes = "vec", repeated, tag = "8")]
        pub bytes_contents: Vec<Vec<u8>>,
    }

    /// An input tensor of a request, or an output tensor of a response (one layout:
    /// `InferInputTensor` and `InferOutputTensor` in the protocol).
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct InferTensor {
        #[prost(string, tag = "1")]
        pub name: String,
        #[prost(string, tag = "2")]
        pub datatype: String,
        #[prost(int64, repeated, tag = "3")]
        pub shape: Vec<i64>,
        #[prost(map = "string, message", tag = "4")]
        pub parameters: HashMap<String, InferParameter>,
        #[prost(message, optional, tag = "5")]
        pub contents: Option<InferTensorContents>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct InferRequestedOutputTensor {
        #[prost(string, tag = "1")]
        pub name: String,
        #[prost(map = "string, message", tag = "2")]
        pub parameters: HashMap<String, InferParameter>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ModelInferRequest {
        #[prost(string, tag = "1")]
        pub model_name: String,
        #[prost(string, tag = "2")]
        pub model_version: String,
        #[prost(string, tag = "3")]
        pub id: String,
        #[prost(map = "string, message", tag = "4")]
        pub parameters: HashMap<String, InferParameter>,
        #[prost(message, repeated, tag = "5")]
        pub inputs: Vec<InferTensor>,
        #[prost(message, repeated, tag = "6")]
        pub outputs: Vec<InferRequestedOutputTensor>,
        #[prost(bytes = "vec", repeated, tag = "7")]
        pub raw_input_contents: Vec<Vec<u8>>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ModelInferResponse {
        #[prost(string, tag = "1")]
        pub model_name: String,
        #[prost(string, tag = "2")]
        pub model_version: String,
        #[prost(string, tag = "3")]
        pub id: String,
        #[prost(map = "string, message", tag = "4")]
        pub parameters: HashMap<String, InferParameter>,
        #[prost(message, repeated, tag = "5")]
        pub outputs: Vec<InferTensor>,
        #[prost(bytes = "vec", repeated, tag = "6")]
        pub raw_output_contents: Vec<Vec<u8>>,
    }
}

use proto::*;

/// The service's name, the first part of every method path.
const SERVICE: &str = "inference.GRPCInferenceService";

/// `inference.GRPCInferenceService` over the server's models.
#[derive(Debug, Clone)]
pub struct GrpcService {
    state: Arc<AppState>,
}

impl GrpcService {
    /// The service over `state`'s models, limits and metrics.
    pub fn new(state: Arc<AppState>) -> Self {
        Self { state }
    }
}

impl NamedService for GrpcService {
    const NAME: &'static str = SERVICE;
}

type Respond = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

impl tower::Service<Request<Body>> for GrpcService {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Respond;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let state = self.state.clone();
        Box::pin(async move { Ok(answer(state, request).await) })
    }
}

/// One call, with its request id, access line and metrics around it.
async fn answer(state: Arc<AppState>, mut request: Request<Body>) -> Response<Body> {
    let started = Instant::now();
    let id = match request.headers().get("x-request-id") {
        Some(id) => id.clone(),
        None => MakeRequestUuid
            .make_request_id(&request)
            .map(|id| id.header_value().clone())
            .unwrap_or_else(|| HeaderValue::from_static("")),
    };
    request.headers_mut().insert("x-request-id", id.clone());
    let path = request.uri().path().to_string();
    // `/inference.GRPCInferenceService/ModelInfer`: another service's path has no method here.
    let method = path
        .strip_prefix(&format!("/{SERVICE}/"))
        .unwrap_or(&path)
        .to_string();
    let span = tracing::info_span!(
        "request",
        method = "gRPC",
        path = %path,
        request_id = %id.to_str().unwrap_or("")
    );
    let (mut response, model) = match admit(&state, &request) {
        Err(status) => (status.into_http(), String::new()),
        Ok(held) => {
            let result = dispatch(&state, &method, request)
                .instrument(span.clone())
                .await;
            drop(held);
            result
        }
    };
    response.headers_mut().insert("x-request-id", id);
    // An error is a trailers-only response: its status is in the headers (a decoding error
    // from tonic included); a success carries it in the trailers.
    let code = response
        .headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
        .map_or(Code::Ok, Code::from);
    let http_status = http_status(code);
    let route = format!("/{SERVICE}/{method}");
    let version = if model.is_empty() || model == "unknown" {
        ""
    } else {
        "1"
    };
    record_labels(&state, &route, &model, version, http_status, started);
    span.in_scope(|| {
        tracing::info!(
            target: "kiln_serve::access",
            status = http_status,
            grpc_status = code as i32,
            latency_ms = started.elapsed().as_secs_f64() * 1e3,
            "answered"
        )
    });
    response
}

/// The token check and a concurrency slot (`ModelInfer` only, as for HTTP's POSTs).
fn admit(state: &AppState, request: &Request<Body>) -> Result<Option<InFlight>, Status> {
    if !state.authorised(request.headers()) {
        state.metrics.reject(Rejection::Unauthorized);
        return Err(Status::unauthenticated(
            "missing or wrong bearer token (authorization: Bearer ...)",
        ));
    }
    if !request.uri().path().ends_with("/ModelInfer") {
        return Ok(None);
    }
    let permit = state.permits.clone().try_acquire_owned().map_err(|_| {
        state.metrics.reject(Rejection::ConcurrencyLimit);
        Status::resource_exhausted(format!(
            "more than {} requests at once; retry later",
            state.config.max_concurrent
        ))
    })?;
    state.metrics.in_flight.inc();
    Ok(Some(InFlight {
        _permit: Some(permit),
        metrics: state.metrics.clone(),
    }))
}

/// Runs the method `method`: its response and the model it named (for the metrics).
async fn dispatch(
    state: &Arc<AppState>,
    method: &str,
    request: Request<Body>,
) -> (Response<Body>, String) {
    let model = std::sync::Mutex::new(String::new());
    let name_model = |name: &str| {
        *model.lock().expect("not poisoned") = if state.models.contains_key(name) {
            name.to_string()
        } else {
            "unknown".to_string()
        };
    };
    let limit = state.config.max_body_bytes;
    let response = match method {
        "ServerLive" => {
            unary(request, limit, |_: ServerLiveRequest| async {
                Ok(ServerLiveResponse { live: true })
            })
            .await
        }
        "ServerReady" => {
            unary(request, limit, |_: ServerReadyRequest| async {
                Ok(ServerReadyResponse {
                    ready: state.models.values().all(|m| m.is_ready()),
                })
            })
            .await
        }
        "ServerMetadata" => {
            unary(request, limit, |_: ServerMetadataRequest| async {
                Ok(ServerMetadataResponse {
                    name: "kiln".into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                    extensions: vec!["model_repository".into()],
                })
            })
            .await
        }
        "RepositoryIndex" => {
            unary(request, limit, |r: RepositoryIndexRequest| async move {
                let models = state
                    .models
                    .iter()
                    .map(|(name, m)| ModelIndex {
                        name: name.clone(),
                        version: "1".into(),
                        state: if m.is_ready() { "READY" } else { "UNAVAILABLE" }.into(),
                        reason: if m.is_ready() {
                            String::new()
                        } else {
                            "the batch worker has stopped".into()
                        },
                    })
                    .filter(|m| !r.ready || m.state == "READY")
                    .collect();
                Ok(RepositoryIndexResponse { models })
            })
            .await
        }
        "ModelReady" => {
            unary(request, limit, |r: ModelReadyRequest| async move {
                name_model(&r.name);
                model_for(state, &r.name, &r.version).map(|m| ModelReadyResponse {
                    ready: m.is_ready(),
                })
            })
            .await
        }
        "ModelMetadata" => {
            unary(request, limit, |r: ModelMetadataRequest| async move {
                name_model(&r.name);
                model_for(state, &r.name, &r.version).map(|m| {
                    let tensors = |specs: Vec<crate::model::TensorSpec>| {
                        specs
                            .into_iter()
                            .map(|s| TensorMetadata {
                                name: s.name,
                                datatype: s.datatype.into(),
                                shape: s.shape,
                            })
                            .collect()
                    };
                    ModelMetadataResponse {
                        name: m.name.clone(),
                        versions: vec!["1".into()],
                        platform: format!("kiln_{}", m.kind()),
                        inputs: tensors(m.inputs()),
                        outputs: tensors(m.outputs()),
                    }
                })
            })
            .await
        }
        "ModelInfer" => {
            unary(request, limit, |r: ModelInferRequest| async move {
                name_model(&r.model_name);
                model_infer(state, r).await
            })
            .await
        }
        other => {
            let status = Status::unimplemented(format!(
                "{SERVICE} has no method \"{other}\"; kiln serves ServerLive, ServerReady, ModelReady, ServerMetadata, ModelMetadata, ModelInfer and RepositoryIndex"
            ));
            status.into_http()
        }
    };
    let model = model.into_inner().expect("not poisoned");
    (response, model)
}

/// Decodes one `Req`, answers it with `handle` and encodes the response (tonic's unary path:
/// framing, compression, size limits and errors as gRPC statuses).
async fn unary<Req, Resp, F, Fut>(request: Request<Body>, limit: usize, handle: F) -> Response<Body>
where
    Req: prost::Message + Default + Send + 'static,
    Resp: prost::Message + Send + 'static,
    F: FnOnce(Req) -> Fut,
    Fut: Future<Output = Result<Resp, Status>>,
{
    let codec = tonic_prost::ProstCodec::<Resp, Req>::default();
    let mut grpc = tonic::server::Grpc::new(codec)
        .max_decoding_message_size(limit)
        .max_encoding_message_size(usize::MAX);
    // `Grpc::unary` wants a `Service`; the handler runs once, so it is taken on the call.
    let mut handle = Some(handle);
    let service = tower::service_fn(move |r: tonic::Request<Req>| {
        let handle = handle.take().expect("one call per request");
        let fut = handle(r.into_inner());
        async move { fut.await.map(tonic::Response::new) }
    });
    grpc.unary(service, request).await
}

/// The served model `name` at `version` (empty or `1`).
fn model_for<'a>(
    state: &'a AppState,
    name: &str,
    version: &str,
) -> Result<&'a crate::ServedModel, Status> {
    let model = state.model(name).map_err(|e| to_status(&e))?;
    if !version.is_empty() && version != "1" {
        return Err(Status::not_found(format!(
            "model version \"{version}\" does not exist; kiln serves version \"1\""
        )));
    }
    Ok(model)
}

/// `ModelInfer`: inputs as typed contents or raw bytes, outputs as raw little-endian FP32
/// bytes (as Triton answers), in the order asked for.
async fn model_infer(
    state: &AppState,
    request: ModelInferRequest,
) -> Result<ModelInferResponse, Status> {
    let model = model_for(state, &request.model_name, &request.model_version)?;
    let raw = !request.raw_input_contents.is_empty();
    if raw && request.raw_input_contents.len() != request.inputs.len() {
        return Err(Status::invalid_argument(format!(
            "{} raw_input_contents for {} inputs: give one per input, in their order",
            request.raw_input_contents.len(),
            request.inputs.len()
        )));
    }
    let tensors: Vec<InputTensor> = request
        .inputs
        .iter()
        .map(|input| {
            let data = match (&input.contents, raw) {
                (Some(_), true) => {
                    return Err(Status::invalid_argument(format!(
                        "input \"{}\": contents and raw_input_contents together; give one",
                        input.name
                    )));
                }
                (Some(c), false) => Some(contents_json(c)),
                (None, true) => None,
                (None, false) => {
                    return Err(Status::invalid_argument(format!(
                        "input \"{}\": no data (neither contents nor raw_input_contents)",
                        input.name
                    )));
                }
            };
            Ok(InputTensor {
                name: input.name.clone(),
                shape: input.shape.clone(),
                datatype: input.datatype.clone(),
                data,
                parameters: None,
            })
        })
        .collect::<Result<_, _>>()?;
    let inputs: Vec<(&InputTensor, Option<&[u8]>)> = tensors
        .iter()
        .enumerate()
        .map(|(i, t)| (t, raw.then(|| request.raw_input_contents[i].as_slice())))
        .collect();
    let mut outputs = crate::v2::infer_inputs(model, &inputs, state.limits(), &state.metrics)
        .await
        .map_err(|e| to_status(&e))?;
    let chosen: Vec<Output> = if request.outputs.is_empty() {
        outputs
    } else {
        request
            .outputs
            .iter()
            .map(|r| crate::v2::take_output(model, &mut outputs, &r.name))
            .collect::<Result<_, _>>()
            .map_err(|e| to_status(&e))?
    };
    Ok(ModelInferResponse {
        model_name: model.name.clone(),
        model_version: "1".into(),
        id: request.id,
        parameters: HashMap::new(),
        outputs: chosen
            .iter()
            .map(|o| InferTensor {
                name: o.name.clone(),
                datatype: "FP32".into(),
                shape: o.shape.iter().map(|&d| d as i64).collect(),
                parameters: HashMap::new(),
                contents: None,
            })
            .collect(),
        raw_output_contents: chosen
            .iter()
            .map(|o| o.values.iter().flat_map(|v| v.to_le_bytes()).collect())
            .collect(),
    })
}

/// Typed contents as the JSON array the HTTP endpoint decodes (every kind the model could
/// take; the checks that follow name a wrong datatype).
fn contents_json(c: &InferTensorContents) -> Value {
    let numbers: Vec<Value> = if !c.fp32_contents.is_empty() {
        c.fp32_contents
            .iter()
            .map(|&v| json_f64(v as f64))
            .collect()
    } else if !c.fp64_contents.is_empty() {
        c.fp64_contents.iter().map(|&v| json_f64(v)).collect()
    } else if !c.int64_contents.is_empty() {
        c.int64_contents.iter().map(|&v| Value::from(v)).collect()
    } else if !c.int_contents.is_empty() {
        c.int_contents.iter().map(|&v| Value::from(v)).collect()
    } else if !c.uint64_contents.is_empty() {
        c.uint64_contents.iter().map(|&v| Value::from(v)).collect()
    } else if !c.uint_contents.is_empty() {
        c.uint_contents.iter().map(|&v| Value::from(v)).collect()
    } else if !c.bool_contents.is_empty() {
        c.bool_contents.iter().map(|&v| Value::from(v)).collect()
    } else {
        c.bytes_contents
            .iter()
            .map(|b| match std::str::from_utf8(b) {
                Ok(s) => Value::from(s),
                // Not UTF-8: passed on as bytes' numbers, which the text check refuses.
                Err(_) => Value::from(b.clone()),
            })
            .collect()
    };
    Value::Array(numbers)
}

/// A JSON number, or `null` for NaN (a missing feature, as in the HTTP endpoint).
fn json_f64(v: f64) -> Value {
    serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number)
}

/// An HTTP-status error as the gRPC status a client expects.
fn to_status(e: &ApiError) -> Status {
    let code = match e.status {
        StatusCode::BAD_REQUEST | StatusCode::UNPROCESSABLE_ENTITY => Code::InvalidArgument,
        StatusCode::NOT_FOUND => Code::NotFound,
        StatusCode::PAYLOAD_TOO_LARGE => Code::ResourceExhausted,
        StatusCode::TOO_MANY_REQUESTS => Code::ResourceExhausted,
        StatusCode::UNAUTHORIZED => Code::Unauthenticated,
        StatusCode::SERVICE_UNAVAILABLE => Code::Unavailable,
        _ => Code::Internal,
    };
    Status::new(code, e.message.clone())
}

/// A gRPC code as the HTTP status of the metrics (as the HTTP endpoints count them).
fn http_status(code: Code) -> u16 {
    match code {
        Code::Ok => 200,
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => 400,
        Code::Unauthenticated => 401,
        Code::PermissionDenied => 403,
        Code::NotFound => 404,
        Code::ResourceExhausted => 429,
        Code::Unimplemented => 501,
        Code::Unavailable => 503,
        Code::DeadlineExceeded => 504,
        _ => 500,
    }
}
