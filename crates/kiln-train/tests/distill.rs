//! Distillation targets of a teacher ensemble.

use kiln_train::ensemble_logits;

fn softmax(z: &[f32], t: f64) -> Vec<f64> {
    let top = z.iter().fold(f64::NEG_INFINITY, |a, &v| a.max(v as f64));
    let e: Vec<f64> = z.iter().map(|&v| ((v as f64 - top) / t).exp()).collect();
    let sum: f64 = e.iter().sum();
    e.iter().map(|v| v / sum).collect()
}

#[test]
fn one_teacher_is_kept_and_an_ensemble_averages_probabilities_at_the_temperature() {
    let a = vec![2.0f32, -1.0, 0.5, 0.0, 0.0, 3.0];
    let b = vec![-0.5f32, 1.5, 0.0, 4.0, -2.0, 1.0];
    assert_eq!(ensemble_logits(std::slice::from_ref(&a), 3, 2.0), a);
    for t in [1.0, 2.0, 4.0] {
        let both = ensemble_logits(&[a.clone(), b.clone()], 3, t);
        assert_eq!(both.len(), 6);
        for r in 0..2 {
            let got = softmax(&both[r * 3..r * 3 + 3], t);
            let (pa, pb) = (
                softmax(&a[r * 3..r * 3 + 3], t),
                softmax(&b[r * 3..r * 3 + 3], t),
            );
            for c in 0..3 {
                let want = (pa[c] + pb[c]) / 2.0;
                assert!((got[c] - want).abs() < 1e-6, "T {t} row {r}: {got:?}");
            }
        }
    }
}

#[test]
fn a_class_every_teacher_rules_out_keeps_a_finite_logit() {
    let a = vec![0.0f32, 5000.0];
    let b = vec![0.0f32, 4000.0];
    let both = ensemble_logits(&[a, b], 2, 1.0);
    assert!(both.iter().all(|v| v.is_finite()), "{both:?}");
    assert!(both[0] < both[1] - 500.0, "{both:?}");
}
