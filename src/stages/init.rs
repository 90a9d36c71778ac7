//! `init`: where a model comes from, nanoGPT's three `init_from` branches side by side:
//! - `scratch`: a new model from the manifest's model args (vocab size from the data's tokenizer);
//! - `resume`: a checkpoint from the store (with its optimiser state and iter_num, so a following
//!   train stage continues it), named by object hash or `RUN_ID/STAGE`;
//! - `gpt2`, `gpt2-medium`, `gpt2-large`, `gpt2-xl`: OpenAI's weights in Hugging Face layout, from
//!   `hf_dir` or the Hugging Face cache; `block_size` may crop, `dropout` may override;
//! - `nanogpt`: a nanoGPT `ckpt.pt` (`path`: the file or its out_dir), with its AdamW state and
//!   iter_num, so a following train stage continues it as `train.py --init_from=resume` does.

use super::{Ctx, Downloads, Produced, read_meta, resolve_path, typed, with_checkpoint};
use crate::error::err;
use crate::gpt::checkpoint::CheckpointRef;
use crate::gpt::device::{Device, check_host};
use crate::gpt::memory::Work;
use crate::gpt::nanogpt::{self, NanoCheckpoint};
use crate::gpt::{Gelu, Gpt, GptConfig, hf};
use crate::manifest::StageSpec;
use crate::run::{RunEvent, RunRecord};
use crate::store::{Hash, Store};
use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};

/// Where an init stage's model comes from (nanoGPT's `init_from`, plus nanoGPT's own files).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String")]
pub enum InitFrom {
    #[serde(rename = "scratch")]
    Scratch,
    #[serde(rename = "resume")]
    Resume,
    #[serde(rename = "nanogpt")]
    Nanogpt,
    #[serde(rename = "gpt2")]
    Gpt2,
    #[serde(rename = "gpt2-medium")]
    Gpt2Medium,
    #[serde(rename = "gpt2-large")]
    Gpt2Large,
    #[serde(rename = "gpt2-xl")]
    Gpt2Xl,
}

impl InitFrom {
    const ALL: [InitFrom; 7] = [
        InitFrom::Scratch,
        InitFrom::Resume,
        InitFrom::Nanogpt,
        InitFrom::Gpt2,
        InitFrom::Gpt2Medium,
        InitFrom::Gpt2Large,
        InitFrom::Gpt2Xl,
    ];

    /// The manifest's spelling (also the key's, and the Hub repository's for GPT-2).
    pub fn name(self) -> &'static str {
        match self {
            InitFrom::Scratch => "scratch",
            InitFrom::Resume => "resume",
            InitFrom::Nanogpt => "nanogpt",
            InitFrom::Gpt2 => "gpt2",
            InitFrom::Gpt2Medium => "gpt2-medium",
            InitFrom::Gpt2Large => "gpt2-large",
            InitFrom::Gpt2Xl => "gpt2-xl",
        }
    }
}

impl TryFrom<String> for InitFrom {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        InitFrom::ALL.into_iter().find(|f| f.name() == s).ok_or_else(|| {
            format!("unknown `from: {s}`, expected scratch, resume, nanogpt, gpt2, gpt2-medium, gpt2-large or gpt2-xl")
        })
    }
}

impl std::fmt::Display for InitFrom {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Params {
    pub from: InitFrom,
    #[serde(default)]
    pub n_layer: Option<usize>,
    #[serde(default)]
    pub n_head: Option<usize>,
    #[serde(default)]
    pub n_embd: Option<usize>,
    #[serde(default)]
    pub block_size: Option<usize>,
    #[serde(default)]
    pub vocab_size: Option<usize>,
    #[serde(default)]
    pub bias: Option<bool>,
    #[serde(default)]
    pub dropout: Option<f32>,
    #[serde(default)]
    pub gelu: Option<Gelu>,
    #[serde(default)]
    pub hf_dir: Option<String>,
    #[serde(default)]
    pub checkpoint: Option<String>,
    /// `from: nanogpt`: a ckpt.pt, or the out_dir that holds one.
    #[serde(default)]
    pub path: Option<String>,
    /// Hub revision (branch, tag or commit) to download when the weights are not cached.
    #[serde(default)]
    pub revision: Option<String>,
    pub seed: u64,
}

const HELP: &str = "init takes `from` (scratch, resume, nanogpt, gpt2, gpt2-medium, gpt2-large, gpt2-xl); scratch takes n_layer, n_head, n_embd, block_size, bias, dropout, gelu (erf|tanh), vocab_size; gpt2* take hf_dir, revision, block_size, dropout; resume takes checkpoint; nanogpt takes path (a ckpt.pt or its out_dir) and dropout";

pub fn params(spec: &StageSpec, p: &serde_json::Map<String, Value>) -> Result<Params> {
    let params: Params = typed(spec, p, HELP)?;
    let from = params.from;
    if (from == InitFrom::Nanogpt) != params.path.is_some() {
        return Err(match from {
            InitFrom::Nanogpt => err(
                spec.origin.clone(),
                "`from: nanogpt` needs `path`",
                Some("give nanoGPT's out_dir (e.g. `path: out-shakespeare-char`) or its ckpt.pt"),
            ),
            _ => err(
                spec.origin_of("path").clone(),
                format!("`path` only applies to `from: nanogpt`, not `from: {from}`"),
                Some("remove it"),
            ),
        });
    }
    let only_scratch = [
        ("n_layer", params.n_layer.is_some()),
        ("n_head", params.n_head.is_some()),
        ("n_embd", params.n_embd.is_some()),
        ("bias", params.bias.is_some()),
        ("gelu", params.gelu.is_some()),
        ("vocab_size", params.vocab_size.is_some()),
    ];
    if let Some((k, _)) = only_scratch
        .iter()
        .find(|x| x.1 && from != InitFrom::Scratch)
    {
        return Err(err(
            spec.origin_of(k).clone(),
            format!(
                "`{k}` only applies to `from: scratch` (the architecture comes from the weights)"
            ),
            Some("remove it"),
        ));
    }
    if matches!(from, InitFrom::Resume | InitFrom::Nanogpt) && params.block_size.is_some() {
        return Err(err(
            spec.origin_of("block_size").clone(),
            "`block_size` cannot change when resuming a checkpoint",
            Some("remove it (it only applies to scratch and to cropping gpt2 weights)"),
        ));
    }
    if from == InitFrom::Resume && params.checkpoint.is_none() {
        return Err(err(
            spec.origin.clone(),
            "`from: resume` needs `checkpoint`",
            Some("give an object hash (see `pipe show RUN_ID`) or RUN_ID/STAGE"),
        ));
    }
    if let Some(d) = params.dropout.filter(|d| !(0.0..1.0).contains(d)) {
        return Err(err(
            spec.origin_of("dropout").clone(),
            format!(
                "stage `{}`, field `dropout`: must be in [0, 1), found {d}",
                spec.name
            ),
            Some(HELP),
        ));
    }
    if from == InitFrom::Scratch {
        let config = scratch_config(&params, 1);
        if let Some((field, why)) = config.invalid_field() {
            return Err(err(
                spec.origin_of(field).clone(),
                format!("stage `{}`, field `{field}`: {why}", spec.name),
                Some(HELP),
            ));
        }
        // What remains is how fields go together (n_embd and n_head): located at the stage.
        config.validate().map_err(|e| {
            err(
                spec.origin.clone(),
                format!("stage `{}`: {e}", spec.name),
                Some(HELP),
            )
        })?;
    }
    Ok(params)
}

/// A `from: scratch` model's config, validated.
fn cfg_from(p: &Params, vocab: usize) -> Result<GptConfig> {
    let c = scratch_config(p, vocab);
    c.validate()?;
    Ok(c)
}

/// The model args with nanoGPT's defaults for those not given.
fn scratch_config(p: &Params, vocab: usize) -> GptConfig {
    GptConfig {
        n_layer: p.n_layer.unwrap_or(12),
        n_head: p.n_head.unwrap_or(12),
        n_embd: p.n_embd.unwrap_or(768),
        block_size: p.block_size.unwrap_or(1024),
        vocab_size: p.vocab_size.unwrap_or(vocab),
        bias: p.bias.unwrap_or(false),
        dropout: p.dropout.unwrap_or(0.0),
        gelu: p.gelu.unwrap_or(Gelu::Erf),
    }
}

/// The folder holding `name`'s config.json and model.safetensors.
fn find_hf_dir(base: &Path, p: &Params, downloads: Downloads) -> Result<PathBuf> {
    if let Some(d) = &p.hf_dir {
        let dir = resolve_path(base, d);
        if !dir.exists() {
            bail!("hf_dir {} does not exist", dir.display());
        }
        if !dir.join("config.json").exists() {
            bail!(
                "hf_dir {} has no config.json: it should be a Hugging Face model folder (config.json + model.safetensors)",
                dir.display()
            );
        }
        return Ok(dir);
    }
    let roots = hf_cache_roots();
    let revision = p.revision.as_deref().unwrap_or("main");
    // The Hub files OpenAI's models under openai-community/ (`gpt2` still redirects there).
    let names = [p.from.to_string(), format!("openai-community--{}", p.from)];
    for r in &roots {
        for name in &names {
            let snaps = r.join(format!("models--{name}")).join("snapshots");
            let Ok(rd) = std::fs::read_dir(&snaps) else {
                continue;
            };
            let mut dirs: Vec<PathBuf> = rd
                .filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|d| d.join("model.safetensors").exists())
                .collect();
            dirs.sort();
            // The requested revision if it is there, else the newest snapshot.
            if let Some(d) = dirs.iter().find(|d| d.ends_with(revision)).or(dirs.last()) {
                return Ok(d.clone());
            }
        }
    }
    if downloads == Downloads::Allowed {
        return download_hf(&roots[0], p.from.name(), revision);
    }
    bail!(
        "no {} weights found in the Hugging Face cache ({}).\n  help: `pipe run` downloads them (unless HF_HUB_OFFLINE=1); offline, fetch the `{}` folder (config.json + model.safetensors) where you have internet, e.g. `huggingface-cli download {} config.json model.safetensors --local-dir DIR`, then `--set STAGE.hf_dir=DIR`",
        p.from,
        roots
            .iter()
            .map(|r| r.display().to_string())
            .collect::<Vec<_>>()
            .join(", "),
        p.from,
        p.from
    )
}

/// Where the Hugging Face cache is: $HF_HUB_CACHE, $HF_HOME/hub, ~/.cache/huggingface/hub.
fn hf_cache_roots() -> Vec<PathBuf> {
    let mut roots = Vec::new();
    if let Ok(c) = std::env::var("HF_HUB_CACHE") {
        roots.push(PathBuf::from(c));
    }
    if let Ok(h) = std::env::var("HF_HOME") {
        roots.push(PathBuf::from(h).join("hub"));
    }
    if let Ok(h) = std::env::var("HOME") {
        roots.push(PathBuf::from(h).join(".cache/huggingface/hub"));
    }
    if roots.is_empty() {
        roots.push(PathBuf::from(".cache/huggingface/hub"));
    }
    roots
}

/// Downloads config.json and model.safetensors of `repo` at `revision` from the Hub ($HF_ENDPOINT,
/// default https://huggingface.co) into the Hugging Face cache layout, with curl (see
/// ARCHITECTURE.md: no HTTP/TLS crate stack for two downloads). Files appear atomically.
fn download_hf(root: &Path, repo: &str, revision: &str) -> Result<PathBuf> {
    if std::env::var("HF_HUB_OFFLINE").is_ok_and(|v| v == "1") {
        bail!(
            "no {repo} weights in the Hugging Face cache and HF_HUB_OFFLINE=1: give a local folder with --set STAGE.hf_dir=DIR"
        );
    }
    let endpoint = std::env::var("HF_ENDPOINT").unwrap_or_else(|_| "https://huggingface.co".into());
    let dir = root
        .join(format!("models--{repo}"))
        .join("snapshots")
        .join(revision);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    for file in ["config.json", "model.safetensors"] {
        let dest = dir.join(file);
        if dest.exists() {
            continue;
        }
        let url = format!(
            "{}/{repo}/resolve/{revision}/{file}",
            endpoint.trim_end_matches('/')
        );
        eprintln!("downloading {url}");
        let tmp = dir.join(format!(".{file}.partial"));
        if let Err(e) = super::download::fetch(&url, &tmp) {
            bail!(
                "{e:#}.\n  help: fetch the folder where you have internet (`huggingface-cli download {repo} config.json model.safetensors --local-dir DIR`) and pass --set STAGE.hf_dir=DIR"
            );
        }
        std::fs::rename(&tmp, &dest)?;
    }
    Ok(dir)
}

/// Resolves `checkpoint:` (object hash or prefix, or RUN_ID/STAGE) to an object hash.
pub fn resolve_checkpoint(store: &Store, s: &str) -> Result<Hash> {
    if let Some((run, stage)) = s.split_once('/') {
        let rec = RunRecord::load(store, run)?;
        let found = rec.events.iter().rev().find_map(|e| match e {
            RunEvent::StageFinished {
                stage: st, outputs, ..
            } if st == stage => outputs.get("ckpt").cloned(),
            RunEvent::Checkpoint {
                stage: st, hash, ..
            } if st == stage => Some(hash.clone()),
            _ => None,
        });
        let hash = found
            .with_context(|| format!("run {} has no checkpoint from stage `{stage}`", rec.id))?;
        if !store.has(&hash) {
            bail!(
                "the last checkpoint of run {} stage `{stage}` ({}) is no longer in the store: a later run of the same training superseded it (train keeps its latest `keep_checkpoints`), or `pipe gc` removed it; give a checkpoint hash from `pipe show` instead",
                rec.id,
                hash.short()
            );
        }
        return Ok(hash);
    }
    store.resolve_object(s)?.with_context(|| format!("no object {s:?} in the store {} (give a hash from `pipe show RUN_ID`, or RUN_ID/STAGE)", store.root.display()))
}

pub fn key_parts(
    store: &Store,
    base: &Path,
    spec: &StageSpec,
    params: &Params,
    downloads: Downloads,
) -> Result<(Value, Value)> {
    let mut params = params.clone();
    if params.from == InitFrom::Scratch {
        // Key the model args as used, so `n_layer: 12` and an omitted n_layer are the same model.
        params.n_layer = Some(params.n_layer.unwrap_or(12));
        params.n_head = Some(params.n_head.unwrap_or(12));
        params.n_embd = Some(params.n_embd.unwrap_or(768));
        params.block_size = Some(params.block_size.unwrap_or(1024));
        params.bias = Some(params.bias.unwrap_or(false));
        params.dropout = Some(params.dropout.unwrap_or(0.0));
        params.gelu = Some(params.gelu.unwrap_or(Gelu::Erf));
    }
    let mut v = serde_json::to_value(&params)?;
    let obj = v.as_object_mut().expect("object");
    obj.remove("hf_dir"); // where the weights are is not what they are: hashed below
    obj.remove("checkpoint");
    obj.remove("revision"); // the downloaded files are keyed by content below
    obj.remove("path"); // where a ckpt.pt lies is not what it is: hashed below
    if params.from != InitFrom::Scratch {
        obj.remove("seed");
    }
    let sources = match params.from {
        InitFrom::Scratch => Value::Null,
        InitFrom::Nanogpt => {
            let at = spec.origin_of("path").clone();
            let file = nanogpt::read::find_ckpt(&resolve_path(
                base,
                params.path.as_deref().expect("checked"),
            ))
            .map_err(|e| err(at.clone(), e.to_string(), None))?;
            let hash = Store::hash_file(&file).map_err(|e| err(at, format!("{e:#}"), None))?;
            json!({ "ckpt.pt": hash })
        }
        InitFrom::Resume => {
            json!({ "checkpoint": resolve_checkpoint(store, params.checkpoint.as_deref().expect("checked")).map_err(|e| err(spec.origin_of("checkpoint").clone(), e.to_string(), None))? })
        }
        _ => {
            let dir = find_hf_dir(base, &params, downloads)
                .map_err(|e| err(spec.origin_of("from").clone(), e.to_string(), None))?;
            // Streamed: the weights may be larger than memory.
            let h = |f: &str| Store::hash_file(&dir.join(f));
            json!({ "config.json": h("config.json")?, "model.safetensors": h("model.safetensors")? })
        }
    };
    Ok((v, sources))
}

pub fn execute(ctx: &Ctx, p: &Params) -> Result<Produced> {
    // Each branch streams its checkpoint into the store.
    let mut w = ctx.store.writer()?;
    let mut nano = None;
    let config = match p.from {
        InitFrom::Scratch => {
            let vocab = match (p.vocab_size, ctx.data_input()) {
                (Some(v), _) => v,
                (None, Some(d)) => read_meta(ctx.store, d)?.vocab_size,
                (None, None) => 50304, // nanoGPT's default: GPT-2's 50257 padded up
            };
            let config = cfg_from(p, vocab)?;
            // Refuse sizes this machine cannot hold before allocating them.
            check_host(&config, Work::Load, Device::Cpu)?;
            let model = Gpt::new_random(config, p.seed)?;
            ctx.ui.say(&format!(
                "{}: new model, {:.2}M parameters",
                ctx.spec.name,
                model.layout.num_params_non_embedding() as f64 / 1e6
            ));
            write_model(&model.config, &model.params, &mut w)?;
            model.config
        }
        InitFrom::Resume => {
            // The checkpoint the key names (RUN_ID/STAGE may point elsewhere by now).
            let hash = match ctx.sources["checkpoint"].as_str() {
                Some(h) => Hash::parse(h).map_err(anyhow::Error::msg)?,
                None => resolve_checkpoint(ctx.store, p.checkpoint.as_deref().expect("checked"))?,
            };
            // Copied tensor by tensor from the map: the state is never decoded or held.
            with_checkpoint(ctx.store, &hash, |f| {
                let mut config = f.config.clone();
                if let Some(d) = p.dropout {
                    config.dropout = d;
                }
                f.rewrite(&config, &mut w)?;
                Ok(config)
            })?
        }
        InitFrom::Nanogpt => {
            let path = resolve_path(&ctx.base_dir, p.path.as_deref().expect("checked"));
            let ck = NanoCheckpoint::open(&path)?;
            // The content the key was computed from (absent only for a hand-made Ctx).
            if let Some(expect) = ctx.sources["ckpt.pt"].as_str() {
                let now = Store::hash_file(&ck.path)?;
                anyhow::ensure!(
                    now.to_string() == expect,
                    "{} changed while the run was planned: run again",
                    ck.path.display()
                );
            }
            check_host(&ck.config, Work::Load, Device::Cpu)?;
            ctx.ui.say(&format!(
                "{}: nanoGPT checkpoint {} ({} layers, n_embd {}, vocab {}){}",
                ctx.spec.name,
                ck.path.display(),
                ck.config.n_layer,
                ck.config.n_embd,
                ck.config.vocab_size,
                match (&ck.optimizer, ck.iter_num) {
                    (Some(_), Some(i)) => format!(", continuing at iter {i}"),
                    _ => ", weights only".to_string(),
                }
            ));
            nano = Some((ck.iter_num, ck.optimizer.is_some()));
            ck.write_pipe(p.dropout, &mut w)?
        }
        _ => {
            // Found (or downloaded) already when the stage's key was worked out.
            let dir = find_hf_dir(&ctx.base_dir, p, Downloads::Allowed)?;
            ctx.ui.say(&format!(
                "{}: loading {} weights from {}",
                ctx.spec.name,
                p.from,
                dir.display()
            ));
            // The content the key was computed from (absent only for a hand-made Ctx).
            let expect = ctx.sources["model.safetensors"].as_str();
            let model = hf::load_hf(&dir, p.block_size, expect)?;
            let mut config = model.config.clone();
            if let Some(d) = p.dropout {
                config.dropout = d;
            }
            write_model(&config, &model.params, &mut w)?;
            config
        }
    };
    let hash = w.commit()?;
    let n = crate::gpt::params::ParamLayout::new(&config).total;
    let mut metrics = json!({ "parameters": n, "from": p.from, "model_args": config });
    if let Some((iter_num, optimizer)) = nano {
        metrics["iter_num"] = json!(iter_num);
        metrics["optimizer"] = json!(optimizer);
    }
    Ok(Produced {
        outputs: crate::store::outputs([("ckpt", hash)]),
        metrics,
        resumed: false,
    })
}

/// Writes a checkpoint of weights only (no optimiser state, no progress).
fn write_model(config: &GptConfig, params: &[f32], w: &mut dyn std::io::Write) -> Result<()> {
    CheckpointRef {
        config,
        params,
        optimizer: None,
        progress: None,
    }
    .write_to(w)?;
    Ok(())
}
