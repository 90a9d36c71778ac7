//! `prepare`'s one-text-file source: the local file, or the pinned `url` downloaded once into the
//! store (indexed by its sha256), checked against the pinned sha256 and the hash the key was made
//! from, and decompressed.

use super::Params;
use crate::data::format::Compression;
use crate::stages::{Ctx, resolve_path};
use crate::store::{ActionRecord, Store};
use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::{Path, PathBuf};

fn sha256_hex(b: &[u8]) -> String {
    Sha256::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

/// The sha256 of a file (streamed) and its length.
pub(super) fn sha256_file(path: &Path) -> std::io::Result<(String, u64)> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut len = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        len += n as u64;
    }
    Ok((
        h.finalize().iter().map(|x| format!("{x:02x}")).collect(),
        len,
    ))
}

/// The text, from the local path or the store (downloading it the first time).
pub(super) fn read_text(
    ctx: &Ctx,
    p: &Params,
    local: Option<PathBuf>,
    compression: Compression,
) -> Result<String> {
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
    let bytes = match (&local, &p.url) {
        (Some(full), _) => {
            std::fs::read(full).with_context(|| format!("reading {}", full.display()))?
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
    let bytes = if compression == Compression::None {
        bytes
    } else {
        let mut out = Vec::new();
        crate::data::compress::decoder(&bytes[..], compression)
            .and_then(|mut d| d.read_to_end(&mut out))
            .map_err(|e| {
                anyhow::anyhow!(
                    "{}: cannot read it: {e} (is the file truncated or damaged?)",
                    local.as_deref().unwrap_or(Path::new("")).display()
                )
            })?;
        out
    };
    String::from_utf8(bytes).context("the text is not valid UTF-8")
}

/// Downloads `url` once (with curl) and keeps it in the store, indexed by its sha256.
fn fetch_pinned(store: &Store, url: &str, sha256: &str, stage: &str, ctx: &Ctx) -> Result<Vec<u8>> {
    let index_key = crate::store::download_key(sha256);
    if let Some(rec) = store.action(&index_key)? {
        return store.get(&rec.outputs["content"]);
    }
    ctx.ui.say(&format!("downloading {url}"));
    let tmp = store
        .root
        .join("tmp")
        .join(crate::store::temp_name(&format!("download-{sha256}")));
    if let Err(e) = crate::stages::download::fetch(url, &tmp) {
        bail!(
            "{e:#}.\n  help: download it elsewhere (or find a local copy) and give that file: `--set {stage}.path=FILE` (its sha256 is still checked); check the path if you gave one"
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
        kind: crate::store::RecordKind::Download,
        key_material: json!({ "url": url, "sha256": sha256 }),
        outputs: crate::store::outputs([("content", hash)]),
        metrics: Value::Null,
        created: crate::run::utc_now(),
    })?;
    Ok(bytes)
}
