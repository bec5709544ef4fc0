//! Collectives for data-parallel training.
//!
//! A [`World`] is the set of processes training one model together: one process
//! ([`World::single`], no MPI linked or started), or the ranks an MPI launcher (`mpirun`,
//! `srun --mpi=pmix`) started ([`World::from_launch`], cargo feature `mpi`). MPI
//! communicators are not `Send`, so, as in Horovod, one dedicated thread initialises MPI, owns
//! the communicator and runs every collective; the trainer hands it buffers over a channel and
//! may prepare the next bucket while one is being reduced ([`World::all_reduce_start`]).
//!
//! A GPU collective (NCCL through `cudarc`, its unique id broadcast by rank 0 over this MPI
//! world) is another [`Backend`] behind the same calls.
#![warn(missing_docs)]

use std::sync::mpsc;
use std::time::{Duration, Instant};

mod launch;
#[cfg(feature = "mpi")]
mod mpi_backend;

pub use launch::{Launch, detect_launch};

/// Errors of a collective or of the launch.
#[derive(Debug, thiserror::Error)]
pub enum DistError {
    /// Started by an MPI launcher, but this kiln was built without MPI.
    #[error(
        "started by {launcher} as rank {rank} of {size}, but this kiln was built without MPI: \
         build it with `cargo build --release --features mpi` (apt-get install libopenmpi-dev \
         openmpi-bin libclang-dev), or run one process without {launcher}"
    )]
    NotBuilt {
        /// Which launcher's variables were found.
        launcher: &'static str,
        /// This process's rank.
        rank: usize,
        /// The number of processes launched.
        size: usize,
    },
    /// MPI could not be initialised, or disagrees with the launcher.
    #[error("MPI: {0}")]
    Init(String),
    /// A collective did not complete in time: another rank stopped or hangs.
    #[error(
        "no answer from the other ranks for {seconds} s during {what}: a rank stopped or hangs \
         (KILN_DIST_TIMEOUT_S sets the limit)"
    )]
    Timeout {
        /// The collective.
        what: &'static str,
        /// The limit.
        seconds: u64,
    },
    /// The communication thread is gone (MPI aborted).
    #[error("the MPI communication thread stopped")]
    Gone,
    /// The ranks disagree about something that must be the same everywhere.
    #[error("rank {rank} differs from rank 0: {what}")]
    Mismatch {
        /// The rank that found the difference.
        rank: usize,
        /// What differs.
        what: String,
    },
    /// Another rank found that it differs from rank 0 (its own error says how).
    #[error("{what} of {ranks} other rank(s) differs from rank 0's; their error says how")]
    OtherDiffers {
        /// What differs.
        what: String,
        /// How many ranks differ.
        ranks: usize,
    },
    /// The ranks' gradients do not line up.
    #[error(
        "rank {rank} has gradients of {here} values, the ranks {average} on average: a \
         parameter got a gradient on some ranks and not on others"
    )]
    Gradients {
        /// This rank.
        rank: usize,
        /// Values here.
        here: usize,
        /// Mean over the ranks.
        average: f64,
    },
}

/// Values a collective carries.
#[derive(Debug, Clone, PartialEq)]
pub enum Buffer {
    /// Single precision (gradients, model outputs).
    F32(Vec<f32>),
    /// Double precision (losses, counts).
    F64(Vec<f64>),
}

/// How the processes exchange data: the part of a [`World`] that differs per engine.
pub trait Backend {
    /// Sums `buffer` element-wise over all ranks; every rank gets the sum.
    fn all_reduce_sum(&mut self, buffer: Buffer) -> Result<Buffer, DistError>;
    /// Rank `root`'s bytes, on every rank.
    fn broadcast(&mut self, root: usize, bytes: Vec<u8>) -> Result<Vec<u8>, DistError>;
    /// Ends every rank with `code` (after this rank printed why).
    fn abort(&mut self, code: i32) -> !;
}

enum Request {
    AllReduce(Buffer, mpsc::Sender<Result<Buffer, DistError>>),
    Broadcast(usize, Vec<u8>, mpsc::Sender<Result<Vec<u8>, DistError>>),
    Abort(i32),
}

/// Time spent waiting for collectives, for the communication share of a step.
#[derive(Debug, Default, Clone, Copy)]
pub struct CommStats {
    /// Seconds the caller waited on collectives.
    pub wait_seconds: f64,
    /// Bytes reduced (this rank's buffer sizes).
    pub bytes_reduced: u64,
    /// Collectives run.
    pub calls: u64,
}

/// The processes training together.
pub struct World {
    rank: usize,
    size: usize,
    launch: Option<Launch>,
    channel: Option<mpsc::Sender<Request>>,
    thread: Option<std::thread::JoinHandle<()>>,
    timeout: Duration,
    stats: std::sync::Mutex<CommStats>,
}

/// A reduction started with [`World::all_reduce_start`].
pub struct PendingReduce {
    reply: Result<mpsc::Receiver<Result<Buffer, DistError>>, Buffer>,
}

impl World {
    /// One process: every collective returns its input.
    pub fn single() -> Self {
        World {
            rank: 0,
            size: 1,
            launch: None,
            channel: None,
            thread: None,
            timeout: Duration::MAX,
            stats: Default::default(),
        }
    }

    /// The world the launch environment describes: MPI ranks when an MPI launcher started
    /// more than one process, else one process. Started by `mpirun` in a kiln built without
    /// the `mpi` feature: [`DistError::NotBuilt`], never N independent runs.
    pub fn from_launch() -> Result<Self, DistError> {
        let Some(launch) = detect_launch().filter(|l| l.size > 1) else {
            return Ok(World::single());
        };
        #[cfg(feature = "mpi")]
        {
            let timeout = match std::env::var("KILN_DIST_TIMEOUT_S") {
                Err(_) => Duration::from_secs(600),
                Ok(v) => match v.trim().parse::<u64>() {
                    Ok(s) if s > 0 => Duration::from_secs(s),
                    _ => {
                        return Err(DistError::Init(format!(
                            "KILN_DIST_TIMEOUT_S: expected whole seconds above 0, got \"{v}\""
                        )));
                    }
                },
            };
            let (backend_rank, backend_size, thread, channel) = mpi_backend::start(&launch)?;
            Ok(World {
                rank: backend_rank,
                size: backend_size,
                launch: Some(launch),
                channel: Some(channel),
                thread: Some(thread),
                timeout,
                stats: Default::default(),
            })
        }
        #[cfg(not(feature = "mpi"))]
        Err(DistError::NotBuilt {
            launcher: launch.launcher,
            rank: launch.rank,
            size: launch.size,
        })
    }

    /// This process's rank, 0-based.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// The number of processes.
    pub fn size(&self) -> usize {
        self.size
    }

    /// Whether this process writes the run directory (rank 0).
    pub fn is_leader(&self) -> bool {
        self.rank == 0
    }

    /// The launcher that started this world, if any.
    pub fn launch(&self) -> Option<&Launch> {
        self.launch.as_ref()
    }

    /// Communication time and volume so far.
    pub fn stats(&self) -> CommStats {
        *self.stats.lock().expect("stats lock")
    }

    fn record(&self, started: Instant, bytes: u64) {
        let mut stats = self.stats.lock().expect("stats lock");
        stats.wait_seconds += started.elapsed().as_secs_f64();
        stats.bytes_reduced += bytes;
        stats.calls += 1;
    }

    /// Starts summing `buffer` over all ranks; [`World::all_reduce_wait`] returns the sum.
    pub fn all_reduce_start(&self, buffer: Buffer) -> Result<PendingReduce, DistError> {
        let Some(channel) = &self.channel else {
            return Ok(PendingReduce { reply: Err(buffer) });
        };
        let (tx, rx) = mpsc::channel();
        channel
            .send(Request::AllReduce(buffer, tx))
            .map_err(|_| DistError::Gone)?;
        Ok(PendingReduce { reply: Ok(rx) })
    }

    /// Waits for a reduction started by [`World::all_reduce_start`].
    pub fn all_reduce_wait(&self, pending: PendingReduce) -> Result<Buffer, DistError> {
        match pending.reply {
            Err(buffer) => Ok(buffer),
            Ok(rx) => {
                let started = Instant::now();
                let out = recv(&rx, self.timeout, "an all-reduce")??;
                let bytes = match &out {
                    Buffer::F32(v) => v.len() as u64 * 4,
                    Buffer::F64(v) => v.len() as u64 * 8,
                };
                self.record(started, bytes);
                Ok(out)
            }
        }
    }

    /// Sums `values` over all ranks.
    pub fn all_reduce_f32(&self, values: Vec<f32>) -> Result<Vec<f32>, DistError> {
        match self.all_reduce_wait(self.all_reduce_start(Buffer::F32(values))?)? {
            Buffer::F32(v) => Ok(v),
            Buffer::F64(_) => unreachable!("an f32 reduction returns f32"),
        }
    }

    /// Sums `values` over all ranks.
    pub fn all_reduce_f64(&self, values: Vec<f64>) -> Result<Vec<f64>, DistError> {
        match self.all_reduce_wait(self.all_reduce_start(Buffer::F64(values))?)? {
            Buffer::F64(v) => Ok(v),
            Buffer::F32(_) => unreachable!("an f64 reduction returns f64"),
        }
    }

    /// Rank 0's `bytes`, on every rank (other ranks' `bytes` are ignored).
    pub fn broadcast(&self, bytes: Vec<u8>) -> Result<Vec<u8>, DistError> {
        let Some(channel) = &self.channel else {
            return Ok(bytes);
        };
        let (tx, rx) = mpsc::channel();
        channel
            .send(Request::Broadcast(0, bytes, tx))
            .map_err(|_| DistError::Gone)?;
        let started = Instant::now();
        let out = recv(&rx, self.timeout, "a broadcast")??;
        self.record(started, 0);
        Ok(out)
    }

    /// Checks that every rank has the same `value` as rank 0 (the config, the model's shape,
    /// the binary). Every rank learns whether any differs, so all stop before rank 0 writes
    /// anything: the rank that differs names the first differing line, the others say which.
    pub fn check_same(&self, what: &str, value: &str) -> Result<(), DistError> {
        let leader = self.broadcast(value.as_bytes().to_vec())?;
        let leader = String::from_utf8_lossy(&leader);
        let differs = leader != value;
        let ranks_differing = match &self.channel {
            Some(_) => self.all_reduce_f64(vec![f64::from(u8::from(differs))])?[0],
            None => 0.0,
        };
        if differs {
            return Err(DistError::Mismatch {
                rank: self.rank,
                what: format!("{what}: {}", first_difference(&leader, value)),
            });
        }
        if ranks_differing > 0.0 {
            // The rank that differs says how and ends the job; give it the time to.
            std::thread::sleep(Duration::from_secs(5));
            return Err(DistError::OtherDiffers {
                what: what.to_string(),
                ranks: ranks_differing as usize,
            });
        }
        Ok(())
    }

    /// Stops every rank with `code`. One process: exits. MPI: `MPI_Abort`, which ends the
    /// whole job (the caller prints why first).
    pub fn abort(&self, code: i32) -> ! {
        if let Some(channel) = &self.channel
            && channel.send(Request::Abort(code)).is_ok()
        {
            // The communication thread aborts the job; if it is stuck in a collective with a
            // rank that is gone, exiting makes the launcher end the others.
            std::thread::sleep(Duration::from_secs(10));
        }
        std::process::exit(code)
    }
}

impl Drop for World {
    fn drop(&mut self) {
        // A panic unwinding through the training: finalising would wait for ranks that wait
        // for this one, so end them all instead.
        if std::thread::panicking()
            && let Some(channel) = &self.channel
        {
            eprintln!(
                "rank {} of {} panicked: ending every rank",
                self.rank, self.size
            );
            let _ = channel.send(Request::Abort(101));
            std::thread::sleep(Duration::from_secs(10));
            std::process::exit(101);
        }
        // Closing the channel ends the thread, which finalises MPI.
        self.channel.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn recv<T>(rx: &mpsc::Receiver<T>, timeout: Duration, what: &'static str) -> Result<T, DistError> {
    match rx.recv_timeout(timeout) {
        Ok(v) => Ok(v),
        Err(mpsc::RecvTimeoutError::Timeout) => Err(DistError::Timeout {
            what,
            seconds: timeout.as_secs(),
        }),
        Err(mpsc::RecvTimeoutError::Disconnected) => Err(DistError::Gone),
    }
}

/// The first line where `ours` differs from `leader`'s text, with the TOML `[section]` it is in.
fn first_difference(leader: &str, ours: &str) -> String {
    let mut section = String::new();
    let mut theirs = leader.lines();
    for line in ours.lines() {
        let other = theirs.next().unwrap_or("");
        if line != other {
            let at = match section.is_empty() {
                true => String::new(),
                false => format!("in {section}, "),
            };
            return format!(
                "{at}rank 0 has `{}`, this rank `{}`",
                other.trim(),
                line.trim()
            );
        }
        if line.starts_with('[') {
            section = line.trim().to_string();
        }
    }
    match theirs.next() {
        Some(extra) => format!("rank 0 also has `{}`", extra.trim()),
        None => "the values differ".into(),
    }
}

/// Serves requests on the communication thread until the channel closes.
#[cfg_attr(not(feature = "mpi"), allow(dead_code))]
fn serve(backend: &mut dyn Backend, requests: mpsc::Receiver<Request>) {
    while let Ok(request) = requests.recv() {
        match request {
            Request::AllReduce(buffer, reply) => {
                let _ = reply.send(backend.all_reduce_sum(buffer));
            }
            Request::Broadcast(root, bytes, reply) => {
                let _ = reply.send(backend.broadcast(root, bytes));
            }
            Request::Abort(code) => backend.abort(code),
        }
    }
}

/// The contiguous part `rank` of `size` takes of `n` items: `[start, end)`, sizes differing
/// by at most one, earlier ranks taking the larger parts.
pub fn shard(n: usize, rank: usize, size: usize) -> std::ops::Range<usize> {
    let base = n / size;
    let extra = n % size;
    let start = rank * base + rank.min(extra);
    let len = base + usize::from(rank < extra);
    start..start + len
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_cover_every_item_once_in_order() {
        for n in [0, 1, 5, 64, 101] {
            for size in 1..6 {
                let mut next = 0;
                for rank in 0..size {
                    let r = shard(n, rank, size);
                    assert_eq!(r.start, next);
                    assert!(r.len() == n / size || r.len() == n / size + 1);
                    next = r.end;
                }
                assert_eq!(next, n);
            }
        }
    }

    #[test]
    fn a_single_process_world_returns_its_inputs() {
        let world = World::single();
        assert_eq!((world.rank(), world.size()), (0, 1));
        assert_eq!(
            world.all_reduce_f32(vec![1.5, -2.0]).unwrap(),
            vec![1.5, -2.0]
        );
        assert_eq!(world.broadcast(vec![7, 8]).unwrap(), vec![7, 8]);
        world.check_same("config", "abc").unwrap();
    }

    #[test]
    fn a_difference_is_named_by_its_first_line_and_section() {
        let leader = "seed = 1\n[trainer]\nepochs = 3\nlr = 0.01\n";
        let ours = "seed = 1\n[trainer]\nepochs = 3\nlr = 0.02\n";
        assert_eq!(
            first_difference(leader, ours),
            "in [trainer], rank 0 has `lr = 0.01`, this rank `lr = 0.02`"
        );
        assert_eq!(first_difference("a\nb", "a"), "rank 0 also has `b`");
    }
}
