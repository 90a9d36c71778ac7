//! Hugging Face GPT-2 folders (config.json + model.safetensors) in and out.
//!
//! Differences handled here: HF's Conv1D stores weights as (in, out), the transpose of our Linear
//! (out, in); names may or may not carry a `transformer.` prefix; `lm_head.weight` is tied and absent;
//! GPT-2 uses the tanh GELU ("gelu_new") and always has biases.

use super::checkpoint::{f32_bytes, tensor_f32, write_safetensors};
use super::config::{Gelu, GptConfig};
use super::device::Device;
use super::memory::{Work, check_host};
use super::model::Gpt;
use super::params::ParamLayout;
use anyhow::{Context, Result, bail, ensure};
use safetensors::SafeTensors;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::path::Path;

/// Tensors stored transposed by HF's Conv1D.
fn is_conv1d(name: &str) -> bool {
    [
        "attn.c_attn.weight",
        "attn.c_proj.weight",
        "mlp.c_fc.weight",
        "mlp.c_proj.weight",
    ]
    .iter()
    .any(|s| name.ends_with(s))
}

/// Reads our config from a GPT-2 config.json.
pub fn config_from_hf(v: &Value, path: &Path) -> Result<GptConfig> {
    let get = |k: &str| {
        v.get(k)
            .and_then(Value::as_u64)
            .map(|x| x as usize)
            .with_context(|| format!("{}: missing integer field `{k}`", path.display()))
    };
    let gelu = match v
        .get("activation_function")
        .and_then(Value::as_str)
        .unwrap_or("gelu_new")
    {
        "gelu_new" | "gelu_pytorch_tanh" => Gelu::Tanh,
        "gelu" => Gelu::Erf,
        other => bail!(
            "{}: activation_function {other:?} is not supported (expected gelu_new or gelu)",
            path.display()
        ),
    };
    let n_embd = get("n_embd")?;
    if let Some(inner) = v.get("n_inner").and_then(Value::as_u64) {
        ensure!(
            inner as usize == 4 * n_embd,
            "{}: n_inner {inner} is not 4 * n_embd, which this engine requires",
            path.display()
        );
    }
    let eps = v
        .get("layer_norm_epsilon")
        .and_then(Value::as_f64)
        .unwrap_or(1e-5);
    ensure!(
        (eps - 1e-5).abs() < 1e-12,
        "{}: layer_norm_epsilon {eps} is not 1e-5, which this engine requires",
        path.display()
    );
    Ok(GptConfig {
        n_layer: get("n_layer")?,
        n_head: get("n_head")?,
        n_embd,
        block_size: get("n_positions")?,
        vocab_size: get("vocab_size")?,
        bias: true,
        dropout: 0.0,
        gelu,
    })
}

/// Loads a Hugging Face GPT-2 folder as a model.
pub fn load_hf_dir(dir: &Path) -> Result<Gpt> {
    let cfg_path = dir.join("config.json");
    let text = std::fs::read_to_string(&cfg_path)
        .with_context(|| format!("reading {}", cfg_path.display()))?;
    let v: Value = serde_json::from_str(&text)
        .with_context(|| format!("{} is not valid JSON", cfg_path.display()))?;
    let config = config_from_hf(&v, &cfg_path)?;
    check_host(&config, Work::Load, Device::Cpu)?;
    let st_path = dir.join("model.safetensors");
    let bytes = std::fs::read(&st_path).with_context(|| {
        format!(
            "reading {} (only safetensors weights are supported, not pytorch_model.bin)",
            st_path.display()
        )
    })?;
    let st = SafeTensors::deserialize(&bytes)
        .with_context(|| format!("{} is not a valid safetensors file", st_path.display()))?;
    let layout = ParamLayout::new(&config);
    let mut params = vec![0.0f32; layout.total];
    for t in &layout.tensors {
        let short = t.name.trim_start_matches("transformer.");
        let view = st
            .tensor(short)
            .or_else(|_| st.tensor(&t.name))
            .with_context(|| format!("{}: missing tensor {short}", st_path.display()))?;
        let data = tensor_f32(&view)?;
        let dst = &mut params[t.range.clone()];
        if is_conv1d(short) {
            let (out, inp) = (t.shape[0], t.shape[1]);
            ensure!(
                view.shape() == [inp, out],
                "{}: {short} has shape {:?}, expected {:?}",
                st_path.display(),
                view.shape(),
                [inp, out]
            );
            for i in 0..inp {
                for o in 0..out {
                    dst[o * inp + i] = data[i * out + o];
                }
            }
        } else {
            ensure!(
                view.shape() == t.shape.as_slice(),
                "{}: {short} has shape {:?}, expected {:?}",
                st_path.display(),
                view.shape(),
                t.shape
            );
            dst.copy_from_slice(&data);
        }
    }
    Gpt::from_params(config, params)
}

/// nanoGPT's `crop_block_size`: keep the first `block_size` position embeddings.
pub fn crop_block_size(model: Gpt, block_size: usize) -> Result<Gpt> {
    let cfg = &model.config;
    ensure!(
        block_size <= cfg.block_size,
        "block_size {block_size} is larger than the model's {}: it can only be cropped",
        cfg.block_size
    );
    if block_size == cfg.block_size {
        return Ok(model);
    }
    let mut new_cfg = cfg.clone();
    new_cfg.block_size = block_size;
    let new_layout = ParamLayout::new(&new_cfg);
    let mut params = vec![0.0f32; new_layout.total];
    for t in &new_layout.tensors {
        let old = model.layout.get(&t.name).expect("same tensor names");
        params[t.range.clone()]
            .copy_from_slice(&model.params[old.range.start..old.range.start + t.range.len()]);
    }
    Gpt::from_params(new_cfg, params)
}

/// Writes a folder that `transformers.GPT2LMHeadModel.from_pretrained` loads. Models without biases
/// get zero biases (the same function).
pub fn export_hf_dir(model: &Gpt, dir: &Path) -> Result<()> {
    let (config_json, weights) = export_hf_bytes(model)?;
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("config.json"), config_json)?;
    std::fs::write(dir.join("model.safetensors"), weights)?;
    Ok(())
}

/// The two files of an HF export, as bytes: (config.json, model.safetensors).
pub fn export_hf_bytes(model: &Gpt) -> Result<(Vec<u8>, Vec<u8>)> {
    let cfg = &model.config;
    let c = cfg.n_embd;
    let with_bias = GptConfig {
        bias: true,
        ..cfg.clone()
    };
    let full = ParamLayout::new(&with_bias);
    let mut tensors = Vec::new();
    for t in &full.tensors {
        let short = t.name.trim_start_matches("transformer.").to_string();
        let data: Vec<f32> = match model.layout.get(&t.name) {
            Some(ours) => model.params[ours.range.clone()].to_vec(),
            None => vec![0.0; t.range.len()], // a bias the model does not have
        };
        if is_conv1d(&short) {
            let (out, inp) = (t.shape[0], t.shape[1]);
            let mut tr = vec![0.0f32; data.len()];
            for o in 0..out {
                for i in 0..inp {
                    tr[i * out + o] = data[o * inp + i];
                }
            }
            tensors.push((short, vec![inp, out], f32_bytes(&tr)));
        } else {
            tensors.push((short, t.shape.clone(), f32_bytes(&data)));
        }
    }
    let mut meta = HashMap::new();
    meta.insert("format".to_string(), "pt".to_string());
    let weights = write_safetensors(&tensors, meta)?;
    let config = json!({
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "activation_function": match cfg.gelu { Gelu::Tanh => "gelu_new", Gelu::Erf => "gelu" },
        "n_layer": cfg.n_layer,
        "n_head": cfg.n_head,
        "n_embd": c,
        "n_positions": cfg.block_size,
        "n_ctx": cfg.block_size,
        "vocab_size": cfg.vocab_size,
        "layer_norm_epsilon": 1e-5,
        "initializer_range": 0.02,
        "attn_pdrop": cfg.dropout,
        "embd_pdrop": cfg.dropout,
        "resid_pdrop": cfg.dropout,
        "tie_word_embeddings": true,
        "bos_token_id": 50256,
        "eos_token_id": 50256,
        "torch_dtype": "float32",
    });
    Ok((serde_json::to_vec_pretty(&config)?, weights))
}
