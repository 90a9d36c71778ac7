//! `train`: nanoGPT's training loop over a prepared data set, starting from an init (or earlier
//! train) stage's checkpoint. At every evaluation the full training state goes into the store and
//! into the stage's progress record, so an interrupted run resumes from there bit-identically.
//! Outputs: `ckpt` (what nanoGPT's ckpt.pt would hold at the end: the latest checkpoint with
//! `always_save_checkpoint`, else the best by val loss), `metrics.json` (`evals`: every
//! evaluation; `steps`: every `log_interval`-th iteration's loss, learning rate and gradient norm;
//! `summary`) and `loss.svg` (the loss curves). The steps so far are kept in the progress record
//! with the evaluations, so a resumed stage's metrics.json is an uninterrupted one's, byte for byte.
//!
//! While it trains, the stage also writes into its run's folder (not outputs: they hold wall-clock
//! throughput and elapsed time): `curves/<stage>.jsonl` (see `curves.rs`), a TensorBoard event file
//! in `tensorboard/<stage>/` (see `tensorboard.rs`), and `curves/<stage>.svg`, the loss plot
//! titled with the run's name.
//!
//! The token files are memory-mapped, not read; checkpoints are streamed into the store from the
//! trainer's buffers and read back through a memory map (see `gpt/checkpoint/`).
//!
//! Retention (`keep_checkpoints: N`, default 2): of the checkpoints this stage has saved, it keeps
//! the latest N and the one that would be its `ckpt` output if it ended now (the latest with
//! `keep`: the best val loss so far, or the latest with `always_save_checkpoint`). Every other one
//! is superseded: it leaves the progress record at once, and its object is deleted unless something
//! else references it (see `refs::References::outside_of`). N is not part of the key: it changes no
//! output.

use super::{Ctx, Produced, map_tokens, typed, with_checkpoint};
use crate::curves::{CurveLine, CurveWriter, EvalPoint, StepPoint, curve_path, read_curve};
use crate::error::err;
use crate::gpt::checkpoint::Parts;
use crate::gpt::device::check_host;
use crate::gpt::memory::Work;
use crate::gpt::train::{DivergenceGuard, Event, Report};
use crate::gpt::{TrainConfig, Trainer};
use crate::manifest::StageSpec;
use crate::plot::{Series, loss_svg};
use crate::run::RunEvent;
use crate::store::{Hash, Key, Progress, SavedCheckpoint, Store, TrainStep};
use crate::tensorboard::EventWriter;
use anyhow::{Context, Result};
use serde::Serialize;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

#[derive(Clone, Debug, Serialize)]
pub struct Params {
    #[serde(flatten)]
    pub cfg: TrainConfig,
    /// Overrides the model's dropout for training (nanoGPT sets it with the model args).
    pub dropout: Option<f32>,
    /// How many of the latest checkpoints stay in the store (besides the `ckpt` candidate). Not
    /// part of the key.
    pub keep_checkpoints: usize,
}

/// The default of `keep_checkpoints`.
pub const KEEP_CHECKPOINTS: usize = 2;

const HELP: &str = "train takes nanoGPT's knobs: max_iters, eval_interval, eval_iters, log_interval, always_save_checkpoint, batch_size, gradient_accumulation_steps, learning_rate, decay_lr, warmup_iters, lr_decay_iters, min_lr, weight_decay, beta1, beta2, grad_clip, dropout, seed; zero_stage (0, or 1 for ZeRO-1 with several ranks); and keep_checkpoints (how many of the latest checkpoints stay in the store, default 2)";

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
    let keep_checkpoints = match rest.remove("keep_checkpoints") {
        None | Some(Value::Null) => KEEP_CHECKPOINTS,
        Some(v) => v
            .as_u64()
            .filter(|n| *n >= 1)
            .ok_or_else(|| {
                err(
                    spec.origin_of("keep_checkpoints").clone(),
                    format!(
                        "stage `{}`, field `keep_checkpoints`: must be a whole number >= 1 (the latest checkpoint is where an interrupted run resumes), found {v}",
                        spec.name
                    ),
                    Some(HELP),
                )
            })? as usize,
    };
    let cfg: TrainConfig = typed(spec, &rest, HELP)?;
    if let Some((field, why)) = cfg.invalid_field() {
        return Err(err(
            spec.origin_of(field).clone(),
            format!("stage `{}`, field `{field}`: {why}", spec.name),
            Some(HELP),
        ));
    }
    Ok(Params {
        cfg,
        dropout,
        keep_checkpoints,
    })
}

/// The (params, sources) parts of a train stage's key. `keep_checkpoints` is never part of it (it
/// changes no output's bytes); `log_interval` is (metrics.json records every log_interval-th
/// iteration). With several ranks the gradients are summed in another order, so other bits: the
/// key then has `data_parallel`. One rank's key has no such entry, so keys from before
/// data-parallel training hold.
pub fn key_parts(
    m: &crate::manifest::Manifest,
    spec: &StageSpec,
    p: &Params,
) -> Result<(Value, Value)> {
    let mut v = serde_json::to_value(p)?;
    let obj = v.as_object_mut().expect("object");
    obj.remove("keep_checkpoints");
    let ranks = m.defaults.ranks.unwrap_or(1);
    if ranks > 1 {
        check_ranks(spec, p, ranks)?;
        obj.insert(
            "data_parallel".into(),
            json!({"ranks": ranks, "zero_stage": p.cfg.zero_stage}),
        );
    }
    Ok((v, Value::Null))
}

/// A train stage on `ranks` data-parallel ranks: each computes gradient_accumulation_steps /
/// ranks micro-steps of every iteration, so the count must divide.
pub fn check_ranks(spec: &StageSpec, p: &Params, ranks: usize) -> Result<()> {
    let gas = p.cfg.gradient_accumulation_steps;
    if gas.is_multiple_of(ranks) {
        return Ok(());
    }
    let lower = gas / ranks * ranks;
    let suggestion = if lower > 0 {
        format!("{lower} or {}", lower + ranks)
    } else {
        ranks.to_string()
    };
    Err(err(
        spec.origin_of("gradient_accumulation_steps").clone(),
        format!(
            "stage `{}`, field `gradient_accumulation_steps`: {gas} does not divide among {ranks} ranks (it is the global count, as in nanoGPT: each rank computes gradient_accumulation_steps / ranks micro-steps)",
            spec.name
        ),
        Some(&format!(
            "use a multiple of {ranks} (for example {suggestion}), or another number of ranks"
        )),
    ))
}

/// What training holds: the model, its gradients and moments, and activations for the batch.
fn train_work(p: &Params) -> Work {
    Work::Train {
        batch: p.cfg.batch_size,
    }
}

/// Applies the retention rule to a stage's checkpoints (oldest first): keeps the latest `keep`
/// and the latest one with `keep` set (the `ckpt` candidate), in their order; returns the others.
pub fn retain(checkpoints: &mut Vec<SavedCheckpoint>, keep: usize) -> Vec<SavedCheckpoint> {
    let n = checkpoints.len();
    let candidate = checkpoints.iter().rposition(|c| c.keep);
    let (kept, dropped): (Vec<_>, Vec<_>) = std::mem::take(checkpoints)
        .into_iter()
        .enumerate()
        .partition(|(i, _)| *i + keep >= n || Some(*i) == candidate);
    *checkpoints = kept.into_iter().map(|(_, c)| c).collect();
    dropped.into_iter().map(|(_, c)| c).collect()
}

/// Deletes the objects of superseded checkpoints of stage `key` that nothing else references.
/// Called with the store's shared lock held (every run holds it), so `gc` never runs meanwhile;
/// the progress record no longer lists them. A failure is logged, never fatal: at worst an
/// object stays for `gc`.
fn remove_superseded(
    store: &Store,
    key: &Key,
    dropped: &[SavedCheckpoint],
    still: &[SavedCheckpoint],
) -> Result<usize> {
    if dropped.is_empty() {
        return Ok(0);
    }
    let mut spared: BTreeSet<Hash> = crate::refs::References::gather(store)?.outside_of(key);
    spared.extend(still.iter().map(|c| c.hash.clone()));
    let mut removed = 0;
    for c in dropped {
        if spared.contains(&c.hash) {
            tracing::debug!(hash = %c.hash, iter = c.iter, "superseded checkpoint kept: referenced elsewhere");
            continue;
        }
        match store.remove_object(&c.hash) {
            Ok(_) => removed += 1,
            Err(e) => tracing::warn!(
                "could not remove the superseded checkpoint {} (iter {}): {e:#}; `pipe gc --drop-checkpoints` removes it once the run has finished",
                c.hash.short(),
                c.iter
            ),
        }
    }
    Ok(removed)
}

/// The stage's live record in its run's folder: the curve (`curves/<stage>.jsonl`) and a
/// TensorBoard event file (`tensorboard/<stage>/`), a point appended to both at each logged
/// iteration and each evaluation.
struct Live {
    curve: CurveWriter,
    tb: EventWriter,
    /// When this attempt started, and the seconds of training in this run before it.
    started: Instant,
    offset: f64,
    /// When the previous step point was written, and how many iterations were done then.
    last_log: Instant,
    last_done: u64,
    /// Train tokens per iteration: batch_size x block_size x gradient_accumulation_steps.
    tokens_per_iter: f64,
}

impl Live {
    /// Opens both and says where this attempt starts. Resumed from the checkpoint of iteration
    /// `c` in the run whose curve already holds the history before it (`pipe resume`), both
    /// restart at `c` (the points a killed attempt wrote from there on are void, TensorBoard's
    /// `SessionLog.START`), and the checkpoint's evaluation is written again. Otherwise (a new
    /// run continuing another's interrupted training, or a fresh start), both restart at 0 and
    /// get the progress record's history (without throughput or times).
    fn open(
        ctx: &Ctx,
        progress: &Progress,
        resumed: Option<u64>,
        start_iter: u64,
        tokens_per_iter: f64,
    ) -> Result<Live> {
        let name = &ctx.spec.name;
        let path = curve_path(&ctx.run.dir, name);
        let existing = read_curve(&path)?;
        let evals_had: BTreeMap<u64, Option<f64>> = existing
            .evals
            .iter()
            .map(|e| (e.iter, e.elapsed_s))
            .collect();
        let steps_had: BTreeSet<u64> = existing.steps.iter().map(|s| s.iter).collect();
        let has_history = resumed.is_some()
            && progress.evals.iter().all(|e| evals_had.contains_key(&e.0))
            && progress.steps.iter().all(|s| steps_had.contains(&s.iter));
        let from = if has_history { resumed.unwrap_or(0) } else { 0 };
        let offset = if has_history {
            let steps = existing.steps.iter().filter(|s| s.iter < from);
            let evals = existing.evals.iter().filter(|e| e.iter <= from);
            steps
                .filter_map(|s| s.elapsed_s)
                .chain(evals.filter_map(|e| e.elapsed_s))
                .fold(0.0, f64::max)
        } else {
            0.0
        };
        let mut live = Live {
            curve: CurveWriter::append(&path)?,
            tb: EventWriter::create(&ctx.run.dir.join("tensorboard").join(name))?,
            started: Instant::now(),
            offset,
            last_log: Instant::now(),
            last_done: start_iter,
            tokens_per_iter,
        };
        live.curve.write(&CurveLine::Start { iter: from })?;
        live.tb.session_start(from)?;
        // The history from `from` on, in training order (an iteration's evaluation before it).
        let mut evals = progress.evals.iter().filter(|e| e.0 >= from).peekable();
        for s in progress.steps.iter().filter(|s| s.iter >= from) {
            while let Some(e) = evals.next_if(|e| e.0 <= s.iter) {
                live.eval(e.0, e.1, e.2, None)?;
            }
            live.record_step(s, None, None)?;
        }
        for e in evals {
            let elapsed = evals_had
                .get(&e.0)
                .copied()
                .flatten()
                .filter(|_| has_history);
            live.eval(e.0, e.1, e.2, elapsed)?;
        }
        Ok(live)
    }

    /// A logged iteration, just computed.
    fn step(&mut self, s: &TrainStep) -> Result<()> {
        let now = Instant::now();
        let done = s.iter + 1;
        let secs = now.duration_since(self.last_log).as_secs_f64();
        let tokens = done.saturating_sub(self.last_done) as f64 * self.tokens_per_iter;
        let tps = (secs > 0.0).then(|| tokens / secs);
        (self.last_log, self.last_done) = (now, done);
        self.record_step(s, tps, Some(self.elapsed()))
    }

    fn record_step(
        &mut self,
        s: &TrainStep,
        tokens_per_second: Option<f64>,
        elapsed_s: Option<f64>,
    ) -> Result<()> {
        self.curve.write(&CurveLine::Step(StepPoint {
            iter: s.iter,
            loss: s.loss,
            lr: s.lr,
            grad_norm: s.grad_norm,
            tokens_per_second,
            elapsed_s,
        }))?;
        self.tb.scalars(
            s.iter,
            &[
                ("loss/train", s.loss),
                ("lr", s.lr as f32),
                ("grad_norm", s.grad_norm.unwrap_or(f32::NAN)),
                (
                    "tokens_per_second",
                    tokens_per_second.map_or(f32::NAN, |t| t as f32),
                ),
            ],
        )
    }

    fn eval(
        &mut self,
        iter: u64,
        train_loss: f32,
        val_loss: f32,
        elapsed_s: Option<f64>,
    ) -> Result<()> {
        self.curve.write(&CurveLine::Eval(EvalPoint {
            iter,
            train_loss,
            val_loss,
            elapsed_s,
        }))?;
        self.tb.scalars(
            iter,
            &[("loss/val", val_loss), ("loss/train_eval", train_loss)],
        )
    }

    /// Seconds of training in this run so far.
    fn elapsed(&self) -> f64 {
        self.offset + self.started.elapsed().as_secs_f64()
    }
}

/// The loss plot: every logged iteration's training loss, and the evaluations.
fn loss_plot(title: &str, progress: &Progress) -> String {
    let evals = |f: fn(&(u64, f32, f32)) -> f32| -> Vec<(f64, f64)> {
        progress
            .evals
            .iter()
            .map(|e| (e.0 as f64, f(e) as f64))
            .collect()
    };
    let series = [
        Series {
            name: "train (logged iterations)".into(),
            points: progress
                .steps
                .iter()
                .map(|s| (s.iter as f64, s.loss as f64))
                .collect(),
        },
        Series {
            name: "train (evaluation)".into(),
            points: evals(|e| e.1),
        },
        Series {
            name: "val (evaluation)".into(),
            points: evals(|e| e.2),
        },
    ];
    loss_svg(title, &series)
}

/// The run folder's copy of the loss plot, titled with the run's name (which the stage's
/// `loss.svg` output cannot carry: the name is not part of the key, so a cached output may have
/// been made by another run). Written whole each time (atomically).
fn write_run_plot(ctx: &Ctx, progress: &Progress) -> Result<()> {
    let name = &ctx.spec.name;
    let title = match ctx.run.name() {
        Some(run) => format!("{run}: {name}"),
        None => name.clone(),
    };
    crate::store::write_atomic(
        &ctx.store.root.join("tmp"),
        &ctx.run.dir.join("curves").join(format!("{name}.svg")),
        loss_plot(&title, progress).as_bytes(),
    )
}

pub fn execute(ctx: &Ctx, p: &Params) -> Result<Produced> {
    let data = ctx.data_input().context("train needs a data stage")?;
    let train_map = map_tokens(ctx.store, data.output("train.bin")?)?;
    let val_map = map_tokens(ctx.store, data.output("val.bin")?)?;
    let (train, val) = (train_map.tokens()?, val_map.tokens()?);
    let mut progress = ctx.store.progress(&ctx.progress_key)?;
    let name = ctx.spec.name.clone();

    // Continue from the last checkpoint of an interrupted attempt at this same key, if any, with
    // the history up to it (what the resumed trainer does not compute again).
    let resumed_from = progress.checkpoints.last().cloned();
    progress.keep_until(resumed_from.as_ref().map(|c| c.iter));
    let device = ctx.device();
    // Where training starts when it continues a saved state (this key's interrupted attempt, or
    // an init checkpoint with progress: `from: resume` or a nanoGPT ckpt.pt).
    let mut continued_from = resumed_from.as_ref().map(|c| c.iter);
    let mut trainer = match &resumed_from {
        Some(c) => {
            ctx.ui.say(&format!(
                "{name}: resuming from iter {} (checkpoint {})",
                c.iter,
                c.hash.short()
            ));
            let ck = with_checkpoint(ctx.store, &c.hash, |f| {
                // Refused before the state is read.
                check_host(&f.config, train_work(p), device)?;
                f.load(Parts::All)
            })?;
            Trainer::from_checkpoint(ck, p.cfg.clone(), train, val)?
        }
        None => {
            let (input, hash) = super::model_checkpoint(ctx)?;
            let vocab = super::read_meta(ctx.store, data)?.vocab_size;
            let mut ck = with_checkpoint(ctx.store, hash, |f| {
                let mut config = f.config.clone();
                if let Some(d) = p.dropout {
                    config.dropout = d;
                }
                anyhow::ensure!(
                    vocab <= config.vocab_size,
                    "the data's vocabulary ({vocab}) is larger than the model's ({}): use the same tokenizer for both",
                    config.vocab_size
                );
                check_host(&config, train_work(p), device)?;
                f.load(Parts::All)
                    .with_context(|| format!("reading the checkpoint from stage `{}`", input.stage))
            })?;
            if let Some(d) = p.dropout {
                ck.config.dropout = d;
            }
            if let Some(saved) = &ck.progress {
                // init from: resume or nanogpt — continue that training state.
                ctx.ui.say(&format!(
                    "{name}: continuing the checkpoint of stage `{}` at iter {}",
                    input.stage, saved.iter_num
                ));
                continued_from = Some(saved.iter_num);
                Trainer::from_checkpoint(ck, p.cfg.clone(), train, val)?
            } else {
                let model = crate::gpt::Gpt::from_params(ck.config, ck.params)?;
                Trainer::new(model, p.cfg.clone(), train, val)?
            }
        }
    };
    // Drop the token maps' pages after each batch: memory does not grow with the data set.
    trainer.after_each_batch(|| {
        train_map.release(0..usize::MAX);
        val_map.release(0..usize::MAX);
    });
    trainer.use_device(device)?;
    if let Some(gpu) = trainer.device_name() {
        ctx.ui.say(&format!("{name}: training on {gpu}"));
    }
    let start_iter = trainer.iter_num;
    let max_iters = p.cfg.max_iters;
    // nanoGPT's tokens_per_iter (one process): gradient_accumulation_steps x batch_size x block_size.
    let tokens_per_iter =
        (p.cfg.gradient_accumulation_steps * p.cfg.batch_size * trainer.config().block_size) as f64;
    let mut live = Live::open(
        ctx,
        &progress,
        resumed_from.as_ref().map(|c| c.iter),
        start_iter,
        tokens_per_iter,
    )?;
    let pb = ctx.ui.bar(start_iter, max_iters, &name);
    let started = Instant::now();
    let mut last_ms = 0.0;
    let mut guard = DivergenceGuard::new(&p.cfg, progress.evals.first().map(|e| e.2));
    let mut superseded = 0usize;
    // Last before training: from here on the other ranks are in the loop with this one.
    let watchdog = match ctx.ranks {
        Some(ranks) => {
            let timeout = crate::ranks::step_timeout()?;
            let hashes = (data.output("train.bin")?, data.output("val.bin")?);
            ranks.lead_training(&name, ctx.store, hashes, &mut trainer, device)?;
            ctx.ui.say(&format!(
                "{name}: training on {} data-parallel ranks{}",
                ranks.world(),
                if p.cfg.zero_stage == 1 {
                    " (ZeRO-1)"
                } else {
                    ""
                }
            ));
            Some(crate::ranks::Watchdog::start(timeout, 0))
        }
        None => None,
    };
    let beat = watchdog.as_ref().map(|w| w.beat());
    trainer.run_streaming(&mut |report| {
        if let Some(beat) = &beat {
            beat();
        }
        if ctx.cancelled() {
            anyhow::bail!(
                "cancelled: another stage of the sweep failed (--fail-fast); `pipe resume` continues from the last checkpoint"
            );
        }
        let ev = match report {
            Report::Event(ev) => ev,
            Report::Checkpoint { iter, keep, state } => {
                let mut w = ctx.store.writer()?;
                state.write_to(&mut w)?;
                let hash = w.commit()?;
                progress.checkpoints.push(SavedCheckpoint {
                    iter,
                    hash: hash.clone(),
                    keep,
                });
                // The record first: a kill before the deletions leaves only unlisted objects.
                let dropped = retain(&mut progress.checkpoints, p.keep_checkpoints);
                ctx.store.put_progress(&ctx.progress_key, &progress)?;
                ctx.log(RunEvent::Checkpoint {
                    time: crate::run::utc_now(),
                    stage: name.clone(),
                    iter,
                    hash,
                    keep,
                })?;
                match remove_superseded(ctx.store, &ctx.progress_key, &dropped, &progress.checkpoints) {
                    Ok(n) => superseded += n,
                    Err(e) => tracing::warn!(
                        "superseded checkpoints were not removed ({e:#}); `pipe gc --drop-checkpoints` removes them once the run has finished"
                    ),
                }
                return Ok(());
            }
        };
        // Checked first, so a diverged run never writes NaN into records.
        guard.check(&ev)?;
        match ev {
            Event::Log {
                iter,
                loss,
                lr,
                grad_norm,
                ms,
            } => {
                last_ms = ms;
                let step = TrainStep {
                    iter,
                    loss,
                    lr,
                    // NaN when not computed (no clipping); a non-finite norm with clipping has
                    // already stopped the stage.
                    grad_norm: Some(grad_norm).filter(|g| g.is_finite()),
                };
                progress.steps.push(step);
                live.step(&step)?;
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
                live.eval(iter, train_loss, val_loss, Some(live.elapsed()))?;
                write_run_plot(ctx, &progress)?;
                ctx.log(RunEvent::Eval {
                    time: crate::run::utc_now(),
                    stage: name.clone(),
                    iter,
                    train_loss,
                    val_loss,
                })?;
            }
        }
        Ok(())
    })?;
    tracing::debug!(superseded, "superseded checkpoints removed");
    pb.finish_and_clear();
    let seconds = started.elapsed().as_secs_f64();

    // nanoGPT's ckpt.pt at the end: the last checkpoint it would have written.
    let ckpt = match progress.checkpoints.iter().rev().find(|c| c.keep) {
        Some(c) => c.hash.clone(),
        None => {
            let mut w = ctx.store.writer()?;
            trainer.checkpoint_view().write_to(&mut w)?;
            w.commit()?
        }
    };
    let evals: Vec<Value> = progress
        .evals
        .iter()
        .map(|(i, t, v)| json!({ "iter": i, "train_loss": t, "val_loss": v }))
        .collect();
    let steps: Vec<Value> = progress
        .steps
        .iter()
        .map(|s| json!({ "iter": s.iter, "loss": s.loss, "lr": s.lr, "grad_norm": s.grad_norm }))
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
    metrics["resumed_from_iter"] = json!(continued_from);
    metrics["device"] = json!(trainer.device_name().unwrap_or("cpu"));
    if let Some(isa) = ctx.cpu_isa() {
        metrics["cpu_isa"] = json!(isa);
    }
    if let Some(ranks) = ctx.ranks {
        // Rank 0's time in the steps' collectives, and its share of this attempt's seconds.
        metrics["data_parallel"] = json!({
            "ranks": ranks.world(),
            "zero_stage": p.cfg.zero_stage,
            "comm_seconds": trainer.comm_seconds,
            "comm_share": trainer.comm_seconds / seconds,
        });
    }
    // Train tokens per second of this attempt: the iterations it ran x tokens_per_iter over its
    // seconds, evaluations and checkpoints included (a resumed stage counts only its own part).
    metrics["tokens_per_second"] =
        json!((max_iters.saturating_sub(start_iter)) as f64 * tokens_per_iter / seconds);
    write_run_plot(ctx, &progress)?;
    let svg = loss_plot("training and validation loss", &progress);
    let outputs = crate::store::outputs([
        ("ckpt", ckpt),
        (
            "metrics.json",
            ctx.store.put(&serde_json::to_vec_pretty(
                &json!({ "evals": evals, "steps": steps, "summary": summary }),
            )?)?,
        ),
        ("loss.svg", ctx.store.put(svg.as_bytes())?),
    ]);
    Ok(Produced {
        outputs,
        metrics,
        resumed: resumed_from.is_some(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ck(iter: u64, keep: bool) -> SavedCheckpoint {
        SavedCheckpoint {
            iter,
            hash: Hash::of(format!("h{iter}").as_bytes()),
            keep,
        }
    }

    fn iters(c: &[SavedCheckpoint]) -> Vec<u64> {
        c.iter().map(|c| c.iter).collect()
    }

    #[test]
    fn retention_keeps_the_latest_n_and_the_ckpt_candidate() {
        // always_save_checkpoint: every checkpoint is a candidate; the latest N stay.
        let mut all: Vec<_> = (1..=5).map(|i| ck(i * 10, true)).collect();
        let dropped = retain(&mut all, 2);
        assert_eq!(
            (iters(&all), iters(&dropped)),
            (vec![40, 50], vec![10, 20, 30])
        );
        // Best val loss at iter 20: it stays as well (N + 1 at most).
        let mut best: Vec<_> = [
            (10, true),
            (20, true),
            (30, false),
            (40, false),
            (50, false),
        ]
        .iter()
        .map(|&(i, k)| ck(i, k))
        .collect();
        let dropped = retain(&mut best, 2);
        assert_eq!(
            (iters(&best), iters(&dropped)),
            (vec![20, 40, 50], vec![10, 30])
        );
        // The candidate among the latest N: nothing extra.
        let mut recent: Vec<_> = [(10, true), (20, false), (30, true)]
            .iter()
            .map(|&(i, k)| ck(i, k))
            .collect();
        let dropped = retain(&mut recent, 2);
        assert_eq!((iters(&recent), iters(&dropped)), (vec![20, 30], vec![10]));
        // N larger than the list, or no candidate at all.
        let mut few = vec![ck(10, false), ck(20, false)];
        assert!(retain(&mut few, 5).is_empty());
        assert_eq!(iters(&few), vec![10, 20]);
        let dropped = retain(&mut few, 1);
        assert_eq!((iters(&few), iters(&dropped)), (vec![20], vec![10]));
    }
}
