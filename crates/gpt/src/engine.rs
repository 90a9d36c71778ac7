//! The model on its device: the CPU engine (`Gpt`, model.rs) or the CUDA one (`GpuGpt`, cuda/),
//! behind one set of operations. The trainer, the evaluate and sample stages and `pipe bench`
//! all run the model through it, so none of them matches on the device itself.

use super::checkpoint::CheckpointFile;
use super::config::GptConfig;
use super::cuda::GpuGpt;
use super::device::Device;
use super::model::{DropoutPlan, Gpt};
use super::optim::{AdamW, clip_grad_norm};
use super::sample::{SampleConfig, generate_many};
use anyhow::Result;

pub enum Engine {
    Cpu(Box<Gpt>),
    Cuda(Box<GpuGpt>),
}

impl Engine {
    pub fn new(device: Device, config: GptConfig, params: Vec<f32>) -> Result<Engine> {
        Ok(match device {
            Device::Cpu => Engine::Cpu(Box::new(Gpt::from_params(config, params)?)),
            Device::Cuda(precision) => {
                Engine::Cuda(Box::new(GpuGpt::new(&config, &params, precision)?))
            }
        })
    }

    /// The model of a checkpoint file, read straight into the device's parameter buffer: on the
    /// CPU the one host buffer, on a GPU tensor by tensor from the file (no host copy at all).
    pub fn load(device: Device, file: &CheckpointFile) -> Result<Engine> {
        Ok(match device {
            Device::Cpu => Engine::Cpu(Box::new(Gpt::from_params(
                file.config.clone(),
                file.params()?,
            )?)),
            Device::Cuda(precision) => {
                let mut g = GpuGpt::new_zeroed(&file.config, precision)?;
                file.for_each_param(&mut |range, x| g.upload_params(range.start, x))?;
                Engine::Cuda(Box::new(g))
            }
        })
    }

    pub fn config(&self) -> &GptConfig {
        match self {
            Engine::Cpu(m) => &m.config,
            Engine::Cuda(g) => g.config(),
        }
    }

    /// The GPU's name, on one.
    pub fn device_name(&self) -> Option<&str> {
        match self {
            Engine::Cpu(_) => None,
            Engine::Cuda(g) => Some(g.device_name()),
        }
    }

    /// One training micro-step on a (b, t) batch: forward with `dropout`, then backward with
    /// the loss scaled by `loss_scale` (1 / the accumulation count), adding to the gradients.
    /// Returns the batch's loss.
    pub fn forward_backward(
        &mut self,
        x: &[u32],
        y: &[u32],
        (b, t): (usize, usize),
        dropout: DropoutPlan,
        loss_scale: f32,
    ) -> Result<f32> {
        match self {
            Engine::Cpu(m) => {
                let loss = m.forward(x, Some(y), b, t, Some(dropout));
                m.backward(loss_scale);
                Ok(loss)
            }
            Engine::Cuda(g) => {
                let loss = g.forward(x, Some(y), (b, t), Some(dropout), true)?;
                g.backward(loss_scale)?;
                Ok(loss)
            }
        }
    }

    /// The optimizer step on the accumulated gradients: clipped to a global norm of `clip`
    /// (none at 0), AdamW at `lr`, gradients zeroed. Returns the norm before clipping (NaN
    /// without clipping).
    pub fn step(&mut self, opt: &mut AdamW, lr: f64, clip: f32) -> Result<f32> {
        match self {
            Engine::Cpu(m) => {
                let norm = if clip > 0.0 {
                    clip_grad_norm(&mut m.grads, clip)
                } else {
                    f32::NAN
                };
                opt.update(&mut m.params, &m.grads, lr);
                m.zero_grad();
                Ok(norm)
            }
            Engine::Cuda(g) => g.step(opt, lr, clip),
        }
    }

    /// A batch's loss in evaluation mode (no dropout, no gradients).
    pub fn eval_loss(&mut self, x: &[u32], y: &[u32], b: usize, t: usize) -> Result<f32> {
        match self {
            Engine::Cpu(m) => Ok(m.forward_no_grad(x, Some(y), b, t)),
            Engine::Cuda(g) => g.eval_loss(x, y, b, t),
        }
    }

    /// Samples `samples` (their indices; see [`generate_many`]).
    pub fn generate_many(
        &mut self,
        prompt: &[u32],
        cfg: &SampleConfig,
        samples: std::ops::Range<usize>,
    ) -> Result<Vec<Vec<u32>>> {
        match self {
            Engine::Cpu(m) => Ok(generate_many(m, prompt, cfg, samples)),
            Engine::Cuda(g) => g.generate_many(prompt, cfg, samples),
        }
    }

    /// How many samples [`Engine::generate_many`] should get at a time: one per thread on the
    /// CPU, a batch of 64 on a GPU (so memory stays bounded and samples stream out).
    pub fn sample_batch(&self) -> usize {
        match self {
            Engine::Cpu(_) => rayon::current_num_threads(),
            Engine::Cuda(_) => 64,
        }
    }
}
