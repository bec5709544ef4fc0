//! The allocator of kiln's processes.
//!
//! A training step on Burn's Flex backend allocates a fresh buffer for every intermediate
//! tensor and frees it a few microseconds later; a W2 GPT step moves ~1 GB through the
//! allocator. With glibc's malloc, buffers above its mmap threshold go back to the kernel on
//! every free, so each op pays page faults and the kernel's page zeroing again (15% of W2's
//! time was `exc_page_fault`/`clear_page`, and 0.3 s of sys time per second of W3). mimalloc
//! keeps freed pages in its own arenas; with purging off it never hands them back mid-run, so
//! steady-state steps touch no fresh pages. Peak RSS is what the largest step needs, reused.
//!
//! Binaries declare the allocator and configure it first thing in `main`:
//!
//! ```ignore
//! #[global_allocator]
//! static ALLOCATOR: kiln_alloc::Allocator = kiln_alloc::Allocator;
//!
//! fn main() {
//!     kiln_alloc::configure();
//! }
//! ```

/// The global allocator type to declare with `#[global_allocator]`.
pub use mimalloc::MiMalloc as Allocator;

/// `mi_option_purge_delay` in mimalloc v3's `mi_option_t` (mimalloc.h); the Rust bindings do
/// not name it. -1 = never return freed pages to the OS.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Environment variable that, when set, leaves mimalloc's purging at its default (for
/// comparisons; mimalloc's own `MIMALLOC_PURGE_DELAY` also still applies).
pub const KEEP_DEFAULTS_ENV: &str = "KILN_ALLOC_DEFAULTS";

/// Tune the allocator for kiln's allocation pattern: keep freed memory for reuse instead of
/// purging it back to the OS. Call once at the start of `main`, before heavy work.
pub fn configure() {
    if std::env::var_os(KEEP_DEFAULTS_ENV).is_some()
        || std::env::var_os("MIMALLOC_PURGE_DELAY").is_some()
    {
        return;
    }
    // SAFETY: sets a process-wide integer option; mimalloc reads it on later purges.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
}

/// Tune the allocator for a long-running server that goes quiet between bursts: freed pages
/// go back to the OS `delay_ms` after they are freed (mimalloc's purging, which
/// [`configure`] turns off for training), so memory taken by a burst of requests comes back.
/// Leaves a `MIMALLOC_PURGE_DELAY` or [`KEEP_DEFAULTS_ENV`] choice alone.
pub fn configure_for_serving(delay_ms: i64) {
    if std::env::var_os(KEEP_DEFAULTS_ENV).is_some()
        || std::env::var_os("MIMALLOC_PURGE_DELAY").is_some()
    {
        return;
    }
    // SAFETY: sets a process-wide integer option; mimalloc reads it on later purges.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, delay_ms as std::ffi::c_long) };
}

/// The purge delay mimalloc now uses (ms; -1 = never).
pub fn purge_delay() -> i64 {
    // SAFETY: reads a process-wide integer option.
    unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) as i64 }
}

/// Hands memory freed by now back to the OS: collects the calling thread's heap and purges
/// every freed page mimalloc holds, whatever the purge delay. Costs page faults when the
/// memory is needed again, so call it when the process goes quiet (the server does, after a
/// burst of requests), not between steps.
pub fn collect() {
    // SAFETY: a plain call into mimalloc; `force = true` also frees abandoned pages.
    unsafe { libmimalloc_sys::mi_collect(true) };
}

#[cfg(test)]
mod tests {
    #[test]
    fn configure_turns_purging_off() {
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
            // mimalloc v3's default purge delay: proves index 15 is the option we mean.
            assert_eq!(super::purge_delay(), 1000);
        }
        super::configure();
        if std::env::var_os(super::KEEP_DEFAULTS_ENV).is_none()
            && std::env::var_os("MIMALLOC_PURGE_DELAY").is_none()
        {
            assert_eq!(super::purge_delay(), -1);
        }
    }
}
