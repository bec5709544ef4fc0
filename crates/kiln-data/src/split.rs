//! Seeded train/validation/test splits.

use std::collections::BTreeMap;

use kiln_config::{DataConfig, SplitConfig, SplitMethod, Task};
use serde::{Deserialize, Serialize};

use crate::infer::Schema;
use crate::table::Table;
use crate::{DataError, Result};
use kiln_rng::SplitMix64;

/// Row indices of each split.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Split {
    /// Training rows.
    pub train: Vec<usize>,
    /// Validation rows (early stopping, plateau, best checkpoint).
    pub validation: Vec<usize>,
    /// Test rows (the final report only).
    pub test: Vec<usize>,
}

const SPLIT_STREAM: u64 = 0x5EED_5911;

fn take(rows: &[usize], validation: f64, test: f64, out: &mut Split) {
    let n = rows.len();
    let n_test = (n as f64 * test).round() as usize;
    let n_val = (n as f64 * validation).round() as usize;
    let n_test = n_test.min(n);
    let n_val = n_val.min(n - n_test);
    out.test.extend_from_slice(&rows[..n_test]);
    out.validation
        .extend_from_slice(&rows[n_test..n_test + n_val]);
    out.train.extend_from_slice(&rows[n_test + n_val..]);
}

/// Each row to the split its `data.split.column` value names.
fn split_by_column(table: &Table, cfg: &SplitConfig, out: &mut Split) -> Result<()> {
    let name = cfg.column.as_deref().expect("validated");
    let column = table.column(name, "split.column")?;
    for r in 0..table.num_rows() {
        let v = column.text(r).unwrap_or_default().to_ascii_lowercase();
        match v.as_str() {
            "train" | "training" => out.train.push(r),
            "validation" | "valid" | "val" | "dev" => out.validation.push(r),
            "test" => out.test.push(r),
            other => {
                return Err(DataError::BadValue {
                    path: table.origin.clone(),
                    line: table.lines[r],
                    column: name.to_string(),
                    message: format!("split \"{other}\" is not one of train, validation, test"),
                });
            }
        }
    }
    Ok(())
}

/// The split of a streamed source's chunk: each row on its own, by a draw seeded from
/// `data.split.seed` (else `seed`) and its row number (`random`, the default), or by `data.split.column`. A row
/// lands in the same split whatever chunk it is read in.
pub fn split_rows_streamed(table: &Table, data: &DataConfig, seed: u64) -> Result<Split> {
    let cfg = &data.split;
    let seed = cfg.seed.unwrap_or(seed);
    let mut out = Split::default();
    match cfg.method {
        Some(SplitMethod::Column) => split_by_column(table, cfg, &mut out)?,
        None | Some(SplitMethod::Random) => {
            let test = if data.test_source.is_some() {
                0.0
            } else {
                cfg.test
            };
            for (r, &line) in table.lines.iter().enumerate() {
                let u = (SplitMix64::derive(seed ^ SPLIT_STREAM, line).next_u64() >> 11) as f64
                    / (1u64 << 53) as f64;
                if u < test {
                    out.test.push(r);
                } else if u < test + cfg.validation {
                    out.validation.push(r);
                } else {
                    out.train.push(r);
                }
            }
        }
        Some(other) => {
            return Err(DataError::Invalid(format!(
                "data.split.method = \"{}\" needs every row at once; a streamed run splits row by row (random or column)",
                format!("{other:?}").to_lowercase()
            )));
        }
    }
    Ok(out)
}

/// Splits the rows of `table` as configured. With a separate test source, no test rows are
/// taken here. The same seed (`data.split.seed`, else `seed`) always gives the same split.
pub fn split_rows(table: &Table, schema: &Schema, data: &DataConfig, seed: u64) -> Result<Split> {
    let cfg = &data.split;
    let seed = cfg.seed.unwrap_or(seed);
    let test_fraction = if data.test_source.is_some() {
        0.0
    } else {
        cfg.test
    };
    let method = cfg.method.unwrap_or(match schema.task {
        Task::Classification => SplitMethod::Stratified,
        Task::Regression => SplitMethod::Random,
    });
    let mut rng = SplitMix64::derive(seed, SPLIT_STREAM);
    let n = table.num_rows();
    let mut out = Split::default();
    let class_groups = || -> Result<Vec<Vec<usize>>> {
        let target = table.column(&schema.target, "target")?;
        let mut groups: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for r in 0..n {
            groups
                .entry(target.text(r).unwrap_or_default())
                .or_default()
                .push(r);
        }
        Ok(groups.into_values().collect())
    };
    match method {
        SplitMethod::Random => {
            let mut rows: Vec<usize> = (0..n).collect();
            rng.shuffle(&mut rows);
            take(&rows, cfg.validation, test_fraction, &mut out);
        }
        SplitMethod::Stratified => {
            if schema.task == Task::Regression {
                return Err(DataError::Invalid(
                    "data.split.method = \"stratified\" needs a classification target".into(),
                ));
            }
            for mut group in class_groups()? {
                rng.shuffle(&mut group);
                take(&group, cfg.validation, test_fraction, &mut out);
            }
            // Interleave classes within each split.
            rng.shuffle(&mut out.train);
            rng.shuffle(&mut out.validation);
            rng.shuffle(&mut out.test);
        }
        SplitMethod::Column => split_by_column(table, cfg, &mut out)?,
        SplitMethod::Kfold => {
            // Deal shuffled rows (class by class for classification) round-robin into folds.
            let groups = if schema.task == Task::Classification {
                class_groups()?
            } else {
                vec![(0..n).collect()]
            };
            let mut dealt = 0usize;
            let mut rest = Vec::new();
            for mut group in groups {
                rng.shuffle(&mut group);
                for r in group {
                    if dealt % cfg.folds == cfg.fold {
                        out.test.push(r);
                    } else {
                        rest.push(r);
                    }
                    dealt += 1;
                }
            }
            rng.shuffle(&mut rest);
            take(
                &rest,
                cfg.validation / (1.0 - 1.0 / cfg.folds as f64),
                0.0,
                &mut out,
            );
        }
    }
    if out.train.is_empty() {
        return Err(DataError::Invalid(format!(
            "{}: the split leaves no training rows ({} rows in all)",
            table.origin, n
        )));
    }
    Ok(out)
}
