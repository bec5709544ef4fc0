//! A config's train / validation / test rows, as `kiln train` would use them, written out as
//! CSV files: for work outside kiln that must not see the held-out rows (language-model
//! pretraining on the training text, another tool's baseline on the same split).

use std::path::{Path, PathBuf};

use kiln_config::{Config, Streaming};
use kiln_data::{Column, Table};
use serde::Serialize;

use crate::{KilnError, Result};

/// What [`write_split_files`] wrote.
#[derive(Debug, Clone, Serialize)]
pub struct SplitFiles {
    /// The data source split.
    pub source: String,
    /// `train.csv`, `validation.csv` and (unless `data.test_source` gives the test rows)
    /// `test.csv`, with their row counts.
    pub files: Vec<(PathBuf, usize)>,
    /// Rows of the source not in the files: malformed and skipped, duplicates, bad values.
    pub dropped: usize,
}

/// Loads, cleans and splits the data of `config` exactly as training does (`data.source`,
/// `drop_duplicates`, `bad_rows`, `split`, `seed`) and writes each split's rows, every column,
/// to `out/{train,validation,test}.csv` (each written atomically, with the config's delimiter).
/// Numbers are written in their shortest exact form, missing values as empty fields; rows
/// whose target is missing stay in (training skips them). Refused: a language model (its text
/// splits by `text.val_fraction`), a streamed source (it splits by each line's hash, which
/// this in-memory split does not reproduce), image columns, and an output that is an input.
pub fn write_split_files(config: &Config, out: &Path) -> Result<SplitFiles> {
    if config.model.kind == kiln_config::ModelKind::Gpt {
        return Err(KilnError::Invalid(format!(
            "{}: a GPT language model splits its text by text.val_fraction, not into rows",
            config.data.source
        )));
    }
    let config = crate::pipeline::resolve_streaming(config.clone());
    if config.data.streaming == Streaming::On {
        return Err(KilnError::Invalid(format!(
            "{}: data.streaming is on (or the source is too large to hold in memory): a streamed \
             run splits by each line's hash, which split files read into memory cannot reproduce",
            config.data.source
        )));
    }
    let names = ["train", "validation", "test"];
    for input in [Some(&config.data.source), config.data.test_source.as_ref()]
        .into_iter()
        .flatten()
    {
        let input = Path::new(input);
        for name in names {
            let path = out.join(format!("{name}.csv"));
            if same_file(&path, input) {
                return Err(KilnError::Output {
                    path: path.display().to_string(),
                    message: "this is the data source; write the split files to another --out"
                        .into(),
                });
            }
        }
    }
    let (table, _, split) = crate::pipeline::load_and_split(&config)?;
    let read = table.report.rows_read;
    if let Some(i) = table
        .columns
        .iter()
        .position(|c| matches!(c, Column::Image { .. }))
    {
        return Err(KilnError::Invalid(format!(
            "{}: column {:?} holds images, which a CSV file cannot hold",
            config.data.source, table.names[i]
        )));
    }
    let mut parts = vec![(names[0], &split.train), (names[1], &split.validation)];
    if config.data.test_source.is_none() {
        parts.push((names[2], &split.test));
    }
    let delimiter = config.data.delimiter.unwrap_or(',');
    let mut files = Vec::new();
    for (name, rows) in parts {
        let path = out.join(format!("{name}.csv"));
        let bytes = csv_bytes(&table, rows, delimiter).map_err(|e| KilnError::Output {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        kiln_runtime::fs::write_atomic(&path, &bytes)?;
        files.push((path, rows.len()));
    }
    Ok(SplitFiles {
        source: config.data.source.clone(),
        files,
        dropped: read.saturating_sub(table.num_rows()),
    })
}

/// `rows` of `table` as CSV: a header of the column names, then one record a row.
fn csv_bytes(table: &Table, rows: &[usize], delimiter: char) -> csv::Result<Vec<u8>> {
    // The config allows ASCII delimiters only.
    let delimiter = u8::try_from(delimiter).unwrap_or(b',');
    let mut writer = csv::WriterBuilder::new()
        .delimiter(delimiter)
        .from_writer(Vec::new());
    writer.write_record(&table.names)?;
    let mut record = Vec::with_capacity(table.columns.len());
    for &row in rows {
        record.clear();
        record.extend(
            table
                .columns
                .iter()
                .map(|c| c.text(row).unwrap_or_default()),
        );
        writer.write_record(&record)?;
    }
    writer
        .into_inner()
        .map_err(|e| csv::Error::from(e.into_error()))
}

/// Whether `a` and `b` name one file (both canonicalised; a path that does not exist yet is
/// compared through its folder).
fn same_file(a: &Path, b: &Path) -> bool {
    fn canonical(p: &Path) -> Option<PathBuf> {
        p.canonicalize().ok().or_else(|| {
            let parent = p.parent().filter(|d| !d.as_os_str().is_empty())?;
            Some(parent.canonicalize().ok()?.join(p.file_name()?))
        })
    }
    match (canonical(a), canonical(b)) {
        (Some(a), Some(b)) => a == b,
        _ => a == b,
    }
}
