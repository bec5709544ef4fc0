//! Model and optimizer state as safetensors bytes.

use std::collections::HashMap;

use burn::prelude::Device;
use safetensors::tensor::{Dtype, SafeTensors, TensorView};

use crate::optim::{Optimizer, OptimizerSettings};
use crate::{CheckpointError, TrainError};
pub use kiln_runtime::weights::{load_into, model_from_bytes, model_to_bytes};

/// The optimizer state's file in a checkpoint.
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";

/// Serialises optimizer state as safetensors; the step count goes in the metadata.
pub fn optimizer_to_bytes(optimizer: &Optimizer) -> Result<Vec<u8>, TrainError> {
    let (steps, tensors) = optimizer.export();
    let bytes: Vec<(String, Vec<u8>, usize)> = tensors
        .into_iter()
        .map(|(name, v)| {
            let n = v.len();
            (name, v.into_iter().flat_map(f32::to_le_bytes).collect(), n)
        })
        .collect();
    let views: Vec<(String, TensorView<'_>)> = bytes
        .iter()
        .map(|(name, b, n)| {
            (
                name.clone(),
                TensorView::new(Dtype::F32, vec![*n], b).expect("sizes match"),
            )
        })
        .collect();
    let meta = HashMap::from([
        ("steps".to_string(), steps.to_string()),
        ("format".to_string(), "kiln-optimizer".to_string()),
    ]);
    Ok(safetensors::serialize(views, Some(meta))?)
}

/// Restores optimizer state written by [`optimizer_to_bytes`].
pub fn optimizer_from_bytes(
    settings: OptimizerSettings,
    bytes: &[u8],
    device: &Device,
) -> Result<Optimizer, CheckpointError> {
    let bad = |detail: String| CheckpointError::Contents {
        file: OPTIMIZER_FILE.to_string(),
        detail,
    };
    let (_, metadata) = SafeTensors::read_metadata(bytes).map_err(|e| bad(e.to_string()))?;
    let st = SafeTensors::deserialize(bytes).map_err(|e| bad(e.to_string()))?;
    let meta = metadata.metadata().clone().unwrap_or_default();
    if meta.get("format").map(String::as_str) != Some("kiln-optimizer") {
        return Err(bad("not a kiln optimizer file".into()));
    }
    let steps: u64 = meta
        .get("steps")
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("no step count".into()))?;
    let mut tensors = Vec::new();
    for (name, view) in st.tensors() {
        if view.dtype() != Dtype::F32 {
            return Err(bad(format!("{name} is {:?}, expected F32", view.dtype())));
        }
        let values = view
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        tensors.push((name, values));
    }
    let mut optimizer = Optimizer::new(settings);
    optimizer.import(steps, tensors, device).map_err(bad)?;
    Ok(optimizer)
}
