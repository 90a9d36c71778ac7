//! Where a stage's model runs: the manifest's `device` (cpu, cuda) and `dtype` (float32, tf32, bf16),
//! and whether the host has the memory for it. The model on that device is an `Engine`
//! (engine.rs).

use super::config::GptConfig;
use super::memory::{self, Work};
use anyhow::Result;

/// Defined in `precision.rs`, which the CUDA engine imports too, so that it never imports this
/// file.
pub use super::precision::Precision;

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
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
