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

    /// These weights with each LoRA adapter of `spec`'s pretrained encoder merged into the
    /// projection it adapts (`W + (alpha / rank) · A·B`, the query/key/value adapters into
    /// their column range of the packed `qkv` weight) and the adapters left out; the weights
    /// as they are without LoRA.
    pub fn with_lora_merged(&self, spec: &kiln_spec::ModelSpec) -> Result<Self, ExportError> {
        let Some((layers, lora)) = spec
            .pretrained
            .as_ref()
            .and_then(|p| p.lora.as_ref().map(|l| (p.bert.num_hidden_layers, l)))
        else {
            return Ok(self.clone());
        };
        let scale = (lora.alpha / lora.rank as f64) as f32;
        let mut merged = self.clone();
        for i in 0..layers {
            let p = format!("bert.layers.{i}");
            for (adapter, target, block) in [
                ("query", "qkv", Some(0)),
                ("key", "qkv", Some(1)),
                ("value", "qkv", Some(2)),
                ("attn_out", "attn_out", None),
                ("up", "up", None),
                ("down", "down", None),
            ] {
                let a_name = format!("{p}.lora.{adapter}.a.weight");
                let Some(a) = self.find(&a_name) else {
                    continue;
                };
                let b = self.get(&format!("{p}.lora.{adapter}.b.weight"))?;
                let weight = merged
                    .tensors
                    .get_mut(&format!("{p}.{target}.weight"))
                    .ok_or_else(|| ExportError::Weights {
                        origin: self.origin.clone(),
                        message: format!("no tensor \"{p}.{target}.weight\" for {a_name}"),
                    })?;
                let (rows, rank) = (a.shape[0], a.shape[1]);
                let out = b.shape[1];
                let width = weight.shape[1];
                let offset = block.map_or(0, |k| k * out);
                if weight.shape[0] != rows || b.shape[0] != rank || offset + out > width {
                    return Err(ExportError::Weights {
                        origin: self.origin.clone(),
                        message: format!(
                            "{a_name} {:?} and its B {:?} do not fit {p}.{target}.weight {:?}",
                            a.shape, b.shape, weight.shape
                        ),
                    });
                }
                for r in 0..rows {
                    for o in 0..out {
                        let delta: f32 = (0..rank)
                            .map(|k| a.values[r * rank + k] * b.values[k * out + o])
                            .sum();
                        weight.values[r * width + offset + o] += scale * delta;
                    }
                }
            }
        }
        merged.tensors.retain(|name, _| !name.contains(".lora."));
        Ok(merged)
    }

    /// All tensors by name.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &NamedTensor)> {
        self.tensors.iter()
    }
}
