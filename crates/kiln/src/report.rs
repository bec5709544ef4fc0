//! The final report of a run: `report.json`, `report.txt` and `plots/*.svg`.

use std::fmt::Write as _;
use std::path::Path;

use kiln_config::Config;
use kiln_data::{Encoded, Target};
use kiln_report::{Series, confusion_matrix, line_chart, roc_curve};
use kiln_runtime::run::files;
use kiln_train::evaluate::{Evaluation, Predictions};

use crate::pipeline::RunSummary;
use crate::{KilnError, Result};

/// Human-readable scores, as `kiln train`, `kiln eval` and `report.txt` print them.
pub fn format_evaluation(title: &str, eval: &Evaluation, classes: Option<&[String]>) -> String {
    let mut s = String::new();
    match eval {
        Evaluation::Classification { metrics: m, .. } => {
            let _ = writeln!(s, "{title} ({} samples)", m.samples);
            let _ = writeln!(s, "  accuracy   {:.4}", m.accuracy);
            let _ = writeln!(
                s,
                "  f1 macro   {:.4}   weighted {:.4}   micro {:.4}",
                m.f1_macro, m.f1_weighted, m.f1_micro
            );
            let _ = writeln!(
                s,
                "  precision  {:.4} (macro)   recall {:.4} (macro)",
                m.precision_macro, m.recall_macro
            );
            match m.roc_auc {
                Some(auc) => {
                    let _ = writeln!(
                        s,
                        "  roc auc    {auc:.4}{}",
                        if m.per_class.len() > 2 {
                            " (one-vs-rest, macro)"
                        } else {
                            ""
                        }
                    );
                }
                None => {
                    let _ = writeln!(s, "  roc auc    undefined (a class is absent)");
                }
            }
            let _ = writeln!(s, "  log loss   {:.4}", m.log_loss);
            if m.top_k_accuracy.len() >= 3 {
                let _ = writeln!(s, "  top-3 acc  {:.4}", m.top_k_accuracy[2]);
            }
            let names: Vec<String> = match classes {
                Some(c) => c.to_vec(),
                None => (0..m.per_class.len()).map(|i| i.to_string()).collect(),
            };
            let w = names
                .iter()
                .map(String::len)
                .max()
                .unwrap_or(5)
                .clamp(5, 24);
            let _ = writeln!(s, "  {:>w$}  precision  recall     f1  support", "class");
            for (name, c) in names.iter().zip(&m.per_class) {
                let _ = writeln!(
                    s,
                    "  {name:>w$}  {:>9.4}  {:>6.4}  {:>6.4}  {:>7}",
                    c.precision, c.recall, c.f1, c.support
                );
            }
            let _ = writeln!(s, "  confusion matrix (rows: true, columns: predicted)");
            // Columns as wide as the largest count or class name (names cut at 12), so
            // counts of any size stay apart.
            let short: Vec<String> = names.iter().map(|n| n.chars().take(12).collect()).collect();
            let cw = m
                .confusion
                .iter()
                .flatten()
                .map(|c| c.to_string().len())
                .chain(short.iter().map(|n| n.chars().count()))
                .max()
                .unwrap_or(1)
                .max(4);
            let header: Vec<String> = short.iter().map(|n| format!("{n:>cw$}")).collect();
            let _ = writeln!(s, "  {:>w$}  {}", "", header.join(" "));
            for (name, row) in names.iter().zip(&m.confusion) {
                let cells: Vec<String> = row.iter().map(|c| format!("{c:>cw$}")).collect();
                let name: String = name.chars().take(w).collect();
                let _ = writeln!(s, "  {name:>w$}  {}", cells.join(" "));
            }
        }
        Evaluation::Regression { metrics: m, .. } => {
            let _ = writeln!(s, "{title}");
            let _ = writeln!(s, "  rmse  {:.4}", m.rmse);
            let _ = writeln!(s, "  mae   {:.4}", m.mae);
            let _ = writeln!(s, "  r2    {:.4}", m.r2);
        }
    }
    s
}

fn plots(
    run_dir: &Path,
    summary: &RunSummary,
    test: &Encoded,
    preds: Option<&Predictions>,
) -> Result<()> {
    let dir = run_dir.join("plots");
    std::fs::create_dir_all(&dir).map_err(|e| KilnError::Output {
        path: dir.display().to_string(),
        message: e.to_string(),
    })?;
    let text = std::fs::read_to_string(run_dir.join(files::METRICS)).unwrap_or_default();
    let records: Vec<serde_json::Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let epochs: Vec<&serde_json::Value> = records.iter().filter(|r| r["kind"] == "epoch").collect();
    let steps: Vec<&serde_json::Value> = records.iter().filter(|r| r["kind"] == "step").collect();
    let x = |r: &serde_json::Value| r["epoch"].as_f64().unwrap_or(0.0) + 1.0;
    let train_loss: Vec<(f64, f64)> = epochs
        .iter()
        .map(|r| (x(r), r["train_loss"].as_f64().unwrap_or(f64::NAN)))
        .collect();
    let val_loss: Vec<(f64, f64)> = epochs
        .iter()
        .filter_map(|r| r["validation"]["loss"].as_f64().map(|v| (x(r), v)))
        .collect();
    let mut series = vec![Series {
        name: "train",
        points: train_loss,
    }];
    if !val_loss.is_empty() {
        series.push(Series {
            name: "validation",
            points: val_loss,
        });
    }
    line_chart(
        &dir.join("loss.svg"),
        "Loss per epoch",
        "epoch",
        "loss",
        &series,
    )?;
    let metric = match summary.data.task {
        kiln_config::Task::Classification => ["accuracy", "f1_macro"],
        kiln_config::Task::Regression => ["r2", "rmse"],
    };
    let metric_series: Vec<Series> = metric
        .iter()
        .map(|m| Series {
            name: m,
            points: epochs
                .iter()
                .filter_map(|r| r["validation"][*m].as_f64().map(|v| (x(r), v)))
                .collect(),
        })
        .filter(|s| !s.points.is_empty())
        .collect();
    if !metric_series.is_empty() {
        line_chart(
            &dir.join("validation_metrics.svg"),
            "Validation metrics per epoch",
            "epoch",
            "value",
            &metric_series,
        )?;
    }
    let lr: Vec<(f64, f64)> = steps
        .iter()
        .map(|r| {
            (
                r["step"].as_f64().unwrap_or(0.0),
                r["lr"].as_f64().unwrap_or(0.0),
            )
        })
        .collect();
    line_chart(
        &dir.join("learning_rate.svg"),
        "Learning rate",
        "optimizer step",
        "lr",
        &[Series {
            name: "lr",
            points: lr,
        }],
    )?;
    let step_loss: Vec<(f64, f64)> = steps
        .iter()
        .map(|r| {
            (
                r["step"].as_f64().unwrap_or(0.0),
                r["loss"].as_f64().unwrap_or(f64::NAN),
            )
        })
        .collect();
    line_chart(
        &dir.join("step_loss.svg"),
        "Training loss per logged step",
        "optimizer step",
        "loss",
        &[Series {
            name: "train",
            points: step_loss,
        }],
    )?;
    if let (Some(Evaluation::Classification { metrics, .. }), Some(classes)) =
        (&summary.test, &summary.classes)
    {
        confusion_matrix(
            &dir.join("confusion_matrix.svg"),
            classes,
            &metrics.confusion,
        )?;
        if classes.len() == 2
            && let (Some(p), Some(Target::Classes(labels))) = (preds, &test.y)
        {
            let positive: Vec<bool> = labels.iter().map(|&l| l == 1).collect();
            let scores: Vec<f32> = (0..p.rows).map(|r| p.values[r * 2 + 1]).collect();
            if let Ok(Some(curve)) = kiln_metrics::roc_curve(&positive, &scores) {
                roc_curve(
                    &dir.join("roc_curve.svg"),
                    &curve.fpr,
                    &curve.tpr,
                    metrics.roc_auc.unwrap_or(f64::NAN),
                )?;
            }
        }
    }
    Ok(())
}

/// The teacher and the student side by side: test scores, parameters, latency.
fn format_distillation(d: &crate::DistillSummary, summary: &RunSummary) -> String {
    let metric = |e: Option<&Evaluation>, name: &str| {
        e.and_then(|e| e.metric(name))
            .map(|v| format!("{v:.4}"))
            .unwrap_or_else(|| "-".into())
    };
    let (teacher, student) = (d.teacher_test.as_ref(), summary.test.as_ref());
    let mut text = format!(
        "distillation ({} {}, {})
",
        match d.teachers {
            1 => "teacher".to_string(),
            n => format!("an ensemble of {n} teachers:"),
        },
        d.teacher,
        match (d.cached, d.teachers) {
            (true, 1) => "its logits computed once",
            (true, _) => "their logits computed once",
            (false, _) => "run on each augmented batch",
        }
    );
    text.push_str(
        "                 teacher     student
",
    );
    for name in ["accuracy", "f1_macro"] {
        text.push_str(&format!(
            "  {name:<12} {:>9}   {:>9}
",
            metric(teacher, name),
            metric(student, name)
        ));
    }
    if d.teacher_validation.is_some() {
        text.push_str(&format!(
            "  {:<12} {:>9}   {:>9}
",
            "val accuracy",
            metric(d.teacher_validation.as_ref(), "accuracy"),
            metric(summary.validation.as_ref(), "accuracy")
        ));
    }
    text.push_str(&format!(
        "  {:<12} {:>9}   {:>9}
",
        "parameters", d.teacher_parameters, summary.parameters
    ));
    text.push_str(&format!(
        "  {:<12} {:>9.3}   {:>9.3}   ({:.1}x faster)
",
        "ms per row",
        d.teacher_latency_ms,
        d.student_latency_ms,
        d.teacher_latency_ms / d.student_latency_ms
    ));
    text
}

/// Writes `report.json`, `report.txt` and (unless `output.plots = false`) the charts.
pub(crate) fn write_report(
    run_dir: &Path,
    config: &Config,
    summary: &RunSummary,
    test: &Encoded,
    preds: Option<&Predictions>,
) -> Result<()> {
    kiln_runtime::run::write_json(&run_dir.join(files::REPORT_JSON), summary)?;
    let mut text = String::new();
    let _ = writeln!(text, "kiln run {}", run_dir.display());
    let d = &summary.data;
    let _ = writeln!(
        text,
        "data: {} ({:?}, target \"{}\", {} features): {} train / {} validation / {} test rows",
        d.source,
        d.task,
        d.target,
        d.features.len(),
        d.train_rows,
        d.validation_rows,
        d.test_rows
    );
    if d.streamed {
        let _ = writeln!(
            text,
            "  streamed: the training rows read a block of at least {} rows at a time, every epoch",
            config.data.shuffle_buffer
        );
    }
    if d.texts_truncated > 0 {
        let rows = d.train_rows + d.validation_rows + d.test_rows;
        let windows = config.text.windows.max(1);
        let kept = match config.text.truncation {
            kiln_config::Truncation::Head => "their start kept".to_string(),
            kiln_config::Truncation::Tail => "their end kept".to_string(),
            kiln_config::Truncation::HeadTail if windows == 1 => {
                let head = config.text.truncation.head_tokens(config.model.context);
                format!(
                    "their first {head} and last {} tokens kept",
                    config.model.context - head
                )
            }
            kiln_config::Truncation::HeadTail => {
                let head = config
                    .text
                    .truncation
                    .head_tokens(windows * config.model.context);
                format!("their first {head} tokens and the rest from their end kept")
            }
        };
        let room = if windows > 1 {
            format!("{windows} windows of model.context tokens hold")
        } else {
            "model.context tokens".to_string()
        };
        let _ = writeln!(
            text,
            "text: {} of {} texts longer than {room}, {kept}",
            d.texts_truncated, rows
        );
    }
    let _ = writeln!(
        text,
        "training: {} epochs, {} steps, {:.1} s, {} parameters{}{}{}",
        summary.epochs_run,
        summary.steps,
        summary.train_seconds,
        summary.parameters,
        if summary.trainable_parameters != summary.parameters {
            format!(" ({} trainable)", summary.trainable_parameters)
        } else {
            String::new()
        },
        if summary.stopped_early {
            ", stopped early"
        } else {
            ""
        },
        match summary.run.machine.device.as_str() {
            "" => String::new(),
            device => format!(", on {device}, in {}", summary.run.precision),
        }
    );
    if summary.data_wait.step_seconds > 0.0 {
        let _ = writeln!(
            text,
            "batches: waited {:.2} s of {:.1} s of steps for data ({:.1} %){}",
            summary.data_wait.wait_seconds,
            summary.data_wait.step_seconds,
            100.0 * summary.data_wait.fraction(),
            if config.data.augment.enabled() {
                ", augmented on their own thread"
            } else {
                ""
            }
        );
    }
    if config.trainer.keep_best
        && let Some(best) = summary.best_epoch
    {
        let _ = writeln!(
            text,
            "kept: the weights of epoch {} (best validation {})",
            best + 1,
            config.trainer.monitor
        );
    }
    if let Some(v) = &summary.validation {
        text.push_str(&format_evaluation(
            "validation",
            v,
            summary.classes.as_deref(),
        ));
    }
    if let Some(t) = &summary.test {
        text.push_str(&format_evaluation("test", t, summary.classes.as_deref()));
    }
    if let Some(d) = &summary.distillation {
        text.push_str(&format_distillation(d, summary));
    }
    kiln_train::checkpoint::write_atomic(&run_dir.join(files::REPORT_TXT), text.as_bytes())?;
    if config.output.plots {
        plots(run_dir, summary, test, preds)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confusion_counts_of_any_size_stay_apart_under_their_class() {
        // 150 000 "no" rows predicted "no", 20 000 "yes" predicted "no", 12 predicted "yes".
        let mut y = vec![0usize; 150_000];
        y.extend(std::iter::repeat_n(1, 20_012));
        let mut proba = Vec::new();
        for i in 0..y.len() {
            let yes = if i >= 170_000 { 0.9 } else { 0.1 };
            proba.extend([1.0 - yes, yes]);
        }
        let metrics = kiln_metrics::ClassificationMetrics::compute(&y, &proba, 2).unwrap();
        let eval = Evaluation::Classification { loss: 0.0, metrics };
        let text = format_evaluation("test", &eval, Some(&["no".into(), "yes".into()]));
        let lines: Vec<&str> = text.lines().collect();
        let at = lines.iter().position(|l| l.contains("confusion")).unwrap();
        assert_eq!(lines[at + 1], "             no    yes");
        assert_eq!(lines[at + 2], "     no  150000      0");
        assert_eq!(lines[at + 3], "    yes   20000     12");
    }
}
