//! Stands in for the CUDA engine (`cuda/`) in builds without the `cuda` feature: the same API,
//! but no value of [`GpuGpt`] can exist, so every caller's GPU branch is dead code and
//! asking for a GPU model is a clear error.

use super::config::GptConfig;
use super::model::DropoutPlan;
use super::optim::AdamW;
use super::precision::Precision;
use super::sample::SampleConfig;
use anyhow::{Result, bail};
use std::convert::Infallible;

/// How many GPUs there are; here always the error that this build has no CUDA support.
pub fn device_count() -> Result<usize> {
    bail!(NO_CUDA)
}

/// The GPU's name; here always the error that this build has no CUDA support.
pub fn gpu_name() -> Result<String> {
    bail!(NO_CUDA)
}

const NO_CUDA: &str = "device `cuda`: this pipe was built without CUDA support; rebuild it with \
                       `cargo build --release --features cuda`";

pub struct GpuGpt {
    never: Infallible,
}

impl GpuGpt {
    pub fn new(_config: &GptConfig, _params: &[f32], _precision: Precision) -> Result<GpuGpt> {
        bail!(NO_CUDA)
    }
    pub fn new_zeroed(_config: &GptConfig, _precision: Precision) -> Result<GpuGpt> {
        bail!(NO_CUDA)
    }
    pub fn upload_params(&mut self, _offset: usize, _host: &[f32]) -> Result<()> {
        match self.never {}
    }
    pub fn config(&self) -> &GptConfig {
        match self.never {}
    }
    pub fn device_name(&self) -> &str {
        match self.never {}
    }
    pub fn upload_moments(&mut self, _m: &[f32], _v: &[f32]) -> Result<()> {
        match self.never {}
    }
    pub fn download(&self, _params: &mut [f32], _m: &mut [f32], _v: &mut [f32]) -> Result<()> {
        match self.never {}
    }
    pub fn forward(
        &mut self,
        _tokens: &[u32],
        _targets: Option<&[u32]>,
        _bt: (usize, usize),
        _dropout: Option<DropoutPlan>,
        _for_backward: bool,
    ) -> Result<f32> {
        match self.never {}
    }
    /// Waits for the GPU's queued work (for timing).
    pub fn synchronize(&self) -> Result<()> {
        match self.never {}
    }

    pub fn backward(&mut self, _loss_scale: f32) -> Result<()> {
        match self.never {}
    }
    pub fn step(&mut self, _opt: &mut AdamW, _lr: f64, _grad_clip: f32) -> Result<f32> {
        match self.never {}
    }
    pub fn all_reduce_grads(&self, _nccl: &Nccl) -> Result<()> {
        match self.never {}
    }
    pub fn step_sharded(
        &mut self,
        _opt: &mut AdamW,
        _lr: f64,
        _grad_clip: f32,
        _nccl: &Nccl,
        _shards: crate::collective::Shards,
    ) -> Result<(f32, f64)> {
        match self.never {}
    }
    pub fn eval_loss(&mut self, _x: &[u32], _y: &[u32], _b: usize, _t: usize) -> Result<f32> {
        match self.never {}
    }
    pub fn generate_many(
        &mut self,
        _prompt: &[u32],
        _cfg: &SampleConfig,
        _samples: std::ops::Range<usize>,
    ) -> Result<Vec<Vec<u32>>> {
        match self.never {}
    }
}

/// Stands in for the NCCL backend: no value exists, and joining is the error that this build
/// has no CUDA support.
pub enum Nccl {}

impl Nccl {
    pub fn unique_id() -> Result<crate::collective::rendezvous::UniqueId> {
        bail!(NO_CUDA)
    }
    pub fn join(
        _rank: usize,
        _world: usize,
        _local_rank: usize,
        _id: &crate::collective::rendezvous::UniqueId,
    ) -> Result<Nccl> {
        bail!(NO_CUDA)
    }
}

/// Stands in for `cuda::nccl`'s library functions.
pub mod nccl {
    use anyhow::{Result, bail};

    pub fn check_library() -> Result<()> {
        bail!(super::NO_CUDA)
    }
    pub fn link_folder() -> Result<Option<std::path::PathBuf>> {
        bail!(super::NO_CUDA)
    }
}

crate::collective::uninhabited_collective!(Nccl);
