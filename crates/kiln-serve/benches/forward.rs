//! Forward-pass cost per row at batch 1 and at larger batches for a run directory: the ceiling
//! on what dynamic batching can gain. `cargo bench -p kiln-serve --bench forward -- RUN_DIR`
use std::time::Instant;

/// The `kiln` binary's allocator, so forward times match what `kiln serve` sees.
#[global_allocator]
static ALLOCATOR: kiln_alloc::Allocator = kiln_alloc::Allocator;

fn main() {
    kiln_alloc::configure();
    let run = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .unwrap_or_else(|| "runs/fashion-cnn".into());
    let device = kiln_models::Device::flex();
    let loaded =
        kiln_runtime::run::load(std::path::Path::new(&run), &device).expect("a run directory");
    let size = loaded.preprocessor.input_shape().size();
    // As `kiln serve` runs it.
    let model = loaded.model.folded_for_inference();
    // `FORWARD_ROWS=64 FORWARD_REPS=2000` measures one batch size for longer (for a profiler).
    let only: Option<usize> = std::env::var("FORWARD_ROWS")
        .ok()
        .and_then(|v| v.parse().ok());
    let reps_env: Option<usize> = std::env::var("FORWARD_REPS")
        .ok()
        .and_then(|v| v.parse().ok());
    let sizes = only.map_or(vec![1usize, 2, 4, 8, 16, 32, 64, 128], |rows| vec![rows]);
    // Batches handed to rayon's pool and single rows run here, as `kiln serve`'s batcher
    // does (`FORWARD_POOL=0`: every pass from this thread).
    let pool = std::env::var("FORWARD_POOL").map_or(true, |v| v != "0");
    for rows in sizes {
        let mut data = kiln_serve_bench_rows(&loaded.preprocessor, rows, size);
        data.rows = rows;
        let reps = reps_env.unwrap_or((256 / rows).max(4));
        let pass = || {
            if pool && rows > 1 {
                kiln_models::ops::in_thread_pool(|| {
                    kiln_runtime::inference::raw_outputs(&model, &data, &device)
                })
            } else {
                kiln_runtime::inference::raw_outputs(&model, &data, &device)
            }
        };
        pass();
        let t = Instant::now();
        for _ in 0..reps {
            pass();
        }
        let ms = t.elapsed().as_secs_f64() * 1000.0 / reps as f64;
        println!(
            "RESULT forward rows={rows:4} {ms:8.3} ms/pass {:7.4} ms/row",
            ms / rows as f64
        );
    }
}

fn kiln_serve_bench_rows(
    pre: &kiln_data::Preprocessor,
    rows: usize,
    size: usize,
) -> kiln_data::Encoded {
    kiln_data::Encoded {
        x: (0..rows * size)
            .map(|i| ((i * 7919) % 255) as f32 / 255.0)
            .collect(),
        rows,
        shape: pre.input_shape(),
        categories: vec![0; rows * pre.cardinalities().len()],
        tokens: Vec::new(),
        seq_len: 0,
        windows: 1,
        texts_truncated: 0,
        cardinalities: pre.cardinalities(),
        y: None,
        ids: None,
        source_rows: Vec::new(),
        unknown_categories: Default::default(),
        missing_filled: 0,
        missing_dropped: 0,
        missing_target_dropped: 0,
    }
}
