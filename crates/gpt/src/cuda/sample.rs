//! Generation: all samples advanced together as one batch, a full forward pass per token.

use super::GpuGpt;
use super::buffers::{grid, launch};
use super::loader::Gpu;
use crate::rng::Rng;
use crate::sample::{SampleConfig, sample_rng, sample_token};
use anyhow::{Context, Result, ensure};
use cudarc::driver::PushKernelArg;

impl GpuGpt {
    /// The logits of the last position of each of the `b` rows of the last forward pass.
    fn last_logits(&self, b: usize, t: usize) -> Result<Vec<f32>> {
        let a = self.acts.as_ref().context("forward first")?;
        let v = self.config.vocab_size;
        launch!(self.gpu, "last_rows", grid(b * v); a.last_logits.ptr, a.probs.ptr, b as i32, t as i32, v as i32)?;
        let mut out = vec![0.0f32; b * v];
        self.download_to(&mut out, a.last_logits.ptr)?;
        Ok(out)
    }

    /// Samples `samples` (their indices), all advanced together as one batch; sample `i` draws from the same
    /// stream as on the CPU (`generate_many`), and the context is cropped to `block_size` as nanoGPT.
    pub fn generate_many(
        &mut self,
        prompt: &[u32],
        cfg: &SampleConfig,
        samples: std::ops::Range<usize>,
    ) -> Result<Vec<Vec<u32>>> {
        ensure!(
            !prompt.is_empty(),
            "generation needs at least one prompt token"
        );
        let bs = self.config.block_size;
        let v = self.config.vocab_size;
        let n = samples.len();
        if n == 0 {
            return Ok(Vec::new());
        }
        let mut rngs: Vec<Rng> = samples.map(|i| sample_rng(cfg.seed, i)).collect();
        let mut seqs: Vec<Vec<u32>> = vec![prompt.to_vec(); n];
        // One allocation for the longest context.
        self.ensure_acts(
            n,
            bs.min(prompt.len() + cfg.max_new_tokens).max(1),
            false,
            1,
        )?;
        let mut batch = Vec::new();
        for _ in 0..cfg.max_new_tokens {
            let len = seqs[0].len();
            let start = len.saturating_sub(bs);
            let t = len - start;
            batch.clear();
            for s in &seqs {
                batch.extend_from_slice(&s[start..]);
            }
            self.forward(&batch, None, (n, t), None, false)?;
            let logits = self.last_logits(n, t)?;
            for (i, s) in seqs.iter_mut().enumerate() {
                s.push(sample_token(&logits[i * v..(i + 1) * v], cfg, &mut rngs[i]));
            }
        }
        Ok(seqs
            .into_iter()
            .map(|mut s| s.split_off(prompt.len()))
            .collect())
    }
}
