//! Mixed precision's pieces: float16's loss scaler (PyTorch `GradScaler`'s rules) and which
//! precisions a device can train in.

use burn::prelude::{Device, Tensor, TensorData};
use kiln_config::Precision;
use kiln_train::ParamGrads;
use kiln_train::precision::{LossScaler, check_precision, compute_dtype};

fn grads(values: &[f32]) -> ParamGrads {
    let mut g = ParamGrads::default();
    g.grads.insert(
        "w".into(),
        Tensor::from_data(
            TensorData::new(values.to_vec(), [values.len()]),
            &Device::flex(),
        ),
    );
    g
}

fn values(g: &ParamGrads) -> Vec<f32> {
    g.grads["w"].to_data().try_to_vec::<f32>().unwrap()
}

#[test]
fn only_f16_scales_its_loss() {
    assert!(LossScaler::for_precision(Precision::F32, 8.0).is_none());
    assert!(LossScaler::for_precision(Precision::Bf16Mixed, 8.0).is_none());
    let s = LossScaler::for_precision(Precision::F16Mixed, LossScaler::INITIAL_SCALE).unwrap();
    assert_eq!(s.scale(), 65536.0);
    assert_eq!(compute_dtype(Precision::F32), None);
}

#[test]
fn a_good_step_is_unscaled_and_taken() {
    let mut s = LossScaler::for_precision(Precision::F16Mixed, 1024.0).unwrap();
    let mut g = grads(&[1024.0, -512.0, 3.0]);
    assert!(s.unscale(&mut g).is_some());
    assert_eq!(values(&g), [1.0, -0.5, 3.0 / 1024.0]);
    assert_eq!((s.scale(), s.skipped_steps()), (1024.0, 0));
}

#[test]
fn an_overflowed_step_is_skipped_and_halves_the_scale() {
    for bad in [f32::INFINITY, f32::NEG_INFINITY, f32::NAN] {
        let mut s = LossScaler::for_precision(Precision::F16Mixed, 1024.0).unwrap();
        assert!(
            s.unscale(&mut grads(&[1.0, bad, 2.0])).is_none(),
            "{bad} overflowed"
        );
        assert_eq!((s.scale(), s.skipped_steps()), (512.0, 1));
        assert!(
            s.unscale(&mut grads(&[1.0])).is_some(),
            "the next finite step is taken"
        );
    }
}

#[test]
fn the_scale_doubles_after_2000_good_steps_in_a_row() {
    let mut s = LossScaler::for_precision(Precision::F16Mixed, 4.0).unwrap();
    for _ in 0..LossScaler::GROWTH_INTERVAL - 1 {
        assert!(s.unscale(&mut grads(&[1.0])).is_some());
    }
    assert_eq!(s.scale(), 4.0);
    // An overflow resets the count.
    assert!(s.unscale(&mut grads(&[f32::INFINITY])).is_none());
    for _ in 0..LossScaler::GROWTH_INTERVAL - 1 {
        assert!(s.unscale(&mut grads(&[1.0])).is_some());
    }
    assert_eq!(s.scale(), 2.0);
    assert!(s.unscale(&mut grads(&[1.0])).is_some());
    assert_eq!(s.scale(), 4.0);
}

#[test]
fn the_cpu_trains_in_every_precision() {
    for p in [Precision::F32, Precision::Bf16Mixed, Precision::F16Mixed] {
        check_precision(p, &Device::flex(), "cpu").unwrap();
    }
}
