//! `ops::in_thread_pool`: results come back, panics propagate (the workers kept awake
//! during the work must not hang the call), and concurrent callers all finish.

use kiln_models::ops::in_thread_pool;
use rayon::prelude::*;

/// The tests take turns: one of them reads the process's CPU time, which the others' loops
/// would add to.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

#[test]
fn work_runs_on_a_worker_and_returns_its_result() {
    let _turn = one_at_a_time();
    let (on_worker, sum) = in_thread_pool(|| {
        let sum: u64 = (0..100_000u64).into_par_iter().sum();
        (rayon::current_thread_index().is_some(), sum)
    });
    assert!(on_worker);
    assert_eq!(sum, 4_999_950_000);
    // Nested calls run in place.
    assert_eq!(in_thread_pool(|| in_thread_pool(|| 7)), 7);
}

#[test]
fn a_panic_in_the_work_reaches_the_caller() {
    let _turn = one_at_a_time();
    // On its own thread, so that a hang fails the test after a minute instead of stalling it.
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let caught = std::panic::catch_unwind(|| {
            in_thread_pool(|| {
                let _: u64 = (0..1000u64).into_par_iter().sum();
                panic!("planted");
            })
        });
        let message = caught.map_err(|e| e.downcast_ref::<&str>().map(|s| s.to_string()));
        sender.send(message).unwrap();
    });
    let outcome = receiver
        .recv_timeout(std::time::Duration::from_secs(60))
        .expect("in_thread_pool hung after its work panicked");
    assert_eq!(outcome, Err(Some("planted".to_string())));
    // The pool still serves work afterwards.
    assert_eq!(
        in_thread_pool(|| (1..=10u32).into_par_iter().sum::<u32>()),
        55
    );
}

#[test]
fn concurrent_callers_all_finish() {
    let _turn = one_at_a_time();
    let sums: Vec<u64> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..6u64)
            .map(|k| {
                s.spawn(move || {
                    in_thread_pool(|| {
                        (0..50)
                            .map(|_| (0..10_000u64).into_par_iter().map(|i| i * k).sum::<u64>())
                            .sum()
                    })
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (k, sum) in sums.into_iter().enumerate() {
        assert_eq!(sum, 50 * 49_995_000 * k as u64);
    }
}

/// The process's CPU time so far (user + system), from `/proc/self/stat`, in clock ticks.
#[cfg(target_os = "linux")]
fn cpu_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

#[cfg(target_os = "linux")]
#[test]
fn workers_park_during_a_serial_stretch_and_wake_for_the_next_loop() {
    let _turn = one_at_a_time();
    let spent = in_thread_pool(|| {
        let _: u64 = (0..1_000_000u64).into_par_iter().sum();
        // A serial stretch (loading data, training a tokenizer) inside the section: the
        // other workers must park after their blocktime, not spin through it.
        let before = cpu_ticks();
        std::thread::sleep(std::time::Duration::from_millis(600));
        let spent = cpu_ticks() - before;
        // The next loop iteration wakes them, and the work still gets done.
        kiln_models::ops::keep_workers_ready();
        let sum: u64 = (0..1_000_000u64).into_par_iter().sum();
        assert_eq!(sum, 499_999_500_000);
        spent
    });
    // Spinning through the sleep would cost about 60 ticks (100 per second) per other worker.
    assert!(
        spent <= 10,
        "{spent} clock ticks of CPU during a 600 ms serial stretch"
    );
}

#[test]
fn a_thread_that_flushes_subnormals_computes_them_as_zero() {
    let tiny = || std::hint::black_box(f32::MIN_POSITIVE) * std::hint::black_box(0.25f32);
    // A fresh thread keeps IEEE subnormals; after the call, results and inputs flush to zero.
    let (kept, flushed, input) = std::thread::spawn(move || {
        let kept = tiny();
        kiln_models::ops::flush_subnormals();
        let input = std::hint::black_box(kept) * std::hint::black_box(1.0f32);
        (kept, tiny(), input)
    })
    .join()
    .unwrap();
    assert!(kept > 0.0 && kept < f32::MIN_POSITIVE, "{kept:e}");
    if cfg!(any(target_arch = "x86_64", target_arch = "aarch64")) {
        assert_eq!(flushed, 0.0);
        if cfg!(target_arch = "x86_64") {
            assert_eq!(input, 0.0, "denormals-are-zero");
        }
    }
}
