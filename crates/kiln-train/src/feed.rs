//! The training loop's batches: gathered from the encoded rows and, for image models with
//! `data.augment`, changed row by row. With augmentation they are made on a thread of their
//! own, a few ahead of the loop (a bounded queue); without it gathering is a copy and stays
//! on the loop's thread. Either way the loop's wait for each batch is timed.

use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::time::{Duration, Instant};

use kiln_data::{Encoded, ImageAugmenter};
use kiln_rng::SplitMix64;
use kiln_runtime::inference::HostBatch;

/// Seed stream of augmentation draws.
const AUGMENT_STREAM: u64 = 0xA067;
/// Batches made ahead of the loop.
const QUEUE: usize = 4;

/// One micro-batch to make: its rows, its optimizer step, and the position of its first row
/// within the step's rows (what a row's draws are seeded by, so they do not depend on the
/// number of processes or micro-batches).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MicroBatch {
    pub rows: Vec<usize>,
    pub step: u64,
    pub offset: usize,
}

/// Makes one micro-batch.
fn make(
    data: &Encoded,
    augmenter: Option<&ImageAugmenter>,
    seed: u64,
    job: &MicroBatch,
) -> HostBatch {
    let mut batch = HostBatch::gather(data, &job.rows);
    if let (Some(augmenter), Some(x)) = (augmenter, batch.x.as_mut()) {
        let step_seed = SplitMix64::derive(seed ^ AUGMENT_STREAM, job.step).next_u64();
        let mut scratch = Vec::with_capacity(augmenter.row_len());
        for (k, row) in x.chunks_exact_mut(augmenter.row_len()).enumerate() {
            let mut rng = SplitMix64::derive(step_seed, (job.offset + k) as u64);
            augmenter.apply(row, &mut rng, &mut scratch);
        }
    }
    batch
}

/// Hands the loop its batches in order.
pub(crate) struct Feed<'a> {
    data: &'a Encoded,
    augmenter: Option<&'a ImageAugmenter>,
    seed: u64,
    queue: Option<Receiver<(MicroBatch, HostBatch)>>,
    /// Time the loop spent waiting for batches (making them, when inline).
    pub waited: Duration,
}

impl<'a> Feed<'a> {
    /// A feed of batches in the loop's order. With an augmenter, `jobs` (that order) are
    /// made on a thread of `scope`, which ends when the jobs do or when the feed is dropped;
    /// without one, `jobs` is unused.
    pub fn new<'scope>(
        scope: &'scope std::thread::Scope<'scope, '_>,
        data: &'a Encoded,
        augmenter: Option<&'a ImageAugmenter>,
        seed: u64,
        jobs: Vec<MicroBatch>,
    ) -> Self
    where
        'a: 'scope,
    {
        let queue = augmenter.map(|augmenter| {
            let (sender, receiver): (SyncSender<(MicroBatch, HostBatch)>, _) = sync_channel(QUEUE);
            std::thread::Builder::new()
                .name("kiln-batches".into())
                .spawn_scoped(scope, move || {
                    for job in jobs {
                        let batch = make(data, Some(augmenter), seed, &job);
                        if sender.send((job, batch)).is_err() {
                            return; // the loop stopped early
                        }
                    }
                })
                .expect("spawn the batch thread");
            receiver
        });
        Feed {
            data,
            augmenter,
            seed,
            queue,
            waited: Duration::ZERO,
        }
    }

    /// A feed that gathers each batch when asked, on the loop's thread (no augmentation).
    pub fn inline(data: &'a Encoded, seed: u64) -> Self {
        Feed {
            data,
            augmenter: None,
            seed,
            queue: None,
            waited: Duration::ZERO,
        }
    }

    /// The next batch, which must be `job` (the loop and the feed walk the same list).
    pub fn next(&mut self, job: MicroBatch) -> HostBatch {
        let started = Instant::now();
        let batch = match &self.queue {
            Some(queue) => {
                let (made, batch) = queue.recv().expect("the batch thread ended early");
                assert_eq!(made, job, "the batch thread fell out of step with the loop");
                batch
            }
            None => make(self.data, self.augmenter, self.seed, &job),
        };
        self.waited += started.elapsed();
        batch
    }
}
