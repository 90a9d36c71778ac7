//! `export`: the model as a Hugging Face GPT-2 folder (config.json + model.safetensors) that
//! `transformers.GPT2LMHeadModel.from_pretrained` loads. Both files are outputs in the store; with
//! `to: DIR` they are also written there.

use super::{Ctx, Produced, load_model, resolve_path, typed};
use crate::error::err;
use crate::gpt::checkpoint::Parts;
use crate::gpt::hf;
use crate::manifest::StageSpec;
use crate::store::{OutputName, Outputs, outputs};
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::path::{Component, Path, PathBuf};

/// The files of a Hugging Face folder, as an export's outputs.
const FILES: [&str; 2] = ["config.json", "model.safetensors"];

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Params {
    #[serde(default)]
    pub to: Option<String>,
}

impl Params {
    /// `to` is in the key so that asking for a copy somewhere new writes it there.
    pub fn key_view(&self, base: &std::path::Path) -> Value {
        json!({ "to": self.to.as_ref().map(|t| resolve_path(base, t).display().to_string()) })
    }
}

pub fn params(spec: &StageSpec, p: &serde_json::Map<String, Value>) -> Result<Params> {
    typed(
        spec,
        p,
        "export takes `to` (a folder to also write the Hugging Face files into)",
    )
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
/// Only the two files an export writes, whatever else a record might name.
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
    let ck = load_model(ctx, Parts::Model)?;
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
    // Streamed into the store one tensor at a time; the folder copy is streamed from there.
    let config = ctx.store.put(&hf::hf_config_json(&ck.config)?)?;
    let mut w = ctx.store.writer()?;
    hf::write_hf_safetensors(&ck.config, &ck.params, &mut w)?;
    let weights = w.commit()?;
    let outputs = outputs([(FILES[0], config), (FILES[1], weights)]);
    if let Some(dir) = &dir {
        for (name, hash) in &outputs {
            write_copy(ctx.store, dir, name, hash)?;
        }
        ctx.ui
            .say(&format!("{}: wrote {}", ctx.spec.name, dir.display()));
    }
    Ok(Produced {
        outputs,
        metrics: json!({ "parameters": ck.params.len() }),
        resumed: false,
    })
}
