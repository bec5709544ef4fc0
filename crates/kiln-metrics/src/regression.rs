use serde::{Deserialize, Serialize};

use crate::{MetricsError, check_finite};

/// Regression metrics, as scikit-learn's `mean_squared_error`, `mean_absolute_error` and
/// `r2_score`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RegressionMetrics {
    /// Mean squared error.
    pub mse: f64,
    /// Root mean squared error.
    pub rmse: f64,
    /// Mean absolute error.
    pub mae: f64,
    /// Coefficient of determination (1 - SS_res / SS_tot). 1.0 for a perfect fit; when the
    /// target is constant, 1.0 for a perfect fit and 0.0 otherwise, as scikit-learn.
    pub r2: f64,
}

impl RegressionMetrics {
    /// Computes the metrics of `predicted` against `actual`.
    pub fn compute(actual: &[f32], predicted: &[f32]) -> Result<Self, MetricsError> {
        if actual.is_empty() {
            return Err(MetricsError::Empty);
        }
        if actual.len() != predicted.len() {
            return Err(MetricsError::LengthMismatch {
                what: "predictions",
                got: predicted.len(),
                expected: actual.len(),
            });
        }
        check_finite("target", actual, 1)?;
        check_finite("prediction", predicted, 1)?;
        let n = actual.len() as f64;
        let mean = actual.iter().map(|&v| v as f64).sum::<f64>() / n;
        let (mut ss_res, mut ss_tot, mut abs) = (0.0, 0.0, 0.0);
        for (&a, &p) in actual.iter().zip(predicted) {
            let (a, p) = (a as f64, p as f64);
            ss_res += (a - p) * (a - p);
            ss_tot += (a - mean) * (a - mean);
            abs += (a - p).abs();
        }
        let mse = ss_res / n;
        let r2 = if ss_tot == 0.0 {
            if ss_res == 0.0 { 1.0 } else { 0.0 }
        } else {
            1.0 - ss_res / ss_tot
        };
        Ok(Self {
            mse,
            rmse: mse.sqrt(),
            mae: abs / n,
            r2,
        })
    }
}
