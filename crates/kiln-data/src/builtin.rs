//! Data sets compiled into the binary, so examples and tests need no download.

use crate::table::Table;
#[cfg(feature = "builtin")]
use crate::table::{Column, LoadReport};
use crate::{DataError, Result};

/// Names accepted after `builtin:`.
pub const BUILTIN_DATASETS: [&str; 6] = [
    "digits",
    "iris",
    "breast_cancer",
    "diabetes",
    "boston",
    "wine_quality",
];

/// Loads a built-in data set as a table whose last column is `target`.
#[cfg(feature = "builtin")]
pub fn load_builtin(name: &str) -> Result<Table> {
    use smartcore::dataset;
    if name == "wine_quality" {
        return wine_quality();
    }
    let (ds, names): (dataset::Dataset<f32, f32>, Option<Vec<String>>) = match name {
        "digits" => (
            dataset::digits::load_dataset(),
            Some(
                (0..64)
                    .map(|i| format!("pixel_{}_{}", i / 8, i % 8))
                    .collect(),
            ),
        ),
        "iris" => (as_f32(dataset::iris::load_dataset()), None),
        "breast_cancer" => (as_f32(dataset::breast_cancer::load_dataset()), None),
        "diabetes" => (as_f32(dataset::diabetes::load_dataset()), None),
        "boston" => (dataset::boston::load_dataset(), None),
        _ => {
            return Err(DataError::UnknownBuiltin {
                name: name.to_string(),
            });
        }
    };
    let mut names = names.unwrap_or_else(|| ds.feature_names.clone());
    if names.len() != ds.num_features {
        names = (0..ds.num_features).map(|i| format!("x{i}")).collect();
    }
    let mut columns: Vec<Column> = (0..ds.num_features)
        .map(|f| {
            Column::Number(
                (0..ds.num_samples)
                    .map(|r| Some(ds.data[r * ds.num_features + f] as f64))
                    .collect(),
            )
        })
        .collect();
    let target: Vec<Option<f64>> = ds.target.iter().map(|&t| Some(t as f64)).collect();
    // Iris targets are class indices; give them their names so reports read well.
    if name == "iris" {
        let labels = ["setosa", "versicolor", "virginica"];
        columns.push(Column::Text(
            target
                .iter()
                .map(|t| t.map(|v| labels[v as usize].to_string()))
                .collect(),
        ));
    } else {
        columns.push(Column::numbers(target));
    }
    names.push("target".into());
    Ok(Table {
        origin: format!("builtin:{name}"),
        names,
        columns,
        lines: (2..ds.num_samples as u64 + 2).collect(),
        report: LoadReport {
            rows_read: ds.num_samples,
            ..Default::default()
        },
    })
}

/// Red wine quality (1599 wines, 11 physico-chemical measurements, quality score 3-8) from
/// `linfa-datasets`.
#[cfg(feature = "builtin")]
fn wine_quality() -> Result<Table> {
    let ds = linfa_datasets::winequality();
    let records = ds.records();
    let (rows, cols) = records.dim();
    let mut names: Vec<String> = ds.feature_names().to_vec();
    let mut columns: Vec<Column> = (0..cols)
        .map(|c| Column::Number((0..rows).map(|r| Some(records[[r, c]])).collect()))
        .collect();
    columns.push(Column::Number(
        ds.targets().iter().map(|&t| Some(t as f64)).collect(),
    ));
    names.push("quality".into());
    Ok(Table {
        origin: "builtin:wine_quality".into(),
        names,
        columns,
        lines: (2..rows as u64 + 2).collect(),
        report: LoadReport {
            rows_read: rows,
            ..Default::default()
        },
    })
}

#[cfg(feature = "builtin")]
fn as_f32(ds: smartcore::dataset::Dataset<f32, u32>) -> smartcore::dataset::Dataset<f32, f32> {
    smartcore::dataset::Dataset {
        data: ds.data,
        target: ds.target.into_iter().map(|t| t as f32).collect(),
        num_samples: ds.num_samples,
        num_features: ds.num_features,
        feature_names: ds.feature_names,
        target_names: ds.target_names,
        description: ds.description,
    }
}

/// Built-in data sets are compiled out.
#[cfg(not(feature = "builtin"))]
pub fn load_builtin(name: &str) -> Result<Table> {
    Err(DataError::Invalid(format!(
        "builtin:{name}: kiln was built without the `builtin` feature"
    )))
}
