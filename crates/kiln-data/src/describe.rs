//! `kiln data describe`: what a data file holds.

use std::collections::{HashMap, HashSet};

use kiln_config::FeatureType;
use serde::{Deserialize, Serialize};

use crate::infer::infer_type;
use crate::table::{Column, Table};

/// Summary of one column.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ColumnSummary {
    /// Name.
    pub name: String,
    /// Inferred type.
    pub kind: FeatureType,
    /// Missing values.
    pub missing: usize,
    /// Distinct non-missing values.
    pub distinct: usize,
    /// Why it would be ignored, if it would.
    pub note: Option<String>,
    /// Min, mean, max of numeric columns.
    pub range: Option<(f64, f64, f64)>,
}

/// Summary of a table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Description {
    /// Source.
    pub origin: String,
    /// Rows.
    pub rows: usize,
    /// Per column.
    pub columns: Vec<ColumnSummary>,
    /// Count per class of the target column, most frequent first, when a target is given.
    pub class_balance: Option<(String, Vec<(String, usize)>)>,
}

/// Describes `table`; with `target`, also its class balance.
pub fn describe(table: &Table, target: Option<&str>) -> crate::Result<Description> {
    let mut columns = Vec::new();
    for (name, column) in table.names.iter().zip(&table.columns) {
        let (kind, note) = match column {
            Column::Image {
                channels,
                height,
                width,
                ..
            } => (
                FeatureType::Image,
                Some(format!(
                    "{} {height}x{width}",
                    if *channels == 3 { "RGB" } else { "grey" }
                )),
            ),
            _ => infer_type(column),
        };
        let rows = column.len();
        let missing = (0..rows).filter(|&r| column.is_missing(r)).count();
        let distinct = match column {
            Column::Image { .. } => rows,
            Column::Text(values) => values.iter().flatten().collect::<HashSet<&str>>().len(),
            Column::Number(values) => values
                .iter()
                .flatten()
                .map(f64::to_bits)
                .collect::<HashSet<u64>>()
                .len(),
        };
        let range = match (kind, column) {
            (FeatureType::Numeric | FeatureType::Binary, Column::Number(values)) => {
                range_of(values.iter().flatten())
            }
            (FeatureType::Numeric | FeatureType::Binary, Column::Text(values)) => range_of(
                values
                    .iter()
                    .flatten()
                    .filter_map(crate::infer::looks_numeric),
            ),
            _ => None,
        };
        columns.push(ColumnSummary {
            name: name.clone(),
            kind,
            missing,
            distinct,
            note,
            range,
        });
    }
    let class_balance = match target {
        Some(t) => {
            let column = table.column(t, "target")?;
            let mut counts: HashMap<String, usize> = HashMap::new();
            for r in 0..column.len() {
                *counts
                    .entry(column.text(r).unwrap_or_else(|| "<missing>".into()))
                    .or_default() += 1;
            }
            let mut counts: Vec<(String, usize)> = counts.into_iter().collect();
            counts.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
            Some((t.to_string(), counts))
        }
        None => None,
    };
    Ok(Description {
        origin: table.origin.clone(),
        rows: table.num_rows(),
        columns,
        class_balance,
    })
}

/// Minimum, mean and maximum.
fn range_of(vals: impl Iterator<Item = f64>) -> Option<(f64, f64, f64)> {
    let (mut n, mut min, mut max, mut sum) = (0usize, f64::INFINITY, f64::NEG_INFINITY, 0.0);
    for v in vals {
        n += 1;
        min = min.min(v);
        max = max.max(v);
        sum += v;
    }
    (n > 0).then(|| (min, sum / n as f64, max))
}
