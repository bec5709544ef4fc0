//! Model and optimizer state as safetensors bytes.

use std::collections::HashMap;

use burn::module::Module;
use burn::prelude::Device;
use burn::store::{ModuleSnapshot, SafetensorsStore};
use kiln_models::{ModelSpec, Network};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};

use crate::TrainError;
use crate::optim::{Optimizer, OptimizerSettings};

/// Serialises a module's weights (including batch-norm running statistics) as safetensors.
pub fn model_to_bytes<M: Module>(model: &M) -> Result<Vec<u8>, TrainError> {
    // One metadata key only: a HashMap of several would serialise in a random order, and the
    // same weights must always give the same bytes.
    let mut store = SafetensorsStore::from_bytes(None)
        .clear_metadata()
        .metadata("format", "kiln");
    model
        .save_into(&mut store)
        .map_err(|e| TrainError::Weights(e.to_string()))?;
    store
        .get_bytes()
        .map_err(|e| TrainError::Weights(e.to_string()))
}

/// Builds the network of `spec` on `device` and loads `bytes` into it. Every tensor must be
/// present with the right shape.
pub fn model_from_bytes(
    spec: &ModelSpec,
    bytes: &[u8],
    device: &Device,
    origin: &str,
) -> Result<Network, TrainError> {
    load_into(Network::new(spec, device), bytes, origin)
}

/// Loads safetensors `bytes` into `model`; every tensor must be present with the right shape.
pub fn load_into<M: Module>(mut model: M, bytes: &[u8], origin: &str) -> Result<M, TrainError> {
    let tensors = SafeTensors::deserialize(bytes)
        .map_err(|e| TrainError::Weights(format!("{origin}: not a valid safetensors file: {e}")))?;
    check_finite(&tensors, origin)?;
    let mut store = SafetensorsStore::from_bytes(Some(bytes.to_vec()))
        .allow_partial(false)
        .validate(true);
    let result = model
        .load_from(&mut store)
        .map_err(|e| TrainError::Weights(format!("{origin}: {e}")))?;
    if !result.errors.is_empty() || !result.missing.is_empty() {
        let missing: Vec<&str> = result.missing.iter().map(|(p, _)| p.as_str()).collect();
        return Err(TrainError::Weights(format!(
            "{origin}: weights do not match model.json (missing: {missing:?}; errors: {:?})",
            result
                .errors
                .iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
        )));
    }
    Ok(model)
}

/// Refuses weights holding NaN or an infinity: such a model answers NaN for every input.
fn check_finite(tensors: &SafeTensors<'_>, origin: &str) -> Result<(), TrainError> {
    for (name, view) in tensors.tensors() {
        if view.dtype() != Dtype::F32 {
            continue;
        }
        let bad = view
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .enumerate()
            .find(|(_, v)| !v.is_finite());
        if let Some((index, value)) = bad {
            return Err(TrainError::Weights(format!(
                "{origin}: tensor \"{name}\" holds {value} at index {index}; weights must be finite"
            )));
        }
    }
    Ok(())
}

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
    safetensors::serialize(views, Some(meta)).map_err(|e| TrainError::Weights(e.to_string()))
}

/// Restores optimizer state written by [`optimizer_to_bytes`].
pub fn optimizer_from_bytes(
    settings: OptimizerSettings,
    bytes: &[u8],
    device: &Device,
) -> Result<Optimizer, TrainError> {
    let bad = |m: String| TrainError::Checkpoint(format!("optimizer state: {m}"));
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
    optimizer.import(steps, tensors, device)?;
    Ok(optimizer)
}
