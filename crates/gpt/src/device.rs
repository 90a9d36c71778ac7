//! Where a stage's model runs: the manifest's `device` (cpu, cuda) and `dtype` (float32, tf32, bf16),
//! and a model for evaluation and sampling on either. Training picks its device in `train.rs`.

use super::checkpoint::CheckpointFile;
use super::config::GptConfig;
use super::cuda::GpuGpt;
use super::memory::{self, Work};
use super::model::Gpt;
use super::sample::{SampleConfig, generate_many};
use anyhow::Result;

/// Defined in `precision.rs`, which the CUDA engine imports too: the engine never imports this file,
/// so the imports between the two go one way (device -> cuda).
pub use super::precision::Precision;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Device {
    Cpu,
    Cuda(Precision),
}

/// Why a manifest's `device`/`dtype` pair is refused: what is wrong, and a hint.
#[derive(Debug)]
pub struct Unsupported {
    pub message: String,
    pub help: &'static str,
}

impl std::fmt::Display for Unsupported {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.message, self.help)
    }
}

impl std::error::Error for Unsupported {}

impl Device {
    /// From the manifest's `defaults` (the manifest loader reports the error with its location).
    pub fn from_defaults(device: &str, dtype: &str) -> Result<Device, Unsupported> {
        let refuse = |message: String, help| Err(Unsupported { message, help });
        if !matches!(device, "cpu" | "cuda") {
            return refuse(format!("unknown device `{device}`"), "expected cpu or cuda");
        }
        let precision = match dtype {
            "float32" => Precision::F32,
            "tf32" => Precision::Tf32,
            "bf16" => Precision::Bf16,
            other => {
                return refuse(
                    format!("dtype `{other}` is not supported"),
                    "expected float32 (the default, and the reference), or on cuda tf32 or bf16 \
                     (tensor-core matrix products; weights and activations stay float32)",
                );
            }
        };
        match (device, precision) {
            ("cpu", Precision::F32) => Ok(Device::Cpu),
            ("cpu", _) => refuse(
                format!("dtype `{dtype}` needs device: cuda"),
                "the CPU engine computes in float32 only; use dtype: float32",
            ),
            _ => Ok(Device::Cuda(precision)),
        }
    }

    pub fn is_cuda(self) -> bool {
        matches!(self, Device::Cuda(_))
    }

    /// The manifest's `device`: `cpu` or `cuda`.
    pub fn name(self) -> &'static str {
        match self {
            Device::Cpu => "cpu",
            Device::Cuda(_) => "cuda",
        }
    }

    /// The manifest's `dtype`: `float32`, `tf32` or `bf16`.
    pub fn dtype(self) -> &'static str {
        match self {
            Device::Cpu | Device::Cuda(Precision::F32) => "float32",
            Device::Cuda(Precision::Tf32) => "tf32",
            Device::Cuda(Precision::Bf16) => "bf16",
        }
    }

    /// The device as stage keys name it: `cpu`, `cuda`, or `cuda:<dtype>` when not float32.
    pub fn key_name(self) -> String {
        match self.dtype() {
            "float32" => self.name().to_string(),
            dtype => format!("{}:{dtype}", self.name()),
        }
    }
}

/// Checks that `work` with `config` fits in this machine's memory. On a GPU the activations live in
/// GPU memory (the CUDA engine checks those), so only the model's host copies count here.
pub fn check_host(config: &GptConfig, work: Work, device: Device) -> Result<()> {
    let mut need = config.footprint(work);
    if device != Device::Cpu {
        need.activations = None;
    }
    memory::check_host(&need)
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

    /// The model of a checkpoint file, read straight into the device's parameter buffer: on the
    /// CPU the one host buffer, on a GPU tensor by tensor from the file (no host copy at all).
    pub fn load(device: Device, file: &CheckpointFile) -> Result<Model> {
        Ok(match device {
            Device::Cpu => Model::Cpu(Box::new(Gpt::from_params(
                file.config.clone(),
                file.params()?,
            )?)),
            Device::Cuda(precision) => {
                let mut g = GpuGpt::new_zeroed(&file.config, precision)?;
                file.for_each_param(&mut |range, x| g.upload_params(range.start, x))?;
                Model::Cuda(Box::new(g))
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
