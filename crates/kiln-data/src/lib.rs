//! kiln's data pipeline.
//!
//! Sources ([`load_source`]: CSV, JSON Lines, Parquet, Arrow, image folders, gzip IDX,
//! built-in sets) produce a [`Table`] of raw columns.
//! [`infer_schema`] decides each column's [`FeatureType`](kiln_config::FeatureType) and the
//! task; [`split_rows`] divides rows into train/validation/test; a [`Preprocessor`] is fitted
//! on the training rows only and turns any rows into an [`Encoded`] batch of `f32` inputs. The
//! fitted preprocessor is serialised with the model, so `predict` applies the very same
//! transforms.
#![warn(missing_docs)]

mod arrow_sink;
mod arrow_source;
mod augment;
mod builtin;
mod csv_source;
mod describe;
mod fit;
mod idx;
mod image_source;
mod infer;
mod jsonl_source;
mod preprocess;
mod split;
mod stream;
mod table;

pub use arrow_sink::{ColumnarFormat, OutputColumn, write_columnar};
pub use arrow_source::{ArrowChunks, ParquetChunks, ParquetShard, read_arrow_ipc, read_parquet};
pub use augment::ImageAugmenter;
pub use builtin::{BUILTIN_DATASETS, load_builtin};
pub use csv_source::{CsvChunks, read_csv};
pub use describe::{ColumnSummary, Description, describe};
pub use fit::{FitLimits, FitPass};
pub use idx::{IdxImages, read_idx_images, read_idx_labels};
pub use image_source::{
    IMAGE_EXTENSIONS, decode_path_column, is_flat_image_folder, read_image_files, read_image_folder,
};
pub use infer::{ColumnPlan, Schema, drop_bad_values, infer_schema};
pub use jsonl_source::{JsonlChunks, parse_jsonl};
pub use kiln_spec::InputShape;
pub use preprocess::{
    DenseSlot, Encoded, FeatureTransform, ImageInput, Preprocessor, SpecialTokens, Target,
    TargetTransform,
};
pub use split::{Split, split_rows, split_rows_streamed};
pub use stream::{StreamSource, StreamedData, TrainStream, prepare_streamed, streamable_size};
pub use table::{Column, LoadReport, Table};

use std::path::Path;

use kiln_config::{DataConfig, DataFormat};

/// Data errors. Each names the file (and line and column where there is one) and what was
/// expected.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The file cannot be opened or read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file has no data rows.
    #[error("{path}: no data rows{detail}")]
    Empty {
        /// The file.
        path: String,
        /// Extra context.
        detail: String,
    },
    /// A CSV record is malformed (field count, quoting, encoding).
    #[error("{path}, line {line}: {message}")]
    Malformed {
        /// The file.
        path: String,
        /// 1-based line.
        line: u64,
        /// What is wrong.
        message: String,
    },
    /// A value cannot be parsed as its column's type.
    #[error("{path}, line {line}, column \"{column}\": {message}")]
    BadValue {
        /// The file.
        path: String,
        /// 1-based line.
        line: u64,
        /// Column name.
        column: String,
        /// What is wrong.
        message: String,
    },
    /// A named column does not exist.
    #[error("{path}: no column named \"{column}\" (for {role}); columns are: {available}")]
    UnknownColumn {
        /// The file.
        path: String,
        /// The missing name.
        column: String,
        /// What the column was for (target, id, split, feature).
        role: &'static str,
        /// The columns that exist.
        available: String,
    },
    /// An IDX file is malformed or truncated.
    #[error("{path}: not a valid IDX file: {message}")]
    Idx {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// A value that parses but lands outside 32-bit floats once normalised with the
    /// training statistics (a request or row far from anything seen in training).
    #[error("row {row}: {feature} = {value} is too far from the training data: {detail}")]
    OutOfRange {
        /// 0-based row of the request or batch.
        row: usize,
        /// The input slot's feature (`name`, `name=category` or `name[pixel]`).
        feature: String,
        /// The raw value.
        value: f64,
        /// What overflowed.
        detail: String,
    },
    /// An image file that does not open or decode.
    #[error("{path}: cannot read the image: {message}")]
    Image {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// The data cannot be used as configured.
    #[error("{0}")]
    Invalid(String),
    /// Unknown built-in dataset.
    #[error("unknown built-in dataset \"{name}\"; available: {}", BUILTIN_DATASETS.join(", "))]
    UnknownBuiltin {
        /// The requested name.
        name: String,
    },
}

/// Result alias of this crate.
pub type Result<T, E = DataError> = std::result::Result<T, E>;

/// Loads a data source: `builtin:NAME`, an IDX prefix (`DIR/train` for
/// `DIR/train-images-idx3-ubyte.gz` and `DIR/train-labels-idx1-ubyte.gz`), a CSV, JSON
/// Lines, Parquet or Arrow IPC file, or a directory of Parquet part files (`data.format`,
/// else [`detect_format`]).
pub fn load_source(spec: &str, config: &DataConfig) -> Result<Table> {
    load_source_columns(spec, config, None, &[])
}

/// [`load_source`], reading only `columns` from a Parquet or Arrow source (the others are
/// never decoded; names the source lacks are left to the caller's checks); text formats are
/// read whole. A CSV column holding only numbers is read as numbers (as Parquet's are), except
/// `text_columns` and the config's target (`target` or `label` when none is set), id and split
/// columns: their values are names (`007`, `1.50`), kept as written.
pub fn load_source_columns(
    spec: &str,
    config: &DataConfig,
    columns: Option<&[String]>,
    text_columns: &[String],
) -> Result<Table> {
    if let Some(name) = spec.strip_prefix("builtin:") {
        return load_builtin(name);
    }
    if let Some(prefix) = idx::idx_prefix(spec) {
        return idx::load_idx_table(&prefix);
    }
    let path = Path::new(spec);
    if path.is_dir() {
        let mut table = match config.format {
            DataFormat::Images => return read_image_folder(path, config),
            DataFormat::Auto if image_source::is_image_folder(path) => {
                return read_image_folder(path, config);
            }
            DataFormat::Auto | DataFormat::Parquet => read_parquet(path, columns, config.bad_rows)?,
            other => {
                return Err(DataError::Invalid(format!(
                    "{spec} is a directory; data.format = \"{}\" reads one file",
                    format!("{other:?}").to_lowercase()
                )));
            }
        };
        // Part files' image paths are relative to their directory.
        if let Some(column) = &config.image.column {
            decode_path_column(&mut table, column, path, config)?;
        }
        return Ok(table);
    }
    let mut table = load_file(spec, path, config, columns, text_columns)?;
    if let Some(column) = &config.image.column {
        let base = path.parent().unwrap_or(Path::new(""));
        decode_path_column(&mut table, column, base, config)?;
    }
    Ok(table)
}

/// [`load_source_columns`] for one file.
fn load_file(
    spec: &str,
    path: &Path,
    config: &DataConfig,
    columns: Option<&[String]>,
    text_columns: &[String],
) -> Result<Table> {
    let head = csv_source::read_head(path);
    let format = match (config.format, &head) {
        (DataFormat::Auto, Ok(head)) => detect_format(path, head)?,
        (DataFormat::Auto, Err(_)) => {
            // A name that says which format kiln refuses is the clearer error.
            detect_format(path, &[])?
        }
        (chosen, _) => chosen,
    };
    match format {
        DataFormat::Images => Err(DataError::Invalid(format!(
            "{spec} is a file; data.format = \"images\" reads a folder of class folders"
        ))),
        DataFormat::Parquet => read_parquet(path, columns, config.bad_rows),
        DataFormat::Arrow => read_arrow_ipc(path, columns, config.bad_rows),
        DataFormat::Jsonl => parse_jsonl(
            std::io::BufReader::new(csv_source::decompressed(path)?),
            spec,
            config.bad_rows,
            &named_columns(config, text_columns),
        ),
        DataFormat::Csv | DataFormat::Auto => {
            let text_columns = named_columns(config, text_columns);
            csv_source::parse_csv(
                csv_source::decompressed(path)?,
                &head?,
                csv_source::plain_size(path),
                spec,
                csv_source::CsvOptions {
                    delimiter: config.delimiter,
                    bad_rows: config.bad_rows,
                    text_columns: &text_columns,
                },
            )
        }
    }
}

/// A source read a chunk of rows at a time: CSV and JSON Lines files (also compressed),
/// Parquet (a file or a directory of part files) and Arrow IPC files stream; other formats
/// (an Arrow IPC stream, images, built-in sets) come whole, as one chunk.
pub enum TableChunks {
    /// JSON Lines, line by line.
    Jsonl(Box<JsonlChunks>),
    /// Parquet record batches, as they are decoded.
    Parquet(Box<ParquetChunks>),
    /// An Arrow IPC file's record batches.
    Arrow(Box<ArrowChunks>),
    /// A CSV file, read as it goes; `Some` base folder when a column of image paths is decoded
    /// chunk by chunk.
    Csv(Box<CsvChunks>, Option<std::path::PathBuf>, DataConfig),
    /// The whole table (taken by the first call).
    Whole(Option<Table>),
}

impl TableChunks {
    /// The next chunk of at most `max_rows` rows (a whole source gives all its rows at once),
    /// or `None` at the end.
    pub fn next_chunk(&mut self, max_rows: usize) -> Result<Option<Table>> {
        match self {
            TableChunks::Csv(chunks, base, config) => {
                let Some(mut table) = chunks.next_chunk(max_rows)? else {
                    return Ok(None);
                };
                if let (Some(base), Some(column)) = (base.as_deref(), &config.image.column)
                    && table.num_rows() > 0
                {
                    decode_path_column(&mut table, column, base, config)?;
                }
                Ok(Some(table))
            }
            TableChunks::Parquet(chunks) => chunks.next_chunk(max_rows),
            TableChunks::Arrow(chunks) => chunks.next_chunk(max_rows),
            TableChunks::Jsonl(chunks) => chunks.next_chunk(max_rows),
            TableChunks::Whole(table) => Ok(table.take()),
        }
    }

    /// Whether the source is read as it goes (not held whole).
    pub fn streams(&self) -> bool {
        !matches!(self, TableChunks::Whole(_))
    }
}

/// [`load_source_columns`], a chunk at a time where the format allows (see [`TableChunks`]).
pub fn source_chunks(
    spec: &str,
    config: &DataConfig,
    columns: Option<&[String]>,
    text_columns: &[String],
) -> Result<TableChunks> {
    let path = Path::new(spec);
    let named = !spec.starts_with("builtin:") && idx::idx_prefix(spec).is_none();
    let parquet_parts = named
        && path.is_dir()
        && matches!(config.format, DataFormat::Auto | DataFormat::Parquet)
        && !image_source::is_image_folder(path);
    if parquet_parts && config.image.column.is_none() {
        let chunks = ParquetChunks::open(path, columns, config.bad_rows)?;
        return Ok(TableChunks::Parquet(Box::new(chunks)));
    }
    if named && path.is_file() {
        let head = csv_source::read_head(path)?;
        let format = match config.format {
            DataFormat::Auto => detect_format(path, &head)?,
            chosen => chosen,
        };
        if format == DataFormat::Parquet && config.image.column.is_none() {
            let chunks = ParquetChunks::open(path, columns, config.bad_rows)?;
            return Ok(TableChunks::Parquet(Box::new(chunks)));
        }
        if format == DataFormat::Arrow
            && config.image.column.is_none()
            && let Some(chunks) = ArrowChunks::open(path, columns, config.bad_rows)?
        {
            return Ok(TableChunks::Arrow(Box::new(chunks)));
        }
        if format == DataFormat::Jsonl && config.image.column.is_none() {
            // Every chunk has the columns asked for (missing where a chunk lacks the field),
            // except the names a prediction's input may lack (target, id, split).
            let optional = named_columns(config, &[]);
            let always: Vec<String> = columns
                .unwrap_or(&[])
                .iter()
                .filter(|c| !optional.contains(c))
                .cloned()
                .collect();
            let chunks = JsonlChunks::new(
                Box::new(std::io::BufReader::new(csv_source::decompressed(path)?)),
                spec,
                config.bad_rows,
                &named_columns(config, text_columns),
                &always,
            );
            return Ok(TableChunks::Jsonl(Box::new(chunks)));
        }
        if format == DataFormat::Csv {
            let text_columns = named_columns(config, text_columns);
            let chunks = CsvChunks::open(
                csv_source::decompressed(path)?,
                &head,
                spec,
                csv_source::CsvOptions {
                    delimiter: config.delimiter,
                    bad_rows: config.bad_rows,
                    text_columns: &text_columns,
                },
            )?;
            let base = config
                .image
                .column
                .as_ref()
                .map(|_| path.parent().unwrap_or(Path::new("")).to_path_buf());
            return Ok(TableChunks::Csv(Box::new(chunks), base, config.clone()));
        }
    }
    load_source_columns(spec, config, columns, text_columns).map(|t| TableChunks::Whole(Some(t)))
}

/// `extra` and the config's target (`target` and `label` when none is set), id and split
/// columns: those a text source keeps as written whatever they hold.
pub(crate) fn named_columns(config: &DataConfig, extra: &[String]) -> Vec<String> {
    let mut names = extra.to_vec();
    match &config.target {
        Some(target) => names.push(target.clone()),
        None => names.extend(["target", "label"].map(String::from)),
    }
    names.extend(
        config
            .id_column
            .iter()
            .chain(&config.split.column)
            .chain(&config.image.column)
            .cloned(),
    );
    names
}

/// The format of `path` from its extension and `head`, its first (decompressed) bytes:
/// Parquet (`.parquet`, `.pq`, or `PAR1`), Arrow IPC / Feather v2 (`.arrow`, `.feather`,
/// `.ipc`, `.arrows`, or `ARROW1`), JSON Lines (`.jsonl`, `.ndjson`, `.json`, or a first line
/// that opens an object), CSV otherwise. Formats kiln does not read (spreadsheets, zip, other
/// binary files, a JSON array, a compressed file under the wrong name) are errors saying what
/// the file is, never a CSV parse of it.
pub fn detect_format(path: &Path, head: &[u8]) -> Result<DataFormat> {
    let name = path.to_string_lossy().to_lowercase();
    let compressed = [".gz", ".zst", ".zstd"]
        .iter()
        .find_map(|suffix| name.strip_suffix(suffix));
    let name = compressed.unwrap_or(&name);
    let extension = name.rsplit_once('.').map_or("", |(_, e)| e);
    let refuse = |what: &str, hint: &str| {
        Err(DataError::Invalid(format!(
            "{}: {what}; kiln reads CSV/TSV (also .gz, .zst), JSON Lines, Parquet, Arrow IPC / Feather v2, folders of class folders of images, gzip IDX images and builtin:NAME{hint}",
            path.display()
        )))
    };
    match (extension, compressed.is_some()) {
        ("parquet" | "pq", false) => return Ok(DataFormat::Parquet),
        ("arrow" | "feather" | "ipc" | "arrows", false) => return Ok(DataFormat::Arrow),
        ("parquet" | "pq" | "arrow" | "feather" | "ipc" | "arrows", true) => {
            return refuse(
                "a compressed Parquet or Arrow file",
                "; these formats compress inside the file: decompress it first",
            );
        }
        ("xlsx" | "xls" | "xlsm" | "ods", _) => {
            return refuse(
                "a spreadsheet",
                &format!(
                    "; convert it first, e.g. python3 -c \"import pandas as pd; pd.read_excel('{}').to_csv('data.csv', index=False)\"",
                    path.display()
                ),
            );
        }
        _ => {}
    }
    if head.starts_with(b"PAR1") {
        return Ok(DataFormat::Parquet);
    }
    if head.starts_with(b"ARROW1") || head.starts_with(b"FEA1") {
        return Ok(DataFormat::Arrow);
    }
    let magic: [(&[u8], &str, &str); 3] = [
        (b"PK\x03\x04", "a zip archive (or a spreadsheet)", ""),
        (
            b"\x28\xb5\x2f\xfd",
            "zstd-compressed",
            "; name it NAME.csv.zst",
        ),
        (b"\x1f\x8b", "gzip-compressed", "; name it NAME.csv.gz"),
    ];
    if let Some((_, what, hint)) = magic.iter().find(|(m, _, _)| head.starts_with(m)) {
        return refuse(what, hint);
    }
    if head.iter().take(8192).any(|&b| b == 0) {
        return refuse("binary data, not text", "");
    }
    let text = head.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(head);
    let start = text.iter().find(|b| !b.is_ascii_whitespace());
    match (extension, start) {
        (_, Some(b'[')) if matches!(extension, "json" | "jsonl" | "ndjson") => refuse(
            "one JSON array, not JSON Lines (one object per line)",
            "; convert it with jq -c '.[]' FILE.json > FILE.jsonl",
        ),
        ("json" | "jsonl" | "ndjson", _) | (_, Some(b'{')) => Ok(DataFormat::Jsonl),
        _ => Ok(DataFormat::Csv),
    }
}
