//! Parquet and Arrow IPC (Feather v2) sources: typed Arrow columns into kiln's [`Table`].
//!
//! Numbers stay numbers (integers beyond 2^53 stay exact, as text), strings and
//! dictionary-encoded categories become text, booleans `true`/`false`, dates and timestamps
//! ISO 8601 text, structs are flattened into dotted names (`user.age`, as for JSON Lines).
//! Lists, maps and binary columns are refused, naming the column. A float `NaN` (how pandas
//! writes a missing float) is a missing value; an infinity is a bad value, like in a CSV.

use std::collections::HashSet;
use std::fs::File;
use std::path::{Path, PathBuf};

use arrow_array::builder::{Float64Builder, Int64Builder};
use arrow_array::cast::AsArray;
use arrow_array::types::{
    Date32Type, Date64Type, Decimal128Type, DecimalType, Float16Type, Float32Type, Float64Type,
    Int8Type, Int16Type, Int32Type, Int64Type, TimestampMicrosecondType, TimestampMillisecondType,
    TimestampNanosecondType, TimestampSecondType, UInt8Type, UInt16Type, UInt32Type, UInt64Type,
};
use arrow_array::{Array, ArrayRef, RecordBatch, RecordBatchReader};
use arrow_buffer::NullBuffer;
use arrow_schema::{DataType, Fields, SchemaRef, TimeUnit};
use kiln_config::BadRows;
use parquet::arrow::arrow_reader::ParquetRecordBatchReader;

use crate::table::{Column, LoadReport, Table, TextBuilder};
use crate::{DataError, Result};

/// Rows per record batch while reading (a Parquet row group is read in such slices).
const BATCH_ROWS: usize = 64 * 1024;

/// The most rows the footers may pre-size columns for.
const MAX_ROWS_HINT: usize = 1 << 27;

/// Largest integer an `f64` holds exactly.
const EXACT_INTEGER: i64 = 1 << 53;

/// Reads a Parquet file, or every `*.parquet` file of a directory (part files, in name
/// order, one schema), keeping only `columns` when given (column projection: the other
/// columns are never decoded).
pub fn read_parquet(path: &Path, columns: Option<&[String]>, bad_rows: BadRows) -> Result<Table> {
    let files = parquet_files(path)?;
    let origin = path.display().to_string();
    // Every file's row count is in its footer: the columns are sized once, not by doubling.
    let rows: usize = files
        .iter()
        .filter_map(|f| {
            let file = File::open(f).ok()?;
            let meta = parquet::file::metadata::ParquetMetaDataReader::new()
                .parse_and_finish(&file)
                .ok()?;
            usize::try_from(meta.file_metadata().num_rows()).ok()
        })
        .fold(0usize, usize::saturating_add)
        // A footer is checked only when its file is read: a count too large to be true
        // sizes nothing.
        .min(MAX_ROWS_HINT);
    let mut table = TableBuilder::new(&origin, bad_rows, rows);
    for file in &files {
        let name = file.display().to_string();
        let reader = open_parquet(file, columns)?;
        table.start_file(&name, &reader.schema())?;
        for batch in reader {
            table.push(&batch.map_err(|e| parquet_error(&name, &e))?)?;
        }
    }
    table.finish("no rows")
}

/// A Parquet file (or directory of part files) read a chunk of record batches at a time, for
/// `kiln predict` and `kiln eval` over files larger than memory.
pub struct ParquetChunks {
    origin: String,
    files: Vec<PathBuf>,
    next_file: usize,
    /// The file being read, its reader, and the rows already taken from it.
    current: Option<(String, ParquetRecordBatchReader, usize)>,
    columns: Option<Vec<String>>,
    bad_rows: BadRows,
    rows_done: usize,
    chunks: usize,
    /// The first file's columns and their types: every later file must have the same.
    schema: Option<(String, Vec<(String, DataType)>)>,
}

impl ParquetChunks {
    /// The files `path` names (see [`read_parquet`]); nothing is decoded yet.
    pub fn open(path: &Path, columns: Option<&[String]>, bad_rows: BadRows) -> Result<Self> {
        Ok(ParquetChunks {
            origin: path.display().to_string(),
            files: parquet_files(path)?,
            next_file: 0,
            current: None,
            columns: columns.map(<[String]>::to_vec),
            bad_rows,
            rows_done: 0,
            chunks: 0,
            schema: None,
        })
    }

    /// The next chunk: whole record batches (64 Ki rows each) until at least `max_rows`
    /// rows, or `None` at the end. A source without rows is the error [`read_parquet`] gives.
    pub fn next_chunk(&mut self, max_rows: usize) -> Result<Option<Table>> {
        let mut table = TableBuilder::new(&self.origin, self.bad_rows, 0);
        table.line_offset = self.rows_done as u64;
        let mut got = 0;
        let mut started = false;
        while got < max_rows.max(1) {
            if self.current.is_none() {
                let Some(file) = self.files.get(self.next_file) else {
                    break;
                };
                self.next_file += 1;
                let name = file.display().to_string();
                let reader = open_parquet(file, self.columns.as_deref())?;
                let schema = reader.schema();
                let columns: Vec<(String, DataType)> = leaves(schema.fields(), "")
                    .into_iter()
                    .map(|(n, path)| {
                        let t = leaf_type(schema.fields(), &path).clone();
                        (n, t)
                    })
                    .collect();
                match &self.schema {
                    None => self.schema = Some((name.clone(), columns)),
                    Some((first, expected)) if *expected != columns => {
                        return Err(DataError::Invalid(format!(
                            "{name}: its columns differ from {first}'s; part files must have the same schema"
                        )));
                    }
                    Some(_) => {}
                }
                self.current = Some((name, reader, 0));
                started = false;
            }
            let (name, reader, taken) = self.current.as_mut().expect("a reader");
            if !started {
                table.start_file(name, &reader.schema())?;
                table.file_offset = *taken;
                started = true;
            }
            match reader.next() {
                Some(batch) => {
                    let batch = batch.map_err(|e| parquet_error(name, &e))?;
                    table.push(&batch)?;
                    *taken += batch.num_rows();
                    got += batch.num_rows();
                }
                None => self.current = None,
            }
        }
        self.chunks += 1;
        if got == 0 && self.chunks > 1 {
            return Ok(None);
        }
        self.rows_done += got;
        table.finish("no rows").map(Some)
    }
}

/// A row group of a Parquet source: what a streamed training run reads (and shuffles) as
/// one piece.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParquetShard {
    /// Index of its file among the source's files.
    pub file: usize,
    /// Row group within the file.
    pub group: usize,
    /// Its rows.
    pub rows: usize,
    /// Rows of the source before it (its rows are numbered on from there).
    pub first_row: u64,
    /// Rows of its file before it.
    pub file_row: usize,
    /// Its columns' size, uncompressed (from the footer).
    pub bytes: u64,
}

/// The Parquet files `path` names and their row groups, from the footers.
pub(crate) fn parquet_shards(path: &Path) -> Result<(Vec<PathBuf>, Vec<ParquetShard>)> {
    let files = parquet_files(path)?;
    let mut shards = Vec::new();
    let mut first_row = 0u64;
    for (index, file) in files.iter().enumerate() {
        let name = file.display().to_string();
        let reader = File::open(file).map_err(|source| DataError::Io {
            path: name.clone(),
            source,
        })?;
        let meta = parquet::file::metadata::ParquetMetaDataReader::new()
            .parse_and_finish(&reader)
            .map_err(|e| parquet_error(&name, &e))?;
        let mut file_row = 0usize;
        for (group, g) in meta.row_groups().iter().enumerate() {
            let rows = usize::try_from(g.num_rows()).map_err(|_| {
                DataError::Invalid(format!(
                    "{name}: row group {group} claims {} rows",
                    g.num_rows()
                ))
            })?;
            if rows == 0 {
                continue;
            }
            shards.push(ParquetShard {
                file: index,
                group,
                rows,
                first_row,
                file_row,
                bytes: u64::try_from(g.total_byte_size()).unwrap_or(0),
            });
            first_row += rows as u64;
            file_row += rows;
        }
    }
    Ok((files, shards))
}

/// Reads one row group of `file`, a record batch (64 Ki rows) at a time, handing each to
/// `visit` as a table whose row numbers count from the start of the source.
pub(crate) fn read_parquet_shard(
    origin: &str,
    file: &Path,
    shard: &ParquetShard,
    columns: Option<&[String]>,
    bad_rows: BadRows,
    visit: &mut dyn FnMut(Table) -> Result<()>,
) -> Result<()> {
    let name = file.display().to_string();
    let reader = open_parquet_groups(file, columns, Some(vec![shard.group]))?;
    let schema = reader.schema();
    let mut taken = 0usize;
    for batch in reader {
        let batch = batch.map_err(|e| parquet_error(&name, &e))?;
        let mut table = TableBuilder::new(origin, bad_rows, batch.num_rows());
        table.line_offset = shard.first_row + taken as u64;
        table.start_file(&name, &schema)?;
        table.file_offset = shard.file_row + taken;
        table.push(&batch)?;
        taken += batch.num_rows();
        visit(table.finish("no rows")?)?;
    }
    Ok(())
}

/// A Parquet file's error, with a hint for a codec kiln was built without.
fn parquet_error(name: &str, e: &dyn std::fmt::Display) -> DataError {
    let e = e.to_string();
    match e.split("Disabled feature at compile time: ").nth(1) {
        Some(codec) => DataError::Invalid(format!(
            "{name}: its pages are {codec}-compressed, a codec kiln does not read; write it with snappy, zstd, lz4 or gzip (pyarrow: pq.write_table(table, path, compression=\"zstd\"))"
        )),
        None => DataError::Invalid(format!("{name}: not a readable Parquet file: {e}")),
    }
}

/// A reader of `file`'s record batches, decoding only `columns` when given.
fn open_parquet(file: &Path, columns: Option<&[String]>) -> Result<ParquetRecordBatchReader> {
    open_parquet_groups(file, columns, None)
}

/// [`open_parquet`] of the row groups `groups` only (all when `None`).
fn open_parquet_groups(
    file: &Path,
    columns: Option<&[String]>,
    groups: Option<Vec<usize>>,
) -> Result<ParquetRecordBatchReader> {
    let name = file.display().to_string();
    let reader = File::open(file).map_err(|source| DataError::Io {
        path: name.clone(),
        source,
    })?;
    let builder = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(reader)
        .map_err(|e| parquet_error(&name, &e))?;
    let mask = match columns {
        Some(wanted) => {
            let roots = projection(builder.schema(), wanted);
            parquet::arrow::ProjectionMask::roots(builder.parquet_schema(), roots)
        }
        None => parquet::arrow::ProjectionMask::all(),
    };
    let builder = match groups {
        Some(groups) => builder.with_row_groups(groups),
        None => builder,
    };
    builder
        .with_projection(mask)
        .with_batch_size(BATCH_ROWS)
        .build()
        .map_err(|e| parquet_error(&name, &e))
}

/// Reads an Arrow IPC file (Feather v2) or stream, keeping only `columns` when given.
pub fn read_arrow_ipc(path: &Path, columns: Option<&[String]>, bad_rows: BadRows) -> Result<Table> {
    let name = path.display().to_string();
    let open = || {
        File::open(path).map_err(|source| DataError::Io {
            path: name.clone(),
            source,
        })
    };
    let bad = |e: &dyn std::fmt::Display| {
        DataError::Invalid(format!(
            "{name}: not a readable Arrow IPC / Feather file: {e}"
        ))
    };
    let mut head = [0u8; 6];
    {
        use std::io::Read;
        let n = open()?.read(&mut head).map_err(|source| DataError::Io {
            path: name.clone(),
            source,
        })?;
        if head[..n].starts_with(b"FEA1") {
            return Err(DataError::Invalid(format!(
                "{name}: a Feather v1 file; kiln reads Feather v2 (Arrow IPC): re-save it with pyarrow.feather.write_feather(table, path, version=2)"
            )));
        }
    }
    let mut table = TableBuilder::new(&name, bad_rows, 0);
    if head.starts_with(b"ARROW1") {
        let schema = arrow_ipc::reader::FileReader::try_new(open()?, None)
            .map_err(|e| bad(&e))?
            .schema();
        let projection = columns.map(|c| projection(&schema, c));
        let reader =
            arrow_ipc::reader::FileReader::try_new(open()?, projection).map_err(|e| bad(&e))?;
        table.start_file(&name, &reader.schema())?;
        for batch in reader {
            table.push(&batch.map_err(|e| bad(&e))?)?;
        }
    } else {
        let file = std::io::BufReader::new(open()?);
        let schema = arrow_ipc::reader::StreamReader::try_new(file, None)
            .map_err(|e| bad(&e))?
            .schema();
        let projection = columns.map(|c| projection(&schema, c));
        let file = std::io::BufReader::new(open()?);
        let reader =
            arrow_ipc::reader::StreamReader::try_new(file, projection).map_err(|e| bad(&e))?;
        table.start_file(&name, &reader.schema())?;
        for batch in reader {
            table.push(&batch.map_err(|e| bad(&e))?)?;
        }
    }
    table.finish("no rows")
}

/// An Arrow IPC file (Feather v2) read a run of record batches at a time: `kiln predict` and
/// `kiln eval` over files larger than memory, and the shards of a streamed training run.
pub struct ArrowChunks {
    origin: String,
    reader: arrow_ipc::reader::FileReader<std::io::BufReader<File>>,
    bad_rows: BadRows,
    /// Rows of the file before the next row.
    rows_done: u64,
    /// The next batch to read.
    next_batch: usize,
    /// A batch read but not all taken, and the rows of it taken (chunks end inside a batch).
    pending: Option<(RecordBatch, usize)>,
    chunks: usize,
}

impl ArrowChunks {
    /// Opens `path`, decoding only `columns` when given; `None` for the IPC stream format,
    /// which has no index to read it from the middle.
    pub fn open(
        path: &Path,
        columns: Option<&[String]>,
        bad_rows: BadRows,
    ) -> Result<Option<Self>> {
        let name = path.display().to_string();
        let file = File::open(path).map_err(|source| DataError::Io {
            path: name.clone(),
            source,
        })?;
        let bad = |e: &dyn std::fmt::Display| {
            DataError::Invalid(format!(
                "{name}: not a readable Arrow IPC / Feather file: {e}"
            ))
        };
        let mut head = [0u8; 6];
        {
            use std::io::Read;
            let n = (&file).read(&mut head).map_err(|source| DataError::Io {
                path: name.clone(),
                source,
            })?;
            if !head[..n].starts_with(b"ARROW1") {
                return Ok(None);
            }
        }
        let schema = arrow_ipc::reader::FileReader::try_new_buffered(
            File::open(path).map_err(|source| DataError::Io {
                path: name.clone(),
                source,
            })?,
            None,
        )
        .map_err(|e| bad(&e))?
        .schema();
        let projection = columns.map(|c| projection(&schema, c));
        let reader = arrow_ipc::reader::FileReader::try_new_buffered(file, projection)
            .map_err(|e| bad(&e))?;
        Ok(Some(ArrowChunks {
            origin: name,
            reader,
            bad_rows,
            rows_done: 0,
            next_batch: 0,
            pending: None,
            chunks: 0,
        }))
    }

    /// Reads on from row `offset` of batch `index`, row `first_row` of the file (a
    /// [`position`](Self::position)).
    pub(crate) fn seek(&mut self, index: usize, offset: usize, first_row: u64) -> Result<()> {
        self.reader.set_index(index).map_err(|e| {
            DataError::Invalid(format!("{}: record batch {index}: {e}", self.origin))
        })?;
        self.next_batch = index;
        self.pending = None;
        if offset > 0 {
            let batch = self.read_batch()?.ok_or_else(|| {
                DataError::Invalid(format!("{}: no record batch {index}", self.origin))
            })?;
            self.pending = Some((batch, offset));
        }
        self.rows_done = first_row;
        // Not the first chunk of the file: an empty read is no error.
        self.chunks = self.chunks.max(1);
        Ok(())
    }

    /// Where the next row is: its batch, its row within the batch, and its row of the file
    /// (1-based).
    pub(crate) fn position(&self) -> (u64, usize, u64) {
        match &self.pending {
            Some((_, taken)) => ((self.next_batch - 1) as u64, *taken, self.rows_done + 1),
            None => (self.next_batch as u64, 0, self.rows_done + 1),
        }
    }

    fn read_batch(&mut self) -> Result<Option<RecordBatch>> {
        let Some(batch) = self.reader.next() else {
            return Ok(None);
        };
        self.next_batch += 1;
        batch.map(Some).map_err(|e| {
            DataError::Invalid(format!(
                "{}: not a readable Arrow IPC / Feather file: {e}",
                self.origin
            ))
        })
    }

    /// The next chunk of at most `max_rows` rows (a batch is cut where a chunk ends), or
    /// `None` at the end. A file without rows is the error [`read_arrow_ipc`] gives.
    pub fn next_chunk(&mut self, max_rows: usize) -> Result<Option<Table>> {
        let mut table = TableBuilder::new(&self.origin, self.bad_rows, 0);
        table.line_offset = self.rows_done;
        table.start_file(&self.origin, &self.reader.schema())?;
        table.file_offset = self.rows_done as usize;
        let mut got = 0;
        let max_rows = max_rows.max(1);
        while got < max_rows {
            let (batch, taken) = match self.pending.take() {
                Some(pending) => pending,
                None => match self.read_batch()? {
                    Some(batch) => (batch, 0),
                    None => break,
                },
            };
            let take = (batch.num_rows() - taken).min(max_rows - got);
            table.push(&batch.slice(taken, take))?;
            got += take;
            if taken + take < batch.num_rows() {
                self.pending = Some((batch, taken + take));
            }
        }
        self.chunks += 1;
        if got == 0 && self.chunks > 1 {
            return Ok(None);
        }
        self.rows_done += got as u64;
        table.finish("no rows").map(Some)
    }
}

/// The Parquet files `path` names: itself, or a directory's `*.parquet` files (Spark's and
/// pandas' part files; `_SUCCESS` and hidden files are ignored).
fn parquet_files(path: &Path) -> Result<Vec<PathBuf>> {
    if !path.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let io = |source| DataError::Io {
        path: path.display().to_string(),
        source,
    };
    let mut files = Vec::new();
    for entry in std::fs::read_dir(path).map_err(io)? {
        let p = entry.map_err(io)?.path();
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.starts_with(['.', '_']) {
            continue;
        }
        if p.is_file() && name.to_lowercase().ends_with(".parquet") {
            files.push(p);
        }
    }
    files.sort();
    if files.is_empty() {
        return Err(DataError::Invalid(format!(
            "{}: a directory without *.parquet files; kiln reads a data file, a directory of Parquet part files, or IDX images by their prefix such as DIR/train",
            path.display()
        )));
    }
    Ok(files)
}

/// Indices of the top-level fields holding `wanted` (a dotted name selects its struct);
/// names the schema lacks select nothing.
fn projection(schema: &SchemaRef, wanted: &[String]) -> Vec<usize> {
    let mut roots: Vec<usize> = wanted
        .iter()
        .filter_map(|name| {
            schema
                .fields()
                .iter()
                .position(|f| f.name() == name)
                .or_else(|| {
                    schema.fields().iter().position(|f| {
                        matches!(f.data_type(), DataType::Struct(_))
                            && name.starts_with(&format!("{}.", f.name()))
                    })
                })
        })
        .collect();
    roots.sort_unstable();
    roots.dedup();
    roots
}

/// Leaf columns of `fields`: dotted name and the child index path.
fn leaves(fields: &Fields, prefix: &str) -> Vec<(String, Vec<usize>)> {
    let mut out = Vec::new();
    for (i, f) in fields.iter().enumerate() {
        let name = format!("{prefix}{}", f.name());
        match f.data_type() {
            DataType::Struct(children) => {
                for (n, mut path) in leaves(children, &format!("{name}.")) {
                    path.insert(0, i);
                    out.push((n, path));
                }
            }
            _ => out.push((name, vec![i])),
        }
    }
    out
}

/// How one leaf column is kept.
enum Builder {
    Text(TextBuilder),
    Number(Float64Builder),
    /// 64-bit integers: numbers if all fit an `f64` exactly, else text.
    Integer(Int64Builder),
    /// Unsigned integers above `i64::MAX` are text from the start.
    Unsigned(TextBuilder),
}

/// Collects record batches of one or more files into a table.
struct TableBuilder {
    origin: String,
    bad_rows: BadRows,
    names: Vec<String>,
    paths: Vec<Vec<usize>>,
    types: Vec<DataType>,
    builders: Vec<Builder>,
    rows: usize,
    rows_hint: usize,
    /// Rows with a bad value (skipped under `bad_rows = "skip"`).
    bad: HashSet<usize>,
    report: LoadReport,
    file: String,
    /// The table row where the current file starts (errors count rows within a file).
    file_start: usize,
    /// Rows of the current file read by earlier chunks.
    file_offset: usize,
    /// Rows of the source read by earlier chunks (added to the table's row numbers).
    line_offset: u64,
    started: bool,
}

impl TableBuilder {
    /// `rows_hint`: the rows expected (0 if unknown), to size number columns.
    fn new(origin: &str, bad_rows: BadRows, rows_hint: usize) -> Self {
        TableBuilder {
            origin: origin.into(),
            bad_rows,
            names: Vec::new(),
            paths: Vec::new(),
            types: Vec::new(),
            builders: Vec::new(),
            rows: 0,
            rows_hint,
            bad: HashSet::new(),
            report: LoadReport::default(),
            file: String::new(),
            file_start: 0,
            file_offset: 0,
            line_offset: 0,
            started: false,
        }
    }

    /// Sets the columns from the first file's schema; later files must have the same.
    fn start_file(&mut self, file: &str, schema: &SchemaRef) -> Result<()> {
        let found = leaves(schema.fields(), "");
        self.file = file.into();
        self.file_start = self.rows;
        self.file_offset = 0;
        if let Some(name) = found
            .iter()
            .enumerate()
            .find_map(|(i, (n, _))| found[..i].iter().any(|(m, _)| m == n).then_some(n))
        {
            return Err(DataError::Invalid(format!(
                "{file}: two columns are named \"{name}\" (a struct field flattened as a.b can meet a column of that name)"
            )));
        }
        if !self.started {
            self.started = true;
            for (name, path) in found {
                let data_type = leaf_type(schema.fields(), &path);
                let builder = match data_type {
                    DataType::Int8
                    | DataType::Int16
                    | DataType::Int32
                    | DataType::UInt8
                    | DataType::UInt16
                    | DataType::UInt32
                    | DataType::Float16
                    | DataType::Float32
                    | DataType::Float64 => {
                        Builder::Number(Float64Builder::with_capacity(self.rows_hint))
                    }
                    // Up to 15 digits a decimal is exact as an f64; wider ones stay exact as text.
                    DataType::Decimal128(precision, _) if *precision > 15 => {
                        Builder::Text(TextBuilder::new())
                    }
                    DataType::Decimal128(..) => {
                        Builder::Number(Float64Builder::with_capacity(self.rows_hint))
                    }
                    DataType::Int64 | DataType::UInt64 => {
                        Builder::Integer(Int64Builder::with_capacity(self.rows_hint))
                    }
                    DataType::Utf8
                    | DataType::LargeUtf8
                    | DataType::Utf8View
                    | DataType::Boolean
                    | DataType::Null
                    | DataType::Date32
                    | DataType::Date64
                    | DataType::Timestamp(..) => Builder::Text(TextBuilder::new()),
                    DataType::Dictionary(_, values)
                        if matches!(
                            values.as_ref(),
                            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
                        ) =>
                    {
                        Builder::Text(TextBuilder::new())
                    }
                    other => {
                        return Err(DataError::Invalid(format!(
                            "{file}: column \"{name}\" is of Arrow type {other}; kiln reads numbers, strings, categories (dictionaries of strings), booleans, dates, timestamps and structs (as dotted names). List the columns you need under [[features]] so the others are not read"
                        )));
                    }
                };
                self.names.push(name);
                self.paths.push(path);
                self.types.push(data_type.clone());
                self.builders.push(builder);
            }
            return Ok(());
        }
        let names: Vec<&String> = found.iter().map(|(n, _)| n).collect();
        let same_types = found
            .iter()
            .zip(self.types.iter().zip(&self.paths))
            .all(|((_, path), (t, p))| path == p && leaf_type(schema.fields(), path) == t);
        if names.len() != self.names.len()
            || names.iter().zip(&self.names).any(|(a, b)| *a != b)
            || !same_types
        {
            let describe = |names: Vec<String>| names.join(", ");
            return Err(DataError::Invalid(format!(
                "{file}: its columns differ from the first file's; every part must have the same schema (first: {}; this one: {})",
                describe(
                    self.names
                        .iter()
                        .zip(&self.types)
                        .map(|(n, t)| format!("{n}: {t}"))
                        .collect()
                ),
                describe(
                    found
                        .iter()
                        .map(|(n, p)| format!("{n}: {}", leaf_type(schema.fields(), p)))
                        .collect()
                ),
            )));
        }
        Ok(())
    }

    /// Appends a batch's rows.
    fn push(&mut self, batch: &RecordBatch) -> Result<()> {
        let first_row = self.rows;
        // Rows in errors count from the start of their file.
        let in_file = first_row - self.file_start + self.file_offset;
        for c in 0..self.builders.len() {
            let (array, nulls) = leaf_array(batch, &self.paths[c]);
            let name = self.names[c].clone();
            let mut bad_value = |row: usize, message: String| -> Result<()> {
                match self.bad_rows {
                    BadRows::Error => Err(DataError::BadValue {
                        path: self.file.clone(),
                        line: (in_file + row + 1) as u64,
                        column: name.clone(),
                        message: format!(
                            "{message} (set data.bad_rows = \"skip\" to drop such rows)"
                        ),
                    }),
                    BadRows::Skip => {
                        if self.bad.insert(first_row + row) {
                            self.report.skip(
                                (in_file + row + 1) as u64,
                                &format!("{}, column \"{name}\": {message}", self.file),
                            );
                        }
                        Ok(())
                    }
                }
            };
            let valid = |i: usize| nulls.as_ref().is_none_or(|n| n.is_valid(i));
            match &mut self.builders[c] {
                Builder::Number(b) => {
                    for i in 0..array.len() {
                        match valid(i).then(|| number(&array, i)).flatten() {
                            Some(v) if v.is_nan() => b.append_null(),
                            Some(v) if v.is_infinite() => {
                                bad_value(i, format!("{v} is not a finite number"))?;
                                b.append_null();
                            }
                            v => b.append_option(v),
                        }
                    }
                }
                Builder::Integer(b) => {
                    for i in 0..array.len() {
                        let v = valid(i).then(|| integer(&array, i)).flatten();
                        match v {
                            Some(Err(big)) => {
                                // Above i64::MAX: this column is text from here on.
                                let mut text = integers_as_text(b);
                                text.append(Some(&big.to_string()));
                                for j in i + 1..array.len() {
                                    let v = valid(j).then(|| integer(&array, j)).flatten();
                                    text.append(v.map(integer_text).as_deref());
                                }
                                self.builders[c] = Builder::Unsigned(text);
                                break;
                            }
                            Some(Ok(v)) => b.append_value(v),
                            None => b.append_null(),
                        }
                    }
                }
                Builder::Unsigned(b) => {
                    for i in 0..array.len() {
                        let v = valid(i).then(|| integer(&array, i)).flatten();
                        b.append(v.map(integer_text).as_deref());
                    }
                }
                Builder::Text(b) => append_text(b, &array, nulls.as_ref()),
            }
        }
        self.rows += batch.num_rows();
        Ok(())
    }

    fn finish(self, none: &str) -> Result<Table> {
        let mut report = self.report;
        report.rows_read = self.rows;
        let origin = self.origin.clone();
        let columns: Vec<Column> = self
            .builders
            .into_iter()
            .zip(&self.names)
            .map(|(b, name)| match b {
                Builder::Text(b) | Builder::Unsigned(b) => b.finish(&origin, name),
                Builder::Number(mut b) => Ok(Column::Number(b.finish())),
                Builder::Integer(mut b) => {
                    let values = b.finish();
                    if values
                        .iter()
                        .flatten()
                        .all(|v| (-EXACT_INTEGER..=EXACT_INTEGER).contains(&v))
                    {
                        Ok(Column::numbers(values.iter().map(|v| v.map(|v| v as f64))))
                    } else {
                        Ok(Column::texts(
                            values.iter().map(|v| v.map(|v| v.to_string())),
                        ))
                    }
                }
            })
            .collect::<Result<_>>()?;
        let lines: Vec<u64> = (1..=self.rows as u64)
            .map(|l| l + self.line_offset)
            .collect();
        if self.rows == 0 {
            return Err(DataError::Empty {
                path: self.origin,
                detail: format!(" ({none})"),
            });
        }
        let mut table = Table {
            origin: self.origin,
            names: self.names,
            columns,
            lines,
            report,
        };
        if !self.bad.is_empty() {
            let keep: Vec<usize> = (0..table.num_rows())
                .filter(|r| !self.bad.contains(r))
                .collect();
            let report = table.report.clone();
            table = table.select(&keep);
            table.report = report;
            // A later chunk of a streamed source may lose every row: it keeps its report.
            if table.num_rows() == 0 && self.line_offset == 0 {
                return Err(DataError::Empty {
                    path: table.origin,
                    detail: format!(
                        " (all {} rows had bad values and were skipped)",
                        table.report.bad_rows_skipped
                    ),
                });
            }
        }
        Ok(table)
    }
}

/// The type of the leaf at `path`.
fn leaf_type<'a>(fields: &'a Fields, path: &[usize]) -> &'a DataType {
    let t = fields[path[0]].data_type();
    match (t, &path[1..]) {
        (_, []) => t,
        (DataType::Struct(children), rest) => leaf_type(children, rest),
        _ => t,
    }
}

/// The leaf array at `path` and its validity, a null struct making its fields null.
fn leaf_array(batch: &RecordBatch, path: &[usize]) -> (ArrayRef, Option<NullBuffer>) {
    let mut array = batch.column(path[0]).clone();
    let mut nulls = array.logical_nulls();
    for &i in &path[1..] {
        let child = array.as_struct().column(i).clone();
        nulls = NullBuffer::union(nulls.as_ref(), child.logical_nulls().as_ref());
        array = child;
    }
    (array, nulls)
}

fn number(array: &ArrayRef, i: usize) -> Option<f64> {
    Some(match array.data_type() {
        DataType::Int8 => array.as_primitive::<Int8Type>().value(i) as f64,
        DataType::Int16 => array.as_primitive::<Int16Type>().value(i) as f64,
        DataType::Int32 => array.as_primitive::<Int32Type>().value(i) as f64,
        DataType::UInt8 => array.as_primitive::<UInt8Type>().value(i) as f64,
        DataType::UInt16 => array.as_primitive::<UInt16Type>().value(i) as f64,
        DataType::UInt32 => array.as_primitive::<UInt32Type>().value(i) as f64,
        DataType::Float16 => array.as_primitive::<Float16Type>().value(i).to_f64(),
        DataType::Float32 => array.as_primitive::<Float32Type>().value(i) as f64,
        DataType::Float64 => array.as_primitive::<Float64Type>().value(i),
        DataType::Decimal128(_, scale) => {
            array.as_primitive::<Decimal128Type>().value(i) as f64 / 10f64.powi(*scale as i32)
        }
        _ => return None,
    })
}

/// A 64-bit integer: `Ok` within `i64`, `Err` for an unsigned value above it.
fn integer(array: &ArrayRef, i: usize) -> Option<std::result::Result<i64, u64>> {
    match array.data_type() {
        DataType::Int64 => Some(Ok(array.as_primitive::<Int64Type>().value(i))),
        DataType::UInt64 => {
            let v = array.as_primitive::<UInt64Type>().value(i);
            Some(i64::try_from(v).map_err(|_| v))
        }
        _ => None,
    }
}

fn integers_as_text(b: &mut Int64Builder) -> TextBuilder {
    let values = b.finish();
    let mut text = TextBuilder::new();
    for v in values.iter() {
        text.append(v.map(|v| v.to_string()).as_deref());
    }
    text
}

fn integer_text(v: std::result::Result<i64, u64>) -> String {
    match v {
        Ok(v) => v.to_string(),
        Err(v) => v.to_string(),
    }
}

/// Appends a text-like array (strings, dictionaries, booleans, dates, timestamps) as text.
fn append_text(b: &mut TextBuilder, array: &ArrayRef, nulls: Option<&NullBuffer>) {
    let valid = |i: usize| nulls.is_none_or(|n| n.is_valid(i));
    match array.data_type() {
        DataType::Utf8 => {
            let s = array.as_string::<i32>();
            (0..s.len()).for_each(|i| b.append(valid(i).then(|| s.value(i))));
        }
        DataType::LargeUtf8 => {
            let s = array.as_string::<i64>();
            (0..s.len()).for_each(|i| b.append(valid(i).then(|| s.value(i))));
        }
        DataType::Utf8View => {
            let s = array.as_string_view();
            (0..s.len()).for_each(|i| b.append(valid(i).then(|| s.value(i))));
        }
        DataType::Dictionary(..) => {
            let dict = array.as_any_dictionary();
            if dict.values().is_empty() {
                // Only nulls (arrow's key normalisation needs a value).
                (0..array.len()).for_each(|_| b.append(None));
                return;
            }
            let keys = dict.normalized_keys();
            let mut values = TextBuilder::new();
            append_text(
                &mut values,
                dict.values(),
                dict.values().logical_nulls().as_ref(),
            );
            let values = match values.finish("", "") {
                Ok(Column::Text(values)) => values,
                _ => {
                    b.overflow();
                    return;
                }
            };
            for (i, &k) in keys.iter().enumerate() {
                b.append((valid(i) && values.is_valid(k)).then(|| values.value(k)));
            }
        }
        DataType::Boolean => {
            let v = array.as_boolean();
            (0..v.len()).for_each(|i| {
                b.append(valid(i).then(|| if v.value(i) { "true" } else { "false" }))
            });
        }
        DataType::Date32 | DataType::Date64 => {
            let date = |i: usize| match array.data_type() {
                DataType::Date32 => array.as_primitive::<Date32Type>().value_as_date(i),
                _ => array.as_primitive::<Date64Type>().value_as_date(i),
            };
            (0..array.len()).for_each(|i| {
                b.append(
                    valid(i)
                        .then(|| date(i))
                        .flatten()
                        .map(|d| d.to_string())
                        .as_deref(),
                )
            });
        }
        DataType::Timestamp(unit, zone) => {
            let at = |i: usize| match unit {
                TimeUnit::Second => array
                    .as_primitive::<TimestampSecondType>()
                    .value_as_datetime(i),
                TimeUnit::Millisecond => array
                    .as_primitive::<TimestampMillisecondType>()
                    .value_as_datetime(i),
                TimeUnit::Microsecond => array
                    .as_primitive::<TimestampMicrosecondType>()
                    .value_as_datetime(i),
                TimeUnit::Nanosecond => array
                    .as_primitive::<TimestampNanosecondType>()
                    .value_as_datetime(i),
            };
            // A zoned timestamp is stored in UTC; written as such.
            let suffix = if zone.is_some() { "Z" } else { "" };
            (0..array.len()).for_each(|i| {
                b.append(
                    valid(i)
                        .then(|| at(i))
                        .flatten()
                        .map(|t| format!("{}{suffix}", t.format("%Y-%m-%dT%H:%M:%S%.f")))
                        .as_deref(),
                )
            });
        }
        DataType::Decimal128(precision, scale) => {
            let v = array.as_primitive::<Decimal128Type>();
            (0..v.len()).for_each(|i| {
                b.append(
                    valid(i)
                        .then(|| Decimal128Type::format_decimal(v.value(i), *precision, *scale))
                        .as_deref(),
                )
            });
        }
        // Null-typed columns: every row is missing.
        _ => (0..array.len()).for_each(|_| b.append(None)),
    }
}
