//! Scoring: predictions of labelled rows against their targets. Inference itself is
//! `kiln_runtime::inference`, shared with serving and export.

use burn::prelude::Device;
use kiln_config::Task;
use kiln_data::{Encoded, Preprocessor, Target};
use kiln_metrics::{ClassificationMetrics, RegressionMetrics};
use kiln_models::Network;
pub use kiln_runtime::inference::{Predictions, batch_inputs, predict};
use serde::{Deserialize, Serialize};

use crate::TrainError;
use crate::grads::GradientSync;

/// Scores of a model on labelled rows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "task", rename_all = "snake_case")]
pub enum Evaluation {
    /// Classification metrics; `loss` is the cross-entropy.
    Classification {
        /// Mean cross-entropy.
        loss: f64,
        /// Metrics.
        metrics: ClassificationMetrics,
    },
    /// Regression metrics; `loss` is the MSE of standardised targets (the training loss).
    Regression {
        /// Standardised MSE.
        loss: f64,
        /// Metrics in target units.
        metrics: RegressionMetrics,
    },
}

/// The metric names [`Evaluation::metric`] answers for a task (`classes`: 2 adds the
/// positive class's `f1`, `precision`, `recall`), i.e. what `trainer.monitor` may name.
pub fn metric_names(task: Task, classes: usize) -> &'static [&'static str] {
    match (task, classes) {
        (Task::Classification, 2) => &[
            "loss",
            "accuracy",
            "f1_macro",
            "roc_auc",
            "f1",
            "precision",
            "recall",
        ],
        (Task::Classification, _) => &["loss", "accuracy", "f1_macro", "roc_auc"],
        (Task::Regression, _) => &["loss", "rmse", "mae", "r2"],
    }
}

impl Evaluation {
    /// The loss.
    pub fn loss(&self) -> f64 {
        match self {
            Evaluation::Classification { loss, .. } | Evaluation::Regression { loss, .. } => *loss,
        }
    }

    /// A named metric (`loss`, `accuracy`, `f1_macro`, `roc_auc`, `rmse`, `mae`, `r2`; for
    /// two classes also `f1`, `precision`, `recall` of class 1, the positive class as in
    /// scikit-learn), if defined for this task.
    pub fn metric(&self, name: &str) -> Option<f64> {
        let positive = match self {
            Evaluation::Classification { metrics, .. } if metrics.per_class.len() == 2 => {
                Some(metrics.per_class[1])
            }
            _ => None,
        };
        match (self, name) {
            (_, "f1") => positive.map(|c| c.f1),
            (_, "precision") => positive.map(|c| c.precision),
            (_, "recall") => positive.map(|c| c.recall),
            (_, "loss") => Some(self.loss()),
            (Evaluation::Classification { metrics, .. }, "accuracy") => Some(metrics.accuracy),
            (Evaluation::Classification { metrics, .. }, "f1_macro") => Some(metrics.f1_macro),
            (Evaluation::Classification { metrics, .. }, "roc_auc") => metrics.roc_auc,
            (Evaluation::Regression { metrics, .. }, "rmse") => Some(metrics.rmse),
            (Evaluation::Regression { metrics, .. }, "mae") => Some(metrics.mae),
            (Evaluation::Regression { metrics, .. }, "r2") => Some(metrics.r2),
            _ => None,
        }
    }

    /// The headline numbers as JSON (`accuracy`, `f1_macro`, `roc_auc` or `rmse`, `mae`, `r2`).
    pub fn summary(&self) -> serde_json::Value {
        match self {
            Evaluation::Classification { loss, metrics } => {
                let mut summary = serde_json::json!({
                    "loss": loss,
                    "accuracy": metrics.accuracy,
                    "f1_macro": metrics.f1_macro,
                    "roc_auc": metrics.roc_auc,
                    "log_loss": metrics.log_loss,
                    "samples": metrics.samples,
                });
                for name in ["f1", "precision", "recall"] {
                    if let Some(v) = self.metric(name) {
                        summary[name] = v.into();
                    }
                }
                summary
            }
            Evaluation::Regression { loss, metrics } => serde_json::json!({
                "loss": loss,
                "rmse": metrics.rmse,
                "mae": metrics.mae,
                "r2": metrics.r2,
                "mse": metrics.mse,
            }),
        }
    }
}

/// Scores `predictions` of labelled rows `data`.
pub fn score(
    data: &Encoded,
    predictions: &Predictions,
    preprocessor: &Preprocessor,
) -> Result<Evaluation, TrainError> {
    score_target(data.y.as_ref(), predictions, preprocessor)
}

/// Scores `predictions` against the encoded target `y` of the same rows.
pub fn score_target(
    y: Option<&Target>,
    predictions: &Predictions,
    preprocessor: &Preprocessor,
) -> Result<Evaluation, TrainError> {
    match (y, preprocessor.task) {
        (Some(Target::Classes(labels)), Task::Classification) => {
            let y: Vec<usize> = labels.iter().map(|&l| l as usize).collect();
            let metrics =
                ClassificationMetrics::compute(&y, &predictions.values, predictions.width)?;
            Ok(Evaluation::Classification {
                loss: metrics.log_loss,
                metrics,
            })
        }
        (Some(Target::Values(standardised)), Task::Regression) => {
            let actual: Vec<f32> = standardised
                .iter()
                .map(|&v| preprocessor.denormalize(v))
                .collect();
            let metrics = RegressionMetrics::compute(&actual, &predictions.values)?;
            let scale = match &preprocessor.target {
                kiln_data::TargetTransform::Regression { std, .. } => *std,
                _ => 1.0,
            };
            Ok(Evaluation::Regression {
                loss: metrics.mse / (scale * scale),
                metrics,
            })
        }
        _ => Err(TrainError::NoTarget {
            purpose: "score against",
        }),
    }
}

/// Predicts and scores in one go.
pub fn evaluate(
    model: &Network,
    data: &Encoded,
    preprocessor: &Preprocessor,
    device: &Device,
) -> Result<Evaluation, TrainError> {
    let predictions = predict(model, data, preprocessor, device);
    score(data, &predictions, preprocessor)
}

/// [`predict`] with the rows split across the processes of `sync`: each predicts its
/// contiguous share and the shares are summed into every process's copy (the others' rows
/// are zeros there, so the sum is exact), giving every process the single-process result.
pub fn predict_sharded(
    model: &Network,
    data: &Encoded,
    preprocessor: &Preprocessor,
    device: &Device,
    sync: &mut dyn GradientSync,
) -> Result<Predictions, TrainError> {
    let world = sync.world_size();
    if world == 1 {
        return Ok(predict(model, data, preprocessor, device));
    }
    let range = kiln_dist::shard(data.rows, sync.rank(), world);
    let width = preprocessor.num_outputs();
    let mut values = vec![0f32; data.rows * width];
    if !range.is_empty() {
        let idx: Vec<usize> = range.clone().collect();
        let local = predict(model, &data.select(&idx), preprocessor, device);
        values[range.start * width..range.end * width].copy_from_slice(&local.values);
    }
    Ok(Predictions {
        rows: data.rows,
        width,
        values: sync.sum_f32(values)?,
    })
}

/// [`evaluate`] with the rows split across the processes of `sync` ([`predict_sharded`]).
pub fn evaluate_sharded(
    model: &Network,
    data: &Encoded,
    preprocessor: &Preprocessor,
    device: &Device,
    sync: &mut dyn GradientSync,
) -> Result<Evaluation, TrainError> {
    let predictions = predict_sharded(model, data, preprocessor, device, sync)?;
    score(data, &predictions, preprocessor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_listed_metric_name_is_answered() {
        for classes in [2usize, 3] {
            let y: Vec<usize> = (0..6).map(|i| i % classes).collect();
            let probs: Vec<f32> = (0..6 * classes)
                .map(|i| if i % (classes + 1) == 0 { 0.8 } else { 0.2 })
                .collect();
            let metrics = ClassificationMetrics::compute(&y, &probs, classes).unwrap();
            let e = Evaluation::Classification { loss: 0.5, metrics };
            for name in metric_names(Task::Classification, classes) {
                assert!(e.metric(name).is_some(), "{name} with {classes} classes");
            }
        }
        let metrics = RegressionMetrics::compute(&[1.0, 2.0, 3.0], &[1.1, 2.2, 2.9]).unwrap();
        let e = Evaluation::Regression { loss: 0.1, metrics };
        for name in metric_names(Task::Regression, 0) {
            assert!(e.metric(name).is_some(), "{name}");
        }
    }
}
