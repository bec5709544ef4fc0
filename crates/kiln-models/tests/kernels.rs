//! kiln's inference kernels equal the Burn ops they stand in for.

use burn::nn::pool::MaxPool2dConfig;
use burn::prelude::{Device, Tensor};
use burn::tensor::Distribution;
use kiln_models::kernels::max_pool2d_inference;

#[test]
fn max_pool_equals_burn_max_pool_bit_for_bit() {
    let device = Device::default();
    for (shape, k) in [
        ([2, 3, 8, 8], 2),
        ([1, 4, 7, 9], 2),
        ([3, 2, 10, 11], 3),
        ([64, 32, 28, 28], 2),
    ] {
        let x = Tensor::<4>::random(shape, Distribution::Normal(0.0, 1.0), &device);
        let burn = MaxPool2dConfig::new([k, k])
            .with_strides([k, k])
            .init()
            .forward(x.clone());
        let ours = max_pool2d_inference(x, k);
        assert_eq!(ours.dims(), burn.dims(), "{shape:?} k={k}");
        assert_eq!(ours.into_data(), burn.into_data(), "{shape:?} k={k}");
    }
}
