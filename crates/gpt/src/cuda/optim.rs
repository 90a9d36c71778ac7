//! Global-norm gradient clipping and the AdamW update, with the host optimiser's step count; and
//! the same step as one of several data-parallel ranks over NCCL (summed gradients, or ZeRO-1).

use super::buffers::{Buf, grid, launch};
use super::loader::Gpu;
use super::nccl::Nccl;
use super::{GpuGpt, NORM_CHUNK};
use crate::collective::{Collective, Shards};
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
            let norm = self.square_sum(self.grads.ptr, n)?.sqrt() as f32;
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

    /// The sum of squares of `n` f32 at device address `ptr`, in f64 (block partials on the
    /// GPU, summed here).
    fn square_sum(&self, ptr: u64, n: usize) -> Result<f64> {
        let blocks = n.div_ceil(NORM_CHUNK).max(1);
        let cfg = LaunchConfig {
            grid_dim: (blocks as u32, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        launch!(self.gpu, "sumsq_partials", cfg;
            self.norm_partials.ptr, ptr, n as u64, NORM_CHUNK as u64)?;
        let mut partial = vec![0.0f64; blocks];
        self.download_to(&mut partial, self.norm_partials.ptr)?;
        Ok(partial.iter().sum::<f64>())
    }

    /// Sums the gradients over the ranks of `nccl`, in place on the GPU (then [`GpuGpt::step`]
    /// is the data-parallel step, as DDP's all-reduce before `optimizer.step()`).
    pub fn all_reduce_grads(&self, nccl: &Nccl) -> Result<()> {
        self.gpu.ctx.bind_to_thread()?;
        nccl.all_reduce_sum_device(self.grads.ptr, self.layout.total)
    }

    /// The ZeRO-1 step of one of `nccl`'s ranks: the gradients reduce-scattered (this rank's
    /// shard of their sum), the global norm from every shard's sum of squares, AdamW on this
    /// rank's shard, and every rank's updated shard all-gathered into the weights. The moments
    /// outside this rank's shard are not updated here (the GPU still holds all of them: ZeRO-1
    /// saves work and traffic here, not GPU memory). Zeroes the gradients. Returns the norm and
    /// the seconds spent in the collectives (each timed to the end of its queued work).
    pub fn step_sharded(
        &mut self,
        opt: &mut AdamW,
        lr: f64,
        grad_clip: f32,
        nccl: &Nccl,
        shards: Shards,
    ) -> Result<(f32, f64)> {
        self.gpu.ctx.bind_to_thread()?;
        let mut comm_seconds = 0.0;
        let mut timed = |f: &dyn Fn() -> Result<()>| -> Result<()> {
            self.gpu.stream.synchronize()?;
            let started = std::time::Instant::now();
            f()?;
            self.gpu.stream.synchronize()?;
            comm_seconds += started.elapsed().as_secs_f64();
            Ok(())
        };
        let n = self.layout.total;
        let (rank, mine) = (nccl.rank(), shards.range(nccl.rank()));
        if self
            .zero_scratch
            .as_ref()
            .is_none_or(|(p, _)| p.slice.len() < shards.padded())
        {
            let s = &self.gpu.stream;
            self.zero_scratch = Some((
                Buf::zeros(s, shards.padded())?,
                Buf::zeros(s, shards.shard)?,
            ));
        }
        let (padded, shard) = self.zero_scratch.as_ref().expect("just made");
        self.copy(padded.ptr, self.grads.ptr, n)?;
        if shards.padded() > n {
            self.zero(padded.at(n), shards.padded() - n)?;
        }
        timed(&|| nccl.reduce_scatter_sum_device(padded.ptr, shard.ptr, shards.shard))?;
        let norm = if grad_clip > 0.0 {
            let sq = std::cell::Cell::new(self.square_sum(shard.ptr, mine.len())?);
            timed(&|| {
                let mut buf = [sq.get()];
                nccl.all_reduce_sum_f64(&mut buf)?;
                sq.set(buf[0]);
                Ok(())
            })?;
            let norm = sq.get().sqrt() as f32;
            if let Some(coef) = clip_coef(norm, grad_clip) {
                launch!(self.gpu, "scale", grid(mine.len()); shard.ptr, mine.len() as u64, coef)?;
            }
            norm
        } else {
            f32::NAN
        };
        let s = opt.next_step(lr);
        for (range, decays) in opt.decay_ranges() {
            let (start, end) = (range.start.max(mine.start), range.end.min(mine.end));
            if start >= end {
                continue;
            }
            let len = end - start;
            launch!(self.gpu, "adamw", grid(len);
                self.params.range(start, len), shard.range(start - mine.start, len),
                self.m.range(start, len), self.v.range(start, len), len as u64,
                s.decay_for(*decays), s.beta1, s.beta2, s.bc2_sqrt, s.step_size, s.eps)?;
        }
        // This rank's updated weights into its block, then every block on every rank.
        let block = padded.at(rank * shards.shard);
        self.copy(block, self.params.at(mine.start), mine.len())?;
        timed(&|| nccl.all_gather_device(block, padded.ptr, shards.shard))?;
        self.copy(self.params.ptr, padded.ptr, n)?;
        self.zero(self.grads.ptr, n)?;
        Ok((norm, comm_seconds))
    }
}
