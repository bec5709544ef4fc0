//! The preprocessor's statistics, gathered in one pass over the training rows a chunk at a
//! time ([`FitPass`]): numeric mean and variance (per-chunk two-pass sums merged with Chan's
//! formula), minimum and maximum, quantiles from a seeded reservoir sample, and value counts.
//! Fitting a whole table is one chunk with no limits, every value kept: its mean and variance
//! are summed over the sorted values as before the pass existed; a streamed fit caps the
//! sample and the counts.

use std::collections::{BTreeSet, HashMap};

use kiln_config::{CategoricalEncoding, FeatureType, MissingStrategy, Normalization, Task};
use kiln_rng::SplitMix64;

use crate::infer::{ColumnPlan, Schema, parse_number};
use crate::preprocess::{
    FeatureTransform, Preprocessor, TargetTransform, check_statistic, numeric_values, sort_labels,
};
use crate::table::Table;
use crate::{DataError, Result};

/// How much a [`FitPass`] may hold.
#[derive(Debug, Clone, Copy)]
pub struct FitLimits {
    /// Values kept per numeric column for quantiles (median, robust scaling); beyond it a
    /// uniform sample of this size stands for them.
    pub sample: usize,
    /// Distinct values counted per column (categories, classes, a numeric mode).
    pub distinct: usize,
}

impl FitLimits {
    /// Everything kept: the exact statistics of a table in memory, observed once (each
    /// numeric column's values are let go as soon as they are summed up).
    pub const EXACT: FitLimits = FitLimits {
        sample: usize::MAX,
        distinct: usize::MAX,
    };
    /// A pass over data larger than memory.
    pub const STREAMING: FitLimits = FitLimits {
        sample: 1 << 20,
        distinct: 100_000,
    };
}

/// Seed stream of the quantile sample.
const SAMPLE_STREAM: u64 = 0x5A_4D91;

/// The running statistics of one numeric column.
#[derive(Debug)]
struct NumericStats {
    count: u64,
    /// Plain sum in row order (the mean is `sum / count`, as a one-pass sum would give it).
    sum: f64,
    /// Sum of squared deviations from the mean.
    m2: f64,
    min: f64,
    max: f64,
    /// The value of largest magnitude, and where it is (file, line): named when a statistic
    /// overflows.
    extreme: Option<(f64, String, u64)>,
    /// A uniform sample of the values, when quantiles are needed.
    sample: Option<(Vec<f64>, SplitMix64)>,
    /// Counts of the values as written, when the mode is needed.
    counts: Option<HashMap<String, u64>>,
    /// A fit of a whole table: the statistics of every value, its values let go.
    settled: Option<Settled>,
}

/// What a whole column's sorted values give: mean and variance (summed in sorted order, as
/// kiln always has) and the quartiles.
#[derive(Debug, Clone, Copy)]
struct Settled {
    mean: f64,
    variance: f64,
    quartiles: [f64; 3],
}

impl NumericStats {
    fn new(quantiles: bool, mode: bool) -> Self {
        NumericStats {
            count: 0,
            sum: 0.0,
            m2: 0.0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
            extreme: None,
            sample: quantiles.then(|| (Vec::new(), SplitMix64::new(SAMPLE_STREAM))),
            counts: mode.then(HashMap::new),
            settled: None,
        }
    }

    /// Adds one chunk's values (`lines[i]` is where `values[i]` is).
    fn observe(
        &mut self,
        values: &[Option<f64>],
        origin: &str,
        lines: impl Iterator<Item = u64>,
        name: &str,
        limits: FitLimits,
    ) -> Result<()> {
        debug_assert!(self.settled.is_none(), "an exact fit observes one table");
        let mut n = 0u64;
        let mut sum = 0.0;
        let mut at = None;
        for (v, line) in values.iter().zip(lines) {
            let Some(v) = *v else { continue };
            n += 1;
            sum += v;
            self.sum += v;
            self.min = self.min.min(v);
            self.max = self.max.max(v);
            if at.is_none_or(|(a, _): (f64, u64)| v.abs() >= a.abs()) {
                at = Some((v, line));
            }
            if let Some((sample, rng)) = &mut self.sample {
                // Vitter's algorithm R.
                let seen = self.count + n;
                if sample.len() < limits.sample {
                    sample.push(v);
                } else {
                    let j = rng.next_u64() % seen;
                    if (j as usize) < limits.sample {
                        sample[j as usize] = v;
                    }
                }
            }
            if let Some(counts) = &mut self.counts {
                let key = v.to_string();
                if !counts.contains_key(&key) && counts.len() >= limits.distinct {
                    return Err(too_many(
                        name,
                        limits.distinct,
                        "for the mode of its values",
                    ));
                }
                *counts.entry(key).or_default() += 1;
            }
        }
        if let Some((v, line)) = at
            && self.extreme.as_ref().is_none_or(|e| v.abs() > e.0.abs())
        {
            self.extreme = Some((v, origin.to_string(), line));
        }
        if n == 0 {
            return Ok(());
        }
        let mean = sum / n as f64;
        let m2: f64 = values
            .iter()
            .flatten()
            .map(|v| (v - mean) * (v - mean))
            .sum();
        if self.count == 0 {
            self.m2 = m2;
        } else {
            let before = self.count as f64;
            let delta = mean - (self.sum - sum) / before;
            self.m2 += m2 + delta * delta * before * n as f64 / (before + n as f64);
        }
        self.count += n;
        Ok(())
    }

    /// Sorts every value kept, works out the statistics they give, and lets them go: a fit of
    /// a whole table holds one column's values at a time, not all of them.
    fn settle(&mut self) {
        if self
            .sample
            .as_ref()
            .is_none_or(|(v, _)| v.len() as u64 != self.count)
        {
            return;
        }
        let Some((mut values, _)) = self.sample.take() else {
            return;
        };
        self.settled = Some(Settled::of(&mut values));
    }

    /// Mean and population variance: of the sorted values where every one was kept (summed
    /// in sorted order, the same bits as kiln's fits always gave), else from the running sums.
    fn moments(&mut self) -> (f64, f64) {
        self.settle();
        match self.settled {
            Some(s) => (s.mean, s.variance),
            None => {
                let n = self.count.max(1) as f64;
                (self.sum / n, self.m2 / n)
            }
        }
    }

    /// The quartiles of the values (of the sample when not all were kept), interpolated as
    /// numpy's default.
    fn quartiles(&mut self) -> [f64; 3] {
        self.settle();
        if let Some(s) = self.settled {
            return s.quartiles;
        }
        let Some((sample, _)) = &mut self.sample else {
            unreachable!("quantiles were asked for up front");
        };
        Settled::of(sample).quartiles
    }

    /// The most frequent value (the smallest as text on ties).
    fn mode(&self) -> Option<f64> {
        let counts = self.counts.as_ref()?;
        let best = counts
            .iter()
            .max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0)))?;
        best.0.parse().ok()
    }

    /// The fitted transform of feature `plan`.
    fn finish(mut self, plan: &ColumnPlan) -> Result<FeatureTransform> {
        if self.count == 0 {
            return Err(DataError::Invalid(format!(
                "feature \"{}\" has no values in the training split",
                plan.name
            )));
        }
        let (mean, variance) = self.moments();
        let fill = match plan.missing {
            MissingStrategy::Mean | MissingStrategy::Drop => mean,
            MissingStrategy::Median => self.quartiles()[1],
            MissingStrategy::Mode => self.mode().unwrap_or(0.0),
            MissingStrategy::Constant => {
                let raw = plan.fill_value.clone().unwrap_or_default();
                parse_number(&raw).ok_or_else(|| {
                    DataError::Invalid(format!(
                        "feature \"{}\": fill_value \"{raw}\" is not a number",
                        plan.name
                    ))
                })?
            }
        };
        let (shift, scale) = match plan.normalization {
            Normalization::None => (0.0, 1.0),
            Normalization::Zscore => (mean, if variance > 0.0 { variance.sqrt() } else { 1.0 }),
            Normalization::MinMax => {
                let (lo, hi) = (self.min, self.max);
                (lo, if hi > lo { hi - lo } else { 1.0 })
            }
            Normalization::Robust => {
                let [q1, median, q3] = self.quartiles();
                let iqr = q3 - q1;
                (median, if iqr > 0.0 { iqr } else { 1.0 })
            }
        };
        for (what, v, positive) in [
            ("fill", fill, false),
            ("shift", shift, false),
            ("scale", scale, true),
        ] {
            if let Err(message) = check_statistic(what, v, positive) {
                // Name the row that drove the statistic: the largest magnitude.
                let (extreme, path, line) = self.extreme.clone().unwrap_or_default();
                return Err(DataError::BadValue {
                    path,
                    line,
                    column: plan.name.clone(),
                    message: format!(
                        "fitting {:?} normalisation failed ({message}); the largest value, {extreme}, is here",
                        plan.normalization
                    ),
                });
            }
        }
        Ok(FeatureTransform::Numeric {
            name: plan.name.clone(),
            fill,
            drop_missing: plan.missing == MissingStrategy::Drop,
            shift,
            scale,
        })
    }
}

impl Settled {
    fn of(values: &mut [f64]) -> Settled {
        if !values.is_sorted_by(|a, b| a <= b) {
            values.sort_by(f64::total_cmp);
        }
        let n = values.len().max(1) as f64;
        let mean = values.iter().sum::<f64>() / n;
        let variance = values.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n;
        let q = |q| crate::preprocess::quantile(values, q);
        Settled {
            mean,
            variance,
            quartiles: [q(0.25), q(0.5), q(0.75)],
        }
    }
}

fn too_many(name: &str, limit: usize, what: &str) -> DataError {
    DataError::Invalid(format!(
        "column \"{name}\" has more than {limit} distinct values, more than a streamed pass counts {what}; \
         set its type to \"text\" or \"ignore\" (or, for a numeric mode, use missing = \"median\")"
    ))
}

/// Counts of one column's values as text.
#[derive(Debug, Default)]
struct ValueCounts(HashMap<String, u64>);

impl ValueCounts {
    fn add(&mut self, value: String, name: &str, limits: FitLimits) -> Result<()> {
        if let Some(n) = self.0.get_mut(&value) {
            *n += 1;
        } else if self.0.len() >= limits.distinct {
            return Err(too_many(name, limits.distinct, "as categories"));
        } else {
            self.0.insert(value, 1);
        }
        Ok(())
    }

    /// The values, most frequent first (ties by name).
    fn ranked(self) -> Vec<String> {
        let mut ranked: Vec<(String, u64)> = self.0.into_iter().collect();
        ranked.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        ranked.into_iter().map(|(v, _)| v).collect()
    }
}

/// What a [`FitPass`] gathers for one feature.
#[derive(Debug)]
enum FeatureStats {
    Numeric(NumericStats),
    Categories(ValueCounts),
    /// Images and text: fitted from a whole table by the caller.
    Whole,
}

/// The target's statistics.
#[derive(Debug)]
enum TargetStats {
    Classes(BTreeSet<String>),
    Values(NumericStats),
}

/// A preprocessor fitted one chunk of rows at a time.
#[derive(Debug)]
pub struct FitPass {
    schema: Schema,
    limits: FitLimits,
    features: Vec<FeatureStats>,
    target: TargetStats,
    train_rows: u64,
    /// Training rows the encoding keeps (a target, and a value wherever missing = "drop").
    kept_rows: u64,
    /// Missing values those rows have filled.
    filled: u64,
}

impl FitPass {
    /// A pass for `schema`'s features and target. Images and text features are fitted from
    /// a whole table ([`finish`](Self::finish)'s `whole`).
    pub fn new(schema: &Schema, limits: FitLimits) -> Self {
        let features = schema
            .features
            .iter()
            .filter(|p| !matches!(p.kind, FeatureType::Id | FeatureType::Ignore))
            .map(|plan| match plan.kind {
                // A fit in memory keeps every value (as it always has), a streamed one a
                // sample when quantiles need it.
                FeatureType::Numeric => FeatureStats::Numeric(NumericStats::new(
                    limits.sample == usize::MAX
                        || plan.missing == MissingStrategy::Median
                        || plan.normalization == Normalization::Robust,
                    plan.missing == MissingStrategy::Mode,
                )),
                FeatureType::Categorical | FeatureType::Binary => {
                    FeatureStats::Categories(ValueCounts::default())
                }
                _ => FeatureStats::Whole,
            })
            .collect();
        let target = match schema.task {
            Task::Classification => TargetStats::Classes(BTreeSet::new()),
            Task::Regression => TargetStats::Values(NumericStats::new(false, false)),
        };
        FitPass {
            schema: schema.clone(),
            limits,
            features,
            target,
            train_rows: 0,
            kept_rows: 0,
            filled: 0,
        }
    }

    /// The features a streamed pass cannot fit (images and text), by name.
    pub fn whole_table_features(&self) -> Vec<&str> {
        self.fitted_plans()
            .zip(&self.features)
            .filter(|(_, s)| matches!(s, FeatureStats::Whole))
            .map(|(p, _)| p.name.as_str())
            .collect()
    }

    fn fitted_plans(&self) -> impl Iterator<Item = &ColumnPlan> {
        self.schema
            .features
            .iter()
            .filter(|p| !matches!(p.kind, FeatureType::Id | FeatureType::Ignore))
    }

    /// Training rows seen so far.
    pub fn train_rows(&self) -> u64 {
        self.train_rows
    }

    /// Of the training rows, those encoding keeps (with a target, and a value in every
    /// feature whose missing values drop the row), and the missing values they have filled.
    pub fn kept_train_rows(&self) -> (usize, usize) {
        (self.kept_rows as usize, self.filled as usize)
    }

    /// Adds the `train` rows of `table` to the statistics, and the class names of its
    /// `labeled` rows (a class absent from the training rows still gets a label).
    pub fn observe(&mut self, table: &Table, train: &[usize], labeled: &[usize]) -> Result<()> {
        let lines = |rows: &[usize]| rows.iter().map(|&r| table.lines[r]).collect::<Vec<_>>();
        let train_lines = lines(train);
        let plans: Vec<ColumnPlan> = self.fitted_plans().cloned().collect();
        for (plan, stats) in plans.iter().zip(&mut self.features) {
            match stats {
                FeatureStats::Numeric(stats) => {
                    let column = table.column(&plan.name, "feature")?;
                    let values = numeric_values(table, column, &plan.name, train)?;
                    stats.observe(
                        &values,
                        &table.origin,
                        train_lines.iter().copied(),
                        &plan.name,
                        self.limits,
                    )?;
                    if self.limits.sample == usize::MAX {
                        // A table in memory is one chunk: its values can go now.
                        stats.settle();
                    }
                }
                FeatureStats::Categories(counts) => {
                    let column = table.column(&plan.name, "feature")?;
                    for &r in train {
                        if let Some(text) = column.text(r) {
                            counts.add(text, &plan.name, self.limits)?;
                        }
                    }
                }
                FeatureStats::Whole => {}
            }
        }
        let target = table.column(&self.schema.target, "target")?;
        match &mut self.target {
            TargetStats::Classes(classes) => {
                for &r in labeled {
                    if let Some(text) = target.text(r)
                        && !classes.contains(&text)
                    {
                        if classes.len() >= self.limits.distinct {
                            return Err(too_many(
                                &self.schema.target,
                                self.limits.distinct,
                                "as classes",
                            ));
                        }
                        classes.insert(text);
                    }
                }
            }
            TargetStats::Values(stats) => {
                let values = numeric_values(table, target, &self.schema.target, train)?;
                stats.observe(
                    &values,
                    &table.origin,
                    train_lines.iter().copied(),
                    &self.schema.target,
                    self.limits,
                )?;
            }
        }
        let mut dropping = Vec::new();
        let mut filling = Vec::new();
        for plan in self.fitted_plans() {
            let column = table.column(&plan.name, "feature")?;
            match plan.missing {
                MissingStrategy::Drop => dropping.push(column),
                _ => filling.push(column),
            }
        }
        for &r in train {
            if target.is_missing(r) || dropping.iter().any(|c| c.is_missing(r)) {
                continue;
            }
            self.kept_rows += 1;
            self.filled += filling.iter().filter(|c| c.is_missing(r)).count() as u64;
        }
        self.train_rows += train.len() as u64;
        Ok(())
    }

    /// The fitted preprocessor; `whole` fits the features a pass cannot (images, text).
    /// `origin` names the data in errors.
    pub fn finish(
        self,
        origin: &str,
        mut whole: impl FnMut(&ColumnPlan) -> Result<FeatureTransform>,
    ) -> Result<Preprocessor> {
        if self.train_rows == 0 {
            return Err(DataError::Invalid(format!(
                "{origin}: the training split is empty"
            )));
        }
        let plans: Vec<ColumnPlan> = self.fitted_plans().cloned().collect();
        let mut features = Vec::with_capacity(plans.len());
        for (plan, stats) in plans.iter().zip(self.features) {
            features.push(match stats {
                FeatureStats::Numeric(stats) => stats.finish(plan)?,
                FeatureStats::Categories(counts) => categorical(plan, counts.ranked())?,
                FeatureStats::Whole => whole(plan)?,
            });
        }
        let schema = self.schema;
        let target = match self.target {
            TargetStats::Classes(classes) => {
                let mut classes: Vec<String> = classes.into_iter().collect();
                sort_labels(&mut classes);
                if classes.len() < 2 {
                    return Err(DataError::Invalid(format!(
                        "{origin}: target \"{}\" has {} distinct value(s); classification needs at least 2",
                        schema.target,
                        classes.len()
                    )));
                }
                TargetTransform::Classes {
                    name: schema.target.clone(),
                    classes,
                }
            }
            TargetStats::Values(mut stats) => {
                if stats.count == 0 {
                    return Err(DataError::Invalid(format!(
                        "target \"{}\" is missing in every training row",
                        schema.target
                    )));
                }
                let (mean, var) = stats.moments();
                TargetTransform::Regression {
                    name: schema.target.clone(),
                    mean,
                    std: if var > 0.0 { var.sqrt() } else { 1.0 },
                }
            }
        };
        let fitted = Preprocessor {
            version: 1,
            features,
            target,
            id_column: schema.id_column.clone(),
            task: schema.task,
        };
        fitted.validate().map_err(|e| {
            DataError::Invalid(format!("{origin}: fitted preprocessing is unusable: {e}"))
        })?;
        Ok(fitted)
    }
}

/// A categorical or binary feature's transform from its training values, most frequent
/// first.
fn categorical(plan: &ColumnPlan, categories: Vec<String>) -> Result<FeatureTransform> {
    let drop_missing = plan.missing == MissingStrategy::Drop;
    let fill = match plan.missing {
        MissingStrategy::Constant => plan.fill_value.clone(),
        _ => categories.first().cloned(),
    };
    if plan.kind == FeatureType::Binary {
        if categories.len() > 2 {
            return Err(DataError::Invalid(format!(
                "feature \"{}\" is binary but has {} values in training: {:?}",
                plan.name,
                categories.len(),
                &categories[..categories.len().min(5)]
            )));
        }
        let mut values = categories;
        sort_labels(&mut values);
        let values = match values.len() {
            0 => ["0".to_string(), "1".to_string()],
            1 => [values[0].clone(), format!("not {}", values[0])],
            _ => [values[0].clone(), values[1].clone()],
        };
        return Ok(FeatureTransform::Binary {
            name: plan.name.clone(),
            values,
            fill,
            drop_missing,
        });
    }
    let embedding_dim = match plan.encoding {
        CategoricalEncoding::OneHot => None,
        CategoricalEncoding::Embedding => Some(if plan.embedding_dim > 0 {
            plan.embedding_dim
        } else {
            // fastai's rule of thumb.
            ((1.6 * (categories.len() as f64 + 1.0).powf(0.56)).round() as usize).clamp(2, 600)
        }),
    };
    Ok(FeatureTransform::Categorical {
        name: plan.name.clone(),
        categories,
        fill,
        drop_missing,
        embedding_dim,
    })
}
