//! `kiln embed`: sentence embeddings of a text column with a pretrained encoder folder or a
//! run fine-tuned from one, written as `.npy` (float32, `[rows, dimension]`) or `.csv` (one row per text).

use std::path::{Path, PathBuf};
use std::time::Instant;

use kiln_runtime::pretrained::{EmbedError, PretrainedEncoder};
use serde::Serialize;

use crate::{KilnError, Result};

/// What `kiln embed` did.
#[derive(Debug, Clone, Serialize)]
pub struct EmbedSummary {
    /// The pretrained folder or fine-tuned run.
    pub model: PathBuf,
    /// Texts embedded.
    pub rows: usize,
    /// Values per embedding.
    pub dimension: usize,
    /// Texts longer than the model's `max_tokens`, cut to it.
    pub truncated: usize,
    /// Missing cells, embedded as empty texts.
    pub missing: usize,
    /// Tokens per text at most, special tokens included.
    pub max_tokens: usize,
    /// Whether embeddings have unit length.
    pub normalized: bool,
    /// Seconds spent tokenizing and embedding (loading excluded).
    pub seconds: f64,
    /// Texts per second.
    pub sentences_per_second: f64,
    /// The file written.
    pub out: PathBuf,
}

/// The output formats, by extension.
enum Format {
    Npy,
    Csv,
}

/// Embeds column `column` of the CSV `data` with the pretrained folder or fine-tuned run
/// `model` in batches of
/// `batch`, writing `out` (atomically); `progress(done, total)` after each batch.
pub fn embed_file(
    model: &Path,
    data: &Path,
    column: &str,
    out: &Path,
    batch: usize,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<EmbedSummary> {
    let format = match out.extension().and_then(|e| e.to_str()) {
        Some(e) if e.eq_ignore_ascii_case("npy") => Format::Npy,
        Some(e) if e.eq_ignore_ascii_case("csv") => Format::Csv,
        _ => {
            return Err(KilnError::Output {
                path: out.display().to_string(),
                message: "kiln embed writes .npy or .csv (choose by the extension)".into(),
            });
        }
    };
    if batch == 0 {
        return Err(KilnError::Invalid("--batch-size must be at least 1".into()));
    }
    // CSV or JSON Lines, as training reads them.
    let table = kiln_data::load_source_columns(
        &data.display().to_string(),
        &kiln_config::DataConfig::default(),
        None,
        &[column.to_string()],
    )?;
    let Some(index) = table.names.iter().position(|n| n == column) else {
        return Err(KilnError::Invalid(format!(
            "{}: no column \"{column}\"; the columns are {:?}",
            data.display(),
            table.names
        )));
    };
    let cells = &table.columns[index];
    let texts: Vec<String> = (0..cells.len())
        .map(|i| cells.text(i).unwrap_or_default())
        .collect();
    let missing = (0..cells.len()).filter(|&i| cells.is_missing(i)).count();
    // The data is checked before the model (tens of MB) is read.
    let device = kiln_runtime::default_device()?;
    let encoder = if model.join(kiln_runtime::run::files::MODEL_SPEC).is_file() {
        let run = kiln_runtime::run::load(model, &device)?;
        PretrainedEncoder::from_run(&run)?
    } else {
        PretrainedEncoder::load(model, &device)?
    };
    let started = Instant::now();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let embedded = encoder
        .embed_with_progress(&refs, batch, &device, progress)
        .map_err(|e| match e {
            EmbedError::NonFinite { index } => KilnError::Invalid(format!(
                "{}: the embedding of line {} is not finite",
                data.display(),
                table.lines.get(index).copied().unwrap_or(index as u64 + 2)
            )),
            EmbedError::Text(e) => KilnError::Invalid(format!("{}: {e}", data.display())),
        })?;
    let dimension = embedded.width;
    let seconds = started.elapsed().as_secs_f64();
    let bytes = match format {
        Format::Npy => npy_f32(&embedded.values, [texts.len(), dimension]),
        Format::Csv => csv_rows(&embedded.values, dimension),
    };
    kiln_runtime::fs::write_atomic(out, &bytes)?;
    Ok(EmbedSummary {
        model: model.to_path_buf(),
        rows: texts.len(),
        dimension,
        truncated: embedded.truncated,
        missing,
        max_tokens: encoder.max_tokens,
        normalized: encoder.normalize,
        seconds,
        sentences_per_second: texts.len() as f64 / seconds.max(1e-9),
        out: out.to_path_buf(),
    })
}

/// A NumPy `.npy` file (format 1.0) of little-endian float32 values, C order.
fn npy_f32(values: &[f32], [rows, cols]: [usize; 2]) -> Vec<u8> {
    let mut header =
        format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({rows}, {cols}), }}");
    // Magic (6) + version (2) + length (2) + header + '\n', padded to a multiple of 64.
    let unpadded = 10 + header.len() + 1;
    header.push_str(&" ".repeat(unpadded.next_multiple_of(64) - unpadded));
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len() + values.len() * 4);
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for v in values {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

/// A CSV of `e0..e{dim-1}` columns, one row per text, values as Rust prints f32 (shortest
/// round-trip form).
fn csv_rows(values: &[f32], dimension: usize) -> Vec<u8> {
    let mut out = String::with_capacity(values.len() * 12);
    let names: Vec<String> = (0..dimension).map(|i| format!("e{i}")).collect();
    out.push_str(&names.join(","));
    out.push('\n');
    for row in values.chunks_exact(dimension) {
        for (i, v) in row.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(&v.to_string());
        }
        out.push('\n');
    }
    out.into_bytes()
}
