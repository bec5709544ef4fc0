//! Where the Fashion-MNIST CNN's forward time goes on Flex, op by op, at one batch size:
//! `cargo bench -p kiln-serve --bench cnn_ops -- 64`.
use std::time::Instant;

use burn::nn::PaddingConfig2d;
use burn::nn::conv::Conv2dConfig;
use burn::nn::pool::MaxPool2dConfig;
use burn::prelude::{Device, Tensor};
use burn::tensor::activation::relu;

/// The `kiln` binary's allocator, so per-op times match what `kiln serve` sees.
#[global_allocator]
static ALLOCATOR: kiln_alloc::Allocator = kiln_alloc::Allocator;

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
    kiln_alloc::configure();
    let batch: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(64);
    let device = Device::flex();
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
    // Copying a tensor out: the floor under any pass over it on this machine.
    time("into_data [B,32,28,28]", reps, || a.clone().into_data());
    time("kiln pool [B,32,28,28]", reps, || {
        kiln_models::kernels::max_pool2d_inference(a.clone(), 2)
    });
    let a = time("Flex pool [B,32,28,28]", reps, || pool.forward(a.clone()));
    let b = time("conv2 32->64 14x14", reps, || c2.forward(a.clone()));
    let b = time("relu [B,64,14,14]", reps, || relu(b.clone()));
    time("kiln pool [B,64,14,14]", reps, || {
        kiln_models::kernels::max_pool2d_inference(b.clone(), 2)
    });
    let b = time("Flex pool [B,64,14,14]", reps, || pool.forward(b.clone()));
    let f: Tensor<2> = b.flatten(1, 3);
    let h = time("linear 3136->128", reps, || fc.forward(f.clone()));
    let _ = h.into_data();
    // kiln's inference path, as `kiln serve` runs a batch: on a rayon worker.
    let ops = || {
        use kiln_models::ops;
        let a = time("kiln conv1+relu+pool", reps, || {
            ops::conv2d_relu_max_pool2d(&c1, x.clone(), 2)
        });
        let b = time("kiln conv2+relu+pool", reps, || {
            ops::conv2d_relu_max_pool2d(&c2, a.clone(), 2)
        });
        let f: Tensor<2> = b.flatten(1, 3);
        let h = time("kiln linear 3136->128", reps, || {
            ops::linear(&fc, f.clone())
        });
        let _ = h.into_data();
    };
    if batch > 1 {
        kiln_models::ops::in_thread_pool(ops);
    } else {
        ops();
    }
}
