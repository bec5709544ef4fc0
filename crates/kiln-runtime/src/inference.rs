//! Inference over encoded rows: batches of model inputs, predictions, raw outputs, and the
//! check that refuses non-finite ones.

use burn::module::Module;
use burn::prelude::{Device, Int, Tensor, TensorData};
use burn::tensor::activation::softmax;
use kiln_config::Task;
use kiln_data::{Encoded, Preprocessor};
use kiln_models::{Inputs, Network};

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
    HostBatch::gather(data, idx).into_inputs(device)
}

/// One batch's inputs gathered in host memory, before they become tensors (a prefetching
/// trainer gathers and augments them on another thread).
#[derive(Debug, Clone)]
pub struct HostBatch {
    /// Rows.
    pub rows: usize,
    /// Dense inputs, `rows * width` values (`None` without dense inputs).
    pub x: Option<Vec<f32>>,
    /// Dense values per row.
    pub width: usize,
    /// Embedding indices, `rows * categories_width`.
    pub categories: Option<Vec<i64>>,
    /// Embedded features per row.
    pub categories_width: usize,
    /// Token ids, `rows * tokens_width`, cut to the batch's longest text (longest window,
    /// every window cut alike, when texts are read in windows).
    pub tokens: Option<Vec<i64>>,
    /// Tokens per row.
    pub tokens_width: usize,
    /// Windows per row of `tokens` (1: the row is one window).
    pub token_windows: usize,
}

impl HostBatch {
    /// Rows `idx` of `data`, in that order.
    pub fn gather(data: &Encoded, idx: &[usize]) -> Self {
        let size = data.shape.size();
        let ncat = data.cardinalities.len();
        let t = data.seq_len;
        let x = (size > 0).then(|| {
            let mut x = Vec::with_capacity(idx.len() * size);
            for &i in idx {
                x.extend_from_slice(&data.x[i * size..(i + 1) * size]);
            }
            x
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
            c
        });
        let windows = data.windows.max(1);
        // At least one column, so an all-empty batch still has a shape.
        let len = match t {
            0 => 0,
            _ if windows > 1 => idx
                .iter()
                .flat_map(|&i| (0..windows).map(move |w| data.window_text_len(i, w)))
                .max()
                .unwrap_or(0)
                .max(1),
            _ => idx
                .iter()
                .map(|&i| data.text_len(i))
                .max()
                .unwrap_or(0)
                .max(1),
        };
        let tokens = (t > 0).then(|| {
            let mut ids = Vec::with_capacity(idx.len() * windows * len);
            let window = data.window_len();
            for &i in idx {
                for w in 0..windows {
                    let start = i * t + w * window;
                    ids.extend(data.tokens[start..start + len].iter().map(|&v| v as i64));
                }
            }
            ids
        });
        HostBatch {
            rows: idx.len(),
            x,
            width: size,
            categories,
            categories_width: ncat,
            tokens,
            tokens_width: windows * len,
            token_windows: windows,
        }
    }

    /// The batch as tensors on `device`.
    pub fn into_inputs(self, device: &Device) -> Inputs {
        let n = self.rows;
        Inputs {
            x: self
                .x
                .map(|x| Tensor::<2>::from_data(TensorData::new(x, [n, self.width]), device)),
            categories: self.categories.map(|c| {
                Tensor::<2, Int>::from_data(TensorData::new(c, [n, self.categories_width]), device)
            }),
            tokens: self.tokens.map(|ids| {
                Tensor::<2, Int>::from_data(TensorData::new(ids, [n, self.tokens_width]), device)
            }),
            token_windows: self.token_windows,
        }
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
        kiln_models::ops::keep_workers_ready();
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
