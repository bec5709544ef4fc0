//! Dropout masks: the promised rate, the promised scale, a pure function of (seed, row,
//! element), and the op's gradient is the same mask.

use burn::prelude::{Device, Tensor, TensorData};
use kiln_models::ops::{self, DropoutMask, dropout_scales};

#[test]
fn masks_drop_at_the_given_rate_and_scale_what_they_keep() {
    for prob in [0.1f32, 0.5, 0.9] {
        let mask = DropoutMask { prob, seed: 42 };
        let mut dropped = 0usize;
        let rows = 64;
        let mut out = vec![0.0f32; 1 << 14];
        for row in 0..rows {
            dropout_scales(mask, row, &mut out);
            for &v in &out {
                if v == 0.0 {
                    dropped += 1;
                } else {
                    assert_eq!(v, 1.0 / (1.0 - prob));
                }
            }
        }
        let rate = dropped as f64 / (rows as usize * out.len()) as f64;
        // One million draws: the standard error is below 5e-4.
        assert!(
            (rate - prob as f64).abs() < 3e-3,
            "p = {prob}: dropped {rate}"
        );
    }
    let mut out = vec![0.0f32; 1000];
    dropout_scales(DropoutMask { prob: 0.0, seed: 1 }, 0, &mut out);
    assert!(out.iter().all(|&v| v == 1.0));
}

#[test]
fn a_mask_is_a_pure_function_of_seed_row_and_element() {
    let mask = DropoutMask { prob: 0.3, seed: 7 };
    let (mut long, mut short) = (vec![0.0f32; 300], vec![0.0f32; 37]);
    dropout_scales(mask, 5, &mut long);
    dropout_scales(mask, 5, &mut short);
    assert_eq!(
        &long[..37],
        &short[..],
        "a shorter row is a prefix of the longer one"
    );
    let mut other = vec![0.0f32; 300];
    dropout_scales(mask, 6, &mut other);
    assert_ne!(long, other, "rows draw different masks");
    dropout_scales(DropoutMask { seed: 8, ..mask }, 5, &mut other);
    assert_ne!(long, other, "seeds draw different masks");
}

#[test]
fn dropout_gradient_is_the_forward_mask() {
    let ad = Device::flex().autodiff();
    let drop = burn::nn::DropoutConfig::new(0.25).init();
    let n = 40_000;
    let x = Tensor::<1>::from_data(TensorData::new(vec![1.0f32; n], [n]), &ad).require_grad();
    ad.seed(3);
    let y = ops::dropout(&drop, x.clone());
    let grads = y.clone().sum().backward();
    let y = y.into_data().try_to_vec::<f32>().unwrap();
    let g = x
        .grad(&grads)
        .unwrap()
        .into_data()
        .try_to_vec::<f32>()
        .unwrap();
    assert_eq!(y, g, "d(sum(x * m))/dx must be m");
    let dropped = y.iter().filter(|&&v| v == 0.0).count() as f64 / n as f64;
    assert!((dropped - 0.25).abs() < 0.02, "dropped {dropped}");
    // The same seed draws the same mask; inference applies none.
    ad.seed(3);
    let again = ops::dropout(&drop, x.clone())
        .into_data()
        .try_to_vec::<f32>()
        .unwrap();
    assert_eq!(y, again);
    let device = Device::flex();
    let plain = Tensor::<1>::from_data(TensorData::new(vec![1.0f32; n], [n]), &device);
    let out = ops::dropout(&drop, plain)
        .into_data()
        .try_to_vec::<f32>()
        .unwrap();
    assert!(out.iter().all(|&v| v == 1.0));
}
