//! Where kiln's compute runs: on rayon's workers, kept spinning between parallel ops inside a
//! compute section for a bounded time (OpenMP's blocktime), then parked.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// Runs `work` on one of rayon's worker threads and waits for it (sleeping), with the pool's
/// other workers kept ready: a compute section. kiln's host kernels and Flex's ops called from
/// there split their work with the pool's other threads instead of being handed to the pool by
/// an extra thread: called from outside, the caller's serial work (autodiff bookkeeping, small
/// ops) runs while the workers that just finished a parallel op still spin for more, three busy
/// threads on two cores.
///
/// While `work` runs, the pool's other workers spin and take each parallel op's share as soon
/// as it is pushed, as OpenMP's active wait policy does for PyTorch and ONNX Runtime; a worker
/// that found nothing to do between two ops would otherwise fall asleep, and waking it costs a
/// futex call and a context switch per op. The wait is bounded, like OpenMP's blocktime: a
/// worker idle for [`blocktime`] (1 ms unless `KILN_BLOCKTIME_US` says otherwise) parks in
/// rayon's sleep, so a long serial stretch (loading a CSV, training a tokenizer) or an idle
/// server burns no CPU. A nested call (one step of a training loop inside a command that is
/// already a section) costs one atomic load when the workers are spinning and wakes the parked
/// ones otherwise. `KILN_WAIT_POLICY=passive` lets idle workers sleep at once.
pub fn in_thread_pool<R: Send>(work: impl FnOnce() -> R + Send) -> R {
    if rayon::current_thread_index().is_some() {
        keep_workers_ready();
        let _owner = SectionOwner::enter();
        return work();
    }
    if passive_wait() {
        return rayon::scope(|_| work());
    }
    let done = AtomicBool::new(false);
    rayon::scope(|scope| {
        let owner = rayon::current_thread_index();
        for _ in 0..rayon::current_num_threads().saturating_sub(1) {
            let done = &done;
            let spinning = Spinning::reserve();
            scope.spawn(move |_| keep_worker_ready(spinning, owner, done));
        }
        // Set on unwinding too, or the scope would wait for the spinners forever.
        let _done = SetOnDrop(&done);
        let _owner = SectionOwner::enter();
        work()
    })
}

/// Wakes the pool's parked workers, if any, to spin for the parallel ops that follow (until
/// they find nothing for [`blocktime`]): the top of each iteration of a compute loop (a
/// training step, a batch) inside a command that runs [`in_thread_pool`], after a serial
/// stretch may have parked them. One atomic load when every worker is spinning already; does
/// nothing off the pool's threads.
pub fn keep_workers_ready() {
    let Some(owner) = rayon::current_thread_index() else {
        return;
    };
    if passive_wait() {
        return;
    }
    static NEVER: AtomicBool = AtomicBool::new(false);
    let others = rayon::current_num_threads().saturating_sub(1);
    for _ in SPINNING.load(Ordering::Relaxed)..others {
        let spinning = Spinning::reserve();
        rayon::spawn(move || keep_worker_ready(spinning, Some(owner), &NEVER));
    }
}

/// How long a worker kept ready by [`in_thread_pool`] spins without work before it parks:
/// `KILN_BLOCKTIME_US` microseconds, 1 000 by default: long enough to span a serial optimizer step
/// between two parallel ops (BENCHMARKS.md, session 9).
pub fn blocktime() -> std::time::Duration {
    static BLOCKTIME: std::sync::OnceLock<std::time::Duration> = std::sync::OnceLock::new();
    *BLOCKTIME.get_or_init(|| {
        let micros = std::env::var("KILN_BLOCKTIME_US")
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(1000);
        std::time::Duration::from_micros(micros)
    })
}

/// Spinners spawned by [`in_thread_pool`] or [`keep_workers_ready`] that have not returned.
static SPINNING: AtomicUsize = AtomicUsize::new(0);

/// Whether `KILN_WAIT_POLICY` asks idle workers to sleep (`passive`; the default is `active`).
fn passive_wait() -> bool {
    static PASSIVE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *PASSIVE.get_or_init(|| {
        std::env::var("KILN_WAIT_POLICY").is_ok_and(|v| v.eq_ignore_ascii_case("passive"))
    })
}

struct SetOnDrop<'a>(&'a AtomicBool);

impl Drop for SetOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

thread_local! {
    /// Sections whose work this thread is running (nested calls count too).
    static SECTION_OWNER: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    /// Whether a spinner runs on this thread.
    static SPINNING_HERE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Marks this thread as running a section's work while it lives.
struct SectionOwner;

impl SectionOwner {
    fn enter() -> Self {
        SECTION_OWNER.with(|depth| depth.set(depth.get() + 1));
        SectionOwner
    }
}

impl Drop for SectionOwner {
    fn drop(&mut self) {
        SECTION_OWNER.with(|depth| depth.set(depth.get() - 1));
    }
}

/// Clears [`SPINNING_HERE`] when a spinner returns (or unwinds).
struct SpinningHere;

impl Drop for SpinningHere {
    fn drop(&mut self) {
        SPINNING_HERE.with(|here| here.set(false));
    }
}

/// One spinner counted in [`SPINNING`] from its spawn to its return.
struct Spinning;

impl Spinning {
    fn reserve() -> Self {
        SPINNING.fetch_add(1, Ordering::Relaxed);
        Spinning
    }
}

impl Drop for Spinning {
    fn drop(&mut self) {
        SPINNING.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Runs the pool's pending jobs as they come until `done`, spinning (and yielding the core
/// to other threads now and then) in between, and returns to rayon (which parks the worker)
/// once nothing came for [`blocktime`]. Returns at once on the thread that runs the work
/// itself (`owner`), which would otherwise wait on itself.
fn keep_worker_ready(_spinning: Spinning, owner: Option<usize>, done: &AtomicBool) {
    // Not on a thread that runs a section's work (its own or another's: it may be waiting in a
    // join and picked this job up), and not inside another spinner: either would hold that
    // thread's work until the spin ends.
    if rayon::current_thread_index() == owner
        || done.load(Ordering::Acquire)
        || SECTION_OWNER.with(|depth| depth.get() > 0)
        || SPINNING_HERE.with(|here| here.replace(true))
    {
        return;
    }
    let _here = SpinningHere;
    let blocktime = blocktime();
    let mut idle_since = std::time::Instant::now();
    let mut idle = 0u32;
    while !done.load(Ordering::Acquire) {
        if let Some(rayon::Yield::Executed) = rayon::yield_now() {
            idle = 0;
            idle_since = std::time::Instant::now();
            continue;
        }
        idle = idle.wrapping_add(1);
        if idle.is_multiple_of(64) {
            if idle_since.elapsed() >= blocktime {
                return;
            }
            std::thread::yield_now();
        } else {
            std::hint::spin_loop();
        }
    }
}

/// Threads compute runs on: rayon's pool (`RAYON_NUM_THREADS`, else one per core).
pub fn compute_threads() -> usize {
    rayon::current_num_threads()
}

/// Makes the calling thread flush subnormal floats to zero (x86-64: MXCSR's flush-to-zero and
/// denormals-are-zero bits; aarch64: FPCR.FZ). An operation on a subnormal costs about a
/// hundred ordinary ones on these CPUs, and training makes them: Adam's second moments of
/// weights whose gradients have died away sink below `f32::MIN_POSITIVE` and slow every later
/// step (GPUs flush them too).
#[allow(unsafe_code)]
pub fn flush_subnormals() {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: reads and writes the calling thread's SSE control register only; FTZ (bit 15)
    // and DAZ (bit 6) change rounding of subnormal results and inputs, nothing else.
    unsafe {
        let mut csr: u32 = 0;
        std::arch::asm!("stmxcsr [{}]", in(reg) &mut csr, options(nostack));
        csr |= (1 << 15) | (1 << 6);
        std::arch::asm!("ldmxcsr [{}]", in(reg) &csr, options(nostack));
    }
    #[cfg(target_arch = "aarch64")]
    // SAFETY: reads and writes the calling thread's FPCR only; FZ (bit 24) flushes subnormals.
    unsafe {
        let mut fpcr: u64;
        std::arch::asm!("mrs {}, fpcr", out(reg) fpcr, options(nomem, nostack));
        fpcr |= 1 << 24;
        std::arch::asm!("msr fpcr, {}", in(reg) fpcr, options(nomem, nostack));
    }
}

/// Sets up rayon's global pool (before any parallel work) with every worker flushing
/// subnormals, and flushes on the calling thread; `KILN_KEEP_SUBNORMALS=1` leaves both as
/// IEEE 754 has them. A pool that already exists is left as it is.
pub fn configure_compute_threads() {
    if std::env::var_os("KILN_KEEP_SUBNORMALS").is_some_and(|v| v == "1") {
        return;
    }
    flush_subnormals();
    let _ = rayon::ThreadPoolBuilder::new()
        .start_handler(|_| flush_subnormals())
        .build_global();
}
