//! Writing a pipe checkpoint as nanoGPT's `ckpt.pt`: the zip layout `torch.save` writes
//! (`archive/data.pkl`, one `archive/data/N` entry per storage, `archive/version`,
//! `archive/byteorder`), with the dict train.py saves pickled by [`super::pickle`].
//!
//! Storages: the weights as one float32 storage in pipe's parameter order, each state-dict tensor a
//! view into it (`lm_head.weight` the same view as `transformer.wte.weight`: tied, as in nanoGPT),
//! and likewise AdamW's two moments. Each parameter's `step` gets a storage of its own, since torch's
//! AdamW increments it in place. Tensor bytes are copied from the checkpoint file into the zip one
//! tensor at a time: nothing holds a second copy of the model. Entries are stored (not deflated),
//! 64-byte aligned as torch aligns them, with a fixed timestamp so the same checkpoint gives the
//! same bytes.

use super::super::checkpoint::CheckpointFile;
use super::super::params::ParamLayout;
use super::pickle::Py;
use super::train_py_config;
use anyhow::{Context, Result};
use std::io::{Seek, Write};
use std::path::Path;
use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, DateTime, ZipWriter};

/// What the exported checkpoint's `config` says beyond the training state: the `dataset` folder
/// under nanoGPT's `data/` where sample.py looks for `meta.pkl`, and the `out_dir` it was written to.
pub struct ExportNames<'a> {
    pub dataset: &'a str,
    pub out_dir: &'a str,
}

/// The zip's root folder (torch uses the file's stem; any one name works).
const ROOT: &str = "ckpt";

fn options(size: u64) -> SimpleFileOptions {
    SimpleFileOptions::default()
        .compression_method(CompressionMethod::Stored)
        .last_modified_time(DateTime::default())
        .unix_permissions(0o644)
        .with_alignment(64)
        .large_file(size >= u32::MAX as u64)
}

/// Writes `f` as nanoGPT's ckpt.pt to `path`. A checkpoint without AdamW moments (an `init`
/// stage's) gets zero moments at step 0: the state of an optimizer that has not stepped, which
/// train.py's `optimizer.load_state_dict` accepts and which then steps exactly as a fresh one.
pub fn write_ckpt_pt(f: &CheckpointFile, names: &ExportNames, path: &Path) -> Result<()> {
    let file =
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    write_zip(f, names, std::io::BufWriter::with_capacity(1 << 20, file))
        .with_context(|| format!("writing {}", path.display()))
}

fn write_zip<W: Write + Seek>(f: &CheckpointFile, names: &ExportNames, w: W) -> Result<()> {
    let layout = ParamLayout::new(&f.config);
    let total = layout.total;
    let has_moments = f.has_moments();
    let (iter_num, adam_step, best_val_loss) = match &f.progress {
        Some(p) if has_moments => (p.iter_num, p.adam_step, p.best_val_loss as f64),
        _ => (0, 0, 1e9),
    };
    let mut zip = ZipWriter::new(w);
    let pickle = checkpoint_dict(f, names, iter_num, best_val_loss).to_pickle();
    zip.start_file(format!("{ROOT}/data.pkl"), options(pickle.len() as u64))?;
    zip.write_all(&pickle)?;
    for (name, text) in [("version", "3\n"), ("byteorder", "little")] {
        zip.start_file(format!("{ROOT}/{name}"), options(text.len() as u64))?;
        zip.write_all(text.as_bytes())?;
    }
    let bytes = 4 * total as u64;
    // data/0: the weights, in layout order.
    zip.start_file(format!("{ROOT}/data/0"), options(bytes))?;
    for t in &layout.tensors {
        f.copy_tensor(&t.name, &mut zip)?;
    }
    // data/1, data/2: AdamW's first and second moments.
    for (i, m) in [1, 2].into_iter().zip(0..) {
        zip.start_file(format!("{ROOT}/data/{i}"), options(bytes))?;
        if has_moments {
            f.copy_moment(m, &mut zip)?;
        } else {
            let zeros = vec![0u8; 1 << 20];
            let mut left = bytes;
            while left > 0 {
                let n = left.min(zeros.len() as u64) as usize;
                zip.write_all(&zeros[..n])?;
                left -= n as u64;
            }
        }
    }
    // data/3..: each parameter's step count.
    for i in 0..layout.tensors.len() {
        zip.start_file(format!("{ROOT}/data/{}", 3 + i), options(4))?;
        zip.write_all(&(adam_step as f32).to_le_bytes())?;
    }
    zip.finish()?.flush()?;
    Ok(())
}

/// The dict train.py saves: model, optimizer, model_args, iter_num, best_val_loss, config.
fn checkpoint_dict(
    f: &CheckpointFile,
    names: &ExportNames,
    iter_num: u64,
    best_val_loss: f64,
) -> Py {
    let c = &f.config;
    let layout = ParamLayout::new(c);
    let total = layout.total;
    let view = |storage: &str, t: &super::super::params::Tensor| Py::Tensor {
        storage: storage.into(),
        numel: total,
        offset: t.range.start,
        shape: t.shape.clone(),
    };
    let mut model: Vec<(String, Py)> = layout
        .tensors
        .iter()
        .map(|t| (t.name.clone(), view("0", t)))
        .collect();
    let wte = layout
        .get("transformer.wte.weight")
        .expect("every GPT has wte");
    model.push(("lm_head.weight".into(), view("0", wte)));

    // torch's optimizer state: parameters numbered decay group first, then the rest.
    let decay: Vec<usize> = (0..layout.tensors.len())
        .filter(|&i| layout.tensors[i].decays())
        .collect();
    let no_decay: Vec<usize> = (0..layout.tensors.len())
        .filter(|&i| !layout.tensors[i].decays())
        .collect();
    let mut state = Vec::new();
    for (number, &i) in decay.iter().chain(&no_decay).enumerate() {
        let t = &layout.tensors[i];
        let step = Py::Tensor {
            storage: (3 + i).to_string(),
            numel: 1,
            offset: 0,
            shape: vec![],
        };
        state.push((
            Py::Int(number as i64),
            Py::dict([
                ("step", step),
                ("exp_avg", view("1", t)),
                ("exp_avg_sq", view("2", t)),
            ]),
        ));
    }
    let adam = f.progress.as_ref().map(|p| p.adam.clone());
    let (beta1, beta2, eps, weight_decay) = match &adam {
        Some(a) => (a.beta1, a.beta2, a.eps, a.weight_decay),
        None => (0.9, 0.95, 1e-8, 0.1),
    };
    let config = train_py_config(f, names);
    let lr = config
        .iter()
        .find(|(k, _)| k == "learning_rate")
        .and_then(|(_, v)| match v {
            Py::Float(x) => Some(*x),
            _ => None,
        })
        .unwrap_or(6e-4);
    let group = |wd: f64, start: usize, n: usize| {
        Py::dict([
            ("lr", Py::Float(lr)),
            ("betas", Py::Tuple(vec![Py::Float(beta1), Py::Float(beta2)])),
            ("eps", Py::Float(eps)),
            ("weight_decay", Py::Float(wd)),
            ("amsgrad", Py::Bool(false)),
            ("foreach", Py::None),
            ("maximize", Py::Bool(false)),
            ("capturable", Py::Bool(false)),
            ("differentiable", Py::Bool(false)),
            ("fused", Py::None),
            ("decoupled_weight_decay", Py::Bool(true)),
            (
                "params",
                Py::List((start..start + n).map(|i| Py::Int(i as i64)).collect()),
            ),
        ])
    };
    let optimizer = Py::dict([
        ("state", Py::Dict(state)),
        (
            "param_groups",
            Py::List(vec![
                group(weight_decay, 0, decay.len()),
                group(0.0, decay.len(), no_decay.len()),
            ]),
        ),
    ]);
    let model_args = Py::dict([
        ("n_layer", Py::Int(c.n_layer as i64)),
        ("n_head", Py::Int(c.n_head as i64)),
        ("n_embd", Py::Int(c.n_embd as i64)),
        ("block_size", Py::Int(c.block_size as i64)),
        ("bias", Py::Bool(c.bias)),
        ("vocab_size", Py::Int(c.vocab_size as i64)),
        ("dropout", Py::Float(c.dropout as f64)),
    ]);
    Py::dict([
        ("model", Py::OrderedDict(model)),
        ("optimizer", optimizer),
        ("model_args", model_args),
        ("iter_num", Py::Int(iter_num as i64)),
        ("best_val_loss", Py::Float(best_val_loss)),
        (
            "config",
            Py::Dict(config.into_iter().map(|(k, v)| (Py::Str(k), v)).collect()),
        ),
    ])
}

/// nanoGPT's meta.pkl for a char tokenizer: `{'vocab_size': n, 'itos': {i: ch}, 'stoi': {ch: i}}`,
/// which sample.py reads (with plain `pickle.load`) from `data/<dataset>/meta.pkl`.
pub fn meta_pkl(chars: &[char]) -> Vec<u8> {
    let s = |c: &char| Py::Str(c.to_string());
    Py::dict([
        ("vocab_size", Py::Int(chars.len() as i64)),
        (
            "itos",
            Py::Dict(
                chars
                    .iter()
                    .enumerate()
                    .map(|(i, c)| (Py::Int(i as i64), s(c)))
                    .collect(),
            ),
        ),
        (
            "stoi",
            Py::Dict(
                chars
                    .iter()
                    .enumerate()
                    .map(|(i, c)| (s(c), Py::Int(i as i64)))
                    .collect(),
            ),
        ),
    ])
    .to_pickle()
}
