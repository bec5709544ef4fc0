//! Gradients of one optimizer step, and the seam where they would be all-reduced.

use std::collections::BTreeMap;

use burn::module::{Module, ModuleVisitor, Param};
use burn::prelude::{Tensor, TensorData};
use burn::tensor::Gradients;
use kiln_dist::{Buffer, DistError, World};

use crate::TrainError;

/// Gradients keyed by parameter path (`hidden.0.linear.weight`), flattened to rank 1 and
/// detached from autodiff. Paths, not Burn's per-process parameter ids, so the same key names
/// the same parameter in every process and in every checkpoint.
#[derive(Debug, Default, Clone)]
pub struct ParamGrads {
    /// Path to flattened gradient.
    pub grads: BTreeMap<String, Tensor<1>>,
}

/// Tracks the dotted module path during a visit or map.
#[derive(Default)]
pub(crate) struct PathStack(Vec<String>);

impl PathStack {
    pub(crate) fn enter(&mut self, name: &str) {
        self.0.push(name.to_string());
    }
    pub(crate) fn exit(&mut self) {
        self.0.pop();
    }
    pub(crate) fn path(&self) -> String {
        self.0.join(".")
    }
}

struct GradCollector<'a> {
    grads: &'a mut Gradients,
    out: &'a mut ParamGrads,
    path: PathStack,
}

impl ModuleVisitor for GradCollector<'_> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.enter(name);
    }
    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.exit();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if !param.is_require_grad() {
            return;
        }
        if let Some(grad) = param.val().grad_remove(self.grads) {
            let n = grad.shape().num_elements();
            self.out.grads.insert(self.path.path(), grad.reshape([n]));
        }
    }
}

struct PathLister {
    path: PathStack,
    out: Vec<(String, Vec<usize>)>,
}

impl ModuleVisitor for PathLister {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.enter(name);
    }
    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.exit();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if param.is_require_grad() {
            self.out
                .push((self.path.path(), param.val().dims().to_vec()));
        }
    }
}

/// Number of scalar parameters of a module (trainable or not, initialised or lazy).
pub fn parameter_count<M: Module>(module: &M) -> usize {
    module.num_params()
}

/// Paths and shapes of a module's trainable parameters, in visit order.
pub fn trainable_parameters<M: Module>(module: &M) -> Vec<(String, Vec<usize>)> {
    let mut lister = PathLister {
        path: PathStack::default(),
        out: Vec::new(),
    };
    module.visit(&mut lister);
    lister.out
}

impl ParamGrads {
    /// Takes the gradients of `module`'s trainable parameters out of `grads`.
    pub fn collect<M: Module>(module: &M, mut grads: Gradients) -> Self {
        let mut out = ParamGrads::default();
        let mut collector = GradCollector {
            grads: &mut grads,
            out: &mut out,
            path: PathStack::default(),
        };
        module.visit(&mut collector);
        out
    }

    /// Adds `other` into `self` (gradient accumulation).
    pub fn accumulate(&mut self, other: ParamGrads) {
        for (path, g) in other.grads {
            match self.grads.remove(&path) {
                Some(acc) => self.grads.insert(path, acc + g),
                None => self.grads.insert(path, g),
            };
        }
    }

    /// Backpropagates `loss` (multiplied by float16's loss scale first, under a scaler), adds
    /// `module`'s gradients to these, and returns the loss.
    pub fn backward_into<M: Module>(
        &mut self,
        module: &M,
        loss: burn::prelude::Tensor<1>,
        scaler: Option<&crate::precision::LossScaler>,
    ) -> f64 {
        let g = match scaler {
            Some(scaler) => scaler.scaled(loss.clone()).backward(),
            None => loss.backward(),
        };
        let value = loss.into_scalar::<f64>();
        self.accumulate(ParamGrads::collect(module, g));
        value
    }

    /// Multiplies every gradient by `factor`.
    pub fn scale(&mut self, factor: f64) {
        for g in self.grads.values_mut() {
            *g = g.clone().mul_scalar(factor);
        }
    }

    /// The L2 norm of all gradients taken together.
    pub fn global_norm(&self) -> f64 {
        let parts: Vec<Tensor<1>> = self
            .grads
            .values()
            .map(|g| g.clone().powi_scalar(2).sum())
            .collect();
        if parts.is_empty() {
            return 0.0;
        }
        let total: f64 = Tensor::cat(parts, 0).into_data().iter::<f64>().sum();
        total.sqrt()
    }

    /// Scales all gradients together so their global L2 norm is at most `max_norm` (as
    /// `torch.nn.utils.clip_grad_norm_`). Returns the norm before clipping.
    pub fn clip_global_norm(&mut self, max_norm: f64) -> f64 {
        let norm = self.global_norm();
        self.clip_known_norm(norm, max_norm);
        norm
    }

    /// [`ParamGrads::clip_global_norm`] with the global norm `norm` already measured.
    fn clip_known_norm(&mut self, norm: f64, max_norm: f64) {
        if norm.is_finite() && norm > max_norm {
            self.scale(max_norm / (norm + 1e-6));
        }
    }
}

/// Where per-process gradients are combined before the update: the one seam for
/// data-parallel training. Each process weighs its loss by its rows' share of the global
/// batch, so [`GradientSync::all_reduce`] *sums* gradients across processes and the optimizer
/// then takes the same step everywhere.
pub trait GradientSync {
    /// Combines `grads` across processes in place.
    fn all_reduce(&mut self, grads: &mut ParamGrads) -> Result<(), TrainError>;
    /// Number of processes taking part.
    fn world_size(&self) -> usize {
        1
    }
    /// This process's rank (0 writes the run directory).
    fn rank(&self) -> usize {
        0
    }
    /// Sums `values` across processes (losses, counts).
    fn sum_f64(&mut self, values: Vec<f64>) -> Result<Vec<f64>, TrainError> {
        Ok(values)
    }
    /// Sums `values` across processes (model outputs of each process's rows).
    fn sum_f32(&mut self, values: Vec<f32>) -> Result<Vec<f32>, TrainError> {
        Ok(values)
    }
    /// Rank 0's `bytes` on every process (the initial weights).
    fn broadcast(&mut self, bytes: Vec<u8>) -> Result<Vec<u8>, TrainError> {
        Ok(bytes)
    }
}

/// Training in one process: nothing to combine.
#[derive(Debug, Default, Clone, Copy)]
pub struct SingleProcess;

impl GradientSync for SingleProcess {
    fn all_reduce(&mut self, _grads: &mut ParamGrads) -> Result<(), TrainError> {
        Ok(())
    }
}

/// Data-parallel training over a [`World`] of processes: gradients are packed, in path
/// order, into buckets of about `bucket_elements` values, and each bucket is handed to the
/// communication thread as soon as it is full, so packing the next overlaps reducing the
/// last. Burn's autodiff returns all gradients at the end of `backward`, so reduction starts
/// after the backward pass, not during it.
pub struct DataParallel<'w> {
    world: &'w World,
    bucket_elements: usize,
    stats: AllReduceStats,
}

/// What gradient all-reduces cost over a run (this process's view).
#[derive(Debug, Default, Clone, Copy, serde::Serialize, serde::Deserialize)]
pub struct AllReduceStats {
    /// Processes.
    pub processes: usize,
    /// Gradient all-reduces (optimizer steps).
    pub calls: u64,
    /// Bytes of gradients each all-reduce carries.
    pub bytes_per_call: u64,
    /// Wall-clock seconds inside gradient all-reduces (packing, reducing, unpacking).
    pub seconds: f64,
}

impl AllReduceStats {
    /// NCCL's bus bandwidth in GB/s: bytes / time × 2(n − 1)/n, what each link carried.
    pub fn bus_bandwidth_gbps(&self) -> f64 {
        let n = self.processes as f64;
        if self.seconds <= 0.0 || n < 2.0 {
            return 0.0;
        }
        let per_call = self.seconds / self.calls as f64;
        self.bytes_per_call as f64 / per_call * 2.0 * (n - 1.0) / n / 1e9
    }
}

impl<'w> DataParallel<'w> {
    /// Over `world`, with buckets of `bucket_bytes` (f32 values × 4).
    pub fn new(world: &'w World, bucket_bytes: usize) -> Self {
        DataParallel {
            world,
            bucket_elements: (bucket_bytes / 4).max(1),
            stats: AllReduceStats {
                processes: world.size(),
                ..Default::default()
            },
        }
    }

    /// What the gradient all-reduces cost so far.
    pub fn stats(&self) -> AllReduceStats {
        self.stats
    }
}

impl GradientSync for DataParallel<'_> {
    fn all_reduce(&mut self, grads: &mut ParamGrads) -> Result<(), TrainError> {
        let size = self.world.size();
        if size == 1 {
            return Ok(());
        }
        let started = std::time::Instant::now();
        // Every rank must send the same tensors in the same order: check the count first, so
        // a mismatch is an error here rather than a garbled sum.
        let elements: usize = grads.grads.values().map(|g| g.shape().num_elements()).sum();
        let counted = self.world.all_reduce_f64(vec![elements as f64])?;
        if counted[0] != (elements * size) as f64 {
            return Err(TrainError::Dist(DistError::Gradients {
                rank: self.world.rank(),
                here: elements,
                average: counted[0] / size as f64,
            }));
        }
        let Some(device) = grads.grads.values().next().map(|g| g.device()) else {
            return Ok(());
        };
        let mut pending = Vec::new();
        let mut bucket: Vec<f32> = Vec::with_capacity(self.bucket_elements.min(elements));
        let mut members: Vec<String> = Vec::new();
        let paths: Vec<String> = grads.grads.keys().cloned().collect();
        for (i, path) in paths.iter().enumerate() {
            let data = grads.grads[path].to_data().convert::<f32>();
            bucket.extend_from_slice(data.as_slice::<f32>().expect("f32 after convert"));
            members.push(path.clone());
            if bucket.len() >= self.bucket_elements || i + 1 == paths.len() {
                let full = std::mem::take(&mut bucket);
                pending.push((
                    std::mem::take(&mut members),
                    self.world.all_reduce_start(Buffer::F32(full))?,
                ));
            }
        }
        for (members, reduce) in pending {
            let Buffer::F32(sum) = self.world.all_reduce_wait(reduce)? else {
                unreachable!("an f32 bucket comes back as f32")
            };
            let mut offset = 0;
            for path in members {
                let n = grads.grads[&path].shape().num_elements();
                let values = sum[offset..offset + n].to_vec();
                offset += n;
                grads.grads.insert(
                    path,
                    Tensor::from_data(TensorData::new(values, [n]), &device),
                );
            }
        }
        self.stats.calls += 1;
        self.stats.bytes_per_call = elements as u64 * 4;
        self.stats.seconds += started.elapsed().as_secs_f64();
        Ok(())
    }
    fn world_size(&self) -> usize {
        self.world.size()
    }
    fn rank(&self) -> usize {
        self.world.rank()
    }
    fn sum_f64(&mut self, values: Vec<f64>) -> Result<Vec<f64>, TrainError> {
        Ok(self.world.all_reduce_f64(values)?)
    }
    fn sum_f32(&mut self, values: Vec<f32>) -> Result<Vec<f32>, TrainError> {
        Ok(self.world.all_reduce_f32(values)?)
    }
    fn broadcast(&mut self, bytes: Vec<u8>) -> Result<Vec<u8>, TrainError> {
        Ok(self.world.broadcast(bytes)?)
    }
}

/// What [`apply_update`] did.
#[derive(Debug)]
pub struct Update<M> {
    /// The model after the step (unchanged when it was skipped).
    pub model: M,
    /// The global gradient norm before clipping, when clipping is on and the step was taken.
    pub grad_norm: Option<f64>,
    /// Whether the step was skipped: float16 gradients overflowed under loss scaling.
    pub skipped: bool,
}

/// The update every trainer shares: combine gradients across processes, undo the loss
/// scale (`scaler`, float16 training; an overflowed step is skipped), clip their global norm
/// (when `max_norm > 0`), and take an optimizer step.
pub fn apply_update<M: Module>(
    model: M,
    mut grads: ParamGrads,
    sync: &mut dyn GradientSync,
    max_norm: f64,
    optimizer: &mut crate::optim::Optimizer,
    lr: f64,
    scaler: Option<&mut crate::precision::LossScaler>,
) -> Result<Update<M>, TrainError> {
    sync.all_reduce(&mut grads)?;
    // After the all-reduce every process holds the same sums, so all skip or none. The
    // scaler measures the norm to find overflow; clipping reuses it.
    let measured = match scaler {
        Some(scaler) => match scaler.unscale(&mut grads) {
            Some(norm) => Some(norm),
            None => {
                return Ok(Update {
                    model,
                    grad_norm: None,
                    skipped: true,
                });
            }
        },
        None => None,
    };
    let grad_norm = (max_norm > 0.0).then(|| match measured {
        Some(norm) => {
            grads.clip_known_norm(norm, max_norm);
            norm
        }
        None => grads.clip_global_norm(max_norm),
    });
    Ok(Update {
        model: optimizer.step(model, grads, lr),
        grad_norm,
        skipped: false,
    })
}
