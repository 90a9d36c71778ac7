//! `train`: nanoGPT's training loop over a prepared data set, starting from an init (or earlier
//! train) stage's checkpoint. At every evaluation the full training state goes into the store and
//! into the stage's progress record, so an interrupted run resumes from there bit-identically.
//! Outputs: `ckpt` (what nanoGPT's ckpt.pt would hold at the end: the latest checkpoint with
//! `always_save_checkpoint`, else the best by val loss), `metrics.json` (eval history) and
//! `loss.svg` (the loss curves).

use super::{Ctx, Produced, load_model, read_tokens, typed};
use crate::gpt::memory::{Work, check_host};
use crate::gpt::train::{DivergenceGuard, Event};
use crate::gpt::{Checkpoint, Gpt, TrainConfig, Trainer};
use crate::manifest::{StageSpec, err};
use crate::plot::{Series, loss_svg};
use crate::run::RunEvent;
use crate::store::SavedCheckpoint;
use anyhow::{Context, Result};
use serde::Serialize;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::Instant;

#[derive(Clone, Debug, Serialize)]
pub struct Params {
    #[serde(flatten)]
    pub cfg: TrainConfig,
    /// Overrides the model's dropout for training (nanoGPT sets it with the model args).
    pub dropout: Option<f32>,
}

const HELP: &str = "train takes nanoGPT's knobs: max_iters, eval_interval, eval_iters, log_interval, always_save_checkpoint, batch_size, gradient_accumulation_steps, learning_rate, decay_lr, warmup_iters, lr_decay_iters, min_lr, weight_decay, beta1, beta2, grad_clip, dropout, seed";

pub fn params(spec: &StageSpec, p: &serde_json::Map<String, Value>) -> Result<Params> {
    let mut rest = p.clone();
    let dropout = match rest.remove("dropout") {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            v.as_f64()
                .filter(|d| (0.0..1.0).contains(d))
                .ok_or_else(|| {
                    err(
                        spec.origin_of("dropout").clone(),
                        format!(
                            "stage `{}`: `dropout` must be a number in [0, 1), found {v}",
                            spec.name
                        ),
                        None,
                    )
                })? as f32,
        ),
    };
    let cfg: TrainConfig = typed(spec, &rest, HELP)?;
    if let Some((field, why)) = cfg.invalid_field() {
        return Err(err(
            spec.origin_of(field).clone(),
            format!("stage `{}`, field `{field}`: {why}", spec.name),
            Some(HELP),
        ));
    }
    Ok(Params { cfg, dropout })
}

/// What training holds: the model, its gradients and moments, and activations for the batch.
fn train_work(p: &Params) -> Work {
    Work::Train {
        batch: p.cfg.batch_size,
    }
}

pub fn execute(ctx: &Ctx, p: &Params) -> Result<Produced> {
    let data = ctx.data_input().context("train needs a data stage")?;
    let train = read_tokens(ctx.store, data.output("train.bin")?)?;
    let val = read_tokens(ctx.store, data.output("val.bin")?)?;
    let mut progress = ctx.store.progress(&ctx.key)?;
    let name = ctx.spec.name.clone();

    // Continue from the last checkpoint of an interrupted attempt at this same key, if any.
    let resumed_from = progress.checkpoints.last().cloned();
    let device = ctx.device()?;
    let mut trainer = match &resumed_from {
        Some(c) => {
            let ck = Checkpoint::from_bytes(&ctx.store.get(&c.hash)?)?;
            ctx.ui.say(&format!(
                "{name}: resuming from iter {} (checkpoint {})",
                c.iter,
                &c.hash[..12]
            ));
            check_host(&ck.config, train_work(p), device)?;
            Trainer::resume(&ck, p.cfg.clone(), &train, &val)?
        }
        None => {
            let ck = load_model(ctx)?;
            let mut config = ck.config.clone();
            if let Some(d) = p.dropout {
                config.dropout = d;
            }
            let vocab = super::read_meta(ctx.store, data)?.vocab_size;
            anyhow::ensure!(
                vocab <= config.vocab_size,
                "the data's vocabulary ({vocab}) is larger than the model's ({}): use the same tokenizer for both",
                config.vocab_size
            );
            check_host(&config, train_work(p), device)?;
            let model = Gpt::from_params(config, ck.params.clone())?;
            if ck.progress.is_some() {
                // init from: resume — continue that training state.
                let mut c2 = ck.clone();
                c2.config = model.config.clone();
                Trainer::resume(&c2, p.cfg.clone(), &train, &val)?
            } else {
                Trainer::new(model, p.cfg.clone(), &train, &val)?
            }
        }
    };
    trainer.use_device(device)?;
    if let Some(gpu) = trainer.device_name() {
        ctx.ui.say(&format!("{name}: training on {gpu}"));
    }
    let start_iter = trainer.iter_num;
    let max_iters = p.cfg.max_iters;
    let pb = ctx.ui.bar(start_iter, max_iters, &name);
    let started = Instant::now();
    let mut last_ms = 0.0;
    let mut guard = DivergenceGuard::new(&p.cfg, progress.evals.first().map(|e| e.2));
    trainer.run(&mut |ev| {
        // Checked first, so a diverged run never writes NaN into records.
        guard.check(&ev)?;
        match ev {
            Event::Log {
                iter, loss, lr, ms, ..
            } => {
                last_ms = ms;
                pb.set_position(iter + 1);
                pb.set_message(format!("loss {loss:.4}, {ms:.1}ms/iter"));
                if !ctx.ui.tty
                    && iter % p.cfg.log_interval.max(1) == 0
                    && iter % (p.cfg.log_interval.max(1) * 10) == 0
                {
                    ctx.ui.say(&format!(
                        "{name}: iter {iter}: loss {loss:.4}, time {ms:.2}ms, lr {lr:.2e}"
                    ));
                }
            }
            Event::Eval {
                iter,
                train_loss,
                val_loss,
                ..
            } => {
                ctx.ui.above(
                    &pb,
                    &format!(
                        "{name}: step {iter}: train loss {train_loss:.4}, val loss {val_loss:.4}"
                    ),
                );
                progress.evals.push((iter, train_loss, val_loss));
                ctx.log(RunEvent::Eval {
                    time: crate::run::utc_now(),
                    stage: name.clone(),
                    iter,
                    train_loss,
                    val_loss,
                })?;
            }
            Event::Checkpoint { iter, keep, bytes } => {
                let hash = ctx.store.put(&bytes)?;
                progress.checkpoints.push(SavedCheckpoint {
                    iter,
                    hash: hash.clone(),
                    keep,
                });
                ctx.store.put_progress(&ctx.key, &progress)?;
                ctx.log(RunEvent::Checkpoint {
                    time: crate::run::utc_now(),
                    stage: name.clone(),
                    iter,
                    hash,
                    keep,
                })?;
            }
        }
        Ok(())
    })?;
    pb.finish_and_clear();
    let seconds = started.elapsed().as_secs_f64();

    // nanoGPT's ckpt.pt at the end: the last checkpoint it would have written.
    let ckpt = match progress.checkpoints.iter().rev().find(|c| c.keep) {
        Some(c) => c.hash.clone(),
        None => ctx.store.put(&trainer.checkpoint().to_bytes()?)?,
    };
    let evals: Vec<Value> = progress
        .evals
        .iter()
        .map(|(i, t, v)| json!({ "iter": i, "train_loss": t, "val_loss": v }))
        .collect();
    let last = progress.evals.last().copied();
    // metrics.json is an output, so it holds only deterministic values; timings go in the run record.
    let summary = json!({
        "iters": max_iters,
        "final_train_loss": last.map(|x| x.1),
        "final_val_loss": last.map(|x| x.2),
        "best_val_loss": trainer.best_val_loss,
    });
    let mut metrics = summary.clone();
    metrics["seconds"] = json!(seconds);
    metrics["last_ms_per_iter"] = json!(last_ms);
    metrics["resumed_from_iter"] = json!(resumed_from.as_ref().map(|c| c.iter));
    metrics["device"] = json!(trainer.device_name().unwrap_or("cpu"));
    let series = |name: &str, f: fn(&(u64, f32, f32)) -> f32| Series {
        name: name.to_string(),
        points: progress
            .evals
            .iter()
            .map(|e| (e.0 as f64, f(e) as f64))
            .collect(),
    };
    let svg = loss_svg(
        "training and validation loss",
        &[series("train", |e| e.1), series("val", |e| e.2)],
    );
    let outputs = BTreeMap::from([
        ("ckpt".to_string(), ckpt),
        (
            "metrics.json".to_string(),
            ctx.store.put(&serde_json::to_vec_pretty(
                &json!({ "evals": evals, "summary": summary }),
            )?)?,
        ),
        ("loss.svg".to_string(), ctx.store.put(svg.as_bytes())?),
    ]);
    Ok(Produced {
        outputs,
        metrics,
        resumed: resumed_from.is_some(),
    })
}
