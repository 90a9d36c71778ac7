//! Global-norm gradient clipping and the AdamW update, with the host optimiser's step count.

use super::buffers::{grid, launch};
use super::loader::Gpu;
use super::{GpuGpt, NORM_CHUNK};
use crate::optim::{AdamW, clip_coef};
use anyhow::{Context, Result};
use cudarc::driver::{LaunchConfig, PushKernelArg};

impl GpuGpt {
    /// Global-norm clipping (as `clip_grad_norm`, returning the norm before clipping), then one
    /// AdamW update with the host optimiser's hyper-parameters and step count; zeroes the gradients.
    pub fn step(&mut self, opt: &mut AdamW, lr: f64, grad_clip: f32) -> Result<f32> {
        self.gpu.ctx.bind_to_thread()?;
        let n = self.layout.total;
        let norm = if grad_clip > 0.0 {
            let blocks = n.div_ceil(NORM_CHUNK);
            let cfg = LaunchConfig {
                grid_dim: (blocks as u32, 1, 1),
                block_dim: (256, 1, 1),
                shared_mem_bytes: 0,
            };
            launch!(self.gpu, "sumsq_partials", cfg;
                self.norm_partials.ptr, self.grads.ptr, n as u64, NORM_CHUNK as u64)?;
            let mut partial = vec![0.0f64; blocks];
            self.download_to(&mut partial, self.norm_partials.ptr)?;
            let norm = partial.iter().sum::<f64>().sqrt() as f32;
            if let Some(coef) = clip_coef(norm, grad_clip) {
                launch!(self.gpu, "scale", grid(n); self.grads.ptr, n as u64, coef)?;
            }
            norm
        } else {
            f32::NAN
        };
        let s = opt.next_step(lr);
        for (range, decays) in opt.decay_ranges() {
            let (off, len) = (range.start, range.len());
            launch!(self.gpu, "adamw", grid(len);
                self.params.range(off, len), self.grads.range(off, len), self.m.range(off, len),
                self.v.range(off, len), len as u64,
                s.decay_for(*decays), s.beta1, s.beta2, s.bc2_sqrt, s.step_size, s.eps)?;
        }
        self.zero(self.grads.ptr, n)?;
        Ok(norm)
    }
}
