//! The built-in stage kinds. Each kind has typed parameters (validated before anything runs, with
//! errors pointing into the manifest), a function giving the parts of its key, and `execute`.

pub mod command;
pub mod download;
pub mod evaluate;
pub mod export;
pub mod init;
pub mod prepare;
pub mod sample;
pub mod train;

use crate::error::err;
use crate::gpt::checkpoint::{Checkpoint, CheckpointFile, Parts};
use crate::manifest::{Defaults, Manifest, StageKind, StageSpec};
use crate::run::{RunEvent, RunLog};
use crate::store::{Hash, Key, Mapped, Outputs, Store};
use crate::ui::Ui;
use anyhow::{Context, Result};
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::path::PathBuf;

/// Whether working out a stage's key may download what it names (GPT-2 weights into the Hugging
/// Face cache): `pipe run`, `resume` and a Slurm job's `run-stage` may; `status` never does.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Downloads {
    #[default]
    Never,
    Allowed,
}

/// A stage's key parts: its typed parameters as canonical JSON, and the content hashes of what it
/// reads from outside the store.
pub type KeyParts = (Value, Value);

/// A finished upstream stage, as seen by the stages that need it.
#[derive(Clone, Debug)]
pub struct Input {
    pub stage: String,
    pub kind: StageKind,
    pub outputs: Outputs,
}

impl Input {
    pub fn output(&self, name: &str) -> Result<&Hash> {
        self.outputs
            .get(name)
            .with_context(|| format!("stage `{}` has no output `{name}`", self.stage))
    }
}

/// What a stage produced.
#[derive(Clone, Debug, Default)]
pub struct Produced {
    pub outputs: Outputs,
    pub metrics: Value,
    /// Continued from a checkpoint of an earlier, interrupted attempt.
    pub resumed: bool,
}

/// Everything a stage's `execute` gets.
pub struct Ctx<'a> {
    pub store: &'a Store,
    /// Set when a sweep run with `--fail-fast` is cancelled: long stages stop at their next step.
    pub cancel: Option<&'a std::sync::atomic::AtomicBool>,
    pub run: &'a RunLog,
    pub spec: &'a StageSpec,
    pub defaults: &'a Defaults,
    pub base_dir: PathBuf,
    pub key: Key,
    /// Where a train stage keeps its progress record: `key` without its ranks (see
    /// `key::progress_key`); `key` for every other stage.
    pub progress_key: Key,
    /// The other data-parallel ranks, when there are any (see `crate::ranks`).
    pub ranks: Option<&'a crate::ranks::Ranks>,
    /// The `sources` part of the key: content hashes of what the stage reads from outside the store,
    /// taken when the key was computed. Stages check what they read against it, so outputs always
    /// match their key even if a file changes mid-run.
    pub sources: serde_json::Value,
    pub inputs: Vec<Input>,
    pub ui: &'a Ui,
}

impl Ctx<'_> {
    pub fn cancelled(&self) -> bool {
        self.cancel
            .is_some_and(|c| c.load(std::sync::atomic::Ordering::SeqCst))
    }

    /// The device (and matmul precision) the manifest asks for.
    /// The CPU engine's ISA path when this stage computes on the CPU (recorded in engine stages'
    /// metrics as `cpu_isa`: output bytes depend on it, see gpt/isa.rs); none on a GPU.
    pub fn cpu_isa(&self) -> Option<&'static str> {
        (!self.device().is_cuda()).then(|| crate::gpt::isa::Isa::active().name())
    }

    pub fn device(&self) -> crate::gpt::device::Device {
        self.defaults.device
    }

    pub fn log(&self, ev: RunEvent) -> Result<()> {
        self.run.append(&ev)
    }

    /// The upstream stage providing data (a `prepare` stage).
    pub fn data_input(&self) -> Option<&Input> {
        self.inputs.iter().find(|i| i.kind == StageKind::Prepare)
    }

    /// The upstream stage providing a model checkpoint (`init` or `train`).
    pub fn model_input(&self) -> Option<&Input> {
        self.inputs
            .iter()
            .find(|i| matches!(i.kind, StageKind::Init | StageKind::Train))
    }
}

/// Parses a stage's parameters into `T`, pointing errors at the offending manifest line.
pub fn typed<T: DeserializeOwned>(
    spec: &StageSpec,
    params: &serde_json::Map<String, Value>,
    help: &str,
) -> Result<T> {
    let v = Value::Object(params.clone());
    serde_path_to_error::deserialize(v).map_err(|e| {
        let path = e.path().to_string();
        let first = path.split(['.', '[']).next().unwrap_or("").to_string();
        let inner = plain_type_names(&e.into_inner().to_string());
        let origin = spec.origin_of(&first).clone();
        let what = if first.is_empty() || first == "?" {
            format!("stage `{}`: {inner}", spec.name)
        } else {
            format!("stage `{}`, field `{path}`: {inner}", spec.name)
        };
        err(origin, what, Some(help))
    })
}

/// serde names Rust types ("expected usize"); a manifest's author thinks in YAML values. A whole
/// number too large for 64 bits reaches serde as a float (YAML reads it so): said as too large.
fn plain_type_names(msg: &str) -> String {
    let whole = [
        ("expected usize", u64::MAX),
        ("expected u64", u64::MAX),
        ("expected u32", u64::from(u32::MAX)),
    ];
    for (rust, max) in whole {
        if let Some(rest) = msg.strip_prefix("invalid type: floating point `")
            && let Some((value, tail)) = rest.split_once('`')
            && tail.trim() == format!(", {rust}")
            && let Ok(v) = value.parse::<f64>()
            && v.fract() == 0.0
            && v > max as f64
        {
            return format!("{v:.0} is too large: expected a whole number of at most {max}");
        }
    }
    [
        ("expected usize", "expected a whole number (0 or more)"),
        ("expected u64", "expected a whole number (0 or more)"),
        ("expected u32", "expected a whole number (0 or more)"),
        ("expected f64", "expected a number"),
        ("expected f32", "expected a number"),
    ]
    .iter()
    .fold(msg.to_string(), |m, (rust, plain)| m.replace(rust, plain))
}

/// Role of each `needs` entry, checked against what the kind requires.
pub fn check_needs(m: &Manifest, spec: &StageSpec) -> Result<()> {
    let kinds: Vec<StageKind> = spec
        .needs
        .iter()
        .filter_map(|n| m.stage(n))
        .map(|s| s.kind)
        .collect();
    let data = kinds.iter().filter(|k| **k == StageKind::Prepare).count();
    let model = kinds
        .iter()
        .filter(|k| matches!(k, StageKind::Init | StageKind::Train))
        .count();
    let o = spec.origin_of("needs").clone();
    let need = |what: &str, n: usize, min: usize, max: usize| -> Result<()> {
        if n < min {
            return Err(err(
                o.clone(),
                format!(
                    "stage `{}` ({}) needs a {what} stage",
                    spec.name,
                    spec.kind.name()
                ),
                Some(&format!(
                    "add one to `needs` ({})",
                    if what == "data" {
                        "a prepare stage"
                    } else {
                        "an init or train stage"
                    }
                )),
            ));
        }
        if n > max {
            return Err(err(
                o.clone(),
                format!(
                    "stage `{}` ({}) needs at most {max} {what} stage(s), found {n}",
                    spec.name,
                    spec.kind.name()
                ),
                Some("keep one in `needs`"),
            ));
        }
        Ok(())
    };
    match spec.kind {
        StageKind::Prepare => {
            need("data", data, 0, 0)?;
            need("model", model, 0, 0)
        }
        StageKind::Init => {
            need("data", data, 0, 1)?;
            need("model", model, 0, 1)
        }
        StageKind::Train | StageKind::Evaluate => {
            need("model", model, 1, 1)?;
            need(
                "data",
                data,
                if spec.kind == StageKind::Train { 1 } else { 0 },
                1,
            )
        }
        StageKind::Sample | StageKind::Export => {
            need("model", model, 1, 1)?;
            need("data", data, 0, 1)
        }
        StageKind::Command => Ok(()),
    }
}

/// The names of the outputs a stage produces (what `needs` consumers see).
pub fn output_names(spec: &StageSpec) -> Vec<String> {
    match spec.kind.fixed_outputs() {
        Some(fixed) => fixed.iter().map(|s| s.to_string()).collect(),
        None => command::params(spec, &spec.params)
            .map(|p| p.outs.into_iter().map(String::from).collect())
            .unwrap_or_default(),
    }
}

/// Why the object `hash` cannot be a built-in stage's output `name`, if it cannot: a record
/// pulled from a remote may point an output at any object there (say, a checkpoint's name at a
/// token file), and the stage reading it would then fail on every run. A cheap look at the
/// format: JSON that parses, an even number of token bytes, a checkpoint or safetensors header
/// that reads, UTF-8 text. A command's outputs are any bytes.
pub fn output_problem(store: &Store, name: &str, hash: &Hash) -> Option<String> {
    let small = || -> Result<Vec<u8>> {
        let size = std::fs::metadata(store.object_path(hash))?.len();
        anyhow::ensure!(size <= 64 << 20, "{size} bytes");
        store.get(hash)
    };
    let check = || -> Result<()> {
        match name {
            "meta.json" | "metrics.json" | "config.json" => {
                serde_json::from_slice::<Value>(&small()?)?;
            }
            "samples.txt" | "loss.svg" => {
                String::from_utf8(small()?)?;
            }
            "train.bin" | "val.bin" => {
                map_tokens(store, hash)?;
            }
            "ckpt" => with_checkpoint(store, hash, |_| Ok(()))?,
            "model.safetensors" => {
                let map = store.map(hash)?;
                safetensors::SafeTensors::read_metadata(map.bytes())?;
            }
            _ => {}
        }
        Ok(())
    };
    check()
        .err()
        .map(|e| format!("its `{name}` ({}) is not one: {e:#}", hash.short()))
}

/// A stage's parameters, typed once when the plan is built (`parse`); key parts, `execute` and
/// `status` read them from the plan.
#[derive(Clone, Debug)]
pub enum Params {
    Prepare(prepare::Params),
    Init(init::Params),
    Train(train::Params),
    Evaluate(evaluate::Params),
    Sample(sample::Params),
    Export(export::Params),
    Command(command::Params),
}

/// Types and checks a stage's parameters (with the manifest's defaults) and its `needs`. No I/O.
pub fn parse(m: &Manifest, spec: &StageSpec) -> Result<Params> {
    check_needs(m, spec)?;
    let p = with_defaults(spec, &m.defaults);
    Ok(match spec.kind {
        StageKind::Prepare => Params::Prepare(prepare::params(spec, &p)?),
        StageKind::Init => Params::Init(init::params(spec, &p)?),
        StageKind::Train => Params::Train(train::params(spec, &p)?),
        StageKind::Evaluate => Params::Evaluate(evaluate::params(spec, &p)?),
        StageKind::Sample => Params::Sample(sample::params(spec, &p)?),
        StageKind::Export => Params::Export(export::params(spec, &p)?),
        StageKind::Command => {
            let params = command::params(spec, &p)?;
            command::check_input_names(m, spec)?;
            Params::Command(params)
        }
    })
}

/// Parameters with the manifest's `seed` default filled in for the kinds that take one.
pub fn with_defaults(spec: &StageSpec, d: &Defaults) -> serde_json::Map<String, Value> {
    let mut p = spec.params.clone();
    if matches!(
        spec.kind,
        StageKind::Init | StageKind::Train | StageKind::Evaluate | StageKind::Sample
    ) && !p.contains_key("seed")
    {
        p.insert("seed".into(), Value::from(d.seed));
    }
    p
}

/// The (params, sources) parts of the key: typed parameters as canonical JSON and content hashes of
/// what the stage reads from outside the store.
pub fn key_parts(
    store: &Store,
    m: &Manifest,
    spec: &StageSpec,
    params: &Params,
    downloads: Downloads,
) -> Result<KeyParts> {
    Ok(match params {
        Params::Prepare(p) => prepare::key_parts(&m.base_dir, spec, p)?,
        Params::Init(p) => init::key_parts(store, &m.base_dir, spec, p, downloads)?,
        Params::Train(p) => train::key_parts(m, spec, p)?,
        Params::Evaluate(p) => {
            let sources = file_source(&m.base_dir, spec, "text", p.text.as_deref())?;
            (serde_json::to_value(p)?, sources)
        }
        Params::Sample(p) => sample::key_parts(&m.base_dir, spec, p)?,
        Params::Export(p) => (p.key_view(&m.base_dir), Value::Null),
        Params::Command(p) => command::key_parts(&m.base_dir, spec, p)?,
    })
}

/// What a stage does when its result is reused (cached or pulled) instead of computed: an export
/// writes its copy again, a sample stage shows its samples as a fresh run does.
pub fn reused(
    store: &Store,
    m: &Manifest,
    params: &Params,
    outputs: &Outputs,
    ui: &Ui,
) -> Result<()> {
    match params {
        Params::Export(p) => export::restore_copy(store, m, p, outputs),
        Params::Sample(_) => sample::show_again(store, outputs, ui),
        _ => Ok(()),
    }
}

pub fn execute(ctx: &Ctx, params: &Params) -> Result<Produced> {
    match params {
        Params::Prepare(p) => prepare::execute(ctx, p),
        Params::Init(p) => init::execute(ctx, p),
        Params::Train(p) => train::execute(ctx, p),
        Params::Evaluate(p) => evaluate::execute(ctx, p),
        Params::Sample(p) => sample::execute(ctx, p),
        Params::Export(p) => export::execute(ctx, p),
        Params::Command(p) => command::execute(ctx, p),
    }
}

/// A token stream written by `prepare` (uint16 little-endian, like nanoGPT's .bin), memory-mapped:
/// `Mapped::tokens` reads it in place, so memory does not grow with the data set (nanoGPT's
/// np.memmap). Only the pages a batch touches are read.
pub fn map_tokens(store: &Store, hash: &Hash) -> Result<Mapped> {
    let map = store.map(hash)?;
    map.tokens()
        .with_context(|| format!("token object {}", hash.short()))?;
    Ok(map)
}

/// The tokenizer of a prepared data set.
pub fn read_meta(store: &Store, data: &Input) -> Result<prepare::Meta> {
    let bytes = store.get(data.output("meta.json")?)?;
    serde_json::from_slice(&bytes).context("reading the data's meta.json")
}

/// Reads the checkpoint object `hash` through its memory map: `f` gets the parsed header (config,
/// progress) and reads the tensors it needs, each straight into its destination; the mapped pages
/// of a tensor are dropped once it has been read, so loading holds the state once, never the file
/// as well.
pub fn with_checkpoint<T>(
    store: &Store,
    hash: &Hash,
    f: impl FnOnce(&CheckpointFile) -> Result<T>,
) -> Result<T> {
    let map = store.map(hash)?;
    let file = CheckpointFile::parse(map.bytes())
        .with_context(|| format!("reading checkpoint {}", hash.short()))?
        .releasing(|r| map.release(r));
    f(&file)
}

/// The checkpoint of the upstream init/train stage that provides the model.
pub fn model_checkpoint<'c>(ctx: &'c Ctx) -> Result<(&'c Input, &'c Hash)> {
    let input = ctx.model_input().context("no model input")?;
    Ok((input, input.output("ckpt")?))
}

/// Loads the model checkpoint of an upstream init/train stage (`Parts::Model`: without the AdamW
/// moments, which only training reads).
pub fn load_model(ctx: &Ctx, parts: Parts) -> Result<Checkpoint> {
    let (input, hash) = model_checkpoint(ctx)?;
    with_checkpoint(ctx.store, hash, |f| f.load(parts))
        .with_context(|| format!("reading the checkpoint from stage `{}`", input.stage))
}

/// For a `FILE:path` parameter, the file's content hash (the key depends on the text, not the path).
pub fn file_source(
    base: &std::path::Path,
    spec: &StageSpec,
    field: &str,
    value: Option<&str>,
) -> Result<Value> {
    let Some(path) = value.and_then(|v| v.strip_prefix("FILE:")) else {
        return Ok(Value::Null);
    };
    let full = resolve_path(base, path);
    let bytes = read_input_file(&full).map_err(|e| {
        err(
            spec.origin_of(field).clone(),
            format!("cannot read {}: {e}", full.display()),
            Some("FILE: paths in a manifest are relative to its folder; given with --set, to the current directory"),
        )
    })?;
    Ok(serde_json::json!({ format!("{field}_file"): blake3::hash(&bytes).to_hex().to_string() }))
}

/// A small file the manifest names (a `FILE:` value, a command's `deps`), read whole: only a
/// regular file, opened without blocking (a FIFO would hang `run` and `status`; /dev/zero never
/// ends).
pub fn read_input_file(path: &std::path::Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let (f, len) = crate::store::open_regular(path)?;
    let mut bytes = Vec::with_capacity(len as usize);
    f.take(len).read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// Resolves a path from the manifest: relative paths are relative to the manifest's folder.
pub fn resolve_path(base: &std::path::Path, p: &str) -> PathBuf {
    let path = PathBuf::from(p);
    if path.is_absolute() {
        path
    } else {
        base.join(path)
    }
}
