//! Cross-checks kiln-metrics against scikit-learn on the fixed vectors in
//! `fixtures/sklearn_metrics.json` (made by `fixtures/make_sklearn_fixtures.py`).

use kiln_metrics::{ClassificationMetrics, RegressionMetrics, roc_auc_binary};
use serde_json::Value;

fn fixtures() -> Value {
    let text = include_str!("fixtures/sklearn_metrics.json");
    serde_json::from_str(text).expect("fixture JSON parses")
}

fn f64s(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

fn close(name: &str, got: f64, want: f64, tol: f64) {
    assert!(
        (got - want).abs() <= tol,
        "{name}: kiln {got} vs scikit-learn {want}"
    );
}

#[test]
fn classification_matches_sklearn() {
    let fx = fixtures();
    for case in fx["classification"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let k = case["num_classes"].as_u64().unwrap() as usize;
        let y: Vec<usize> = case["y_true"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as usize)
            .collect();
        let proba: Vec<f32> = f64s(&case["proba"]).into_iter().map(|v| v as f32).collect();
        let m = ClassificationMetrics::compute(&y, &proba, k).unwrap();
        let tol = 1e-9;
        close(
            &format!("{name} accuracy"),
            m.accuracy,
            case["accuracy"].as_f64().unwrap(),
            tol,
        );
        for (c, cm) in m.per_class.iter().enumerate() {
            close(
                &format!("{name} precision[{c}]"),
                cm.precision,
                f64s(&case["precision"])[c],
                tol,
            );
            close(
                &format!("{name} recall[{c}]"),
                cm.recall,
                f64s(&case["recall"])[c],
                tol,
            );
            close(&format!("{name} f1[{c}]"), cm.f1, f64s(&case["f1"])[c], tol);
            assert_eq!(cm.support as f64, f64s(&case["support"])[c]);
        }
        for (avg, p, r, f) in [
            ("macro", m.precision_macro, m.recall_macro, m.f1_macro),
            ("micro", m.precision_micro, m.recall_micro, m.f1_micro),
            (
                "weighted",
                m.precision_weighted,
                m.recall_weighted,
                m.f1_weighted,
            ),
        ] {
            close(
                &format!("{name} precision_{avg}"),
                p,
                case[format!("precision_{avg}")].as_f64().unwrap(),
                tol,
            );
            close(
                &format!("{name} recall_{avg}"),
                r,
                case[format!("recall_{avg}")].as_f64().unwrap(),
                tol,
            );
            close(
                &format!("{name} f1_{avg}"),
                f,
                case[format!("f1_{avg}")].as_f64().unwrap(),
                tol,
            );
        }
        let confusion: Vec<Vec<usize>> = serde_json::from_value(case["confusion"].clone()).unwrap();
        assert_eq!(m.confusion, confusion, "{name} confusion matrix");
        close(
            &format!("{name} roc_auc"),
            m.roc_auc.unwrap(),
            case["roc_auc"].as_f64().unwrap(),
            1e-9,
        );
        close(
            &format!("{name} log_loss"),
            m.log_loss,
            case["log_loss"].as_f64().unwrap(),
            1e-6,
        );
        let top_k = f64s(&case["top_k"]);
        assert_eq!(m.top_k_accuracy.len(), top_k.len(), "{name} top-k count");
        for (i, (&got, &want)) in m.top_k_accuracy.iter().zip(&top_k).enumerate() {
            close(&format!("{name} top_{}", i + 1), got, want, tol);
        }
    }
}

#[test]
fn regression_matches_sklearn() {
    let fx = fixtures();
    for case in fx["regression"].as_array().unwrap() {
        let y: Vec<f32> = f64s(&case["y_true"])
            .into_iter()
            .map(|v| v as f32)
            .collect();
        let p: Vec<f32> = f64s(&case["y_pred"])
            .into_iter()
            .map(|v| v as f32)
            .collect();
        let m = RegressionMetrics::compute(&y, &p).unwrap();
        close("mse", m.mse, case["mse"].as_f64().unwrap(), 1e-5);
        close("rmse", m.rmse, case["rmse"].as_f64().unwrap(), 1e-5);
        close("mae", m.mae, case["mae"].as_f64().unwrap(), 1e-5);
        close("r2", m.r2, case["r2"].as_f64().unwrap(), 1e-6);
    }
}

#[test]
fn auc_counts_ties_half() {
    let fx = fixtures();
    let case = &fx["auc_ties"];
    let positive: Vec<bool> = case["y_true"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64() == Some(1))
        .collect();
    let scores: Vec<f32> = f64s(&case["scores"])
        .into_iter()
        .map(|v| v as f32)
        .collect();
    let auc = roc_auc_binary(&positive, &scores).unwrap().unwrap();
    close(
        "auc with ties",
        auc,
        case["roc_auc"].as_f64().unwrap(),
        1e-12,
    );
}

#[test]
fn inconsistent_inputs_are_errors() {
    assert!(ClassificationMetrics::compute(&[], &[], 2).is_err());
    assert!(ClassificationMetrics::compute(&[0, 1], &[0.5, 0.5], 2).is_err());
    assert!(ClassificationMetrics::compute(&[0, 3], &[0.5, 0.5, 0.5, 0.5], 2).is_err());
    assert!(RegressionMetrics::compute(&[1.0], &[1.0, 2.0]).is_err());
    // A single class: AUC undefined, everything else defined.
    let m = ClassificationMetrics::compute(&[1, 1], &[0.2, 0.8, 0.4, 0.6], 2).unwrap();
    assert_eq!(m.roc_auc, None);
    assert_eq!(m.accuracy, 1.0);
}
