//! The text encoder: padding is invisible, every real token counts, empty texts stay finite.

mod common;

use burn::prelude::{Device, Int, Tensor, TensorData};
use common::max_diff;
use kiln_config::Pooling;
use kiln_models::{TextEncoder, TextEncoderSpec};

fn encoder(device: &Device) -> TextEncoder {
    encoder_with(Pooling::Mean, device)
}

fn encoder_with(pooling: Pooling, device: &Device) -> TextEncoder {
    device.seed(3);
    TextEncoder::new(
        &TextEncoderSpec {
            vocab_size: 50,
            max_tokens: 16,
            layers: 2,
            heads: 4,
            embd: 32,
            dropout: 0.0,
            bias: true,
            pooling,
            causal: false,
            freeze: Default::default(),
        },
        device,
    )
}

fn pooled(enc: &TextEncoder, rows: &[Vec<i64>], device: &Device) -> Vec<Vec<f32>> {
    let t = rows[0].len();
    let flat: Vec<i64> = rows.iter().flatten().copied().collect();
    let ids = Tensor::<2, Int>::from_data(TensorData::new(flat, [rows.len(), t]), device);
    let out = enc.forward(ids);
    let [b, e] = out.dims();
    assert_eq!(b, rows.len());
    let v: Vec<f32> = out.into_data().convert::<f32>().try_to_vec().unwrap();
    v.chunks(e).map(<[f32]>::to_vec).collect()
}

#[test]
fn padding_does_not_change_the_pooled_output() {
    let device = Device::flex();
    let enc = encoder(&device);
    let short = pooled(&enc, &[vec![5, 9, 3]], &device);
    let padded = pooled(&enc, &[vec![5, 9, 3, 0, 0, 0, 0, 0]], &device);
    // The same text next to a longer one in a batch (padded to its length).
    let batched = pooled(
        &enc,
        &[vec![5, 9, 3, 0, 0, 0], vec![7, 7, 2, 11, 4, 8]],
        &device,
    );
    assert!(max_diff(&short[0], &padded[0]) < 1e-5);
    assert!(max_diff(&short[0], &batched[0]) < 1e-5);
}

#[test]
fn every_real_token_and_its_position_matter() {
    let device = Device::flex();
    let enc = encoder(&device);
    let out = pooled(
        &enc,
        &[vec![5, 9, 3, 4], vec![5, 9, 3, 6], vec![4, 9, 3, 5]],
        &device,
    );
    assert!(max_diff(&out[0], &out[1]) > 1e-3, "last token ignored");
    assert!(max_diff(&out[0], &out[2]) > 1e-3, "positions ignored");
}

#[test]
fn an_empty_text_pools_to_zeros() {
    let device = Device::flex();
    for pooling in [Pooling::Mean, Pooling::Max, Pooling::MeanMax] {
        let enc = encoder_with(pooling, &device);
        let out = pooled(&enc, &[vec![0, 0, 0], vec![1, 2, 3]], &device);
        assert!(
            out[0].iter().all(|&v| v == 0.0),
            "{pooling:?}: {:?}",
            out[0]
        );
        assert!(out[1].iter().all(|v| v.is_finite()));
    }
}

#[test]
fn max_and_concat_pooling_ignore_padding_and_have_their_widths() {
    let device = Device::flex();
    for (pooling, width) in [(Pooling::Max, 32), (Pooling::MeanMax, 64)] {
        let enc = encoder_with(pooling, &device);
        let out = pooled(&enc, &[vec![5, 9, 3, 0, 0], vec![5, 9, 3, 8, 8]], &device);
        assert_eq!(out[0].len(), width);
        let short = pooled(&enc, &[vec![5, 9, 3]], &device);
        assert!(max_diff(&short[0], &out[0]) < 1e-5, "{pooling:?}");
        assert!(max_diff(&out[0], &out[1]) > 1e-3, "{pooling:?}");
    }
}
