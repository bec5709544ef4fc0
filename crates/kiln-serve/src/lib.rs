//! `kiln serve`: an HTTP inference server for kiln run directories.
//!
//! - Open Inference Protocol (KServe v2, spoken by Triton and `tritonclient`):
//!   `GET /v2`, `/v2/health/live`, `/v2/health/ready`, `/v2/models/{name}[/versions/{v}]`,
//!   `.../ready`, `POST .../infer` (JSON or the binary tensor extension) and
//!   `POST /v2/repository/index`. Tensors are the ONNX export's interface (`features`,
//!   `pixels`, `categories`, `tokens` in; `logits`, `probabilities`, `prediction` out), with
//!   the dense normalisation applied by the server.
//! - `POST /v1/models/{name}/predict` takes raw records and applies the saved preprocessing;
//!   `POST /v1/models/{name}/generate` samples from a GPT, optionally streamed (SSE).
//! - Dynamic batching per model ([`BatchSettings`]), `GET /metrics` (Prometheus), limits on
//!   body size, rows, generation length and concurrent requests (429 past it), optional
//!   bearer token, graceful shutdown on Ctrl-C/SIGTERM that lets in-flight requests finish.
//! - Slow and idle clients: a header-read, a body-read and a keep-alive idle timeout and a
//!   cap on open connections ([`ServeConfig`]), each rejection counted in
//!   `kiln_rejections_total{reason}`.
//! - A panicking forward pass fails only its own batch (500); readiness reports a model
//!   whose batch worker has stopped.
#![warn(missing_docs)]

mod batcher;
mod error;
mod grpc;
mod metrics;
mod model;
mod server;
mod v1;
mod v2;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::body::{Body as HttpBody, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, MatchedPath, Path, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use tokio::sync::Semaphore;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

pub use batcher::{BatchSettings, Forward};
pub use error::ApiError;
pub use grpc::GrpcService;
pub use metrics::{Metrics, Rejection};
pub use model::ServedModel;

/// Server settings.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Address to bind (loopback by default).
    pub addr: SocketAddr,
    /// Where to serve the Open Inference Protocol over gRPC too, if anywhere.
    pub grpc_addr: Option<SocketAddr>,
    /// Dynamic batching.
    pub batching: BatchSettings,
    /// Largest request body in bytes.
    pub max_body_bytes: usize,
    /// Most rows (instances) per request.
    pub max_rows: usize,
    /// Most tokens one generation request may ask for.
    pub max_new_tokens: usize,
    /// Requests served at once; more get 429.
    pub max_concurrent: usize,
    /// Required `Authorization: Bearer` token (health endpoints stay open).
    pub token: Option<String>,
    /// A new connection's first request head, or a request head once its first byte has
    /// arrived, must be complete within this; else the connection is closed.
    pub header_timeout: Duration,
    /// A request body must arrive completely within this after its head; else 408.
    pub body_timeout: Duration,
    /// A keep-alive connection with no request in flight is closed after this.
    pub idle_timeout: Duration,
    /// A connection whose client has not read any of its response for this long (a write
    /// blocked on a full receive window) is closed, streamed responses included.
    pub write_timeout: Duration,
    /// On Ctrl-C/SIGTERM, in-flight requests get this long to finish; then they are cut.
    pub shutdown_grace: Duration,
    /// Open connections at most; past it a new connection gets 503 and is closed.
    pub max_connections: usize,
    /// Bytes of request bodies held in memory at once, over all connections (bodies are read
    /// whole before a request takes a concurrency slot); past it 503.
    pub max_body_memory: usize,
    /// After this long with no request in flight the `on_idle` hook of [`serve`] runs once
    /// (kiln's binary hands freed memory back to the OS there).
    pub idle_after: Duration,
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            addr: SocketAddr::from(([127, 0, 0, 1], 8000)),
            grpc_addr: None,
            batching: BatchSettings::default(),
            max_body_bytes: 16 << 20,
            max_rows: 1024,
            max_new_tokens: 1024,
            max_concurrent: 256,
            token: None,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            write_timeout: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(60),
            max_connections: 1024,
            max_body_memory: 256 << 20,
            idle_after: Duration::from_secs(1),
        }
    }
}

/// A model to load: its URL name and run directory.
#[derive(Debug, Clone)]
pub struct ModelSource {
    /// Name in URLs.
    pub name: String,
    /// Run directory.
    pub run_dir: PathBuf,
}

/// Everything a handler needs.
#[derive(Debug)]
pub struct AppState {
    models: BTreeMap<String, ServedModel>,
    config: ServeConfig,
    metrics: Arc<Metrics>,
    permits: Arc<Semaphore>,
    /// The body memory budget, one permit per KiB.
    body_memory: Arc<Semaphore>,
    /// Requests answered so far (the idle hook runs once per quiet spell after activity).
    answered: AtomicU64,
}

type Shared = Arc<AppState>;

impl AppState {
    /// Loads every model; names must be unique.
    pub fn load(
        sources: &[ModelSource],
        config: ServeConfig,
    ) -> Result<Self, kiln_runtime::RuntimeError> {
        let metrics = Arc::new(Metrics::new());
        let mut models = BTreeMap::new();
        for s in sources {
            if models.contains_key(&s.name) {
                return Err(kiln_runtime::RuntimeError::Invalid(format!(
                    "two models are named \"{}\": name them with NAME=RUN_DIR",
                    s.name
                )));
            }
            let m = ServedModel::load(&s.name, &s.run_dir, config.batching, metrics.clone())?;
            models.insert(s.name.clone(), m);
        }
        Ok(Self {
            models,
            permits: Arc::new(Semaphore::new(config.max_concurrent)),
            body_memory: Arc::new(Semaphore::new(config.max_body_memory.div_ceil(1024))),
            config,
            metrics,
            answered: AtomicU64::new(0),
        })
    }

    /// Serves already-built models (each model's name is its key).
    pub fn from_models(
        models: Vec<ServedModel>,
        config: ServeConfig,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            models: models.into_iter().map(|m| (m.name.clone(), m)).collect(),
            permits: Arc::new(Semaphore::new(config.max_concurrent)),
            body_memory: Arc::new(Semaphore::new(config.max_body_memory.div_ceil(1024))),
            config,
            metrics,
            answered: AtomicU64::new(0),
        }
    }

    /// The server's metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Names and kinds of the loaded models.
    pub fn models(&self) -> Vec<(String, String)> {
        self.models
            .values()
            .map(|m| (m.name.clone(), m.kind()))
            .collect()
    }

    fn model(&self, name: &str) -> Result<&ServedModel, ApiError> {
        self.models.get(name).ok_or_else(|| {
            ApiError::not_found(format!(
                "unknown model \"{name}\"; this server has {}",
                self.models
                    .keys()
                    .map(|k| format!("\"{k}\""))
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })
    }

    /// Whether `headers` carry the server's bearer token (always, when it has none).
    fn authorised(&self, headers: &HeaderMap) -> bool {
        let Some(token) = self.config.token.as_deref() else {
            return true;
        };
        headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .is_some_and(|t| constant_time_eq(t.as_bytes(), token.as_bytes()))
    }

    fn limits(&self) -> v2::RequestLimits {
        v2::RequestLimits {
            max_rows: self.config.max_rows,
        }
    }
}

/// The HTTP routes over `state`.
pub fn router(state: Shared) -> Router {
    let max_body = state.config.max_body_bytes;
    Router::new()
        .route("/v2", get(server_metadata))
        .route("/v2/health/live", get(live))
        .route("/v2/health/ready", get(ready))
        .route("/v2/repository/index", post(repository_index))
        .route("/v2/models/{name}", get(model_metadata))
        .route(
            "/v2/models/{name}/versions/{version}",
            get(model_metadata_versioned),
        )
        .route("/v2/models/{name}/ready", get(model_ready))
        .route(
            "/v2/models/{name}/versions/{version}/ready",
            get(model_ready_versioned),
        )
        .route("/v2/models/{name}/infer", post(infer))
        .route(
            "/v2/models/{name}/versions/{version}/infer",
            post(infer_versioned),
        )
        .route("/v1/models/{name}/predict", post(predict))
        // KServe's v1 protocol: POST /v1/models/NAME:predict, the same body.
        .route("/v1/models/{target}", post(kserve_predict))
        .route("/v1/models/{name}/generate", post(generate))
        .route("/metrics", get(metrics_text))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(state.clone(), guard))
        .layer(DefaultBodyLimit::max(max_body))
        // Outermost first: give each request an id (a client's own `x-request-id` is
        // kept), log one access line per response inside a span carrying it, and echo it.
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(access_span)
                .on_request(())
                .on_response(access_line)
                .on_failure(()),
        )
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
        .with_state(state)
}

/// The span of one request: method, path and request id.
fn access_span(request: &Request) -> tracing::Span {
    let id = request
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    tracing::info_span!(
        "request",
        method = %request.method(),
        path = %request.uri().path(),
        request_id = %id
    )
}

/// The access line of one response (streamed responses: when their head is sent).
fn access_line(response: &Response, latency: Duration, _span: &tracing::Span) {
    tracing::info!(
        target: "kiln_serve::access",
        status = response.status().as_u16(),
        latency_ms = latency.as_secs_f64() * 1e3,
        "answered"
    );
}

/// Serves `state` on its address (and gRPC on [`ServeConfig::grpc_addr`]) until Ctrl-C or
/// SIGTERM; in-flight requests finish first. `on_ready` gets the bound addresses (HTTP,
/// gRPC); `on_idle` runs whenever the server has had no request in flight for
/// [`ServeConfig::idle_after`] after answering some.
pub async fn serve(
    state: AppState,
    on_ready: impl FnOnce(SocketAddr, Option<SocketAddr>),
    on_idle: impl FnMut() + Send + 'static,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(state.config.addr).await?;
    let grpc = match state.config.grpc_addr {
        Some(addr) => Some(tokio::net::TcpListener::bind(addr).await?),
        None => None,
    };
    let grpc_local = grpc.as_ref().map(|l| l.local_addr()).transpose()?;
    on_ready(listener.local_addr()?, grpc_local);
    let state = Arc::new(state);
    let (stop, stopped) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = stop.send(true);
    });
    let signalled = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let grpc = grpc.map(|l| tokio::spawn(serve_grpc(l, state.clone(), signalled(stopped.clone()))));
    serve_on(listener, state, signalled(stopped), on_idle).await?;
    if let Some(task) = grpc {
        task.await.map_err(std::io::Error::other)??;
    }
    Ok(())
}

/// Serves the Open Inference Protocol over gRPC ([`GrpcService`]) on `listener` until
/// `shutdown` completes; calls in flight finish first.
pub async fn serve_grpc(
    listener: tokio::net::TcpListener,
    state: Arc<AppState>,
    shutdown: impl std::future::Future<Output = ()>,
) -> std::io::Result<()> {
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    let streams = u32::try_from(state.config.max_concurrent).unwrap_or(u32::MAX);
    tonic::transport::Server::builder()
        .max_concurrent_streams(streams)
        .serve_with_incoming_shutdown(GrpcService::new(state), incoming, shutdown)
        .await
        .map_err(std::io::Error::other)
}

/// Serves `state` on `listener` until `shutdown` completes, then stops accepting, lets
/// in-flight requests finish and returns.
pub async fn serve_on(
    listener: tokio::net::TcpListener,
    state: Arc<AppState>,
    shutdown: impl std::future::Future<Output = ()>,
    on_idle: impl FnMut() + Send + 'static,
) -> std::io::Result<()> {
    server::run(listener, state, shutdown, on_idle).await
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

/// Auth, the concurrency limit and metrics around every request.
async fn guard(State(state): State<Shared>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let path = request.uri().path().to_string();
    let response = admitted(&state, &route, request, next).await;
    record(&state, &route, &path, &response, started);
    state.answered.fetch_add(1, Ordering::Relaxed);
    response
}

/// The response to an authorised request within the concurrency limit, or the 401/429.
async fn admitted(state: &Shared, route: &str, request: Request, next: Next) -> Response {
    let open = route.starts_with("/v2/health/");
    if !open && !state.authorised(request.headers()) {
        state.metrics.reject(Rejection::Unauthorized);
        return ApiError {
            status: StatusCode::UNAUTHORIZED,
            message: "missing or wrong bearer token (Authorization: Bearer ...)".into(),
        }
        .into_response();
    }
    // The body arrives before the request takes a concurrency slot, so a slow client holds
    // no slot; it has `body_timeout` to send it all.
    let (request, _body_memory) = match read_body(state, request).await {
        Ok(r) => r,
        Err(response) => return response,
    };
    let permit = if request.method() == axum::http::Method::POST {
        match state.permits.clone().try_acquire_owned() {
            Ok(p) => Some(p),
            Err(_) => {
                state.metrics.reject(Rejection::ConcurrencyLimit);
                return ApiError {
                    status: StatusCode::TOO_MANY_REQUESTS,
                    message: format!(
                        "more than {} requests at once; retry later",
                        state.config.max_concurrent
                    ),
                }
                .into_response();
            }
        }
    } else {
        None
    };
    state.metrics.in_flight.inc();
    let held = InFlight {
        _permit: permit,
        metrics: state.metrics.clone(),
    };
    let response = next.run(request).await;
    let streamed = response
        .headers()
        .get("content-type")
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
    if !streamed {
        return response; // `held` drops here: slot and gauge released
    }
    // A stream is in flight until its last event: keep the slot until then.
    let (parts, body) = response.into_parts();
    let body = HttpBody::from_stream(tokio_stream::StreamExt::map(
        body.into_data_stream(),
        move |chunk| {
            let _ = &held;
            chunk
        },
    ));
    Response::from_parts(parts, body)
}

/// Why a body could not be read.
enum BodyError {
    /// Past `max_body_bytes`.
    TooLarge,
    /// The bodies being read hold the whole `max_body_memory` budget.
    NoMemory,
    /// The connection broke.
    Broken(String),
}

/// Reads `body` whole, taking one permit of `budget` per KiB as its chunks arrive, so the
/// bodies of all connections together never hold more than the budget.
async fn collect_body(
    body: HttpBody,
    limit: usize,
    budget: &Arc<Semaphore>,
) -> Result<(Bytes, Option<tokio::sync::OwnedSemaphorePermit>), BodyError> {
    use axum::body::HttpBody as _;
    use http_body_util::BodyExt;
    let mut held: Option<tokio::sync::OwnedSemaphorePermit> = None;
    let mut held_kib = 0usize;
    // Takes budget for `bytes` of buffer before they are allocated.
    let mut reserve = |bytes: usize| -> Result<(), BodyError> {
        let need = bytes.div_ceil(1024).saturating_sub(held_kib);
        if need > 0 {
            let more = u32::try_from(need)
                .ok()
                .and_then(|n| budget.clone().try_acquire_many_owned(n).ok())
                .ok_or(BodyError::NoMemory)?;
            held_kib += need;
            match held.as_mut() {
                Some(p) => p.merge(more),
                None => held = Some(more),
            }
        }
        Ok(())
    };
    let mut body = body;
    // A declared length sizes the buffer once (and a too-large one is refused unread).
    let declared = body.size_hint().exact().unwrap_or(0);
    if declared > limit as u64 {
        return Err(BodyError::TooLarge);
    }
    reserve(declared as usize)?;
    let mut bytes = Vec::with_capacity(declared as usize);
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| BodyError::Broken(e.to_string()))?;
        let Ok(data) = frame.into_data() else {
            continue; // trailers
        };
        let len = bytes.len() + data.len();
        if len > limit {
            return Err(BodyError::TooLarge);
        }
        if len > bytes.capacity() {
            // Grow as `Vec` would (doubling), budgeted before the allocation.
            let capacity = len.max(2 * bytes.capacity()).min(limit);
            reserve(capacity)?;
            bytes.reserve_exact(capacity - bytes.len());
        }
        bytes.extend_from_slice(&data);
    }
    Ok((Bytes::from(bytes), held))
}

/// The request with its body read into memory (and the share of the body memory budget it
/// holds until dropped), or the 408 (too slow), 413 (too large), 503 (body memory full) or
/// 400 (broken) response.
async fn read_body(
    state: &AppState,
    request: Request,
) -> Result<(Request, Option<tokio::sync::OwnedSemaphorePermit>), Response> {
    let limit = state.config.max_body_bytes;
    let (parts, body) = request.into_parts();
    let read = collect_body(body, limit, &state.body_memory);
    match tokio::time::timeout(state.config.body_timeout, read).await {
        Ok(Ok((bytes, held))) => Ok((Request::from_parts(parts, HttpBody::from(bytes)), held)),
        Ok(Err(BodyError::NoMemory)) => {
            state.metrics.reject(Rejection::BodyMemory);
            let mut response = ApiError {
                status: StatusCode::SERVICE_UNAVAILABLE,
                message: format!(
                    "the server is reading {} MiB of request bodies already; retry later",
                    state.config.max_body_memory >> 20
                ),
            }
            .into_response();
            response.headers_mut().insert(
                axum::http::header::CONNECTION,
                axum::http::HeaderValue::from_static("close"),
            );
            Err(response)
        }
        Ok(Err(BodyError::TooLarge)) => {
            state.metrics.reject(Rejection::BodyTooLarge);
            Err(
                ApiError::too_large(format!("request body larger than {limit} bytes"))
                    .into_response(),
            )
        }
        Ok(Err(BodyError::Broken(e))) => {
            Err(ApiError::bad_request(format!("unreadable request body: {e}")).into_response())
        }
        Err(_) => {
            state.metrics.reject(Rejection::BodyTimeout);
            let mut response = ApiError {
                status: StatusCode::REQUEST_TIMEOUT,
                message: format!(
                    "the request body did not arrive within {} s",
                    state.config.body_timeout.as_secs_f64()
                ),
            }
            .into_response();
            // The rest of the body is unread: the connection cannot carry another request.
            response.headers_mut().insert(
                axum::http::header::CONNECTION,
                axum::http::HeaderValue::from_static("close"),
            );
            Err(response)
        }
    }
}

/// Holds a concurrency slot and counts in the in-flight gauge until dropped (after the
/// response, or after a streamed body's last event).
struct InFlight {
    _permit: Option<tokio::sync::OwnedSemaphorePermit>,
    metrics: Arc<Metrics>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.metrics.in_flight.dec();
    }
}

/// The `model` and `version` labels of a request: the served model its path names (KServe
/// v1's `NAME:predict` included) and the version it asks for, `1` when it names none.
/// A path naming no served model gets `""` (no model) or `unknown`, so that clients cannot
/// grow the label sets.
fn model_labels<'a>(state: &AppState, path: &'a str) -> (&'a str, &'a str) {
    let mut parts = path.trim_start_matches('/').split('/');
    let (Some("v1" | "v2"), Some("models"), Some(name)) =
        (parts.next(), parts.next(), parts.next())
    else {
        return ("", "");
    };
    let name = name.strip_suffix(":predict").unwrap_or(name);
    if !state.models.contains_key(name) {
        return ("unknown", "");
    }
    let version = match (parts.next(), parts.next()) {
        (Some("versions"), Some("1")) => "1",
        (Some("versions"), Some(_)) => "unknown",
        _ => "1",
    };
    (name, version)
}

fn record(state: &AppState, route: &str, path: &str, response: &Response, started: Instant) {
    let (model, version) = model_labels(state, path);
    let code = response.status().as_u16();
    record_labels(state, route, model, version, code, started);
}

/// Counts one answered request (`code` an HTTP status) and its latency.
fn record_labels(
    state: &AppState,
    route: &str,
    model: &str,
    version: &str,
    code: u16,
    started: Instant,
) {
    let failed = code >= 400;
    let code = code.to_string();
    state
        .metrics
        .requests
        .with_label_values(&[route, model, version, &code])
        .inc();
    if failed {
        state
            .metrics
            .errors
            .with_label_values(&[route, model, version, &code])
            .inc();
    }
    state
        .metrics
        .latency
        .with_label_values(&[route, model, version])
        .observe(started.elapsed().as_secs_f64());
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn body_bytes(body: Result<Bytes, BytesRejection>, limit: usize) -> Result<Bytes, ApiError> {
    body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::too_large(format!("request body larger than {limit} bytes"))
        } else {
            ApiError::bad_request(format!("unreadable request body: {e}"))
        }
    })
}

async fn not_found() -> ApiError {
    ApiError::not_found(
        "no such endpoint (see /v2, /v2/models/{name}, /v1/models/{name}/predict or :predict)",
    )
}

async fn server_metadata() -> Json<serde_json::Value> {
    Json(json!({
        "name": "kiln",
        "version": env!("CARGO_PKG_VERSION"),
        "extensions": ["binary_tensor_data", "model_repository"],
    }))
}

async fn live() -> StatusCode {
    StatusCode::OK
}

/// 200 while every model can answer (models load before the listener opens); 503 naming the
/// models whose batch worker has stopped.
async fn ready(State(state): State<Shared>) -> Response {
    let down: Vec<&str> = state
        .models
        .values()
        .filter(|m| !m.is_ready())
        .map(|m| m.name.as_str())
        .collect();
    if down.is_empty() {
        return StatusCode::OK.into_response();
    }
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(json!({
            "ready": false,
            "error": format!("models not ready (batch worker stopped): {}", down.join(", ")),
        })),
    )
        .into_response()
}

async fn repository_index(State(state): State<Shared>) -> Json<serde_json::Value> {
    Json(json!(
        state
            .models
            .iter()
            .map(|(n, m)| {
                if m.is_ready() {
                    json!({"name": n, "version": "1", "state": "READY"})
                } else {
                    json!({"name": n, "version": "1", "state": "UNAVAILABLE",
                           "reason": "the batch worker has stopped"})
                }
            })
            .collect::<Vec<_>>()
    ))
}

fn check_version(version: &str) -> Result<(), ApiError> {
    if version == "1" {
        Ok(())
    } else {
        Err(ApiError::not_found(format!(
            "model version \"{version}\" does not exist; kiln serves version \"1\""
        )))
    }
}

async fn model_metadata(
    State(state): State<Shared>,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let m = state.model(&name)?;
    Ok(Json(json!({
        "name": m.name,
        "versions": ["1"],
        "platform": format!("kiln_{}", m.kind()),
        "inputs": m.inputs(),
        "outputs": m.outputs(),
    })))
}

async fn model_metadata_versioned(
    state: State<Shared>,
    Path((name, version)): Path<(String, String)>,
) -> Result<Json<serde_json::Value>, ApiError> {
    check_version(&version)?;
    model_metadata(state, Path(name)).await
}

async fn model_ready(
    State(state): State<Shared>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let m = state.model(&name)?;
    if m.is_ready() {
        return Ok(StatusCode::OK.into_response());
    }
    Ok((
        StatusCode::SERVICE_UNAVAILABLE,
        Json(json!({
            "name": m.name,
            "ready": false,
            "error": format!("model \"{}\" is not ready: its batch worker has stopped", m.name),
        })),
    )
        .into_response())
}

async fn model_ready_versioned(
    state: State<Shared>,
    Path((name, version)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    check_version(&version)?;
    model_ready(state, Path(name)).await
}

async fn infer(
    State(state): State<Shared>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body_bytes(body, state.config.max_body_bytes)?;
    let m = state.model(&name)?;
    v2::infer(m, &headers, &body, state.limits(), &state.metrics).await
}

async fn infer_versioned(
    state: State<Shared>,
    Path((name, version)): Path<(String, String)>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    check_version(&version)?;
    infer(state, Path(name), headers, body).await
}

async fn predict(
    State(state): State<Shared>,
    Path(name): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body_bytes(body, state.config.max_body_bytes)?;
    let m = state.model(&name)?;
    v1::predict(m, &body, state.limits(), &state.metrics).await
}

async fn kserve_predict(
    State(state): State<Shared>,
    Path(target): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let Some(name) = target.strip_suffix(":predict") else {
        return Err(not_found().await);
    };
    predict(State(state), Path(name.to_string()), body).await
}

async fn generate(
    State(state): State<Shared>,
    Path(name): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body_bytes(body, state.config.max_body_bytes)?;
    let m = state.model(&name)?;
    v1::generate(m, &body, state.config.max_new_tokens, &state.metrics).await
}

async fn metrics_text(State(state): State<Shared>) -> Response {
    (
        StatusCode::OK,
        [("content-type", "text/plain; version=0.0.4")],
        HttpBody::from(state.metrics.render()),
    )
        .into_response()
}

#[cfg(test)]
mod tests;
