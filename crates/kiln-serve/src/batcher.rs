//! Dynamic batching: requests for one model queue up, and a worker thread runs whatever has
//! arrived (up to `max_batch_size` rows, waiting at most `max_queue_delay` after the first)
//! as one forward pass, then hands each request its rows back.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::time::{Duration, Instant};

use kiln::data::Encoded;
use kiln::models::{Device, Network};
use tokio::sync::oneshot;

use crate::error::ApiError;
use crate::metrics::Metrics;

/// How requests are grouped into forward passes.
#[derive(Debug, Clone, Copy)]
pub struct BatchSettings {
    /// Rows per forward pass at most (a single larger request still runs, alone).
    pub max_batch_size: usize,
    /// How long the first request of a batch waits for others.
    pub max_queue_delay: Duration,
    /// Off: every request is its own forward pass.
    pub enabled: bool,
}

impl Default for BatchSettings {
    fn default() -> Self {
        Self {
            max_batch_size: 64,
            max_queue_delay: Duration::from_millis(2),
            enabled: true,
        }
    }
}

struct Job {
    rows: Encoded,
    reply: oneshot::Sender<Result<Vec<f32>, ApiError>>,
}

/// The queue in front of one model's worker thread.
#[derive(Debug)]
pub struct Batcher {
    tx: Sender<Job>,
    width: usize,
    model: String,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Job({} rows)", self.rows.rows)
    }
}

impl Batcher {
    /// Starts the worker thread that owns `network`. `width` is the number of outputs per row.
    pub fn spawn(
        name: &str,
        network: Network,
        device: Device,
        width: usize,
        settings: BatchSettings,
        metrics: Arc<Metrics>,
    ) -> Self {
        let (tx, rx) = channel::<Job>();
        let worker_metrics = metrics.clone();
        let model = name.to_string();
        std::thread::Builder::new()
            .name(format!("kiln-batch-{name}"))
            .spawn(move || {
                worker(
                    rx,
                    network,
                    device,
                    width,
                    settings,
                    &model,
                    &worker_metrics,
                )
            })
            .expect("spawn the batch worker");
        Self {
            tx,
            width,
            model: name.to_string(),
            metrics,
        }
    }

    /// Runs `rows` through the model (batched with other requests) and returns the raw
    /// outputs, `rows * width` values.
    pub async fn run(&self, rows: Encoded) -> Result<Vec<f32>, ApiError> {
        let (reply, rx) = oneshot::channel();
        self.metrics
            .queue_depth
            .with_label_values(&[&self.model])
            .inc();
        if self.tx.send(Job { rows, reply }).is_err() {
            self.metrics
                .queue_depth
                .with_label_values(&[&self.model])
                .dec();
            return Err(ApiError::internal("the model worker has stopped"));
        }
        rx.await
            .map_err(|_| ApiError::internal("the model worker stopped during the request"))?
    }

    /// Outputs per row.
    pub fn width(&self) -> usize {
        self.width
    }
}

fn worker(
    rx: Receiver<Job>,
    network: Network,
    device: Device,
    width: usize,
    settings: BatchSettings,
    model: &str,
    metrics: &Metrics,
) {
    let mut carry: Option<Job> = None;
    loop {
        let first = match carry.take() {
            Some(job) => job,
            None => match rx.recv() {
                Ok(job) => job,
                Err(_) => return, // server shut down
            },
        };
        let mut rows = first.rows.rows;
        let mut jobs = vec![first];
        if settings.enabled {
            let deadline = Instant::now() + settings.max_queue_delay;
            while rows < settings.max_batch_size {
                let wait = deadline.saturating_duration_since(Instant::now());
                let next = if wait.is_zero() {
                    rx.try_recv().map_err(|_| RecvTimeoutError::Timeout)
                } else {
                    rx.recv_timeout(wait)
                };
                match next {
                    Ok(job) if rows + job.rows.rows > settings.max_batch_size => {
                        carry = Some(job);
                        break;
                    }
                    Ok(job) => {
                        rows += job.rows.rows;
                        jobs.push(job);
                    }
                    Err(_) => break,
                }
            }
        }
        metrics
            .queue_depth
            .with_label_values(&[model])
            .sub(jobs.len() as i64);
        metrics
            .batch_size
            .with_label_values(&[model])
            .observe(rows as f64);
        let (parts, replies): (Vec<Encoded>, Vec<_>) =
            jobs.into_iter().map(|j| (j.rows, j.reply)).unzip();
        let counts: Vec<usize> = parts.iter().map(|p| p.rows).collect();
        let merged = merge(parts);
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let pass = || kiln::train::evaluate::raw_outputs(&network, &merged, &device);
            // A batch runs on a rayon worker, so its parallel ops split with the other
            // workers rather than this thread handing each one over (`in_thread_pool`). One
            // row is too little to split: handing it over would only add a thread switch
            // (1,981 against 2,740 requests/s unbatched under the load test).
            if merged.rows > 1 {
                kiln::models::ops::in_thread_pool(pass)
            } else {
                pass()
            }
        }));
        match result {
            Ok(values) => {
                let mut offset = 0;
                for (reply, n) in replies.into_iter().zip(counts) {
                    let n = n * width;
                    let _ = reply.send(Ok(values[offset..offset + n].to_vec()));
                    offset += n;
                }
            }
            Err(_) => {
                for reply in replies {
                    let _ = reply.send(Err(ApiError::internal("the forward pass failed")));
                }
            }
        }
    }
}

/// One `Encoded` holding the rows of all `parts` in order (all share the model's shapes);
/// a single part is passed through without copying.
fn merge(parts: Vec<Encoded>) -> Encoded {
    let mut parts = parts.into_iter();
    let mut out = parts.next().expect("a batch has a job");
    for r in parts {
        out.x.extend_from_slice(&r.x);
        out.categories.extend_from_slice(&r.categories);
        out.tokens.extend_from_slice(&r.tokens);
        out.rows += r.rows;
    }
    out
}
