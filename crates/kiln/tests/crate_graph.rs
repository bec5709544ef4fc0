//! The crate graph ARCHITECTURE.md promises, checked with `cargo tree`: the exporter reads
//! model shapes as plain data and never compiles a tensor library; the server loads and runs
//! models through `kiln-runtime` and never links the trainer.

use std::process::Command;

/// The crates `package` depends on (normal dependencies, transitively), one name a line.
fn dependencies(package: &str) -> Vec<String> {
    let out = Command::new(env!("CARGO"))
        .args(["tree", "-p", package, "-e", "normal", "--prefix", "none"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo tree runs");
    assert!(
        out.status.success(),
        "cargo tree -p {package} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}

fn assert_free_of(package: &str, required: &str, forbidden: &[&str]) {
    let deps = dependencies(package);
    assert!(deps.iter().any(|d| d == required), "{package}: {deps:?}");
    let found: Vec<&String> = deps
        .iter()
        .filter(|d| {
            forbidden
                .iter()
                .any(|f| d.as_str() == *f || d.starts_with(&format!("{f}-")))
        })
        .collect();
    assert!(found.is_empty(), "{package} depends on {found:?}");
}

#[test]
fn kiln_export_does_not_compile_burn() {
    assert_free_of(
        "kiln-export",
        "kiln-spec",
        &["burn", "kiln-models", "kiln-train"],
    );
}

#[test]
fn kiln_serve_does_not_link_the_trainer() {
    assert_free_of(
        "kiln-serve",
        "kiln-runtime",
        &["kiln-train", "kiln-metrics", "kiln-report"],
    );
}

#[test]
fn model_code_compiles_neither_data_loading_nor_tokenizers() {
    assert_free_of(
        "kiln-models",
        "kiln-spec",
        &["kiln-data", "kiln-text", "csv", "tokenizers", "flate2"],
    );
}

#[test]
fn specs_are_plain_data() {
    assert_free_of("kiln-spec", "kiln-config", &["burn", "kiln-models"]);
}

#[test]
fn collectives_are_plain_rust_and_mpi_is_opt_in() {
    // kiln-dist moves byte and float buffers only; the default binary links no MPI.
    assert_free_of(
        "kiln-dist",
        "thiserror",
        &["burn", "kiln-config", "kiln-models", "kiln-train", "mpi"],
    );
    assert_free_of("kiln-cli", "kiln-dist", &["mpi"]);
}
