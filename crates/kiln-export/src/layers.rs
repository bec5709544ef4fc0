//! kiln's layers as ONNX subgraphs. Each function reads the layer's weights by the module path
//! kiln saves them under and mirrors the Burn forward pass op for op.

use kiln_config::Activation;

use crate::ExportError;
use crate::graph::{Attr, GraphBuilder};
use crate::proto::data_type;
use crate::weights::Weights;

/// Epsilon of Burn's LayerNorm and BatchNorm defaults, which kiln uses.
const NORM_EPSILON: f32 = 1e-5;

/// Score of a masked attention key (as in kiln-models): finite, so an all-padding row stays
/// finite.
pub const MASKED_SCORE: f32 = -1e9;

/// Adds a weight initializer under its kiln name.
pub fn weight(g: &mut GraphBuilder, w: &Weights, name: &str) -> Result<String, ExportError> {
    let t = w.get(name)?;
    Ok(g.weight(name, &t.shape, &t.values))
}

/// `x @ W (+ b)`, Burn's `Linear` (weight stored `[in, out]`).
pub fn linear(
    g: &mut GraphBuilder,
    w: &Weights,
    prefix: &str,
    x: &str,
) -> Result<String, ExportError> {
    let weight_name = weight(g, w, &format!("{prefix}.weight"))?;
    let y = g.op("MatMul", &[x, &weight_name], &[]);
    Ok(match w.find(&format!("{prefix}.bias")) {
        Some(_) => {
            let b = weight(g, w, &format!("{prefix}.bias"))?;
            g.op("Add", &[&y, &b], &[])
        }
        None => y,
    })
}

/// LayerNorm over the last axis (gamma, optional beta) with Burn's default epsilon.
pub fn layer_norm(
    g: &mut GraphBuilder,
    w: &Weights,
    prefix: &str,
    x: &str,
) -> Result<String, ExportError> {
    layer_norm_with_epsilon(g, w, prefix, x, NORM_EPSILON)
}

/// LayerNorm over the last axis (gamma, optional beta) with `epsilon`.
pub fn layer_norm_with_epsilon(
    g: &mut GraphBuilder,
    w: &Weights,
    prefix: &str,
    x: &str,
    epsilon: f32,
) -> Result<String, ExportError> {
    let gamma = weight(g, w, &format!("{prefix}.gamma"))?;
    let beta = match w.find(&format!("{prefix}.beta")) {
        Some(_) => weight(g, w, &format!("{prefix}.beta"))?,
        None => String::new(),
    };
    let inputs: Vec<&str> = if beta.is_empty() {
        vec![x, &gamma]
    } else {
        vec![x, &gamma, &beta]
    };
    Ok(g.op(
        "LayerNormalization",
        &inputs,
        &[("axis", Attr::Int(-1)), ("epsilon", Attr::Float(epsilon))],
    ))
}

/// Inference-mode batch norm with the running statistics (`[N, C]` or `[N, C, H, W]`).
pub fn batch_norm(
    g: &mut GraphBuilder,
    w: &Weights,
    prefix: &str,
    x: &str,
) -> Result<String, ExportError> {
    let names = ["gamma", "beta", "running_mean", "running_var"]
        .map(|p| weight(g, w, &format!("{prefix}.{p}")));
    let [gamma, beta, mean, var] = names;
    let (gamma, beta, mean, var) = (gamma?, beta?, mean?, var?);
    Ok(g.op(
        "BatchNormalization",
        &[x, &gamma, &beta, &mean, &var],
        &[("epsilon", Attr::Float(NORM_EPSILON))],
    ))
}

/// GELU, exact (erf) form as Burn's `gelu`: `0.5 x (1 + erf(x / sqrt 2))`.
pub fn gelu(g: &mut GraphBuilder, x: &str) -> String {
    let sqrt2 = g.const_f32("sqrt2", &[], &[std::f32::consts::SQRT_2]);
    let one = g.const_f32("one", &[], &[1.0]);
    let half = g.const_f32("half", &[], &[0.5]);
    let scaled = g.op("Div", &[x, &sqrt2], &[]);
    let erf = g.op("Erf", &[&scaled], &[]);
    let plus = g.op("Add", &[&erf, &one], &[]);
    let prod = g.op("Mul", &[x, &plus], &[]);
    g.op("Mul", &[&prod, &half], &[])
}

/// GELU's tanh approximation: `0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3)))`.
pub fn gelu_tanh(g: &mut GraphBuilder, x: &str) -> String {
    let c = g.const_f32("gelu_c", &[], &[0.044_715]);
    let k = g.const_f32("gelu_k", &[], &[(2.0 / std::f64::consts::PI).sqrt() as f32]);
    let one = g.const_f32("one", &[], &[1.0]);
    let half = g.const_f32("half", &[], &[0.5]);
    let x2 = g.op("Mul", &[x, x], &[]);
    let x3 = g.op("Mul", &[&x2, x], &[]);
    let cx3 = g.op("Mul", &[&x3, &c], &[]);
    let inner = g.op("Add", &[x, &cx3], &[]);
    let inner = g.op("Mul", &[&inner, &k], &[]);
    let t = g.op("Tanh", &[&inner], &[]);
    let plus = g.op("Add", &[&t, &one], &[]);
    let prod = g.op("Mul", &[x, &plus], &[]);
    g.op("Mul", &[&prod, &half], &[])
}

/// The activation kiln's MLP/CNN heads use.
pub fn activation(g: &mut GraphBuilder, a: Activation, x: &str) -> String {
    match a {
        Activation::Relu => g.op("Relu", &[x], &[]),
        Activation::Gelu => gelu(g, x),
        Activation::Tanh => g.op("Tanh", &[x], &[]),
        Activation::Sigmoid => g.op("Sigmoid", &[x], &[]),
        Activation::LeakyRelu => g.op("LeakyRelu", &[x], &[("alpha", Attr::Float(0.01))]),
        Activation::Silu => {
            let s = g.op("Sigmoid", &[x], &[]);
            g.op("Mul", &[x, &s], &[])
        }
    }
}

/// Which keys attention may see.
pub enum Mask<'a> {
    /// `[T, T]` boolean, true above the diagonal (future positions).
    Causal(&'a str),
    /// `[N, 1, 1, T]` boolean, true at padding keys.
    Padding(&'a str),
}

/// A `[T, T]` boolean mask of future positions for a sequence as long as `tokens`' axis 1.
pub fn causal_mask(g: &mut GraphBuilder, tokens: &str) -> String {
    let t = sequence_length(g, tokens);
    let axes = g.const_i64("axes0", &[1], &[0]);
    let t1 = g.op("Unsqueeze", &[&t, &axes], &[]);
    let shape = g.op("Concat", &[&t1, &t1], &[("axis", Attr::Int(0))]);
    let ones = g.op(
        "ConstantOfShape",
        &[&shape],
        &[(
            "value",
            Attr::Tensor(crate::graph::tensor_f32("value", &[1], &[1.0])),
        )],
    );
    let lower = g.op("Trilu", &[&ones], &[("upper", Attr::Int(0))]);
    let zero = g.const_f32("zero", &[], &[0.0]);
    g.op("Equal", &[&lower, &zero], &[])
}

/// The length of axis 1 of `x`, as a scalar int64.
pub fn sequence_length(g: &mut GraphBuilder, x: &str) -> String {
    let shape = g.op("Shape", &[x], &[]);
    let one = g.const_i64("one", &[], &[1]);
    g.op("Gather", &[&shape, &one], &[("axis", Attr::Int(0))])
}

/// Token embeddings plus learned positions `0..T`: `[N, T, C]`.
pub fn token_and_position(
    g: &mut GraphBuilder,
    w: &Weights,
    prefix: &str,
    tokens: &str,
) -> Result<String, ExportError> {
    let wte = weight(g, w, &format!("{prefix}wte.weight"))?;
    let wpe = weight(g, w, &format!("{prefix}wpe.weight"))?;
    let tok = g.op("Gather", &[&wte, tokens], &[("axis", Attr::Int(0))]);
    let t = sequence_length(g, tokens);
    let zero = g.const_i64("start", &[], &[0]);
    let step = g.const_i64("step", &[], &[1]);
    let positions = g.op("Range", &[&zero, &t, &step], &[]);
    let pos = g.op("Gather", &[&wpe, &positions], &[("axis", Attr::Int(0))]);
    Ok(g.op("Add", &[&tok, &pos], &[]))
}

/// Multi-head self-attention over `x` `[N, T, C]` from the packed query/key/value linear
/// layer `qkv_prefix` and the output projection `proj_prefix`, as kiln-models' attention.
#[allow(clippy::too_many_arguments)]
pub fn attention(
    g: &mut GraphBuilder,
    w: &Weights,
    qkv_prefix: &str,
    proj_prefix: &str,
    x: &str,
    embd: usize,
    heads: usize,
    mask: &Mask<'_>,
) -> Result<String, ExportError> {
    let d = embd / heads;
    let qkv = linear(g, w, qkv_prefix, x)?;
    let split = g.const_i64("split", &[3], &[embd as i64; 3]);
    let parts = g.op_n("Split", &[&qkv, &split], 3, &[("axis", Attr::Int(2))]);
    let heads_shape = g.const_i64("heads_shape", &[4], &[0, 0, heads as i64, d as i64]);
    let split_heads = |g: &mut GraphBuilder, v: &str, perm: Vec<i64>| {
        let r = g.op("Reshape", &[v, &heads_shape], &[]);
        g.op("Transpose", &[&r], &[("perm", Attr::Ints(perm))])
    };
    let q = split_heads(g, &parts[0], vec![0, 2, 1, 3]); // [N, H, T, D]
    let k = split_heads(g, &parts[1], vec![0, 2, 3, 1]); // [N, H, D, T]
    let v = split_heads(g, &parts[2], vec![0, 2, 1, 3]);
    let scores = g.op("MatMul", &[&q, &k], &[]);
    let scale = g.const_f32("scale", &[], &[(d as f32).sqrt()]);
    let scores = g.op("Div", &[&scores, &scale], &[]);
    let masked = g.const_f32("masked", &[], &[MASKED_SCORE]);
    let scores = match mask {
        Mask::Causal(m) | Mask::Padding(m) => g.op("Where", &[m, &masked, &scores], &[]),
    };
    let att = g.op("Softmax", &[&scores], &[("axis", Attr::Int(-1))]);
    let y = g.op("MatMul", &[&att, &v], &[]);
    let y = g.op(
        "Transpose",
        &[&y],
        &[("perm", Attr::Ints(vec![0, 2, 1, 3]))],
    );
    let merged = g.const_i64("merged_shape", &[3], &[0, 0, embd as i64]);
    let y = g.op("Reshape", &[&y, &merged], &[]);
    linear(g, w, proj_prefix, &y)
}

/// One pre-LayerNorm transformer block: `x + attn(ln1(x))`, then `x + mlp(ln2(x))`.
pub fn block(
    g: &mut GraphBuilder,
    w: &Weights,
    prefix: &str,
    x: &str,
    embd: usize,
    heads: usize,
    mask: &Mask<'_>,
) -> Result<String, ExportError> {
    let h = layer_norm(g, w, &format!("{prefix}.ln1"), x)?;
    let a = attention(
        g,
        w,
        &format!("{prefix}.attn.qkv"),
        &format!("{prefix}.attn.proj"),
        &h,
        embd,
        heads,
        mask,
    )?;
    let x = g.op("Add", &[x, &a], &[]);
    let h = layer_norm(g, w, &format!("{prefix}.ln2"), &x)?;
    let h = linear(g, w, &format!("{prefix}.mlp.fc"), &h)?;
    let h = gelu(g, &h);
    let h = linear(g, w, &format!("{prefix}.mlp.proj"), &h)?;
    Ok(g.op("Add", &[&x, &h], &[]))
}

/// `value` cast to float.
pub fn to_float(g: &mut GraphBuilder, value: &str) -> String {
    g.op(
        "Cast",
        &[value],
        &[("to", Attr::Int(data_type::FLOAT as i64))],
    )
}
