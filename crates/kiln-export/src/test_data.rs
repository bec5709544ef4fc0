//! Reference inputs and outputs as ONNX `TensorProto` files (`input_0.pb`, `output_0.pb`, ...),
//! the layout ONNX's own test runners and the model zoo use.

use prost::Message;

use crate::graph::{tensor_f32, tensor_i64};

/// One named tensor of a test case.
#[derive(Debug, Clone, PartialEq)]
pub enum TestTensor {
    /// f32 values.
    F32 {
        /// Graph input or output name.
        name: String,
        /// Shape.
        shape: Vec<usize>,
        /// Values.
        values: Vec<f32>,
    },
    /// i64 values.
    I64 {
        /// Graph input or output name.
        name: String,
        /// Shape.
        shape: Vec<usize>,
        /// Values.
        values: Vec<i64>,
    },
}

impl TestTensor {
    /// Serialised `TensorProto`.
    pub fn to_bytes(&self) -> Vec<u8> {
        match self {
            TestTensor::F32 {
                name,
                shape,
                values,
            } => tensor_f32(name, shape, values).encode_to_vec(),
            TestTensor::I64 {
                name,
                shape,
                values,
            } => tensor_i64(name, shape, values).encode_to_vec(),
        }
    }
}
