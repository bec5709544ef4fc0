//! kiln's differentiable ops with their own Flex kernels, through Burn's backend-extension
//! mechanism: a trait with a Flex implementation (host kernels from [`crate::kernels`]) and an
//! `Autodiff` implementation that registers a hand-written backward calling the inner
//! backend's kernel. Every other backend gets the default bodies, which are Burn's own ops, so
//! models stay device-agnostic.
//!
//! [`gelu`] is the first: Flex evaluates libm's scalar `erff` per element in GELU's forward
//! and backward; kiln's kernels vectorise (AVX-512/AVX2 chosen at run time) and run across
//! rayon's threads.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::{Flex, FlexTensor};
use burn::backend::ops::ActivationOps;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, Dispatch, backend_extension};
use burn::prelude::{Tensor, TensorData};
use burn::tensor::DType;
use rayon::prelude::*;

/// Elements per rayon task: large enough that scheduling is noise.
const CHUNK: usize = 1 << 15;

/// Ops kiln implements itself where Burn's backend is slow.
#[backend_extension(Flex, Autodiff)]
pub trait KilnOps: Backend {
    /// Exact (erf) GELU.
    fn kiln_gelu(x: FloatTensor<Self>) -> FloatTensor<Self> {
        <Self as ActivationOps<Self>>::gelu(x)
    }

    /// `grad * gelu'(x)`.
    fn kiln_gelu_backward(x: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
        <Self as ActivationOps<Self>>::gelu_backward(x, grad)
    }
}

/// The f32 values of a Flex tensor, contiguous (copied only if it is a strided view).
fn f32_values(t: &FlexTensor) -> Option<FlexTensor> {
    (t.dtype() == DType::F32).then(|| t.to_contiguous())
}

impl KilnOps for Flex {
    fn kiln_gelu(x: FloatTensor<Self>) -> FloatTensor<Self> {
        let Some(x) = f32_values(&x) else {
            return <Flex as ActivationOps<Flex>>::gelu(x);
        };
        let shape = x.layout().shape().clone();
        let mut out = x.storage::<f32>().to_vec();
        out.par_chunks_mut(CHUNK)
            .for_each(crate::kernels::gelu_in_place);
        FlexTensor::from_data(TensorData::new(out, shape))
    }

    fn kiln_gelu_backward(x: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
        let (Some(x), Some(grad)) = (f32_values(&x), f32_values(&grad)) else {
            return <Flex as ActivationOps<Flex>>::gelu_backward(x, grad);
        };
        let shape = x.layout().shape().clone();
        let mut out = vec![0.0f32; shape.num_elements()];
        out.par_chunks_mut(CHUNK)
            .zip(x.storage::<f32>().par_chunks(CHUNK))
            .zip(grad.storage::<f32>().par_chunks(CHUNK))
            .for_each(|((o, x), g)| crate::kernels::gelu_backward_into(x, g, o));
        FlexTensor::from_data(TensorData::new(out, shape))
    }
}

impl<B: Backend + KilnOps, C: CheckpointStrategy> KilnOps for Autodiff<B, C> {
    fn kiln_gelu(x: FloatTensor<Self>) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct GeluBackward;

        impl<B: Backend + KilnOps> Backward<B, 1> for GeluBackward {
            /// The forward input.
            type State = FloatTensor<B>;

            fn backward(
                self,
                ops: Ops<Self::State, 1>,
                grads: &mut Gradients,
                _checkpointer: &mut Checkpointer,
            ) {
                let [parent] = ops.parents;
                let grad = grads.consume::<B>(&ops.node);
                if let Some(node) = parent {
                    grads.register::<B>(node.id, B::kiln_gelu_backward(ops.state, grad));
                }
            }
        }

        match GeluBackward
            .prepare::<C>([x.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let input = x.primitive().clone();
                prep.finish(input.clone(), B::kiln_gelu(input))
            }
            OpsKind::UnTracked(prep) => prep.finish(B::kiln_gelu(x.into_primitive())),
        }
    }
}

/// Exact GELU through [`KilnOps`]: kiln's vectorised kernels on Flex (forward and, under
/// autodiff, backward), Burn's op elsewhere.
pub fn gelu<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    Tensor::from_dispatch(<Dispatch as KilnOps>::kiln_gelu(x.into_dispatch()))
}
