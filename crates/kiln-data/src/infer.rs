//! Deciding what each column is: feature types, the target and the task.

use std::collections::HashSet;

use arrow_array::Array;

use kiln_config::{
    BadRows, CategoricalEncoding, Config, FeatureType, MissingStrategy, ModelKind, Normalization,
    Task, Truncation,
};
use kiln_text::TokenizerKind;
use serde::{Deserialize, Serialize};

use crate::table::{Column, Table};
use crate::{DataError, Result};

/// How one input column is treated.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ColumnPlan {
    /// Column name.
    pub name: String,
    /// Its type.
    pub kind: FeatureType,
    /// Missing-value handling.
    pub missing: MissingStrategy,
    /// Constant fill value.
    pub fill_value: Option<String>,
    /// Numeric scaling.
    pub normalization: Normalization,
    /// Categorical encoding.
    pub encoding: CategoricalEncoding,
    /// Embedding width (0 = choose from the number of categories).
    pub embedding_dim: usize,
    /// Tokenizer of a text feature.
    #[serde(default)]
    pub tokenizer: Option<TokenizerKind>,
    /// Longest token sequence kept of a text feature (longer texts keep their start).
    #[serde(default)]
    pub max_tokens: usize,
    /// Lowercase a text feature before tokenizing.
    #[serde(default)]
    pub lowercase: bool,
    /// Which tokens of a long text are kept.
    #[serde(default)]
    pub truncation: Truncation,
    /// Put the tokenizer's special tokens around each text (`[CLS] … [SEP]`), as the
    /// pretrained model it belongs to saw them.
    #[serde(default)]
    pub special_tokens: bool,
    /// Windows of `max_tokens` a long text is read in (`text.windows`).
    #[serde(default = "one")]
    pub windows: usize,
    /// Tokens a window repeats from the one before it (`text.window_overlap`).
    #[serde(default)]
    pub window_overlap: usize,
}

fn one() -> usize {
    1
}

/// The resolved roles of all columns.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Schema {
    /// Target column.
    pub target: String,
    /// Classification or regression.
    pub task: Task,
    /// Id column carried to predictions.
    pub id_column: Option<String>,
    /// Input features, in column order.
    pub features: Vec<ColumnPlan>,
    /// Columns left out, with the reason.
    pub ignored: Vec<(String, String)>,
}

/// The number a string holds, when it is finite as the 32-bit float the model computes in:
/// `1e300` is a finite f64 but `inf` in f32, so it is not a number here.
pub(crate) fn parse_number(s: &str) -> Option<f64> {
    s.parse::<f64>()
        .ok()
        .filter(|v| v.is_finite() && (*v as f32).is_finite())
}

/// Whether `s` reads as a finite number at all (f64), for inferring what a column is: a
/// value beyond f32 still makes a column numeric, so that [`drop_bad_values`] names its line
/// instead of the column silently turning categorical.
pub(crate) fn looks_numeric(s: &str) -> Option<f64> {
    s.parse::<f64>().ok().filter(|v| v.is_finite())
}

/// Why [`parse_number`] refused `s`.
pub(crate) fn not_a_number(s: &str) -> String {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() => format!(
            "\"{s}\" is outside the range of 32-bit floats (magnitude at most {:e})",
            f32::MAX
        ),
        Ok(_) => format!("\"{s}\" is not a finite number"),
        Err(_) => format!("\"{s}\" is not a number"),
    }
}

/// Infers the type of a column from its values (not the target).
pub(crate) fn infer_type(column: &Column) -> (FeatureType, Option<String>) {
    match column {
        Column::Image { .. } => (FeatureType::Image, None),
        Column::Number(values) => {
            if values.null_count() == values.len() {
                return (FeatureType::Ignore, Some("every value is missing".into()));
            }
            let distinct: HashSet<u64> = values.iter().flatten().map(|v| v.to_bits()).collect();
            if distinct.len() <= 2 && values.iter().flatten().all(|v| v == 0.0 || v == 1.0) {
                (FeatureType::Binary, None)
            } else {
                (FeatureType::Numeric, None)
            }
        }
        Column::Text(values) => {
            let (mut count, mut numeric, mut zero_one) = (0usize, 0usize, true);
            for v in values.iter().flatten() {
                count += 1;
                match looks_numeric(v) {
                    Some(x) => {
                        numeric += 1;
                        zero_one &= x == 0.0 || x == 1.0;
                    }
                    None => zero_one = false,
                }
            }
            if count == 0 {
                return (FeatureType::Ignore, Some("every value is missing".into()));
            }
            if numeric == count {
                // Numbers: binary when only 0 and 1, in at most two spellings (no set of every
                // value is built for other numeric columns).
                let binary =
                    zero_one && values.iter().flatten().collect::<HashSet<&str>>().len() <= 2;
                return if binary {
                    (FeatureType::Binary, None)
                } else {
                    (FeatureType::Numeric, None)
                };
            }
            let present = || values.iter().flatten();
            let distinct: HashSet<&str> = present().collect();
            // Mostly numbers with a few stray strings: a numeric column with bad values, so
            // they are reported rather than turning the column into categories.
            if numeric as f64 >= 0.9 * count as f64 && distinct.len() > 10 {
                return (FeatureType::Numeric, None);
            }
            if distinct.len() == 2 {
                return (FeatureType::Binary, None);
            }
            if distinct.len() == 1 {
                return (FeatureType::Ignore, Some("constant column".into()));
            }
            if distinct.len() > 20 && distinct.len() as f64 > 0.5 * count as f64 {
                if looks_like_prose(present()) {
                    return (FeatureType::Text, None);
                }
                return (
                    FeatureType::Ignore,
                    Some(format!(
                        "{} distinct strings in {} rows looks like an identifier or free text",
                        distinct.len(),
                        count
                    )),
                );
            }
            (FeatureType::Categorical, None)
        }
    }
}

/// Mostly-distinct strings that read as sentences rather than identifiers: long on average,
/// or several words long.
fn looks_like_prose<'a>(values: impl Iterator<Item = &'a str>) -> bool {
    let (mut n, mut chars, mut words) = (0usize, 0usize, 0usize);
    for s in values {
        n += 1;
        chars += s.chars().count();
        words += s.split_whitespace().count();
    }
    let n = n.max(1) as f64;
    chars as f64 / n >= 24.0 || words as f64 / n >= 4.0
}

/// Whether a column name reads as an identifier: `id`, `ID`, `user_id`, `PassengerId`,
/// `customer-id`, `rownames`, `index`, `Unnamed: 0` (pandas' written index), `path`, `file`
/// (an image folder's file names).
pub(crate) fn id_like_name(name: &str) -> bool {
    let lower = name.trim().to_lowercase();
    if matches!(
        lower.as_str(),
        "id" | "rownames"
            | "row_names"
            | "rowname"
            | "index"
            | "row"
            | "row_id"
            | "unnamed: 0"
            | "path"
            | "file"
            | "filename"
            | "file_name"
    ) || lower.is_empty()
    {
        return true;
    }
    ["_id", "-id", " id", ".id"]
        .iter()
        .any(|suffix| lower.ends_with(suffix))
        || (name.ends_with("Id") || name.ends_with("ID"))
            && name.len() > 2
            && name[..name.len() - 2]
                .chars()
                .last()
                .is_some_and(|c| c.is_ascii_lowercase())
}

/// Why `column` is taken for an id column, when it is one: every value present and distinct,
/// and either strings without spaces (at least 20 rows, or an id-like name), or integers
/// with an id-like name or numbering the rows (a shuffled `a..a+n` range, at least 20 rows).
fn id_like(name: &str, column: &Column) -> Option<String> {
    let rows = column.len();
    if rows < 2 {
        return None;
    }
    let named = id_like_name(name);
    let integers: Option<Vec<i64>> = match column {
        Column::Number(values) => values
            .iter()
            .map(|v| {
                v.filter(|v| v.fract() == 0.0 && v.abs() < 9e15)
                    .map(|v| v as i64)
            })
            .collect(),
        Column::Text(values) => {
            let present: Option<Vec<&str>> = values.iter().collect();
            let present = present?;
            let parsed: Option<Vec<i64>> = present.iter().map(|s| s.trim().parse().ok()).collect();
            if parsed.is_none() {
                if present.iter().any(|s| looks_numeric(s).is_some()) {
                    return None;
                }
                let distinct: HashSet<&str> = present.iter().copied().collect();
                let all_distinct = distinct.len() == rows;
                let words = present
                    .iter()
                    .any(|s| s.trim().contains(char::is_whitespace));
                return (all_distinct && (named || rows >= 20 && !words))
                    .then(|| format!("{rows} distinct strings, one per row"));
            }
            parsed
        }
        Column::Image { .. } => None,
    };
    let integers = integers?;
    let distinct: HashSet<i64> = integers.iter().copied().collect();
    if distinct.len() != rows {
        return None;
    }
    let (min, max) = (distinct.iter().min()?, distinct.iter().max()?);
    let numbering = rows >= 20 && (max - min) as usize == rows - 1;
    (named || numbering).then(|| {
        format!(
            "{rows} distinct integers, one per row{}",
            if numbering && !named {
                format!(" ({min}..={max}, the rows' numbers)")
            } else {
                String::new()
            }
        )
    })
}

fn infer_task(column: &Column) -> Task {
    let values: Vec<f64> = match column {
        Column::Number(v) => v.iter().flatten().collect(),
        Column::Text(v) => {
            let present: Vec<&str> = v.iter().flatten().collect();
            let parsed: Vec<f64> = present.iter().filter_map(|s| looks_numeric(s)).collect();
            if parsed.len() != present.len() {
                return Task::Classification;
            }
            parsed
        }
        Column::Image { .. } => return Task::Regression,
    };
    let distinct: HashSet<u64> = values.iter().map(|v| v.to_bits()).collect();
    if values.iter().all(|v| v.fract() == 0.0) && distinct.len() <= 20 {
        Task::Classification
    } else {
        Task::Regression
    }
}

/// Resolves the target, task, id column and every feature's plan from the config and the
/// values of `table`.
pub fn infer_schema(table: &Table, config: &Config) -> Result<Schema> {
    let data = &config.data;
    let target = match &data.target {
        Some(t) => t.clone(),
        None => ["target", "label"]
            .into_iter()
            .find(|n| table.column_index(n).is_some())
            .map(str::to_string)
            .ok_or_else(|| {
                DataError::Invalid(format!(
                    "{}: set data.target (or --target) to one of: {}",
                    table.origin,
                    table.names.join(", ")
                ))
            })?,
    };
    let target_column = table.column(&target, "target")?;
    if matches!(target_column, Column::Image { .. }) {
        return Err(DataError::Invalid(format!(
            "target \"{target}\" is an image column"
        )));
    }
    let task = data.task.unwrap_or_else(|| infer_task(target_column));
    if task == Task::Regression
        && let Column::Text(values) = target_column
        && let Some((row, bad)) = values.iter().enumerate().find_map(|(i, v)| {
            v.filter(|s| looks_numeric(s).is_none())
                .map(|s| (i, s.to_string()))
        })
    {
        return Err(DataError::BadValue {
            path: table.origin.clone(),
            line: table.lines[row],
            column: target,
            message: format!("regression target must be a finite number, got \"{bad}\""),
        });
    }
    if let Some(id) = &data.id_column {
        table.column(id, "id_column")?;
    }
    let split_column = data.split.column.as_deref();
    if let Some(c) = split_column {
        table.column(c, "split.column")?;
    }
    for f in &config.features {
        table.column(&f.name, "features")?;
    }
    let mut ignored = Vec::new();
    let id_column = match &data.id_column {
        Some(id) => Some(id.clone()),
        None if data.detect_id => detect_id_column(table, config, &target),
        None => None,
    };
    if let Some(id) = id_column.as_ref().filter(|_| data.id_column.is_none()) {
        let column = table.column(id, "id_column")?;
        let reason = id_like(id, column).unwrap_or_default();
        ignored.push((
            id.clone(),
            format!(
                "taken as the id column ({reason}): not a feature, written first by predict; data.detect_id = false makes it a feature"
            ),
        ));
    }
    let mut features = Vec::new();
    for (name, column) in table.names.iter().zip(&table.columns) {
        if *name == target
            || Some(name) == id_column.as_ref()
            || Some(name.as_str()) == split_column
        {
            continue;
        }
        let over = config.features.iter().find(|f| &f.name == name);
        let (kind, reason) = match over.and_then(|f| f.kind) {
            Some(k) => (k, Some("set to ignore in [[features]]".to_string())),
            None => match infer_type(column) {
                (FeatureType::Text, _) if config.model.kind != ModelKind::Transformer => (
                    FeatureType::Ignore,
                    Some(
                        "free text; set model.type = \"transformer\" to read it with a text encoder"
                            .into(),
                    ),
                ),
                inferred => inferred,
            },
        };
        match kind {
            FeatureType::Ignore => {
                ignored.push((name.clone(), reason.unwrap_or_default()));
                continue;
            }
            FeatureType::Id => {
                ignored.push((name.clone(), "id column".into()));
                continue;
            }
            FeatureType::Image if !matches!(column, Column::Image { .. }) => {
                return Err(DataError::Invalid(format!(
                    "{}: column \"{name}\" is not an image column",
                    table.origin
                )));
            }
            FeatureType::Text if config.model.kind != ModelKind::Transformer => {
                return Err(DataError::Invalid(format!(
                    "column \"{name}\" is a text feature: it needs model.type = \"transformer\" (model.type is \"{}\")",
                    format!("{:?}", config.model.kind).to_lowercase()
                )));
            }
            FeatureType::Text if !matches!(column, Column::Text(_)) => {
                return Err(DataError::Invalid(format!(
                    "{}: column \"{name}\" holds numbers or images, not text",
                    table.origin
                )));
            }
            _ => {}
        }
        let default_missing = match kind {
            FeatureType::Numeric => data.missing_numeric,
            _ => data.missing_categorical,
        };
        let missing = over.and_then(|f| f.missing).unwrap_or(default_missing);
        if kind != FeatureType::Numeric
            && matches!(missing, MissingStrategy::Mean | MissingStrategy::Median)
        {
            return Err(DataError::Invalid(format!(
                "feature \"{name}\" is {kind:?}: missing = \"{missing:?}\" needs a numeric column; use mode, constant or drop"
            ).to_lowercase()));
        }
        features.push(ColumnPlan {
            name: name.clone(),
            kind,
            missing,
            fill_value: over.and_then(|f| f.fill_value.clone()),
            normalization: over
                .and_then(|f| f.normalization)
                .unwrap_or(data.normalization),
            encoding: over.and_then(|f| f.encoding).unwrap_or(data.encoding),
            embedding_dim: over.and_then(|f| f.embedding_dim).unwrap_or(0),
            tokenizer: (kind == FeatureType::Text).then(|| match &config.model.pretrained {
                Some(dir) => TokenizerKind::File {
                    path: std::path::Path::new(dir)
                        .join("tokenizer.json")
                        .display()
                        .to_string(),
                },
                None => TokenizerKind::from_setting(&config.text.tokenizer, config.text.vocab_size),
            }),
            max_tokens: if kind == FeatureType::Text {
                config.model.context
            } else {
                0
            },
            lowercase: kind == FeatureType::Text
                && config.text.lowercase
                && config.model.pretrained.is_none(),
            truncation: config.text.truncation,
            special_tokens: kind == FeatureType::Text && config.model.pretrained.is_some(),
            windows: if kind == FeatureType::Text {
                config.text.windows
            } else {
                1
            },
            window_overlap: if kind == FeatureType::Text {
                config.text.window_overlap
            } else {
                0
            },
        });
    }
    if features.is_empty() {
        return Err(DataError::Invalid(format!(
            "{}: no usable feature columns (ignored: {ignored:?})",
            table.origin
        )));
    }
    let texts = features
        .iter()
        .filter(|f| f.kind == FeatureType::Text)
        .count();
    if texts > 1 {
        return Err(DataError::Invalid(format!(
            "{}: {texts} text features; a transformer reads one text column (join them into one, or set the others to type = \"ignore\")",
            table.origin
        )));
    }
    if config.model.kind == ModelKind::Transformer && texts == 0 {
        return Err(DataError::Invalid(format!(
            "{}: model.type = \"transformer\" needs a text feature; none of the columns was inferred as text (mark one with [[features]] type = \"text\")",
            table.origin
        )));
    }
    if features.iter().any(|f| f.kind == FeatureType::Image) && features.len() > 1 {
        return Err(DataError::Invalid(
            "an image feature cannot be mixed with tabular features yet".into(),
        ));
    }
    Ok(Schema {
        target,
        task,
        id_column,
        features,
        ignored,
    })
}

/// The id-like column of `table` ([`id_like`]), preferring an id-like name; columns the
/// config names (target, split, `[[features]]`) are never taken.
fn detect_id_column(table: &Table, config: &Config, target: &str) -> Option<String> {
    let taken = |name: &str| {
        name == target
            || Some(name) == config.data.split.column.as_deref()
            || config.features.iter().any(|f| f.name == name)
    };
    let candidates: Vec<&String> = table
        .names
        .iter()
        .zip(&table.columns)
        .filter(|(name, column)| !taken(name) && id_like(name, column).is_some())
        .map(|(name, _)| name)
        .collect();
    candidates
        .iter()
        .find(|name| id_like_name(name))
        .or(candidates.first())
        .map(|name| name.to_string())
}

/// Finds rows whose numeric features or target hold values that are not finite numbers.
/// Under `BadRows::Error` the first is an error naming the line and column; under `Skip` the
/// rows are removed and counted in the report.
pub fn drop_bad_values(table: &mut Table, schema: &Schema, bad_rows: BadRows) -> Result<()> {
    let mut numeric: Vec<usize> = schema
        .features
        .iter()
        .filter(|f| f.kind == FeatureType::Numeric)
        .filter_map(|f| table.column_index(&f.name))
        .collect();
    if schema.task == Task::Regression {
        numeric.extend(table.column_index(&schema.target));
    }
    let mut bad = vec![false; table.num_rows()];
    for &c in &numeric {
        let Column::Text(values) = &table.columns[c] else {
            continue;
        };
        for (row, v) in values.iter().enumerate() {
            let Some(s) = v else { continue };
            if parse_number(s).is_some() {
                continue;
            }
            let message = not_a_number(s);
            match bad_rows {
                BadRows::Error => {
                    return Err(DataError::BadValue {
                        path: table.origin.clone(),
                        line: table.lines[row],
                        column: table.names[c].clone(),
                        message: format!(
                            "{message} (set data.bad_rows = \"skip\" to drop such rows)"
                        ),
                    });
                }
                BadRows::Skip => {
                    if !bad[row] {
                        bad[row] = true;
                        table.report.bad_rows_skipped += 1;
                        if table.report.bad_row_examples.len() < 5 {
                            let line = table.lines[row];
                            let column = &table.names[c];
                            table
                                .report
                                .bad_row_examples
                                .push(format!("line {line}: column \"{column}\": {message}"));
                        }
                    }
                }
            }
        }
    }
    if bad.iter().any(|&b| b) {
        let keep: Vec<usize> = (0..bad.len()).filter(|&r| !bad[r]).collect();
        let report = table.report.clone();
        *table = table.select(&keep);
        table.report = report;
    }
    Ok(())
}
