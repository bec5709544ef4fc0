//! One Adam/AdamW update of a flat parameter: one fused pass over memory on the host, Burn
//! tensor ops on any other device, bit-equal to each other (the same f32 operations in the
//! same order).

use burn::prelude::{Tensor, TensorData};

/// The settings of one Adam or AdamW step, as PyTorch defines them.
#[derive(Debug, Clone, Copy)]
pub struct AdamStep {
    /// Learning rate of this step.
    pub lr: f64,
    /// First-moment decay.
    pub beta1: f64,
    /// Second-moment decay.
    pub beta2: f64,
    /// Added to the denominator.
    pub eps: f64,
    /// Weight decay: added to the gradient (Adam) or shrinking the parameter (AdamW).
    pub weight_decay: f64,
    /// AdamW's decoupled weight decay rather than Adam's L2 term.
    pub decoupled: bool,
    /// The step number, from 1 (bias correction).
    pub step: i32,
}

/// The update as Burn tensor ops: `(p, m, v)` after the step.
pub(super) fn update_reference(
    p: Tensor<1>,
    g: Tensor<1>,
    m: Tensor<1>,
    v: Tensor<1>,
    s: &AdamStep,
) -> (Tensor<1>, Tensor<1>, Tensor<1>) {
    let g = if s.weight_decay > 0.0 && !s.decoupled {
        g + p.clone().mul_scalar(s.weight_decay)
    } else {
        g
    };
    let p = if s.decoupled && s.weight_decay > 0.0 {
        p.mul_scalar(1.0 - s.lr * s.weight_decay)
    } else {
        p
    };
    let m = m.mul_scalar(s.beta1) + g.clone().mul_scalar(1.0 - s.beta1);
    let v = v.mul_scalar(s.beta2) + g.powi_scalar(2).mul_scalar(1.0 - s.beta2);
    let bc1 = 1.0 - s.beta1.powi(s.step);
    let bc2 = 1.0 - s.beta2.powi(s.step);
    let denom = v.clone().div_scalar(bc2).sqrt().add_scalar(s.eps);
    let p = p - m.clone().div(denom).mul_scalar(s.lr / bc1);
    (p, m, v)
}

/// The update in one pass over host f32 values, in place.
pub(super) fn update_host(
    p: TensorData,
    g: TensorData,
    m: TensorData,
    v: TensorData,
    s: &AdamStep,
) -> (TensorData, TensorData, TensorData) {
    let (mut p, mut m, mut v) = (p, m, v);
    {
        let pv = p.as_mut_slice::<f32>().expect("f32 parameter");
        let gv = g.as_slice::<f32>().expect("f32 gradient");
        let mv = m.as_mut_slice::<f32>().expect("f32 state");
        let vv = v.as_mut_slice::<f32>().expect("f32 state");
        assert!(
            pv.len() == gv.len() && pv.len() == mv.len() && pv.len() == vv.len(),
            "adam: parameter, gradient and moments differ in length"
        );
        // Scalars as the tensor path's `*_scalar` ops see them (f64 -> f32).
        let decoupled = s.decoupled && s.weight_decay > 0.0;
        let coupled = !s.decoupled && s.weight_decay > 0.0;
        let wd = s.weight_decay as f32;
        let shrink = (1.0 - s.lr * s.weight_decay) as f32;
        let (b1, one_b1) = (s.beta1 as f32, (1.0 - s.beta1) as f32);
        let (b2, one_b2) = (s.beta2 as f32, (1.0 - s.beta2) as f32);
        let bc2 = (1.0 - s.beta2.powi(s.step)) as f32;
        let step = (s.lr / (1.0 - s.beta1.powi(s.step))) as f32;
        let eps = s.eps as f32;
        for (((p, &g), m), v) in pv.iter_mut().zip(gv).zip(mv.iter_mut()).zip(vv.iter_mut()) {
            let g = if coupled { g + *p * wd } else { g };
            if decoupled {
                *p *= shrink;
            }
            *m = *m * b1 + g * one_b1;
            *v = *v * b2 + (g * g) * one_b2;
            *p -= *m / ((*v / bc2).sqrt() + eps) * step;
        }
    }
    (p, m, v)
}
