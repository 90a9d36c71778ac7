//! The CUDA engine: the same GPT as `model.rs`, with parameters, gradients, AdamW moments and
//! activations in GPU memory. Matrix products go to cuBLAS; everything else is a kernel of
//! `kernels.cu`, compiled by NVRTC the first time a GPU model is made. cudarc loads the driver,
//! cuBLAS and NVRTC at run time, so building needs no CUDA toolkit.
//!
//! The pass is `model.rs` step for step (same buffers, same dropout masks, same order), so the two
//! can be compared op by op (`tests/cuda.rs`). Results are not bit-stable on the GPU (the embedding
//! gradient uses atomics, and cuBLAS picks its own summation order); f32 stays the reference
//! precision. `dtype: tf32` lets cuBLAS multiply on TF32 tensor cores; `dtype: bf16` rounds each
//! product's operands to bf16 (copies in scratch buffers) for bf16 tensor cores. Weights,
//! activations, gradients and accumulation stay f32 either way.
//!
//! By concern: [`loader`] finds the libraries, compiles the kernels and opens the GPU; [`buffers`]
//! holds device buffers, the activations, host-device copies and the `launch!` macro; [`blas`] the
//! cuBLAS products; [`layers`] the layers as kernel launches; [`pass`] the forward and backward
//! passes; [`optim`] clipping and AdamW (and the data-parallel step); [`nccl`] the NCCL collective; [`sample`] generation. This file keeps the public surface:
//! [`GpuGpt`] and its constructors, and the loader's public items.

mod blas;
mod buffers;
mod layers;
mod loader;
pub mod nccl;
mod optim;
mod pass;
mod sample;

use super::config::GptConfig;
use super::memory::Footprint;
use super::params::ParamLayout;
use super::precision::Precision;
use anyhow::{Result, anyhow, ensure};
use buffers::{Acts, Buf, check_gpu_memory};
use cudarc::cublas::{CudaBlas, sys as blas_sys};
use pass::Pass;
use std::cell::RefCell;
use std::sync::Arc;

pub use loader::{Gpu, KERNEL_NAMES, compile_kernels, device_count, gpu_name, library_available};
pub use nccl::Nccl;

/// Rows per block of the column sums behind bias and LayerNorm gradients.
const ROWS: usize = 256;
/// Elements per block of the gradient-norm partial sums.
const NORM_CHUNK: usize = 1 << 16;

/// A GPT whose state lives on the GPU. Parameters go up once; the host sees them again through
/// [`GpuGpt::download`] (checkpoints are the CPU engine's format, so devices can alternate).
pub struct GpuGpt {
    gpu: Arc<Gpu>,
    blas: CudaBlas,
    precision: Precision,
    compute: blas_sys::cublasComputeType_t,
    /// bf16 copies of the two operands of the current product (dtype: bf16), grown as needed.
    bf16_operands: RefCell<[Option<Buf<u16>>; 2]>,
    pub config: GptConfig,
    layout: ParamLayout,
    params: Buf<f32>,
    grads: Buf<f32>,
    m: Buf<f32>,
    v: Buf<f32>,
    norm_partials: Buf<f64>,
    /// ZeRO-1's padded gradients and this rank's shard of their sum (data-parallel only).
    zero_scratch: Option<(Buf<f32>, Buf<f32>)>,
    acts: Option<Acts>,
    last: Option<Pass>,
}

impl GpuGpt {
    /// Uploads `params` (the CPU layout); matrix products run at `precision`.
    pub fn new(config: &GptConfig, params: &[f32], precision: Precision) -> Result<GpuGpt> {
        let total = ParamLayout::new(config).total;
        ensure!(
            params.len() == total,
            "parameter count {} does not match the config ({total})",
            params.len(),
        );
        let mut g = GpuGpt::new_zeroed(config, precision)?;
        g.upload_params(0, params)?;
        Ok(g)
    }

    /// A model whose parameters are all zero until [`GpuGpt::upload_params`] fills them (a
    /// checkpoint is uploaded tensor by tensor from its memory map, with no host copy).
    pub fn new_zeroed(config: &GptConfig, precision: Precision) -> Result<GpuGpt> {
        config.validate()?;
        let layout = ParamLayout::new(config);
        let gpu = Gpu::get()?;
        ensure!(
            precision == Precision::F32 || gpu.capability.0 >= 8,
            "dtype `{}` needs tensor cores of compute capability 8.0 or newer (Ampere); {} has {}.{}: \
             use dtype: float32",
            if precision == Precision::Tf32 {
                "tf32"
            } else {
                "bf16"
            },
            gpu.name,
            gpu.capability.0,
            gpu.capability.1
        );
        gpu.ctx.bind_to_thread()?;
        let s = &gpu.stream;
        let blas =
            CudaBlas::new(s.clone()).map_err(|e| anyhow!("creating a cuBLAS handle: {e:?}"))?;
        use blas_sys::cublasComputeType_t::*;
        let compute = match precision {
            Precision::F32 | Precision::Bf16 => CUBLAS_COMPUTE_32F,
            Precision::Tf32 => CUBLAS_COMPUTE_32F_FAST_TF32,
        };
        // Every GPU model holds all four buffers, whatever it is used for.
        let need = Footprint {
            model: config.training_buffers(),
            activations: None,
        };
        check_gpu_memory(&gpu, &need)?;
        let n = layout.total;
        Ok(GpuGpt {
            params: Buf::zeros(s, n)?,
            grads: Buf::zeros(s, n)?,
            m: Buf::zeros(s, n)?,
            v: Buf::zeros(s, n)?,
            norm_partials: Buf::zeros(s, n.div_ceil(NORM_CHUNK))?,
            zero_scratch: None,
            gpu,
            blas,
            precision,
            compute,
            bf16_operands: RefCell::new([None, None]),
            config: config.clone(),
            layout,
            acts: None,
            last: None,
        })
    }

    pub fn config(&self) -> &GptConfig {
        &self.config
    }

    pub fn device_name(&self) -> &str {
        &self.gpu.name
    }

    /// Waits for the GPU's queued work (for timing).
    pub fn synchronize(&self) -> Result<()> {
        self.gpu.stream.synchronize()?;
        Ok(())
    }
}
