//! Training data larger than memory (`data.streaming`): a source read a shard at a time, in
//! any order (a Parquet row group, or a run of a plain CSV or JSON Lines file's records whose
//! byte offset the first pass notes). [`prepare_streamed`] makes one pass: the schema from
//! the first rows, each row's split from its row number, the preprocessor's statistics
//! ([`FitPass`]) over the training rows, and the validation and test rows kept (encoded once
//! the preprocessor is fitted). [`TrainStream`] then gives every epoch's training rows as
//! blocks: the shards in an order drawn for the epoch, gathered until a block holds
//! `data.shuffle_buffer` rows, and the block's rows shuffled. A block is the same for the
//! same seed, epoch and position, so a run resumed in the middle of one reads it again and
//! skips what it had taken.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use kiln_config::{BadRows, Config, DataConfig, DataFormat};
use kiln_rng::SplitMix64;

use crate::arrow_source::{ArrowChunks, ParquetShard, parquet_shards, read_parquet_shard};
use crate::csv_source::{CsvChunks, CsvOptions};
use crate::fit::{FitLimits, FitPass};
use crate::infer::{Schema, drop_bad_values, infer_schema};
use crate::jsonl_source::{FieldTypes, JsonlChunks};
use crate::preprocess::{Encoded, Preprocessor};
use crate::split::split_rows_streamed;
use crate::table::{LoadReport, Table};
use crate::{DataError, Result};

/// Seed stream of each epoch's shard order.
const SHARD_STREAM: u64 = 0x5AAD_0E9C;
/// Seed stream of the order of the rows within a block.
const BLOCK_STREAM: u64 = 0xB10C_5EED;
/// Held-out rows kept in memory at most (validation and test together), in bytes of their
/// raw columns.
const MAX_HELD_OUT_BYTES: usize = 1 << 30;

/// A file's size and modification time when the run started.
#[derive(Debug, Clone, PartialEq)]
struct FileStamp {
    path: PathBuf,
    len: u64,
    modified: Option<SystemTime>,
}

impl FileStamp {
    fn of(path: &Path) -> Result<Self> {
        let meta = std::fs::metadata(path).map_err(|source| DataError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Ok(FileStamp {
            path: path.to_path_buf(),
            len: meta.len(),
            modified: meta.modified().ok(),
        })
    }
}

/// Rows a shard of a CSV or JSON Lines source holds (the last one fewer): a quarter of the
/// shuffle buffer, so a block mixes at least four parts of the file, within these bounds.
fn text_shard_rows(shuffle_buffer: usize) -> usize {
    (shuffle_buffer / 4).clamp(256, 1 << 16)
}

/// Where a shard of a CSV, JSON Lines or Arrow IPC file starts, found by the one pass: its
/// byte offset (an Arrow file's record batch, and the row within it) and its first line (row);
/// `read`, the rows its reader takes (an Arrow reader counts rows with bad values too), and
/// `rows`, the rows it holds.
#[derive(Debug, Clone)]
struct TextShard {
    byte: u64,
    offset: usize,
    line: u64,
    read: usize,
    rows: usize,
}

/// How a streamed source is cut into shards.
#[derive(Debug)]
enum Layout {
    /// Row groups.
    Parquet(Vec<ParquetShard>),
    /// Runs of records, by byte offset; `delimiter` and `names` of a CSV's header.
    Csv {
        shards: Vec<TextShard>,
        delimiter: u8,
        names: Vec<String>,
    },
    /// Runs of lines, by byte offset; the fields and their types as the pass ended.
    Jsonl {
        shards: Vec<TextShard>,
        fields: FieldTypes,
    },
    /// Runs of an Arrow IPC file's rows: `byte` is the first row's record batch.
    Arrow { shards: Vec<TextShard> },
}

/// A sequential reader of a CSV or JSON Lines source, for the pass.
enum Sweep {
    Csv(Box<CsvChunks>),
    Jsonl(Box<JsonlChunks>),
    Arrow(Box<ArrowChunks>),
}

impl Sweep {
    fn position(&self) -> (u64, usize, u64) {
        let (byte, line) = match self {
            Sweep::Csv(c) => c.position(),
            Sweep::Jsonl(j) => j.position(),
            Sweep::Arrow(a) => return a.position(),
        };
        (byte, 0, line)
    }

    fn next_chunk(&mut self, rows: usize) -> Result<Option<Table>> {
        match self {
            Sweep::Csv(c) => c.next_chunk(rows),
            Sweep::Jsonl(j) => j.next_chunk(rows),
            Sweep::Arrow(a) => a.next_chunk(rows),
        }
    }
}

/// A source read a shard at a time, in any order: a Parquet file or directory of part files
/// (a shard is a row group), or a plain CSV or JSON Lines file (a shard is a run of records
/// whose byte offset the first pass notes).
#[derive(Debug)]
pub struct StreamSource {
    origin: String,
    format: DataFormat,
    files: Vec<FileStamp>,
    layout: Layout,
    columns: Option<Vec<String>>,
    text_columns: Vec<String>,
    bad_rows: BadRows,
    delimiter: Option<char>,
    /// Rows of a CSV or JSON Lines shard.
    text_shard_rows: usize,
}

impl StreamSource {
    /// Opens `spec`: a Parquet source's footers are read; a CSV or JSON Lines file is cut
    /// into shards by [`pass`](Self::pass).
    pub fn open(spec: &str, config: &DataConfig) -> Result<Self> {
        let path = Path::new(spec);
        let refuse = |what: &str| {
            Err(DataError::Invalid(format!(
                "{spec}: {what}; data.streaming reads Parquet (a file, or a directory of part files), Arrow IPC files, and plain CSV and JSON Lines files"
            )))
        };
        if spec.starts_with("builtin:") || crate::idx::idx_prefix(spec).is_some() {
            return refuse("a built-in or IDX source is read whole");
        }
        if !path.exists() {
            return Err(DataError::Io {
                path: spec.into(),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
            });
        }
        if crate::csv_source::plain_size(path).is_none() {
            return refuse(
                "a compressed file cannot be read from the middle, and every epoch reads its parts in a new order: decompress it first, or convert it to Parquet",
            );
        }
        let format = match config.format {
            DataFormat::Auto if path.is_dir() => DataFormat::Parquet,
            DataFormat::Auto => {
                let head = crate::csv_source::read_head(path)?;
                crate::detect_format(path, &head)?
            }
            chosen => chosen,
        };
        let (files, layout) = match format {
            DataFormat::Parquet => {
                let (files, shards) = parquet_shards(path)?;
                if shards.is_empty() {
                    return Err(DataError::Empty {
                        path: spec.into(),
                        detail: " (no row group holds a row)".into(),
                    });
                }
                (files, Layout::Parquet(shards))
            }
            DataFormat::Arrow if path.is_file() => {
                if ArrowChunks::open(path, None, config.bad_rows)?.is_none() {
                    return refuse(
                        "an Arrow IPC stream, which has no index to read it from the middle; write the file format (pyarrow.feather.write_feather, or pyarrow.ipc.new_file)",
                    );
                }
                let layout = Layout::Arrow { shards: Vec::new() };
                (vec![path.to_path_buf()], layout)
            }
            DataFormat::Csv | DataFormat::Jsonl if path.is_file() => {
                let layout = match format {
                    DataFormat::Csv => Layout::Csv {
                        shards: Vec::new(),
                        delimiter: b',',
                        names: Vec::new(),
                    },
                    _ => Layout::Jsonl {
                        shards: Vec::new(),
                        fields: FieldTypes::default(),
                    },
                };
                (vec![path.to_path_buf()], layout)
            }
            _ => return refuse("not a file of a format streaming reads"),
        };
        Ok(StreamSource {
            origin: spec.into(),
            format,
            files: files
                .iter()
                .map(|f| FileStamp::of(f))
                .collect::<Result<_>>()?,
            layout,
            columns: None,
            text_columns: crate::named_columns(config, &[]),
            bad_rows: config.bad_rows,
            delimiter: config.delimiter,
            text_shard_rows: text_shard_rows(config.shuffle_buffer),
        })
    }

    /// Rows of each shard (known after [`pass`](Self::pass) for CSV and JSON Lines).
    pub fn shard_rows(&self) -> Vec<usize> {
        match &self.layout {
            Layout::Parquet(shards) => shards.iter().map(|s| s.rows).collect(),
            Layout::Csv { shards, .. }
            | Layout::Jsonl { shards, .. }
            | Layout::Arrow { shards } => shards.iter().map(|s| s.rows).collect(),
        }
    }

    /// Rows of the source (known after [`pass`](Self::pass) for CSV and JSON Lines).
    pub fn rows(&self) -> u64 {
        self.shard_rows().iter().map(|&r| r as u64).sum()
    }

    /// A reader of a CSV or JSON Lines file from its start.
    fn sweep(&self) -> Result<Sweep> {
        let path = &self.files[0].path;
        Ok(match self.format {
            DataFormat::Arrow => Sweep::Arrow(Box::new(self.arrow_reader()?)),
            DataFormat::Csv => Sweep::Csv(Box::new(CsvChunks::open(
                crate::csv_source::decompressed(path)?,
                &crate::csv_source::read_head(path)?,
                &self.origin,
                CsvOptions {
                    delimiter: self.delimiter,
                    bad_rows: self.bad_rows,
                    text_columns: &self.text_columns,
                },
            )?)),
            _ => Sweep::Jsonl(Box::new(JsonlChunks::new(
                Box::new(std::io::BufReader::new(crate::csv_source::decompressed(
                    path,
                )?)),
                &self.origin,
                self.bad_rows,
                &self.text_columns,
                self.columns.as_deref().unwrap_or(&[]),
            ))),
        })
    }

    /// An Arrow IPC file's reader (checked to be the file format on opening).
    fn arrow_reader(&self) -> Result<ArrowChunks> {
        ArrowChunks::open(&self.files[0].path, self.columns.as_deref(), self.bad_rows)?
            .ok_or_else(|| DataError::Invalid(format!("{}: not an Arrow IPC file", self.origin)))
    }

    /// The source's first rows (a record batch, or 65 536 records), to infer the schema from.
    pub fn first_rows(&self) -> Result<Table> {
        let mut first = None;
        match &self.layout {
            Layout::Parquet(_) => self.read_shard(0, &mut |table| {
                if first.is_none() {
                    first = Some(table);
                }
                Ok(())
            })?,
            _ => first = self.sweep()?.next_chunk(1 << 16)?,
        }
        first.ok_or_else(|| DataError::Empty {
            path: self.origin.clone(),
            detail: " (no rows)".into(),
        })
    }

    /// Reads the whole source once, in order, a chunk at a time; a CSV or JSON Lines file is
    /// cut into shards on the way.
    pub fn pass(&mut self, visit: &mut dyn FnMut(Table) -> Result<()>) -> Result<()> {
        if let Layout::Parquet(shards) = &self.layout {
            for shard in 0..shards.len() {
                self.read_shard(shard, visit)?;
            }
            return Ok(());
        }
        let mut sweep = self.sweep()?;
        let mut found = Vec::new();
        loop {
            let (byte, offset, line) = sweep.position();
            let Some(table) = sweep.next_chunk(self.text_shard_rows)? else {
                break;
            };
            let read = match &sweep {
                Sweep::Arrow(_) => (sweep.position().2 - line) as usize,
                _ => table.num_rows(),
            };
            // A stretch of only malformed rows (or none, at the end) is no shard.
            if table.num_rows() > 0 {
                found.push(TextShard {
                    byte,
                    offset,
                    line,
                    read,
                    rows: table.num_rows(),
                });
            }
            visit(table)?;
        }
        match (&mut self.layout, &sweep) {
            (
                Layout::Csv {
                    shards,
                    delimiter,
                    names,
                },
                Sweep::Csv(csv),
            ) => {
                let (header, delim) = csv.layout();
                *names = header.to_vec();
                *delimiter = delim;
                *shards = found;
            }
            (Layout::Jsonl { shards, fields }, Sweep::Jsonl(jsonl)) => {
                *shards = found;
                *fields = jsonl.fields();
            }
            (Layout::Arrow { shards }, _) => *shards = found,
            _ => unreachable!("a sweep of the source's own format"),
        }
        Ok(())
    }

    /// Shard `index`, a chunk at a time.
    pub fn read_shard(
        &self,
        index: usize,
        visit: &mut dyn FnMut(Table) -> Result<()>,
    ) -> Result<()> {
        let open = || {
            let path = &self.files[0].path;
            std::fs::File::open(path).map_err(|source| DataError::Io {
                path: path.display().to_string(),
                source,
            })
        };
        let chunk = match &self.layout {
            Layout::Parquet(shards) => {
                let shard = &shards[index];
                return read_parquet_shard(
                    &self.origin,
                    &self.files[shard.file].path,
                    shard,
                    self.columns.as_deref(),
                    self.bad_rows,
                    visit,
                );
            }
            Layout::Csv {
                shards,
                delimiter,
                names,
            } => {
                let shard = &shards[index];
                CsvChunks::open_at(
                    open()?,
                    shard.byte,
                    shard.line,
                    names.clone(),
                    *delimiter,
                    &self.origin,
                    CsvOptions {
                        delimiter: self.delimiter,
                        bad_rows: self.bad_rows,
                        text_columns: &self.text_columns,
                    },
                )?
                .next_chunk(shard.read)?
            }
            Layout::Jsonl { shards, fields } => {
                let shard = &shards[index];
                JsonlChunks::open_at(
                    open()?,
                    shard.byte,
                    shard.line,
                    &self.origin,
                    self.bad_rows,
                    &self.text_columns,
                    fields,
                )?
                .next_chunk(shard.read)?
            }
            Layout::Arrow { shards } => {
                let shard = &shards[index];
                let mut reader = self.arrow_reader()?;
                reader.seek(shard.byte as usize, shard.offset, shard.line - 1)?;
                reader.next_chunk(shard.read)?
            }
        };
        match chunk {
            Some(table) if table.num_rows() > 0 => visit(table),
            _ => Ok(()),
        }
    }

    /// An error when a file's size or modification time is no longer what it was when the
    /// source was opened: a streamed run reads its files again every epoch.
    pub fn check_unchanged(&self) -> Result<()> {
        for stamp in &self.files {
            let now = FileStamp::of(&stamp.path)?;
            if now != *stamp {
                return Err(DataError::Invalid(format!(
                    "{}: the file changed while a streamed run was reading it ({} bytes before, {} now{}); \
                     a streamed run reads its files again every epoch, so they must stay as they were: \
                     restore it, or start a new run",
                    stamp.path.display(),
                    stamp.len,
                    now.len,
                    if now.len == stamp.len {
                        ", and a new modification time"
                    } else {
                        ""
                    }
                )));
            }
        }
        Ok(())
    }
}

/// Roughly the bytes `spec`'s columns take in memory, for a source a run can stream: a
/// Parquet source's uncompressed size (from its footers), a plain CSV or JSON Lines file's
/// size; `None` for any other.
pub fn streamable_size(spec: &str, config: &DataConfig) -> Option<u64> {
    let source = StreamSource::open(spec, config).ok()?;
    Some(match &source.layout {
        Layout::Parquet(shards) => shards.iter().map(|s| s.bytes).sum(),
        _ => source.files.iter().map(|f| f.len).sum(),
    })
}

/// What one pass over a streamed source gives: everything a run needs but the training
/// rows, which [`TrainStream`] reads epoch by epoch.
#[derive(Debug)]
pub struct StreamedData {
    /// Column roles (inferred from the first record batch).
    pub schema: Schema,
    /// Fitted on every training row.
    pub preprocessor: Preprocessor,
    /// Encoded validation rows.
    pub validation: Encoded,
    /// Encoded test rows (empty with `data.test_source`).
    pub test: Encoded,
    /// Row numbers of the held-out rows: `validation` and `test`'s `source_rows` index it
    /// (`lines`), with nothing else in the table.
    pub held_out: Table,
    /// The training rows, a block at a time.
    pub train: TrainStream,
}

/// The training rows of a streamed source, a shuffled block at a time.
#[derive(Debug)]
pub struct TrainStream {
    source: StreamSource,
    schema: Schema,
    preprocessor: Preprocessor,
    data: DataConfig,
    seed: u64,
    rows: usize,
    missing_filled: usize,
    dropped: usize,
}

/// Reads the source once: schema, split, preprocessing and the held-out rows (see the module
/// documentation).
pub fn prepare_streamed(config: &Config) -> Result<StreamedData> {
    let data = &config.data;
    let mut source = StreamSource::open(&data.source, data)?;
    let first = source.first_rows()?;
    let schema = infer_schema(&first, config)?;
    // Its columns without rows: what an empty held-out split is encoded from.
    let no_rows = first.select(&[]);
    drop(first);
    // Only the columns the run reads are decoded from here on.
    let mut columns: Vec<String> = schema.features.iter().map(|f| f.name.clone()).collect();
    columns.push(schema.target.clone());
    columns.extend(schema.id_column.clone());
    columns.extend(data.split.column.clone());
    source.columns = Some(columns);

    let mut pass = FitPass::new(&schema, FitLimits::STREAMING);
    if let Some(name) = pass.whole_table_features().first() {
        return Err(DataError::Invalid(format!(
            "feature \"{name}\": a streamed run reads numbers and categories; images and text are fitted on a table in memory (set data.streaming = false)"
        )));
    }
    let mut held_out: [Vec<Table>; 2] = [Vec::new(), Vec::new()];
    let mut held_bytes = 0usize;
    let mut report = LoadReport::default();
    {
        source.pass(&mut |mut table| {
            drop_bad_values(&mut table, &schema, data.bad_rows)?;
            merge_report(&mut report, &table.report);
            let split = split_rows_streamed(&table, data, config.seed)?;
            let labeled: Vec<usize> = (0..table.num_rows()).collect();
            pass.observe(&table, &split.train, &labeled)?;
            for (kept, rows) in held_out.iter_mut().zip([&split.validation, &split.test]) {
                if rows.is_empty() {
                    continue;
                }
                held_bytes += rows.len() * table.columns.len() * 16;
                if held_bytes > MAX_HELD_OUT_BYTES {
                    return Err(DataError::Invalid(format!(
                        "{}: the validation and test rows of a streamed run are kept in memory, and these splits pass {} MiB; \
                         make data.split.validation and data.split.test smaller fractions (now {} and {}), or give data.test_source",
                        data.source,
                        MAX_HELD_OUT_BYTES >> 20,
                        data.split.validation,
                        data.split.test
                    )));
                }
                kept.push(table.select(rows));
            }
            Ok(())
        })?;
    }
    let train_rows = pass.kept_train_rows();
    let dropped = pass.train_rows() as usize - train_rows.0;
    let preprocessor = pass.finish(&data.source, |_| unreachable!("refused above"))?;
    let mut lines = Vec::new();
    let [validation, test] = held_out.map(|tables| -> Result<Encoded> {
        let mut encoded: Option<Encoded> = None;
        for table in tables {
            let rows: Vec<usize> = (0..table.num_rows()).collect();
            let part = preprocessor.transform(&table, &rows, true, true)?;
            let offset = lines.len();
            lines.extend_from_slice(&table.lines);
            match &mut encoded {
                None => {
                    let mut part = part;
                    part.source_rows.iter_mut().for_each(|r| *r += offset);
                    encoded = Some(part);
                }
                Some(e) => e.append(part, offset)?,
            }
        }
        Ok(match encoded {
            Some(e) => e,
            None => preprocessor.transform(&no_rows, &[], true, false)?,
        })
    });
    let (validation, test) = (validation?, test?);
    let held_out = Table {
        origin: data.source.clone(),
        names: Vec::new(),
        columns: Vec::new(),
        lines,
        report,
    };
    Ok(StreamedData {
        train: TrainStream {
            source,
            schema: schema.clone(),
            preprocessor: preprocessor.clone(),
            data: data.clone(),
            seed: config.seed,
            rows: train_rows.0,
            missing_filled: train_rows.1,
            dropped,
        },
        schema,
        preprocessor,
        validation,
        test,
        held_out,
    })
}

/// Adds a chunk's loading counts to the source's.
fn merge_report(total: &mut LoadReport, chunk: &LoadReport) {
    total.rows_read += chunk.rows_read;
    total.bad_rows_skipped += chunk.bad_rows_skipped;
    for example in &chunk.bad_row_examples {
        if total.bad_row_examples.len() < 5 {
            total.bad_row_examples.push(example.clone());
        }
    }
}

impl TrainStream {
    /// Training rows (those the encoding keeps), counted in the pass.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Training rows dropped for a missing value (or target).
    pub fn dropped(&self) -> usize {
        self.dropped
    }

    /// Missing values the training rows have filled.
    pub fn missing_filled(&self) -> usize {
        self.missing_filled
    }

    /// The blocks of `epoch`, each a list of shards: all shards in an order drawn from the
    /// seed and the epoch, gathered until a block holds `data.shuffle_buffer` rows.
    pub fn blocks(&self, epoch: usize) -> Vec<Vec<usize>> {
        let rows = self.source.shard_rows();
        let mut order: Vec<usize> = (0..rows.len()).collect();
        SplitMix64::derive(self.seed ^ SHARD_STREAM, epoch as u64).shuffle(&mut order);
        let mut blocks = Vec::new();
        let mut block = Vec::new();
        let mut held = 0;
        for shard in order {
            block.push(shard);
            held += rows[shard];
            if held >= self.data.shuffle_buffer {
                blocks.push(std::mem::take(&mut block));
                held = 0;
            }
        }
        if !block.is_empty() {
            blocks.push(block);
        }
        blocks
    }

    /// The training rows of block `index` of `epoch` (`shards`, from [`blocks`](Self::blocks)),
    /// encoded and shuffled. The files must be as they were when the run started.
    pub fn read_block(&self, epoch: usize, index: usize, shards: &[usize]) -> Result<Encoded> {
        self.source.check_unchanged()?;
        let shard_rows = self.source.shard_rows();
        let rows: usize = shards.iter().map(|&s| shard_rows[s]).sum();
        let mut block: Option<Encoded> = None;
        for &shard in shards {
            self.source.read_shard(shard, &mut |mut table| {
                drop_bad_values(&mut table, &self.schema, self.data.bad_rows)?;
                let split = split_rows_streamed(&table, &self.data, self.seed)?;
                let part = self
                    .preprocessor
                    .transform(&table, &split.train, true, true)?;
                match &mut block {
                    None => {
                        // Sized once for every row of the block's shards: growing by
                        // doubling would hold two copies at once.
                        let mut first = part;
                        first.reserve(rows.saturating_sub(first.rows));
                        block = Some(first);
                    }
                    Some(b) => b.append(part, 0)?,
                }
                Ok(())
            })?;
        }
        let mut block = block.ok_or_else(|| {
            DataError::Invalid(format!("{}: a row group read no rows", self.source.origin))
        })?;
        let stream = ((epoch as u64) << 32) | index as u64;
        block.shuffle_rows(&mut SplitMix64::derive(self.seed ^ BLOCK_STREAM, stream));
        Ok(block)
    }
}
