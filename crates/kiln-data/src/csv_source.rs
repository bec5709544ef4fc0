//! CSV reading: header, delimiter sniffing, quoted fields, missing-value tokens, bad rows.

use std::io::Read;
use std::path::Path;

use kiln_config::BadRows;

use crate::table::{CellBuilder, Column, LoadReport, Table};
use crate::{DataError, Result};

/// Field values read as missing (besides the empty field).
pub const MISSING_TOKENS: [&str; 9] =
    ["NA", "N/A", "na", "nan", "NaN", "null", "NULL", "None", "?"];

/// Reads a CSV file with a header row. The delimiter is sniffed from the header when not
/// given. Records with the wrong number of fields (or invalid UTF-8) are errors naming the
/// line, or are skipped and counted under `BadRows::Skip`. A `.gz` file is decompressed.
/// A column holding only numbers is read as numbers, except those named in `text_columns`
/// (labels, ids, categories), which keep their text as written.
pub fn read_csv(
    path: &Path,
    delimiter: Option<char>,
    bad_rows: BadRows,
    text_columns: &[String],
) -> Result<Table> {
    let head = read_head(path)?;
    parse_csv(
        decompressed(path)?,
        &head,
        plain_size(path),
        &path.display().to_string(),
        CsvOptions {
            delimiter,
            bad_rows,
            text_columns,
        },
    )
}

/// How [`parse_csv`] reads: the delimiter (sniffed when `None`), the bad-row policy, and the
/// columns kept as text even when every value is a number.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CsvOptions<'a> {
    /// The field delimiter, or `None` to sniff it from the header.
    pub(crate) delimiter: Option<char>,
    /// What a malformed record does.
    pub(crate) bad_rows: BadRows,
    /// Columns read as text whatever they hold.
    pub(crate) text_columns: &'a [String],
}

/// Bytes [`read_head`] reads.
pub(crate) const HEAD_BYTES: usize = 8192;

/// The first 8 KiB of a file (decompressed when its name ends in `.gz` or `.zst`/`.zstd`), to
/// tell its format.
pub(crate) fn read_head(path: &Path) -> Result<Vec<u8>> {
    let mut head = Vec::with_capacity(HEAD_BYTES);
    decompressed(path)?
        .take(HEAD_BYTES as u64)
        .read_to_end(&mut head)
        .map_err(|source| DataError::Io {
            path: path.display().to_string(),
            source,
        })?;
    Ok(head)
}

/// The size of a file read as is (not compressed), to size buffers.
pub(crate) fn plain_size(path: &Path) -> Option<u64> {
    let name = path.to_string_lossy().to_lowercase();
    if [".gz", ".zst", ".zstd"].iter().any(|s| name.ends_with(s)) {
        return None;
    }
    std::fs::metadata(path).ok().map(|m| m.len())
}

/// Moves `file` (of `origin`) to byte `byte`.
pub(crate) fn seek_to(file: &mut std::fs::File, byte: u64, origin: &str) -> Result<()> {
    use std::io::{Seek, SeekFrom};
    file.seek(SeekFrom::Start(byte))
        .map(drop)
        .map_err(|source| DataError::Io {
            path: origin.into(),
            source,
        })
}

pub(crate) fn decompressed(path: &Path) -> Result<Box<dyn Read>> {
    let display = path.display().to_string();
    let io = |source| DataError::Io {
        path: display.clone(),
        source,
    };
    let file = std::io::BufReader::new(std::fs::File::open(path).map_err(io)?);
    let name = display.to_lowercase();
    Ok(if name.ends_with(".gz") {
        Box::new(flate2::bufread::MultiGzDecoder::new(file))
    } else if name.ends_with(".zst") || name.ends_with(".zstd") {
        Box::new(zstd::stream::read::Decoder::with_buffer(file).map_err(io)?)
    } else {
        Box::new(file)
    })
}

fn sniff_delimiter(bytes: &[u8]) -> u8 {
    let header = bytes.split(|&b| b == b'\n').next().unwrap_or(&[]);
    let mut best = (b',', 0usize);
    for cand in [b',', b';', b'\t', b'|'] {
        let mut in_quotes = false;
        let mut count = 0;
        for &b in header {
            if b == b'"' {
                in_quotes = !in_quotes;
            } else if b == cand && !in_quotes {
                count += 1;
            }
        }
        if count > best.1 {
            best = (cand, count);
        }
    }
    best.0
}

/// Capacity (values, text bytes) of each of `width` columns for a file of `size` bytes,
/// estimated from the rows in `head`: reserving it up front saves the up-to-2× slack of
/// growing buffers by doubling. No estimate without a size (compressed input) or rows.
fn presize(head: &[u8], delim: u8, width: usize, size: Option<u64>) -> Vec<(usize, usize)> {
    let none = vec![(0, 0); width];
    let Some(size) = size else { return none };
    let mut reader = csv::ReaderBuilder::new()
        .delimiter(delim)
        .has_headers(true)
        .flexible(true)
        .trim(csv::Trim::All)
        .from_reader(head);
    let mut bytes = vec![0usize; width];
    let (mut rows, mut end) = (0usize, 0u64);
    let mut record = csv::ByteRecord::new();
    // The last record of the head may be cut short: it is not counted.
    while let Ok(true) = reader.read_byte_record(&mut record) {
        let at = reader.position().byte();
        if at as usize >= head.len() || record.len() != width {
            break;
        }
        record
            .iter()
            .zip(&mut bytes)
            .for_each(|(f, b)| *b += f.len());
        rows += 1;
        end = at;
    }
    if rows < 4 || end == 0 {
        return none;
    }
    let header = head.iter().position(|&b| b == b'\n').map_or(0, |p| p + 1) as u64;
    let per_row = (end.saturating_sub(header)).max(1) as f64 / rows as f64;
    let estimate = ((size.saturating_sub(header)) as f64 / per_row * 1.05) as usize + 16;
    bytes
        .iter()
        .map(|&b| {
            (
                estimate,
                (b as f64 / rows as f64 * estimate as f64) as usize + 64,
            )
        })
        .collect()
}

/// Parses CSV read from `source` (see [`read_csv`]), `head` being its first bytes (for the
/// delimiter) and `size_hint` its size when known (to size the columns); `origin` names the
/// source in errors.
pub(crate) fn parse_csv(
    source: Box<dyn Read>,
    head: &[u8],
    size_hint: Option<u64>,
    origin: &str,
    options: CsvOptions<'_>,
) -> Result<Table> {
    let mut chunks = CsvChunks::open(source, head, origin, options)?;
    let sizes = presize(
        head.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(head),
        chunks.delimiter,
        chunks.names.len(),
        size_hint,
    );
    let (columns, lines) = chunks.read(usize::MAX, sizes)?;
    let report = std::mem::take(&mut chunks.report);
    text_table(
        origin,
        chunks.names,
        columns,
        lines,
        report,
        "only a header",
    )
}

/// A CSV file read a chunk of rows at a time (`kiln predict` over files larger than memory).
/// Each chunk is a [`Table`] of its own: a column is numbers when every value of the chunk is
/// one, so the columns a model reads as names must be in `text_columns`.
pub struct CsvChunks {
    reader: csv::Reader<Box<dyn Read>>,
    names: Vec<String>,
    delimiter: u8,
    origin: String,
    bad_rows: BadRows,
    text_columns: Vec<String>,
    report: LoadReport,
    done: bool,
    chunks: usize,
    /// Where the reader started in the file (a shard of a streamed run starts mid-file).
    base: u64,
    /// Lines of the file before the reader's start.
    line_offset: u64,
}

impl CsvChunks {
    /// Opens `source` and reads its header (see [`parse_csv`] for the arguments).
    pub(crate) fn open(
        source: Box<dyn Read>,
        head: &[u8],
        origin: &str,
        options: CsvOptions<'_>,
    ) -> Result<Self> {
        let CsvOptions {
            delimiter,
            bad_rows,
            text_columns,
        } = options;
        let head = head.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(head);
        if head.len() < HEAD_BYTES && head.iter().all(|b| b.is_ascii_whitespace()) {
            return Err(DataError::Empty {
                path: origin.into(),
                detail: " (the file is empty)".into(),
            });
        }
        let delim = delimiter
            .map(|c| c as u8)
            .unwrap_or_else(|| sniff_delimiter(head));
        let mut reader = csv::ReaderBuilder::new()
            .delimiter(delim)
            .has_headers(true)
            .flexible(true)
            .trim(csv::Trim::All)
            .buffer_capacity(1 << 16)
            .from_reader(source);
        let headers = reader.headers().map_err(|e| DataError::Malformed {
            path: origin.into(),
            line: 1,
            message: format!("cannot read the header: {e}"),
        })?;
        let names: Vec<String> = headers.iter().map(str::to_string).collect();
        if let Some((i, _)) = names.iter().enumerate().find(|(_, n)| n.is_empty()) {
            return Err(DataError::Malformed {
                path: origin.into(),
                line: 1,
                message: format!("header field {} is empty; every column needs a name", i + 1),
            });
        }
        for (i, n) in names.iter().enumerate() {
            if names[..i].contains(n) {
                return Err(DataError::Malformed {
                    path: origin.into(),
                    line: 1,
                    message: format!("column name \"{n}\" appears twice in the header"),
                });
            }
        }
        Ok(CsvChunks {
            reader,
            names,
            delimiter: delim,
            origin: origin.into(),
            bad_rows,
            text_columns: text_columns.to_vec(),
            report: LoadReport::default(),
            done: false,
            chunks: 0,
            base: 0,
            line_offset: 0,
        })
    }

    /// A reader of `file` from byte `byte` (a record's start, where line `line` begins),
    /// for a file whose header gave `names` and `delimiter` (read by [`open`](Self::open)).
    pub(crate) fn open_at(
        mut file: std::fs::File,
        byte: u64,
        line: u64,
        names: Vec<String>,
        delimiter: u8,
        origin: &str,
        options: CsvOptions<'_>,
    ) -> Result<Self> {
        seek_to(&mut file, byte, origin)?;
        let reader = csv::ReaderBuilder::new()
            .delimiter(delimiter)
            .has_headers(false)
            .flexible(true)
            .trim(csv::Trim::All)
            .buffer_capacity(1 << 16)
            .from_reader(Box::new(file) as Box<dyn Read>);
        Ok(CsvChunks {
            reader,
            names,
            delimiter,
            origin: origin.into(),
            bad_rows: options.bad_rows,
            text_columns: options.text_columns.to_vec(),
            report: LoadReport::default(),
            done: false,
            // Not the first chunk of the file: an empty read is no error.
            chunks: 1,
            base: byte,
            line_offset: line.saturating_sub(1),
        })
    }

    /// The byte offset and line of the next record.
    pub(crate) fn position(&self) -> (u64, u64) {
        let p = self.reader.position();
        (self.base + p.byte(), self.line_offset + p.line())
    }

    /// The header's names and the delimiter.
    pub(crate) fn layout(&self) -> (&[String], u8) {
        (&self.names, self.delimiter)
    }

    /// The next chunk of at most `max_rows` rows (its report counts its own rows), or `None`
    /// at the end of the file. A file without rows is the same error [`read_csv`] gives; a
    /// last chunk of only malformed rows (skipped) has no rows, only its report.
    pub fn next_chunk(&mut self, max_rows: usize) -> Result<Option<Table>> {
        loop {
            if self.done && self.chunks > 0 {
                return Ok(None);
            }
            let sizes = vec![(max_rows.clamp(1, 1 << 16), 0); self.names.len()];
            let (columns, lines) = self.read(max_rows.max(1), sizes)?;
            if lines.is_empty() && !self.done {
                continue; // every row of this stretch was malformed and skipped
            }
            let report = std::mem::take(&mut self.report);
            self.chunks += 1;
            if lines.is_empty() && self.chunks > 1 {
                return Ok(Some(Table {
                    origin: self.origin.clone(),
                    names: self.names.clone(),
                    columns,
                    lines,
                    report,
                }));
            }
            return text_table(
                &self.origin,
                self.names.clone(),
                columns,
                lines,
                report,
                "only a header",
            )
            .map(Some);
        }
    }

    /// Reads up to `max_rows` records into columns sized by `sizes`.
    fn read(
        &mut self,
        max_rows: usize,
        sizes: Vec<(usize, usize)>,
    ) -> Result<(Vec<Column>, Vec<u64>)> {
        let origin = self.origin.as_str();
        let names = &self.names;
        let width = names.len();
        let report = &mut self.report;
        let mut lines = Vec::with_capacity(sizes.first().map_or(0, |&(rows, _)| rows));
        let mut columns: Vec<CellBuilder> = sizes
            .into_iter()
            .zip(names)
            .map(|((rows, bytes), name)| {
                CellBuilder::new(rows, bytes, self.text_columns.contains(name))
            })
            .collect();
        let mut record = csv::ByteRecord::new();
        while lines.len() < max_rows {
            let ok = match self.reader.read_byte_record(&mut record) {
                Ok(ok) => ok,
                Err(e) => {
                    let line = e.position().map(|p| p.line()).unwrap_or(0) + self.line_offset;
                    // A read failing midway (a truncated .gz or .zst) is the file's fault, not
                    // a record's.
                    let message = e.to_string();
                    return Err(match e.into_kind() {
                        csv::ErrorKind::Io(source) => DataError::Io {
                            path: origin.into(),
                            source,
                        },
                        _ => DataError::Malformed {
                            path: origin.into(),
                            line,
                            message,
                        },
                    });
                }
            };
            if !ok {
                self.done = true;
                break;
            }
            let line = record.position().map(|p| p.line()).unwrap_or(0) + self.line_offset;
            // A whitespace-only line (the csv crate skips empty ones itself); in a one-column
            // file the same record is an empty value (`""`, a missing text), and is kept.
            if width > 1 && record.len() == 1 && record.get(0).is_some_and(|f| f.is_empty()) {
                continue;
            }
            report.rows_read += 1;
            let problem = if record.len() != width {
                Some(format!(
                    "expected {width} fields (as in the header), found {}",
                    record.len()
                ))
            } else {
                record
                    .iter()
                    .position(|f| std::str::from_utf8(f).is_err())
                    .map(|i| {
                        format!(
                            "field {} (column \"{}\") is not valid UTF-8",
                            i + 1,
                            names[i]
                        )
                    })
            };
            if let Some(message) = problem {
                match self.bad_rows {
                    BadRows::Error => {
                        return Err(DataError::Malformed {
                            path: origin.into(),
                            line,
                            message: format!(
                                "{message} (set data.bad_rows = \"skip\" to drop such rows)"
                            ),
                        });
                    }
                    BadRows::Skip => {
                        report.skip(line, &message);
                        continue;
                    }
                }
            }
            for (col, field) in columns.iter_mut().zip(record.iter()) {
                let s = std::str::from_utf8(field).expect("checked above");
                col.append((!s.is_empty() && !MISSING_TOKENS.contains(&s)).then_some(s));
            }
            lines.push(line);
        }
        let columns = columns
            .into_iter()
            .zip(names)
            .map(|(c, name)| c.finish(origin, name))
            .collect::<Result<_>>()?;
        Ok((columns, lines))
    }
}

/// A table of columns read from a file, or the error of a file without a row (`none`
/// says what it holds instead, unless every row was skipped as malformed).
pub(crate) fn text_table(
    origin: &str,
    names: Vec<String>,
    columns: Vec<Column>,
    lines: Vec<u64>,
    report: LoadReport,
    none: &str,
) -> Result<Table> {
    if lines.is_empty() {
        let detail = if report.bad_rows_skipped > 0 {
            format!(
                " (all {} rows were malformed and skipped)",
                report.bad_rows_skipped
            )
        } else {
            format!(" ({none})")
        };
        return Err(DataError::Empty {
            path: origin.into(),
            detail,
        });
    }
    Ok(Table {
        origin: origin.into(),
        names,
        columns,
        lines,
        report,
    })
}
