//! The accept loop: HTTP/1.1 connections over hyper with a connection cap, a header-read
//! timeout and a keep-alive idle timeout (the body-read timeout is the router's, see
//! `read_body`), graceful shutdown, and the idle hook.
//!
//! Each connection is watched by its own timer. With no request in flight, a connection must
//! deliver a complete request head within `header_timeout` of opening (first request) or of
//! the first byte of a later request, and may otherwise sit idle for `idle_timeout` between
//! requests; past either it is closed. A request in flight (from its head until the last
//! byte of its response, streamed or not) is cut only when the client stops reading: a write
//! that stays blocked for `write_timeout` closes the connection. Shutdown waits for in-flight
//! requests at most `shutdown_grace`.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tower::ServiceExt;

use crate::metrics::Rejection;
use crate::{AppState, router};

/// The answer to a connection past the cap, written without reading its request.
const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
connection: close\r\ncontent-length: 52\r\n\r\n{\"error\": \"too many open connections; retry later\"}\n";

pub(crate) async fn run(
    listener: TcpListener,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()>,
    on_idle: impl FnMut() + Send + 'static,
) -> io::Result<()> {
    let app = router(state.clone());
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut connections = JoinSet::new();
    let idle = tokio::spawn(idle_watch(state.clone(), on_idle));
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    // Out of file descriptors and the like: wait a little, keep serving.
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                };
                if connections.len() >= state.config.max_connections {
                    state.metrics.reject(Rejection::ConnectionLimit);
                    // Best effort, never waiting on the client; dropping closes it.
                    let _ = stream.try_write(BUSY);
                    continue;
                }
                let _ = stream.set_nodelay(true);
                connections.spawn(connection(stream, app.clone(), state.clone(), stop_rx.clone()));
            }
        }
    }
    drop(listener);
    let _ = stop_tx.send(true);
    let drain = async { while connections.join_next().await.is_some() {} };
    if tokio::time::timeout(state.config.shutdown_grace, drain)
        .await
        .is_err()
    {
        connections.abort_all();
    }
    idle.abort();
    Ok(())
}

/// Runs `on_idle` once per quiet spell: after some requests were answered, once none has
/// been in flight for `idle_after`.
async fn idle_watch(state: Arc<AppState>, mut on_idle: impl FnMut()) {
    let after = state.config.idle_after;
    let tick = (after / 4).clamp(Duration::from_millis(10), Duration::from_millis(250));
    // With every answer handled, nothing is due until a request comes: look once per `after`
    // (at most a second): an idle server wakes once a second, not four times.
    let resting = after.clamp(tick, Duration::from_secs(1));
    let mut seen = state.answered.load(Ordering::Relaxed);
    let mut handled = seen;
    let mut quiet_since = Instant::now();
    loop {
        let pending = seen != handled || state.metrics.in_flight.get() > 0;
        tokio::time::sleep(if pending { tick } else { resting }).await;
        let answered = state.answered.load(Ordering::Relaxed);
        if answered != seen || state.metrics.in_flight.get() > 0 {
            seen = answered;
            quiet_since = Instant::now();
        } else if answered != handled && quiet_since.elapsed() >= after {
            on_idle();
            handled = answered;
        }
    }
}

/// What a connection's timer needs to know.
#[derive(Debug)]
struct Activity {
    /// Requests whose head has arrived and whose response has not been fully written.
    active: usize,
    /// Requests started on this connection.
    started: u64,
    /// When the connection last became free of requests (opened, or a response ended).
    free_since: Instant,
    /// The first byte read since then, if any.
    first_byte: Option<Instant>,
    /// Since when a write to the client has been blocked (its receive window full), if it is.
    write_blocked: Option<Instant>,
}

type Shared = Arc<Mutex<Activity>>;

fn lock(a: &Shared) -> std::sync::MutexGuard<'_, Activity> {
    // The guarded data are plain counters, valid even if a holder panicked.
    a.lock().unwrap_or_else(|e| e.into_inner())
}

/// Marks a request in flight until dropped (with the response body, after its last byte).
struct InFlight(Shared);

impl InFlight {
    fn new(activity: &Shared) -> Self {
        let mut a = lock(activity);
        a.active += 1;
        a.started += 1;
        a.first_byte = None;
        drop(a);
        Self(activity.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut a = lock(&self.0);
        a.active -= 1;
        if a.active == 0 {
            a.free_since = Instant::now();
            a.first_byte = None;
        }
    }
}

async fn connection(
    stream: TcpStream,
    app: axum::Router,
    state: Arc<AppState>,
    mut stop: watch::Receiver<bool>,
) {
    let metrics = state.metrics.clone();
    metrics.connections.inc();
    let activity: Shared = Arc::new(Mutex::new(Activity {
        active: 0,
        started: 0,
        free_since: Instant::now(),
        first_byte: None,
        write_blocked: None,
    }));
    let io = TokioIo::new(Watched {
        inner: stream,
        activity: activity.clone(),
    });
    let service_activity = activity.clone();
    let service =
        hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
            let held = InFlight::new(&service_activity);
            let app = app.clone();
            async move {
                let response = app.oneshot(request.map(Body::new)).await?;
                // The request stays in flight until hyper drops the body after its last byte.
                Ok::<_, std::convert::Infallible>(response.map(|body| {
                    Body::new(body.map_frame(move |frame| {
                        let _ = &held;
                        frame
                    }))
                }))
            }
        });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.keep_alive(true);
    let conn = builder.serve_connection(io, service);
    tokio::pin!(conn);
    let config = &state.config;
    let timeout = expiry(
        &activity,
        config.header_timeout,
        config.idle_timeout,
        config.write_timeout,
    );
    tokio::pin!(timeout);
    let mut stopping = false;
    loop {
        tokio::select! {
            _ = &mut conn => break,
            reason = &mut timeout => {
                metrics.reject(reason);
                break; // dropping the connection closes it
            }
            changed = stop.changed(), if !stopping => {
                stopping = true;
                if changed.is_ok() {
                    conn.as_mut().graceful_shutdown();
                }
            }
        }
    }
    metrics.connections.dec();
}

/// Completes when the connection has waited too long for a request, or with a request in
/// flight, for the client to read its response: with the reason.
async fn expiry(activity: &Shared, header: Duration, idle: Duration, write: Duration) -> Rejection {
    let shortest = header.min(idle).min(write);
    let tick = (shortest / 10).clamp(Duration::from_millis(10), Duration::from_secs(1));
    loop {
        tokio::time::sleep(tick).await;
        let a = lock(activity);
        if a.active > 0 {
            if a.write_blocked.is_some_and(|t| t.elapsed() >= write) {
                return Rejection::WriteTimeout;
            }
            continue;
        }
        let (since, limit, reason) = match a.first_byte {
            Some(t) => (t, header, Rejection::HeaderTimeout),
            None if a.started == 0 => (a.free_since, header, Rejection::HeaderTimeout),
            None => (a.free_since, idle, Rejection::IdleTimeout),
        };
        if since.elapsed() >= limit {
            return reason;
        }
    }
}

/// The client's stream, noting when the first byte of a request arrives and since when a
/// write has been blocked.
struct Watched {
    inner: TcpStream,
    activity: Shared,
}

impl Watched {
    fn note_write(&self, blocked: bool) {
        let mut a = lock(&self.activity);
        match (blocked, a.write_blocked) {
            (true, None) => a.write_blocked = Some(Instant::now()),
            (false, Some(_)) => a.write_blocked = None,
            _ => {}
        }
    }
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(poll, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            let mut a = lock(&self.activity);
            if a.active == 0 && a.first_byte.is_none() {
                a.first_byte = Some(Instant::now());
            }
        }
        poll
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.note_write(poll.is_pending());
        poll
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.note_write(poll.is_pending());
        poll
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn activity(active: usize, write_blocked: Option<Duration>) -> Shared {
        Arc::new(Mutex::new(Activity {
            active,
            started: 1,
            free_since: Instant::now(),
            first_byte: None,
            write_blocked: write_blocked.map(|d| Instant::now() - d),
        }))
    }

    #[tokio::test]
    async fn a_client_that_stops_reading_is_cut_after_the_write_timeout() {
        let long = Duration::from_secs(3600);
        let blocked = activity(1, Some(Duration::from_secs(2)));
        let reason = tokio::time::timeout(
            Duration::from_secs(5),
            expiry(&blocked, long, long, Duration::from_secs(1)),
        )
        .await
        .expect("a blocked write expires");
        assert_eq!(reason.label(), "write_timeout");
        // A request in flight whose writes go through is never cut.
        let flowing = activity(1, None);
        let waited = tokio::time::timeout(
            Duration::from_millis(300),
            expiry(&flowing, long, long, Duration::from_millis(50)),
        )
        .await;
        assert!(waited.is_err(), "a request whose client reads stays");
    }
}
