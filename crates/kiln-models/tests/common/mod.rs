//! Helpers shared by the model tests.
#![allow(dead_code)]

use burn::module::{Module, ModuleVisitor, Param};
use burn::prelude::{Int, Tensor, TensorData};
use burn::tensor::Gradients;

/// Largest absolute element-wise difference.
pub fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// A tensor's values as f32.
pub fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap()
}

/// Every parameter's gradient in `grads`, in `module`'s visiting order (empty where a
/// parameter has none).
pub fn parameter_grads<M: Module>(module: &M, grads: &Gradients) -> Vec<Vec<f32>> {
    let mut collect = Collect { grads, out: vec![] };
    module.visit(&mut collect);
    collect.out
}

struct Collect<'a> {
    grads: &'a Gradients,
    out: Vec<Vec<f32>>,
}

impl ModuleVisitor for Collect<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let g = param
            .val()
            .grad(self.grads)
            .map(|g| g.into_data().convert::<f32>().try_to_vec::<f32>().unwrap())
            .unwrap_or_default();
        self.out.push(g);
    }
}

/// Burn's mean cross-entropy of `logits` `[B, C]` against `targets`.
pub fn mean_cross_entropy(logits: Tensor<2>, targets: &[i64]) -> Tensor<1> {
    let [b, _] = logits.dims();
    let device = logits.device();
    let t = Tensor::<1, Int>::from_data(TensorData::new(targets.to_vec(), [b]), &device);
    burn::nn::loss::CrossEntropyLossConfig::new()
        .init(&device)
        .forward(logits, t)
}

/// Four rows of token ids padded with 0 to 12 (`[4, 12]`, row-major), one of them empty.
pub fn padded_ids() -> Vec<i64> {
    let rows: [&[i64]; 4] = [
        &[5, 9, 3],
        &[7, 7, 2, 11, 4, 8, 1, 30, 22, 9, 5, 6],
        &[],
        &[0, 4, 9, 0, 12],
    ];
    let mut ids = vec![0i64; 4 * 12];
    for (r, row) in rows.iter().enumerate() {
        ids[r * 12..r * 12 + row.len()].copy_from_slice(row);
    }
    ids
}
