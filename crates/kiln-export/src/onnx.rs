//! ONNX graphs for kiln's models, built from kiln's own model definitions (the module paths in
//! `model.safetensors` and the shapes in `model.json`), not from a traced run.
//!
//! Graph interface (dynamic `batch` axis everywhere, dynamic `sequence` axis for tokens):
//!
//! | input        | type                   | what                                                       |
//! |--------------|------------------------|------------------------------------------------------------|
//! | `features`   | f32 `[batch, width]`   | raw dense values; NaN = missing (filled, then normalised)  |
//! | `pixels`     | f32 `[batch, C, H, W]` | raw pixels 0-255 (normalised in the graph)                 |
//! | `categories` | i64 `[batch, columns]` | embedding indices (0 = unknown, see `preprocessor.json`)   |
//! | `tokens`     | i64 `[batch, sequence]`| token ids (classifier: tokenizer id + 1, 0 = padding)      |
//!
//! Outputs: `logits` and `probabilities` (classification), `prediction` in target units
//! (regression), `logits` `[batch, sequence, vocab]` (GPT).

use kiln_config::Pooling;
use kiln_data::{InputShape, Preprocessor, TargetTransform};
use kiln_spec::{GptConfig, ModelSpec, PretrainedEncoderSpec};
use prost::Message;

use crate::ExportError;
use crate::graph::{Attr, Dim, GraphBuilder};
use crate::layers::{self, Mask};
use crate::proto::{ModelProto, data_type};
use crate::weights::Weights;

/// Input names.
pub mod inputs {
    /// Raw dense values.
    pub const FEATURES: &str = "features";
    /// Raw pixels.
    pub const PIXELS: &str = "pixels";
    /// Embedding indices.
    pub const CATEGORIES: &str = "categories";
    /// Token ids.
    pub const TOKENS: &str = "tokens";
}

/// Output names.
pub mod outputs {
    /// Unnormalised class scores (or next-token scores for GPT).
    pub const LOGITS: &str = "logits";
    /// Softmax of the logits.
    pub const PROBABILITIES: &str = "probabilities";
    /// Regression prediction in target units.
    pub const PREDICTION: &str = "prediction";
}

/// Fill for padding before the max-pool, as in kiln-models.
const PAD_FOR_MAX: f32 = -1e4;

/// The ONNX graph of a tabular, image or text-classifier [`ModelSpec`] network, with the
/// dense normalisation of `preprocessor` inside the graph.
pub fn network(
    spec: &ModelSpec,
    preprocessor: &Preprocessor,
    w: &Weights,
) -> Result<ModelProto, ExportError> {
    let mut g = GraphBuilder::new("kiln_network");
    let batch = Dim::Named("batch");
    let mut parts: Vec<String> = Vec::new();
    let mut docs = Vec::new();
    match spec.input {
        InputShape::Image {
            channels,
            height,
            width,
        } => {
            // One shift and scale per channel, broadcast over [batch, C, H, W].
            let slots = preprocessor.dense_slots();
            let plane = height * width;
            if slots.len() != channels * plane {
                return Err(ExportError::Unsupported(format!(
                    "an image model with {} normalised pixels for {channels}x{height}x{width}",
                    slots.len()
                )));
            }
            let per_channel = |f: fn(&kiln_data::DenseSlot) -> f64| -> Vec<f32> {
                (0..channels).map(|c| f(&slots[c * plane]) as f32).collect()
            };
            let pixels = g.input(
                inputs::PIXELS,
                data_type::FLOAT,
                &[
                    batch.clone(),
                    Dim::Fixed(channels),
                    Dim::Fixed(height),
                    Dim::Fixed(width),
                ],
                "raw pixel values 0-255",
            );
            let shift = g.const_f32(
                "pixel_shift",
                &[1, channels, 1, 1],
                &per_channel(|s| s.shift),
            );
            let scale = g.const_f32(
                "pixel_scale",
                &[1, channels, 1, 1],
                &per_channel(|s| s.scale),
            );
            let x = g.op("Sub", &[&pixels, &shift], &[]);
            let mut x = g.op("Div", &[&x, &scale], &[]);
            for (i, conv) in spec.conv.iter().enumerate() {
                let p = format!("convs.{i}");
                let kernel = layers::weight(&mut g, w, &format!("{p}.conv.weight"))?;
                let mut conv_inputs = vec![x.clone(), kernel];
                if w.find(&format!("{p}.conv.bias")).is_some() {
                    conv_inputs.push(layers::weight(&mut g, w, &format!("{p}.conv.bias"))?);
                }
                let refs: Vec<&str> = conv_inputs.iter().map(String::as_str).collect();
                let (k, s, pad) = (conv.kernel as i64, conv.stride as i64, conv.padding as i64);
                x = g.op(
                    "Conv",
                    &refs,
                    &[
                        ("kernel_shape", Attr::Ints(vec![k, k])),
                        ("strides", Attr::Ints(vec![s, s])),
                        ("pads", Attr::Ints(vec![pad, pad, pad, pad])),
                    ],
                );
                if conv.batch_norm {
                    x = layers::batch_norm(&mut g, w, &format!("{p}.norm"), &x)?;
                }
                x = layers::activation(&mut g, spec.activation, &x);
                if conv.pool > 1 {
                    let q = conv.pool as i64;
                    x = g.op(
                        "MaxPool",
                        &[&x],
                        &[
                            ("kernel_shape", Attr::Ints(vec![q, q])),
                            ("strides", Attr::Ints(vec![q, q])),
                        ],
                    );
                }
            }
            parts.push(g.op("Flatten", &[&x], &[("axis", Attr::Int(1))]));
            docs.push(format!(
                "{}: f32 [batch, {channels}, {height}, {width}] raw pixels 0-255",
                inputs::PIXELS
            ));
        }
        InputShape::Flat { width } if width > 0 => {
            let slots = preprocessor.dense_slots();
            if slots.len() != width {
                return Err(ExportError::Unsupported(format!(
                    "preprocessor.json describes {} dense values but model.json expects {width}",
                    slots.len()
                )));
            }
            let features = g.input(
                inputs::FEATURES,
                data_type::FLOAT,
                &[batch.clone(), Dim::Fixed(width)],
                "raw dense values (numeric columns as they are, one-hot/binary 0 or 1; NaN = missing)",
            );
            let fill: Vec<f32> = slots.iter().map(|s| s.fill as f32).collect();
            let shift: Vec<f32> = slots.iter().map(|s| s.shift as f32).collect();
            let scale: Vec<f32> = slots.iter().map(|s| s.scale as f32).collect();
            let fill = g.const_f32("fill", &[width], &fill);
            let shift = g.const_f32("shift", &[width], &shift);
            let scale = g.const_f32("scale", &[width], &scale);
            let missing = g.op("IsNaN", &[&features], &[]);
            let filled = g.op("Where", &[&missing, &fill, &features], &[]);
            let centred = g.op("Sub", &[&filled, &shift], &[]);
            parts.push(g.op("Div", &[&centred, &scale], &[]));
            docs.push(format!(
                "{}: f32 [batch, {width}] raw values, NaN = missing",
                inputs::FEATURES
            ));
        }
        InputShape::Flat { .. } => {}
    }
    if !spec.embeddings.is_empty() {
        let categories = g.input(
            inputs::CATEGORIES,
            data_type::INT64,
            &[batch.clone(), Dim::Fixed(spec.embeddings.len())],
            "embedding index per embedded column: 1 + position in its category list, 0 = unknown",
        );
        for i in 0..spec.embeddings.len() {
            let col = g.const_i64("column", &[], &[i as i64]);
            let idx = g.op("Gather", &[&categories, &col], &[("axis", Attr::Int(1))]);
            let table = layers::weight(&mut g, w, &format!("embeddings.{i}.weight"))?;
            parts.push(g.op("Gather", &[&table, &idx], &[("axis", Attr::Int(0))]));
        }
        docs.push(format!(
            "{}: i64 [batch, {}]",
            inputs::CATEGORIES,
            spec.embeddings.len()
        ));
    }
    let windows = preprocessor.text_windows();
    let in_windows = if windows > 1 {
        format!(
            ", {windows} windows of sequence / {windows} each (the model averages those that hold a token)"
        )
    } else {
        String::new()
    };
    if let Some(text) = &spec.text {
        let tokens = g.input(
            inputs::TOKENS,
            data_type::INT64,
            &[batch.clone(), Dim::Named("sequence")],
            "token ids + 1 (0 = padding), at most max_tokens per row",
        );
        parts.push(in_token_windows(
            &mut g,
            &tokens,
            windows,
            text.output_width(),
            |g, t| text_encoder(g, w, text, t),
        )?);
        docs.push(format!(
            "{}: i64 [batch, sequence <= {}], tokenizer id + 1, 0 = padding{in_windows}",
            inputs::TOKENS,
            text.max_tokens * windows
        ));
    }
    if let Some(pretrained) = &spec.pretrained {
        let tokens = g.input(
            inputs::TOKENS,
            data_type::INT64,
            &[batch.clone(), Dim::Named("sequence")],
            "token ids + 1 (0 = padding), [CLS] and [SEP] included",
        );
        let merged = w.with_lora_merged(spec)?;
        let width = pretrained.output_width();
        parts.push(in_token_windows(
            &mut g,
            &tokens,
            windows,
            width,
            |g, t| bert_encoder(g, &merged, pretrained, t),
        )?);
        docs.push(format!(
            "{}: i64 [batch, sequence <= {}], pretrained tokenizer id + 1 with its special tokens, 0 = padding{in_windows}",
            inputs::TOKENS,
            pretrained.bert.max_position_embeddings * windows
        ));
    }
    let mut h = match parts.len() {
        0 => return Err(ExportError::Unsupported("a model without inputs".into())),
        1 => parts.pop().expect("one part"),
        _ => {
            let refs: Vec<&str> = parts.iter().map(String::as_str).collect();
            g.op("Concat", &refs, &[("axis", Attr::Int(1))])
        }
    };
    for i in 0..spec.hidden.len() {
        let p = format!("hidden.{i}");
        h = layers::linear(&mut g, w, &format!("{p}.linear"), &h)?;
        if spec.batch_norm {
            h = layers::batch_norm(&mut g, w, &format!("{p}.norm"), &h)?;
        }
        h = layers::activation(&mut g, spec.activation, &h);
    }
    let out = layers::linear(&mut g, w, "output", &h)?;
    let mut metadata = vec![
        (
            "kiln.kind".to_string(),
            format!("{:?}", spec.kind).to_lowercase(),
        ),
        ("kiln.inputs".to_string(), docs.join("; ")),
    ];
    match &preprocessor.target {
        TargetTransform::Classes { classes, .. } => {
            let k = Dim::Fixed(classes.len());
            g.output(
                &out,
                outputs::LOGITS,
                data_type::FLOAT,
                &[batch.clone(), k.clone()],
                "class scores",
            );
            let p = g.op("Softmax", &[&out], &[("axis", Attr::Int(1))]);
            g.output(
                &p,
                outputs::PROBABILITIES,
                data_type::FLOAT,
                &[batch, k],
                "class probabilities",
            );
            metadata.push((
                "kiln.classes".into(),
                serde_json::to_string(classes).expect("strings serialise"),
            ));
        }
        TargetTransform::Regression { mean, std, .. } => {
            let s = g.const_f32("target_std", &[], &[*std as f32]);
            let m = g.const_f32("target_mean", &[], &[*mean as f32]);
            let y = g.op("Mul", &[&out, &s], &[]);
            let y = g.op("Add", &[&y, &m], &[]);
            g.output(
                &y,
                outputs::PREDICTION,
                data_type::FLOAT,
                &[batch, Dim::Fixed(1)],
                "prediction in target units",
            );
        }
    }
    Ok(g.finish("kiln model with its dense preprocessing", metadata))
}

/// `encode` (token ids `[N, T]` to pooled states `[N, width]`) of `tokens`: with one window,
/// of the rows as they are; otherwise of each row's `windows` windows (`[batch, windows * T]`),
/// the pooled states of the windows that hold a token averaged (none: zeros), as kiln-models.
fn in_token_windows(
    g: &mut GraphBuilder,
    tokens: &str,
    windows: usize,
    width: usize,
    encode: impl FnOnce(&mut GraphBuilder, &str) -> Result<String, ExportError>,
) -> Result<String, ExportError> {
    if windows <= 1 {
        return encode(g, tokens);
    }
    let shape = g.const_i64("window_shape", &[3], &[0, windows as i64, -1]);
    let split = g.op("Reshape", &[tokens, &shape], &[]); // [B, W, T]
    let flat = g.op("Flatten", &[&split], &[("axis", Attr::Int(2))]); // [B * W, T]
    let pooled = encode(g, &flat)?; // [B * W, width]
    let shape = g.const_i64("pooled_shape", &[3], &[-1, windows as i64, width as i64]);
    let pooled = g.op("Reshape", &[&pooled, &shape], &[]); // [B, W, width]
    let zero = g.const_i64("window_pad", &[], &[0]);
    let pad = g.op("Equal", &[&split, &zero], &[]);
    let real = g.op("Not", &[&pad], &[]);
    let real = layers::to_float(g, &real);
    let used = g.op(
        "ReduceMax",
        &[&real],
        &[("axes", Attr::Ints(vec![2])), ("keepdims", Attr::Int(1))],
    ); // [B, W, 1]
    let masked = g.op("Mul", &[&pooled, &used], &[]);
    let axis1 = g.const_i64("window_axis", &[1], &[1]);
    let sum = g.op(
        "ReduceSum",
        &[&masked, &axis1],
        &[("keepdims", Attr::Int(0))],
    ); // [B, width]
    let count = g.op("ReduceSum", &[&used, &axis1], &[("keepdims", Attr::Int(0))]); // [B, 1]
    let one = g.const_f32("one_window", &[], &[1.0]);
    let count = g.op("Max", &[&count, &one], &[]);
    Ok(g.op("Div", &[&sum, &count], &[]))
}

/// The text encoder: embeddings, bidirectional blocks with a padding mask, final LayerNorm,
/// pooling over real tokens. Returns `[batch, width]`.
fn text_encoder(
    g: &mut GraphBuilder,
    w: &Weights,
    spec: &kiln_spec::TextEncoderSpec,
    tokens: &str,
) -> Result<String, ExportError> {
    let zero = g.const_i64("pad_id", &[], &[0]);
    let pad = g.op("Equal", &[tokens, &zero], &[]); // [N, T]
    let axes12 = g.const_i64("axes12", &[2], &[1, 2]);
    let key_mask = g.op("Unsqueeze", &[&pad, &axes12], &[]); // [N, 1, 1, T]
    let causal = spec.causal.then(|| layers::causal_mask(g, tokens));
    let mask = match &causal {
        Some(m) => Mask::Causal(m),
        None => Mask::Padding(&key_mask),
    };
    let mut x = layers::token_and_position(g, w, "text.", tokens)?;
    for i in 0..spec.layers {
        x = layers::block(
            g,
            w,
            &format!("text.blocks.{i}"),
            &x,
            spec.embd,
            spec.heads,
            &mask,
        )?;
    }
    let x = layers::layer_norm(g, w, "text.ln_f", &x)?;
    Ok(pool(g, &x, &pad, spec.pooling))
}

/// The pretrained BERT encoder of a fine-tuned network (adapters merged into `w` already):
/// embeddings of `tokens - 1` (0 pads) plus positions and segment 0, post-LayerNorm layers
/// with a padding mask, pooling over real tokens. Returns `[batch, width]`.
fn bert_encoder(
    g: &mut GraphBuilder,
    w: &Weights,
    spec: &PretrainedEncoderSpec,
    tokens: &str,
) -> Result<String, ExportError> {
    let b = &spec.bert;
    let epsilon = b.layer_norm_eps as f32;
    let zero = g.const_i64("pad_id", &[], &[0]);
    let pad = g.op("Equal", &[tokens, &zero], &[]); // [N, T]
    let axes12 = g.const_i64("axes12", &[2], &[1, 2]);
    let key_mask = g.op("Unsqueeze", &[&pad, &axes12], &[]); // [N, 1, 1, T]
    let one = g.const_i64("one_id", &[], &[1]);
    let ids = g.op("Sub", &[tokens, &one], &[]);
    let ids = g.op("Max", &[&ids, &zero], &[]);
    let word = layers::weight(g, w, "bert.word.weight")?;
    let x = g.op("Gather", &[&word, &ids], &[("axis", Attr::Int(0))]);
    let t = layers::sequence_length(g, tokens);
    let step = g.const_i64("step", &[], &[1]);
    let positions = g.op("Range", &[&zero, &t, &step], &[]);
    let position = layers::weight(g, w, "bert.position.weight")?;
    let pos = g.op(
        "Gather",
        &[&position, &positions],
        &[("axis", Attr::Int(0))],
    );
    let segment = layers::weight(g, w, "bert.segment.weight")?;
    let seg = g.op("Gather", &[&segment, &zero], &[("axis", Attr::Int(0))]); // [C]
    let x = g.op("Add", &[&x, &pos], &[]);
    let x = g.op("Add", &[&x, &seg], &[]);
    let mut x = layers::layer_norm_with_epsilon(g, w, "bert.embed_norm", &x, epsilon)?;
    for i in 0..b.num_hidden_layers {
        let p = format!("bert.layers.{i}");
        let a = layers::attention(
            g,
            w,
            &format!("{p}.qkv"),
            &format!("{p}.attn_out"),
            &x,
            b.hidden_size,
            b.num_attention_heads,
            &Mask::Padding(&key_mask),
        )?;
        let sum = g.op("Add", &[&x, &a], &[]);
        x = layers::layer_norm_with_epsilon(g, w, &format!("{p}.attn_norm"), &sum, epsilon)?;
        let h = layers::linear(g, w, &format!("{p}.up"), &x)?;
        let h = match b.hidden_act.as_str() {
            "relu" => g.op("Relu", &[&h], &[]),
            "gelu_new" | "gelu_pytorch_tanh" => layers::gelu_tanh(g, &h),
            _ => layers::gelu(g, &h),
        };
        let h = layers::linear(g, w, &format!("{p}.down"), &h)?;
        let sum = g.op("Add", &[&x, &h], &[]);
        x = layers::layer_norm_with_epsilon(g, w, &format!("{p}.out_norm"), &sum, epsilon)?;
    }
    Ok(pool(g, &x, &pad, spec.pooling))
}

/// Token states `x` `[N, T, C]` pooled over the positions where `pad` `[N, T]` is false, as
/// kiln-models' pooling: `[N, width]`.
fn pool(g: &mut GraphBuilder, x: &str, pad: &str, pooling: Pooling) -> String {
    let real = g.op("Not", &[pad], &[]);
    let keep = layers::to_float(g, &real); // [N, T]
    let axes2 = g.const_i64("axes2", &[1], &[2]);
    let keep3 = g.op("Unsqueeze", &[&keep, &axes2], &[]); // [N, T, 1]
    let axis1 = g.const_i64("axis1", &[1], &[1]);
    let mean = |g: &mut GraphBuilder| {
        let masked = g.op("Mul", &[x, &keep3], &[]);
        let sum = g.op(
            "ReduceSum",
            &[&masked, &axis1],
            &[("keepdims", Attr::Int(0))],
        );
        let count = g.op("ReduceSum", &[&keep, &axis1], &[("keepdims", Attr::Int(1))]);
        let one = g.const_f32("one", &[], &[1.0]);
        let count = g.op("Max", &[&count, &one], &[]);
        g.op("Div", &[&sum, &count], &[])
    };
    let max = |g: &mut GraphBuilder| {
        let pad3 = g.op("Unsqueeze", &[pad, &axes2], &[]);
        let fill = g.const_f32("pad_fill", &[], &[PAD_FOR_MAX]);
        let filled = g.op("Where", &[&pad3, &fill, x], &[]);
        let m = g.op(
            "ReduceMax",
            &[&filled],
            &[("axes", Attr::Ints(vec![1])), ("keepdims", Attr::Int(0))],
        );
        let any = g.op(
            "ReduceMax",
            &[&keep],
            &[("axes", Attr::Ints(vec![1])), ("keepdims", Attr::Int(1))],
        );
        g.op("Mul", &[&m, &any], &[])
    };
    match pooling {
        Pooling::Mean => mean(g),
        Pooling::Max => max(g),
        Pooling::MeanMax => {
            let (a, b) = (mean(g), max(g));
            g.op("Concat", &[&a, &b], &[("axis", Attr::Int(1))])
        }
        Pooling::Cls => {
            let first = g.const_i64("first", &[], &[0]);
            let state = g.op("Gather", &[x, &first], &[("axis", Attr::Int(1))]); // [N, C]
            let real = g.op("Gather", &[&keep, &first], &[("axis", Attr::Int(1))]); // [N]
            let axes1 = g.const_i64("axes1", &[1], &[1]);
            let real = g.op("Unsqueeze", &[&real, &axes1], &[]);
            g.op("Mul", &[&state, &real], &[])
        }
    }
}

/// The ONNX graph of a GPT: `tokens` `[batch, sequence]` to `logits` `[batch, sequence, vocab]`.
pub fn gpt(cfg: &GptConfig, w: &Weights) -> Result<ModelProto, ExportError> {
    let mut g = GraphBuilder::new("kiln_gpt");
    let tokens = g.input(
        inputs::TOKENS,
        data_type::INT64,
        &[Dim::Named("batch"), Dim::Named("sequence")],
        "token ids of tokenizer.json, sequence <= context",
    );
    let future = layers::causal_mask(&mut g, &tokens);
    let mut x = layers::token_and_position(&mut g, w, "", &tokens)?;
    for i in 0..cfg.layers {
        x = layers::block(
            &mut g,
            w,
            &format!("blocks.{i}"),
            &x,
            cfg.embd,
            cfg.heads,
            &Mask::Causal(&future),
        )?;
    }
    let x = layers::layer_norm(&mut g, w, "ln_f", &x)?;
    let logits = if cfg.tied_head {
        let wte = "wte.weight"; // added by token_and_position
        let head = g.op("Transpose", &[wte], &[("perm", Attr::Ints(vec![1, 0]))]);
        g.op("MatMul", &[&x, &head], &[])
    } else {
        layers::linear(&mut g, w, "head", &x)?
    };
    g.output(
        &logits,
        outputs::LOGITS,
        data_type::FLOAT,
        &[
            Dim::Named("batch"),
            Dim::Named("sequence"),
            Dim::Fixed(cfg.vocab_size),
        ],
        "next-token scores at every position",
    );
    let metadata = vec![
        ("kiln.kind".to_string(), "gpt".to_string()),
        ("kiln.context".to_string(), cfg.context.to_string()),
        (
            "kiln.inputs".to_string(),
            format!(
                "tokens: i64 [batch, sequence <= {}], ids of tokenizer.json",
                cfg.context
            ),
        ),
    ];
    Ok(g.finish("kiln GPT language model", metadata))
}

/// Serialises a model to ONNX protobuf bytes.
pub fn to_bytes(model: &ModelProto) -> Vec<u8> {
    model.encode_to_vec()
}
