//! A small ONNX graph builder: unique value names, weights as initializers, one call per node.

use crate::proto::{
    AttributeProto, AttributeType, Dimension, GraphProto, ModelProto, NodeProto,
    OperatorSetIdProto, StringStringEntryProto, TensorProto, TensorShapeProto, TensorTypeProto,
    TypeProto, ValueInfoProto, data_type,
};

/// ONNX operator set kiln targets (LayerNormalization needs 17).
pub const OPSET: i64 = 17;
/// IR version matching [`OPSET`].
pub const IR_VERSION: i64 = 8;

/// One dimension of a graph input or output.
#[derive(Debug, Clone)]
pub enum Dim {
    /// Fixed size.
    Fixed(usize),
    /// Dynamic, named (e.g. "batch").
    Named(&'static str),
}

/// An attribute value.
#[derive(Debug, Clone)]
pub enum Attr {
    /// Integer.
    Int(i64),
    /// Float.
    Float(f32),
    /// Integer list.
    Ints(Vec<i64>),
    /// Tensor (e.g. ConstantOfShape's value).
    Tensor(TensorProto),
}

/// Builds a [`GraphProto`] node by node.
#[derive(Debug, Default)]
pub struct GraphBuilder {
    graph: GraphProto,
    counter: usize,
}

/// A tensor of `f32` values as an ONNX tensor.
pub fn tensor_f32(name: &str, dims: &[usize], values: &[f32]) -> TensorProto {
    debug_assert_eq!(dims.iter().product::<usize>(), values.len());
    TensorProto {
        dims: dims.iter().map(|&d| d as i64).collect(),
        data_type: Some(data_type::FLOAT),
        name: Some(name.to_string()),
        raw_data: Some(values.iter().flat_map(|v| v.to_le_bytes()).collect()),
    }
}

/// A tensor of `i64` values as an ONNX tensor.
pub fn tensor_i64(name: &str, dims: &[usize], values: &[i64]) -> TensorProto {
    debug_assert_eq!(dims.iter().product::<usize>(), values.len());
    TensorProto {
        dims: dims.iter().map(|&d| d as i64).collect(),
        data_type: Some(data_type::INT64),
        name: Some(name.to_string()),
        raw_data: Some(values.iter().flat_map(|v| v.to_le_bytes()).collect()),
    }
}

fn value_info(name: &str, elem_type: i32, dims: &[Dim], doc: &str) -> ValueInfoProto {
    ValueInfoProto {
        name: Some(name.to_string()),
        r#type: Some(TypeProto {
            tensor_type: Some(TensorTypeProto {
                elem_type: Some(elem_type),
                shape: Some(TensorShapeProto {
                    dim: dims
                        .iter()
                        .map(|d| match d {
                            Dim::Fixed(n) => Dimension {
                                dim_value: Some(*n as i64),
                                dim_param: None,
                            },
                            Dim::Named(s) => Dimension {
                                dim_value: None,
                                dim_param: Some(s.to_string()),
                            },
                        })
                        .collect(),
                }),
            }),
        }),
        doc_string: (!doc.is_empty()).then(|| doc.to_string()),
    }
}

impl GraphBuilder {
    /// An empty graph.
    pub fn new(name: &str) -> Self {
        Self {
            graph: GraphProto {
                name: Some(name.to_string()),
                ..Default::default()
            },
            counter: 0,
        }
    }

    fn fresh(&mut self, hint: &str) -> String {
        self.counter += 1;
        format!("{hint}_{}", self.counter)
    }

    /// Declares a graph input.
    pub fn input(&mut self, name: &str, elem_type: i32, dims: &[Dim], doc: &str) -> String {
        self.graph
            .input
            .push(value_info(name, elem_type, dims, doc));
        name.to_string()
    }

    /// Declares `value` as a graph output named `name` (through an Identity node).
    pub fn output(&mut self, value: &str, name: &str, elem_type: i32, dims: &[Dim], doc: &str) {
        self.push_node("Identity", &[value], vec![name.to_string()], &[]);
        self.graph
            .output
            .push(value_info(name, elem_type, dims, doc));
    }

    /// Adds a float initializer (a weight) under `name` and returns the name.
    pub fn weight(&mut self, name: &str, dims: &[usize], values: &[f32]) -> String {
        self.graph.initializer.push(tensor_f32(name, dims, values));
        name.to_string()
    }

    /// Adds a float constant with a fresh name.
    pub fn const_f32(&mut self, hint: &str, dims: &[usize], values: &[f32]) -> String {
        let name = self.fresh(hint);
        self.weight(&name, dims, values)
    }

    /// Adds an int64 constant with a fresh name.
    pub fn const_i64(&mut self, hint: &str, dims: &[usize], values: &[i64]) -> String {
        let name = self.fresh(hint);
        self.graph.initializer.push(tensor_i64(&name, dims, values));
        name
    }

    fn push_node(
        &mut self,
        op: &str,
        inputs: &[&str],
        outputs: Vec<String>,
        attrs: &[(&str, Attr)],
    ) {
        let name = format!("{op}_{}", self.graph.node.len());
        self.graph.node.push(NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: outputs,
            name: Some(name),
            op_type: Some(op.to_string()),
            attribute: attrs.iter().map(|(n, a)| attribute(n, a.clone())).collect(),
            domain: None,
        });
    }

    /// Adds a node with one output and returns the output's name.
    pub fn op(&mut self, op: &str, inputs: &[&str], attrs: &[(&str, Attr)]) -> String {
        let out = self.fresh(&op.to_ascii_lowercase());
        self.push_node(op, inputs, vec![out.clone()], attrs);
        out
    }

    /// Adds a node with `n` outputs.
    pub fn op_n(
        &mut self,
        op: &str,
        inputs: &[&str],
        n: usize,
        attrs: &[(&str, Attr)],
    ) -> Vec<String> {
        let outs: Vec<String> = (0..n)
            .map(|_| self.fresh(&op.to_ascii_lowercase()))
            .collect();
        self.push_node(op, inputs, outs.clone(), attrs);
        outs
    }

    /// Wraps the graph into a model with kiln's producer fields and `metadata`.
    pub fn finish(self, doc: &str, metadata: Vec<(String, String)>) -> ModelProto {
        ModelProto {
            ir_version: Some(IR_VERSION),
            opset_import: vec![OperatorSetIdProto {
                domain: Some(String::new()),
                version: Some(OPSET),
            }],
            producer_name: Some("kiln".into()),
            producer_version: Some(env!("CARGO_PKG_VERSION").into()),
            model_version: Some(1),
            doc_string: Some(doc.to_string()),
            graph: Some(self.graph),
            metadata_props: metadata
                .into_iter()
                .map(|(k, v)| StringStringEntryProto {
                    key: Some(k),
                    value: Some(v),
                })
                .collect(),
        }
    }
}

fn attribute(name: &str, value: Attr) -> AttributeProto {
    let mut a = AttributeProto {
        name: Some(name.to_string()),
        ..Default::default()
    };
    match value {
        Attr::Int(i) => {
            a.r#type = Some(AttributeType::Int as i32);
            a.i = Some(i);
        }
        Attr::Float(f) => {
            a.r#type = Some(AttributeType::Float as i32);
            a.f = Some(f);
        }
        Attr::Ints(v) => {
            a.r#type = Some(AttributeType::Ints as i32);
            a.ints = v;
        }
        Attr::Tensor(t) => {
            a.r#type = Some(AttributeType::Tensor as i32);
            a.t = Some(t);
        }
    }
    a
}
