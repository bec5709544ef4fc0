//! JSON Lines: one JSON object per line. Nested objects become dotted column names
//! (`{"user": {"age": 3}}` is column `user.age`); columns appear in the order their keys are
//! first met; a key a row lacks, `null` and `""` are missing values. Lists are refused.
//! A field of JSON numbers is a number column (unless named as text, or an integer beyond
//! what an f64 holds exactly); strings and booleans are text.

use std::fmt;
use std::io::BufRead;

use kiln_config::BadRows;
use serde::Deserialize;
use serde::de::{IgnoredAny, MapAccess, SeqAccess, Visitor};

use crate::table::{CellBuilder, LoadReport, Table};
use crate::{DataError, Result};

/// A JSON value with object keys in the order written (`serde_json`'s map sorts them);
/// lists are only noted, never read.
enum Json {
    Null,
    Bool(bool),
    Number(serde_json::Number),
    String(String),
    List,
    Object(Vec<(String, Json)>),
}

impl<'de> Deserialize<'de> for Json {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Any;
        impl<'de> Visitor<'de> for Any {
            type Value = Json;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_unit<E>(self) -> Result<Json, E> {
                Ok(Json::Null)
            }
            fn visit_bool<E>(self, v: bool) -> Result<Json, E> {
                Ok(Json::Bool(v))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Json, E> {
                Ok(Json::Number(v.into()))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Json, E> {
                Ok(Json::Number(v.into()))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Json, E> {
                Ok(serde_json::Number::from_f64(v).map_or(Json::Null, Json::Number))
            }
            fn visit_str<E>(self, v: &str) -> Result<Json, E> {
                Ok(Json::String(v.to_string()))
            }
            fn visit_string<E>(self, v: String) -> Result<Json, E> {
                Ok(Json::String(v))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Json, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Json::List)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Json, A::Error> {
                let mut fields = Vec::new();
                while let Some(entry) = map.next_entry::<String, Json>()? {
                    fields.push(entry);
                }
                Ok(Json::Object(fields))
            }
        }
        d.deserialize_any(Any)
    }
}

/// What a JSON value is, for messages.
fn kind(v: &Json) -> &'static str {
    match v {
        Json::Null => "null",
        Json::Bool(_) => "a boolean",
        Json::Number(_) => "a number",
        Json::String(_) => "a string",
        Json::List => "a list",
        Json::Object(_) => "an object",
    }
}

/// Flattens one object into `(dotted name, value)` pairs; a list is an error naming its field.
fn flatten(
    prefix: &str,
    fields: Vec<(String, Json)>,
    out: &mut Vec<(String, Option<String>, &'static str)>,
) -> std::result::Result<(), String> {
    for (key, value) in fields {
        let name = if prefix.is_empty() {
            key
        } else {
            format!("{prefix}.{key}")
        };
        let what = kind(&value);
        let text = match value {
            Json::Object(inner) => {
                flatten(&name, inner, out)?;
                continue;
            }
            Json::List => {
                return Err(format!(
                    "field \"{name}\" is a list; kiln reads numbers, strings, booleans, null and nested objects (as dotted names), not lists yet"
                ));
            }
            Json::Null => None,
            Json::String(s) if s.is_empty() => None,
            Json::String(s) => Some(s),
            Json::Bool(b) => Some(b.to_string()),
            Json::Number(n) => Some(n.to_string()),
        };
        if out.iter().any(|(n, _, _)| *n == name) {
            return Err(format!("field \"{name}\" appears twice in the object"));
        }
        out.push((name, text, what));
    }
    Ok(())
}

/// A column as lines fill it: missing values until the first present one sets its type.
enum JsonColumn {
    /// Rows so far, all missing.
    Missing(usize),
    /// The column once a value has set its type.
    Cells(CellBuilder),
}

impl JsonColumn {
    fn len(&self) -> usize {
        match self {
            JsonColumn::Missing(rows) => *rows,
            JsonColumn::Cells(cells) => cells.len(),
        }
    }

    /// Appends a value of JSON type `what` (`None`: missing); numbers are read as numbers
    /// unless `text`.
    fn append(&mut self, value: Option<&str>, what: &str, text: bool) {
        if let (JsonColumn::Missing(rows), Some(_)) = (&*self, value) {
            let mut cells = CellBuilder::new(0, 0, text || what != "a number");
            (0..*rows).for_each(|_| cells.append(None));
            *self = JsonColumn::Cells(cells);
        }
        match self {
            JsonColumn::Missing(rows) => *rows += 1,
            JsonColumn::Cells(cells) => cells.append(value),
        }
    }

    fn finish(self, origin: &str, name: &str) -> Result<crate::Column> {
        match self {
            JsonColumn::Missing(rows) => Ok(crate::Column::texts(vec![None::<&str>; rows])),
            JsonColumn::Cells(cells) => cells.finish(origin, name),
        }
    }
}

/// Parses JSON Lines read from `source`; `origin` names the source in errors. A line that is
/// not a JSON object is an error naming its line and column, or is skipped and counted under
/// `BadRows::Skip`; so is a field whose type (number, string, boolean) differs from the type
/// it has on earlier lines. A list field is always an error. Fields of numbers become number
/// columns, except `text_columns` (labels, ids, categories), kept as written.
pub fn parse_jsonl(
    source: impl BufRead + 'static,
    origin: &str,
    bad_rows: BadRows,
    text_columns: &[String],
) -> Result<Table> {
    let mut chunks = JsonlChunks::new(Box::new(source), origin, bad_rows, text_columns, &[]);
    Ok(chunks
        .next_chunk(usize::MAX)?
        .expect("the first chunk is a table or an error"))
}

/// Field names in order of first appearance, and each one's JSON type and the line that set it.
pub(crate) type FieldTypes = (Vec<String>, Vec<Option<(&'static str, u64)>>);

/// JSON Lines read a chunk of lines at a time (`kiln predict` and `kiln eval` over files
/// larger than memory). Each chunk is a [`Table`] of its own, with every field seen so far
/// (and every `always` name) as a column; a field's JSON type is checked against the line that
/// first set it, across chunks, as the whole read does.
pub struct JsonlChunks {
    source: Box<dyn BufRead>,
    origin: String,
    bad_rows: BadRows,
    text_columns: Vec<String>,
    /// Field names seen so far, in order of first appearance.
    known: Vec<String>,
    /// Each known field's JSON type and the line that set it.
    types: Vec<Option<(&'static str, u64)>>,
    line: u64,
    done: bool,
    chunks: usize,
    /// Bytes read so far, from where the source started.
    bytes: u64,
}

impl JsonlChunks {
    /// Reads from `source`; `always` names columns every chunk has (missing where absent).
    pub(crate) fn new(
        source: Box<dyn BufRead>,
        origin: &str,
        bad_rows: BadRows,
        text_columns: &[String],
        always: &[String],
    ) -> Self {
        JsonlChunks {
            source,
            origin: origin.into(),
            bad_rows,
            text_columns: text_columns.to_vec(),
            known: always.to_vec(),
            types: vec![None; always.len()],
            line: 0,
            done: false,
            chunks: 0,
            bytes: 0,
        }
    }

    /// A reader of `file` from byte `byte`, the start of line `line` (a streamed run's shard).
    /// `fields` are the names and types a reader of the whole file ended with
    /// ([`fields`](Self::fields)): a line is checked against the type its field had first in
    /// the file, as the whole read checked it, wherever this reader starts.
    pub(crate) fn open_at(
        mut file: std::fs::File,
        byte: u64,
        line: u64,
        origin: &str,
        bad_rows: BadRows,
        text_columns: &[String],
        fields: &FieldTypes,
    ) -> Result<Self> {
        crate::csv_source::seek_to(&mut file, byte, origin)?;
        let mut chunks = JsonlChunks::new(
            Box::new(std::io::BufReader::new(file)),
            origin,
            bad_rows,
            text_columns,
            &fields.0,
        );
        chunks.types = fields.1.clone();
        chunks.line = line.saturating_sub(1);
        chunks.bytes = byte;
        // Not the first chunk of the file: an empty read is no error.
        chunks.chunks = 1;
        Ok(chunks)
    }

    /// The fields seen so far, in order, with each one's JSON type and the line that set it.
    pub(crate) fn fields(&self) -> FieldTypes {
        (self.known.clone(), self.types.clone())
    }

    /// The byte offset and line of the next line.
    pub(crate) fn position(&self) -> (u64, u64) {
        (self.bytes, self.line + 1)
    }

    /// The next chunk of at most `max_rows` rows (its report counts its own lines), or `None`
    /// at the end. A file without objects is the error the whole read gives.
    pub fn next_chunk(&mut self, max_rows: usize) -> Result<Option<Table>> {
        if self.done && self.chunks > 0 {
            return Ok(None);
        }
        let origin = self.origin.clone();
        let names = self.known.clone();
        let mut columns: Vec<JsonColumn> = names.iter().map(|_| JsonColumn::Missing(0)).collect();
        let mut names = names;
        let mut lines = Vec::new();
        let mut report = LoadReport::default();
        let mut buffer = Vec::new();
        while lines.len() < max_rows.max(1) {
            buffer.clear();
            let read = self
                .source
                .read_until(b'\n', &mut buffer)
                .map_err(|source| DataError::Io {
                    path: origin.clone(),
                    source,
                })?;
            if read == 0 {
                self.done = true;
                break;
            }
            self.bytes += read as u64;
            self.line += 1;
            let line = self.line;
            let raw = match line {
                1 => buffer.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(&buffer),
                _ => &buffer[..],
            };
            if raw.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            report.rows_read += 1;
            let types = &self.types;
            let parsed = match serde_json::from_slice::<Json>(raw) {
                Ok(Json::Object(object)) => {
                    let mut fields = Vec::new();
                    match flatten("", object, &mut fields) {
                        Ok(()) => fields
                            .iter()
                            .find_map(|(name, value, what)| {
                                let c = names.iter().position(|n| n == name)?;
                                let (first, at) = types.get(c).copied().flatten()?;
                                (value.is_some() && first != *what).then(|| {
                                    format!(
                                        "field \"{name}\" is {what} here but {first} on line {at}; a field holds one type"
                                    )
                                })
                            })
                            .map_or(Ok(fields), Err),
                        Err(message) => {
                            return Err(DataError::Malformed {
                                path: origin,
                                line,
                                message,
                            });
                        }
                    }
                }
                Ok(other) => Err(format!("expected a JSON object, found {}", kind(&other))),
                Err(e) => Err(format!("column {}: {e}", e.column())),
            };
            let fields = match (parsed, self.bad_rows) {
                (Ok(fields), _) => fields,
                (Err(message), BadRows::Error) => {
                    return Err(DataError::Malformed {
                        path: origin,
                        line,
                        message: format!(
                            "{message} (set data.bad_rows = \"skip\" to drop such rows)"
                        ),
                    });
                }
                (Err(message), BadRows::Skip) => {
                    report.skip(line, &message);
                    continue;
                }
            };
            let row = lines.len();
            for (name, value, what) in fields {
                let c = match names.iter().position(|n| *n == name) {
                    Some(c) => c,
                    None => {
                        names.push(name.clone());
                        self.known.push(name);
                        columns.push(JsonColumn::Missing(row));
                        self.types.push(None);
                        columns.len() - 1
                    }
                };
                if value.is_some() && self.types[c].is_none() {
                    self.types[c] = Some((what, line));
                }
                // Only a column's first value chooses its builder.
                let text = matches!(columns[c], JsonColumn::Missing(_))
                    && self.text_columns.contains(&names[c]);
                columns[c].append(value.as_deref(), what, text);
            }
            for column in &mut columns {
                if column.len() == row {
                    column.append(None, "null", false);
                }
            }
            lines.push(line);
        }
        self.chunks += 1;
        let columns = columns
            .into_iter()
            .zip(&names)
            .map(|(c, name)| c.finish(&origin, name))
            .collect::<Result<_>>()?;
        if lines.is_empty() && self.chunks > 1 {
            // The end, or a last stretch of skipped lines: only its report.
            if report.bad_rows_skipped == 0 {
                return Ok(None);
            }
            return Ok(Some(Table {
                origin,
                names,
                columns,
                lines,
                report,
            }));
        }
        crate::csv_source::text_table(
            &origin,
            names,
            columns,
            lines,
            report,
            "the file holds no JSON objects",
        )
        .map(Some)
    }
}
