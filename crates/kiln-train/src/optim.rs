//! Optimizers: SGD (momentum, Nesterov), Adam, AdamW, RMSProp, AdaGrad.
//!
//! The update rules are PyTorch's (`torch.optim`), written with Burn tensor ops. Unlike
//! Burn's `ModuleOptimizer`, whose state is keyed by per-process parameter ids, state here is
//! keyed by parameter path, so a checkpoint written by one process resumes in another (and,
//! later, on another rank) and can be inspected as a plain safetensors file.

use std::collections::BTreeMap;

use burn::module::{Module, ModuleMapper, Param};
use burn::prelude::{Device, Tensor, TensorData};
use kiln_config::{OptimizerKind, TrainerConfig};

use crate::grads::{ParamGrads, PathStack};

/// Hyper-parameters of the optimizer (the learning rate comes from the schedule each step).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OptimizerSettings {
    /// Family.
    pub kind: OptimizerKind,
    /// Momentum (SGD, RMSProp).
    pub momentum: f64,
    /// Nesterov (SGD).
    pub nesterov: bool,
    /// Adam beta1.
    pub beta1: f64,
    /// Adam beta2.
    pub beta2: f64,
    /// Epsilon.
    pub eps: f64,
    /// RMSProp smoothing.
    pub alpha: f64,
    /// Weight decay.
    pub weight_decay: f64,
}

impl From<&TrainerConfig> for OptimizerSettings {
    fn from(t: &TrainerConfig) -> Self {
        Self {
            kind: t.optimizer,
            momentum: t.momentum,
            nesterov: t.nesterov,
            beta1: t.beta1,
            beta2: t.beta2,
            eps: t.eps,
            alpha: t.alpha,
            weight_decay: t.weight_decay,
        }
    }
}

/// An optimizer with its per-parameter state.
#[derive(Debug, Clone)]
pub struct Optimizer {
    settings: OptimizerSettings,
    /// Optimizer steps taken (for bias correction).
    steps: u64,
    /// Per parameter path: state slots (flattened), by slot name.
    state: BTreeMap<String, BTreeMap<&'static str, Tensor<1>>>,
    /// Fused host-memory kernels where tensors live on the host ([`Self::set_host_kernels`]).
    host_kernels: bool,
    /// Per-parameter learning-rate factors of a network with a pretrained encoder.
    layerwise: Option<LayerwiseLr>,
}

/// Learning-rate factors by depth in a network with a pretrained encoder (its parameters
/// under `bert.`, layers `bert.layers.{i}`, or a GPT's under `text.`, blocks
/// `text.blocks.{i}`): the top encoder layer trains at the schedule's rate, each layer below at
/// `decay` times the one above, the embeddings at `decay` times the first layer; the head
/// (every other parameter) at `head` times the rate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LayerwiseLr {
    /// Encoder layers.
    pub layers: usize,
    /// Factor per layer going down.
    pub decay: f64,
    /// Factor of the head.
    pub head: f64,
}

impl LayerwiseLr {
    /// The factor of the parameter at `path`.
    pub fn factor(&self, path: &str) -> f64 {
        let (rest, layers) = match (path.strip_prefix("bert."), path.strip_prefix("text.")) {
            (Some(rest), _) => (rest, "layers."),
            (_, Some(rest)) => (rest, "blocks."),
            _ => return self.head,
        };
        let below_top = rest
            .strip_prefix(layers)
            .and_then(|r| r.split('.').next())
            .and_then(|i| i.parse::<usize>().ok())
            .map(|i| self.layers.saturating_sub(1 + i))
            .unwrap_or(self.layers);
        self.decay.powi(below_top as i32)
    }
}

struct Update<'a> {
    optimizer: &'a mut Optimizer,
    grads: &'a mut ParamGrads,
    lr: f64,
    path: PathStack,
}

impl ModuleMapper for Update<'_> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.enter(name);
    }
    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.exit();
    }
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let path = self.path.path();
        let Some(grad) = self.grads.grads.remove(&path) else {
            return param;
        };
        let (id, tensor, mapper) = param.consume();
        let require_grad = tensor.is_require_grad();
        let dims = tensor.dims();
        let n = tensor.shape().num_elements();
        let flat: Tensor<1> = tensor.inner().reshape([n]);
        let lr = match &self.optimizer.layerwise {
            Some(l) => self.lr * l.factor(&path),
            None => self.lr,
        };
        let updated = self.optimizer.update(&path, flat, grad, lr);
        let mut t: Tensor<D> = Tensor::from_inner(updated.reshape(dims));
        if require_grad {
            t = t.require_grad();
        }
        Param::from_mapped_value(id, t, mapper)
    }
}

impl Optimizer {
    /// A fresh optimizer.
    pub fn new(settings: OptimizerSettings) -> Self {
        Self {
            settings,
            steps: 0,
            state: BTreeMap::new(),
            host_kernels: true,
            layerwise: None,
        }
    }

    /// Scales each parameter's learning rate by depth ([`LayerwiseLr`]).
    pub fn with_layerwise_lr(mut self, layerwise: LayerwiseLr) -> Self {
        self.layerwise = Some(layerwise);
        self
    }

    /// Optimizer steps taken so far.
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// Applies one step with learning rate `lr` to every parameter of `module` that has a
    /// gradient in `grads`.
    pub fn step<M: Module>(&mut self, module: M, mut grads: ParamGrads, lr: f64) -> M {
        self.steps += 1;
        let mut update = Update {
            optimizer: self,
            grads: &mut grads,
            lr,
            path: PathStack::default(),
        };
        module.map(&mut update)
    }

    fn slot(&mut self, path: &str, name: &'static str, like: &Tensor<1>) -> Tensor<1> {
        self.state
            .get(path)
            .and_then(|s| s.get(name))
            .cloned()
            .unwrap_or_else(|| like.zeros_like())
    }

    /// A slot's state, taken out of the optimizer (zeros before the first step), so that a
    /// fused update can reuse its buffer.
    fn take(&mut self, path: &str, name: &'static str, like: &Tensor<1>) -> Tensor<1> {
        self.state
            .get_mut(path)
            .and_then(|s| s.remove(name))
            .unwrap_or_else(|| like.zeros_like())
    }

    fn store(&mut self, path: &str, name: &'static str, value: Tensor<1>) {
        self.state
            .entry(path.to_string())
            .or_default()
            .insert(name, value);
    }

    fn update(&mut self, path: &str, p: Tensor<1>, mut g: Tensor<1>, lr: f64) -> Tensor<1> {
        let s = self.settings;
        let t = self.steps as i32;
        let decoupled = s.kind == OptimizerKind::Adamw;
        let adam = matches!(s.kind, OptimizerKind::Adam | OptimizerKind::Adamw);
        if s.weight_decay > 0.0 && !decoupled && !adam {
            g = g + p.clone().mul_scalar(s.weight_decay);
        }
        match s.kind {
            OptimizerKind::Sgd => {
                if s.momentum > 0.0 {
                    let first = !self
                        .state
                        .get(path)
                        .is_some_and(|m| m.contains_key("momentum"));
                    let buf = if first {
                        g.clone()
                    } else {
                        self.slot(path, "momentum", &g).mul_scalar(s.momentum) + g.clone()
                    };
                    self.store(path, "momentum", buf.clone());
                    g = if s.nesterov {
                        g + buf.mul_scalar(s.momentum)
                    } else {
                        buf
                    };
                }
                p - g.mul_scalar(lr)
            }
            OptimizerKind::Adam | OptimizerKind::Adamw => {
                let m = self.take(path, "exp_avg", &g);
                let v = self.take(path, "exp_avg_sq", &g);
                let step = kiln_models::ops::AdamStep {
                    lr,
                    beta1: s.beta1,
                    beta2: s.beta2,
                    eps: s.eps,
                    weight_decay: s.weight_decay,
                    decoupled,
                    step: t,
                };
                let (p, m, v) = kiln_models::ops::adam_update(p, g, m, v, &step, self.host_kernels);
                self.store(path, "exp_avg", m);
                self.store(path, "exp_avg_sq", v);
                p
            }
            OptimizerKind::Rmsprop => {
                let v = self.slot(path, "square_avg", &g).mul_scalar(s.alpha)
                    + g.clone().powi_scalar(2).mul_scalar(1.0 - s.alpha);
                self.store(path, "square_avg", v.clone());
                let step = g.div(v.sqrt().add_scalar(s.eps));
                if s.momentum > 0.0 {
                    let buf = self.slot(path, "momentum", &step).mul_scalar(s.momentum) + step;
                    self.store(path, "momentum", buf.clone());
                    p - buf.mul_scalar(lr)
                } else {
                    p - step.mul_scalar(lr)
                }
            }
            OptimizerKind::Adagrad => {
                let sum = self.slot(path, "sum", &g) + g.clone().powi_scalar(2);
                self.store(path, "sum", sum.clone());
                p - g.div(sum.sqrt().add_scalar(s.eps)).mul_scalar(lr)
            }
        }
    }

    /// Adam/AdamW as one pass over host memory: the same arithmetic as the tensor-op path
    /// (same f32 operations in the same order, so the same bits), without its dozen
    /// intermediate tensors per parameter. Parameters, gradients and moments are taken out of
    /// their tensors without a copy when nothing else holds them.
    /// Use fused host-memory updates where the tensors live in host memory (on by default);
    /// off, every optimizer runs as Burn tensor ops, as it would on an accelerator.
    pub fn set_host_kernels(&mut self, on: bool) {
        self.host_kernels = on;
    }

    /// The state as named `f32` vectors (`{path}/{slot}`), plus the step count.
    pub fn export(&self) -> (u64, Vec<(String, Vec<f32>)>) {
        let mut out = Vec::new();
        for (path, slots) in &self.state {
            for (name, t) in slots {
                let values = t
                    .clone()
                    .into_data()
                    .convert::<f32>()
                    .try_to_vec::<f32>()
                    .expect("f32 state");
                out.push((format!("{path}/{name}"), values));
            }
        }
        (self.steps, out)
    }

    /// Restores state written by [`export`](Self::export).
    pub fn import(
        &mut self,
        steps: u64,
        tensors: Vec<(String, Vec<f32>)>,
        device: &Device,
    ) -> Result<(), String> {
        const SLOTS: [&str; 5] = ["momentum", "exp_avg", "exp_avg_sq", "square_avg", "sum"];
        self.steps = steps;
        self.state.clear();
        for (key, values) in tensors {
            let (path, slot) = key
                .rsplit_once('/')
                .ok_or_else(|| format!("optimizer tensor \"{key}\" has no slot name"))?;
            let slot = SLOTS
                .iter()
                .find(|s| **s == slot)
                .ok_or_else(|| format!("optimizer tensor \"{key}\": unknown slot \"{slot}\""))?;
            let n = values.len();
            let t = Tensor::<1>::from_data(TensorData::new(values, [n]), device);
            self.state
                .entry(path.to_string())
                .or_default()
                .insert(slot, t);
        }
        Ok(())
    }
}
