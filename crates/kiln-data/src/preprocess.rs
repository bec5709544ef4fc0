//! The fitted preprocessing state and the transform from raw rows to model inputs.

use std::collections::{BTreeMap, HashMap};

use kiln_config::{FeatureType, MissingStrategy, Task};
use kiln_text::TextTokenizer;
use serde::{Deserialize, Serialize};

use kiln_spec::InputShape;

use crate::fit::{FitLimits, FitPass};
use crate::infer::{Schema, not_a_number, parse_number};
use crate::table::{Column, Table};
use crate::{DataError, Result};

/// A fitted transform of one input column.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum FeatureTransform {
    /// `(value - shift) / scale`, missing values filled with `fill`.
    Numeric {
        /// Column name.
        name: String,
        /// Fill for missing values (training mean/median/mode or the constant).
        fill: f64,
        /// Drop rows with a missing value (training only; filled at predict time).
        drop_missing: bool,
        /// Subtracted first.
        shift: f64,
        /// Then divided by.
        scale: f64,
    },
    /// One-hot or embedding index over the training categories.
    Categorical {
        /// Column name.
        name: String,
        /// Known categories, most frequent first.
        categories: Vec<String>,
        /// Fill for missing values.
        fill: Option<String>,
        /// Drop rows with a missing value (training only).
        drop_missing: bool,
        /// Embedding width, or `None` for one-hot.
        embedding_dim: Option<usize>,
    },
    /// Two values mapped to 0 and 1.
    Binary {
        /// Column name.
        name: String,
        /// The value mapped to 0 and the value mapped to 1.
        values: [String; 2],
        /// Fill for missing values.
        fill: Option<String>,
        /// Drop rows with a missing value (training only).
        drop_missing: bool,
    },
    /// Pixels scaled to [0, 1], then standardised per channel with the training mean and std.
    Image {
        /// Column name.
        name: String,
        /// Colour channels (1 or 3; runs before colour images have none recorded: 1).
        #[serde(default = "one_channel")]
        channels: usize,
        /// Height.
        height: usize,
        /// Width.
        width: usize,
        /// Training pixel mean of each channel (after /255); a single number in older runs.
        #[serde(deserialize_with = "per_channel")]
        mean: Vec<f32>,
        /// Training pixel std of each channel (after /255).
        #[serde(deserialize_with = "per_channel")]
        std: Vec<f32>,
    },
    /// Text as token ids: the tokenizer's ids + 1 (0 pads), at most `max_tokens` per row.
    Text {
        /// Column name.
        name: String,
        /// The tokenizer fitted on the training rows (`tokenizer.json` text).
        tokenizer: String,
        /// Token table size of the model: the tokenizer's vocabulary + 1 for padding.
        vocab_size: usize,
        /// Longest sequence kept.
        max_tokens: usize,
        /// How many of the `max_tokens` kept of a longer text come from its start (the rest
        /// come from its end); absent in older runs, which kept the start only.
        #[serde(default)]
        head_tokens: Option<usize>,
        /// Drop rows with missing text (training only); otherwise missing text is empty.
        drop_missing: bool,
        /// Special token ids around every text (a pretrained model's `[CLS]` and `[SEP]`),
        /// counted in `max_tokens`.
        #[serde(default)]
        special_tokens: Option<SpecialTokens>,
        /// Windows of `max_tokens` a text is read in, each with the special tokens around
        /// it; absent in older runs (one window).
        #[serde(default = "one_window")]
        windows: usize,
        /// Tokens each window repeats from the end of the window before it.
        #[serde(default)]
        window_overlap: usize,
    },
}

/// The token ids a pretrained model's tokenizer puts before and after each text.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SpecialTokens {
    /// Before the text (`[CLS]`).
    pub before: Vec<u32>,
    /// After the text (`[SEP]`).
    pub after: Vec<u32>,
}

impl FeatureTransform {
    /// The column this transform reads.
    pub fn name(&self) -> &str {
        match self {
            FeatureTransform::Numeric { name, .. }
            | FeatureTransform::Categorical { name, .. }
            | FeatureTransform::Binary { name, .. }
            | FeatureTransform::Image { name, .. }
            | FeatureTransform::Text { name, .. } => name,
        }
    }

    fn dense_width(&self) -> usize {
        match self {
            FeatureTransform::Numeric { .. } | FeatureTransform::Binary { .. } => 1,
            FeatureTransform::Categorical {
                categories,
                embedding_dim: None,
                ..
            } => categories.len(),
            FeatureTransform::Categorical { .. } | FeatureTransform::Text { .. } => 0,
            FeatureTransform::Image {
                channels,
                height,
                width,
                ..
            } => channels * height * width,
        }
    }
}

fn one_channel() -> usize {
    1
}

fn one_window() -> usize {
    1
}

/// Text tokens (special tokens not counted) that `windows` windows of `max_tokens` hold,
/// each window with `specials` special tokens and repeating `overlap` tokens of the one
/// before; `None` when a window has no room beyond its overlap.
pub fn window_capacity(
    max_tokens: usize,
    specials: usize,
    windows: usize,
    overlap: usize,
) -> Option<usize> {
    let room = max_tokens.checked_sub(specials)?;
    let step = room.checked_sub(overlap).filter(|&s| s > 0)?;
    step.checked_mul(windows.max(1) - 1)?.checked_add(room)
}

/// A per-channel statistic: a list, or the one number a grey image's run recorded.
fn per_channel<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Vec<f32>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(f32),
        Many(Vec<f32>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(v) => vec![v],
        OneOrMany::Many(v) => v,
    })
}

/// How one value of the dense model input is made from its raw value: a missing value (NaN)
/// becomes `fill`, then `(value - shift) / scale`. Raw values are the number of a numeric
/// column, 0 or 1 for a binary or one-hot slot, 0-255 for a pixel.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct DenseSlot {
    /// Replaces a missing value.
    pub fill: f64,
    /// Subtracted.
    pub shift: f64,
    /// Then divided by.
    pub scale: f64,
}

impl DenseSlot {
    /// A slot used as is (one-hot); missing counts as 0.
    pub const IDENTITY: DenseSlot = DenseSlot {
        fill: 0.0,
        shift: 0.0,
        scale: 1.0,
    };
}

/// The fitted target transform.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum TargetTransform {
    /// Class names; the label of class `i` is `classes[i]`.
    Classes {
        /// Column name.
        name: String,
        /// Class names in label order.
        classes: Vec<String>,
    },
    /// Standardised real target: the model predicts `(y - mean) / std`.
    Regression {
        /// Column name.
        name: String,
        /// Training mean.
        mean: f64,
        /// Training std.
        std: f64,
    },
}

/// Encoded targets.
#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    /// Class labels.
    Classes(Vec<u32>),
    /// Standardised regression values.
    Values(Vec<f32>),
}

impl Target {
    /// Appends `other`'s rows (a later chunk of the same data); targets of another kind
    /// (classes against values) are an error.
    pub fn extend(&mut self, other: Target) -> Result<()> {
        match (self, other) {
            (Target::Classes(a), Target::Classes(b)) => a.extend(b),
            (Target::Values(a), Target::Values(b)) => a.extend(b),
            _ => {
                return Err(DataError::Invalid(
                    "a chunk's target is of another kind than the first chunk's".into(),
                ));
            }
        }
        Ok(())
    }

    /// Rows `idx` of the target.
    pub fn select(&self, idx: &[usize]) -> Target {
        match self {
            Target::Classes(v) => Target::Classes(idx.iter().map(|&i| v[i]).collect()),
            Target::Values(v) => Target::Values(idx.iter().map(|&i| v[i]).collect()),
        }
    }
}

/// A model input of one image column (see [`Preprocessor::image_input`]).
#[derive(Debug, Clone, Copy)]
pub struct ImageInput<'a> {
    /// Colour channels (1 or 3).
    pub channels: usize,
    /// Height.
    pub height: usize,
    /// Width.
    pub width: usize,
    /// Training pixel mean of each channel (after /255).
    pub mean: &'a [f32],
    /// Training pixel std of each channel (after /255).
    pub std: &'a [f32],
}

/// Rows turned into model inputs.
#[derive(Debug, Clone)]
pub struct Encoded {
    /// Dense inputs, `rows * shape.size()` values.
    pub x: Vec<f32>,
    /// Number of rows.
    pub rows: usize,
    /// Shape of one row of `x`.
    pub shape: InputShape,
    /// Embedding indices, `rows * cardinalities.len()` values (0 = unknown or missing).
    pub categories: Vec<u32>,
    /// Token ids of the text feature, `rows * seq_len` values, 0-padded at the end.
    pub tokens: Vec<u32>,
    /// Tokens per row of `tokens`, all windows (0 without a text feature).
    pub seq_len: usize,
    /// Windows per row of `tokens`, `seq_len / windows` tokens each, each 0-padded at its
    /// end (1 when texts are read in one window).
    pub windows: usize,
    /// Texts cut to `seq_len` tokens.
    pub texts_truncated: usize,
    /// Table size of each embedded feature (known categories + 1).
    pub cardinalities: Vec<usize>,
    /// Targets, when the target column is present.
    pub y: Option<Target>,
    /// Id column values, when configured.
    pub ids: Option<Vec<String>>,
    /// Which input rows these are (rows dropped for missing values are absent).
    pub source_rows: Vec<usize>,
    /// Unknown categories seen, by column.
    pub unknown_categories: BTreeMap<String, usize>,
    /// Missing values filled.
    pub missing_filled: usize,
    /// Rows dropped for a missing value.
    pub missing_dropped: usize,
    /// Rows dropped for a missing target.
    pub missing_target_dropped: usize,
}

impl Encoded {
    /// Tokens (before padding) of row `i`'s text: padding is only at the end, so the
    /// position after the last real token. 0 without a text feature.
    pub fn text_len(&self, i: usize) -> usize {
        let t = self.seq_len;
        self.tokens[i * t..(i + 1) * t]
            .iter()
            .rposition(|&v| v != 0)
            .map_or(0, |p| p + 1)
    }

    /// Tokens per window of `tokens`.
    pub fn window_len(&self) -> usize {
        self.seq_len / self.windows.max(1)
    }

    /// Tokens (before padding) in window `w` of row `i`.
    pub fn window_text_len(&self, i: usize, w: usize) -> usize {
        let t = self.window_len();
        let start = i * self.seq_len + w * t;
        self.tokens[start..start + t]
            .iter()
            .rposition(|&v| v != 0)
            .map_or(0, |p| p + 1)
    }

    /// [`text_len`](Self::text_len) of every row; empty without a text feature.
    pub fn text_lengths(&self) -> Vec<usize> {
        if self.seq_len == 0 {
            return Vec::new();
        }
        (0..self.rows).map(|i| self.text_len(i)).collect()
    }

    /// Appends `other`'s rows (encoded by the same preprocessor), its `source_rows` moved on
    /// by `row_offset`, and adds up the counts.
    pub fn append(&mut self, other: Encoded, row_offset: usize) -> Result<()> {
        if other.shape != self.shape
            || other.seq_len != self.seq_len
            || other.windows != self.windows
            || other.cardinalities != self.cardinalities
        {
            return Err(DataError::Invalid(
                "rows encoded by another preprocessor cannot be appended".into(),
            ));
        }
        match (&mut self.y, other.y) {
            (Some(a), Some(b)) => a.extend(b)?,
            (None, None) => {}
            _ => {
                return Err(DataError::Invalid(
                    "rows with a target cannot be appended to rows without one".into(),
                ));
            }
        }
        match (&mut self.ids, other.ids) {
            (Some(a), Some(b)) => a.extend(b),
            (a, _) => *a = None,
        }
        self.x.extend_from_slice(&other.x);
        self.categories.extend_from_slice(&other.categories);
        self.tokens.extend_from_slice(&other.tokens);
        self.rows += other.rows;
        self.source_rows
            .extend(other.source_rows.iter().map(|r| r + row_offset));
        for (k, v) in other.unknown_categories {
            *self.unknown_categories.entry(k).or_default() += v;
        }
        self.texts_truncated += other.texts_truncated;
        self.missing_filled += other.missing_filled;
        self.missing_dropped += other.missing_dropped;
        self.missing_target_dropped += other.missing_target_dropped;
        Ok(())
    }

    /// Room for `rows` more rows, so appending them moves nothing.
    pub fn reserve(&mut self, rows: usize) {
        self.x.reserve(rows * self.shape.size());
        self.categories.reserve(rows * self.cardinalities.len());
        self.tokens.reserve(rows * self.seq_len);
        self.source_rows.reserve(rows);
        match &mut self.y {
            Some(Target::Classes(v)) => v.reserve(rows),
            Some(Target::Values(v)) => v.reserve(rows),
            None => {}
        }
    }

    /// Puts the rows in an order drawn from `rng` (Fisher-Yates), in place.
    pub fn shuffle_rows(&mut self, rng: &mut kiln_rng::SplitMix64) {
        fn swap_rows<T>(values: &mut [T], width: usize, i: usize, j: usize) {
            if width > 0 {
                let (low, high) = values.split_at_mut(i * width);
                low[j * width..(j + 1) * width].swap_with_slice(&mut high[..width]);
            }
        }
        let (size, ncat, t) = (self.shape.size(), self.cardinalities.len(), self.seq_len);
        for i in (1..self.rows).rev() {
            let j = rng.below(i + 1);
            if j == i {
                continue;
            }
            swap_rows(&mut self.x, size, i, j);
            swap_rows(&mut self.categories, ncat, i, j);
            swap_rows(&mut self.tokens, t, i, j);
            self.source_rows.swap(i, j);
            match &mut self.y {
                Some(Target::Classes(v)) => v.swap(i, j),
                Some(Target::Values(v)) => v.swap(i, j),
                None => {}
            }
            if let Some(ids) = &mut self.ids {
                ids.swap(i, j);
            }
        }
    }

    /// The rows `idx` (positions in this batch).
    pub fn select(&self, idx: &[usize]) -> Encoded {
        let size = self.shape.size();
        let ncat = self.cardinalities.len();
        let t = self.seq_len;
        let mut x = Vec::with_capacity(idx.len() * size);
        let mut categories = Vec::with_capacity(idx.len() * ncat);
        let mut tokens = Vec::with_capacity(idx.len() * t);
        for &i in idx {
            x.extend_from_slice(&self.x[i * size..(i + 1) * size]);
            categories.extend_from_slice(&self.categories[i * ncat..(i + 1) * ncat]);
            tokens.extend_from_slice(&self.tokens[i * t..(i + 1) * t]);
        }
        Encoded {
            x,
            rows: idx.len(),
            shape: self.shape,
            categories,
            tokens,
            seq_len: t,
            windows: self.windows,
            texts_truncated: self.texts_truncated,
            cardinalities: self.cardinalities.clone(),
            y: self.y.as_ref().map(|y| y.select(idx)),
            ids: self
                .ids
                .as_ref()
                .map(|ids| idx.iter().map(|&i| ids[i].clone()).collect()),
            source_rows: idx.iter().map(|&i| self.source_rows[i]).collect(),
            unknown_categories: self.unknown_categories.clone(),
            missing_filled: self.missing_filled,
            missing_dropped: self.missing_dropped,
            missing_target_dropped: self.missing_target_dropped,
        }
    }
}

/// The complete fitted preprocessing: saved as `preprocessor.json` in the run directory and
/// applied unchanged by `eval` and `predict`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Preprocessor {
    /// Format version of this file.
    pub version: u32,
    /// Input transforms in model input order.
    pub features: Vec<FeatureTransform>,
    /// Target transform.
    pub target: TargetTransform,
    /// Id column copied to predictions.
    pub id_column: Option<String>,
    /// Classification or regression.
    pub task: Task,
}

/// A numeric value as the model sees it, or `None` when that is not a finite f32.
fn scale_numeric(v: f64, shift: f64, scale: f64) -> Option<f32> {
    Some(((v - shift) / scale) as f32).filter(|x| x.is_finite())
}

/// What [`scale_numeric`] could not do, for error messages.
fn overflow_detail(shift: f64, scale: f64) -> String {
    format!(
        "(value - {shift}) / {scale} is outside the range of 32-bit floats (magnitude at most {:e})",
        f32::MAX
    )
}

/// A pixel (0-255) as the model sees it.
fn scale_pixel(p: f32, mean: f32, std: f32) -> f32 {
    (p / 255.0 - mean) / std
}

/// `Err(what)` unless `v` is finite as an f32 (and positive when `positive`).
pub(crate) fn check_statistic(
    what: &str,
    v: f64,
    positive: bool,
) -> std::result::Result<(), String> {
    if !v.is_finite() || !(v as f32).is_finite() {
        Err(format!("{what} is {v}, expected a finite number"))
    } else if positive && v <= 0.0 {
        Err(format!("{what} is {v}, expected a positive number"))
    } else {
        Ok(())
    }
}

pub(crate) fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    // Linear interpolation, as numpy's default.
    let pos = q * (sorted.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}

pub(crate) fn numeric_values(
    table: &Table,
    column: &Column,
    name: &str,
    rows: &[usize],
) -> Result<Vec<Option<f64>>> {
    rows.iter()
        .map(|&r| match column {
            Column::Number(_) => Ok(column.number(r)),
            Column::Text(_) => match column.str(r) {
                None => Ok(None),
                Some(s) => parse_number(s)
                    .map(Some)
                    .ok_or_else(|| DataError::BadValue {
                        path: table.origin.clone(),
                        line: table.lines[r],
                        column: name.to_string(),
                        message: format!("expected a number: {}", not_a_number(s)),
                    }),
            },
            Column::Image { .. } => Err(DataError::Invalid(format!(
                "column \"{name}\" holds images, expected numbers"
            ))),
        })
        .collect()
}

/// Row `r` of a text-like column, the fill value when missing, or `None` when the row is to
/// be dropped (`drop` and missing).
fn text_or_fill(
    column: &Column,
    r: usize,
    fill: &Option<String>,
    drop: bool,
    filled: &mut usize,
) -> Option<Option<String>> {
    match column.text(r) {
        Some(t) => Some(Some(t)),
        None if drop => None,
        None => {
            *filled += 1;
            Some(fill.clone())
        }
    }
}

/// Whether `text` is `value`: the same text, or the same number however written (`1.0` and
/// `1`: a CSV column of numbers reads as numbers, which print plainly).
fn same_value(text: &str, value: &str) -> bool {
    text == value || parse_number(text).is_some_and(|t| parse_number(value).is_some_and(|v| t == v))
}

pub(crate) fn sort_labels(labels: &mut [String]) {
    if labels.iter().all(|l| parse_number(l).is_some()) {
        labels.sort_by(|a, b| {
            parse_number(a)
                .unwrap()
                .total_cmp(&parse_number(b).unwrap())
        });
    } else {
        labels.sort();
    }
}

impl Preprocessor {
    /// The columns whose values this preprocessor matches as text (categories, text, the id
    /// and the target), which a CSV must keep as written even when they hold only numbers.
    pub fn text_columns(&self) -> Vec<String> {
        let target = match &self.target {
            TargetTransform::Classes { name, .. } | TargetTransform::Regression { name, .. } => {
                name
            }
        };
        self.features
            .iter()
            .filter(|f| {
                matches!(
                    f,
                    FeatureTransform::Categorical { .. } | FeatureTransform::Text { .. }
                )
            })
            .map(|f| f.name().to_string())
            .chain(self.id_column.clone())
            .chain(std::iter::once(target.clone()))
            .collect()
    }

    /// Fits every transform on the `train` rows of `table`. Class names are collected from
    /// all `labeled` rows so a class absent from the training split still has a label.
    pub fn fit(table: &Table, schema: &Schema, train: &[usize], labeled: &[usize]) -> Result<Self> {
        if train.is_empty() {
            return Err(DataError::Invalid(format!(
                "{}: the training split is empty",
                table.origin
            )));
        }
        let mut pass = FitPass::new(schema, FitLimits::EXACT);
        pass.observe(table, train, labeled)?;
        pass.finish(&table.origin, |plan| {
            let column = table.column(&plan.name, "feature")?;
            let drop_missing = plan.missing == MissingStrategy::Drop;
            Ok(match plan.kind {
            FeatureType::Image => {
                let Column::Image {
                    pixels,
                    channels,
                    height,
                    width,
                } = column
                else {
                    return Err(DataError::Invalid(format!(
                        "column \"{}\" is not an image column",
                        plan.name
                    )));
                };
                let plane = height * width;
                let size = channels * plane;
                // Sums of pixel values and their squares, per channel: integers, exact.
                let mut sums = vec![(0u64, 0u64); *channels];
                for &r in train {
                    let row = &pixels[r * size..(r + 1) * size];
                    for (c, values) in row.chunks_exact(plane).enumerate() {
                        for &p in values {
                            sums[c].0 += u64::from(p);
                            sums[c].1 += u64::from(p) * u64::from(p);
                        }
                    }
                }
                let n = (train.len() * plane) as f64;
                let (mean, std) = sums
                    .iter()
                    .map(|&(sum, sq)| {
                        let m = sum as f64 / 255.0 / n;
                        let std = (sq as f64 / (255.0 * 255.0) / n - m * m).max(0.0).sqrt();
                        // A constant channel (std 0 but for rounding) is only shifted.
                        (m as f32, if std > 1e-6 { std as f32 } else { 1.0 })
                    })
                    .unzip();
                FeatureTransform::Image {
                    name: plan.name.clone(),
                    channels: *channels,
                    height: *height,
                    width: *width,
                    mean,
                    std,
                }
            }
            FeatureType::Text => {
                let texts: Vec<String> = train.iter().filter_map(|&r| column.text(r)).collect();
                let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
                let kind = plan.tokenizer.clone().ok_or_else(|| {
                    DataError::Invalid(format!(
                        "text feature \"{}\" has no tokenizer",
                        plan.name
                    ))
                })?;
                let tokenizer = TextTokenizer::build_normalized(&kind, &texts, plan.lowercase)
                    .map_err(|e| {
                        DataError::Invalid(format!("text feature \"{}\": {e}", plan.name))
                    })?;
                let json = tokenizer.to_json().map_err(|e| {
                    DataError::Invalid(format!("text feature \"{}\": {e}", plan.name))
                })?;
                let special_tokens = if plan.special_tokens {
                    let (before, after) = tokenizer.special_tokens_around().map_err(|e| {
                        DataError::Invalid(format!("text feature \"{}\": {e}", plan.name))
                    })?;
                    if before.len() + after.len() >= plan.max_tokens {
                        return Err(DataError::Invalid(format!(
                            "text feature \"{}\": model.context = {} leaves no room for text between {} special tokens",
                            plan.name,
                            plan.max_tokens,
                            before.len() + after.len()
                        )));
                    }
                    Some(SpecialTokens { before, after })
                } else {
                    None
                };
                let max_tokens = plan.max_tokens.max(1);
                let specials = special_tokens
                    .as_ref()
                    .map_or(0, |s| s.before.len() + s.after.len());
                if window_capacity(max_tokens, specials, plan.windows, plan.window_overlap)
                    .is_none()
                {
                    return Err(DataError::Invalid(format!(
                        "text feature \"{}\": text.window_overlap = {} leaves no new text in a window of {} tokens ({specials} of them special)",
                        plan.name, plan.window_overlap, max_tokens
                    )));
                }
                FeatureTransform::Text {
                    name: plan.name.clone(),
                    tokenizer: json,
                    vocab_size: tokenizer.vocab_size() + 1,
                    max_tokens,
                    head_tokens: Some(plan.truncation.head_tokens(plan.windows.max(1) * max_tokens)),
                    drop_missing,
                    special_tokens,
                    windows: plan.windows.max(1),
                    window_overlap: plan.window_overlap,
                }
            }
            _ => unreachable!("a pass fits numbers and categories"),
            })
        })
    }

    /// The model's input when it is one image column: its shape and per-channel statistics.
    pub fn image_input(&self) -> Option<ImageInput<'_>> {
        match self.features.as_slice() {
            [
                FeatureTransform::Image {
                    channels,
                    height,
                    width,
                    mean,
                    std,
                    ..
                },
            ] => Some(ImageInput {
                channels: *channels,
                height: *height,
                width: *width,
                mean,
                std,
            }),
            _ => None,
        }
    }

    /// Shape of one encoded row.
    pub fn input_shape(&self) -> InputShape {
        if let Some(image) = self.image_input() {
            return InputShape::Image {
                channels: image.channels,
                height: image.height,
                width: image.width,
            };
        }
        InputShape::Flat {
            width: self
                .features
                .iter()
                .map(FeatureTransform::dense_width)
                .sum(),
        }
    }

    /// How each slot of the dense input is normalised, in input order (one per value of a
    /// row of [`Encoded::x`]). Lets an exported model take raw values and normalise them itself.
    pub fn dense_slots(&self) -> Vec<DenseSlot> {
        let mut slots = Vec::with_capacity(self.input_shape().size());
        for f in &self.features {
            match f {
                FeatureTransform::Numeric {
                    fill, shift, scale, ..
                } => slots.push(DenseSlot {
                    fill: *fill,
                    shift: *shift,
                    scale: *scale,
                }),
                FeatureTransform::Binary { values, fill, .. } => slots.push(DenseSlot {
                    fill: match fill {
                        Some(v) if *v == values[1] => 1.0,
                        Some(v) if *v == values[0] => 0.0,
                        _ => 0.5,
                    },
                    shift: 0.0,
                    scale: 1.0,
                }),
                FeatureTransform::Categorical {
                    categories,
                    embedding_dim: None,
                    ..
                } => slots.extend((0..categories.len()).map(|_| DenseSlot::IDENTITY)),
                FeatureTransform::Categorical { .. } | FeatureTransform::Text { .. } => {}
                FeatureTransform::Image {
                    height,
                    width,
                    mean,
                    std,
                    ..
                } => {
                    for (m, s) in mean.iter().zip(std) {
                        slots.extend((0..height * width).map(|_| DenseSlot {
                            fill: 0.0,
                            shift: f64::from(*m) * 255.0,
                            scale: f64::from(*s) * 255.0,
                        }));
                    }
                }
            }
        }
        slots
    }

    /// Turns raw dense values (rows of [`dense_slots`](Self::dense_slots) values: numbers as
    /// they are, 0/1 for one-hot and binary slots, pixels 0-255; NaN = missing) into the
    /// model's dense input, with the same arithmetic as [`transform`](Self::transform).
    ///
    /// A value whose normalised form is not a finite f32 (infinite, or far outside the
    /// training range) is an error naming its row and feature: the model never sees it.
    pub fn normalise_dense(&self, raw: &[f32]) -> Result<Vec<f32>> {
        let slots = self.dense_slots();
        let width = slots.len().max(1);
        let out_of_range = |i: usize, v: f32, detail: String| {
            let names = self.dense_slot_names();
            DataError::OutOfRange {
                row: i / width,
                feature: names.get(i % width).cloned().unwrap_or_default(),
                value: f64::from(v),
                detail,
            }
        };
        if let Some(ImageInput {
            mean,
            std,
            height,
            width,
            ..
        }) = self.image_input()
        {
            let plane = (height * width).max(1);
            let channels = mean.len().max(1);
            return raw
                .iter()
                .enumerate()
                .map(|(i, &p)| {
                    let c = (i / plane) % channels;
                    let x = scale_pixel(p, mean[c], std[c]);
                    if x.is_finite() {
                        Ok(x)
                    } else {
                        Err(out_of_range(i, p, "pixels are 0-255".into()))
                    }
                })
                .collect();
        }
        raw.iter()
            .enumerate()
            .map(|(i, &v)| {
                let s = &slots[i % width];
                let value = if v.is_nan() { s.fill } else { f64::from(v) };
                scale_numeric(value, s.shift, s.scale)
                    .ok_or_else(|| out_of_range(i, v, overflow_detail(s.shift, s.scale)))
            })
            .collect()
    }

    /// The feature of each dense input slot, in input order: `name` for a numeric or binary
    /// column, `name=category` for a one-hot slot, `name[i]` for pixel `i`.
    pub fn dense_slot_names(&self) -> Vec<String> {
        let mut names = Vec::new();
        for f in &self.features {
            match f {
                FeatureTransform::Numeric { name, .. } | FeatureTransform::Binary { name, .. } => {
                    names.push(name.clone())
                }
                FeatureTransform::Categorical {
                    name,
                    categories,
                    embedding_dim: None,
                    ..
                } => names.extend(categories.iter().map(|c| format!("{name}={c}"))),
                FeatureTransform::Categorical { .. } | FeatureTransform::Text { .. } => {}
                FeatureTransform::Image {
                    name,
                    channels,
                    height,
                    width,
                    ..
                } => names.extend((0..channels * height * width).map(|i| format!("{name}[{i}]"))),
            }
        }
        names
    }

    /// Checks what a `preprocessor.json` read from disk says before any kernel uses it:
    /// every statistic a finite f32 (scales and standard deviations positive), images and
    /// texts with non-empty shapes, each tokenizer loadable with the vocabulary recorded
    /// beside it, two distinct binary values, at least two classes. The error names the
    /// feature (or target) and the value.
    pub fn validate(&self) -> Result<()> {
        let invalid = |name: &str, message: String| {
            DataError::Invalid(format!("feature \"{name}\": {message}"))
        };
        for f in &self.features {
            match f {
                FeatureTransform::Numeric {
                    name,
                    fill,
                    shift,
                    scale,
                    ..
                } => {
                    check_statistic("fill", *fill, false).map_err(|m| invalid(name, m))?;
                    check_statistic("shift", *shift, false).map_err(|m| invalid(name, m))?;
                    check_statistic("scale", *scale, true).map_err(|m| invalid(name, m))?;
                }
                FeatureTransform::Binary { name, values, .. } => {
                    if values[0] == values[1] {
                        return Err(invalid(name, format!("both values are \"{}\"", values[0])));
                    }
                }
                FeatureTransform::Categorical {
                    name,
                    embedding_dim,
                    ..
                } => {
                    if *embedding_dim == Some(0) {
                        return Err(invalid(name, "embedding_dim is 0".into()));
                    }
                }
                FeatureTransform::Image {
                    name,
                    channels,
                    height,
                    width,
                    mean,
                    std,
                } => {
                    if height
                        .checked_mul(*width)
                        .and_then(|s| s.checked_mul(*channels))
                        .is_none_or(|s| s == 0 || s > 1 << 24)
                        || !matches!(channels, 1 | 3)
                    {
                        return Err(invalid(
                            name,
                            format!("image shape {channels}x{height}x{width}"),
                        ));
                    }
                    if mean.len() != *channels || std.len() != *channels {
                        return Err(invalid(
                            name,
                            format!(
                                "{channels} channels but {} means and {} standard deviations",
                                mean.len(),
                                std.len()
                            ),
                        ));
                    }
                    for (m, s) in mean.iter().zip(std) {
                        check_statistic("mean", f64::from(*m), false)
                            .map_err(|m| invalid(name, m))?;
                        check_statistic("std", f64::from(*s), true)
                            .map_err(|m| invalid(name, m))?;
                    }
                }
                FeatureTransform::Text {
                    name,
                    tokenizer,
                    vocab_size,
                    max_tokens,
                    head_tokens,
                    special_tokens,
                    windows,
                    window_overlap,
                    ..
                } => {
                    let row_tokens = max_tokens.checked_mul(*windows);
                    if *max_tokens == 0
                        || row_tokens.is_none()
                        || head_tokens.is_some_and(|h| Some(h) > row_tokens)
                    {
                        return Err(invalid(
                            name,
                            format!(
                                "max_tokens {max_tokens}, windows {windows}, head_tokens {head_tokens:?}"
                            ),
                        ));
                    }
                    let specials = special_tokens
                        .as_ref()
                        .map_or(0, |s| s.before.len() + s.after.len());
                    if !(1..=kiln_config::MAX_TEXT_WINDOWS).contains(windows)
                        || window_capacity(*max_tokens, specials, *windows, *window_overlap)
                            .is_none()
                    {
                        return Err(invalid(
                            name,
                            format!(
                                "{windows} windows of {max_tokens} tokens ({specials} special) overlapping by {window_overlap}"
                            ),
                        ));
                    }
                    let t = TextTokenizer::from_json(tokenizer)
                        .map_err(|e| invalid(name, format!("tokenizer: {e}")))?;
                    if t.vocab_size() + 1 != *vocab_size {
                        return Err(invalid(
                            name,
                            format!(
                                "vocab_size is {vocab_size} but the tokenizer has {} tokens (+1 for padding)",
                                t.vocab_size()
                            ),
                        ));
                    }
                }
            }
        }
        match &self.target {
            TargetTransform::Classes { name, classes } => {
                if classes.len() < 2 {
                    return Err(DataError::Invalid(format!(
                        "target \"{name}\": {} class(es), expected at least 2",
                        classes.len()
                    )));
                }
            }
            TargetTransform::Regression { name, mean, std } => {
                let bad = |m| DataError::Invalid(format!("target \"{name}\": {m}"));
                check_statistic("mean", *mean, false).map_err(bad)?;
                check_statistic("std", *std, true).map_err(bad)?;
            }
        }
        Ok(())
    }

    /// Table size of each embedded categorical feature (known categories + 1 for unknown).
    pub fn cardinalities(&self) -> Vec<usize> {
        self.embedding_dims().into_iter().map(|(c, _)| c).collect()
    }

    /// `(table size, width)` of each embedded categorical feature.
    pub fn embedding_dims(&self) -> Vec<(usize, usize)> {
        self.features
            .iter()
            .filter_map(|f| match f {
                FeatureTransform::Categorical {
                    categories,
                    embedding_dim: Some(d),
                    ..
                } => Some((categories.len() + 1, *d)),
                _ => None,
            })
            .collect()
    }

    /// `(token table size, longest sequence)` of the text feature, if there is one.
    pub fn text_input(&self) -> Option<(usize, usize)> {
        self.features.iter().find_map(|f| match f {
            FeatureTransform::Text {
                vocab_size,
                max_tokens,
                ..
            } => Some((*vocab_size, *max_tokens)),
            _ => None,
        })
    }

    /// Windows a text is read in (1 without a text feature or without windows).
    pub fn text_windows(&self) -> usize {
        self.features
            .iter()
            .find_map(|f| match f {
                FeatureTransform::Text { windows, .. } => Some(*windows),
                _ => None,
            })
            .unwrap_or(1)
    }

    /// Number of classes (1 for regression: one output).
    pub fn num_outputs(&self) -> usize {
        match &self.target {
            TargetTransform::Classes { classes, .. } => classes.len(),
            TargetTransform::Regression { .. } => 1,
        }
    }

    /// Class names, for classification.
    pub fn classes(&self) -> Option<&[String]> {
        match &self.target {
            TargetTransform::Classes { classes, .. } => Some(classes),
            TargetTransform::Regression { .. } => None,
        }
    }

    /// Maps a standardised regression output back to target units.
    pub fn denormalize(&self, v: f32) -> f32 {
        match &self.target {
            TargetTransform::Regression { mean, std, .. } => (v as f64 * std + mean) as f32,
            TargetTransform::Classes { .. } => v,
        }
    }

    /// Encodes the `rows` of `table`. With `training`, rows with a missing value under
    /// `missing = "drop"` (and rows without a target) are dropped and counted; otherwise
    /// (`predict`) every row is kept and missing values are filled, so the output has one
    /// row per input. `require_target` makes a missing target column an error.
    pub fn transform(
        &self,
        table: &Table,
        rows: &[usize],
        training: bool,
        require_target: bool,
    ) -> Result<Encoded> {
        let shape = self.input_shape();
        let size = shape.size();
        let cardinalities = self.cardinalities();
        let target_name = match &self.target {
            TargetTransform::Classes { name, .. } | TargetTransform::Regression { name, .. } => {
                name
            }
        };
        let target_col = table.column_index(target_name);
        if require_target && target_col.is_none() {
            table.column(target_name, "target")?;
        }
        let class_index: HashMap<&str, u32> = match &self.target {
            TargetTransform::Classes { classes, .. } => classes
                .iter()
                .enumerate()
                .map(|(i, c)| (c.as_str(), i as u32))
                .collect(),
            _ => HashMap::new(),
        };
        let columns: Vec<&Column> = self
            .features
            .iter()
            .map(|f| table.column(f.name(), "feature"))
            .collect::<Result<_>>()?;
        // Data without the id column (new rows to score) gets predictions without ids.
        let id_col = self
            .id_column
            .as_ref()
            .and_then(|id| table.column_index(id))
            .map(|i| &table.columns[i]);
        let tokenizers: Vec<Option<TextTokenizer>> = self
            .features
            .iter()
            .map(|f| match f {
                FeatureTransform::Text {
                    name, tokenizer, ..
                } => TextTokenizer::from_json(tokenizer)
                    .map(Some)
                    .map_err(|e| DataError::Invalid(format!("text feature \"{name}\": {e}"))),
                _ => Ok(None),
            })
            .collect::<Result<_>>()?;
        let windows = self.text_windows();
        let seq_len = self.text_input().map(|(_, t)| t * windows).unwrap_or(0);
        let mut out = Encoded {
            x: Vec::with_capacity(rows.len() * size),
            rows: 0,
            shape,
            categories: Vec::with_capacity(rows.len() * cardinalities.len()),
            tokens: Vec::with_capacity(rows.len() * seq_len),
            seq_len,
            windows,
            texts_truncated: 0,
            cardinalities: cardinalities.clone(),
            y: None,
            ids: id_col.map(|_| Vec::with_capacity(rows.len())),
            source_rows: Vec::with_capacity(rows.len()),
            unknown_categories: BTreeMap::new(),
            missing_filled: 0,
            missing_dropped: 0,
            missing_target_dropped: 0,
        };
        let mut classes = Vec::new();
        let mut values = Vec::new();
        let mut row_x = Vec::with_capacity(size);
        let mut row_cat = Vec::with_capacity(cardinalities.len());
        let mut row_tokens = Vec::with_capacity(seq_len);
        'rows: for &r in rows {
            row_x.clear();
            row_cat.clear();
            row_tokens.clear();
            let mut filled = 0;
            // Target first: a labelled row without a target is dropped in training.
            let mut label = None;
            let mut value = None;
            if let Some(tc) = target_col {
                let column = &table.columns[tc];
                match &self.target {
                    TargetTransform::Classes { .. } => match column.text(r) {
                        None if training => {
                            out.missing_target_dropped += 1;
                            continue 'rows;
                        }
                        None => {}
                        Some(t) => match class_index.get(t.as_str()) {
                            Some(&c) => label = Some(c),
                            None => {
                                return Err(DataError::BadValue {
                                    path: table.origin.clone(),
                                    line: table.lines[r],
                                    column: target_name.clone(),
                                    message: format!(
                                        "class \"{t}\" was not seen in training; known classes: {:?}",
                                        class_index.keys().collect::<Vec<_>>()
                                    ),
                                });
                            }
                        },
                    },
                    TargetTransform::Regression { mean, std, .. } => {
                        let v = numeric_values(table, column, target_name, &[r])?[0];
                        match v {
                            None if training => {
                                out.missing_target_dropped += 1;
                                continue 'rows;
                            }
                            None => {}
                            Some(v) => {
                                value = Some(scale_numeric(v, *mean, *std).ok_or_else(|| {
                                    DataError::BadValue {
                                        path: table.origin.clone(),
                                        line: table.lines[r],
                                        column: target_name.clone(),
                                        message: format!(
                                            "{v} is too far from the training targets: {}",
                                            overflow_detail(*mean, *std)
                                        ),
                                    }
                                })?)
                            }
                        }
                    }
                }
            }
            for ((f, column), tokenizer) in self.features.iter().zip(&columns).zip(&tokenizers) {
                match f {
                    FeatureTransform::Numeric {
                        name,
                        fill,
                        drop_missing,
                        shift,
                        scale,
                    } => {
                        let v = match numeric_values(table, column, name, &[r])?[0] {
                            Some(v) => v,
                            None if *drop_missing && training => {
                                out.missing_dropped += 1;
                                continue 'rows;
                            }
                            None => {
                                filled += 1;
                                *fill
                            }
                        };
                        let x = scale_numeric(v, *shift, *scale).ok_or_else(|| {
                            DataError::BadValue {
                                path: table.origin.clone(),
                                line: table.lines[r],
                                column: name.clone(),
                                message: format!(
                                    "{v} is too far from the training data: {}",
                                    overflow_detail(*shift, *scale)
                                ),
                            }
                        })?;
                        row_x.push(x);
                    }
                    FeatureTransform::Binary {
                        name: _,
                        values,
                        fill,
                        drop_missing,
                    } => {
                        let Some(t) =
                            text_or_fill(column, r, fill, *drop_missing && training, &mut filled)
                        else {
                            out.missing_dropped += 1;
                            continue 'rows;
                        };
                        let v = match t {
                            Some(t) if same_value(&t, &values[1]) => 1.0,
                            Some(t) if same_value(&t, &values[0]) => 0.0,
                            Some(_) => {
                                *out.unknown_categories
                                    .entry(f.name().to_string())
                                    .or_default() += 1;
                                0.5
                            }
                            None => 0.5,
                        };
                        row_x.push(v);
                    }
                    FeatureTransform::Categorical {
                        name,
                        categories,
                        fill,
                        drop_missing,
                        embedding_dim,
                    } => {
                        let Some(t) =
                            text_or_fill(column, r, fill, *drop_missing && training, &mut filled)
                        else {
                            out.missing_dropped += 1;
                            continue 'rows;
                        };
                        // A number read as a number matches the category it equals however
                        // the category is written (`1.50` fitted from a text column).
                        let number = matches!(column, Column::Number(_));
                        let index = t.as_ref().and_then(|t| {
                            categories.iter().position(|c| c == t).or_else(|| {
                                number
                                    .then(|| categories.iter().position(|c| same_value(t, c)))
                                    .flatten()
                            })
                        });
                        if index.is_none() && t.is_some() {
                            *out.unknown_categories.entry(name.clone()).or_default() += 1;
                        }
                        match embedding_dim {
                            Some(_) => row_cat.push(index.map(|i| i as u32 + 1).unwrap_or(0)),
                            None => {
                                let start = row_x.len();
                                row_x.resize(start + categories.len(), 0.0);
                                if let Some(i) = index {
                                    row_x[start + i] = 1.0;
                                }
                            }
                        }
                    }
                    FeatureTransform::Image {
                        channels,
                        height,
                        width,
                        mean,
                        std,
                        ..
                    } => {
                        let Column::Image {
                            pixels,
                            channels: c,
                            height: h,
                            width: w,
                        } = column
                        else {
                            return Err(DataError::Invalid(format!(
                                "column \"{}\" is not an image column",
                                f.name()
                            )));
                        };
                        if (c, h, w) != (channels, height, width) {
                            let what = |c: &usize| if *c == 3 { "RGB" } else { "grey" };
                            return Err(DataError::Invalid(format!(
                                "{}: images are {} {h}x{w}, the model expects {} {height}x{width}",
                                table.origin,
                                what(c),
                                what(channels)
                            )));
                        }
                        let plane = h * w;
                        let s = c * plane;
                        for (ch, values) in
                            pixels[r * s..(r + 1) * s].chunks_exact(plane).enumerate()
                        {
                            row_x.extend(
                                values
                                    .iter()
                                    .map(|&p| scale_pixel(f32::from(p), mean[ch], std[ch])),
                            );
                        }
                    }
                    FeatureTransform::Text {
                        name,
                        max_tokens,
                        head_tokens,
                        drop_missing,
                        special_tokens,
                        windows,
                        window_overlap,
                        ..
                    } => {
                        let text = match column.text(r) {
                            Some(t) => t,
                            None if *drop_missing && training => {
                                out.missing_dropped += 1;
                                continue 'rows;
                            }
                            None => {
                                filled += 1;
                                String::new()
                            }
                        };
                        let tokenizer = tokenizer.as_ref().expect("built for text features");
                        let (before, after) = special_tokens
                            .as_ref()
                            .map(|s| (s.before.as_slice(), s.after.as_slice()))
                            .unwrap_or_default();
                        let room = max_tokens.saturating_sub(before.len() + after.len());
                        let capacity = window_capacity(
                            *max_tokens,
                            before.len() + after.len(),
                            *windows,
                            *window_overlap,
                        )
                        .unwrap_or(room);
                        let (ids, truncated) = tokenizer
                            .encode_head_tail(
                                &text,
                                capacity,
                                head_tokens.unwrap_or(*max_tokens).min(capacity),
                            )
                            .map_err(|e| DataError::BadValue {
                                path: table.origin.clone(),
                                line: table.lines[r],
                                column: name.clone(),
                                message: e.to_string(),
                            })?;
                        out.texts_truncated += usize::from(truncated);
                        // Consecutive windows of `room` text tokens, each repeating the last
                        // `window_overlap` of the one before, each between the special tokens
                        // and padded to `max_tokens`; windows after the text are padding.
                        let step = room.saturating_sub(*window_overlap).max(1);
                        let mut start = 0;
                        loop {
                            let end = (start + room).min(ids.len());
                            let window = before.iter().chain(&ids[start..end]).chain(after);
                            row_tokens.extend(window.map(|&id| id + 1));
                            row_tokens.resize(row_tokens.len().next_multiple_of(*max_tokens), 0);
                            if end >= ids.len() {
                                break;
                            }
                            start += step;
                        }
                        row_tokens.resize(*max_tokens * *windows, 0);
                    }
                }
            }
            out.missing_filled += filled;
            out.x.extend_from_slice(&row_x);
            out.categories.extend_from_slice(&row_cat);
            out.tokens.extend_from_slice(&row_tokens);
            if let Some(ids) = out.ids.as_mut() {
                ids.push(id_col.and_then(|c| c.text(r)).unwrap_or_default());
            }
            if let Some(l) = label {
                classes.push(l);
            }
            if let Some(v) = value {
                values.push(v);
            }
            out.source_rows.push(r);
            out.rows += 1;
        }
        if target_col.is_some() {
            match &self.target {
                TargetTransform::Classes { .. } if classes.len() == out.rows => {
                    out.y = Some(Target::Classes(classes))
                }
                TargetTransform::Regression { .. } if values.len() == out.rows => {
                    out.y = Some(Target::Values(values))
                }
                _ if require_target => {
                    return Err(DataError::Invalid(format!(
                        "{}: target \"{target_name}\" is missing in some rows",
                        table.origin
                    )));
                }
                _ => {}
            }
        }
        Ok(out)
    }
}
