//! Prometheus metrics served at `GET /metrics`.

use std::time::Instant;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// Observes the time from its creation to its drop into a histogram.
#[derive(Debug)]
pub struct Timer {
    histogram: Histogram,
    started: Instant,
}

impl Timer {
    /// Starts timing into `histogram`.
    pub fn new(histogram: Histogram) -> Self {
        Self {
            histogram,
            started: Instant::now(),
        }
    }
}

impl Drop for Timer {
    fn drop(&mut self) {
        self.histogram.observe(self.started.elapsed().as_secs_f64());
    }
}

/// Bucket bounds of the latency histograms, in seconds.
const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0,
];

/// The server's metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Requests by route, model, version and status code.
    pub requests: IntCounterVec,
    /// Requests answered with a 4xx/5xx status, by route, model, version and status code.
    pub errors: IntCounterVec,
    /// Request latency in seconds, by route, model and version.
    pub latency: HistogramVec,
    /// Seconds a request waited in its model's queue before its forward pass began, by model.
    pub queue_seconds: HistogramVec,
    /// Seconds of each forward pass (one batch), by model.
    pub compute_seconds: HistogramVec,
    /// Rows per forward pass, by model.
    pub batch_size: HistogramVec,
    /// Requests waiting for their model's worker, by model.
    pub queue_depth: IntGaugeVec,
    /// Requests being served now.
    pub in_flight: IntGauge,
    /// Batches whose forward pass panicked, by model (their requests got 500).
    pub batch_panics: IntCounterVec,
    /// 1 while a model's batch worker runs, 0 once it has stopped, by model.
    pub model_ready: IntGaugeVec,
    /// Requests and connections turned away, by reason (see [`Rejection`]).
    pub rejections: IntCounterVec,
    /// Open client connections.
    pub connections: IntGauge,
}

/// Why a request or connection was turned away (the `reason` label of
/// `kiln_rejections_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// The request head did not arrive within the header timeout: connection closed.
    HeaderTimeout,
    /// The body did not arrive within the body timeout: 408, connection closed.
    BodyTimeout,
    /// A keep-alive connection sat idle past the idle timeout: closed.
    IdleTimeout,
    /// The client stopped reading its response for the write timeout: closed.
    WriteTimeout,
    /// A connection past the connection cap: 503, closed.
    ConnectionLimit,
    /// A request past the concurrency limit: 429.
    ConcurrencyLimit,
    /// A body larger than the body limit: 413.
    BodyTooLarge,
    /// The bodies being read already hold the body memory budget: 503.
    BodyMemory,
    /// A missing or wrong bearer token: 401.
    Unauthorized,
}

impl Rejection {
    /// Every reason, in label order.
    pub const ALL: [Rejection; 9] = [
        Rejection::HeaderTimeout,
        Rejection::BodyTimeout,
        Rejection::IdleTimeout,
        Rejection::WriteTimeout,
        Rejection::ConnectionLimit,
        Rejection::ConcurrencyLimit,
        Rejection::BodyTooLarge,
        Rejection::BodyMemory,
        Rejection::Unauthorized,
    ];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Rejection::HeaderTimeout => "header_timeout",
            Rejection::BodyTimeout => "body_timeout",
            Rejection::IdleTimeout => "idle_timeout",
            Rejection::WriteTimeout => "write_timeout",
            Rejection::ConnectionLimit => "connection_limit",
            Rejection::ConcurrencyLimit => "concurrency_limit",
            Rejection::BodyTooLarge => "body_too_large",
            Rejection::BodyMemory => "body_memory",
            Rejection::Unauthorized => "unauthorized",
        }
    }
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "kiln_requests_total",
                "HTTP requests by route, model, version and status.",
            ),
            &["route", "model", "version", "code"],
        )
        .expect("valid metric");
        let errors = IntCounterVec::new(
            Opts::new(
                "kiln_request_errors_total",
                "HTTP requests answered with an error status, by route, model, version and status.",
            ),
            &["route", "model", "version", "code"],
        )
        .expect("valid metric");
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "kiln_request_duration_seconds",
                "Request latency from arrival to response, by route, model and version.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["route", "model", "version"],
        )
        .expect("valid metric");
        let queue_seconds = HistogramVec::new(
            HistogramOpts::new(
                "kiln_queue_seconds",
                "Time a request waited for its model's forward pass to begin, by model.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["model"],
        )
        .expect("valid metric");
        let compute_seconds = HistogramVec::new(
            HistogramOpts::new(
                "kiln_compute_seconds",
                "Time of one forward pass over a batch, by model.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["model"],
        )
        .expect("valid metric");
        let batch_size = HistogramVec::new(
            HistogramOpts::new("kiln_batch_size", "Rows per forward pass, by model.").buckets(
                vec![
                    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
                ],
            ),
            &["model"],
        )
        .expect("valid metric");
        let queue_depth = IntGaugeVec::new(
            Opts::new(
                "kiln_queue_depth",
                "Requests queued for a model's worker, by model.",
            ),
            &["model"],
        )
        .expect("valid metric");
        let in_flight = IntGauge::new("kiln_requests_in_flight", "Requests being served.")
            .expect("valid metric");
        let batch_panics = IntCounterVec::new(
            Opts::new(
                "kiln_batch_panics_total",
                "Forward passes that panicked (their requests got 500), by model.",
            ),
            &["model"],
        )
        .expect("valid metric");
        let model_ready = IntGaugeVec::new(
            Opts::new(
                "kiln_model_ready",
                "1 while the model's batch worker runs, 0 once it has stopped, by model.",
            ),
            &["model"],
        )
        .expect("valid metric");
        let rejections = IntCounterVec::new(
            Opts::new(
                "kiln_rejections_total",
                "Requests and connections turned away, by reason.",
            ),
            &["reason"],
        )
        .expect("valid metric");
        // Every reason shows from the start, at 0.
        for r in Rejection::ALL {
            rejections.with_label_values(&[r.label()]);
        }
        let connections = IntGauge::new("kiln_connections_open", "Open client connections.")
            .expect("valid metric");
        for c in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(errors.clone()),
            Box::new(latency.clone()),
            Box::new(queue_seconds.clone()),
            Box::new(compute_seconds.clone()),
            Box::new(batch_size.clone()),
            Box::new(queue_depth.clone()),
            Box::new(in_flight.clone()),
            Box::new(batch_panics.clone()),
            Box::new(model_ready.clone()),
            Box::new(rejections.clone()),
            Box::new(connections.clone()),
        ] {
            registry.register(c).expect("unique metric names");
        }
        // process_resident_memory_bytes, process_cpu_seconds_total, process_open_fds, ...
        #[cfg(target_os = "linux")]
        registry
            .register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ))
            .expect("unique metric names");
        Self {
            registry,
            requests,
            errors,
            latency,
            queue_seconds,
            compute_seconds,
            batch_size,
            queue_depth,
            in_flight,
            batch_panics,
            model_ready,
            rejections,
            connections,
        }
    }

    /// Records the wait since `queued` as queue time of `model` now, and the time until the
    /// returned timer drops as its compute time (work that runs on its own task).
    pub fn time_compute(&self, model: &str, queued: Instant) -> Timer {
        self.queue_seconds
            .with_label_values(&[model])
            .observe(queued.elapsed().as_secs_f64());
        Timer::new(self.compute_seconds.with_label_values(&[model]))
    }

    /// Counts one rejection.
    pub fn reject(&self, reason: Rejection) {
        self.rejections.with_label_values(&[reason.label()]).inc();
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding never fails");
        String::from_utf8(buf).expect("UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
