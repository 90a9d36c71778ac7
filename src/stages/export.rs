//! `export`: the model as a Hugging Face GPT-2 folder (config.json + model.safetensors) that
//! `transformers.GPT2LMHeadModel.from_pretrained` loads. Both files are outputs in the store; with
//! `to: DIR` they are also written there.

use super::{Ctx, Produced, load_model, resolve_path, typed};
use crate::gpt::{Gpt, hf};
use crate::manifest::StageSpec;
use anyhow::Result;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::BTreeMap;

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

/// On a cache hit, the copy in `to` may have been deleted since: write it again from the store.
pub fn restore_copy(
    store: &crate::store::Store,
    m: &crate::manifest::Manifest,
    spec: &StageSpec,
    outputs: &BTreeMap<String, String>,
) -> Result<()> {
    let p = params(spec, &spec.params)?;
    let Some(to) = &p.to else { return Ok(()) };
    let dir = resolve_path(&m.base_dir, to);
    for (name, hash) in outputs {
        let path = dir.join(name);
        if !path.exists() {
            std::fs::create_dir_all(&dir)?;
            std::fs::write(&path, store.get(hash)?)?;
        }
    }
    Ok(())
}

pub fn execute(ctx: &Ctx, p: &Params) -> Result<Produced> {
    let ck = load_model(ctx)?;
    let model = Gpt::from_params(ck.config.clone(), ck.params)?;
    let (config, weights) = hf::export_hf_bytes(&model)?;
    if let Some(to) = &p.to {
        let dir = resolve_path(&ctx.base_dir, to);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("config.json"), &config)?;
        std::fs::write(dir.join("model.safetensors"), &weights)?;
        ctx.ui
            .say(&format!("{}: wrote {}", ctx.spec.name, dir.display()));
    }
    let outputs = BTreeMap::from([
        ("config.json".to_string(), ctx.store.put(&config)?),
        ("model.safetensors".to_string(), ctx.store.put(&weights)?),
    ]);
    Ok(Produced {
        outputs,
        metrics: json!({ "parameters": model.num_params() }),
        resumed: false,
    })
}
