//! Prometheus metrics served at `GET /metrics`.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

/// The server's metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Requests by route and status code.
    pub requests: IntCounterVec,
    /// Requests answered with a 4xx/5xx status, by route and status code.
    pub errors: IntCounterVec,
    /// Request latency in seconds, by route.
    pub latency: HistogramVec,
    /// Rows per forward pass, by model.
    pub batch_size: HistogramVec,
    /// Requests waiting for their model's worker, by model.
    pub queue_depth: IntGaugeVec,
    /// Requests being served now.
    pub in_flight: IntGauge,
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new("kiln_requests_total", "HTTP requests by route and status."),
            &["route", "code"],
        )
        .expect("valid metric");
        let errors = IntCounterVec::new(
            Opts::new(
                "kiln_request_errors_total",
                "HTTP requests answered with an error status, by route and status.",
            ),
            &["route", "code"],
        )
        .expect("valid metric");
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "kiln_request_duration_seconds",
                "Request latency from arrival to response, by route.",
            )
            .buckets(vec![
                0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0,
            ]),
            &["route"],
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
        for c in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(errors.clone()),
            Box::new(latency.clone()),
            Box::new(batch_size.clone()),
            Box::new(queue_depth.clone()),
            Box::new(in_flight.clone()),
        ] {
            registry.register(c).expect("unique metric names");
        }
        Self {
            registry,
            requests,
            errors,
            latency,
            batch_size,
            queue_depth,
            in_flight,
        }
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
