//! Model weights as safetensors bytes.

use burn::module::Module;
use burn::prelude::Device;
use burn::store::{ModuleSnapshot, SafetensorsStore};
use kiln_models::{ModelSpec, Network};
use safetensors::tensor::{Dtype, SafeTensors};

use crate::RuntimeError;

/// Why weights do not load (or save).
#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    /// The bytes are not a safetensors file.
    #[error("not a valid safetensors file: {0}")]
    NotSafetensors(#[source] safetensors::SafeTensorError),
    /// Burn's store could not read or write the module.
    #[error("{0}")]
    Store(String),
    /// Tensors the model has are missing from the file, or have other shapes.
    #[error("weights do not match model.json (missing: {missing:?}; errors: {errors:?})")]
    Mismatch {
        /// Parameter paths the file lacks.
        missing: Vec<String>,
        /// Shape or dtype mismatches, one message each.
        errors: Vec<String>,
    },
    /// A tensor holds NaN or an infinity.
    #[error("tensor \"{tensor}\" holds {value} at index {index}; weights must be finite")]
    NonFinite {
        /// The tensor's name.
        tensor: String,
        /// The first bad element.
        index: usize,
        /// Its value.
        value: f32,
    },
}

fn weights_error(origin: &str, problem: WeightsError) -> RuntimeError {
    RuntimeError::Weights {
        origin: origin.to_string(),
        problem,
    }
}

/// Serialises a module's weights (including batch-norm running statistics) as safetensors.
pub fn model_to_bytes<M: Module>(model: &M) -> Result<Vec<u8>, RuntimeError> {
    // One metadata key only: a HashMap of several would serialise in a random order, and the
    // same weights must always give the same bytes.
    let mut store = SafetensorsStore::from_bytes(None)
        .clear_metadata()
        .metadata("format", "kiln");
    let failed = |e: String| weights_error("model", WeightsError::Store(e));
    model
        .save_into(&mut store)
        .map_err(|e| failed(e.to_string()))?;
    store.get_bytes().map_err(|e| failed(e.to_string()))
}

/// Builds the network of `spec` on `device` and loads `bytes` into it. Every tensor must be
/// present with the right shape.
pub fn model_from_bytes(
    spec: &ModelSpec,
    bytes: &[u8],
    device: &Device,
    origin: &str,
) -> Result<Network, RuntimeError> {
    load_into(Network::new(spec, device), bytes, origin)
}

/// Loads safetensors `bytes` into `model`; every tensor must be present with the right shape.
pub fn load_into<M: Module>(model: M, bytes: &[u8], origin: &str) -> Result<M, RuntimeError> {
    let tensors = SafeTensors::deserialize(bytes)
        .map_err(|e| weights_error(origin, WeightsError::NotSafetensors(e)))?;
    check_finite(&tensors, origin)?;
    apply(model, bytes, origin, true)
}

/// Loads safetensors `bytes` into part of `model` (a pretrained encoder's tensors into a
/// fresh network): every tensor of `bytes` must exist in the model with its shape; the
/// model's other tensors keep their values.
pub fn load_part_into<M: Module>(model: M, bytes: &[u8], origin: &str) -> Result<M, RuntimeError> {
    apply(model, bytes, origin, false)
}

/// Applies `bytes` to `model`: with `whole`, every model tensor must be in the file; without,
/// every file tensor must be in the model. Shapes must match either way.
fn apply<M: Module>(
    mut model: M,
    bytes: &[u8],
    origin: &str,
    whole: bool,
) -> Result<M, RuntimeError> {
    let mut store = SafetensorsStore::from_bytes(Some(bytes.to_vec()))
        .allow_partial(!whole)
        .validate(true);
    let result = model
        .load_from(&mut store)
        .map_err(|e| weights_error(origin, WeightsError::Store(e.to_string())))?;
    let absent: Vec<String> = if whole {
        result.missing.iter().map(|(p, _)| p.clone()).collect()
    } else {
        result.unused.clone()
    };
    if !result.errors.is_empty() || !absent.is_empty() {
        return Err(weights_error(
            origin,
            WeightsError::Mismatch {
                missing: absent,
                errors: result.errors.iter().map(|e| e.to_string()).collect(),
            },
        ));
    }
    Ok(model)
}

/// Refuses weights holding NaN or an infinity: such a model answers NaN for every input.
fn check_finite(tensors: &SafeTensors<'_>, origin: &str) -> Result<(), RuntimeError> {
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
            return Err(weights_error(
                origin,
                WeightsError::NonFinite {
                    tensor: name.to_string(),
                    index,
                    value,
                },
            ));
        }
    }
    Ok(())
}
