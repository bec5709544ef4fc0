//! Training from a token file larger than 2 GB keeps resident memory under 1 GB: token files
//! are memory-mapped and read one random window at a time.
//! Long (writes 2.2 GB): `cargo test -p kiln-cli --test lm_large_corpus -- --ignored`.

mod common;

use std::io::Write;

use common::*;

#[test]
#[ignore = "writes a 2.2 GB token file"]
fn two_gigabyte_token_file_trains_in_constant_memory() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("small.txt"),
        "abcdefghij klmnopqrstuvwxyz\n".repeat(200),
    )
    .unwrap();
    kiln_ok(
        dir.path(),
        &[
            "data",
            "prepare-text",
            "small.txt",
            "--out",
            "tokens",
            "--val-fraction",
            "0.2",
        ],
    );
    let meta: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("tokens/meta.json")).unwrap(),
    )
    .unwrap();
    let vocab = meta["vocab_size"].as_u64().unwrap() as u16;
    // Replace train.bin with 1.1 G u16 tokens (2.2 GB) of a pseudo-random stream.
    let mut f = std::io::BufWriter::new(
        std::fs::File::create(dir.path().join("tokens/train.bin")).unwrap(),
    );
    let mut state = 1u64;
    let chunk: Vec<u8> = (0..(1 << 20))
        .flat_map(|_| {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1);
            (((state >> 33) % vocab as u64) as u16).to_le_bytes()
        })
        .collect();
    let need = "this test writes a 2.2 GB file under the temporary directory ($TMPDIR)";
    for _ in 0..1100 {
        f.write_all(&chunk)
            .unwrap_or_else(|e| panic!("{e}: {need}"));
    }
    f.flush().unwrap_or_else(|e| panic!("{e}: {need}"));
    drop(f);
    let size = std::fs::metadata(dir.path().join("tokens/train.bin"))
        .unwrap()
        .len();
    assert!(size > 2_000_000_000, "{size}");
    std::fs::write(
        dir.path().join("lm.toml"),
        r#"
[data]
source = "tokens"
[model]
type = "gpt"
layers = 2
heads = 2
embd = 64
context = 64
[trainer]
max_steps = 300
batch_size = 16
eval_every_steps = 100
eval_batches = 5
[output]
plots = false
"#,
    )
    .unwrap();
    let out = kiln_json(dir.path(), &["train", "lm.toml", "--json"]);
    let rss = out["peak_rss_mib"].as_u64().unwrap();
    println!(
        "trained 300 steps on a {:.2} GB token file; peak RSS {rss} MiB",
        size as f64 / 1e9
    );
    assert!(rss < 1024, "peak RSS {rss} MiB");
}
