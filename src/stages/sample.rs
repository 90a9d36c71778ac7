//! `sample`: nanoGPT's sample.py. `start` is the prompt (or `FILE:prompt.txt`); writes
//! `samples.txt` (samples separated by nanoGPT's dashed line) and prints them. `temperature` divides
//! the logits (1 keeps them; lower is more conservative); `temperature: 0` samples greedily, always
//! the most likely token (argmax), and a negative one is refused. `top_k` keeps the k most likely
//! tokens (leave it out, or null, for all).

use super::evaluate::{text_arg, tokenizer_for};
use super::{Ctx, Produced, model_checkpoint, typed, with_checkpoint};
use crate::error::err;
use crate::gpt::device::check_host;
use crate::gpt::engine::Engine;
use crate::gpt::memory::Work;
use crate::gpt::sample::SampleConfig;
use crate::gpt::train::beyond_ceiling;
use crate::manifest::StageSpec;
use anyhow::{Context, Result, ensure};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::path::Path;
use std::time::Instant;

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Params {
    #[serde(default = "default_start")]
    pub start: String,
    #[serde(default = "default_num_samples")]
    pub num_samples: usize,
    #[serde(default = "default_max_new_tokens")]
    pub max_new_tokens: usize,
    #[serde(default = "default_temperature")]
    pub temperature: f64,
    #[serde(default = "default_top_k")]
    pub top_k: Option<usize>,
    pub seed: u64,
}

fn default_start() -> String {
    "\n".into()
}
fn default_num_samples() -> usize {
    10
}
fn default_max_new_tokens() -> usize {
    500
}
fn default_temperature() -> f64 {
    0.8
}
fn default_top_k() -> Option<usize> {
    Some(200)
}

const HELP: &str =
    "sample takes start (text or FILE:path), num_samples, max_new_tokens, temperature, top_k, seed";

pub fn params(spec: &StageSpec, p: &serde_json::Map<String, Value>) -> Result<Params> {
    let params: Params = typed(spec, p, HELP)?;
    match invalid_field(&params) {
        Some((field, why)) => Err(err(
            spec.origin_of(field).clone(),
            format!("stage `{}`, field `{field}`: {why}", spec.name),
            Some(HELP),
        )),
        None => Ok(params),
    }
}

/// The first parameter that sampling cannot use, and why.
fn invalid_field(p: &Params) -> Option<(&'static str, String)> {
    // Checked as the f32 sampling uses: 1e300 is a finite f64 but an infinite f32.
    if !((p.temperature as f32).is_finite() && p.temperature >= 0.0) {
        let why = format!(
            "must be a finite number >= 0 (0 samples greedily) that fits a 32-bit float (at most {:e}), found {:e}",
            f32::MAX,
            p.temperature
        );
        return Some(("temperature", why));
    }
    if p.top_k == Some(0) {
        let why = "must be at least 1 (leave it out, or null, to keep every token)";
        return Some(("top_k", why.into()));
    }
    if p.num_samples == 0 {
        return Some(("num_samples", "must be at least 1".into()));
    }
    for (field, v, max) in [
        ("num_samples", p.num_samples, MAX_SAMPLES),
        ("max_new_tokens", p.max_new_tokens, MAX_NEW_TOKENS),
    ] {
        if v > max {
            return Some((field, beyond_ceiling(v as u64, max as u64)));
        }
    }
    None
}

/// Sampling's ceilings (see `train`'s): nanoGPT's sample.py makes 10 samples of 500 tokens.
const MAX_SAMPLES: usize = 100_000;
const MAX_NEW_TOKENS: usize = 1_000_000;

/// A prompt file is part of the key by content.
pub fn key_parts(base: &Path, spec: &StageSpec, params: &Params) -> Result<(Value, Value)> {
    let sources = super::file_source(base, spec, "start", Some(&params.start))?;
    Ok((serde_json::to_value(params)?, sources))
}

pub const SEPARATOR: &str = "\n---------------\n";

pub fn execute(ctx: &Ctx, p: &Params) -> Result<Produced> {
    let device = ctx.device();
    // The CPU runs a sample per thread at a time, each with its own KV cache.
    let parallel = p.num_samples.min(rayon::current_num_threads());
    let (input, hash) = model_checkpoint(ctx)?;
    // The weights only, straight from the checkpoint's memory map into the device's buffer.
    let (config, mut model) = with_checkpoint(ctx.store, hash, |f| {
        check_host(&f.config, Work::Sample { parallel }, device)?;
        let model = Engine::load(device, f)
            .with_context(|| format!("reading the checkpoint from stage `{}`", input.stage))?;
        Ok((f.config.clone(), model))
    })?;
    let tok = tokenizer_for(ctx, &config)?;
    let start = text_arg(ctx, &p.start)?;
    let prompt = tok.encode(&start)?;
    let v = config.vocab_size;
    anyhow::ensure!(
        prompt.iter().all(|&i| (i as usize) < v),
        "the start text has tokens outside the model's vocabulary ({v})"
    );
    ensure!(
        !prompt.is_empty(),
        "the start text encodes to no tokens: give a non-empty `start`"
    );
    let cfg = SampleConfig {
        max_new_tokens: p.max_new_tokens,
        temperature: p.temperature as f32,
        top_k: p.top_k,
        seed: p.seed,
    };
    // Samples stream out in batches (printed, and written to the store's object) as they finish.
    let t0 = Instant::now();
    let mut out = ctx.store.writer()?;
    let (mut tokens, batch) = (0, model.sample_batch());
    for first in (0..p.num_samples).step_by(batch) {
        let samples = first..(first + batch).min(p.num_samples);
        let mut text = String::new();
        for s in model.generate_many(&prompt, &cfg, samples)? {
            tokens += s.len();
            let mut ids = prompt.clone();
            ids.extend(s);
            text.push_str(&tok.decode(&ids)?);
            text.push_str(SEPARATOR);
        }
        if ctx.ui.json {
            eprint!("{text}")
        } else {
            print!("{text}");
            std::io::Write::flush(&mut std::io::stdout())?;
        }
        std::io::Write::write_all(&mut out, text.as_bytes())?;
    }
    let secs = t0.elapsed().as_secs_f64();
    let hash = out.commit()?;
    Ok(Produced {
        outputs: crate::store::outputs([("samples.txt", hash)]),
        metrics: json!({ "samples": p.num_samples, "new_tokens": tokens, "tokens_per_second": tokens as f64 / secs.max(1e-9), "cpu_isa": ctx.cpu_isa() }),
        resumed: false,
    })
}

/// A reused sample stage's samples, where a fresh one prints them: stdout, or stderr when stdout
/// is for `--json`.
pub fn show_again(
    store: &crate::store::Store,
    outputs: &crate::store::Outputs,
    ui: &crate::ui::Ui,
) -> Result<()> {
    if let Some(h) = outputs.get("samples.txt") {
        let text = String::from_utf8_lossy(&store.get(h)?).to_string();
        if ui.json {
            eprint!("{text}")
        } else {
            print!("{text}")
        }
    }
    Ok(())
}
