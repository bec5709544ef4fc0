//! Columnar output: predictions as Parquet or Arrow IPC (Feather v2).

use std::sync::Arc;

use arrow_array::{ArrayRef, Float32Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema};

use crate::{DataError, Result};

/// A column to write.
#[derive(Debug, Clone, PartialEq)]
pub enum OutputColumn {
    /// Text (ids, class labels).
    Text(Vec<String>),
    /// 32-bit floats (regression values, probabilities).
    Float(Vec<f32>),
}

/// A columnar file format kiln writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnarFormat {
    /// Apache Parquet, snappy-compressed.
    Parquet,
    /// Arrow IPC file format (Feather v2).
    ArrowIpc,
}

/// The bytes of a file holding `columns` under `names` (equal lengths, checked).
pub fn write_columnar(
    format: ColumnarFormat,
    names: &[String],
    columns: Vec<OutputColumn>,
) -> Result<Vec<u8>> {
    if names.len() != columns.len() {
        return Err(DataError::Invalid(format!(
            "writing {format:?}: {} names for {} columns",
            names.len(),
            columns.len()
        )));
    }
    let fields: Vec<Field> = names
        .iter()
        .zip(&columns)
        .map(|(name, c)| {
            let data_type = match c {
                OutputColumn::Text(_) => DataType::Utf8,
                OutputColumn::Float(_) => DataType::Float32,
            };
            Field::new(name, data_type, false)
        })
        .collect();
    let schema = Arc::new(Schema::new(fields));
    let arrays: Vec<ArrayRef> = columns
        .into_iter()
        .map(|c| match c {
            OutputColumn::Text(v) => Arc::new(StringArray::from(v)) as ArrayRef,
            OutputColumn::Float(v) => Arc::new(Float32Array::from(v)) as ArrayRef,
        })
        .collect();
    let failed = |e: &dyn std::fmt::Display| DataError::Invalid(format!("writing {format:?}: {e}"));
    let batch = RecordBatch::try_new(schema.clone(), arrays).map_err(|e| failed(&e))?;
    let mut out = Vec::new();
    match format {
        ColumnarFormat::Parquet => {
            let props = parquet::file::properties::WriterProperties::builder()
                .set_compression(parquet::basic::Compression::SNAPPY)
                .build();
            let mut writer = parquet::arrow::ArrowWriter::try_new(&mut out, schema, Some(props))
                .map_err(|e| failed(&e))?;
            writer.write(&batch).map_err(|e| failed(&e))?;
            writer.close().map_err(|e| failed(&e))?;
        }
        ColumnarFormat::ArrowIpc => {
            let mut writer = arrow_ipc::writer::FileWriter::try_new(&mut out, &schema)
                .map_err(|e| failed(&e))?;
            writer.write(&batch).map_err(|e| failed(&e))?;
            writer.finish().map_err(|e| failed(&e))?;
        }
    }
    Ok(out)
}
