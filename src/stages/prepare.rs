//! `prepare`: text in, token streams out (nanoGPT's data/*/prepare.py). The text comes from a local
//! `path` (used when it exists) or a `url` pinned by `sha256` (downloaded once, kept in the store); the first
//! `1 - val_fraction` of it (by characters) is the training split, the rest validation.
//! Outputs: `train.bin` and `val.bin` (uint16 little-endian) and `meta.json` (the tokenizer).

use super::{Ctx, Produced, resolve_path, typed};
use crate::manifest::{StageSpec, err};
use crate::store::{ActionRecord, Store};
use crate::tokenizer::Tokenizer;
use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::Path;

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "lowercase")]
pub enum TokenizerKind {
    Char,
    Gpt2,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Params {
    #[serde(default)]
    pub url: Option<String>,
    #[serde(default)]
    pub sha256: Option<String>,
    #[serde(default)]
    pub path: Option<String>,
    pub tokenizer: TokenizerKind,
    #[serde(default = "default_val_fraction")]
    pub val_fraction: f64,
}

fn default_val_fraction() -> f64 {
    0.1
}

/// Tokenizer and vocabulary of a prepared data set (nanoGPT's meta.pkl).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Meta {
    pub vocab_size: usize,
    pub tokenizer: Tokenizer,
}

const HELP: &str = "prepare takes `tokenizer` (char or gpt2), `val_fraction`, and either `path` (a local text file) or `url` with its `sha256`";

pub fn params(spec: &StageSpec, p: &serde_json::Map<String, Value>) -> Result<Params> {
    let params: Params = typed(spec, p, HELP)?;
    if params.path.is_none() && params.url.is_none() {
        return Err(err(
            spec.origin.clone(),
            format!("stage `{}` has no text source", spec.name),
            Some("give `path: some/file.txt` or `url: ...` with `sha256: ...`"),
        ));
    }
    if params.url.is_some() && params.sha256.is_none() {
        return Err(err(
            spec.origin_of("url").clone(),
            "a `url` must be pinned with `sha256`",
            Some("add `sha256: <hex digest of the file>` (sha256sum FILE)"),
        ));
    }
    if let Some(h) = params
        .sha256
        .as_ref()
        .filter(|h| h.len() != 64 || !h.chars().all(|c| c.is_ascii_hexdigit()))
    {
        return Err(err(
            spec.origin_of("sha256").clone(),
            format!("`sha256` must be 64 hex digits, found {h:?}"),
            None,
        ));
    }
    if !(params.val_fraction > 0.0 && params.val_fraction < 1.0) {
        return Err(err(
            spec.origin_of("val_fraction").clone(),
            format!(
                "`val_fraction` must be between 0 and 1 (exclusive), found {}",
                params.val_fraction
            ),
            Some("nanoGPT uses 0.1"),
        ));
    }
    Ok(params)
}

fn sha256_hex(b: &[u8]) -> String {
    Sha256::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

/// The text's identity for the key: the content hash of the local file, else the pinned sha256.
pub fn key_parts(
    base: &Path,
    spec: &StageSpec,
    p: &serde_json::Map<String, Value>,
) -> Result<(Value, Value)> {
    let params = params(spec, p)?;
    let local = params.path.as_ref().map(|p| resolve_path(base, p));
    let source = match (&local, &params.sha256) {
        (Some(full), _) if full.exists() => {
            let bytes = std::fs::read(full).map_err(|e| {
                err(
                    spec.origin_of("path").clone(),
                    format!("cannot read {}: {e}", full.display()),
                    None,
                )
            })?;
            if bytes.is_empty() {
                return Err(err(
                    spec.origin_of("path").clone(),
                    format!("the text {} is empty", full.display()),
                    Some("prepare needs some text to make training and validation tokens from"),
                ));
            }
            json!({ "text_sha256": sha256_hex(&bytes) })
        }
        (Some(_), Some(pinned)) if params.url.is_some() => json!({ "text_sha256": pinned }),
        (Some(full), _) => {
            return Err(err(
                spec.origin_of("path").clone(),
                format!("cannot read {}: no such file", full.display()),
                Some(
                    "fix the path (relative paths in a manifest are relative to its folder; with --set, to the current directory)",
                ),
            ));
        }
        (None, pinned) => json!({ "text_sha256": pinned.clone().expect("checked") }),
    };
    Ok((
        json!({ "tokenizer": params.tokenizer, "val_fraction": params.val_fraction }),
        source,
    ))
}

/// The text, from the local path or the store (downloading it the first time).
fn read_text(ctx: &Ctx, p: &Params) -> Result<String> {
    // A local `path` wins when it exists; otherwise the pinned `url` is fetched (once).
    if let Some(missing) = p
        .path
        .as_ref()
        .map(|x| resolve_path(&ctx.base_dir, x))
        .filter(|f| !f.exists())
    {
        ctx.ui.say(&format!(
            "{}: {} does not exist; using the pinned url instead",
            ctx.spec.name,
            missing.display()
        ));
    }
    let local = p
        .path
        .as_ref()
        .map(|x| resolve_path(&ctx.base_dir, x))
        .filter(|f| f.exists());
    let bytes = match (local, &p.url) {
        (Some(full), _) => {
            std::fs::read(&full).with_context(|| format!("reading {}", full.display()))?
        }
        (None, Some(url)) => fetch_pinned(
            ctx.store,
            url,
            p.sha256.as_deref().expect("checked"),
            &ctx.spec.name,
            ctx,
        )?,
        (None, None) => bail!(
            "the text file {} does not exist",
            p.path.as_deref().unwrap_or("")
        ),
    };
    let got = sha256_hex(&bytes);
    if let Some(want) = p.sha256.as_ref().filter(|w| **w != got) {
        bail!(
            "the text's sha256 is {got}, but the manifest pins {want}: it is not the expected file (fix `sha256` if the file is right)"
        );
    }
    if ctx.sources["text_sha256"]
        .as_str()
        .is_some_and(|keyed| keyed != got)
    {
        bail!("the text changed while pipe was running (its sha256 is now {got}); run again");
    }
    String::from_utf8(bytes).context("the text is not valid UTF-8")
}

/// Downloads `url` once (with curl) and keeps it in the store, indexed by its sha256.
fn fetch_pinned(store: &Store, url: &str, sha256: &str, stage: &str, ctx: &Ctx) -> Result<Vec<u8>> {
    let index_key = format!("download-sha256-{sha256}");
    if let Some(rec) = store.action(&index_key)? {
        return store.get(&rec.outputs["content"]);
    }
    ctx.ui.say(&format!("downloading {url}"));
    let tmp = store
        .root
        .join("tmp")
        .join(crate::store::temp_name(&format!("download-{sha256}")));
    let status = std::process::Command::new("curl")
        .args(["-fsSL", "--retry", "2", "-o"])
        .arg(&tmp)
        .arg(url)
        .status();
    let ok = matches!(status, Ok(s) if s.success());
    if !ok {
        let _ = std::fs::remove_file(&tmp);
        bail!(
            "could not download {url} (offline, or curl missing?).\n  help: download it elsewhere (or find a local copy) and give that file: `--set {stage}.path=FILE` (its sha256 is still checked); check the path if you gave one"
        );
    }
    let bytes = std::fs::read(&tmp)?;
    let _ = std::fs::remove_file(&tmp);
    let got = sha256_hex(&bytes);
    if got != sha256 {
        bail!("downloaded {url} but its sha256 is {got}, not the pinned {sha256}");
    }
    let hash = store.put(&bytes)?;
    store.put_action(&ActionRecord {
        key: index_key,
        stage: stage.to_string(),
        kind: "download".into(),
        key_material: json!({ "url": url, "sha256": sha256 }),
        outputs: BTreeMap::from([("content".to_string(), hash)]),
        metrics: Value::Null,
        created: crate::run::utc_now(),
    })?;
    Ok(bytes)
}

fn u16_bytes(ids: &[u32]) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(ids.len() * 2);
    for &i in ids {
        let v = u16::try_from(i).context("token id does not fit in uint16")?;
        out.extend_from_slice(&v.to_le_bytes());
    }
    Ok(out)
}

pub fn execute(ctx: &Ctx, p: &Params) -> Result<Produced> {
    let text = read_text(ctx, p)?;
    if text.is_empty() {
        bail!(
            "the text is empty: prepare needs some text to make training and validation tokens from"
        );
    }
    let tok = match p.tokenizer {
        TokenizerKind::Char => Tokenizer::char_from_text(&text),
        TokenizerKind::Gpt2 => Tokenizer::Gpt2,
    };
    let n_chars = text.chars().count();
    let split_char = ((n_chars as f64) * (1.0 - p.val_fraction)) as usize;
    let split_byte = text
        .char_indices()
        .nth(split_char)
        .map_or(text.len(), |x| x.0);
    let (train_text, val_text) = text.split_at(split_byte);
    let train = tok.encode(train_text)?;
    let val = tok.encode(val_text)?;
    let meta = Meta {
        vocab_size: tok.vocab_size(),
        tokenizer: tok,
    };
    ctx.ui.say(&format!(
        "{}: {} characters, vocab {}, train {} tokens, val {} tokens",
        ctx.spec.name,
        n_chars,
        meta.vocab_size,
        train.len(),
        val.len()
    ));
    let outputs = BTreeMap::from([
        ("train.bin".to_string(), ctx.store.put(&u16_bytes(&train)?)?),
        ("val.bin".to_string(), ctx.store.put(&u16_bytes(&val)?)?),
        (
            "meta.json".to_string(),
            ctx.store.put(&serde_json::to_vec_pretty(&meta)?)?,
        ),
    ]);
    Ok(Produced {
        outputs,
        metrics: json!({ "characters": n_chars, "vocab_size": meta.vocab_size, "train_tokens": train.len(), "val_tokens": val.len() }),
        resumed: false,
    })
}
