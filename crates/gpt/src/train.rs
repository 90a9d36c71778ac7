//! The training loop, nanoGPT's train.py without the DDP: evaluate every `eval_interval`, checkpoint,
//! accumulate gradients over micro-steps, clip, AdamW step.
//!
//! Resume is bit-identical: a checkpoint holds the state *after* the evaluation of its iteration
//! (weights, moments, RNG, best_val_loss), and a resumed trainer skips that one evaluation.
//! [`DivergenceGuard`] turns a run whose loss blows up into an error naming the likely cause.
//!
//! Data-parallel ([`Trainer::data_parallel`]), as nanoGPT's DDP and llm.c do it: each of the
//! `world` ranks computes `gradient_accumulation_steps / world` of each iteration's micro-steps,
//! and the gradients are summed once per optimizer step (an all-reduce, or with `zero_stage: 1` a
//! reduce-scatter, AdamW on each rank's shard, and an all-gather of the weights; each rank then holds
//! only its shard of the moments, gathered on rank 0 for checkpoints). Every rank draws
//! every micro-step's batch positions from the same RNG stream and uses its own, and dropout masks
//! are seeded by the global micro-step, so the global batch is the same whatever the world size.
//! The reported loss is the global batch's last micro-step's, as on one rank.
//!
//! Why this file stays whole (one concept: the training loop): the data-parallel path changes the same loop, step and evaluation as the single one,
//! and splitting it would spread each step across two files.

use super::checkpoint::{Checkpoint, CheckpointRef, TrainProgress};
use super::collective::{Collective, Shards, Single};
use super::config::GptConfig;
use super::cuda::GpuGpt;
use super::device::Device;
use super::engine::Engine;
use super::model::{DropoutPlan, Gpt};
use super::optim::{AdamW, AdamWConfig, LrSchedule, clip_coef, grad_square_sum};
use super::rng::{Rng, mix64};
use anyhow::{Context, Result, ensure};
use serde::{Deserialize, Serialize};
use std::time::Instant;

/// nanoGPT's training knobs. Defaults are train.py's.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    pub max_iters: u64,
    pub eval_interval: u64,
    pub eval_iters: usize,
    pub log_interval: u64,
    pub always_save_checkpoint: bool,
    pub batch_size: usize,
    pub gradient_accumulation_steps: usize,
    pub learning_rate: f64,
    pub decay_lr: bool,
    pub warmup_iters: u64,
    pub lr_decay_iters: u64,
    pub min_lr: f64,
    pub weight_decay: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub grad_clip: f64,
    pub seed: u64,
    /// 0: gradients all-reduced, AdamW on every rank; 1: ZeRO-1 (optimizer work sharded). Only
    /// serialized when 1, so checkpoints of every earlier version keep their bytes.
    #[serde(skip_serializing_if = "is_zero")]
    pub zero_stage: u8,
}

fn is_zero(v: &u8) -> bool {
    *v == 0
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            max_iters: 600_000,
            eval_interval: 2000,
            eval_iters: 200,
            log_interval: 1,
            always_save_checkpoint: true,
            batch_size: 12,
            gradient_accumulation_steps: 40,
            learning_rate: 6e-4,
            decay_lr: true,
            warmup_iters: 2000,
            lr_decay_iters: 600_000,
            min_lr: 6e-5,
            weight_decay: 0.1,
            beta1: 0.9,
            beta2: 0.95,
            grad_clip: 1.0,
            seed: 1337,
            zero_stage: 0,
        }
    }
}

/// Counts past these cannot finish (they were accepted, and ran until killed): a hundred times
/// and more nanoGPT's largest recipe, GPT-2 124M's 600,000 iterations with `eval_iters` 200 and 40
/// accumulation steps. Refused with the limit named ([`beyond_ceiling`]).
pub const MAX_ITERS: u64 = 100_000_000;
pub const MAX_EVAL_ITERS: u64 = 1_000_000;
pub const MAX_ACCUMULATION: u64 = 100_000;

/// Why a count above its ceiling is refused.
pub fn beyond_ceiling(v: u64, max: u64) -> String {
    format!(
        "{v} cannot finish: at most {max} is accepted (a hundred times and more the largest nanoGPT recipe); lower it"
    )
}

impl TrainConfig {
    pub fn schedule(&self) -> LrSchedule {
        LrSchedule {
            learning_rate: self.learning_rate,
            decay_lr: self.decay_lr,
            warmup_iters: self.warmup_iters,
            lr_decay_iters: self.lr_decay_iters,
            min_lr: self.min_lr,
        }
    }

    pub fn adamw(&self) -> AdamWConfig {
        AdamWConfig {
            beta1: self.beta1,
            beta2: self.beta2,
            eps: 1e-8,
            weight_decay: self.weight_decay,
        }
    }

    pub fn validate(&self) -> Result<()> {
        match self.invalid_field() {
            Some((field, why)) => anyhow::bail!("{field} {why}"),
            None => Ok(()),
        }
    }

    /// The first knob whose value the arithmetic cannot use, and why (for errors located in a
    /// manifest): betas in [0, 1) (at 1 AdamW's bias corrections divide by zero), rates, weight
    /// decay and the clip norm finite and not negative, counts at least 1.
    pub fn invalid_field(&self) -> Option<(&'static str, String)> {
        let ceilings = [
            ("max_iters", self.max_iters, MAX_ITERS),
            ("eval_iters", self.eval_iters as u64, MAX_EVAL_ITERS),
            (
                "gradient_accumulation_steps",
                self.gradient_accumulation_steps as u64,
                MAX_ACCUMULATION,
            ),
        ];
        if let Some((field, v, max)) = ceilings.iter().find(|(_, v, max)| v > max) {
            return Some((*field, beyond_ceiling(*v, *max)));
        }
        let counts = [
            ("batch_size", self.batch_size as u64),
            (
                "gradient_accumulation_steps",
                self.gradient_accumulation_steps as u64,
            ),
            ("eval_interval", self.eval_interval),
            ("eval_iters", self.eval_iters as u64),
        ];
        if let Some((field, _)) = counts.iter().find(|(_, v)| *v == 0) {
            return Some((*field, "must be at least 1, found 0".into()));
        }
        if self.zero_stage > 1 {
            return Some((
                "zero_stage",
                format!(
                    "must be 0 (all-reduce) or 1 (ZeRO-1: optimizer state sharded), found {}",
                    self.zero_stage
                ),
            ));
        }
        for (field, v) in [("beta1", self.beta1), ("beta2", self.beta2)] {
            if !(0.0..1.0).contains(&v) {
                return Some((field, format!("must be in [0, 1), found {v}")));
            }
        }
        let non_negative = [
            ("learning_rate", self.learning_rate),
            ("min_lr", self.min_lr),
            ("weight_decay", self.weight_decay),
            ("grad_clip", self.grad_clip),
        ];
        for (field, v) in non_negative {
            if !(v.is_finite() && v >= 0.0) {
                return Some((field, format!("must be a finite number >= 0, found {v}")));
            }
        }
        None
    }
}

/// A token stream (nanoGPT's train.bin / val.bin) and random (B, T) windows from it.
pub fn get_batch(
    data: &[u16],
    b: usize,
    t: usize,
    rng: &mut Rng,
    x: &mut Vec<u32>,
    y: &mut Vec<u32>,
) {
    x.clear();
    y.clear();
    for _ in 0..b {
        let i = rng.below(data.len() - t);
        x.extend(data[i..i + t].iter().map(|&v| v as u32));
        y.extend(data[i + 1..i + t + 1].iter().map(|&v| v as u32));
    }
}

/// Advances `rng` past the batch [`get_batch`] would draw, without reading the data: what a rank
/// does for the batches of the global batch that other ranks compute.
pub fn skip_batch(data: &[u16], b: usize, t: usize, rng: &mut Rng) {
    for _ in 0..b {
        rng.below(data.len() - t);
    }
}

/// Mean loss over `eval_iters` batches per split, in evaluation mode (nanoGPT's estimate_loss).
/// `after_batch` runs once each batch has been copied out of `data` (see
/// [`Trainer::after_each_batch`]).
pub fn estimate_loss(
    model: &mut Engine,
    data: &[u16],
    batch_size: usize,
    eval_iters: usize,
    rng: &mut Rng,
    after_batch: &dyn Fn(),
) -> Result<f32> {
    estimate_loss_shared(
        model,
        data,
        batch_size,
        eval_iters,
        rng,
        after_batch,
        &Single,
    )
}

/// [`estimate_loss`] with its batches split across ranks: rank r computes batches r, r + world,
/// ..., and the sum is reduced, so every rank returns the same mean.
pub fn estimate_loss_shared(
    model: &mut Engine,
    data: &[u16],
    batch_size: usize,
    eval_iters: usize,
    rng: &mut Rng,
    after_batch: &dyn Fn(),
    comm: &dyn Collective,
) -> Result<f32> {
    let t = model.config().block_size;
    let (mut x, mut y) = (Vec::new(), Vec::new());
    let mut total = [0.0f64];
    for i in 0..eval_iters {
        if i % comm.world() != comm.rank() {
            skip_batch(data, batch_size, t, rng);
            continue;
        }
        get_batch(data, batch_size, t, rng, &mut x, &mut y);
        after_batch();
        total[0] += model.eval_loss(&x, &y, batch_size, t)? as f64;
    }
    comm.all_reduce_sum_f64(&mut total)?;
    Ok((total[0] / eval_iters as f64) as f32)
}

/// What the loop reports as it goes.
#[derive(Debug)]
pub enum Event {
    Eval {
        iter: u64,
        train_loss: f32,
        val_loss: f32,
        lr: f64,
    },
    Log {
        iter: u64,
        loss: f32,
        lr: f64,
        grad_norm: f32,
        ms: f64,
    },
}

/// What [`Trainer::run_streaming`] reports: the events, and each checkpoint as a view of the live
/// state (weights, moments, progress) for the caller to write out, streaming, before training goes
/// on.
pub enum Report<'a> {
    Event(Event),
    /// Saved at every evaluation (from iteration 1 on).
    Checkpoint {
        iter: u64,
        /// Whether nanoGPT would have written it to ckpt.pt (val loss improved, or
        /// always_save_checkpoint); the others are resume points only.
        keep: bool,
        state: CheckpointRef<'a>,
    },
}

/// Stops training that has gone wrong, with the likely cause, instead of finishing with a useless
/// model (or writing NaN into records). The rule: a non-finite training loss or gradient norm, a
/// non-finite evaluation, or a val loss above [`DIVERGED`] times the stage's first evaluated one
/// (for a new model that is about ln(vocab), what guessing gives).
pub struct DivergenceGuard {
    first_val_loss: Option<f32>,
    /// Whether gradient norms are computed (grad_clip > 0); otherwise they are reported as NaN.
    clipping: bool,
    /// What the error names as likely causes ([`likely_causes`]).
    causes: String,
}

/// How many times the first val loss counts as diverged.
pub const DIVERGED: f32 = 3.0;

/// The knobs that make training diverge, with the stage's values, the most likely first.
fn likely_causes(cfg: &TrainConfig) -> String {
    let (lr, wd) = (cfg.learning_rate, cfg.weight_decay);
    let mut causes = [
        format!("learning_rate {lr:e} too high (lower it, keep warmup_iters, set grad_clip)"),
        format!(
            "weight_decay {wd:e} too large (each step multiplies the weights by 1 - learning_rate × weight_decay = {:.3e}; nanoGPT uses 0.1)",
            1.0 - lr * wd
        ),
        format!("beta1 {} or beta2 {} too close to 1", cfg.beta1, cfg.beta2),
    ];
    // AdamW's decoupled weight decay is 0.1 in nanoGPT's configs, 0 to 0.3 in most: above 1 it is
    // the first suspect, whatever the learning rate.
    if wd > 1.0 {
        causes.swap(0, 1);
    }
    format!("likely causes: {}", causes.join("; or "))
}

impl DivergenceGuard {
    /// `first_val_loss`: the stage's first evaluation, when it happened before (a resumed stage).
    pub fn new(cfg: &TrainConfig, first_val_loss: Option<f32>) -> Self {
        DivergenceGuard {
            first_val_loss,
            clipping: cfg.grad_clip > 0.0,
            causes: likely_causes(cfg),
        }
    }

    /// An error when `ev` shows that training has diverged.
    pub fn check(&mut self, ev: &Event) -> Result<()> {
        match *ev {
            Event::Log {
                iter,
                loss,
                grad_norm,
                ..
            } => ensure!(
                loss.is_finite() && (grad_norm.is_finite() || !self.clipping),
                "training diverged at iter {iter}: the loss is {loss}, the gradient norm {grad_norm}; {}",
                self.causes
            ),
            Event::Eval {
                iter,
                train_loss,
                val_loss,
                ..
            } => {
                ensure!(
                    train_loss.is_finite() && val_loss.is_finite(),
                    "training diverged at iter {iter}: train loss {train_loss}, val loss {val_loss}; {}",
                    self.causes
                );
                let first = *self.first_val_loss.get_or_insert(val_loss);
                ensure!(
                    val_loss <= DIVERGED * first,
                    "training diverged at iter {iter}: val loss {val_loss:.4} is more than {DIVERGED}x the first evaluation's ({first:.4}); {}",
                    self.causes
                );
            }
        }
        Ok(())
    }
}

/// A [`Trainer`]'s state without its tensors: what rank 0 sends the other ranks.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ReplicaState {
    pub config: super::GptConfig,
    pub cfg: TrainConfig,
    pub iter_num: u64,
    pub best_val_loss: f32,
    pub rng: Rng,
    pub adam_step: u64,
    pub skip_eval: bool,
}

pub struct Trainer<'d> {
    /// The model being trained, on its device.
    engine: Engine,
    /// On a GPU, the host copy of the weights that checkpoints are written from, refreshed by
    /// `sync_host`; empty on the CPU, whose engine holds its weights on the host.
    host_params: Vec<f32>,
    pub opt: AdamW,
    pub cfg: TrainConfig,
    pub rng: Rng,
    pub iter_num: u64,
    pub best_val_loss: f32,
    train: &'d [u16],
    val: &'d [u16],
    /// Set when resuming: the evaluation at `iter_num` already happened before the checkpoint.
    skip_eval: bool,
    /// See [`Trainer::after_each_batch`].
    after_batch: Option<Box<dyn Fn() + 'd>>,
    /// The other ranks, when training data-parallel (see [`Trainer::data_parallel`]).
    comm: &'d dyn Collective,
    /// Seconds spent in the training steps' collectives (gradients, norm, weights, loss).
    pub comm_seconds: f64,
}

impl<'d> Trainer<'d> {
    /// Starts training `model` from iteration 0.
    pub fn new(model: Gpt, cfg: TrainConfig, train: &'d [u16], val: &'d [u16]) -> Result<Self> {
        cfg.validate()?;
        let t = model.config.block_size;
        ensure!(
            train.len() > t + 1 && val.len() > t + 1,
            "the data is shorter than block_size + 1 ({} tokens): use a smaller block_size or more text",
            t + 1
        );
        let opt = AdamW::new(cfg.adamw(), &model.layout);
        let rng = Rng::new(cfg.seed);
        Ok(Trainer {
            engine: Engine::Cpu(Box::new(model)),
            host_params: Vec::new(),
            opt,
            cfg,
            rng,
            iter_num: 0,
            best_val_loss: 1e9,
            train,
            val,
            skip_eval: false,
            after_batch: None,
            comm: &Single,
            comm_seconds: 0.0,
        })
    }

    /// What another rank needs, besides the tensors ([`Trainer::share_state`]), to hold this
    /// trainer (see the `ranks` module).
    pub fn replica_state(&self) -> ReplicaState {
        ReplicaState {
            config: self.config().clone(),
            cfg: self.cfg.clone(),
            iter_num: self.iter_num,
            best_val_loss: self.best_val_loss,
            rng: self.rng.clone(),
            adam_step: self.opt.step,
            skip_eval: self.skip_eval,
        }
    }

    /// A trainer like the one `state` describes, with zero weights and moments until
    /// [`Trainer::share_state`] brings rank 0's.
    pub fn replica(state: ReplicaState, train: &'d [u16], val: &'d [u16]) -> Result<Self> {
        let n = super::params::ParamLayout::new(&state.config).total;
        let model = Gpt::from_params(state.config, vec![0.0; n])?;
        let mut tr = Trainer::new(model, state.cfg, train, val)?;
        tr.iter_num = state.iter_num;
        tr.best_val_loss = state.best_val_loss;
        tr.rng = state.rng;
        tr.opt.step = state.adam_step;
        tr.skip_eval = state.skip_eval;
        Ok(tr)
    }

    /// Rank 0's weights and moments on every rank (every rank calls it, after
    /// [`Trainer::data_parallel`], and on GPUs after [`Trainer::use_device`]).
    /// With ZeRO-1 on the CPU, each rank then keeps only its shard of the moments.
    pub fn share_state(&mut self) -> Result<()> {
        let params = match &mut self.engine {
            Engine::Cpu(model) => &mut model.params,
            Engine::Cuda(_) => &mut self.host_params,
        };
        self.comm.broadcast(params)?;
        self.comm.broadcast(&mut self.opt.m)?;
        self.comm.broadcast(&mut self.opt.v)?;
        if let Engine::Cuda(g) = &mut self.engine {
            g.upload_params(0, &self.host_params)?;
            g.upload_moments(&self.opt.m, &self.opt.v)?;
        }
        self.shard_moments();
        Ok(())
    }

    /// ZeRO-1: this rank's shard of the moments only (no-op otherwise, or when already so).
    fn shard_moments(&mut self) {
        // A GPU keeps every moment (its ZeRO-1 step updates only its shard of them).
        if self.zero_sharded() && self.engine.device_name().is_none() {
            let mine = self.shards().range(self.comm.rank());
            if self.opt.held() != mine {
                self.opt.keep_shard(mine);
            }
        }
    }

    /// How ZeRO-1 splits the parameters (and gradients and moments) over the ranks.
    fn shards(&self) -> Shards {
        Shards::new(self.params().len(), self.comm.world())
    }

    /// Trains as one of `comm.world()` ranks (call before [`Trainer::run_streaming`], on every rank, with
    /// the same state: see the `ranks` module). `gradient_accumulation_steps` is the global count.
    pub fn data_parallel(&mut self, comm: &'d dyn Collective) -> Result<()> {
        let (world, gas) = (comm.world(), self.cfg.gradient_accumulation_steps);
        ensure!(
            gas.is_multiple_of(world),
            "gradient_accumulation_steps ({gas}) must be a multiple of the number of ranks ({world}): each rank computes gradient_accumulation_steps / ranks micro-steps of every iteration, as in nanoGPT"
        );
        if world > 1 {
            match (self.engine.device_name(), comm.nccl().is_some()) {
                (Some(_), false) => anyhow::bail!(
                    "data-parallel training on GPUs goes through NCCL, but these ranks joined over MPI: start GPU ranks with `pipe run --ranks N`, torchrun, or srun with PIPE_COLLECTIVE=nccl"
                ),
                (None, true) => anyhow::bail!(
                    "these ranks joined over NCCL, which moves GPU memory, but the stage trains on the CPU: start CPU ranks with `pipe run --ranks N` or mpirun (MPI), or train with device: cuda"
                ),
                _ => {}
            }
        }
        self.comm = comm;
        Ok(())
    }

    /// Moves training to `device` (call before [`Trainer::run_streaming`]).
    pub fn use_device(&mut self, device: Device) -> Result<()> {
        ensure!(
            self.comm.world() == 1,
            "choose the device before joining the other ranks (Trainer::data_parallel)"
        );
        let (Device::Cuda(precision), Engine::Cpu(model)) = (device, &self.engine) else {
            return Ok(());
        };
        let mut g = GpuGpt::new(&model.config, &model.params, precision)?;
        g.upload_moments(&self.opt.m, &self.opt.v)?;
        if let Engine::Cpu(model) = std::mem::replace(&mut self.engine, Engine::Cuda(Box::new(g))) {
            self.host_params = model.params;
        }
        Ok(())
    }

    /// Runs `f` each time a batch has been copied out of the token streams (training and
    /// evaluation). Memory-mapped streams drop their pages there: the kernel maps a whole page-cache
    /// folio (here ~1.6 MB) on each fault, so random windows would otherwise make a large token
    /// file resident bit by bit (nanoGPT recreates its np.memmap every batch for the same reason).
    pub fn after_each_batch(&mut self, f: impl Fn() + 'd) {
        self.after_batch = Some(Box::new(f));
    }

    /// The GPU's name when training on one.
    pub fn device_name(&self) -> Option<&str> {
        self.engine.device_name()
    }

    pub fn config(&self) -> &GptConfig {
        self.engine.config()
    }

    /// The weights on the host: on a GPU, as of the last `sync_host` (every checkpoint, and the
    /// end of training).
    pub fn params(&self) -> &[f32] {
        match &self.engine {
            Engine::Cpu(model) => &model.params,
            Engine::Cuda(_) => &self.host_params,
        }
    }

    /// Makes `params()` and `opt` the whole state: the GPU's weights and moments downloaded,
    /// or with ZeRO-1 every rank's shard of the moments gathered on rank 0 (which writes the
    /// checkpoint; the other ranks keep their shards). No-op otherwise.
    fn sync_host(&mut self) -> Result<()> {
        if let Engine::Cuda(g) = &self.engine {
            g.download(&mut self.host_params, &mut self.opt.m, &mut self.opt.v)?;
        }
        if self.zero_sharded() {
            let (comm, shards) = (self.comm, self.shards());
            // On the CPU the moments are this rank's shard; a GPU downloads all of them, of
            // which only its shard is current.
            let mine = match &self.engine {
                Engine::Cpu(_) => 0..self.opt.m.len(),
                Engine::Cuda(_) => shards.range(comm.rank()),
            };
            let m = gather_to_root(comm, shards, &self.opt.m[mine.clone()])?;
            let v = gather_to_root(comm, shards, &self.opt.v[mine])?;
            if comm.rank() == 0 {
                self.opt.set_whole(m, v);
            }
        }
        Ok(())
    }

    fn zero_sharded(&self) -> bool {
        self.cfg.zero_stage == 1 && self.comm.world() > 1
    }

    /// Calls `on_report` and, with several ranks, makes every rank go on or stop with rank 0
    /// (only rank 0 reports anything that can fail: writing checkpoints and records).
    fn report(
        &self,
        on_report: &mut dyn FnMut(Report<'_>) -> Result<()>,
        report: Report<'_>,
    ) -> Result<()> {
        let result = on_report(report);
        if self.comm.world() > 1 {
            let mut go = vec![u8::from(result.is_ok())];
            self.comm.broadcast_bytes(&mut go)?;
            if go != [1] && result.is_ok() {
                anyhow::bail!("rank 0 stopped the stage (its error is in rank 0's output)");
            }
        }
        result
    }

    /// One optimizer step on this rank's gradients (already divided by the global accumulation
    /// count): summed over the ranks, clipped by the global norm, AdamW. Returns the norm (NaN
    /// without clipping). On one rank, the engine's own step.
    fn step(&mut self, lr: f64) -> Result<f32> {
        let clip = self.cfg.grad_clip as f32;
        let comm = self.comm;
        if comm.world() == 1 {
            return self.engine.step(&mut self.opt, lr, clip);
        }
        let zero_sharded = self.zero_sharded();
        let shards = self.shards();
        let model = match &mut self.engine {
            Engine::Cpu(model) => model,
            Engine::Cuda(g) => {
                let nccl = comm.nccl().context("GPU ranks need the NCCL backend")?;
                if zero_sharded {
                    let (norm, seconds) = g.step_sharded(&mut self.opt, lr, clip, nccl, shards)?;
                    self.comm_seconds += seconds;
                    return Ok(norm);
                }
                // Timed up to the queued work's end, so the share is the communication's.
                g.synchronize()?;
                let started = Instant::now();
                g.all_reduce_grads(nccl)?;
                g.synchronize()?;
                self.comm_seconds += started.elapsed().as_secs_f64();
                return g.step(&mut self.opt, lr, clip);
            }
        };
        let started = Instant::now();
        if !zero_sharded {
            // The summed gradients, then the one-rank step on them.
            comm.all_reduce_sum(&mut model.grads)?;
            self.comm_seconds += started.elapsed().as_secs_f64();
            return self.engine.step(&mut self.opt, lr, clip);
        }
        // ZeRO-1: this rank's shard of the summed gradients, of the moments and of the update.
        let mine = shards.range(comm.rank());
        let mut padded = std::mem::take(&mut model.grads);
        padded.resize(shards.padded(), 0.0);
        let mut shard = vec![0.0f32; shards.shard];
        comm.reduce_scatter_sum(&padded, &mut shard)?;
        self.comm_seconds += started.elapsed().as_secs_f64();
        padded.truncate(shards.len);
        model.grads = padded;
        let shard = &mut shard[..mine.len()];
        let norm = if clip > 0.0 {
            let mut sq = [grad_square_sum(shard)];
            let started = Instant::now();
            comm.all_reduce_sum_f64(&mut sq)?;
            self.comm_seconds += started.elapsed().as_secs_f64();
            let norm = sq[0].sqrt() as f32;
            if let Some(coef) = clip_coef(norm, clip) {
                shard.iter_mut().for_each(|g| *g *= coef);
            }
            norm
        } else {
            f32::NAN
        };
        self.opt.update_range(&mut model.params, shard, mine, lr);
        let started = Instant::now();
        gather_shards(comm, shards, &mut model.params)?;
        self.comm_seconds += started.elapsed().as_secs_f64();
        model.zero_grad();
        Ok(norm)
    }

    fn eval_split(&mut self, train: bool) -> Result<f32> {
        let data = if train { self.train } else { self.val };
        let (b, n, comm) = (self.cfg.batch_size, self.cfg.eval_iters, self.comm);
        let after: &dyn Fn() = match &self.after_batch {
            Some(f) => f.as_ref(),
            None => &|| {},
        };
        estimate_loss_shared(&mut self.engine, data, b, n, &mut self.rng, after, comm)
    }

    /// Like [`Trainer::resume`], taking the checkpoint's buffers instead of copying them.
    pub fn from_checkpoint(
        mut ckpt: Checkpoint,
        cfg: TrainConfig,
        train: &'d [u16],
        val: &'d [u16],
    ) -> Result<Self> {
        let opt = ckpt.take_optimizer(cfg.adamw());
        let model = Gpt::from_params(ckpt.config, ckpt.params)?;
        let mut tr = Trainer::new(model, cfg, train, val)?;
        if let Some(p) = ckpt.progress {
            tr.opt = opt;
            tr.rng = p.rng;
            tr.iter_num = p.iter_num;
            tr.best_val_loss = p.best_val_loss;
            tr.skip_eval = true;
        }
        Ok(tr)
    }

    /// Continues from a checkpoint with training progress (nanoGPT's `init_from='resume'`).
    pub fn resume(
        ckpt: &Checkpoint,
        cfg: TrainConfig,
        train: &'d [u16],
        val: &'d [u16],
    ) -> Result<Self> {
        let model = Gpt::from_params(ckpt.config.clone(), ckpt.params.clone())?;
        let mut tr = Trainer::new(model, cfg, train, val)?;
        if let Some(p) = &ckpt.progress {
            tr.opt = ckpt.restore_optimizer(tr.cfg.adamw());
            tr.rng = p.rng.clone();
            tr.iter_num = p.iter_num;
            tr.best_val_loss = p.best_val_loss;
            tr.skip_eval = true;
        }
        Ok(tr)
    }

    /// The training state as a checkpoint (a copy; see [`Trainer::checkpoint_view`]).
    pub fn checkpoint(&self) -> Checkpoint {
        let v = self.checkpoint_view();
        Checkpoint {
            config: v.config.clone(),
            params: v.params.to_vec(),
            optimizer: v.optimizer.map(|(m, v)| (m.to_vec(), v.to_vec())),
            progress: v.progress,
        }
    }

    /// The training state as a checkpoint that borrows the host buffers (on a GPU, as of the
    /// last download: every checkpoint event and the end of `run`).
    pub fn checkpoint_view(&self) -> CheckpointRef<'_> {
        CheckpointRef {
            config: self.engine.config(),
            params: self.params(),
            // Never a shard of them (a ZeRO-1 rank other than 0): no moments rather than part.
            optimizer: (self.opt.held() == (0..self.params().len()))
                .then_some((&self.opt.m, &self.opt.v)),
            progress: Some(TrainProgress {
                iter_num: self.iter_num,
                best_val_loss: self.best_val_loss,
                rng: self.rng.clone(),
                adam_step: self.opt.step,
                adam: self.opt.cfg.clone(),
                train_config: serde_json::to_value(&self.cfg).expect("config serialises"),
            }),
        }
    }

    /// Runs until `max_iters`, reporting through `on_report`; an error from it stops training.
    pub fn run_streaming(
        &mut self,
        on_report: &mut dyn FnMut(Report<'_>) -> Result<()>,
    ) -> Result<()> {
        let (b, t) = (self.cfg.batch_size, self.config().block_size);
        let gas = self.cfg.gradient_accumulation_steps;
        let sched = self.cfg.schedule();
        let (mut x, mut y) = (Vec::new(), Vec::new());
        loop {
            let it = self.iter_num;
            let lr = sched.at(it);
            let last = it >= self.cfg.max_iters;
            // Whether the host holds the whole state now (see `sync_host`).
            let mut synced = false;
            if (it.is_multiple_of(self.cfg.eval_interval) || last) && !self.skip_eval {
                let train_loss = self.eval_split(true)?;
                let val_loss = self.eval_split(false)?;
                self.report(
                    on_report,
                    Report::Event(Event::Eval {
                        iter: it,
                        train_loss,
                        val_loss,
                        lr,
                    }),
                )?;
                let keep = val_loss < self.best_val_loss || self.cfg.always_save_checkpoint;
                if val_loss < self.best_val_loss {
                    self.best_val_loss = val_loss;
                }
                if it > 0 {
                    self.sync_host()?;
                    self.report(
                        on_report,
                        Report::Checkpoint {
                            iter: it,
                            keep,
                            state: self.checkpoint_view(),
                        },
                    )?;
                    synced = true;
                }
            }
            self.skip_eval = false;
            if last {
                return if synced { Ok(()) } else { self.sync_host() };
            }
            if synced {
                self.shard_moments();
            }
            let start = Instant::now();
            let mut loss = 0.0;
            // This rank's micro-steps of the global batch (all of them on one rank).
            let per_rank = gas / self.comm.world();
            let mine = self.comm.rank() * per_rank..(self.comm.rank() + 1) * per_rank;
            for micro in 0..gas {
                if !mine.contains(&micro) {
                    skip_batch(self.train, b, t, &mut self.rng);
                    continue;
                }
                get_batch(self.train, b, t, &mut self.rng, &mut x, &mut y);
                if let Some(f) = &self.after_batch {
                    f();
                }
                let dropout = DropoutPlan {
                    p: self.config().dropout,
                    seed: mix64(self.cfg.seed ^ mix64(it * 1_000_003 + micro as u64)),
                };
                loss = self
                    .engine
                    .forward_backward(&x, &y, (b, t), dropout, 1.0 / gas as f32)?;
            }
            let grad_norm = self.step(lr)?;
            if self.comm.world() > 1 {
                // The last micro-step is the last rank's: its loss, on every rank.
                let last_rank = self.comm.rank() + 1 == self.comm.world();
                let mut l = [if last_rank { loss as f64 } else { 0.0 }];
                let started = Instant::now();
                self.comm.all_reduce_sum_f64(&mut l)?;
                self.comm_seconds += started.elapsed().as_secs_f64();
                loss = l[0] as f32;
            }
            let ms = start.elapsed().as_secs_f64() * 1e3;
            if it.is_multiple_of(self.cfg.log_interval.max(1)) {
                self.report(
                    on_report,
                    Report::Event(Event::Log {
                        iter: it,
                        loss,
                        lr,
                        grad_norm,
                        ms,
                    }),
                )?;
            }
            self.iter_num += 1;
        }
    }
}

/// Every rank's `shard` (its part of a buffer split as `shards`) joined on rank 0; empty on the
/// other ranks.
fn gather_to_root(comm: &dyn Collective, shards: Shards, shard: &[f32]) -> Result<Vec<f32>> {
    let mut send = shard.to_vec();
    send.resize(shards.shard, 0.0);
    let mut whole = vec![0.0; if comm.rank() == 0 { shards.padded() } else { 0 }];
    comm.gather(&send, &mut whole)?;
    whole.truncate(shards.len);
    Ok(whole)
}

/// Every rank's shard of `buf` (padded to `shards.padded()`) on every rank.
fn gather_shards(comm: &dyn Collective, shards: Shards, buf: &mut Vec<f32>) -> Result<()> {
    let mine = shards.range(comm.rank());
    let mut send = buf[mine].to_vec();
    send.resize(shards.shard, 0.0);
    buf.resize(shards.padded(), 0.0);
    comm.all_gather(&send, buf)?;
    buf.truncate(shards.len);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eval(iter: u64, val_loss: f32) -> Event {
        Event::Eval {
            iter,
            train_loss: val_loss,
            val_loss,
            lr: 1e-3,
        }
    }

    fn log(loss: f32, grad_norm: f32) -> Event {
        Event::Log {
            iter: 3,
            loss,
            lr: 1e-3,
            grad_norm,
            ms: 1.0,
        }
    }

    #[test]
    fn divergence_is_a_loss_far_above_the_first_or_not_finite() {
        let cfg = TrainConfig::default();
        let mut g = DivergenceGuard::new(&cfg, None);
        g.check(&eval(0, 4.0)).unwrap();
        g.check(&eval(10, 11.9)).unwrap();
        let e = g.check(&eval(20, 12.5)).unwrap_err().to_string();
        assert!(
            e.contains("diverged") && e.contains("likely causes: learning_rate 6e-4 too high"),
            "{e}"
        );
        assert!(
            e.contains("weight_decay 1e-1") && e.contains("beta2 0.95"),
            "{e}"
        );
        // Weight decay far above nanoGPT's is named first.
        let decay = TrainConfig {
            weight_decay: 1e30,
            ..cfg.clone()
        };
        let e = DivergenceGuard::new(&decay, None)
            .check(&log(f32::NAN, 0.5))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("likely causes: weight_decay 1e30 too large"),
            "{e}"
        );
        // A resumed stage compares with the first evaluation before the interruption.
        assert!(
            DivergenceGuard::new(&cfg, Some(2.0))
                .check(&eval(30, 6.5))
                .is_err()
        );
        assert!(g.check(&eval(30, f32::NAN)).is_err());
        g.check(&log(3.0, 0.5)).unwrap();
        assert!(g.check(&log(f32::INFINITY, 0.5)).is_err());
        assert!(g.check(&log(3.0, f32::NAN)).is_err());
        // Without clipping the norm is not computed (NaN): that is fine.
        let no_clip = TrainConfig {
            grad_clip: 0.0,
            ..cfg
        };
        DivergenceGuard::new(&no_clip, None)
            .check(&log(3.0, f32::NAN))
            .unwrap();
    }

    #[test]
    fn knobs_the_arithmetic_cannot_use_are_named() {
        let bad = |f: fn(&mut TrainConfig)| {
            let mut c = TrainConfig::default();
            f(&mut c);
            c.invalid_field().map(|x| x.0)
        };
        assert_eq!(bad(|_| {}), None);
        assert_eq!(bad(|c| c.beta1 = 1.0), Some("beta1"));
        assert_eq!(bad(|c| c.beta2 = -0.1), Some("beta2"));
        assert_eq!(
            bad(|c| c.learning_rate = f64::INFINITY),
            Some("learning_rate")
        );
        assert_eq!(bad(|c| c.min_lr = -1e-4), Some("min_lr"));
        assert_eq!(bad(|c| c.weight_decay = f64::NAN), Some("weight_decay"));
        assert_eq!(bad(|c| c.grad_clip = -1.0), Some("grad_clip"));
        assert_eq!(bad(|c| c.batch_size = 0), Some("batch_size"));
        assert_eq!(bad(|c| c.beta1 = 0.0), None);
    }
}
