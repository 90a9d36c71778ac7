//! Reading nanoGPT's `ckpt.pt` (a `torch.save` of train.py's checkpoint dict) with the
//! `pytorch-reader` crate, which parses the pickle and reads each tensor's bytes only when asked.
//!
//! [`NanoCheckpoint::write_pipe`] turns it into a pipe checkpoint tensor by tensor: each torch
//! tensor is read, decoded to f32 and written on, so memory holds one tensor at a time, never the
//! model. AdamW's per-parameter moments are laid end to end in pipe's parameter order; nanoGPT's
//! optimizer numbers its parameters decay group first (tensors of 2+ dimensions), then the rest,
//! each group in `named_parameters()` order, which is pipe's layout order.

use super::super::checkpoint::{META_KEY, TensorSpec, TrainProgress, write_safetensors};
use super::super::config::{Gelu, GptConfig};
use super::super::optim::AdamWConfig;
use super::super::params::{ParamLayout, Tensor as Param};
use super::super::rng::Rng;
use anyhow::{Context, Result, bail, ensure};
use pytorch_reader::{DType, PickleValue, PytorchError, PytorchReader, Tensor};
use safetensors::Dtype;
use serde_json::{Map, Value, json};
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

/// torch.compile wraps the model, and its state dict's keys gain this prefix (nanoGPT #325).
const COMPILED_PREFIX: &str = "_orig_mod.";

/// AdamW's state in a nanoGPT checkpoint: the step and hyper-parameters of its param groups.
#[derive(Clone, Debug)]
pub struct NanoOptimizer {
    pub step: u64,
    pub adam: AdamWConfig,
    /// Per parameter of pipe's layout (in its order): its index in the optimizer state.
    index: Vec<usize>,
}

/// A nanoGPT checkpoint, opened: its model args and progress known, its tensors not yet read.
pub struct NanoCheckpoint {
    pub path: PathBuf,
    pub config: GptConfig,
    pub iter_num: Option<u64>,
    pub best_val_loss: Option<f32>,
    /// train.py's globals as saved (`config`), as JSON; `Null` when absent.
    pub train_config: Value,
    pub optimizer: Option<NanoOptimizer>,
    /// `model.` plus `_orig_mod.` for a compiled model: where the state dict's keys start.
    model_prefix: String,
    tensors: HashMap<String, Tensor>,
}

/// The file itself when `path` is a file, else `path/ckpt.pt` (an `out_dir`).
pub fn find_ckpt(path: &Path) -> Result<PathBuf> {
    if path.is_dir() {
        let f = path.join("ckpt.pt");
        ensure!(
            f.is_file(),
            "{} is a folder without a ckpt.pt: give nanoGPT's out_dir or the ckpt.pt file itself",
            path.display()
        );
        return Ok(f);
    }
    ensure!(path.exists(), "{} does not exist", path.display());
    // stat does not block, unlike opening a FIFO.
    ensure!(
        path.is_file(),
        "{} is not a regular file (a FIFO, device or socket)",
        path.display()
    );
    Ok(path.to_path_buf())
}

/// A JSON view of a pickled value (tensors and other objects become their type's name).
fn to_json(v: &PickleValue) -> Value {
    match v {
        PickleValue::None => Value::Null,
        PickleValue::Bool(b) => json!(b),
        PickleValue::Int(i) => json!(i),
        PickleValue::Float(f) => json!(f),
        PickleValue::String(s) => json!(s),
        PickleValue::List(l) => Value::Array(l.iter().map(to_json).collect()),
        PickleValue::Dict(d) => {
            let mut keys: Vec<&String> = d.keys().collect();
            keys.sort();
            Value::Object(
                keys.into_iter()
                    .map(|k| (k.clone(), to_json(&d[k])))
                    .collect(),
            )
        }
        PickleValue::Bytes(_) => json!("<bytes>"),
        PickleValue::Unsupported(t) => json!(format!("<{t}>")),
    }
}

/// A field of `model_args`, as the type `T`.
fn arg<T: serde::de::DeserializeOwned>(args: &Map<String, Value>, k: &str) -> Result<T> {
    let v = args
        .get(k)
        .with_context(|| format!("`model_args` has no `{k}`"))?;
    serde_json::from_value(v.clone())
        .with_context(|| format!("`model_args.{k}` is {v}, which does not fit"))
}

impl NanoCheckpoint {
    /// Opens `path` (a ckpt.pt, or an out_dir holding one). Every error names the file.
    pub fn open(path: &Path) -> Result<Self> {
        let file = find_ckpt(path)?;
        Self::open_file(&file).with_context(|| format!("nanoGPT checkpoint {}", file.display()))
    }

    fn open_file(file: &Path) -> Result<Self> {
        let hint = "expected a ckpt.pt that nanoGPT's train.py saved (torch.save of a dict with `model` and `model_args`)";
        let unreadable = |e: PytorchError| match e {
            PytorchError::Zip(z) => anyhow::anyhow!(
                "cannot be read as a PyTorch file: a damaged or truncated zip archive ({z}); copy or save it again"
            ),
            e => anyhow::anyhow!("cannot be read as a PyTorch file ({e}); {hint}"),
        };
        let reader = PytorchReader::new(file).map_err(unreadable)?;
        let root = PytorchReader::read_pickle_data(file, None).map_err(unreadable)?;
        let PickleValue::Dict(root) = root else {
            bail!("holds no dict at its top; {hint}");
        };
        let Some(PickleValue::Dict(model)) = root.get("model") else {
            bail!("has no `model` state dict; {hint}");
        };
        let model_prefix = if model.keys().any(|k| k.starts_with(COMPILED_PREFIX)) {
            format!("model.{COMPILED_PREFIX}")
        } else {
            "model.".to_string()
        };
        let args = match root.get("model_args").map(to_json) {
            Some(Value::Object(a)) => a,
            _ => bail!("has no `model_args` dict; {hint}"),
        };
        let dropout: f64 = arg(&args, "dropout").unwrap_or(0.0);
        let config = GptConfig {
            n_layer: arg(&args, "n_layer")?,
            n_head: arg(&args, "n_head")?,
            n_embd: arg(&args, "n_embd")?,
            block_size: arg(&args, "block_size")?,
            vocab_size: arg(&args, "vocab_size")?,
            bias: arg(&args, "bias")?,
            dropout: dropout as f32,
            gelu: Gelu::Erf, // nanoGPT's nn.GELU()
        };
        config
            .validate()
            .with_context(|| format!("`model_args` {}", Value::Object(args.clone())))?;
        let tensors = reader.into_tensors();
        let iter_num = match root.get("iter_num") {
            None => None,
            Some(PickleValue::Int(i)) if *i >= 0 => Some(*i as u64),
            Some(v) => bail!(
                "`iter_num` is {}, expected a non-negative integer",
                to_json(v)
            ),
        };
        // estimate_loss returns a 0-d tensor, so a saved best_val_loss is usually one.
        let best_val_loss = match root.get("best_val_loss") {
            None => None,
            Some(PickleValue::Float(f)) => Some(*f as f32),
            Some(PickleValue::Int(i)) => Some(*i as f32),
            Some(PickleValue::Unsupported(_)) => {
                let t = tensors
                    .get("best_val_loss")
                    .context("`best_val_loss` is neither a number nor a tensor")?;
                Some(scalar(t)? as f32)
            }
            Some(v) => bail!("`best_val_loss` is {}, expected a number", to_json(v)),
        };
        let train_config = root.get("config").map(to_json).unwrap_or(Value::Null);
        let mut ck = NanoCheckpoint {
            path: file.to_path_buf(),
            config,
            iter_num,
            best_val_loss,
            train_config,
            optimizer: None,
            model_prefix,
            tensors,
        };
        ck.check_state_dict()?;
        if let Some(opt) = root.get("optimizer") {
            ck.optimizer = Some(ck.read_optimizer(opt)?);
        }
        Ok(ck)
    }

    fn model_tensor(&self, name: &str) -> Option<&Tensor> {
        self.tensors.get(&format!("{}{name}", self.model_prefix))
    }

    /// Every parameter `model_args` implies is there with its shape, and nothing else is, but the
    /// tied `lm_head.weight` and the causal-mask buffers (`attn.bias`, nanoGPT without flash).
    fn check_state_dict(&self) -> Result<()> {
        let layout = ParamLayout::new(&self.config);
        let args = "model_args' (n_layer, n_head, n_embd, block_size, bias, vocab_size)";
        for t in &layout.tensors {
            let Some(x) = self.model_tensor(&t.name) else {
                bail!("the state dict has no `{}`, which {args} imply", t.name);
            };
            ensure!(
                x.shape() == t.shape.as_slice(),
                "state-dict tensor `{}` has shape {:?}, but {args} give {:?}",
                t.name,
                x.shape(),
                t.shape
            );
            dtype(x)?;
        }
        let extra: Vec<&str> = self
            .tensors
            .keys()
            .filter_map(|k| k.strip_prefix(&self.model_prefix))
            .filter(|k| {
                layout.get(k).is_none() && *k != "lm_head.weight" && !is_mask_buffer(k, &layout)
            })
            .collect();
        ensure!(
            extra.is_empty(),
            "the state dict has tensors that {args} do not account for: {}",
            extra.join(", ")
        );
        Ok(())
    }

    fn read_optimizer(&self, opt: &PickleValue) -> Result<NanoOptimizer> {
        let opt = to_json(opt);
        let groups = opt["param_groups"]
            .as_array()
            .context("`optimizer` has no `param_groups` list: not an AdamW state dict")?;
        ensure!(
            groups.len() == 2,
            "`optimizer` has {} param groups; nanoGPT's configure_optimizers makes 2 (decay, no decay)",
            groups.len()
        );
        let layout = ParamLayout::new(&self.config);
        let decay: Vec<&Param> = layout.tensors.iter().filter(|t| t.decays()).collect();
        let no_decay: Vec<&Param> = layout.tensors.iter().filter(|t| !t.decays()).collect();
        for (g, want) in groups.iter().zip([decay.len(), no_decay.len()]) {
            let n = g["params"].as_array().map_or(0, |p| p.len());
            ensure!(
                n == want,
                "an optimizer param group has {n} parameters where the model has {want}: not the optimizer of this model"
            );
        }
        let f = |k: &str| {
            groups[0][k]
                .as_f64()
                .with_context(|| format!("`optimizer.param_groups[0].{k}` is not a number"))
        };
        let betas = groups[0]["betas"]
            .as_array()
            .and_then(|b| Some((b.first()?.as_f64()?, b.get(1)?.as_f64()?)))
            .context("`optimizer.param_groups[0].betas` is not two numbers")?;
        let adam = AdamWConfig {
            beta1: betas.0,
            beta2: betas.1,
            eps: f("eps")?,
            weight_decay: f("weight_decay")?,
        };
        // The optimizer's numbering: decay group then no-decay group, by layout order within each.
        let mut order: Vec<usize> = Vec::new();
        let (mut d, mut nd) = (0, decay.len());
        for t in &layout.tensors {
            if t.decays() {
                order.push(d);
                d += 1;
            } else {
                order.push(nd);
                nd += 1;
            }
        }
        // Every parameter has moments and the same step (one optimizer.step() moves them all).
        let mut step = None;
        for (t, i) in layout.tensors.iter().zip(&order) {
            for m in ["exp_avg", "exp_avg_sq"] {
                let name = format!("optimizer.state.{i}.{m}");
                let x = self.tensors.get(&name).with_context(|| {
                    format!("`{name}` is missing: the optimizer state lacks `{}`'s moments (an AdamW that never stepped?)", t.name)
                })?;
                ensure!(
                    x.shape() == t.shape.as_slice(),
                    "`{name}` has shape {:?}, but `{}` is {:?}",
                    x.shape(),
                    t.name,
                    t.shape
                );
                dtype(x)?;
            }
            let s = match self.tensors.get(&format!("optimizer.state.{i}.step")) {
                Some(x) => scalar(x)?,
                None => opt["state"][i.to_string()]["step"]
                    .as_f64()
                    .context("an optimizer state has no `step`")?,
            };
            ensure!(
                s >= 0.0 && s.fract() == 0.0,
                "optimizer step {s} is not a count"
            );
            ensure!(
                step.is_none_or(|p| p == s as u64),
                "the parameters' optimizer steps differ ({} and {s}): not one AdamW",
                step.unwrap_or(0)
            );
            step = Some(s as u64);
        }
        Ok(NanoOptimizer {
            step: step.unwrap_or(0),
            adam,
            index: order,
        })
    }

    /// The training progress a pipe checkpoint records for this one, when it has an optimizer
    /// (a train stage then continues it as `train.py --init_from=resume` does). The RNG is new:
    /// nanoGPT does not save its generator, so batches after the resume are pipe's own.
    pub fn progress(&self) -> Option<TrainProgress> {
        let opt = self.optimizer.as_ref()?;
        let seed = self.train_config["seed"].as_u64().unwrap_or(1337);
        let iter_num = self.iter_num.unwrap_or(0);
        Some(TrainProgress {
            iter_num,
            best_val_loss: self.best_val_loss.unwrap_or(1e9),
            rng: Rng::new(seed ^ iter_num),
            adam_step: opt.step,
            adam: opt.adam.clone(),
            train_config: json!({ "nanogpt": self.train_config }),
        })
    }

    /// Writes this checkpoint as a pipe checkpoint (with AdamW's moments and progress when it has
    /// an optimizer) to `w`, one tensor at a time. `dropout` overrides the saved one.
    pub fn write_pipe(&self, dropout: Option<f32>, w: &mut dyn Write) -> Result<GptConfig> {
        let mut config = self.config.clone();
        if let Some(d) = dropout {
            config.dropout = d;
        }
        let layout = ParamLayout::new(&config);
        let mut specs: Vec<TensorSpec> = layout
            .tensors
            .iter()
            .map(|t| TensorSpec {
                name: t.name.clone(),
                shape: t.shape.clone(),
            })
            .collect();
        let progress = self.progress();
        if progress.is_some() {
            for name in super::super::checkpoint::MOMENT_NAMES {
                specs.push(TensorSpec {
                    name: name.into(),
                    shape: vec![layout.total],
                });
            }
        }
        let n_params = layout.tensors.len();
        let info = super::super::checkpoint::meta_json(&config, progress.as_ref())?;
        let meta = HashMap::from([(META_KEY.to_string(), info)]);
        write_safetensors(w, &specs, meta, &mut |i, w| {
            if i < n_params {
                let t = self.model_tensor(&layout.tensors[i].name).expect("checked");
                return write_f32(t, w);
            }
            // A moment: each parameter's, in layout order.
            let m = ["exp_avg", "exp_avg_sq"][i - n_params];
            let opt = self
                .optimizer
                .as_ref()
                .expect("progress implies an optimizer");
            for idx in &opt.index {
                let name = format!("optimizer.state.{idx}.{m}");
                write_f32(&self.tensors[&name], w)?;
            }
            Ok(())
        })
        .with_context(|| format!("nanoGPT checkpoint {}", self.path.display()))?;
        Ok(config)
    }
}

/// `transformer.h.L.attn.bias`: the causal mask nanoGPT registers when flash attention is missing.
fn is_mask_buffer(name: &str, layout: &ParamLayout) -> bool {
    (0..layout.blocks.len()).any(|l| name == format!("transformer.h.{l}.attn.bias"))
}

/// The safetensors dtype a float tensor decodes from; anything else is refused.
fn dtype(t: &Tensor) -> Result<Dtype> {
    Ok(match t.dtype() {
        DType::F32 => Dtype::F32,
        DType::BF16 => Dtype::BF16,
        DType::F16 => Dtype::F16,
        other => bail!(
            "tensor `{}` is {other:?}; weights and moments must be float32, bfloat16 or float16",
            t.name
        ),
    })
}

/// A tensor's bytes as little-endian f32, written to `w`.
fn write_f32(t: &Tensor, w: &mut dyn Write) -> Result<()> {
    let bytes = t.read().with_context(|| format!("reading `{}`", t.name))?;
    let dt = dtype(t)?;
    if dt == Dtype::F32 {
        w.write_all(&bytes)?;
        return Ok(());
    }
    let mut out = vec![0.0f32; t.num_elements()];
    super::super::checkpoint::decode_f32(dt, &bytes, &mut out)?;
    w.write_all(super::super::checkpoint::f32_as_bytes(&out))?;
    Ok(())
}

/// A one-element tensor's value (torch saves `step` and a loss as 0-d tensors).
fn scalar(t: &Tensor) -> Result<f64> {
    ensure!(
        t.num_elements() == 1,
        "`{}` should hold one number, it has shape {:?}",
        t.name,
        t.shape()
    );
    let b = t.read().with_context(|| format!("reading `{}`", t.name))?;
    Ok(match t.dtype() {
        DType::F64 => f64::from_le_bytes(b[..8].try_into()?),
        DType::I64 => i64::from_le_bytes(b[..8].try_into()?) as f64,
        DType::F32 | DType::BF16 | DType::F16 => {
            let mut x = [0.0f32];
            super::super::checkpoint::decode_f32(dtype(t)?, &b, &mut x)?;
            x[0] as f64
        }
        other => bail!("`{}` is {other:?}, expected a number", t.name),
    })
}
