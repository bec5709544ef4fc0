//! `device::catch_out_of_memory`: a GPU runtime's out-of-memory panic becomes an error with
//! the runtime's line; every other panic goes on unwinding; a result passes through.

use kiln_models::device::{catch_out_of_memory, is_out_of_memory};

#[test]
fn an_out_of_memory_panic_becomes_its_line() {
    // As Burn's `into_scalar` reports a cubecl allocation failure: the cause nested inside.
    let err = catch_out_of_memory(|| -> u32 {
        panic!(
            "Error while reading data: Execution(An error happened during execution\nCaused by:\n  \
             out of device memory allocating 8589934592 bytes\nBacktrace\nNo backtrace available)"
        )
    })
    .unwrap_err();
    assert_eq!(err, "out of device memory allocating 8589934592 bytes");
    assert_eq!(catch_out_of_memory(|| 7), Ok(7));
}

#[test]
fn other_panics_go_on_unwinding() {
    let caught = std::panic::catch_unwind(|| {
        catch_out_of_memory(|| -> u32 { panic!("index out of bounds: the len is 3") })
    });
    assert!(caught.is_err(), "a bug is not an out-of-memory error");
}

#[test]
fn runtime_messages_that_mean_memory_ran_out() {
    for m in [
        "An out-of-memory error happened during launch",
        "out of device memory allocating 4096 bytes",
        "Buffer size 4294967296 is greater than the maximum buffer size (max_buffer_size)",
        "wgpu error: Validation Error: Out of Memory",
    ] {
        assert!(is_out_of_memory(m), "{m}");
    }
    for m in [
        "index out of bounds",
        "shape mismatch",
        "memory-mapped file truncated",
    ] {
        assert!(!is_out_of_memory(m), "{m}");
    }
}
