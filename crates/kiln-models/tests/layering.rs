//! One place decides how an op runs: the `ops` module. Model code calls ops and never asks
//! which device it is on or whether autodiff is on, and no op is left without a form for
//! other devices.

use std::path::Path;

/// The model files: everything in `src/` but the ops and kernels that make the decision.
const MODEL_FILES: [&str; 6] = [
    "src/lib.rs",
    "src/network.rs",
    "src/transformer.rs",
    "src/encoder.rs",
    "src/gpt.rs",
    "src/generate.rs",
];

fn source(file: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(file))
        .unwrap_or_else(|e| panic!("{file}: {e}"))
}

#[test]
fn model_code_does_not_branch_on_the_device_or_autodiff() {
    for file in MODEL_FILES {
        let text = source(file);
        for forbidden in [
            "is_autodiff",
            "on_flex",
            "DispatchDevice",
            "Flex",
            "kernels::",
        ] {
            assert!(
                !text.contains(forbidden),
                "{file} uses `{forbidden}`: model code must call `ops` and let it decide"
            );
        }
    }
}

#[test]
fn every_op_has_a_generic_form() {
    let mut files = vec!["src/ops.rs".to_string()];
    for entry in std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/ops")).unwrap() {
        files.push(format!(
            "src/ops/{}",
            entry.unwrap().file_name().to_string_lossy()
        ));
    }
    for file in files {
        let text = source(&file);
        for forbidden in ["unimplemented!", "todo!"] {
            assert!(!text.contains(forbidden), "{file} has `{forbidden}`");
        }
    }
}
