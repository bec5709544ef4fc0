//! Where the Fashion-MNIST CNN's forward time goes on Flex, op by op, at one batch size:
//! `cargo bench -p kiln-serve --bench cnn_ops -- 64`.
use std::time::Instant;

use burn::nn::PaddingConfig2d;
use burn::nn::conv::Conv2dConfig;
use burn::nn::pool::MaxPool2dConfig;
use burn::prelude::{Device, Tensor};
use burn::tensor::activation::relu;

fn time<T>(label: &str, reps: usize, mut f: impl FnMut() -> T) -> T {
    let mut out = f();
    let t = Instant::now();
    for _ in 0..reps {
        out = f();
    }
    println!(
        "RESULT {label:<28} {:8.3} ms",
        t.elapsed().as_secs_f64() * 1000.0 / reps as f64
    );
    out
}

fn main() {
    let batch: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(64);
    let device = Device::default();
    let reps = 20;
    let conv = |i, o| {
        Conv2dConfig::new([i, o], [3, 3])
            .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
            .init(&device)
    };
    let (c1, c2) = (conv(1, 32), conv(32, 64));
    let pool = MaxPool2dConfig::new([2, 2]).with_strides([2, 2]).init();
    let fc = burn::nn::LinearConfig::new(3136, 128).init(&device);
    let x = Tensor::<4>::random(
        [batch, 1, 28, 28],
        burn::tensor::Distribution::Default,
        &device,
    );
    println!("batch {batch}");
    let a = time("conv1 1->32 28x28", reps, || c1.forward(x.clone()));
    let a = time("relu [B,32,28,28]", reps, || relu(a.clone()));
    let reference = pool.forward(a.clone());
    let fast = time("reshape-max 2 [B,32,28,28]", reps, || {
        let [b, c, h, w] = a.dims();
        a.clone()
            .reshape([b, c, h / 2, 2, w / 2, 2])
            .max_dim(5)
            .max_dim(3)
            .reshape([b, c, h / 2, w / 2])
    });
    time("into_data NCHW view", reps, || a.clone().into_data());
    time("into_data NHWC permuted", reps, || {
        a.clone().permute([0, 2, 3, 1]).into_data()
    });
    let ours = time("kiln max_pool2d_inference", reps, || {
        kiln::models::kernels::max_pool2d_inference(a.clone(), 2)
    });
    println!(
        "kiln vs MaxPool2d equal: {}",
        ours.into_data() == reference.clone().into_data()
    );
    let strided = time("strided max_pair 2 [B,32,..]", reps, || {
        let [_, _, h, w] = a.dims();
        let (h, w) = (h / 2 * 2, w / 2 * 2);
        let at = |i: usize, j: usize| a.clone().slice(burn::tensor::s![.., .., i..h;2, j..w;2]);
        at(0, 0)
            .max_pair(at(0, 1))
            .max_pair(at(1, 0).max_pair(at(1, 1)))
    });
    let diff2 = (strided - reference.clone())
        .abs()
        .max()
        .into_scalar::<f32>();
    println!("strided vs MaxPool2d max |diff| = {diff2}");
    let diff = (fast - reference.clone()).abs().max().into_scalar::<f32>();
    println!("reshape-max vs MaxPool2d max |diff| = {diff}");
    let a = time("maxpool 2 [B,32,28,28]", reps, || pool.forward(a.clone()));
    let b = time("conv2 32->64 14x14", reps, || c2.forward(a.clone()));
    let b = time("relu [B,64,14,14]", reps, || relu(b.clone()));
    time("kiln pool [B,64,14,14]", reps, || {
        kiln::models::kernels::max_pool2d_inference(b.clone(), 2)
    });
    let b = time("maxpool 2 [B,64,14,14]", reps, || pool.forward(b.clone()));
    let f: Tensor<2> = b.flatten(1, 3);
    let h = time("linear 3136->128", reps, || fc.forward(f.clone()));
    let _ = h.into_data();
}
