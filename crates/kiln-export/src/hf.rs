//! safetensors with PyTorch/HuggingFace names and layouts, plus `config.json`.
//!
//! - GPT runs use GPT-2's names (`transformer.h.0.attn.c_attn.weight`, ...) and its
//!   `Conv1D` `[in, out]` layout, which is Burn's `Linear` layout; biases a kiln model was
//!   trained without are written as zeros, so the file has every tensor GPT-2 expects and the
//!   same function. The `config.json` is a `GPT2LMHeadModel` config.
//! - A network fine-tuned from a BERT writes the encoder under BERT's own names
//!   (`embeddings.word_embeddings.weight`, `encoder.layer.0.attention.self.query.weight`, ...;
//!   query, key and value unpacked, LoRA adapters merged) with a `bert` `config.json`, so the
//!   exported folder is a pretrained folder again (kiln's `model.pretrained`, `kiln embed`,
//!   Hugging Face's `BertModel`); the head keeps kiln's paths, as below.
//! - Other networks keep kiln's module paths with PyTorch conventions: `nn.Linear` weights
//!   `[out, in]`, norm `weight`/`bias` instead of `gamma`/`beta`.

use std::collections::BTreeMap;

use kiln_data::Preprocessor;
use kiln_spec::{GptConfig, ModelSpec};
use safetensors::tensor::{Dtype, TensorView};
use serde_json::json;

use crate::ExportError;
use crate::weights::{NamedTensor, Weights};

/// Tensors by their exported name.
pub type Tensors = BTreeMap<String, NamedTensor>;

fn transpose(t: &NamedTensor) -> NamedTensor {
    let [r, c] = [t.shape[0], t.shape[1]];
    let mut values = vec![0.0; r * c];
    for i in 0..r {
        for j in 0..c {
            values[j * r + i] = t.values[i * c + j];
        }
    }
    NamedTensor {
        shape: vec![c, r],
        values,
    }
}

fn zeros(n: usize) -> NamedTensor {
    NamedTensor {
        shape: vec![n],
        values: vec![0.0; n],
    }
}

/// GPT weights under GPT-2's names, and a `GPT2LMHeadModel` `config.json`.
pub fn gpt(cfg: &GptConfig, w: &Weights) -> Result<(Tensors, serde_json::Value), ExportError> {
    let mut out = Tensors::new();
    let e = cfg.embd;
    out.insert(
        "transformer.wte.weight".into(),
        w.get("wte.weight")?.clone(),
    );
    out.insert(
        "transformer.wpe.weight".into(),
        w.get("wpe.weight")?.clone(),
    );
    let norm = |out: &mut Tensors, from: &str, to: &str| -> Result<(), ExportError> {
        out.insert(
            format!("{to}.weight"),
            w.get(&format!("{from}.gamma"))?.clone(),
        );
        let beta = w
            .find(&format!("{from}.beta"))
            .cloned()
            .unwrap_or_else(|| zeros(e));
        out.insert(format!("{to}.bias"), beta);
        Ok(())
    };
    for i in 0..cfg.layers {
        let (k, h) = (format!("blocks.{i}"), format!("transformer.h.{i}"));
        norm(&mut out, &format!("{k}.ln1"), &format!("{h}.ln_1"))?;
        norm(&mut out, &format!("{k}.ln2"), &format!("{h}.ln_2"))?;
        for (from, to, width) in [
            ("attn.qkv", "attn.c_attn", 3 * e),
            ("attn.proj", "attn.c_proj", e),
            ("mlp.fc", "mlp.c_fc", 4 * e),
            ("mlp.proj", "mlp.c_proj", e),
        ] {
            out.insert(
                format!("{h}.{to}.weight"),
                w.get(&format!("{k}.{from}.weight"))?.clone(),
            );
            let bias = w
                .find(&format!("{k}.{from}.bias"))
                .cloned()
                .unwrap_or_else(|| zeros(width));
            out.insert(format!("{h}.{to}.bias"), bias);
        }
    }
    norm(&mut out, "ln_f", "transformer.ln_f")?;
    if !cfg.tied_head {
        out.insert("lm_head.weight".into(), transpose(w.get("head.weight")?));
    }
    let config = json!({
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": cfg.vocab_size,
        "n_positions": cfg.context,
        "n_ctx": cfg.context,
        "n_embd": cfg.embd,
        "n_layer": cfg.layers,
        "n_head": cfg.heads,
        "n_inner": 4 * cfg.embd,
        "activation_function": "gelu",
        "layer_norm_epsilon": 1e-5,
        "resid_pdrop": cfg.dropout,
        "embd_pdrop": cfg.dropout,
        "attn_pdrop": cfg.dropout,
        "tie_word_embeddings": cfg.tied_head,
        "torch_dtype": "float32",
        "kiln_bias": cfg.bias,
    });
    Ok((out, config))
}

/// A tabular/image/text-classifier network under kiln's module paths with PyTorch layouts,
/// and a `config.json` holding the architecture and class names.
pub fn network(
    spec: &ModelSpec,
    pre: &Preprocessor,
    w: &Weights,
) -> Result<(Tensors, serde_json::Value), ExportError> {
    let w = &w.with_lora_merged(spec)?;
    let mut out = Tensors::new();
    if let Some(p) = &spec.pretrained {
        bert_encoder(&mut out, w, &p.bert)?;
    }
    for (name, t) in w.iter().filter(|(n, _)| !n.starts_with("bert.")) {
        let (stem, leaf) = name.rsplit_once('.').unwrap_or(("", name));
        let is_embedding =
            stem.ends_with("wte") || stem.ends_with("wpe") || stem.starts_with("embeddings.");
        let (leaf, tensor) = match leaf {
            "gamma" => ("weight", t.clone()),
            "beta" => ("bias", t.clone()),
            "weight" if t.shape.len() == 2 && !is_embedding => ("weight", transpose(t)),
            other => (other, t.clone()),
        };
        out.insert(format!("{stem}.{leaf}"), tensor);
    }
    let mut config = match &spec.pretrained {
        Some(p) => {
            let mut config = serde_json::to_value(&p.bert).expect("a config serialises");
            config["architectures"] = json!(["BertModel"]);
            config["kiln_model"] = json!(spec);
            config["torch_dtype"] = json!("float32");
            config
        }
        None => json!({
            "architectures": ["KilnNetwork"],
            "model_type": "kiln",
            "kiln_model": spec,
            "torch_dtype": "float32",
        }),
    };
    if let Some(classes) = pre.classes() {
        let id2label: BTreeMap<String, &String> = classes
            .iter()
            .enumerate()
            .map(|(i, c)| (i.to_string(), c))
            .collect();
        let label2id: BTreeMap<&String, usize> =
            classes.iter().enumerate().map(|(i, c)| (c, i)).collect();
        config["id2label"] = json!(id2label);
        config["label2id"] = json!(label2id);
    }
    Ok((out, config))
}

/// A fine-tuned BERT encoder (kiln's `bert.*` tensors) under BERT's names and layouts.
fn bert_encoder(
    out: &mut Tensors,
    w: &Weights,
    cfg: &kiln_spec::BertConfig,
) -> Result<(), ExportError> {
    let c = cfg.hidden_size;
    let mut copy = |from: &str, to: &str| -> Result<(), ExportError> {
        out.insert(to.to_string(), w.get(from)?.clone());
        Ok(())
    };
    copy("bert.word.weight", "embeddings.word_embeddings.weight")?;
    copy(
        "bert.position.weight",
        "embeddings.position_embeddings.weight",
    )?;
    copy(
        "bert.segment.weight",
        "embeddings.token_type_embeddings.weight",
    )?;
    copy("bert.embed_norm.gamma", "embeddings.LayerNorm.weight")?;
    copy("bert.embed_norm.beta", "embeddings.LayerNorm.bias")?;
    for i in 0..cfg.num_hidden_layers {
        let (k, h) = (format!("bert.layers.{i}"), format!("encoder.layer.{i}"));
        // The packed [C, 3C] query/key/value: column block j is one projection.
        let qkv = w.get(&format!("{k}.qkv.weight"))?;
        let bias = w.get(&format!("{k}.qkv.bias"))?;
        for (j, name) in ["query", "key", "value"].iter().enumerate() {
            let block = NamedTensor {
                shape: vec![c, c],
                values: (0..c)
                    .flat_map(|r| qkv.values[r * 3 * c + j * c..r * 3 * c + (j + 1) * c].to_vec())
                    .collect(),
            };
            out.insert(
                format!("{h}.attention.self.{name}.weight"),
                transpose(&block),
            );
            out.insert(
                format!("{h}.attention.self.{name}.bias"),
                NamedTensor {
                    shape: vec![c],
                    values: bias.values[j * c..(j + 1) * c].to_vec(),
                },
            );
        }
        for (from, to) in [
            ("attn_out", "attention.output.dense"),
            ("up", "intermediate.dense"),
            ("down", "output.dense"),
        ] {
            out.insert(
                format!("{h}.{to}.weight"),
                transpose(w.get(&format!("{k}.{from}.weight"))?),
            );
            out.insert(
                format!("{h}.{to}.bias"),
                w.get(&format!("{k}.{from}.bias"))?.clone(),
            );
        }
        for (from, to) in [
            ("attn_norm", "attention.output.LayerNorm"),
            ("out_norm", "output.LayerNorm"),
        ] {
            out.insert(
                format!("{h}.{to}.weight"),
                w.get(&format!("{k}.{from}.gamma"))?.clone(),
            );
            out.insert(
                format!("{h}.{to}.bias"),
                w.get(&format!("{k}.{from}.beta"))?.clone(),
            );
        }
    }
    Ok(())
}

/// Serialises tensors as safetensors with HuggingFace's `{"format": "pt"}` metadata.
pub fn to_safetensors(tensors: &Tensors) -> Result<Vec<u8>, ExportError> {
    let bytes: Vec<(String, Vec<u8>, Vec<usize>)> = tensors
        .iter()
        .map(|(n, t)| {
            (
                n.clone(),
                t.values.iter().flat_map(|v| v.to_le_bytes()).collect(),
                t.shape.clone(),
            )
        })
        .collect();
    let views: Vec<(String, TensorView<'_>)> = bytes
        .iter()
        .map(|(n, b, s)| {
            Ok((
                n.clone(),
                TensorView::new(Dtype::F32, s.clone(), b)
                    .map_err(|e| ExportError::Unsupported(e.to_string()))?,
            ))
        })
        .collect::<Result<_, ExportError>>()?;
    let metadata = Some(std::collections::HashMap::from([(
        "format".to_string(),
        "pt".to_string(),
    )]));
    safetensors::serialize(views, metadata).map_err(|e| ExportError::Unsupported(e.to_string()))
}
