//! `command`: a user's own step in the DAG, as in DVC. `cmd` runs with `sh -c` in the manifest's
//! folder. It reads the outputs of the stages it `needs` through environment variables
//! `PIPE_IN_<STAGE>_<OUTPUT>` (upper-cased, other characters as `_`; paths to read-only store
//! objects) and writes each declared `outs` file into `$PIPE_OUT`. Its key covers `cmd`, the
//! content of every `deps` file and the input hashes.

use super::{Ctx, Produced, resolve_path, typed};
use crate::manifest::{StageSpec, err};
use anyhow::{Result, bail};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::Path;

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Params {
    pub cmd: String,
    #[serde(default)]
    pub deps: Vec<String>,
    #[serde(default)]
    pub outs: Vec<String>,
}

const HELP: &str = "command takes `cmd` (a shell command), `deps` (files it reads, hashed into the key) and `outs` (file names it writes into $PIPE_OUT)";

pub fn params(spec: &StageSpec, p: &serde_json::Map<String, Value>) -> Result<Params> {
    let params: Params = typed(spec, p, HELP)?;
    for o in &params.outs {
        if o.is_empty() || o.contains('/') || o.starts_with('.') {
            return Err(err(
                spec.origin_of("outs").clone(),
                format!("`outs` entry {o:?} must be a plain file name"),
                Some("outputs are files written directly into $PIPE_OUT"),
            ));
        }
    }
    Ok(params)
}

pub fn key_parts(
    base: &Path,
    spec: &StageSpec,
    p: &serde_json::Map<String, Value>,
) -> Result<(Value, Value)> {
    let params = params(spec, p)?;
    let mut deps = BTreeMap::new();
    for d in &params.deps {
        let full = resolve_path(base, d);
        let bytes = std::fs::read(&full).map_err(|e| {
            err(
                spec.origin_of("deps").clone(),
                format!("cannot read dependency {}: {e}", full.display()),
                Some("deps are files relative to the manifest's folder"),
            )
        })?;
        deps.insert(d.clone(), blake3::hash(&bytes).to_hex().to_string());
    }
    Ok((
        json!({ "cmd": params.cmd, "outs": params.outs }),
        json!({ "deps": deps }),
    ))
}

pub fn env_name(stage: &str, output: &str) -> String {
    let clean = |s: &str| {
        s.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_uppercase()
                } else {
                    '_'
                }
            })
            .collect::<String>()
    };
    format!("PIPE_IN_{}_{}", clean(stage), clean(output))
}

pub fn execute(ctx: &Ctx, p: &Params) -> Result<Produced> {
    let out_dir = ctx
        .store
        .root
        .join("tmp")
        .join(format!("cmd-{}", &ctx.key[..16]));
    let _ = std::fs::remove_dir_all(&out_dir);
    std::fs::create_dir_all(&out_dir)?;
    let mut cmd = std::process::Command::new("sh");
    cmd.arg("-c")
        .arg(&p.cmd)
        .current_dir(&ctx.base_dir)
        .env("PIPE_OUT", &out_dir);
    for input in &ctx.inputs {
        for (name, hash) in &input.outputs {
            cmd.env(env_name(&input.stage, name), ctx.store.object_path(hash));
        }
    }
    let out = cmd.output()?;
    if !out.stdout.is_empty() {
        ctx.ui.say(String::from_utf8_lossy(&out.stdout).trim_end());
    }
    if !out.status.success() {
        let err_text = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = err_text
            .lines()
            .rev()
            .take(10)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        bail!(
            "command `{}` failed ({}):\n{}",
            p.cmd,
            out.status,
            tail.join("\n")
        );
    }
    let mut outputs = BTreeMap::new();
    for o in &p.outs {
        let path = out_dir.join(o);
        if !path.exists() {
            bail!(
                "command `{}` did not write its declared output `{o}` into $PIPE_OUT",
                p.cmd
            );
        }
        outputs.insert(o.clone(), ctx.store.put_file(&path)?);
    }
    let _ = std::fs::remove_dir_all(&out_dir);
    Ok(Produced {
        outputs,
        metrics: json!({}),
        resumed: false,
    })
}
