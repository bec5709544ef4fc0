use serde::{Deserialize, Serialize};

use crate::{MetricsError, check_finite};

/// Precision, recall, F1 and support of one class.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ClassMetrics {
    /// TP / (TP + FP); 0 when nothing was predicted as this class.
    pub precision: f64,
    /// TP / (TP + FN); 0 when the class does not occur.
    pub recall: f64,
    /// Harmonic mean of precision and recall; 0 when both are 0.
    pub f1: f64,
    /// Number of true samples of this class.
    pub support: usize,
}

/// Everything `kiln eval` reports for a classifier.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassificationMetrics {
    /// Number of samples scored.
    pub samples: usize,
    /// Fraction of samples whose arg-max class is the true class.
    pub accuracy: f64,
    /// Per-class precision/recall/F1, indexed by class.
    pub per_class: Vec<ClassMetrics>,
    /// Unweighted mean of per-class precision.
    pub precision_macro: f64,
    /// Unweighted mean of per-class recall.
    pub recall_macro: f64,
    /// Unweighted mean of per-class F1.
    pub f1_macro: f64,
    /// Support-weighted mean of per-class precision.
    pub precision_weighted: f64,
    /// Support-weighted mean of per-class recall.
    pub recall_weighted: f64,
    /// Support-weighted mean of per-class F1.
    pub f1_weighted: f64,
    /// Micro-averaged precision (= recall = F1 = accuracy for single-label tasks).
    pub precision_micro: f64,
    /// Micro-averaged recall.
    pub recall_micro: f64,
    /// Micro-averaged F1.
    pub f1_micro: f64,
    /// `confusion[true][predicted]` counts.
    pub confusion: Vec<Vec<usize>>,
    /// ROC-AUC: binary AUC of class 1 for two classes, macro one-vs-rest otherwise. `None`
    /// when undefined (a class with no positive or no negative sample).
    pub roc_auc: Option<f64>,
    /// Cross-entropy of the predicted probabilities.
    pub log_loss: f64,
    /// Top-k accuracy for k = 1..=min(5, classes), indexed by k-1.
    pub top_k_accuracy: Vec<f64>,
}

fn check(y_true: &[usize], proba: &[f32], num_classes: usize) -> Result<usize, MetricsError> {
    if y_true.is_empty() {
        return Err(MetricsError::Empty);
    }
    if proba.len() != y_true.len() * num_classes {
        return Err(MetricsError::LengthMismatch {
            what: "probabilities",
            got: proba.len(),
            expected: y_true.len() * num_classes,
        });
    }
    if let Some((index, &label)) = y_true.iter().enumerate().find(|(_, l)| **l >= num_classes) {
        return Err(MetricsError::LabelOutOfRange {
            label,
            index,
            num_classes,
        });
    }
    check_finite("probabilities", proba, num_classes)?;
    Ok(y_true.len())
}

/// Index of the largest value; the first one on ties, as `numpy.argmax`.
pub(crate) fn argmax(row: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = i;
        }
    }
    best
}

fn ratio(num: f64, den: f64) -> f64 {
    if den == 0.0 { 0.0 } else { num / den }
}

impl ClassificationMetrics {
    /// Scores class probabilities `proba` (row-major, `y_true.len() x num_classes`) against
    /// the true labels. The predicted class is the arg-max of each row.
    pub fn compute(
        y_true: &[usize],
        proba: &[f32],
        num_classes: usize,
    ) -> Result<Self, MetricsError> {
        let n = check(y_true, proba, num_classes)?;
        let k = num_classes;
        let mut confusion = vec![vec![0usize; k]; k];
        for (i, &t) in y_true.iter().enumerate() {
            let p = argmax(&proba[i * k..(i + 1) * k]);
            confusion[t][p] += 1;
        }
        let correct: usize = (0..k).map(|c| confusion[c][c]).sum();
        let mut per_class = Vec::with_capacity(k);
        for (c, row) in confusion.iter().enumerate() {
            let tp = row[c] as f64;
            let predicted: usize = confusion.iter().map(|r| r[c]).sum();
            let support: usize = row.iter().sum();
            let precision = ratio(tp, predicted as f64);
            let recall = ratio(tp, support as f64);
            let f1 = ratio(2.0 * precision * recall, precision + recall);
            per_class.push(ClassMetrics {
                precision,
                recall,
                f1,
                support,
            });
        }
        let macro_avg =
            |f: fn(&ClassMetrics) -> f64| per_class.iter().map(f).sum::<f64>() / k as f64;
        let weighted = |f: fn(&ClassMetrics) -> f64| {
            per_class
                .iter()
                .map(|m| f(m) * m.support as f64)
                .sum::<f64>()
                / n as f64
        };
        let accuracy = correct as f64 / n as f64;
        let top_k_accuracy = (1..=k.min(5))
            .map(|kk| top_k_accuracy(y_true, proba, k, kk))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            samples: n,
            accuracy,
            precision_macro: macro_avg(|m| m.precision),
            recall_macro: macro_avg(|m| m.recall),
            f1_macro: macro_avg(|m| m.f1),
            precision_weighted: weighted(|m| m.precision),
            recall_weighted: weighted(|m| m.recall),
            f1_weighted: weighted(|m| m.f1),
            precision_micro: accuracy,
            recall_micro: accuracy,
            f1_micro: accuracy,
            per_class,
            confusion,
            roc_auc: roc_auc(y_true, proba, k)?,
            log_loss: log_loss(y_true, proba, k)?,
            top_k_accuracy,
        })
    }
}

/// ROC-AUC: of class 1 for a binary task, macro-averaged one-vs-rest otherwise.
fn roc_auc(y_true: &[usize], proba: &[f32], k: usize) -> Result<Option<f64>, MetricsError> {
    let n = y_true.len();
    let column = |c: usize| (0..n).map(|i| proba[i * k + c]).collect::<Vec<_>>();
    if k == 2 {
        let positive: Vec<bool> = y_true.iter().map(|&t| t == 1).collect();
        return roc_auc_binary(&positive, &column(1));
    }
    let mut sum = 0.0;
    for c in 0..k {
        let positive: Vec<bool> = y_true.iter().map(|&t| t == c).collect();
        match roc_auc_binary(&positive, &column(c))? {
            Some(auc) => sum += auc,
            None => return Ok(None),
        }
    }
    Ok(Some(sum / k as f64))
}

/// Points of a ROC curve, thresholds decreasing, starting at (0, 0).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RocCurve {
    /// False positive rates.
    pub fpr: Vec<f64>,
    /// True positive rates.
    pub tpr: Vec<f64>,
}

/// The ROC curve of scores against binary labels, one point per distinct score. `None` when
/// the labels are all positive or all negative. Infinite scores rank as the largest or
/// smallest; a NaN score is an error.
pub fn roc_curve(positive: &[bool], scores: &[f32]) -> Result<Option<RocCurve>, MetricsError> {
    if positive.len() != scores.len() {
        return Err(MetricsError::LengthMismatch {
            what: "scores",
            got: scores.len(),
            expected: positive.len(),
        });
    }
    if positive.is_empty() {
        return Err(MetricsError::Empty);
    }
    if let Some(index) = scores.iter().position(|s| s.is_nan()) {
        return Err(MetricsError::NonFinite {
            what: "score",
            index,
            value: f32::NAN,
        });
    }
    let total_pos = positive.iter().filter(|&&p| p).count() as f64;
    let total_neg = positive.len() as f64 - total_pos;
    if total_pos == 0.0 || total_neg == 0.0 {
        return Ok(None);
    }
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let (mut fpr, mut tpr) = (vec![0.0], vec![0.0]);
    let (mut tp, mut fp) = (0.0, 0.0);
    let mut i = 0;
    while i < order.len() {
        // The group always takes `order[i]` itself, so every pass consumes at least one
        // sample whatever the comparison says.
        let (start, threshold) = (i, scores[order[i]]);
        while i < order.len() && (i == start || scores[order[i]] == threshold) {
            if positive[order[i]] {
                tp += 1.0
            } else {
                fp += 1.0
            }
            i += 1;
        }
        fpr.push(fp / total_neg);
        tpr.push(tp / total_pos);
    }
    Ok(Some(RocCurve { fpr, tpr }))
}

/// Area under the ROC curve by the trapezoid rule (ties between a positive and a negative
/// count one half). `None` when the labels are all positive or all negative.
pub fn roc_auc_binary(positive: &[bool], scores: &[f32]) -> Result<Option<f64>, MetricsError> {
    Ok(roc_curve(positive, scores)?.map(|curve| {
        curve
            .fpr
            .windows(2)
            .zip(curve.tpr.windows(2))
            .map(|(f, t)| (f[1] - f[0]) * (t[1] + t[0]) / 2.0)
            .sum()
    }))
}

/// Mean cross-entropy of row-normalised probabilities clipped to `[eps, 1 - eps]` with
/// `eps` = f32 machine epsilon (scikit-learn's choice for float32 input).
pub fn log_loss(y_true: &[usize], proba: &[f32], num_classes: usize) -> Result<f64, MetricsError> {
    let n = check(y_true, proba, num_classes)?;
    let eps = f32::EPSILON as f64;
    let mut total = 0.0;
    for (i, &t) in y_true.iter().enumerate() {
        let row = &proba[i * num_classes..(i + 1) * num_classes];
        let clipped: Vec<f64> = row
            .iter()
            .map(|&p| (p as f64).clamp(eps, 1.0 - eps))
            .collect();
        let sum: f64 = clipped.iter().sum();
        total -= (clipped[t] / sum).ln();
    }
    Ok(total / n as f64)
}

/// Fraction of samples whose true class is among the `k` highest-scored classes.
pub fn top_k_accuracy(
    y_true: &[usize],
    proba: &[f32],
    num_classes: usize,
    k: usize,
) -> Result<f64, MetricsError> {
    let n = check(y_true, proba, num_classes)?;
    let mut hits = 0;
    for (i, &t) in y_true.iter().enumerate() {
        let row = &proba[i * num_classes..(i + 1) * num_classes];
        let better = row.iter().filter(|&&p| p > row[t]).count();
        if better < k {
            hits += 1;
        }
    }
    Ok(hits as f64 / n as f64)
}
