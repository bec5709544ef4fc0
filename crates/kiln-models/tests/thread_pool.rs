//! `ops::in_thread_pool`: results come back, panics propagate (the workers kept awake
//! during the work must not hang the call), and concurrent callers all finish.

use kiln_models::ops::in_thread_pool;
use rayon::prelude::*;

#[test]
fn work_runs_on_a_worker_and_returns_its_result() {
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
