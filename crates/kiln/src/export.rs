//! `kiln export`: a run directory to ONNX (with reference test data) or HuggingFace-style
//! safetensors, plus what a client needs to make the inputs (preprocessing, tokenizer).

use std::path::{Path, PathBuf};

use burn::prelude::{Int, Tensor, TensorData};
use burn::tensor::activation::softmax;
use kiln_config::ModelKind;
use kiln_data::{FeatureTransform, Preprocessor, TargetTransform};
use kiln_export::onnx::{inputs, outputs};
use kiln_export::test_data::TestTensor;
use kiln_export::{Weights, hf, onnx};
use kiln_models::{Inputs, Network};
use kiln_rng::SplitMix64;
use kiln_runtime::run::{self, files};
use kiln_train::checkpoint::write_atomic;
use serde::Serialize;

use crate::lm::lm_files;
use crate::{KilnError, Result};

/// Export formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportFormat {
    /// ONNX graph + `test_data_set_0/` reference tensors.
    Onnx,
    /// safetensors with HuggingFace names + `config.json`.
    Safetensors,
}

/// Files in an export directory.
pub mod export_files {
    /// The ONNX graph.
    pub const ONNX: &str = "model.onnx";
    /// HuggingFace-style weights.
    pub const SAFETENSORS: &str = "model.safetensors";
    /// HuggingFace-style config.
    pub const HF_CONFIG: &str = "config.json";
    /// Reference inputs/outputs computed by kiln (ONNX test-runner layout).
    pub const TEST_DATA: &str = "test_data_set_0";
    /// Tokenizer of a text model.
    pub const TOKENIZER: &str = "tokenizer.json";
}

/// What `kiln export` wrote.
#[derive(Debug, Serialize)]
pub struct ExportSummary {
    /// Run exported.
    pub run_dir: PathBuf,
    /// Output directory.
    pub out: PathBuf,
    /// Model family.
    pub kind: String,
    /// Files written, relative to `out`.
    pub files: Vec<String>,
    /// Graph nodes (ONNX).
    pub nodes: Option<usize>,
    /// Size of the model file in bytes.
    pub bytes: u64,
}

fn write(out: &Path, name: &str, bytes: &[u8], written: &mut Vec<String>) -> Result<()> {
    let path = out.join(name);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| KilnError::Output {
            path: parent.display().to_string(),
            message: e.to_string(),
        })?;
    }
    write_atomic(&path, bytes)?;
    written.push(name.to_string());
    Ok(())
}

fn export_err(e: kiln_export::ExportError) -> KilnError {
    KilnError::Invalid(e.to_string())
}

fn read_weights(run_dir: &Path) -> Result<Weights> {
    let path = run_dir.join(files::WEIGHTS);
    let bytes = std::fs::read(&path).map_err(|e| {
        KilnError::Invalid(format!("{}: {e} (did training finish?)", path.display()))
    })?;
    Weights::from_safetensors(&bytes, &path.display().to_string()).map_err(export_err)
}

/// Exports the run in `run_dir` to the directory `out`.
pub fn export_run(run_dir: &Path, format: ExportFormat, out: &Path) -> Result<ExportSummary> {
    if !run_dir.join(files::CONFIG).is_file() {
        return Err(KilnError::Invalid(format!(
            "{}: not a run directory (no {})",
            run_dir.display(),
            files::CONFIG
        )));
    }
    if out.join(files::CONFIG).exists() {
        return Err(KilnError::Output {
            path: out.display().to_string(),
            message: "this folder holds a kiln run (config.toml): exporting there would replace its weights and preprocessing; choose another --out".into(),
        });
    }
    let config = kiln_config::load(&run_dir.join(files::CONFIG), &[])?;
    let weights = read_weights(run_dir)?;
    let mut written = Vec::new();
    let mut nodes = None;
    let model_file;
    if config.model.kind == ModelKind::Gpt {
        let (model, tokenizer, device) =
            kiln_runtime::lm::load_lm_on(run_dir, kiln_runtime::default_device()?)?;
        let gpt: kiln_models::GptConfig = run::read_json(&run_dir.join(files::MODEL_SPEC))?;
        let tokenizer_json = std::fs::read(run_dir.join(lm_files::TOKENIZER)).map_err(|e| {
            KilnError::Invalid(format!(
                "{}: {e}",
                run_dir.join(lm_files::TOKENIZER).display()
            ))
        })?;
        write(out, export_files::TOKENIZER, &tokenizer_json, &mut written)?;
        match format {
            ExportFormat::Onnx => {
                let proto = onnx::gpt(&gpt, &weights).map_err(export_err)?;
                nodes = Some(write_onnx(out, &proto, &mut written)?);
                model_file = export_files::ONNX;
                // Two windows of random ids, the first as long as the context.
                let mut rng = SplitMix64::new(7);
                let t = gpt.context;
                let ids: Vec<i64> = (0..2 * t)
                    .map(|_| rng.below(tokenizer.vocab_size()) as i64)
                    .collect();
                let x = Tensor::<2, Int>::from_data(TensorData::new(ids.clone(), [2, t]), &device);
                let logits = model
                    .forward(x)
                    .into_data()
                    .try_to_vec::<f32>()
                    .map_err(|e| KilnError::Invalid(format!("reading logits: {e:?}")))?;
                let cases = [
                    TestTensor::I64 {
                        name: inputs::TOKENS.into(),
                        shape: vec![2, t],
                        values: ids,
                    },
                    TestTensor::F32 {
                        name: outputs::LOGITS.into(),
                        shape: vec![2, t, gpt.vocab_size],
                        values: logits,
                    },
                ];
                write_test_data(out, &cases[..1], &cases[1..], &mut written)?;
            }
            ExportFormat::Safetensors => {
                let (tensors, hf_config) = hf::gpt(&gpt, &weights).map_err(export_err)?;
                write_hf(out, &tensors, &hf_config, &mut written)?;
                model_file = export_files::SAFETENSORS;
            }
        }
    } else {
        // Export only reads the weights back: the CPU, whatever device the run trained on.
        let device = kiln_runtime::default_device()?;
        let loaded = run::load(run_dir, &device)?;
        let pre = &loaded.preprocessor;
        let pre_json = serde_json::to_vec_pretty(pre).expect("serialisable");
        write(out, files::PREPROCESSOR, &pre_json, &mut written)?;
        if let Some(tokenizer) = pre.features.iter().find_map(|f| match f {
            FeatureTransform::Text { tokenizer, .. } => Some(tokenizer),
            _ => None,
        }) {
            write(
                out,
                export_files::TOKENIZER,
                tokenizer.as_bytes(),
                &mut written,
            )?;
        }
        match format {
            ExportFormat::Onnx => {
                let proto = onnx::network(&loaded.spec, pre, &weights).map_err(export_err)?;
                nodes = Some(write_onnx(out, &proto, &mut written)?);
                model_file = export_files::ONNX;
                let (ins, model_inputs) = sample_inputs(&loaded.spec, pre, 6, &device)?;
                let outs = reference_outputs(&loaded.model, pre, model_inputs)?;
                write_test_data(out, &ins, &outs, &mut written)?;
            }
            ExportFormat::Safetensors => {
                let (tensors, hf_config) =
                    hf::network(&loaded.spec, pre, &weights).map_err(export_err)?;
                write_hf(out, &tensors, &hf_config, &mut written)?;
                model_file = export_files::SAFETENSORS;
            }
        }
    }
    let bytes = std::fs::metadata(out.join(model_file))
        .map(|m| m.len())
        .unwrap_or(0);
    Ok(ExportSummary {
        run_dir: run_dir.to_path_buf(),
        out: out.to_path_buf(),
        kind: format!("{:?}", config.model.kind).to_lowercase(),
        files: written,
        nodes,
        bytes,
    })
}

/// Writes `model.onnx`; returns its node count.
fn write_onnx(
    out: &Path,
    proto: &kiln_export::proto::ModelProto,
    written: &mut Vec<String>,
) -> Result<usize> {
    write(out, export_files::ONNX, &onnx::to_bytes(proto), written)?;
    Ok(proto.graph.as_ref().map_or(0, |g| g.node.len()))
}

fn write_hf(
    out: &Path,
    tensors: &hf::Tensors,
    config: &serde_json::Value,
    written: &mut Vec<String>,
) -> Result<()> {
    write(
        out,
        export_files::SAFETENSORS,
        &hf::to_safetensors(tensors).map_err(export_err)?,
        written,
    )?;
    write(
        out,
        export_files::HF_CONFIG,
        &serde_json::to_vec_pretty(config).expect("serialisable"),
        written,
    )
}

fn write_test_data(
    out: &Path,
    ins: &[TestTensor],
    outs: &[TestTensor],
    written: &mut Vec<String>,
) -> Result<()> {
    for (i, t) in ins.iter().enumerate() {
        let name = format!("{}/input_{i}.pb", export_files::TEST_DATA);
        write(out, &name, &t.to_bytes(), written)?;
    }
    for (i, t) in outs.iter().enumerate() {
        let name = format!("{}/output_{i}.pb", export_files::TEST_DATA);
        write(out, &name, &t.to_bytes(), written)?;
    }
    Ok(())
}

/// A standard normal draw (Box-Muller).
fn normal(rng: &mut SplitMix64) -> f64 {
    let u = |r: &mut SplitMix64| ((r.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    let (a, b) = (u(rng), u(rng));
    (-2.0 * a.ln()).sqrt() * (std::f64::consts::TAU * b).cos()
}

/// `rows` seeded input rows in the ONNX graph's raw form, and the same rows as kiln's network
/// inputs (dense values through [`Preprocessor::normalise_dense`]). Row 0 has a missing numeric value and
/// the longest text; row 1 an empty text. Texts read in windows fill a random number of
/// windows (row 0 all, row 1 the first), the rest padding.
fn sample_inputs(
    spec: &kiln_models::ModelSpec,
    pre: &Preprocessor,
    rows: usize,
    device: &burn::prelude::Device,
) -> Result<(Vec<TestTensor>, Inputs)> {
    let mut rng = SplitMix64::new(11);
    let mut raw = Vec::new();
    let mut categories = Vec::new();
    let mut tokens = Vec::new();
    let seq = pre.text_input().map(|(_, t)| t).unwrap_or(0);
    let windows = pre.text_windows();
    // A pretrained model's texts always hold its special tokens: never an empty row.
    let shortest = if spec.pretrained.is_some() { 2 } else { 0 };
    for r in 0..rows {
        let mut missing_done = false;
        for f in &pre.features {
            match f {
                FeatureTransform::Numeric { shift, scale, .. } => {
                    if r == 0 && !missing_done {
                        missing_done = true;
                        raw.push(f32::NAN);
                    } else {
                        raw.push((normal(&mut rng) * scale + shift) as f32);
                    }
                }
                FeatureTransform::Binary { .. } => raw.push(rng.below(2) as f32),
                FeatureTransform::Categorical {
                    categories: known,
                    embedding_dim,
                    ..
                } => match embedding_dim {
                    Some(_) => categories.push(rng.below(known.len() + 1) as i64),
                    None => {
                        let hot = rng.below(known.len());
                        raw.extend((0..known.len()).map(|i| f32::from(u8::from(i == hot))));
                    }
                },
                FeatureTransform::Image {
                    channels,
                    height,
                    width,
                    ..
                } => {
                    raw.extend((0..channels * height * width).map(|_| rng.below(256) as f32));
                }
                FeatureTransform::Text { vocab_size, .. } => {
                    let used = match r {
                        0 => windows,
                        1 => 1,
                        _ if windows > 1 => 1 + rng.below(windows),
                        _ => 1,
                    };
                    for w in 0..windows {
                        let len = match r {
                            _ if w >= used => 0,
                            0 => seq,
                            1 => shortest,
                            _ => rng.below(seq + 1).max(shortest),
                        };
                        for i in 0..seq {
                            tokens.push(if i < len {
                                1 + rng.below(vocab_size - 1) as i64
                            } else {
                                0
                            });
                        }
                    }
                }
            }
        }
    }
    let mut onnx_inputs = Vec::new();
    let mut model = Inputs {
        x: None,
        categories: None,
        tokens: None,
        token_windows: 1,
    };
    let width = spec.input.size();
    if width > 0 {
        let shape = match spec.input {
            kiln_data::InputShape::Image {
                channels,
                height,
                width,
            } => {
                vec![rows, channels, height, width]
            }
            kiln_data::InputShape::Flat { width } => vec![rows, width],
        };
        let name = if shape.len() == 4 {
            inputs::PIXELS
        } else {
            inputs::FEATURES
        };
        onnx_inputs.push(TestTensor::F32 {
            name: name.into(),
            shape,
            values: raw.clone(),
        });
        let x = pre.normalise_dense(&raw)?;
        model.x = Some(Tensor::from_data(TensorData::new(x, [rows, width]), device));
    }
    if !spec.embeddings.is_empty() {
        let e = spec.embeddings.len();
        model.categories = Some(Tensor::from_data(
            TensorData::new(categories.clone(), [rows, e]),
            device,
        ));
        onnx_inputs.push(TestTensor::I64 {
            name: inputs::CATEGORIES.into(),
            shape: vec![rows, e],
            values: categories,
        });
    }
    if seq > 0 {
        model.tokens = Some(Tensor::from_data(
            TensorData::new(tokens.clone(), [rows, windows * seq]),
            device,
        ));
        model.token_windows = windows;
        onnx_inputs.push(TestTensor::I64 {
            name: inputs::TOKENS.into(),
            shape: vec![rows, windows * seq],
            values: tokens,
        });
    }
    Ok((onnx_inputs, model))
}

/// kiln's outputs for `inputs`, named as the ONNX graph's outputs.
fn reference_outputs(
    model: &Network,
    pre: &Preprocessor,
    inputs: Inputs,
) -> Result<Vec<TestTensor>> {
    let out = model.forward(inputs);
    let [rows, width] = out.dims();
    let read = |t: Tensor<2>| {
        t.into_data()
            .try_to_vec::<f32>()
            .map_err(|e| KilnError::Invalid(format!("reading outputs: {e:?}")))
    };
    Ok(match &pre.target {
        TargetTransform::Classes { .. } => vec![
            TestTensor::F32 {
                name: outputs::LOGITS.into(),
                shape: vec![rows, width],
                values: read(out.clone())?,
            },
            TestTensor::F32 {
                name: outputs::PROBABILITIES.into(),
                shape: vec![rows, width],
                values: read(softmax(out, 1))?,
            },
        ],
        TargetTransform::Regression { .. } => vec![TestTensor::F32 {
            name: outputs::PREDICTION.into(),
            shape: vec![rows, 1],
            values: read(out)?.into_iter().map(|v| pre.denormalize(v)).collect(),
        }],
    })
}
