//! Fashion-MNIST accuracy on the official 10k test images (needs scripts/setup-data.sh).
//! Long: run with `cargo test -p kiln-cli --test fashion_mnist -- --ignored`.

mod common;

use common::*;

fn have_data() -> bool {
    std::path::Path::new("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz").exists()
}

#[test]
#[ignore = "long; needs dataset-fashion-mnist (scripts/setup-data.sh)"]
fn fashion_mlp_reaches_88_percent() {
    assert!(have_data(), "run scripts/setup-data.sh first");
    let dir = tempfile::tempdir().unwrap();
    let config = root().join("examples/fashion_mlp.toml");
    let out = kiln_json(dir.path(), &["train", config.to_str().unwrap(), "--json"]);
    let acc = out["test"]["accuracy"].as_f64().unwrap();
    println!(
        "fashion MLP: test accuracy {acc:.4}, {:.0} s",
        out["train_seconds"].as_f64().unwrap()
    );
    assert_eq!(out["rows"]["test"], 10000);
    assert!(acc >= 0.88, "fashion MLP test accuracy {acc}");
}

#[test]
#[ignore = "long; needs dataset-fashion-mnist (scripts/setup-data.sh)"]
fn fashion_cnn_reaches_91_percent() {
    assert!(have_data(), "run scripts/setup-data.sh first");
    let dir = tempfile::tempdir().unwrap();
    let config = root().join("examples/fashion_cnn.toml");
    // The example's first 6 epochs of its 15 (0.917 on the test images), to keep CI short.
    let out = kiln_json(
        dir.path(),
        &[
            "train",
            config.to_str().unwrap(),
            "--json",
            "--set",
            "trainer.epochs=6",
        ],
    );
    let acc = out["test"]["accuracy"].as_f64().unwrap();
    println!(
        "fashion CNN: test accuracy {acc:.4}, {:.0} s",
        out["train_seconds"].as_f64().unwrap()
    );
    assert_eq!(out["rows"]["test"], 10000);
    assert!(acc >= 0.91, "fashion CNN test accuracy {acc}");
}
