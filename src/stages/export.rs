//! `export`: the model in another tool's files. `format: hf` (the default): a Hugging Face GPT-2
//! folder (config.json + model.safetensors) that `transformers.GPT2LMHeadModel.from_pretrained`
//! loads. `format: nanogpt`: nanoGPT's `ckpt.pt` (weights, AdamW state, iter_num, config), which its
//! sample.py and train.py `--init_from=resume` load, plus `meta.pkl` for a char tokenizer (when the
//! stage `needs` the data). The files are outputs in the store; with `to: DIR` they are also
//! written there.

use super::{Ctx, Produced, load_model, read_meta, resolve_path, typed, with_checkpoint};
use crate::error::err;
use crate::gpt::checkpoint::Parts;
use crate::gpt::params::ParamLayout;
use crate::gpt::{hf, nanogpt};
use crate::manifest::StageSpec;
use crate::store::{OutputName, Outputs, outputs};
use crate::tokenizer::Tokenizer;
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::path::{Component, Path, PathBuf};

/// The files an export writes, as outputs: a Hugging Face folder's, then nanoGPT's.
const FILES: [&str; 4] = ["config.json", "model.safetensors", "ckpt.pt", "meta.pkl"];

/// Whose files an export writes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    #[default]
    Hf,
    Nanogpt,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Params {
    #[serde(default)]
    pub to: Option<String>,
    #[serde(default)]
    pub format: Format,
    /// `format: nanogpt`: the `dataset` its config names, the folder under nanoGPT's `data/` where
    /// sample.py looks for meta.pkl (default: the data stage's name).
    #[serde(default)]
    pub dataset: Option<String>,
}

impl Params {
    /// `to` is in the key so that asking for a copy somewhere new writes it there; the format only
    /// when it is not the default, so existing keys stay as they were.
    pub fn key_view(&self, base: &std::path::Path) -> Value {
        let mut v =
            json!({ "to": self.to.as_ref().map(|t| resolve_path(base, t).display().to_string()) });
        if self.format != Format::Hf {
            v["format"] = json!(self.format);
            v["dataset"] = json!(self.dataset);
        }
        v
    }
}

const HELP: &str = "export takes `format` (hf, the default, or nanogpt), `to` (a folder to also write the files into) and, for nanogpt, `dataset` (the folder under nanoGPT's data/ that its config names)";

pub fn params(spec: &StageSpec, p: &serde_json::Map<String, Value>) -> Result<Params> {
    let params: Params = typed(spec, p, HELP)?;
    if params.format == Format::Hf && params.dataset.is_some() {
        return Err(err(
            spec.origin_of("dataset").clone(),
            "`dataset` only applies to `format: nanogpt`",
            Some("remove it, or add `format: nanogpt`"),
        ));
    }
    if let Some(d) = &params.dataset
        && (d.is_empty() || d.contains(['/', '\\']) || d.starts_with('.'))
    {
        return Err(err(
            spec.origin_of("dataset").clone(),
            format!("`dataset: {d}` must be a plain folder name"),
            Some("e.g. `dataset: shakespeare_char`"),
        ));
    }
    Ok(params)
}

/// A manifest is code: `to` may only name a folder inside the manifest's folder or the current
/// directory, unless the user passes `--allow-outside`.
pub fn check_destination(
    m: &crate::manifest::Manifest,
    spec: &StageSpec,
    p: &Params,
) -> Result<()> {
    let Some(to) = &p.to else { return Ok(()) };
    let dest = normalize(&resolve_path(&m.base_dir, to));
    let cwd = std::env::current_dir().unwrap_or_default();
    let inside = [&m.base_dir, &cwd].iter().any(|root| {
        dest.starts_with(normalize(
            &root.canonicalize().unwrap_or(root.to_path_buf()),
        ))
    });
    if inside {
        return Ok(());
    }
    Err(err(
        spec.origin_of("to").clone(),
        format!(
            "export `to` {} is outside the manifest's folder ({}) and the current directory",
            dest.display(),
            m.base_dir.display()
        ),
        Some(
            "a manifest may only write inside its own folder or the current directory; pass --allow-outside if you trust it",
        ),
    ))
}

/// `a/./b/../c` -> `a/c`, without touching the file system (the folder may not exist yet).
fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

/// Writes one exported file (a store object) into the `to` folder, streaming, naming the path on
/// failure.
fn write_copy(
    store: &crate::store::Store,
    dir: &Path,
    name: &OutputName,
    hash: &crate::store::Hash,
) -> Result<()> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("creating the folder {}", dir.display()))?;
    let path = name.path_in(dir);
    store
        .copy_out(hash, &path)
        .with_context(|| format!("writing {}", path.display()))
}

/// On a cache hit, the copy in `to` may have been deleted since: write it again from the store.
/// Only the files an export writes, whatever else a record might name.
pub fn restore_copy(
    store: &crate::store::Store,
    m: &crate::manifest::Manifest,
    p: &Params,
    outputs: &Outputs,
) -> Result<()> {
    let Some(to) = &p.to else { return Ok(()) };
    let dir = resolve_path(&m.base_dir, to);
    for file in FILES {
        let Some((name, hash)) = outputs.get_key_value(file) else {
            continue;
        };
        let path = name.path_in(&dir);
        if !path.exists() {
            write_copy(store, &dir, name, hash)?;
        }
    }
    Ok(())
}

pub fn execute(ctx: &Ctx, p: &Params) -> Result<Produced> {
    let dir = p.to.as_ref().map(|to| resolve_path(&ctx.base_dir, to));
    if let Some(dir) = &dir
        && dir.exists()
        && !dir.is_dir()
    {
        anyhow::bail!(
            "export `to` {} is an existing file, not a folder: give a folder path (it is created if missing)",
            dir.display()
        );
    }
    let (outputs, parameters) = match p.format {
        Format::Hf => {
            // Streamed into the store one tensor at a time; the folder copy is streamed from there.
            let ck = load_model(ctx, Parts::Model)?;
            let config = ctx.store.put(&hf::hf_config_json(&ck.config)?)?;
            let mut w = ctx.store.writer()?;
            hf::write_hf_safetensors(&ck.config, &ck.params, &mut w)?;
            let weights = w.commit()?;
            let n = ck.params.len();
            (outputs([(FILES[0], config), (FILES[1], weights)]), n)
        }
        Format::Nanogpt => export_nanogpt(ctx, p, dir.as_deref())?,
    };
    if let Some(dir) = &dir {
        for (name, hash) in &outputs {
            write_copy(ctx.store, dir, name, hash)?;
        }
        ctx.ui
            .say(&format!("{}: wrote {}", ctx.spec.name, dir.display()));
    }
    Ok(Produced {
        outputs,
        metrics: json!({ "parameters": parameters, "format": p.format }),
        resumed: false,
    })
}

/// nanoGPT's ckpt.pt (copied from the checkpoint's memory map one tensor at a time), and meta.pkl
/// for a char tokenizer; says where meta.pkl must go for sample.py to find it.
fn export_nanogpt(ctx: &Ctx, p: &Params, dir: Option<&Path>) -> Result<(Outputs, usize)> {
    let (input, hash) = super::model_checkpoint(ctx)?;
    let data = ctx.data_input();
    let dataset = p
        .dataset
        .clone()
        .or(data.map(|d| d.stage.clone()))
        .unwrap_or_else(|| "pipe".into());
    let out_dir = dir.map_or("out".into(), |d| d.display().to_string());
    let names = nanogpt::ExportNames {
        dataset: &dataset,
        out_dir: &out_dir,
    };
    let mut parameters = 0;
    let ckpt = ctx.store.put_written("ckpt.pt", |path| {
        with_checkpoint(ctx.store, hash, |f| {
            parameters = ParamLayout::new(&f.config).total;
            nanogpt::write_ckpt_pt(f, &names, path)
        })
        .with_context(|| format!("exporting the checkpoint of stage `{}`", input.stage))
    })?;
    let mut files = outputs([(FILES[2], ckpt)]);
    if let Some(d) = data
        && let Tokenizer::Char { chars } = read_meta(ctx.store, d)?.tokenizer
    {
        files.extend(outputs([(
            FILES[3],
            ctx.store.put(&nanogpt::meta_pkl(&chars))?,
        )]));
        let at = dir.map_or("the export's meta.pkl (`pipe show`)".into(), |d| {
            d.join("meta.pkl").display().to_string()
        });
        ctx.ui.say(&format!(
            "{}: char model: copy {at} to data/{dataset}/meta.pkl in nanoGPT's folder, where sample.py looks for it",
            ctx.spec.name
        ));
    }
    Ok((files, parameters))
}
