//! Inference over encoded rows, and scoring.

use burn::module::Module;
use burn::prelude::{Device, Int, Tensor, TensorData};
use burn::tensor::activation::softmax;
use kiln_config::Task;
use kiln_data::{Encoded, Preprocessor, Target};
use kiln_metrics::{ClassificationMetrics, RegressionMetrics};
use kiln_models::{Inputs, Network};
use serde::{Deserialize, Serialize};

use crate::TrainError;

/// Rows per forward pass at inference.
const EVAL_BATCH: usize = 1024;
/// Tokens per forward pass at inference over text: bounds the `[rows, heads, T, T]`
/// attention scores (1 024 rows of 256 tokens would need 1 GiB per block).
const EVAL_TOKENS: usize = 32_768;

/// Model outputs for a set of rows.
#[derive(Debug, Clone)]
pub struct Predictions {
    /// Rows.
    pub rows: usize,
    /// Values per row: class probabilities, or one regression value in target units.
    pub width: usize,
    /// `rows * width` values.
    pub values: Vec<f32>,
}

/// Tensors for rows `idx` of `data` on `device`. Token rows are cut to the longest text of
/// the batch, so short texts do not pay for the padding of the longest possible one.
pub fn batch_inputs(data: &Encoded, idx: &[usize], device: &Device) -> Inputs {
    let size = data.shape.size();
    let ncat = data.cardinalities.len();
    let t = data.seq_len;
    let x = (size > 0).then(|| {
        let mut x = Vec::with_capacity(idx.len() * size);
        for &i in idx {
            x.extend_from_slice(&data.x[i * size..(i + 1) * size]);
        }
        Tensor::<2>::from_data(TensorData::new(x, [idx.len(), size]), device)
    });
    let categories = (ncat > 0).then(|| {
        let mut c = Vec::with_capacity(idx.len() * ncat);
        for &i in idx {
            c.extend(
                data.categories[i * ncat..(i + 1) * ncat]
                    .iter()
                    .map(|&v| v as i64),
            );
        }
        Tensor::<2, Int>::from_data(TensorData::new(c, [idx.len(), ncat]), device)
    });
    let tokens = (t > 0).then(|| {
        // At least one column, so an all-empty batch still has a shape.
        let len = idx
            .iter()
            .map(|&i| data.text_len(i))
            .max()
            .unwrap_or(0)
            .max(1);
        let mut ids = Vec::with_capacity(idx.len() * len);
        for &i in idx {
            ids.extend(data.tokens[i * t..i * t + len].iter().map(|&v| v as i64));
        }
        Tensor::<2, Int>::from_data(TensorData::new(ids, [idx.len(), len]), device)
    });
    Inputs {
        x,
        categories,
        tokens,
    }
}

/// Runs `model` (in inference mode) over all rows of `data`.
pub fn predict(
    model: &Network,
    data: &Encoded,
    preprocessor: &Preprocessor,
    device: &Device,
) -> Predictions {
    let width = preprocessor.num_outputs();
    let values = forward_rows(model, data, device, |out| match preprocessor.task {
        Task::Classification => softmax(out, 1),
        Task::Regression => out,
    });
    let values = match preprocessor.task {
        Task::Classification => values,
        Task::Regression => values
            .into_iter()
            .map(|y| preprocessor.denormalize(y))
            .collect(),
    };
    Predictions {
        rows: data.rows,
        width,
        values,
    }
}

/// The network's raw outputs (logits, or standardised regression values) for all rows of
/// `data`, row-major, in inference mode.
pub fn raw_outputs(model: &Network, data: &Encoded, device: &Device) -> Vec<f32> {
    forward_rows(model, data, device, |out| out)
}

fn forward_rows(
    model: &Network,
    data: &Encoded,
    device: &Device,
    finish: impl Fn(Tensor<2>) -> Tensor<2>,
) -> Vec<f32> {
    let model = model.valid();
    let device = device.clone().without_autodiff();
    let mut values = Vec::new();
    let all: Vec<usize> = (0..data.rows).collect();
    let rows_per_pass = match data.seq_len {
        0 => EVAL_BATCH,
        t => (EVAL_TOKENS / t).clamp(1, EVAL_BATCH),
    };
    for chunk in all.chunks(rows_per_pass) {
        let out = finish(model.forward(batch_inputs(data, chunk, &device)));
        values.extend(
            out.into_data()
                .convert::<f32>()
                .try_to_vec::<f32>()
                .expect("f32 output"),
        );
    }
    values
}

/// A row whose model output is NaN or infinite: its inputs were finite but far enough from
/// the training data that the network overflowed. Callers refuse the row with this.
#[derive(Debug, Clone, PartialEq)]
pub struct NonFiniteOutput {
    /// Row of the encoded data (`Encoded::source_rows` maps it to the input).
    pub row: usize,
    /// The first non-finite output value of the row.
    pub value: f32,
    /// The row's dense input furthest from the training data: its feature and normalised
    /// value (standard deviations from the training mean under z-score).
    pub furthest_input: Option<(String, f32)>,
}

impl std::fmt::Display for NonFiniteOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the model's output is {}", self.value)?;
        if let Some((feature, x)) = &self.furthest_input {
            write!(
                f,
                "; the input furthest from the training data is \"{feature}\" at {x:e} in normalised units"
            )?;
        }
        write!(
            f,
            " (inputs far outside the training range overflow the network)"
        )
    }
}

/// The first row of `values` (`width` outputs per row of `data`) that is not all finite.
pub fn non_finite_output(
    values: &[f32],
    width: usize,
    data: &Encoded,
    preprocessor: &Preprocessor,
) -> Option<NonFiniteOutput> {
    let i = values.iter().position(|v| !v.is_finite())?;
    let row = i / width.max(1);
    let size = data.shape.size();
    let furthest_input = data
        .x
        .get(row * size..(row + 1) * size)
        .and_then(|x| {
            x.iter()
                .enumerate()
                .max_by(|a, b| a.1.abs().total_cmp(&b.1.abs()))
        })
        .map(|(slot, &x)| {
            let names = preprocessor.dense_slot_names();
            (names.get(slot).cloned().unwrap_or_default(), x)
        });
    Some(NonFiniteOutput {
        row,
        value: values[i],
        furthest_input,
    })
}

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
    match (&data.y, preprocessor.task) {
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
        _ => Err(TrainError::Invalid(
            "the data has no target column to score against".into(),
        )),
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
