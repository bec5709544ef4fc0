//! kiln's kernels check the extents of what they are given, in release builds too: a shape
//! that does not match the weights is a panic with a message, never a read past a buffer.

use std::panic::{AssertUnwindSafe, catch_unwind};

use burn::nn::LinearConfig;
use burn::nn::conv::Conv2dConfig;
use burn::prelude::{Device, Tensor, TensorData};

fn panic_message(f: impl FnOnce()) -> String {
    let payload = catch_unwind(AssertUnwindSafe(f)).expect_err("expected a panic");
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default()
}

#[test]
fn linear_refuses_an_input_narrower_than_its_weight() {
    let device = Device::flex();
    let layer = LinearConfig::new(8, 4).init(&device);
    // Five values per row where the weight expects eight: the outside probe's
    // preprocessor/model mismatch, which used to read three values past each row.
    for rows in [1, 3, 64] {
        let x = Tensor::<2>::from_data(TensorData::new(vec![1.0f32; rows * 5], [rows, 5]), &device);
        let message = panic_message(|| {
            kiln_models::ops::linear(&layer, x).into_data();
        });
        assert!(
            message.contains("last dimension must equal the weight's input width"),
            "{message}"
        );
    }
}

#[test]
fn matmul_refuses_mismatched_inner_dimensions() {
    let device = Device::flex();
    let a = Tensor::<2>::from_data(TensorData::new(vec![1.0f32; 6], [2, 3]), &device);
    let b = Tensor::<2>::from_data(TensorData::new(vec![1.0f32; 8], [4, 2]), &device);
    let message = panic_message(|| {
        kiln_models::ops::matmul(a, b).into_data();
    });
    assert!(message.contains("weight's input width"), "{message}");
}

#[test]
fn conv_refuses_an_input_with_other_channels() {
    let device = Device::flex();
    let conv = Conv2dConfig::new([3, 4], [3, 3]).init(&device);
    let x = Tensor::<4>::from_data(
        TensorData::new(vec![0.5f32; 2 * 8 * 8], [2, 1, 8, 8]),
        &device,
    );
    // Burn's own convolution does not check this: kiln's entry points do.
    for fused in [false, true] {
        let x = x.clone();
        let message = panic_message(|| {
            if fused {
                kiln_models::ops::conv2d_relu_max_pool2d(&conv, x, 2).into_data();
            } else {
                kiln_models::ops::conv2d(&conv, x).into_data();
            }
        });
        assert!(message.contains("the input has 1 channels"), "{message}");
    }
}
