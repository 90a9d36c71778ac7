//! Hugging Face GPT-2 folders (config.json + model.safetensors) in and out.
//!
//! Differences handled here: HF's Conv1D stores weights as (in, out), the transpose of our Linear
//! (out, in); names may or may not carry a `transformer.` prefix; `lm_head.weight` is tied and absent;
//! GPT-2 uses the tanh GELU ("gelu_new") and always has biases.

use super::checkpoint::{
    TensorSpec, decode_in_pieces, f32_as_bytes, f32_view, tensor_f32, write_safetensors,
};
use super::config::{Gelu, GptConfig};
use super::device::{Device, check_host};
use super::memory::Work;
use super::model::Gpt;
use super::params::ParamLayout;
use anyhow::{Context, Result, bail, ensure};
use safetensors::{Dtype, SafeTensors};
use serde_json::{Value, json};
use std::borrow::Cow;
use std::collections::HashMap;
use std::io::Write;
use std::ops::Range;
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
    load_hf(dir, None, None)
}

/// Loads a Hugging Face GPT-2 folder as a model, cropped to `block_size` (nanoGPT's
/// `crop_block_size`) while it is read. model.safetensors is memory-mapped and each tensor is
/// copied (transposed for Conv1D) straight into the model's parameter buffer, its mapped pages
/// dropped once read, so memory holds the model once. With `expect_blake3`, the file's content
/// must still hash to what the stage key was computed from.
pub fn load_hf(dir: &Path, block_size: Option<usize>, expect_blake3: Option<&str>) -> Result<Gpt> {
    let cfg_path = dir.join("config.json");
    let text = std::fs::read_to_string(&cfg_path)
        .with_context(|| format!("reading {}", cfg_path.display()))?;
    let v: Value = serde_json::from_str(&text)
        .with_context(|| format!("{} is not valid JSON", cfg_path.display()))?;
    let full = config_from_hf(&v, &cfg_path)?;
    let mut config = full.clone();
    if let Some(bs) = block_size {
        ensure!(
            bs <= full.block_size,
            "block_size {bs} is larger than the model's {}: it can only be cropped",
            full.block_size
        );
        config.block_size = bs;
    }
    config.validate()?;
    check_host(&config, Work::Load, Device::Cpu)?;
    let st_path = dir.join("model.safetensors");
    let file = std::fs::File::open(&st_path).with_context(|| {
        format!(
            "reading {} (only safetensors weights are supported, not pytorch_model.bin)",
            st_path.display()
        )
    })?;
    // SAFETY: the map is only read. A file truncated by another process while it is read would
    // make reads fault; Hugging Face caches replace files rather than rewrite them in place.
    let map = unsafe { memmap2::Mmap::map(&file) }
        .with_context(|| format!("mapping {}", st_path.display()))?;
    let release = |r: Range<usize>| {
        // SAFETY: a read-only shared file map: dropped pages are read back from the file.
        let _ = unsafe {
            map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, r.start, r.len())
        };
    };
    let mut release_bytes = |b: &[u8]| {
        let start = b.as_ptr() as usize - map.as_ptr() as usize;
        release(start..start + b.len());
    };
    if let Some(want) = expect_blake3 {
        let mut h = blake3::Hasher::new();
        for start in (0..map.len()).step_by(HASH_WINDOW) {
            let r = start..(start + HASH_WINDOW).min(map.len());
            h.update_rayon(&map[r.clone()]);
            release(r);
        }
        let got = h.finalize().to_hex();
        ensure!(
            got.as_str() == want,
            "{} changed since this stage's key was computed (its content hash is now {}): run again",
            st_path.display(),
            &got.as_str()[..12]
        );
    }
    let st = SafeTensors::deserialize(&map)
        .with_context(|| format!("{} is not a valid safetensors file", st_path.display()))?;
    let layout = ParamLayout::new(&config);
    let mut params = vec![0.0f32; layout.total];
    for t in &layout.tensors {
        let short = t.name.trim_start_matches("transformer.");
        let view = st
            .tensor(short)
            .or_else(|_| st.tensor(&t.name))
            .with_context(|| format!("{}: missing tensor {short}", st_path.display()))?;
        let dst = &mut params[t.range.clone()];
        let bad_shape = |want: &[usize]| {
            anyhow::anyhow!(
                "{}: {short} has shape {:?}, expected {want:?}",
                st_path.display(),
                view.shape(),
            )
        };
        if is_conv1d(short) {
            let (out, inp) = (t.shape[0], t.shape[1]);
            if view.shape() != [inp, out] {
                return Err(bad_shape(&[inp, out]));
            }
            let data: Cow<[f32]> = match view.dtype() {
                Dtype::F32 => match f32_view(view.data()) {
                    Some(x) => Cow::Borrowed(x),
                    None => Cow::Owned(tensor_f32(&view)?),
                },
                _ => Cow::Owned(tensor_f32(&view)?),
            };
            for i in 0..inp {
                for o in 0..out {
                    dst[o * inp + i] = data[i * out + o];
                }
            }
        } else if t.name == "transformer.wpe.weight" {
            // Cropped: the first block_size positions.
            let want = [full.block_size, config.n_embd];
            if view.shape() != want {
                return Err(bad_shape(&want));
            }
            let bytes = view.data().len() / (want[0] * want[1]) * dst.len();
            decode_in_pieces(view.dtype(), &view.data()[..bytes], dst, &mut release_bytes)?;
        } else {
            if view.shape() != t.shape.as_slice() {
                return Err(bad_shape(&t.shape));
            }
            decode_in_pieces(view.dtype(), view.data(), dst, &mut release_bytes)?;
        }
        release_bytes(view.data());
    }
    Gpt::from_params(config, params)
}

/// blake3 goes over a mapped file in windows this large, dropping each one's pages after.
const HASH_WINDOW: usize = 16 << 20;

/// nanoGPT's `crop_block_size`: keep the first `block_size` position embeddings. The parameter
/// buffer is shifted in place (every tensor moves towards the start), not copied.
pub fn crop_block_size(mut model: Gpt, block_size: usize) -> Result<Gpt> {
    let cfg = model.config.clone();
    ensure!(
        block_size <= cfg.block_size,
        "block_size {block_size} is larger than the model's {}: it can only be cropped",
        cfg.block_size
    );
    if block_size == cfg.block_size {
        return Ok(model);
    }
    let mut new_cfg = cfg;
    new_cfg.block_size = block_size;
    let new_layout = ParamLayout::new(&new_cfg);
    let mut params = std::mem::take(&mut model.params);
    // Each tensor starts at or before where it was, and tensors are moved in order, so a move
    // never overwrites bytes still to be moved.
    for t in &new_layout.tensors {
        let old = model.layout.get(&t.name).expect("same tensor names");
        debug_assert!(t.range.start <= old.range.start);
        params.copy_within(
            old.range.start..old.range.start + t.range.len(),
            t.range.start,
        );
    }
    params.truncate(new_layout.total);
    params.shrink_to_fit();
    drop(model);
    Gpt::from_params(new_cfg, params)
}

/// An HF export's model.safetensors, streamed to `w` one tensor at a time: a Conv1D weight is
/// transposed through a buffer of its own size, everything else is written from `params` as it is.
pub fn write_hf_safetensors(cfg: &GptConfig, params: &[f32], w: &mut dyn Write) -> Result<u64> {
    let ours = ParamLayout::new(cfg);
    ensure!(
        params.len() == ours.total,
        "parameter count {} does not match the config ({})",
        params.len(),
        ours.total
    );
    let with_bias = GptConfig {
        bias: true,
        ..cfg.clone()
    };
    let full = ParamLayout::new(&with_bias);
    let specs: Vec<TensorSpec> = full
        .tensors
        .iter()
        .map(|t| {
            let short = t.name.trim_start_matches("transformer.").to_string();
            let shape = if is_conv1d(&short) {
                vec![t.shape[1], t.shape[0]]
            } else {
                t.shape.clone()
            };
            TensorSpec { name: short, shape }
        })
        .collect();
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    write_safetensors(w, &specs, meta, &mut |i, w| {
        let t = &full.tensors[i];
        match ours.get(&t.name) {
            // A bias the model does not have: zeros.
            None => w.write_all(&vec![0u8; t.range.len() * 4])?,
            Some(o) if is_conv1d(&specs[i].name) => {
                let data = &params[o.range.clone()];
                let (out, inp) = (t.shape[0], t.shape[1]);
                let mut tr = vec![0.0f32; data.len()];
                for o in 0..out {
                    for i in 0..inp {
                        tr[i * out + o] = data[o * inp + i];
                    }
                }
                w.write_all(f32_as_bytes(&tr))?
            }
            Some(o) => w.write_all(f32_as_bytes(&params[o.range.clone()]))?,
        }
        Ok(())
    })
}

/// An HF export's config.json.
pub fn hf_config_json(cfg: &GptConfig) -> Result<Vec<u8>> {
    let config = json!({
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "activation_function": match cfg.gelu { Gelu::Tanh => "gelu_new", Gelu::Erf => "gelu" },
        "n_layer": cfg.n_layer,
        "n_head": cfg.n_head,
        "n_embd": cfg.n_embd,
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
    Ok(serde_json::to_vec_pretty(&config)?)
}
