//! kiln's inference kernels equal the Burn ops they stand in for.

use burn::nn::pool::MaxPool2dConfig;
use burn::prelude::{Device, Tensor, TensorData};
use burn::tensor::Distribution;
use kiln_models::kernels::max_pool2d_inference;

#[test]
fn max_pool_equals_burn_max_pool_bit_for_bit() {
    let device = Device::flex();
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
            pretrained: None,
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

/// kiln's vectorised GELU equals exact GELU (f64 `erfc`) within 2e-6 relative, growing as
/// 2.5e-7 x² in the far negative tail (f32 rounding of x²/2 inside the exponential; the values
/// there are below 1e-6), and Burn's (libm `erff`) within 1e-6 absolute. Burn's own
/// `1 + erf` cancels in that tail (gelu(-5.07) is -9.98e-7; Burn gives -1.06e-6, and -0 below
/// -7), which is why the relative check is against f64 rather than Burn.
#[test]
fn gelu_kernel_equals_exact_gelu() {
    let device = Device::flex();
    let mut values: Vec<f32> = (-4000..=4000).map(|i| i as f32 / 250.0).collect();
    values.extend([
        0.0, -0.0, 1e-30, -1e-30, 1e-7, -1e-7, 30.0, -30.0, 80.0, -80.0, 1e4, -1e4,
    ]);
    let n = values.len();
    let x = Tensor::<1>::from_data(TensorData::new(values.clone(), [n]), &device);
    let burn = burn::tensor::activation::gelu(x.clone())
        .into_data()
        .try_to_vec::<f32>()
        .unwrap();
    let kiln = kiln_models::kernels::gelu_inference(x)
        .into_data()
        .try_to_vec::<f32>()
        .unwrap();
    for ((&x, &b), &k) in values.iter().zip(&burn).zip(&kiln) {
        let exact = x as f64 * 0.5 * libm::erfc(-(x as f64) / std::f64::consts::SQRT_2);
        let rel = (k as f64 - exact).abs() / exact.abs().max(1e-37);
        assert!(
            rel <= 2e-6 + 2.5e-7 * (x as f64).powi(2) || (k as f64 - exact).abs() < 1e-37,
            "gelu({x}): exact {exact:e}, kiln {k:e}"
        );
        assert!((b - k).abs() <= 1e-6, "gelu({x}): burn {b}, kiln {k}");
    }
}

/// kiln's differentiable GELU (`ops::gelu`, kiln's Flex kernels forward and backward) gives
/// Burn's values and Burn's gradients, on plain and autodiff devices.
#[test]
fn differentiable_gelu_matches_burn_values_and_gradients() {
    let device = Device::flex();
    let ad = device.clone().autodiff();
    // Large enough to be split across rayon tasks, plus a strided (transposed) view.
    let values: Vec<f32> = (0..(1 << 17))
        .map(|i| ((i * 7919) % 20011) as f32 / 1000.0 - 10.0)
        .collect();
    let n = values.len();
    let x = |d: &Device| Tensor::<2>::from_data(TensorData::new(values.clone(), [n / 256, 256]), d);
    let to_vec = |t: Tensor<2>| t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap();
    let max_diff = |a: &[f32], b: &[f32]| {
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0f32, f32::max)
    };
    // Plain device, contiguous and strided.
    let plain = to_vec(kiln_models::ops::gelu(x(&device)));
    let burn = to_vec(burn::tensor::activation::gelu(x(&device)));
    assert!(max_diff(&plain, &burn) < 1e-6);
    let strided = to_vec(kiln_models::ops::gelu(x(&device).transpose()));
    let burn_strided = to_vec(burn::tensor::activation::gelu(x(&device).transpose()));
    assert!(max_diff(&strided, &burn_strided) < 1e-6);
    // Autodiff: d/dx sum(gelu(x) * w) against Burn's op.
    let w = Tensor::<2>::from_data(
        TensorData::new(
            (0..n).map(|i| (i % 13) as f32 - 6.0).collect::<Vec<f32>>(),
            [n / 256, 256],
        ),
        &ad,
    );
    let grad_of = |kiln: bool| {
        let xa = x(&ad).require_grad();
        let y = if kiln {
            kiln_models::ops::gelu(xa.clone())
        } else {
            burn::tensor::activation::gelu(xa.clone())
        };
        let grads = (y.clone() * w.clone()).sum().backward();
        (to_vec(y), to_vec(xa.grad(&grads).unwrap()))
    };
    let (kiln_y, kiln_grad) = grad_of(true);
    let (burn_y, burn_grad) = grad_of(false);
    assert!(max_diff(&kiln_y, &burn_y) < 1e-6, "forward under autodiff");
    let d = max_diff(&kiln_grad, &burn_grad);
    assert!(d < 1e-5, "gradients differ by {d}");
    assert!(
        kiln_grad.iter().any(|&g| g.abs() > 1.0),
        "gradient is not trivially zero"
    );
}

/// kiln's linear op (`ops::linear`, direct gemm calls on Flex) gives `burn::nn::Linear`'s
/// outputs and gradients for the input, weight and bias, for 2-D and 3-D inputs, with and
/// without a bias, and for a strided input.
#[test]
fn linear_op_matches_burn_linear_values_and_gradients() {
    use burn::module::Module;
    use burn::nn::LinearConfig;
    let device = Device::flex();
    let ad = device.clone().autodiff();
    let to_vec = |t: Tensor<3>| t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap();
    let close = |what: &str, a: &[f32], b: &[f32]| assert_close(1e-5, what, a, b);
    for (bias, strided, [b, t, i, o]) in [
        (true, false, [3, 5, 7, 4]),
        (false, false, [2, 64, 96, 200]),
        (true, true, [4, 6, 8, 3]),
    ] {
        device.seed(7);
        let layer = LinearConfig::new(i, o).with_bias(bias).init(&ad);
        let values: Vec<f32> = (0..b * t * i)
            .map(|k| ((k * 31) % 17) as f32 / 8.0 - 1.0)
            .collect();
        let input = || {
            if strided {
                Tensor::<3>::from_data(TensorData::new(values.clone(), [b, i, t]), &ad)
                    .swap_dims(1, 2)
            } else {
                Tensor::<3>::from_data(TensorData::new(values.clone(), [b, t, i]), &ad)
            }
            .require_grad()
        };
        let w_out: Vec<f32> = (0..b * t * o).map(|k| (k % 5) as f32 - 2.0).collect();
        let w_out = Tensor::<3>::from_data(TensorData::new(w_out, [b, t, o]), &ad);
        let run = |kiln: bool| {
            let x = input();
            let y = if kiln {
                kiln_models::ops::linear(&layer, x.clone())
            } else {
                layer.forward(x.clone())
            };
            let grads = (y.clone() * w_out.clone()).sum().backward();
            let gx = to_vec(x.grad(&grads).unwrap());
            let gw = layer
                .weight
                .grad(&grads)
                .unwrap()
                .into_data()
                .try_to_vec::<f32>()
                .unwrap();
            let gb = layer.bias.as_ref().map(|p| {
                p.grad(&grads)
                    .unwrap()
                    .into_data()
                    .try_to_vec::<f32>()
                    .unwrap()
            });
            (to_vec(y), gx, gw, gb)
        };
        let (ky, kx, kw, kb) = run(true);
        let (by, bx, bw, bb) = run(false);
        let what = format!("bias {bias}, strided {strided}, [{b},{t},{i}]->{o}");
        close(&format!("{what}: output"), &ky, &by);
        close(&format!("{what}: input gradient"), &kx, &bx);
        close(&format!("{what}: weight gradient"), &kw, &bw);
        if let (Some(kb), Some(bb)) = (kb, bb) {
            close(&format!("{what}: bias gradient"), &kb, &bb);
        }
        // Without autodiff too.
        let plain = layer.valid();
        let x = Tensor::<3>::from_data(TensorData::new(values.clone(), [b, t, i]), &device);
        if !strided {
            close(
                &format!("{what}: inference"),
                &to_vec(kiln_models::ops::linear(&plain, x.clone())),
                &to_vec(plain.forward(x)),
            );
        }
    }
}

/// kiln's matmul (`ops::matmul`, the product behind its linear layers) gives Burn's values
/// whether the product runs on one thread or is cut into row blocks (tall outputs) or column
/// blocks (wide outputs) with a ragged last block, for plain and transposed operands, and
/// for products of a few rows (a sample served alone, a token generated).
#[test]
fn matmul_matches_burn_over_row_and_column_splits() {
    let device = Device::flex();
    let to_vec = |t: Tensor<2>| t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap();
    for [m, k, n] in [
        [1, 5, 3],
        [1, 3136, 128],
        [2, 256, 1000],
        [4, 70_000, 65],
        [5, 64, 64],
        [300, 200, 130],
        [40, 700, 900],
        [2048, 256, 1024],
        [257, 193, 255],
    ] {
        for transposed in [false, true] {
            let a: Vec<f32> = (0..m * k)
                .map(|i| ((i * 31) % 17) as f32 / 8.0 - 1.0)
                .collect();
            let b: Vec<f32> = (0..k * n)
                .map(|i| ((i * 7) % 13) as f32 / 6.0 - 1.0)
                .collect();
            let (a, b) = if transposed {
                (
                    Tensor::<2>::from_data(TensorData::new(a, [k, m]), &device).transpose(),
                    Tensor::<2>::from_data(TensorData::new(b, [n, k]), &device).transpose(),
                )
            } else {
                (
                    Tensor::<2>::from_data(TensorData::new(a, [m, k]), &device),
                    Tensor::<2>::from_data(TensorData::new(b, [k, n]), &device),
                )
            };
            let ours = kiln_models::ops::matmul(a.clone(), b.clone());
            assert_eq!(ours.dims(), [m, n]);
            assert_close(
                // Rounding grows with the length of the sums.
                if k > 10_000 { 1e-3 } else { 1e-4 },
                &format!("[{m}, {k}] x [{k}, {n}], transposed {transposed}"),
                &to_vec(ours),
                &to_vec(a.matmul(b)),
            );
        }
    }
}

/// kiln's convolution (`ops::conv2d`) gives Burn's `Conv2d` outputs and gradients (input,
/// weight, bias) over strides, padding, dilation, 1×1 kernels, one sample and many, and with
/// the input a constant (the first layer of a network).
#[test]
fn conv2d_op_matches_burn_conv_values_and_gradients() {
    use burn::module::Module;
    use burn::nn::PaddingConfig2d;
    use burn::nn::conv::Conv2dConfig;
    let device = Device::flex();
    let ad = device.clone().autodiff();
    let to_vec = |t: Tensor<4>| t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap();
    // The weight's and bias's gradients sum over every output position of the batch (36 864
    // products in the largest case), so they get a wider tolerance.
    let close = |what: &str, a: &[f32], b: &[f32]| assert_close(2e-5, what, a, b);
    // (batch, [cin, h, w], cout, kernel, stride, padding (top, left, bottom, right), dilation,
    //  input tracked)
    let cases = [
        (
            5,
            [1, 28, 28],
            8,
            [3, 3],
            [1, 1],
            (0, 0, 0, 0),
            [1, 1],
            false,
        ),
        (
            4,
            [3, 12, 10],
            6,
            [3, 3],
            [1, 1],
            (0, 0, 0, 0),
            [1, 1],
            true,
        ),
        (3, [2, 9, 11], 4, [3, 2], [2, 3], (1, 2, 0, 1), [1, 1], true),
        (
            1,
            [4, 10, 10],
            5,
            [3, 3],
            [1, 1],
            (1, 1, 1, 1),
            [2, 2],
            true,
        ),
        (6, [8, 5, 7], 3, [1, 1], [1, 1], (0, 0, 0, 0), [1, 1], true),
        (2, [3, 8, 8], 4, [5, 5], [1, 2], (2, 2, 2, 2), [1, 1], true),
        (
            64,
            [32, 26, 26],
            64,
            [3, 3],
            [1, 1],
            (0, 0, 0, 0),
            [1, 1],
            true,
        ),
    ];
    for (
        case,
        (b, [ci, h, w], co, kernel, stride, (top, left, bottom, right), dilation, tracked),
    ) in cases.into_iter().enumerate()
    {
        device.seed(11);
        // One case without a bias (kiln's bias-free op).
        let bias = case != 4;
        let layer = Conv2dConfig::new([ci, co], kernel)
            .with_bias(bias)
            .with_stride(stride)
            .with_padding(PaddingConfig2d::Explicit(top, left, bottom, right))
            .with_dilation(dilation)
            .init(&ad);
        let values: Vec<f32> = (0..b * ci * h * w)
            .map(|k| ((k * 37) % 23) as f32 / 11.0 - 1.0)
            .collect();
        let x = Tensor::<4>::from_data(TensorData::new(values.clone(), [b, ci, h, w]), &ad);
        let out_dims = layer.forward(x.clone()).dims();
        let w_out: Vec<f32> = (0..out_dims.iter().product::<usize>())
            .map(|k| (k % 7) as f32 - 3.0)
            .collect();
        let w_out = Tensor::<4>::from_data(TensorData::new(w_out, out_dims), &ad);
        let run = |kiln: bool| {
            let x = if tracked {
                x.clone().require_grad()
            } else {
                x.clone()
            };
            let y = if kiln {
                kiln_models::ops::conv2d(&layer, x.clone())
            } else {
                layer.forward(x.clone())
            };
            let grads = (y.clone() * w_out.clone()).sum().backward();
            let gx = x.grad(&grads).map(to_vec);
            let gw = to_vec(layer.weight.grad(&grads).unwrap());
            let gb = layer.bias.as_ref().map(|p| {
                p.grad(&grads)
                    .unwrap()
                    .into_data()
                    .try_to_vec::<f32>()
                    .unwrap()
            });
            (to_vec(y), gx, gw, gb)
        };
        let (ky, kx, kw, kb) = run(true);
        let (by, bx, bw, bb) = run(false);
        let what = format!(
            "[{b},{ci},{h},{w}] -> {co}, kernel {kernel:?}, stride {stride:?}, \
             padding {:?}, dilation {dilation:?}",
            (top, left, bottom, right)
        );
        close(&format!("{what}: output"), &ky, &by);
        assert_eq!(kx.is_some(), tracked, "{what}: input gradient present");
        if let (Some(kx), Some(bx)) = (kx, bx) {
            close(&format!("{what}: input gradient"), &kx, &bx);
        }
        assert_close(1e-4, &format!("{what}: weight gradient"), &kw, &bw);
        assert_eq!(kb.is_some(), bias, "{what}: bias gradient present");
        if let (Some(kb), Some(bb)) = (kb, bb) {
            assert_close(1e-4, &format!("{what}: bias gradient"), &kb, &bb);
        }
        // Without autodiff too.
        let plain = layer.valid();
        let x = Tensor::<4>::from_data(TensorData::new(values, [b, ci, h, w]), &device);
        close(
            &format!("{what}: inference"),
            &to_vec(kiln_models::ops::conv2d(&plain, x.clone())),
            &to_vec(plain.forward(x)),
        );
    }
}

/// kiln's fused ReLU + max-pool (`ops::relu_max_pool2d`) gives Burn's ReLU then `MaxPool2d`
/// values and input gradient, with odd sizes (trailing rows dropped), windows that are all
/// negative, and many planes (the parallel path).
#[test]
fn relu_max_pool_matches_burn_values_and_gradients() {
    let device = Device::flex();
    let ad = device.clone().autodiff();
    let to_vec = |t: Tensor<4>| t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap();
    for (dims, k) in [
        ([2, 3, 8, 8], 2),
        ([3, 2, 7, 9], 2),
        ([2, 2, 9, 10], 3),
        ([64, 64, 24, 24], 2),
        ([1, 1, 1, 3], 2),
    ] {
        let n: usize = dims.iter().product();
        // Distinct values (no ties), about half negative.
        let values: Vec<f32> = (0..n)
            .map(|i| ((i * 7919) % n) as f32 / n as f32 - 0.5)
            .collect();
        let pool = MaxPool2dConfig::new([k, k]).with_strides([k, k]).init();
        let run = |kiln: bool| {
            let x =
                Tensor::<4>::from_data(TensorData::new(values.clone(), dims), &ad).require_grad();
            let y = if kiln {
                kiln_models::ops::relu_max_pool2d(x.clone(), k)
            } else {
                pool.forward(burn::tensor::activation::relu(x.clone()))
            };
            let w: Vec<f32> = (0..y.dims().iter().product::<usize>())
                .map(|i| (i % 5) as f32 - 2.0)
                .collect();
            let w = Tensor::<4>::from_data(TensorData::new(w, y.dims()), &ad);
            let grads = (y.clone() * w).sum().backward();
            (to_vec(y), to_vec(x.grad(&grads).unwrap()))
        };
        let (ky, kx) = run(true);
        let (by, bx) = run(false);
        assert_eq!(ky, by, "{dims:?} k {k}: output");
        assert_eq!(kx, bx, "{dims:?} k {k}: input gradient");
        let x = Tensor::<4>::from_data(TensorData::new(values.clone(), dims), &device);
        assert_eq!(
            to_vec(kiln_models::ops::relu_max_pool2d(x.clone(), k)),
            to_vec(pool.forward(burn::tensor::activation::relu(x))),
            "{dims:?} k {k}: inference"
        );
    }
}

/// The fused inference pass `ops::conv2d_relu_max_pool2d` equals the convolution followed by
/// ReLU + max-pool, over biases, strides, padding, 1×1 kernels, odd sizes and both pool
/// sizes, one sample and many.
#[test]
fn fused_conv_relu_pool_equals_the_two_ops() {
    use burn::nn::PaddingConfig2d;
    use burn::nn::conv::Conv2dConfig;
    let device = Device::flex();
    let to_vec = |t: Tensor<4>| t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap();
    for (bias, [b, cin, h, w], cout, kernel, stride, pad, k) in [
        (true, [3, 1, 28, 28], 8, 3, 1, 1, 2),
        (false, [2, 4, 13, 11], 5, 3, 1, 0, 2),
        (true, [1, 3, 15, 17], 6, 5, 2, 2, 3),
        (true, [4, 6, 9, 9], 7, 1, 1, 0, 2),
        (true, [5, 32, 14, 14], 64, 3, 1, 1, 2),
    ] {
        device.seed(3);
        let conv = Conv2dConfig::new([cin, cout], [kernel, kernel])
            .with_stride([stride, stride])
            .with_padding(PaddingConfig2d::Explicit(pad, pad, pad, pad))
            .with_bias(bias)
            .init(&device);
        let x = Tensor::<4>::random([b, cin, h, w], Distribution::Normal(0.0, 1.0), &device);
        let fused = kiln_models::ops::conv2d_relu_max_pool2d(&conv, x.clone(), k);
        let apart = kiln_models::ops::relu_max_pool2d(kiln_models::ops::conv2d(&conv, x), k);
        assert_eq!(fused.dims(), apart.dims());
        assert_close(
            1e-6,
            &format!("[{b},{cin},{h},{w}] -> {cout}, kernel {kernel}, stride {stride}, k {k}"),
            &to_vec(fused),
            &to_vec(apart),
        );
    }
}

/// kiln's LayerNorm (`ops::layer_norm`) gives Burn's `LayerNorm` outputs and gradients
/// (input, scale, bias) with and without a bias, with and without autodiff.
#[test]
fn layer_norm_op_matches_burn_values_and_gradients() {
    use burn::nn::LayerNormConfig;
    let device = Device::flex();
    let ad = device.clone().autodiff();
    let to_vec = |t: Tensor<3>| t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap();
    let to_vec1 = |t: Tensor<1>| t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap();
    for (bias, [b, t, d]) in [
        (true, [3, 5, 7]),
        (false, [2, 128, 256]),
        (true, [1, 3, 33]),
    ] {
        device.seed(11);
        let mut norm = LayerNormConfig::new(d)
            .with_epsilon(kiln_models::ops::LAYER_NORM_EPSILON)
            .with_bias(bias)
            .init(&ad);
        // A scale and bias away from their 1 and 0 starts, so their roles show.
        norm.gamma = norm.gamma.map(|g| {
            (g.clone() * 0.5 + g.random_like(Distribution::Uniform(0.0, 1.0)))
                .detach()
                .require_grad()
        });
        norm.beta = norm.beta.map(|p| {
            p.map(|b| {
                b.random_like(Distribution::Normal(0.0, 1.0))
                    .detach()
                    .require_grad()
            })
        });
        let values: Vec<f32> = (0..b * t * d)
            .map(|k| ((k * 37) % 23) as f32 / 5.0 - 2.0 + (k / d) as f32 * 0.25)
            .collect();
        let w_out: Vec<f32> = (0..b * t * d)
            .map(|k| ((k * 7) % 11) as f32 - 5.0)
            .collect();
        let w_out = Tensor::<3>::from_data(TensorData::new(w_out, [b, t, d]), &ad);
        let run = |kiln: bool| {
            let x = Tensor::<3>::from_data(TensorData::new(values.clone(), [b, t, d]), &ad)
                .require_grad();
            let y = if kiln {
                kiln_models::ops::layer_norm(&norm, x.clone())
            } else {
                norm.forward(x.clone())
            };
            let grads = (y.clone() * w_out.clone()).sum().backward();
            let gx = to_vec(x.grad(&grads).unwrap());
            let gg = to_vec1(norm.gamma.grad(&grads).unwrap());
            let gb = norm.beta.as_ref().map(|p| to_vec1(p.grad(&grads).unwrap()));
            (to_vec(y), gx, gg, gb)
        };
        let (ky, kx, kg, kb) = run(true);
        let (by, bx, bg, bb) = run(false);
        let what = format!("bias {bias}, [{b},{t},{d}]");
        assert_close(1e-5, &format!("{what}: output"), &ky, &by);
        assert_close(1e-4, &format!("{what}: input gradient"), &kx, &bx);
        assert_close(1e-4, &format!("{what}: scale gradient"), &kg, &bg);
        if let (Some(kb), Some(bb)) = (kb, bb) {
            assert_close(1e-5, &format!("{what}: bias gradient"), &kb, &bb);
        }
        let plain = burn::module::Module::valid(&norm);
        let x = Tensor::<3>::from_data(TensorData::new(values.clone(), [b, t, d]), &device);
        assert_close(
            1e-5,
            &format!("{what}: inference"),
            &to_vec(kiln_models::ops::layer_norm(&plain, x.clone())),
            &to_vec(plain.forward(x)),
        );
    }
}

/// kiln's fused causal attention (`ops::causal_attention`) gives the op-by-op form's outputs
/// and its gradient with respect to the packed projections.
#[test]
fn fused_causal_attention_matches_op_by_op_values_and_gradients() {
    use burn::prelude::Bool;
    use burn::tensor::activation::softmax;
    let device = Device::flex();
    let ad = device.clone().autodiff();
    assert!(kiln_models::ops::on_flex(&ad));
    for (b, t, c, heads) in [(2, 7, 12, 3), (3, 33, 64, 4)] {
        let d = c / heads;
        let values: Vec<f32> = (0..b * t * 3 * c)
            .map(|k| ((k * 7919) % 1009) as f32 / 300.0 - 1.6)
            .collect();
        let weights: Vec<f32> = (0..b * t * c)
            .map(|k| ((k * 13) % 11) as f32 - 5.0)
            .collect();
        let w = Tensor::<3>::from_data(TensorData::new(weights, [b, t, c]), &ad);
        let run = |fused: bool| {
            let qkv = Tensor::<3>::from_data(TensorData::new(values.clone(), [b, t, 3 * c]), &ad)
                .require_grad();
            let y = if fused {
                kiln_models::ops::causal_attention(qkv.clone(), heads)
            } else {
                let part = |i: usize| {
                    qkv.clone()
                        .narrow(2, i * c, c)
                        .reshape([b, t, heads, d])
                        .swap_dims(1, 2)
                };
                let (q, k, v) = (part(0), part(1), part(2));
                let att = q.matmul(k.swap_dims(2, 3)).div_scalar((d as f64).sqrt());
                let mask = Tensor::<2, Bool>::triu_mask([t, t], 1, &ad)
                    .bool_not()
                    .unsqueeze::<4>()
                    .expand([b, heads, t, t]);
                let att = softmax(att.mask_fill(mask, f32::NEG_INFINITY), 3);
                att.matmul(v).swap_dims(1, 2).reshape([b, t, c])
            };
            let grads = (y.clone() * w.clone()).sum().backward();
            let g = qkv
                .grad(&grads)
                .unwrap()
                .into_data()
                .try_to_vec::<f32>()
                .unwrap();
            (y.into_data().try_to_vec::<f32>().unwrap(), g)
        };
        let (fy, fg) = run(true);
        let (ry, rg) = run(false);
        let diff = |a: &[f32], b: &[f32]| {
            a.iter()
                .zip(b)
                .map(|(x, y)| (x - y).abs())
                .fold(0.0f32, f32::max)
        };
        assert!(
            diff(&fy, &ry) < 1e-5,
            "[{b},{t},{c}]x{heads}: outputs differ by {}",
            diff(&fy, &ry)
        );
        let scale = rg.iter().fold(1.0f32, |m, v| m.max(v.abs()));
        assert!(
            diff(&fg, &rg) < 1e-5 * scale,
            "[{b},{t},{c}]x{heads}: gradients differ by {} (scale {scale})",
            diff(&fg, &rg)
        );
    }
}

/// `a` equals `b` within `tol` times the largest magnitude in `b`.
fn assert_close(tol: f32, what: &str, a: &[f32], b: &[f32]) {
    assert_eq!(a.len(), b.len(), "{what}: length");
    let scale = b.iter().fold(1.0f32, |m, v| m.max(v.abs()));
    let d = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0f32, f32::max);
    assert!(d <= tol * scale, "{what}: differs by {d} (scale {scale})");
}
