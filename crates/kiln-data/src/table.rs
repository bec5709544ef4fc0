//! Typed columns as read: Arrow arrays of text and numbers, and image pixels.

use arrow_array::builder::{ArrayBuilder, Float64Builder, StringBuilder};
use arrow_array::{Array, Float64Array, StringArray};
use serde::{Deserialize, Serialize};

/// One column as read from the source. Text and numbers are Arrow arrays: values in one
/// buffer, missing values in a validity bitmap.
#[derive(Debug, Clone, PartialEq)]
pub enum Column {
    /// Text fields (CSV, JSON Lines, Arrow strings and categories); null is a missing value.
    Text(StringArray),
    /// Numbers (Parquet/Arrow numeric columns, built-in sets, IDX labels); null is missing.
    Number(Float64Array),
    /// Images of one size, `channels * height * width` bytes per row, channel planes one
    /// after the other (CHW, as the networks read them).
    Image {
        /// Pixels of all rows.
        pixels: Vec<u8>,
        /// Colour channels: 1 (grey) or 3 (RGB).
        channels: usize,
        /// Image height.
        height: usize,
        /// Image width.
        width: usize,
    },
}

impl Column {
    /// A text column from optional strings.
    pub fn texts<S: AsRef<str>>(values: impl IntoIterator<Item = Option<S>>) -> Column {
        Column::Text(values.into_iter().collect())
    }

    /// A number column from optional values.
    pub fn numbers(values: impl IntoIterator<Item = Option<f64>>) -> Column {
        Column::Number(values.into_iter().collect())
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        match self {
            Column::Text(v) => v.len(),
            Column::Number(v) => v.len(),
            Column::Image {
                pixels,
                channels,
                height,
                width,
            } => pixels.len() / (channels * height * width).max(1),
        }
    }

    /// Whether the column has no rows.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether row `i` is missing.
    pub fn is_missing(&self, i: usize) -> bool {
        match self {
            Column::Text(v) => v.is_null(i),
            Column::Number(v) => v.is_null(i),
            Column::Image { .. } => false,
        }
    }

    /// Row `i` of a text column (`None` if missing or not text).
    pub fn str(&self, i: usize) -> Option<&str> {
        match self {
            Column::Text(v) => v.is_valid(i).then(|| v.value(i)),
            _ => None,
        }
    }

    /// Row `i` of a number column (`None` if missing or not numbers).
    pub fn number(&self, i: usize) -> Option<f64> {
        match self {
            Column::Number(v) => v.is_valid(i).then(|| v.value(i)),
            _ => None,
        }
    }

    /// Row `i`'s pixels of an image column (`None` if not images).
    pub fn image(&self, i: usize) -> Option<&[u8]> {
        match self {
            Column::Image {
                pixels,
                channels,
                height,
                width,
            } => {
                let size = channels * height * width;
                pixels.get(i * size..(i + 1) * size)
            }
            _ => None,
        }
    }

    /// Row `i` as text, for categorical handling and ids (`None` if missing).
    pub fn text(&self, i: usize) -> Option<String> {
        match self {
            Column::Text(_) => self.str(i).map(str::to_string),
            Column::Number(_) => self.number(i).map(format_number),
            Column::Image { .. } => Some(format!("<image {i}>")),
        }
    }

    fn select(&self, rows: &[usize]) -> Column {
        match self {
            Column::Text(_) => Column::texts(rows.iter().map(|&r| self.str(r))),
            Column::Number(_) => Column::numbers(rows.iter().map(|&r| self.number(r))),
            Column::Image {
                channels,
                height,
                width,
                ..
            } => {
                let size = channels * height * width;
                let mut out = Vec::with_capacity(rows.len() * size);
                for &r in rows {
                    out.extend_from_slice(self.image(r).expect("a row of this column"));
                }
                Column::Image {
                    pixels: out,
                    channels: *channels,
                    height: *height,
                    width: *width,
                }
            }
        }
    }
}

/// Builds a text column. Arrow's 32-bit offsets hold up to 2 GiB of text a column: a value
/// past that is not appended and [`TextBuilder::finish`] says so (never a panic).
pub(crate) struct TextBuilder {
    inner: StringBuilder,
    bytes: usize,
    limit: usize,
    overflow: bool,
}

impl TextBuilder {
    pub(crate) fn new() -> Self {
        TextBuilder {
            inner: StringBuilder::new(),
            bytes: 0,
            limit: i32::MAX as usize,
            overflow: false,
        }
    }

    /// A builder with room for `rows` values of `bytes` bytes in all.
    pub(crate) fn with_capacity(rows: usize, bytes: usize) -> Self {
        TextBuilder {
            inner: StringBuilder::with_capacity(rows, bytes.min(i32::MAX as usize)),
            ..TextBuilder::new()
        }
    }

    /// Appends a value (`None`: missing).
    pub(crate) fn append(&mut self, value: Option<&str>) {
        if let Some(v) = value {
            self.bytes += v.len();
            if self.bytes > self.limit {
                self.overflow = true;
                self.inner.append_null();
                return;
            }
        }
        self.inner.append_option(value);
    }

    /// Rows appended so far.
    pub(crate) fn len(&self) -> usize {
        self.inner.len()
    }

    /// Marks the column as too large (its finish is an error).
    pub(crate) fn overflow(&mut self) {
        self.overflow = true;
    }

    /// The column, or an error naming `column` of `origin` when it outgrew 2 GiB of text.
    pub(crate) fn finish(mut self, origin: &str, column: &str) -> crate::Result<Column> {
        if self.overflow {
            return Err(crate::DataError::Invalid(format!(
                "{origin}: column \"{column}\" holds more than 2 GiB of text ({} bytes); kiln keeps a column's text in one Arrow buffer of at most 2 GiB",
                self.bytes
            )));
        }
        Ok(Column::Text(self.inner.finish()))
    }
}

/// Builds a column from text fields (CSV): numbers while every field is one, text exactly as
/// written otherwise. A number column keeps how each value was written (its digits after the
/// point, or the text itself when written another way) until the column is finished, so that
/// the first field that is not a number turns the rows before it back into their own text:
/// `007`, `1.50` and `1e-07` stay as read in a column of names or codes.
pub(crate) enum CellBuilder {
    /// Every field so far was a number (or missing).
    Numbers {
        /// The values.
        values: Float64Builder,
        /// Each row's digits after the point as written (`-12.50`: 2), or [`SPELLED`] for a
        /// value written otherwise (its text is the next entry of `spelled`).
        decimals: Vec<u8>,
        /// The text of the values written otherwise than plainly, in row order.
        spelled: Vec<Box<str>>,
        /// Bytes of text read, to size the text column if it comes to that.
        bytes: usize,
    },
    /// The column holds text.
    Text(TextBuilder),
}

/// [`CellBuilder`]'s mark for a value whose text is kept whole.
const SPELLED: u8 = u8::MAX;

/// Values written otherwise than plainly that a number column keeps the text of; a column with
/// more becomes text.
const SPELLED_LIMIT: usize = 1 << 16;

/// Digits after the point of a plainly written number: `-?(0|[1-9][0-9]*)(\.[0-9]+)?` with at
/// most 15 digits, which an f64 holds exactly (so `format!("{v:.d$}")` gives the text back).
fn plain_decimals(s: &str) -> Option<u8> {
    let digits = s.strip_prefix('-').unwrap_or(s).as_bytes();
    let (int, frac) = match digits.iter().position(|&b| b == b'.') {
        Some(p) => (&digits[..p], Some(&digits[p + 1..])),
        None => (digits, None),
    };
    let all_digits = |d: &[u8]| !d.is_empty() && d.iter().all(u8::is_ascii_digit);
    if !all_digits(int) || (int.len() > 1 && int[0] == b'0') {
        return None;
    }
    let decimals = match frac {
        Some(f) if !all_digits(f) => return None,
        Some(f) => f.len(),
        None => 0,
    };
    (int.len() + decimals <= 15).then_some(decimals as u8)
}

/// Whether `s`, not written plainly, may still be held as a number: a finite value in f32's
/// range (others are left to the bad-value checks as text), neither an integer that an f64
/// cannot hold exactly (ids) nor written with leading zeros (codes such as `007`).
fn spelled_number(s: &str) -> Option<f64> {
    let unsigned = s.trim_start_matches(['-', '+']);
    let bytes = unsigned.as_bytes();
    if bytes.len() > 1 && bytes[0] == b'0' && bytes[1].is_ascii_digit() {
        return None;
    }
    if bytes.iter().all(u8::is_ascii_digit) {
        return None;
    }
    crate::infer::parse_number(s)
}

impl CellBuilder {
    /// A builder with room for `rows` values of `bytes` bytes of text; `text` starts it as text.
    pub(crate) fn new(rows: usize, bytes: usize, text: bool) -> Self {
        if text {
            return CellBuilder::Text(TextBuilder::with_capacity(rows, bytes));
        }
        CellBuilder::Numbers {
            values: Float64Builder::with_capacity(rows),
            decimals: Vec::with_capacity(rows),
            spelled: Vec::new(),
            bytes: 0,
        }
    }

    /// Appends a field (`None`: missing).
    pub(crate) fn append(&mut self, value: Option<&str>) {
        if let CellBuilder::Numbers {
            values,
            decimals,
            spelled,
            bytes,
        } = self
        {
            let Some(s) = value else {
                values.append_null();
                decimals.push(0);
                return;
            };
            if let Some(d) = plain_decimals(s)
                && let Ok(v) = s.parse::<f64>()
            {
                values.append_value(v);
                decimals.push(d);
                *bytes += s.len();
                return;
            }
            if spelled.len() < SPELLED_LIMIT
                && let Some(v) = spelled_number(s)
            {
                values.append_value(v);
                decimals.push(SPELLED);
                spelled.push(s.into());
                *bytes += s.len();
                return;
            }
            *self = CellBuilder::Text(self.take_text());
        }
        if let CellBuilder::Text(text) = self {
            text.append(value);
        }
    }

    /// Rows appended so far.
    pub(crate) fn len(&self) -> usize {
        match self {
            CellBuilder::Numbers { values, .. } => values.len(),
            CellBuilder::Text(text) => text.len(),
        }
    }

    /// The rows so far as text, each as it was written.
    fn take_text(&mut self) -> TextBuilder {
        let CellBuilder::Numbers {
            values,
            decimals,
            spelled,
            bytes,
        } = self
        else {
            return TextBuilder::new();
        };
        let values = values.finish();
        let mut text = TextBuilder::with_capacity(values.len() * 2, *bytes * 2);
        let mut spelled = std::mem::take(spelled).into_iter();
        let mut buffer = String::new();
        for (i, &d) in decimals.iter().enumerate() {
            if values.is_null(i) {
                text.append(None);
            } else if d == SPELLED {
                text.append(spelled.next().as_deref());
            } else {
                use std::fmt::Write;
                buffer.clear();
                let _ = write!(buffer, "{:.*}", usize::from(d), values.value(i));
                text.append(Some(&buffer));
            }
        }
        text
    }

    /// The column, or the error of [`TextBuilder::finish`].
    pub(crate) fn finish(self, origin: &str, column: &str) -> crate::Result<Column> {
        match self {
            CellBuilder::Numbers { mut values, .. } => Ok(Column::Number(values.finish())),
            CellBuilder::Text(text) => text.finish(origin, column),
        }
    }
}

/// Formats a number the way a CSV would hold it (integers without `.0`).
pub fn format_number(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

/// What loading and cleaning did to the rows, for the report.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LoadReport {
    /// Data rows in the source.
    pub rows_read: usize,
    /// Rows dropped because a field failed to parse (`bad_rows = "skip"`).
    pub bad_rows_skipped: usize,
    /// The first few skipped rows, as `line N: reason`.
    pub bad_row_examples: Vec<String>,
    /// Exact duplicate rows dropped (`drop_duplicates = true`).
    pub duplicates_dropped: usize,
    /// Rows dropped for a missing value under `missing = "drop"`.
    pub missing_dropped: usize,
    /// Rows dropped because the target was missing.
    pub missing_target_dropped: usize,
}

impl LoadReport {
    /// Counts a malformed row skipped under `bad_rows = "skip"`, keeping the first few
    /// reasons as examples.
    pub fn skip(&mut self, line: u64, reason: &str) {
        self.skip_named(&format!("line {line}"), reason);
    }

    /// [`LoadReport::skip`] for a row named otherwise (an image's path).
    pub fn skip_named(&mut self, row: &str, reason: &str) {
        const EXAMPLES: usize = 5;
        self.bad_rows_skipped += 1;
        if self.bad_row_examples.len() < EXAMPLES {
            self.bad_row_examples.push(format!("{row}: {reason}"));
        }
    }
}

/// Named columns of equal length, plus where each row came from.
#[derive(Debug, Clone)]
pub struct Table {
    /// Where the rows came from (file path or `builtin:NAME`), for messages.
    pub origin: String,
    /// Column names, in source order.
    pub names: Vec<String>,
    /// Columns, parallel to `names`.
    pub columns: Vec<Column>,
    /// 1-based source line of each row (for error messages).
    pub lines: Vec<u64>,
    /// What loading did.
    pub report: LoadReport,
}

impl Table {
    /// Number of rows.
    pub fn num_rows(&self) -> usize {
        self.lines.len()
    }

    /// Index of the column called `name`.
    pub fn column_index(&self, name: &str) -> Option<usize> {
        self.names.iter().position(|n| n == name)
    }

    /// The column called `name`, or an error naming the role it was wanted for.
    pub fn column(&self, name: &str, role: &'static str) -> crate::Result<&Column> {
        self.column_index(name)
            .map(|i| &self.columns[i])
            .ok_or_else(|| crate::DataError::UnknownColumn {
                path: self.origin.clone(),
                column: name.to_string(),
                role,
                available: self.names.join(", "),
            })
    }

    /// A table holding only `rows`, in that order.
    pub fn select(&self, rows: &[usize]) -> Table {
        Table {
            origin: self.origin.clone(),
            names: self.names.clone(),
            columns: self.columns.iter().map(|c| c.select(rows)).collect(),
            lines: rows.iter().map(|&r| self.lines[r]).collect(),
            report: self.report.clone(),
        }
    }

    /// Drops exact duplicate rows, keeping the first; returns how many went.
    pub fn drop_duplicates(&mut self) -> usize {
        let mut seen = std::collections::HashSet::new();
        let keep: Vec<usize> = (0..self.num_rows())
            .filter(|&r| {
                let key: Vec<Option<String>> = self
                    .columns
                    .iter()
                    .map(|c| match c.image(r) {
                        Some(pixels) => Some(format!("{pixels:?}")),
                        None => c.text(r),
                    })
                    .collect();
                seen.insert(key)
            })
            .collect();
        let dropped = self.num_rows() - keep.len();
        if dropped > 0 {
            let report = self.report.clone();
            *self = self.select(&keep);
            self.report = report;
        }
        self.report.duplicates_dropped += dropped;
        dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_past_the_limit_is_an_error_naming_the_column_not_a_panic() {
        let mut b = TextBuilder::new();
        b.limit = 5;
        b.append(Some("abc"));
        b.append(None);
        b.append(Some("def"));
        let err = b.finish("f.csv", "note").unwrap_err().to_string();
        assert!(
            err.contains("f.csv: column \"note\" holds more than 2 GiB"),
            "{err}"
        );
        let mut b = TextBuilder::new();
        b.append(Some("abc"));
        assert_eq!(b.finish("f", "c").unwrap(), Column::texts([Some("abc")]));
    }
}
