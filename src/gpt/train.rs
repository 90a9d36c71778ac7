//! The training loop, nanoGPT's train.py without the DDP: evaluate every `eval_interval`, checkpoint,
//! accumulate gradients over micro-steps, clip, AdamW step.
//!
//! Resume is bit-identical: a checkpoint holds the state *after* the evaluation of its iteration
//! (weights, moments, RNG, best_val_loss), and a resumed trainer skips that one evaluation.

use super::checkpoint::{Checkpoint, TrainProgress};
use super::cuda::GpuGpt;
use super::device::{Device, EvalLoss};
use super::model::{DropoutPlan, Gpt};
use super::optim::{AdamW, AdamWConfig, LrSchedule, clip_grad_norm};
use super::rng::{Rng, mix64};
use anyhow::{Result, ensure};
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
        }
    }
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
        ensure!(self.batch_size > 0, "batch_size must be positive");
        ensure!(
            self.gradient_accumulation_steps > 0,
            "gradient_accumulation_steps must be positive"
        );
        ensure!(self.eval_interval > 0, "eval_interval must be positive");
        ensure!(self.eval_iters > 0, "eval_iters must be positive");
        ensure!(
            self.learning_rate >= 0.0 && self.min_lr >= 0.0,
            "learning rates must be non-negative"
        );
        Ok(())
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

/// Mean loss over `eval_iters` batches per split, in evaluation mode (nanoGPT's estimate_loss).
pub fn estimate_loss<M: EvalLoss + ?Sized>(
    model: &mut M,
    data: &[u16],
    batch_size: usize,
    eval_iters: usize,
    rng: &mut Rng,
) -> Result<f32> {
    let t = model.block_size();
    let (mut x, mut y) = (Vec::new(), Vec::new());
    let mut total = 0.0f64;
    for _ in 0..eval_iters {
        get_batch(data, batch_size, t, rng, &mut x, &mut y);
        total += model.eval_loss(&x, &y, batch_size, t)? as f64;
    }
    Ok((total / eval_iters as f64) as f32)
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
    /// Saved at every evaluation (from iteration 1 on). `keep` says whether nanoGPT would have written
    /// it to ckpt.pt (val loss improved, or always_save_checkpoint); the others are resume points only.
    Checkpoint {
        iter: u64,
        keep: bool,
        bytes: Vec<u8>,
    },
    Log {
        iter: u64,
        loss: f32,
        lr: f64,
        grad_norm: f32,
        ms: f64,
    },
}

pub struct Trainer<'d> {
    pub model: Gpt,
    pub opt: AdamW,
    pub cfg: TrainConfig,
    pub rng: Rng,
    pub iter_num: u64,
    pub best_val_loss: f32,
    train: &'d [u16],
    val: &'d [u16],
    /// Set when resuming: the evaluation at `iter_num` already happened before the checkpoint.
    skip_eval: bool,
    /// On a GPU, the live weights and moments; `model.params` and `opt.m/v` are then host copies,
    /// refreshed before each checkpoint and at the end.
    gpu: Option<GpuGpt>,
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
            model,
            opt,
            cfg,
            rng,
            iter_num: 0,
            best_val_loss: 1e9,
            train,
            val,
            skip_eval: false,
            gpu: None,
        })
    }

    /// Moves training to `device` (call before [`Trainer::run`]).
    pub fn use_device(&mut self, device: Device) -> Result<()> {
        if let Device::Cuda(precision) = device {
            let mut g = GpuGpt::new(&self.model.config, &self.model.params, precision)?;
            g.upload_moments(&self.opt.m, &self.opt.v)?;
            self.gpu = Some(g);
        }
        Ok(())
    }

    /// The GPU's name when training on one.
    pub fn device_name(&self) -> Option<&str> {
        self.gpu.as_ref().map(|g| g.device_name())
    }

    /// Copies the GPU's weights and moments into `model.params` and `opt` (no-op on the CPU).
    fn sync_host(&mut self) -> Result<()> {
        if let Some(g) = &self.gpu {
            g.download(&mut self.model.params, &mut self.opt.m, &mut self.opt.v)?;
        }
        Ok(())
    }

    fn eval_split(&mut self, train: bool) -> Result<f32> {
        let data = if train { self.train } else { self.val };
        let (b, n) = (self.cfg.batch_size, self.cfg.eval_iters);
        match &mut self.gpu {
            Some(g) => estimate_loss(g, data, b, n, &mut self.rng),
            None => estimate_loss(&mut self.model, data, b, n, &mut self.rng),
        }
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

    pub fn checkpoint(&self) -> Checkpoint {
        Checkpoint {
            config: self.model.config.clone(),
            params: self.model.params.clone(),
            optimizer: Some((self.opt.m.clone(), self.opt.v.clone())),
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

    /// Runs until `max_iters`, reporting through `on_event`; an error from it stops training.
    pub fn run(&mut self, on_event: &mut dyn FnMut(Event) -> Result<()>) -> Result<()> {
        let (b, t) = (self.cfg.batch_size, self.model.config.block_size);
        let gas = self.cfg.gradient_accumulation_steps;
        let sched = self.cfg.schedule();
        let (mut x, mut y) = (Vec::new(), Vec::new());
        loop {
            let it = self.iter_num;
            let lr = sched.at(it);
            let last = it >= self.cfg.max_iters;
            if (it.is_multiple_of(self.cfg.eval_interval) || last) && !self.skip_eval {
                let train_loss = self.eval_split(true)?;
                let val_loss = self.eval_split(false)?;
                on_event(Event::Eval {
                    iter: it,
                    train_loss,
                    val_loss,
                    lr,
                })?;
                let keep = val_loss < self.best_val_loss || self.cfg.always_save_checkpoint;
                if val_loss < self.best_val_loss {
                    self.best_val_loss = val_loss;
                }
                if it > 0 {
                    self.sync_host()?;
                    on_event(Event::Checkpoint {
                        iter: it,
                        keep,
                        bytes: self.checkpoint().to_bytes()?,
                    })?;
                }
            }
            self.skip_eval = false;
            if last {
                return self.sync_host();
            }
            let start = Instant::now();
            let mut loss = 0.0;
            for micro in 0..gas {
                get_batch(self.train, b, t, &mut self.rng, &mut x, &mut y);
                let dropout = DropoutPlan {
                    p: self.model.config.dropout,
                    seed: mix64(self.cfg.seed ^ mix64(it * 1_000_003 + micro as u64)),
                };
                match &mut self.gpu {
                    Some(g) => {
                        loss = g.forward(&x, Some(&y), (b, t), Some(dropout), true)?;
                        g.backward(1.0 / gas as f32)?;
                    }
                    None => {
                        loss = self.model.forward(&x, Some(&y), b, t, Some(dropout));
                        self.model.backward(1.0 / gas as f32);
                    }
                }
            }
            let grad_norm = match &mut self.gpu {
                Some(g) => g.step(&mut self.opt, lr, self.cfg.grad_clip as f32)?,
                None => {
                    let norm = if self.cfg.grad_clip > 0.0 {
                        clip_grad_norm(&mut self.model.grads, self.cfg.grad_clip as f32)
                    } else {
                        f32::NAN
                    };
                    self.opt
                        .update(&mut self.model.params, &self.model.grads, lr);
                    self.model.zero_grad();
                    norm
                }
            };
            let ms = start.elapsed().as_secs_f64() * 1e3;
            if it.is_multiple_of(self.cfg.log_interval.max(1)) {
                on_event(Event::Log {
                    iter: it,
                    loss,
                    lr,
                    grad_norm,
                    ms,
                })?;
            }
            self.iter_num += 1;
        }
    }
}
