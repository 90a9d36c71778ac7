//! Where a stage's model runs: the manifest's `device` (cpu, cuda) and `dtype` (float32, tf32, bf16),
//! and a model for evaluation and sampling on either. Training picks its device in `train.rs`.

use super::config::GptConfig;
use super::cuda::GpuGpt;
use super::model::Gpt;
use super::sample::{SampleConfig, generate_many};
use anyhow::{Result, bail};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Device {
    Cpu,
    Cuda(Precision),
}

/// The format of the GPU's matrix products. Weights, activations, gradients and optimiser state
/// are f32 in every case; only cuBLAS's multiplications change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precision {
    /// Plain f32 products: the reference.
    F32,
    /// TF32 tensor cores: inputs rounded to a 10-bit mantissa, f32 accumulation.
    Tf32,
    /// bf16 tensor cores: inputs rounded to bf16 (8-bit mantissa), f32 accumulation.
    Bf16,
}

impl Device {
    /// From the manifest's defaults (already validated by the manifest loader).
    pub fn from_defaults(device: &str, dtype: &str) -> Result<Device> {
        Ok(match (device, dtype) {
            ("cpu", "float32") => Device::Cpu,
            ("cuda", "float32") => Device::Cuda(Precision::F32),
            ("cuda", "tf32") => Device::Cuda(Precision::Tf32),
            ("cuda", "bf16") => Device::Cuda(Precision::Bf16),
            _ => bail!("unsupported device `{device}` with dtype `{dtype}`"),
        })
    }
}

/// Scores a batch in evaluation mode (no dropout, no gradients), on whichever device.
pub trait EvalLoss {
    fn block_size(&self) -> usize;
    fn eval_loss(&mut self, x: &[u32], y: &[u32], b: usize, t: usize) -> Result<f32>;
}

impl EvalLoss for Gpt {
    fn block_size(&self) -> usize {
        self.config.block_size
    }
    fn eval_loss(&mut self, x: &[u32], y: &[u32], b: usize, t: usize) -> Result<f32> {
        Ok(self.forward_no_grad(x, Some(y), b, t))
    }
}

impl EvalLoss for GpuGpt {
    fn block_size(&self) -> usize {
        self.config().block_size
    }
    fn eval_loss(&mut self, x: &[u32], y: &[u32], b: usize, t: usize) -> Result<f32> {
        GpuGpt::eval_loss(self, x, y, b, t)
    }
}

/// A model for the evaluate and sample stages.
pub enum Model {
    Cpu(Box<Gpt>),
    Cuda(Box<GpuGpt>),
}

impl Model {
    pub fn new(device: Device, config: GptConfig, params: Vec<f32>) -> Result<Model> {
        Ok(match device {
            Device::Cpu => Model::Cpu(Box::new(Gpt::from_params(config, params)?)),
            Device::Cuda(precision) => {
                Model::Cuda(Box::new(GpuGpt::new(&config, &params, precision)?))
            }
        })
    }

    pub fn generate_many(
        &mut self,
        prompt: &[u32],
        cfg: &SampleConfig,
        num_samples: usize,
    ) -> Result<Vec<Vec<u32>>> {
        match self {
            Model::Cpu(m) => Ok(generate_many(m, prompt, cfg, num_samples)),
            Model::Cuda(g) => g.generate_many(prompt, cfg, num_samples),
        }
    }
}

impl EvalLoss for Model {
    fn block_size(&self) -> usize {
        match self {
            Model::Cpu(m) => m.block_size(),
            Model::Cuda(g) => g.block_size(),
        }
    }
    fn eval_loss(&mut self, x: &[u32], y: &[u32], b: usize, t: usize) -> Result<f32> {
        match self {
            Model::Cpu(m) => m.as_mut().eval_loss(x, y, b, t),
            Model::Cuda(g) => EvalLoss::eval_loss(g.as_mut(), x, y, b, t),
        }
    }
}
