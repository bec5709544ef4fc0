//! The exporter reads model shapes as plain data (`kiln-spec`) and never compiles a tensor
//! library: ARCHITECTURE.md's crate map says so, and this test fails when it stops being true.

use std::process::Command;

#[test]
fn kiln_export_does_not_depend_on_burn() {
    let out = Command::new(env!("CARGO"))
        .args([
            "tree",
            "-p",
            "kiln-export",
            "-e",
            "normal",
            "--prefix",
            "none",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo tree runs");
    assert!(
        out.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tree = String::from_utf8(out.stdout).unwrap();
    assert!(tree.contains("kiln-spec"), "{tree}");
    let tensor_crates: Vec<&str> = tree
        .lines()
        .filter(|l| l.starts_with("burn") || l.starts_with("kiln-models"))
        .collect();
    assert!(
        tensor_crates.is_empty(),
        "kiln-export depends on {tensor_crates:?}"
    );
}
