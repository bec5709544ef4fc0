//! Dynamic batching: requests for one model queue up, and a worker thread runs whatever has
//! arrived (up to `max_batch_size` rows, waiting at most `max_queue_delay` after the first)
//! as one forward pass, then hands each request its rows back.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::time::{Duration, Instant};

use kiln_data::Encoded;
use kiln_models::{Device, Network};
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
    queued: Instant,
}

/// One forward pass over a merged batch: `rows * width` outputs. The model's worker thread
/// owns it; tests substitute their own.
pub type Forward = Box<dyn FnMut(&Encoded) -> Vec<f32> + Send>;

/// The queue in front of one model's worker thread.
#[derive(Debug)]
pub struct Batcher {
    tx: Sender<Job>,
    width: usize,
    model: String,
    metrics: Arc<Metrics>,
    alive: Arc<AtomicBool>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Job({} rows)", self.rows.rows)
    }
}

/// Clears the worker's liveness flag when the worker thread ends, however it ends.
/// Cleared, with the model's readiness gauge, when the worker thread ends for any reason
/// (a normal return or a panic outside a batch).
struct Alive {
    flag: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
    model: String,
}

impl Drop for Alive {
    fn drop(&mut self) {
        self.flag.store(false, Ordering::SeqCst);
        self.metrics
            .model_ready
            .with_label_values(&[&self.model])
            .set(0);
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
        let forward: Forward = Box::new(move |merged: &Encoded| {
            let pass = || kiln_runtime::inference::raw_outputs(&network, merged, &device);
            // A batch runs on a rayon worker, so its parallel ops split with the other
            // workers rather than this thread handing each one over (`in_thread_pool`). One
            // row is too little to split: handing it over would only add a thread switch
            // (1,981 against 2,740 requests/s unbatched under the load test).
            if merged.rows > 1 {
                kiln_models::ops::in_thread_pool(pass)
            } else {
                pass()
            }
        });
        Self::spawn_with(name, forward, width, settings, metrics)
    }

    /// Starts a worker thread that runs each batch through `forward`.
    pub fn spawn_with(
        name: &str,
        forward: Forward,
        width: usize,
        settings: BatchSettings,
        metrics: Arc<Metrics>,
    ) -> Self {
        let (tx, rx) = channel::<Job>();
        let worker_metrics = metrics.clone();
        let model = name.to_string();
        let alive = Arc::new(AtomicBool::new(true));
        let guard = Alive {
            flag: alive.clone(),
            metrics: metrics.clone(),
            model: model.clone(),
        };
        worker_metrics.model_ready.with_label_values(&[name]).set(1);
        std::thread::Builder::new()
            .name(format!("kiln-batch-{name}"))
            .spawn(move || {
                let _guard = guard;
                worker(rx, forward, width, settings, &model, &worker_metrics);
            })
            .expect("spawn the batch worker");
        Self {
            tx,
            width,
            model: name.to_string(),
            metrics,
            alive,
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
        let job = Job {
            rows,
            reply,
            queued: Instant::now(),
        };
        if self.tx.send(job).is_err() {
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

    /// Drops the queue's sender so the worker ends as if the server shut down (tests of a
    /// stopped worker).
    #[cfg(test)]
    pub(crate) fn disconnect(&mut self) {
        self.tx = channel().0;
    }

    /// Whether the worker thread is still running (and so the model can answer).
    pub fn is_alive(&self) -> bool {
        self.alive.load(Ordering::SeqCst)
    }
}

fn worker(
    rx: Receiver<Job>,
    mut forward: Forward,
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
        let queue_seconds = metrics.queue_seconds.with_label_values(&[model]);
        for job in &jobs {
            queue_seconds.observe(job.queued.elapsed().as_secs_f64());
        }
        let (parts, replies): (Vec<Encoded>, Vec<_>) =
            jobs.into_iter().map(|j| (j.rows, j.reply)).unzip();
        let counts: Vec<usize> = parts.iter().map(|p| p.rows).collect();
        // Unwind safety: the forward pass only reads the weights (inference mode, no
        // optimiser state) and the merged batch, which is dropped afterwards; a panic leaves
        // nothing half-updated for the next batch to see.
        let computing = Instant::now();
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let merged = merge(parts);
            let values = forward(&merged);
            (merged.rows, values)
        }));
        metrics
            .compute_seconds
            .with_label_values(&[model])
            .observe(computing.elapsed().as_secs_f64());
        let outcome = match result {
            Ok((n, values)) if values.len() == n * width => Ok(values),
            Ok((n, values)) => Err(format!(
                "the forward pass returned {} values for {n} rows of {width}",
                values.len()
            )),
            Err(payload) => {
                metrics.batch_panics.with_label_values(&[model]).inc();
                Err(format!(
                    "the forward pass panicked: {}",
                    panic_message(payload.as_ref())
                ))
            }
        };
        match outcome {
            Ok(values) => {
                let mut offset = 0;
                for (reply, n) in replies.into_iter().zip(counts) {
                    let n = n * width;
                    let _ = reply.send(Ok(values[offset..offset + n].to_vec()));
                    offset += n;
                }
            }
            Err(message) => {
                for reply in replies {
                    let _ = reply.send(Err(ApiError::internal(message.clone())));
                }
            }
        }
    }
}

/// The text of a panic payload (`panic!` gives a `&str` or a `String`).
fn panic_message(payload: &(dyn std::any::Any + Send)) -> &str {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)")
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

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_data::InputShape;

    /// `rows` one-feature rows holding `value`.
    pub(crate) fn rows(rows: usize, value: f32) -> Encoded {
        Encoded {
            x: vec![value; rows],
            rows,
            shape: InputShape::Flat { width: 1 },
            categories: Vec::new(),
            tokens: Vec::new(),
            seq_len: 0,
            windows: 1,
            texts_truncated: 0,
            cardinalities: Vec::new(),
            y: None,
            ids: None,
            source_rows: Vec::new(),
            unknown_categories: Default::default(),
            missing_filled: 0,
            missing_dropped: 0,
            missing_target_dropped: 0,
        }
    }

    /// Doubles each value; panics on a batch holding 13; returns one value short on 7.
    fn forward() -> Forward {
        Box::new(|batch: &Encoded| {
            if batch.x.contains(&13.0) {
                panic!("unlucky row");
            }
            let mut out: Vec<f32> = batch.x.iter().map(|v| 2.0 * v).collect();
            if batch.x.contains(&7.0) {
                out.pop();
            }
            out
        })
    }

    fn unbatched() -> BatchSettings {
        BatchSettings {
            enabled: false,
            ..BatchSettings::default()
        }
    }

    #[tokio::test]
    async fn a_panicking_batch_gets_500_and_the_worker_keeps_serving() {
        let metrics = Arc::new(Metrics::new());
        let b = Batcher::spawn_with("m", forward(), 1, unbatched(), metrics.clone());
        assert_eq!(b.run(rows(2, 1.5)).await.unwrap(), vec![3.0, 3.0]);
        let err = b.run(rows(1, 13.0)).await.unwrap_err();
        assert_eq!(err.status, axum::http::StatusCode::INTERNAL_SERVER_ERROR);
        assert!(err.message.contains("unlucky row"), "{}", err.message);
        let err = b.run(rows(2, 7.0)).await.unwrap_err();
        assert!(
            err.message.contains("returned 1 values for 2 rows"),
            "{}",
            err.message
        );
        assert_eq!(b.run(rows(1, 4.0)).await.unwrap(), vec![8.0]);
        assert!(b.is_alive());
        assert_eq!(metrics.batch_panics.with_label_values(&["m"]).get(), 1);
        assert_eq!(metrics.model_ready.with_label_values(&["m"]).get(), 1);
    }

    #[tokio::test]
    async fn every_request_of_a_panicking_batch_gets_the_message() {
        let metrics = Arc::new(Metrics::new());
        let settings = BatchSettings {
            max_batch_size: 8,
            max_queue_delay: Duration::from_millis(200),
            enabled: true,
        };
        let b = Batcher::spawn_with("m", forward(), 1, settings, metrics.clone());
        let (x, y) = tokio::join!(b.run(rows(1, 1.0)), b.run(rows(1, 13.0)));
        for r in [x, y] {
            assert!(r.unwrap_err().message.contains("unlucky row"));
        }
        assert_eq!(b.run(rows(1, 1.0)).await.unwrap(), vec![2.0]);
        assert!(b.is_alive());
    }

    #[tokio::test]
    async fn a_stopped_worker_is_not_alive_and_answers_500() {
        let metrics = Arc::new(Metrics::new());
        let mut b = Batcher::spawn_with("m", forward(), 1, unbatched(), metrics.clone());
        b.disconnect();
        let deadline = Instant::now() + Duration::from_secs(5);
        while b.is_alive() {
            assert!(Instant::now() < deadline, "the worker did not stop");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(metrics.model_ready.with_label_values(&["m"]).get(), 0);
        let err = b.run(rows(1, 1.0)).await.unwrap_err();
        assert!(err.message.contains("stopped"), "{}", err.message);
    }
}
