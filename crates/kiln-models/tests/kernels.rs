//! kiln's inference kernels equal the Burn ops they stand in for.

use burn::nn::pool::MaxPool2dConfig;
use burn::prelude::{Device, Tensor, TensorData};
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

/// A CNN's inference forward (kiln's pool kernel, pooling before a ReLU/LeakyReLU) equals its
/// training-form forward (Burn's pool after the activation) for every activation kind.
#[test]
fn cnn_inference_forward_equals_the_training_form() {
    use burn::module::Module;
    use kiln_config::{Activation, ConvLayer, ModelKind};
    use kiln_models::{InputShape, Inputs, ModelSpec, Network};
    let device = Device::flex();
    let ad = device.clone().autodiff();
    for activation in [
        Activation::Relu,
        Activation::LeakyRelu,
        Activation::Gelu,
        Activation::Tanh,
    ] {
        let conv = |filters| ConvLayer {
            filters,
            kernel: 3,
            stride: 1,
            padding: 1,
            pool: 2,
            batch_norm: false,
            dropout: 0.0,
        };
        let spec = ModelSpec {
            kind: ModelKind::Cnn,
            input: InputShape::Image {
                channels: 1,
                height: 12,
                width: 10,
            },
            embeddings: vec![],
            outputs: 3,
            hidden: vec![8],
            activation,
            dropout: 0.0,
            batch_norm: false,
            conv: vec![conv(4), conv(6)],
            text: None,
        };
        device.seed(4);
        let model = Network::new(&spec, &ad);
        let pixels: Vec<f32> = (0..3 * 120)
            .map(|i| (((i * 37) % 101) as f32 / 50.0 - 1.0) * 40.0)
            .collect();
        let x = |d: &Device| Tensor::<2>::from_data(TensorData::new(pixels.clone(), [3, 120]), d);
        let training = model.forward(Inputs::dense(x(&ad)));
        let inference = model.valid().forward(Inputs::dense(x(&device)));
        let a = training
            .into_data()
            .convert::<f32>()
            .try_to_vec::<f32>()
            .unwrap();
        let b = inference
            .into_data()
            .convert::<f32>()
            .try_to_vec::<f32>()
            .unwrap();
        let diff = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0f32, f32::max);
        assert!(diff < 1e-6, "{activation:?}: inference differs by {diff}");
    }
}
