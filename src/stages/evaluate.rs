//! `evaluate`: a model's loss. By default nanoGPT's estimate_loss: the mean over `eval_iters` random
//! batches of each split of the data. With `text:` (a string, or `FILE:path`), the mean next-token
//! loss over that exact text instead, in consecutive windows of block_size, which is what
//! transformers reports for `labels=input_ids` and so can be compared with it directly.
//! Output: `metrics.json` (losses and perplexities).

use super::{
    Ctx, Produced, map_tokens, model_checkpoint, read_meta, resolve_path, typed, with_checkpoint,
};
use crate::gpt::Gelu;
use crate::gpt::GptConfig;
use crate::gpt::device::check_host;
use crate::gpt::engine::Engine;
use crate::gpt::memory::Work;
use crate::gpt::rng::Rng;
use crate::gpt::train::{MAX_EVAL_ITERS, beyond_ceiling, estimate_loss};
use crate::manifest::StageSpec;
use crate::tokenizer::Tokenizer;
use anyhow::{Context, Result, ensure};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Params {
    #[serde(default = "default_eval_iters")]
    pub eval_iters: usize,
    #[serde(default = "default_batch")]
    pub batch_size: usize,
    #[serde(default)]
    pub text: Option<String>,
    pub seed: u64,
}

fn default_eval_iters() -> usize {
    200
}
fn default_batch() -> usize {
    12
}

const HELP: &str = "evaluate takes eval_iters, batch_size, seed, and optionally text (a string or FILE:path) to score exactly that text";

pub fn params(spec: &StageSpec, p: &serde_json::Map<String, Value>) -> Result<Params> {
    let params: Params = typed(spec, p, HELP)?;
    for (field, value) in [
        ("batch_size", params.batch_size),
        ("eval_iters", params.eval_iters),
    ] {
        if value == 0 {
            return Err(crate::error::err(
                spec.origin_of(field).clone(),
                format!("stage `{}`, field `{field}`: must be at least 1", spec.name),
                Some(HELP),
            ));
        }
    }
    if params.eval_iters as u64 > MAX_EVAL_ITERS {
        let why = beyond_ceiling(params.eval_iters as u64, MAX_EVAL_ITERS);
        return Err(crate::error::err(
            spec.origin_of("eval_iters").clone(),
            format!("stage `{}`, field `eval_iters`: {why}", spec.name),
            Some(HELP),
        ));
    }
    Ok(params)
}

/// Reads `FILE:path` texts (relative to the manifest), or returns the string itself.
pub fn text_arg(ctx: &Ctx, s: &str) -> Result<String> {
    match s.strip_prefix("FILE:") {
        Some(path) => {
            let full = resolve_path(&ctx.base_dir, path);
            std::fs::read_to_string(&full).with_context(|| format!("reading {}", full.display()))
        }
        None => Ok(s.to_string()),
    }
}

/// The tokenizer for a model: its data's, or GPT-2's for GPT-2-sized vocabularies.
pub fn tokenizer_for(ctx: &Ctx, config: &GptConfig) -> Result<Tokenizer> {
    match ctx.data_input() {
        Some(d) => {
            let meta = read_meta(ctx.store, d)?;
            anyhow::ensure!(
                meta.vocab_size <= config.vocab_size,
                "the data's vocabulary ({}) is larger than the model's ({}): use the data stage the model was trained on",
                meta.vocab_size,
                config.vocab_size
            );
            Ok(meta.tokenizer)
        }
        None if config.vocab_size >= 50257 || config.gelu == Gelu::Tanh => Ok(Tokenizer::Gpt2),
        None => anyhow::bail!(
            "stage `{}` cannot tell which tokenizer the model uses: add the prepare stage to `needs`",
            ctx.spec.name
        ),
    }
}

/// Mean next-token loss over `ids` in consecutive windows of up to block_size predictions.
pub fn text_loss(model: &mut Engine, ids: &[u32]) -> Result<f64> {
    ensure!(ids.len() >= 2, "the text must have at least two tokens");
    let bs = model.config().block_size;
    let (mut total, mut count) = (0.0f64, 0usize);
    let mut start = 0;
    while start + 1 < ids.len() {
        let n = (ids.len() - 1 - start).min(bs);
        let loss = model.eval_loss(&ids[start..start + n], &ids[start + 1..start + n + 1], 1, n)?;
        total += loss as f64 * n as f64;
        count += n;
        start += n;
    }
    Ok(total / count as f64)
}

pub fn execute(ctx: &Ctx, p: &Params) -> Result<Produced> {
    let device = ctx.device();
    // `text` is scored one window of up to block_size at a time.
    let batch = if p.text.is_some() { 1 } else { p.batch_size };
    let (input, hash) = model_checkpoint(ctx)?;
    // The weights only, straight from the checkpoint's memory map into the device's buffer.
    let (config, mut model) = with_checkpoint(ctx.store, hash, |f| {
        let work = Work::Eval {
            batch,
            t: f.config.block_size,
        };
        check_host(&f.config, work, device)?;
        let model = Engine::load(device, f)
            .with_context(|| format!("reading the checkpoint from stage `{}`", input.stage))?;
        Ok((f.config.clone(), model))
    })?;
    let metrics = match &p.text {
        Some(t) => {
            let text = text_arg(ctx, t)?;
            let ids = tokenizer_for(ctx, &config)?.encode(&text)?;
            let v = config.vocab_size;
            anyhow::ensure!(
                ids.iter().all(|&i| (i as usize) < v),
                "the text has tokens outside the model's vocabulary ({v})"
            );
            let loss = text_loss(&mut model, &ids)?;
            ctx.ui.say(&format!(
                "{}: loss {loss:.6} over {} tokens (perplexity {:.3})",
                ctx.spec.name,
                ids.len(),
                loss.exp()
            ));
            json!({ "text_loss": loss, "text_perplexity": loss.exp(), "tokens": ids.len() })
        }
        None => {
            let data = ctx
                .data_input()
                .context("evaluate without `text` needs a data stage in `needs`")?;
            tokenizer_for(ctx, &config)?; // checks that the vocabularies match
            let bs = config.block_size;
            let mut rng = Rng::new(p.seed);
            let mut out = serde_json::Map::new();
            for split in ["train", "val"] {
                let map = map_tokens(ctx.store, data.output(&format!("{split}.bin"))?)?;
                let tokens = map.tokens()?;
                ensure!(
                    tokens.len() > bs + 1,
                    "the {split} split has {} tokens, fewer than block_size + 1",
                    tokens.len()
                );
                // The map's pages are dropped after each batch (see Trainer::after_each_batch).
                let release = || map.release(0..usize::MAX);
                let loss = estimate_loss(
                    &mut model,
                    tokens,
                    p.batch_size,
                    p.eval_iters,
                    &mut rng,
                    &release,
                )? as f64;
                ctx.ui.say(&format!(
                    "{}: {split} loss {loss:.4} (perplexity {:.3})",
                    ctx.spec.name,
                    loss.exp()
                ));
                out.insert(format!("{split}_loss"), json!(loss));
                out.insert(format!("{split}_perplexity"), json!(loss.exp()));
            }
            Value::Object(out)
        }
    };
    let hash = ctx.store.put(&serde_json::to_vec_pretty(&metrics)?)?;
    let mut metrics = metrics;
    if let Some(isa) = ctx.cpu_isa() {
        metrics["cpu_isa"] = json!(isa);
    }
    Ok(Produced {
        outputs: crate::store::outputs([("metrics.json", hash)]),
        metrics,
        resumed: false,
    })
}
