//! Training state as one safetensors file (no pickle): the weights under nanoGPT's state-dict names,
//! AdamW's moments as two flat tensors, and everything else (model args, iter_num, best_val_loss,
//! training config, RNG state) as JSON in the safetensors metadata under the key `pipe`.
//!
//! Bytes are deterministic: tensors are written in name order (safetensors sorts them) and the JSON
//! has a fixed field order, so the same state always hashes the same in the store.

use super::config::GptConfig;
use super::optim::{AdamW, AdamWConfig};
use super::params::ParamLayout;
use super::rng::Rng;
use anyhow::{Context, Result, bail, ensure};
use safetensors::{Dtype, SafeTensors, tensor::TensorView};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

pub const FORMAT: &str = "pipe-checkpoint-v1";
const M_NAME: &str = "optimizer.exp_avg";
const V_NAME: &str = "optimizer.exp_avg_sq";

/// Where training stands, beyond the weights.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainProgress {
    pub iter_num: u64,
    pub best_val_loss: f32,
    pub rng: Rng,
    pub adam_step: u64,
    pub adam: AdamWConfig,
    /// The training configuration that produced this state (informational, and checked on resume).
    pub train_config: serde_json::Value,
}

#[derive(Serialize, Deserialize)]
struct Meta {
    format: String,
    model_args: GptConfig,
    progress: Option<TrainProgress>,
}

/// A model, optionally with its optimiser state and training progress.
#[derive(Clone, Debug, PartialEq)]
pub struct Checkpoint {
    pub config: GptConfig,
    pub params: Vec<f32>,
    pub optimizer: Option<(Vec<f32>, Vec<f32>)>,
    pub progress: Option<TrainProgress>,
}

pub fn f32_bytes(x: &[f32]) -> Vec<u8> {
    x.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// Reads a tensor as f32 (F32, F16 and BF16 on disk are accepted: Hugging Face checkpoints use all three).
pub fn tensor_f32(view: &TensorView) -> Result<Vec<f32>> {
    let d = view.data();
    Ok(match view.dtype() {
        Dtype::F32 => d
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        Dtype::BF16 => d
            .chunks_exact(2)
            .map(|b| f32::from_bits((u16::from_le_bytes([b[0], b[1]]) as u32) << 16))
            .collect(),
        Dtype::F16 => d
            .chunks_exact(2)
            .map(|b| f16_to_f32(u16::from_le_bytes([b[0], b[1]])))
            .collect(),
        other => bail!("unsupported tensor dtype {other:?} (expected F32, F16 or BF16)"),
    })
}

fn f16_to_f32(h: u16) -> f32 {
    let sign = ((h >> 15) as u32) << 31;
    let exp = ((h >> 10) & 0x1f) as i32;
    let mant = (h & 0x3ff) as u32;
    let bits = match exp {
        0 if mant == 0 => sign,
        0 => {
            let magnitude = mant as f32 * 2f32.powi(-24);
            return if sign != 0 { -magnitude } else { magnitude };
        }
        31 => sign | 0x7f80_0000 | (mant << 13),
        e => sign | (((e - 15 + 127) as u32) << 23) | (mant << 13),
    };
    f32::from_bits(bits)
}

/// Serialises named f32 tensors plus string metadata to safetensors bytes. Keep `meta` to a single
/// key: safetensors writes a HashMap in its (random) iteration order, and stored bytes must be
/// deterministic.
pub fn write_safetensors(
    tensors: &[(String, Vec<usize>, Vec<u8>)],
    meta: HashMap<String, String>,
) -> Result<Vec<u8>> {
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .map(|(n, shape, bytes)| {
            Ok((
                n.clone(),
                TensorView::new(Dtype::F32, shape.clone(), bytes)?,
            ))
        })
        .collect::<Result<_, safetensors::SafeTensorError>>()?;
    Ok(safetensors::serialize(views, Some(meta))?)
}

impl Checkpoint {
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let layout = ParamLayout::new(&self.config);
        ensure!(
            self.params.len() == layout.total,
            "checkpoint params do not match the config"
        );
        let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = layout
            .tensors
            .iter()
            .map(|t| {
                (
                    t.name.clone(),
                    t.shape.clone(),
                    f32_bytes(&self.params[t.range.clone()]),
                )
            })
            .collect();
        if let Some((m, v)) = &self.optimizer {
            tensors.push((M_NAME.into(), vec![m.len()], f32_bytes(m)));
            tensors.push((V_NAME.into(), vec![v.len()], f32_bytes(v)));
        }
        let meta = Meta {
            format: FORMAT.into(),
            model_args: self.config.clone(),
            progress: self.progress.clone(),
        };
        let mut info = HashMap::new();
        info.insert("pipe".to_string(), serde_json::to_string(&meta)?);
        write_safetensors(&tensors, info)
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let st = SafeTensors::deserialize(bytes).context("not a safetensors file")?;
        let (_, header) = SafeTensors::read_metadata(bytes)?;
        let meta_json = header
            .metadata()
            .as_ref()
            .and_then(|m| m.get("pipe"))
            .context("safetensors file has no `pipe` metadata: not a pipe checkpoint")?;
        let meta: Meta = serde_json::from_str(meta_json).context("reading checkpoint metadata")?;
        ensure!(
            meta.format == FORMAT,
            "checkpoint format {:?} is not supported (expected {FORMAT})",
            meta.format
        );
        let layout = ParamLayout::new(&meta.model_args);
        let mut params = vec![0.0f32; layout.total];
        for t in &layout.tensors {
            let view = st
                .tensor(&t.name)
                .with_context(|| format!("checkpoint lacks tensor {}", t.name))?;
            ensure!(
                view.shape() == t.shape.as_slice(),
                "tensor {} has shape {:?}, expected {:?}",
                t.name,
                view.shape(),
                t.shape
            );
            params[t.range.clone()].copy_from_slice(&tensor_f32(&view)?);
        }
        let optimizer = match (st.tensor(M_NAME), st.tensor(V_NAME)) {
            (Ok(m), Ok(v)) => Some((tensor_f32(&m)?, tensor_f32(&v)?)),
            _ => None,
        };
        Ok(Checkpoint {
            config: meta.model_args,
            params,
            optimizer,
            progress: meta.progress,
        })
    }

    /// Rebuilds the optimiser saved in this checkpoint (fresh moments if there are none).
    pub fn restore_optimizer(&self, cfg: AdamWConfig) -> AdamW {
        let layout = ParamLayout::new(&self.config);
        let mut opt = AdamW::new(cfg, &layout);
        if let (Some((m, v)), Some(p)) = (&self.optimizer, &self.progress) {
            opt.m.clone_from(m);
            opt.v.clone_from(v);
            opt.step = p.adam_step;
        }
        opt
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f16_decoding() {
        assert_eq!(f16_to_f32(0x3c00), 1.0);
        assert_eq!(f16_to_f32(0xc000), -2.0);
        assert_eq!(f16_to_f32(0x0000), 0.0);
        assert!((f16_to_f32(0x0001) - 5.96e-8).abs() < 1e-9);
    }
}
