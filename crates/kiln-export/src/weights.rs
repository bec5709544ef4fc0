//! Named f32 tensors read from a run's `model.safetensors`.

use std::collections::BTreeMap;

use safetensors::SafeTensors;
use safetensors::tensor::Dtype;

use crate::ExportError;

/// A named tensor: shape and row-major values.
#[derive(Debug, Clone, PartialEq)]
pub struct NamedTensor {
    /// Shape.
    pub shape: Vec<usize>,
    /// Values, row-major.
    pub values: Vec<f32>,
}

/// All tensors of a weights file, by kiln's module path (e.g. `hidden.0.linear.weight`).
#[derive(Debug, Clone)]
pub struct Weights {
    tensors: BTreeMap<String, NamedTensor>,
    origin: String,
}

impl Weights {
    /// Reads safetensors bytes; every tensor must be f32.
    pub fn from_safetensors(bytes: &[u8], origin: &str) -> Result<Self, ExportError> {
        let file = SafeTensors::deserialize(bytes).map_err(|e| ExportError::Weights {
            origin: origin.to_string(),
            message: format!("not a valid safetensors file: {e}"),
        })?;
        let mut tensors = BTreeMap::new();
        for (name, view) in file.tensors() {
            if view.dtype() != Dtype::F32 {
                return Err(ExportError::Weights {
                    origin: origin.to_string(),
                    message: format!(
                        "tensor {name} is {:?}; kiln exports f32 weights",
                        view.dtype()
                    ),
                });
            }
            let values = view
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            tensors.insert(
                name,
                NamedTensor {
                    shape: view.shape().to_vec(),
                    values,
                },
            );
        }
        Ok(Self {
            tensors,
            origin: origin.to_string(),
        })
    }

    /// The tensor `name`, which must exist.
    pub fn get(&self, name: &str) -> Result<&NamedTensor, ExportError> {
        self.tensors.get(name).ok_or_else(|| ExportError::Weights {
            origin: self.origin.clone(),
            message: format!("no tensor \"{name}\": the weights do not match model.json"),
        })
    }

    /// The tensor `name` if present (optional biases).
    pub fn find(&self, name: &str) -> Option<&NamedTensor> {
        self.tensors.get(name)
    }

    /// All tensors by name.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &NamedTensor)> {
        self.tensors.iter()
    }
}
