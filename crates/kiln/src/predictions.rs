//! `kiln predict --out FILE`: predictions written as they are made, in the format the file's
//! extension names, into a temporary file that takes the target's name once complete.

use std::io::Write;
use std::path::Path;

use kiln_runtime::fs::AtomicFile;

use crate::{KilnError, Result};

/// One row's prediction: a class label, or a regression value.
pub(crate) enum Prediction {
    Label(String),
    Value(f32),
}

/// How `kiln predict --out` writes, by the file's extension.
#[derive(Debug, Clone, Copy)]
pub(crate) enum PredictionsFormat {
    /// `.csv` (or any other name), `.tsv`/`.tab`: delimited text with a header.
    Csv(u8),
    /// `.jsonl`, `.ndjson`: one object per row, the same names as the CSV header.
    JsonLines,
    /// `.parquet`, `.pq`; `.arrow`, `.feather`: typed columns under the CSV header's names.
    Columnar(kiln_data::ColumnarFormat),
}

impl PredictionsFormat {
    pub(crate) fn of(out: &Path) -> Result<Self> {
        let name = out.to_string_lossy().to_lowercase();
        let extension = name.rsplit_once('.').map_or("", |(_, e)| e);
        match extension {
            "jsonl" | "ndjson" => Ok(Self::JsonLines),
            "tsv" | "tab" => Ok(Self::Csv(b'\t')),
            "parquet" | "pq" => Ok(Self::Columnar(kiln_data::ColumnarFormat::Parquet)),
            "arrow" | "feather" => Ok(Self::Columnar(kiln_data::ColumnarFormat::ArrowIpc)),
            "json" | "xlsx" | "xls" | "gz" | "zst" => Err(KilnError::Output {
                path: out.display().to_string(),
                message: format!(
                    "kiln writes predictions as CSV (.csv), TSV (.tsv), JSON Lines (.jsonl, .ndjson), Parquet (.parquet) or Arrow IPC / Feather (.arrow, .feather), not .{extension}"
                ),
            }),
            _ => Ok(Self::Csv(b',')),
        }
    }
}

/// One output row: its text fields (the id), its prediction and its numbers (probabilities).
pub(crate) type Row = (Vec<String>, Prediction, Vec<f32>);

/// Writes rows as they come. CSV and JSON Lines go straight to the file; Parquet and Arrow
/// collect their (small) typed columns and are written at [`PredictionsWriter::finish`].
pub(crate) struct PredictionsWriter {
    out: std::path::PathBuf,
    header: Vec<String>,
    format: PredictionsFormat,
    /// The file, for JSON Lines and the columnar formats; CSV writes through `csv`.
    file: Option<AtomicFile>,
    csv: Option<csv::Writer<AtomicFile>>,
    columns: Vec<kiln_data::OutputColumn>,
    rows: usize,
}

impl PredictionsWriter {
    pub(crate) fn create(
        out: &Path,
        format: PredictionsFormat,
        header: Vec<String>,
    ) -> Result<Self> {
        let file = AtomicFile::create(out)?;
        let (file, csv) = match format {
            PredictionsFormat::Csv(delimiter) => (
                None,
                Some(
                    csv::WriterBuilder::new()
                        .delimiter(delimiter)
                        .from_writer(file),
                ),
            ),
            _ => (Some(file), None),
        };
        let mut writer = PredictionsWriter {
            out: out.to_path_buf(),
            header,
            format,
            file,
            csv,
            columns: Vec::new(),
            rows: 0,
        };
        if let Some(csv) = writer.csv.as_mut() {
            csv.write_record(&writer.header)
                .map_err(|e| output_error(&writer.out, &e))?;
        }
        Ok(writer)
    }

    /// Appends rows.
    pub(crate) fn write(&mut self, rows: impl Iterator<Item = Row>) -> Result<()> {
        let out_err = |e: &dyn std::fmt::Display| output_error(&self.out, e);
        match self.format {
            PredictionsFormat::Csv(_) => {
                let csv = self.csv.as_mut().expect("a CSV writer");
                for (mut text, prediction, numbers) in rows {
                    text.push(match prediction {
                        Prediction::Label(label) => label,
                        Prediction::Value(value) => format!("{value}"),
                    });
                    text.extend(numbers.iter().map(|v| format!("{v:.6}")));
                    csv.write_record(&text).map_err(|e| out_err(&e))?;
                    self.rows += 1;
                }
            }
            PredictionsFormat::JsonLines => {
                let mut buf = Vec::new();
                // Written field by field, so the keys keep the CSV header's order (id first).
                for (text, prediction, numbers) in rows {
                    let prediction = match prediction {
                        Prediction::Label(label) => serde_json::Value::from(label),
                        Prediction::Value(value) => serde_json::Value::from(value),
                    };
                    let values = text
                        .into_iter()
                        .map(serde_json::Value::from)
                        .chain(std::iter::once(prediction))
                        .chain(numbers.into_iter().map(serde_json::Value::from));
                    buf.push(b'{');
                    for (i, (name, value)) in self.header.iter().zip(values).enumerate() {
                        if i > 0 {
                            buf.push(b',');
                        }
                        serde_json::to_writer(&mut buf, name).map_err(|e| out_err(&e))?;
                        buf.push(b':');
                        serde_json::to_writer(&mut buf, &value).map_err(|e| out_err(&e))?;
                    }
                    buf.extend_from_slice(b"}\n");
                    self.rows += 1;
                }
                let file = self.file.as_mut().expect("a JSON Lines file");
                file.write_all(&buf).map_err(|e| out_err(&e))?;
            }
            PredictionsFormat::Columnar(_) => {
                for (text, prediction, numbers) in rows {
                    if self.columns.is_empty() {
                        self.columns.extend(
                            text.iter()
                                .map(|_| kiln_data::OutputColumn::Text(Vec::new())),
                        );
                        self.columns.push(match prediction {
                            Prediction::Label(_) => kiln_data::OutputColumn::Text(Vec::new()),
                            Prediction::Value(_) => kiln_data::OutputColumn::Float(Vec::new()),
                        });
                        self.columns.extend(
                            numbers
                                .iter()
                                .map(|_| kiln_data::OutputColumn::Float(Vec::new())),
                        );
                    }
                    let values = text
                        .into_iter()
                        .map(Prediction::Label)
                        .chain(std::iter::once(prediction))
                        .chain(numbers.into_iter().map(Prediction::Value));
                    for (column, value) in self.columns.iter_mut().zip(values) {
                        match (column, value) {
                            (kiln_data::OutputColumn::Text(c), Prediction::Label(v)) => c.push(v),
                            (kiln_data::OutputColumn::Float(c), Prediction::Value(v)) => c.push(v),
                            _ => unreachable!("every row has the first row's column types"),
                        }
                    }
                    self.rows += 1;
                }
            }
        }
        Ok(())
    }

    /// Rows written so far.
    pub(crate) fn rows(&self) -> usize {
        self.rows
    }

    /// Completes the file and gives it the target's name.
    pub(crate) fn finish(mut self) -> Result<()> {
        let out_err = |e: &dyn std::fmt::Display| output_error(&self.out, e);
        let mut file = match self.csv.take() {
            Some(csv) => csv.into_inner().map_err(|e| out_err(&e.error()))?,
            None => self.file.take().expect("a file"),
        };
        if let PredictionsFormat::Columnar(format) = self.format {
            let columns = std::mem::take(&mut self.columns);
            let bytes = kiln_data::write_columnar(format, &self.header, columns)?;
            file.write_all(&bytes).map_err(|e| out_err(&e))?;
        }
        Ok(file.finish()?)
    }
}

fn output_error(out: &Path, e: &dyn std::fmt::Display) -> KilnError {
    KilnError::Output {
        path: out.display().to_string(),
        message: e.to_string(),
    }
}
