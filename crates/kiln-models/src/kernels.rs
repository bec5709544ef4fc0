//! Inference kernels for ops where Burn 0.22's Flex backend is slow enough to dominate a
//! forward pass. Each is used only on tensors without autodiff (training keeps Burn's op and
//! its backward) and is tested bit-equal to the Burn op it replaces.

use burn::prelude::{Tensor, TensorData};

/// Max pooling with a `k`x`k` window and stride `k` (no padding; trailing rows/columns that do
/// not fill a window are dropped), as `MaxPool2d` with `kernel = stride = k` computes it
/// (NaN inputs are skipped rather than propagated).
///
/// Flex's `max_pool2d` took 6 ms for `[64, 32, 28, 28]` on the 2-core dev box, as long as the
/// convolution before it; this pass over contiguous rows takes a fraction of that
/// (`cargo bench -p kiln-serve --bench cnn_ops`).
pub fn max_pool2d_inference(x: Tensor<4>, k: usize) -> Tensor<4> {
    let [b, c, h, w] = x.dims();
    let (oh, ow) = (h / k, w / k);
    let device = x.device();
    let input = x
        .into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .expect("f32 data");
    let mut out = vec![0.0f32; b * c * oh * ow];
    for (plane_in, plane_out) in input.chunks_exact(h * w).zip(out.chunks_exact_mut(oh * ow)) {
        for (oy, row_out) in plane_out.chunks_exact_mut(ow).enumerate() {
            let rows = &plane_in[oy * k * w..(oy * k + k) * w];
            if k == 2 {
                // The common case, written so it vectorises.
                let (r0, r1) = rows.split_at(w);
                for (x, o) in row_out.iter_mut().enumerate() {
                    *o = r0[2 * x]
                        .max(r0[2 * x + 1])
                        .max(r1[2 * x].max(r1[2 * x + 1]));
                }
            } else {
                for (x, o) in row_out.iter_mut().enumerate() {
                    let mut m = f32::NEG_INFINITY;
                    for row in rows.chunks_exact(w) {
                        for &v in &row[x * k..x * k + k] {
                            m = m.max(v);
                        }
                    }
                    *o = m;
                }
            }
        }
    }
    Tensor::from_data(TensorData::new(out, [b, c, oh, ow]), &device)
}
