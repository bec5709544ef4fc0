//! A text read in windows: the network pools each window that holds a token and averages
//! them, so with a linear head its output is the average of the windows' outputs.

mod common;

use burn::prelude::{Device, Int, Tensor, TensorData};
use common::{max_diff, text_classifier, values};
use kiln_models::{Inputs, Network};

fn logits(m: &Network, rows: &[Vec<i64>], windows: usize, device: &Device) -> Vec<Vec<f32>> {
    let width = rows[0].len();
    let flat: Vec<i64> = rows.iter().flatten().copied().collect();
    let tokens = Tensor::<2, Int>::from_data(TensorData::new(flat, [rows.len(), width]), device);
    let out = m.forward(Inputs {
        x: None,
        categories: None,
        tokens: Some(tokens),
        token_windows: windows,
    });
    let [_, k] = out.dims();
    values(out).chunks(k).map(<[f32]>::to_vec).collect()
}

#[test]
fn a_row_of_windows_averages_the_windows_that_hold_text() {
    let device = Device::default();
    device.seed(5);
    let spec = kiln_models::ModelSpec {
        hidden: vec![],
        ..text_classifier()
    };
    let m = Network::new(&spec, &device);
    let a = vec![5, 9, 3, 0, 0, 0];
    let b = vec![7, 7, 2, 11, 4, 8];
    let c = vec![12, 30, 0, 0, 0, 0];
    let empty = vec![0; 6];
    let join = |w: &[&Vec<i64>]| w.iter().flat_map(|v| v.iter().copied()).collect::<Vec<_>>();
    let one = logits(
        &m,
        &[a.clone(), b.clone(), c.clone(), empty.clone()],
        1,
        &device,
    );
    let rows = [
        join(&[&a, &b, &c]),
        join(&[&a, &empty, &empty]),
        join(&[&b, &empty, &c]),
        join(&[&empty, &empty, &empty]),
    ];
    let three = logits(&m, &rows, 3, &device);
    let mean = |parts: &[&Vec<f32>]| -> Vec<f32> {
        (0..parts[0].len())
            .map(|j| parts.iter().map(|p| p[j]).sum::<f32>() / parts.len() as f32)
            .collect()
    };
    // The head is linear: the logits of the averaged pooled states are the averaged logits.
    assert!(max_diff(&three[0], &mean(&[&one[0], &one[1], &one[2]])) < 1e-5);
    assert!(
        max_diff(&three[1], &one[0]) < 1e-5,
        "empty windows are left out"
    );
    assert!(max_diff(&three[2], &mean(&[&one[1], &one[2]])) < 1e-5);
    assert!(
        max_diff(&three[3], &one[3]) < 1e-6,
        "no text pools as one empty window"
    );
    // A batch of empty texts only still has its rows.
    let none = logits(&m, &[join(&[&empty, &empty, &empty])], 3, &device);
    assert!(max_diff(&none[0], &one[3]) < 1e-6);
}
