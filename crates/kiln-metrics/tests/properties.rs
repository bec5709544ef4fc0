//! Every metric terminates on any input, NaN and ±inf included: random inputs must give a
//! value or an error, never a hang or a panic.

use kiln_metrics::{
    ClassificationMetrics, MetricsError, RegressionMetrics, log_loss, roc_auc_binary, roc_curve,
    top_k_accuracy,
};
use proptest::prelude::*;

/// Any f32 with NaN, ±inf, ±0 and subnormals well represented.
fn any_score() -> impl Strategy<Value = f32> {
    prop_oneof![
        4 => 0.0f32..1.0,
        1 => Just(f32::NAN),
        1 => Just(f32::INFINITY),
        1 => Just(f32::NEG_INFINITY),
        1 => Just(-0.0f32),
        1 => any::<f32>(),
    ]
}

fn finite(values: &[f32]) -> bool {
    values.iter().all(|v| v.is_finite())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(
        std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(512)
    ))]

    #[test]
    fn roc_curve_terminates(
        cases in prop::collection::vec((any::<bool>(), any_score()), 1..200)
    ) {
        let (positive, scores): (Vec<bool>, Vec<f32>) = cases.into_iter().unzip();
        match roc_curve(&positive, &scores) {
            Ok(Some(curve)) => {
                // One point per distinct score at most, plus the origin.
                prop_assert!(curve.fpr.len() <= scores.len() + 1);
                prop_assert_eq!(curve.fpr.last().copied(), Some(1.0));
                prop_assert_eq!(curve.tpr.last().copied(), Some(1.0));
                let auc = roc_auc_binary(&positive, &scores).unwrap().unwrap();
                prop_assert!((0.0..=1.0).contains(&auc));
            }
            Ok(None) => prop_assert!(positive.iter().all(|&p| p) || positive.iter().all(|&p| !p)),
            Err(MetricsError::NonFinite { index, .. }) => prop_assert!(scores[index].is_nan()),
            Err(e) => prop_assert!(false, "unexpected error {e}"),
        }
    }

    #[test]
    fn classification_terminates(
        k in 2usize..6,
        rows in prop::collection::vec((any::<u8>(), prop::collection::vec(any_score(), 6)), 1..100)
    ) {
        let y: Vec<usize> = rows.iter().map(|(l, _)| *l as usize % k).collect();
        let proba: Vec<f32> = rows.iter().flat_map(|(_, p)| p[..k].to_vec()).collect();
        let result = ClassificationMetrics::compute(&y, &proba, k);
        if finite(&proba) {
            let m = result.unwrap();
            prop_assert!(m.log_loss.is_finite());
            prop_assert!((0.0..=1.0).contains(&m.accuracy));
        } else {
            match result {
                Err(MetricsError::NonFinite { index, .. }) => {
                    prop_assert!(!finite(&proba[index * k..(index + 1) * k]));
                }
                other => prop_assert!(false, "expected NonFinite, got {other:?}"),
            }
            prop_assert!(log_loss(&y, &proba, k).is_err());
            prop_assert!(top_k_accuracy(&y, &proba, k, 1).is_err());
        }
    }

    #[test]
    fn regression_terminates(
        pairs in prop::collection::vec((any_score(), any_score()), 1..100)
    ) {
        let (actual, predicted): (Vec<f32>, Vec<f32>) = pairs.into_iter().unzip();
        let result = RegressionMetrics::compute(&actual, &predicted);
        if finite(&actual) && finite(&predicted) {
            let m = result.unwrap();
            prop_assert!(!m.mse.is_nan() && !m.r2.is_nan());
        } else {
            prop_assert!(matches!(result, Err(MetricsError::NonFinite { .. })), "{result:?}");
        }
    }
}

/// The outside probe's case: one NaN among ordinary scores made `roc_curve` loop forever.
#[test]
fn nan_score_is_an_error_naming_the_sample() {
    let positive = [true, false, true, false];
    let scores = [0.9, f32::NAN, 0.2, 0.4];
    let err = roc_curve(&positive, &scores).unwrap_err();
    assert_eq!(
        err.to_string(),
        "score of sample 1 is NaN, expected a finite number"
    );
}

#[test]
fn infinite_scores_rank_at_the_ends() {
    let positive = [true, false, true, false];
    let scores = [f32::INFINITY, f32::NEG_INFINITY, 0.7, 0.1];
    assert_eq!(roc_auc_binary(&positive, &scores).unwrap(), Some(1.0));
}
