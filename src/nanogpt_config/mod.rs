//! `pipe import nanogpt CONFIG.py [--key=value ...]`: the manifest equivalent to
//! `python train.py CONFIG.py --key=value ...`. As configurator.py does: start from train.py's
//! globals ([`train_py_defaults`]), apply each config file and `--key=value` in order (a
//! `--key=value` must keep the key's type, as configurator.py asserts). Config files are read as
//! data ([`python`]), never executed. Then every global maps to a stage field, or to a note in the
//! manifest's header saying why it has no counterpart.

pub mod python;

use crate::error::{Origin, err};
use crate::gpt::nanogpt::pickle::Py;
use crate::gpt::nanogpt::train_py_defaults;
use anyhow::{Context, Result};
use python::{literal, type_name};
use std::fmt::Write as _;
use std::path::Path;

/// tiny Shakespeare, the text nanoGPT's data/shakespeare*/prepare.py download.
const SHAKESPEARE_URL: &str =
    "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt";
const SHAKESPEARE_SHA256: &str = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed";

/// train.py's globals as configured: names in train.py's order, each with its value.
struct Globals(Vec<(&'static str, Py)>);

impl Globals {
    fn get(&self, k: &str) -> Option<&Py> {
        self.0.iter().find(|(n, _)| *n == k).map(|(_, v)| v)
    }
    fn slot(&mut self, k: &str) -> Option<&mut Py> {
        self.0.iter_mut().find(|(n, _)| *n == k).map(|(_, v)| v)
    }
    fn keys(&self) -> String {
        self.0
            .iter()
            .map(|(k, _)| *k)
            .collect::<Vec<_>>()
            .join(", ")
    }
    fn str(&self, k: &str) -> &str {
        match self.get(k) {
            Some(Py::Str(s)) => s,
            _ => "",
        }
    }
    fn bool(&self, k: &str) -> bool {
        matches!(self.get(k), Some(Py::Bool(true)))
    }
}

/// What reading the arguments gave: the globals, and where each non-default came from.
struct Configured {
    globals: Globals,
    /// Per global set by a file or an override: the file and line, or `--key=value`.
    origin: Vec<(&'static str, Origin)>,
    command: String,
}

impl Configured {
    /// Where global `k` was set: its file and line, its `--key=value`, or train.py (a default).
    fn origin_of(&self, k: &str) -> Origin {
        self.origin.iter().find(|(n, _)| *n == k).map_or_else(
            || Origin {
                file: "train.py".into(),
                ..Origin::default()
            },
            |(_, o)| o.clone(),
        )
    }
}

/// The command line `args` (config files and `--key=value`, in order) as train.py would
/// configure itself, then as a manifest.
pub fn import(args: &[String]) -> Result<String> {
    let c = configure(args)?;
    manifest(&c)
}

fn configure(args: &[String]) -> Result<Configured> {
    let mut globals = Globals(train_py_defaults());
    let mut origin: Vec<(&'static str, Origin)> = Vec::new();
    let help_keys = format!("train.py's globals are: {}", globals.keys());
    for arg in args {
        if let Some(kv) = arg.strip_prefix("--") {
            let at = Origin {
                file: format!("--{kv}"),
                line: 0,
                col: 0,
            };
            let Some((key, text)) = kv.split_once('=') else {
                return Err(err(
                    at,
                    format!("`--{kv}` has no value"),
                    Some("write --key=value, as configurator.py takes it"),
                ));
            };
            let value = literal(text);
            let Some((name, slot)) = globals
                .0
                .iter_mut()
                .find(|(n, _)| *n == key)
                .map(|(n, v)| (*n, v))
            else {
                return Err(err(at, format!("unknown key `{key}`"), Some(&help_keys)));
            };
            if type_name(&value) != type_name(slot) {
                let hint = match (&*slot, &value) {
                    (Py::Float(_), Py::Int(i)) => format!("write --{key}={i}.0"),
                    (Py::Str(_), _) => format!("quote it: --{key}=\"'{text}'\""),
                    _ => format!("give {}", a(type_name(slot))),
                };
                return Err(err(
                    at,
                    format!(
                        "`--{key}={text}` is {}, but train.py's {key} is {}, and configurator.py refuses a change of type",
                        a(type_name(&value)),
                        a(type_name(slot))
                    ),
                    Some(&hint),
                ));
            }
            *slot = value;
            origin.retain(|(k, _)| *k != name);
            origin.push((
                name,
                Origin {
                    file: format!("--{key}"),
                    line: 0,
                    col: 0,
                },
            ));
            continue;
        }
        let path = Path::new(arg);
        let text = crate::store::read_bounded(path, 1 << 20)
            .with_context(|| format!("reading the config file {arg}"))?;
        let text = String::from_utf8(text).with_context(|| format!("{arg} is not UTF-8 text"))?;
        let located = |pos: python::Pos| Origin {
            file: arg.clone(),
            line: pos.line,
            col: pos.col,
        };
        let assignments = python::parse_file(&text).map_err(|e| {
            err(
                located(e.pos),
                e.message,
                Some("a nanoGPT config holds `name = value` lines only"),
            )
        })?;
        for a in assignments {
            let Some(name) = globals.0.iter().map(|(n, _)| *n).find(|n| *n == a.name) else {
                return Err(err(
                    located(a.pos),
                    format!("unknown key `{}`", a.name),
                    Some(&help_keys),
                ));
            };
            let value = python::eval(&a.value, a.value_pos, &|n| globals.get(n).cloned());
            let value = match value {
                Ok(v) => v,
                // W&B is not used, so its names need no value (finetune_shakespeare.py's run
                // name calls time.time()).
                Err(_) if name.starts_with("wandb_") => Py::str("(not read)"),
                Err(e) => return Err(err(located(e.pos), e.message, None)),
            };
            *globals.slot(name).expect("found above") = value;
            origin.retain(|(k, _)| *k != name);
            origin.push((name, located(a.pos)));
        }
    }
    let command = std::iter::once("pipe import nanogpt".to_string())
        .chain(args.iter().cloned())
        .collect::<Vec<_>>()
        .join(" ");
    Ok(Configured {
        globals,
        origin,
        command,
    })
}

/// "an int", "a float".
fn a(type_name: &str) -> String {
    match type_name {
        "int" => "an int".into(),
        "None" => "None".into(),
        t => format!("a {t}"),
    }
}

/// A global as a YAML scalar (floats always with a point or exponent, so YAML reads a float).
fn yaml(v: &Py) -> String {
    match v {
        Py::None => "null".into(),
        Py::Bool(b) => b.to_string(),
        Py::Int(i) => i.to_string(),
        Py::Float(f) => {
            // Rust's shortest round-trip form, with a point and a signed exponent (`6.0e-5`), which
            // every YAML reader takes for a float.
            let s = format!("{f:?}");
            match s.split_once('e') {
                None => s,
                Some((m, e)) => {
                    let m = if m.contains('.') {
                        m.to_string()
                    } else {
                        format!("{m}.0")
                    };
                    let e = if e.starts_with('-') {
                        e.to_string()
                    } else {
                        format!("+{e}")
                    };
                    format!("{m}e{e}")
                }
            }
        }
        Py::Str(s) => serde_json::to_string(s).expect("a string serialises"),
        _ => "null".into(),
    }
}

/// An integer global, checked (a float that is a whole number is accepted, as train.py would
/// use it).
fn count(c: &Configured, k: &str) -> Result<u64> {
    let bad = |v: &Py| {
        let msg = format!("`{k}` is {}, expected a non-negative whole number", yaml(v));
        err(c.origin_of(k), msg, None)
    };
    match c.globals.get(k) {
        Some(Py::Int(i)) if *i >= 0 => Ok(*i as u64),
        Some(Py::Float(f)) if *f >= 0.0 && f.fract() == 0.0 => Ok(*f as u64),
        Some(v) => Err(bad(v)),
        None => Err(bad(&Py::None)),
    }
}

fn float(c: &Configured, k: &str) -> Result<f64> {
    match c.globals.get(k) {
        Some(Py::Int(i)) => Ok(*i as f64),
        Some(Py::Float(f)) => Ok(*f),
        v => Err(err(
            c.origin_of(k),
            format!(
                "`{k}` is {}, expected a number",
                v.map_or("missing".into(), yaml)
            ),
            None,
        )),
    }
}

/// The manifest text.
fn manifest(c: &Configured) -> Result<String> {
    let g = &c.globals;
    let mut notes: Vec<String> = Vec::new();
    let name_of = |k: &str| g.str(k).to_string();

    // defaults: device and dtype.
    let device = match g.str("device") {
        "cpu" => "cpu",
        d if d == "cuda" || d.starts_with("cuda:") => "cuda",
        other => {
            return Err(err(
                c.origin_of("device"),
                format!("device `{other}`: pipe trains on cpu or cuda"),
                Some("pass --device=cpu or --device=cuda"),
            ));
        }
    };
    let dtype = match (device, g.str("dtype")) {
        ("cpu", d) => {
            if d != "float32" {
                notes.push(format!("dtype '{d}': on a CPU train.py computes in float32 (no autocast), and so does pipe."));
            }
            "float32"
        }
        (_, "float32") => "float32",
        (_, "bfloat16") => "bf16",
        (_, "float16") => {
            notes.push("dtype 'float16': pipe has no float16 with loss scaling; bf16 is the nearest (the same tensor cores, no GradScaler).".into());
            "bf16"
        }
        (_, other) => anyhow::bail!("dtype `{other}`: expected float32, bfloat16 or float16"),
    };

    // Notes for the globals with no counterpart.
    notes.push(format!(
        "out_dir '{}': pipe keeps every output in its store (`pipe show RUN_ID`); add an export stage with `format: nanogpt, to: DIR` for a ckpt.pt.",
        name_of("out_dir")
    ));
    if g.bool("wandb_log") {
        notes.push("wandb_log True: not used; pipe writes each run's curves to metrics.json, loss.svg and TensorBoard event files (`pipe compare`, `tensorboard --logdir`).".into());
    } else {
        notes.push("wandb_log, wandb_project, wandb_run_name: not used (pipe keeps its own curves: metrics.json, loss.svg, TensorBoard).".into());
    }
    if g.bool("compile") {
        notes.push("compile True: not needed; pipe's engine is compiled ahead of time.".into());
    }
    notes.push(format!(
        "backend '{}': this manifest trains in one process.",
        name_of("backend")
    ));

    let mut y = String::new();
    writeln!(y, "# Generated by `{}`:", c.command)?;
    writeln!(
        y,
        "# train.py's defaults, then the config files and --key=value overrides in order, as configurator.py applies them."
    )?;
    let dataset = name_of("dataset");
    let init_from = name_of("init_from");
    let eval_only = g.bool("eval_only");
    let char_level = dataset.ends_with("_char");
    let mut stages = String::new();

    // data
    writeln!(stages, "  data:\n    kind: prepare")?;
    match dataset.as_str() {
        "shakespeare_char" | "shakespeare" => {
            let what = if char_level {
                "data/shakespeare_char/prepare.py"
            } else {
                "data/shakespeare/prepare.py"
            };
            writeln!(
                stages,
                "    # nanoGPT's {what}: tiny Shakespeare, 90/10 split. The local copy its prepare.py downloads wins\n    # when it is there; otherwise the pinned url is fetched once."
            )?;
            writeln!(stages, "    path: data/{dataset}/input.txt")?;
            writeln!(
                stages,
                "    url: {SHAKESPEARE_URL}\n    sha256: {SHAKESPEARE_SHA256}"
            )?;
            writeln!(
                stages,
                "    tokenizer: {}\n    val_fraction: 0.1",
                if char_level { "char" } else { "gpt2" }
            )?;
        }
        "openwebtext" => {
            writeln!(
                stages,
                "    # nanoGPT's data/openwebtext/prepare.py: GPT-2 BPE over OpenWebText, 0.05% of the documents held out\n    # (seed 2357). Download the Parquet files first:\n    #   huggingface-cli download --repo-type dataset Skylion007/openwebtext --include \"plain_text/*\" --local-dir openwebtext"
            )?;
            writeln!(
                stages,
                "    path: openwebtext/plain_text/*.parquet\n    tokenizer: gpt2\n    val_fraction: 0.0005\n    seed: 2357"
            )?;
        }
        other => {
            notes.push(format!("dataset '{other}' is not one of nanoGPT's (shakespeare_char, shakespeare, openwebtext): the data stage reads data/{other}/input.txt with {} tokenizer; point `path` at the text your prepare.py tokenized (a file, folder, glob, JSONL or Parquet).", if char_level { "the char" } else { "GPT-2's" }));
            writeln!(
                stages,
                "    path: data/{other}/input.txt\n    tokenizer: {}\n    val_fraction: 0.1",
                if char_level { "char" } else { "gpt2" }
            )?;
        }
    }

    // model
    let dropout = float(c, "dropout")?;
    writeln!(stages, "  model:\n    kind: init")?;
    match init_from.as_str() {
        "scratch" => {
            writeln!(stages, "    needs: [data]\n    from: scratch")?;
            for k in ["n_layer", "n_head", "n_embd", "block_size"] {
                writeln!(stages, "    {k}: {}", count(c, k)?)?;
            }
            writeln!(
                stages,
                "    bias: {}\n    dropout: {}",
                g.bool("bias"),
                yaml(&Py::Float(dropout))
            )?;
            if !char_level {
                writeln!(
                    stages,
                    "    # train.py's vocabulary without a meta.pkl: GPT-2's 50257 padded to 50304.\n    vocab_size: 50304"
                )?;
            }
        }
        "resume" => {
            writeln!(
                stages,
                "    # train.py --init_from=resume: out_dir's ckpt.pt, its optimizer state and iter_num."
            )?;
            writeln!(
                stages,
                "    from: nanogpt\n    path: {}\n    dropout: {}",
                yaml(&Py::str(&name_of("out_dir"))),
                yaml(&Py::Float(dropout))
            )?;
        }
        m if ["gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl"].contains(&m) => {
            writeln!(
                stages,
                "    from: {m}\n    dropout: {}",
                yaml(&Py::Float(dropout))
            )?;
            let bs = count(c, "block_size")?;
            if bs < 1024 {
                writeln!(
                    stages,
                    "    block_size: {bs}   # crop_block_size, as train.py does"
                )?;
            }
            notes.push(format!("init_from '{m}': the weights come from the Hugging Face cache (downloaded on first use), or --set model.hf_dir=DIR."));
        }
        other => {
            return Err(err(
                c.origin_of("init_from"),
                format!("init_from `{other}` is not one of train.py's"),
                Some("expected scratch, resume, gpt2, gpt2-medium, gpt2-large or gpt2-xl"),
            ));
        }
    }
    if init_from != "scratch" {
        let ignored: Vec<&str> = ["n_layer", "n_head", "n_embd", "bias"]
            .into_iter()
            .filter(|k| c.origin.iter().any(|(n, _)| n == k))
            .collect();
        if !ignored.is_empty() {
            notes.push(format!("{}: set, but with init_from '{init_from}' train.py takes them from the weights, and so does pipe.", ignored.join(", ")));
        }
    }

    if eval_only {
        writeln!(
            stages,
            "  evaluate:\n    # eval_only: train.py estimates the loss at iter 0 and stops.\n    kind: evaluate\n    needs: [model, data]"
        )?;
        writeln!(
            stages,
            "    batch_size: {}\n    eval_iters: {}",
            count(c, "batch_size")?,
            count(c, "eval_iters")?
        )?;
    } else {
        writeln!(
            stages,
            "  train:\n    kind: train\n    needs: [model, data]"
        )?;
        for k in ["max_iters", "eval_interval", "eval_iters", "log_interval"] {
            writeln!(stages, "    {k}: {}", count(c, k)?)?;
        }
        writeln!(
            stages,
            "    always_save_checkpoint: {}",
            g.bool("always_save_checkpoint")
        )?;
        writeln!(stages, "    batch_size: {}", count(c, "batch_size")?)?;
        writeln!(
            stages,
            "    gradient_accumulation_steps: {}",
            count(c, "gradient_accumulation_steps")?
        )?;
        writeln!(
            stages,
            "    learning_rate: {}",
            yaml(&Py::Float(float(c, "learning_rate")?))
        )?;
        writeln!(stages, "    decay_lr: {}", g.bool("decay_lr"))?;
        writeln!(stages, "    warmup_iters: {}", count(c, "warmup_iters")?)?;
        writeln!(
            stages,
            "    lr_decay_iters: {}",
            count(c, "lr_decay_iters")?
        )?;
        for k in ["min_lr", "weight_decay", "beta1", "beta2", "grad_clip"] {
            writeln!(stages, "    {k}: {}", yaml(&Py::Float(float(c, k)?)))?;
        }
    }

    writeln!(y, "# What has no counterpart:")?;
    for n in &notes {
        writeln!(y, "# - {n}")?;
    }
    let name: String = Path::new(&name_of("out_dir"))
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .filter(|n| !n.is_empty() && n != "out")
        .unwrap_or_else(|| format!("nanogpt_{dataset}"))
        .chars()
        .map(|ch| {
            if ch.is_ascii_alphanumeric() || ch == '_' || ch == '-' {
                ch
            } else {
                '_'
            }
        })
        .collect();
    writeln!(y, "name: {name}")?;
    writeln!(
        y,
        "defaults:\n  device: {device}\n  dtype: {dtype}\n  seed: 1337   # train.py's torch.manual_seed(1337)"
    )?;
    writeln!(y, "stages:")?;
    y.push_str(&stages);
    Ok(y)
}
