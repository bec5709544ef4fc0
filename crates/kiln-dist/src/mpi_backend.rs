//! MPI through rsmpi, on a thread of its own: it initialises MPI, owns the world
//! communicator, runs every collective and finalises MPI when the [`World`](crate::World)
//! is dropped.

use std::sync::mpsc;

use mpi::collective::{CommunicatorCollectives, Root, SystemOperation};
use mpi::topology::{Communicator, SimpleCommunicator};

use crate::{Backend, Buffer, DistError, Launch, Request};

struct Mpi {
    world: SimpleCommunicator,
}

/// The most values one MPI call carries: MPI counts are 32-bit.
const CHUNK: usize = 1 << 30;

impl Backend for Mpi {
    fn all_reduce_sum(&mut self, buffer: Buffer) -> Result<Buffer, DistError> {
        Ok(match buffer {
            Buffer::F32(send) => {
                let mut recv = vec![0f32; send.len()];
                for (s, r) in send.chunks(CHUNK).zip(recv.chunks_mut(CHUNK)) {
                    self.world.all_reduce_into(s, r, SystemOperation::sum());
                }
                Buffer::F32(recv)
            }
            Buffer::F64(send) => {
                let mut recv = vec![0f64; send.len()];
                for (s, r) in send.chunks(CHUNK).zip(recv.chunks_mut(CHUNK)) {
                    self.world.all_reduce_into(s, r, SystemOperation::sum());
                }
                Buffer::F64(recv)
            }
        })
    }

    fn broadcast(&mut self, root: usize, mut bytes: Vec<u8>) -> Result<Vec<u8>, DistError> {
        let root = self.world.process_at_rank(root as i32);
        let mut len = bytes.len() as u64;
        root.broadcast_into(&mut len);
        bytes.resize(len as usize, 0);
        for chunk in bytes.chunks_mut(CHUNK) {
            root.broadcast_into(chunk);
        }
        Ok(bytes)
    }

    fn abort(&mut self, code: i32) -> ! {
        self.world.abort(code)
    }
}

pub(crate) type Started = (
    usize,
    usize,
    std::thread::JoinHandle<()>,
    mpsc::Sender<Request>,
);

/// Starts the communication thread; returns MPI's rank and size once MPI is up.
pub(crate) fn start(launch: &Launch) -> Result<Started, DistError> {
    let (requests_tx, requests_rx) = mpsc::channel::<Request>();
    let (ready_tx, ready_rx) = mpsc::channel::<Result<(usize, usize), DistError>>();
    let thread = std::thread::Builder::new()
        .name("kiln-mpi".into())
        .spawn(move || {
            // Only this thread calls MPI: "funneled" is all it needs.
            let Some((universe, _)) = mpi::initialize_with_threading(mpi::Threading::Funneled)
            else {
                let _ = ready_tx.send(Err(DistError::Init("MPI was already initialised".into())));
                return;
            };
            let world = universe.world();
            let _ = ready_tx.send(Ok((world.rank() as usize, world.size() as usize)));
            let mut backend = Mpi { world };
            crate::serve(&mut backend, requests_rx);
            drop(universe);
        })
        .map_err(|e| DistError::Init(format!("cannot start the MPI thread: {e}")))?;
    let (rank, size) = ready_rx
        .recv()
        .map_err(|_| DistError::Init("MPI_Init failed".into()))??;
    if (rank, size) != (launch.rank, launch.size) {
        return Err(DistError::Init(format!(
            "{} says rank {} of {}, MPI says rank {rank} of {size}: was kiln built against \
             another MPI than the one that launched it?",
            launch.launcher, launch.rank, launch.size
        )));
    }
    Ok((rank, size, thread, requests_tx))
}
