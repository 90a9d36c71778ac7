//! nanoGPT's files, in and out: its `ckpt.pt` ([`read`], [`write`]) and the globals of its
//! train.py ([`TRAIN_PY_DEFAULTS`]), which its configs override and its checkpoints save as
//! `config`.
//!
//! pipe's parameter names and order are nanoGPT's state-dict names and `named_parameters()` order
//! (see [`super::params`]), so the mapping is one to one; what differs is the container (torch's
//! zip of pickles, here written by hand in [`pickle`]) and how AdamW's state is numbered.

pub mod pickle;
pub mod read;
pub mod write;

use super::checkpoint::CheckpointFile;
use pickle::Py;
use serde_json::Value;

pub use read::NanoCheckpoint;
pub use write::{ExportNames, meta_pkl, write_ckpt_pt};

/// train.py's globals and their defaults, in train.py's order (the `config` dict it saves holds
/// these keys). `dtype`'s default depends on the GPU there; here it is `bfloat16`.
pub fn train_py_defaults() -> Vec<(&'static str, Py)> {
    use Py::{Bool, Float, Int};
    let s = Py::str;
    vec![
        ("out_dir", s("out")),
        ("eval_interval", Int(2000)),
        ("log_interval", Int(1)),
        ("eval_iters", Int(200)),
        ("eval_only", Bool(false)),
        ("always_save_checkpoint", Bool(true)),
        ("init_from", s("scratch")),
        ("wandb_log", Bool(false)),
        ("wandb_project", s("owt")),
        ("wandb_run_name", s("gpt2")),
        ("dataset", s("openwebtext")),
        ("gradient_accumulation_steps", Int(40)),
        ("batch_size", Int(12)),
        ("block_size", Int(1024)),
        ("n_layer", Int(12)),
        ("n_head", Int(12)),
        ("n_embd", Int(768)),
        ("dropout", Float(0.0)),
        ("bias", Bool(false)),
        ("learning_rate", Float(6e-4)),
        ("max_iters", Int(600000)),
        ("weight_decay", Float(1e-1)),
        ("beta1", Float(0.9)),
        ("beta2", Float(0.95)),
        ("grad_clip", Float(1.0)),
        ("decay_lr", Bool(true)),
        ("warmup_iters", Int(2000)),
        ("lr_decay_iters", Int(600000)),
        ("min_lr", Float(6e-5)),
        ("backend", s("nccl")),
        ("device", s("cuda")),
        ("dtype", s("bfloat16")),
        ("compile", Bool(true)),
    ]
}

/// A JSON scalar as the Python value train.py would hold (integers stay `int`).
fn py_of(v: &Value) -> Option<Py> {
    Some(match v {
        Value::Null => Py::None,
        Value::Bool(b) => Py::Bool(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => Py::Int(i),
            None => Py::Float(n.as_f64()?),
        },
        Value::String(s) => Py::Str(s.clone()),
        _ => return None,
    })
}

/// The `config` an exported ckpt.pt carries: train.py's defaults, overlaid with the training
/// config the checkpoint records (pipe's train fields carry train.py's names; an imported nanoGPT
/// checkpoint keeps its own `config`), the model args, and `names`.
pub fn train_py_config(f: &CheckpointFile, names: &ExportNames) -> Vec<(String, Py)> {
    let mut config: Vec<(String, Py)> = train_py_defaults()
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    let mut set = |k: &str, v: Py| match config.iter_mut().find(|(name, _)| name == k) {
        Some(slot) => slot.1 = v,
        None => config.push((k.to_string(), v)),
    };
    if let Some(p) = &f.progress {
        let saved = p.train_config.get("nanogpt").unwrap_or(&p.train_config);
        if let Some(obj) = saved.as_object() {
            let known: Vec<&str> = train_py_defaults().iter().map(|(k, _)| *k).collect();
            for (k, v) in obj {
                if let Some(v) = py_of(v).filter(|_| known.contains(&k.as_str())) {
                    set(k, v);
                }
            }
        }
    }
    let c = &f.config;
    set("n_layer", Py::Int(c.n_layer as i64));
    set("n_head", Py::Int(c.n_head as i64));
    set("n_embd", Py::Int(c.n_embd as i64));
    set("block_size", Py::Int(c.block_size as i64));
    set("bias", Py::Bool(c.bias));
    set("dropout", Py::Float(c.dropout as f64));
    set("dataset", Py::str(names.dataset));
    set("out_dir", Py::str(names.out_dir));
    config
}
