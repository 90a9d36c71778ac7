//! AdamW as nanoGPT configures it (`configure_optimizers`), global-norm clipping and the learning-rate
//! schedule (`get_lr`). Formulas follow torch.optim.AdamW so losses track PyTorch's closely.

use super::math;
use super::params::ParamLayout;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// nanoGPT's `get_lr`: linear warmup, cosine decay to `min_lr`, then constant; or constant.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LrSchedule {
    pub learning_rate: f64,
    pub decay_lr: bool,
    pub warmup_iters: u64,
    pub lr_decay_iters: u64,
    pub min_lr: f64,
}

impl LrSchedule {
    pub fn at(&self, it: u64) -> f64 {
        if !self.decay_lr {
            return self.learning_rate;
        }
        if it < self.warmup_iters {
            return self.learning_rate * (it + 1) as f64 / (self.warmup_iters + 1) as f64;
        }
        if it > self.lr_decay_iters {
            return self.min_lr;
        }
        let span = self.lr_decay_iters.saturating_sub(self.warmup_iters).max(1) as f64;
        let ratio = (it - self.warmup_iters) as f64 / span;
        let coeff = 0.5 * (1.0 + (std::f64::consts::PI * ratio).cos());
        self.min_lr + coeff * (self.learning_rate - self.min_lr)
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

/// Optimiser state: first and second moments for every parameter (or, with ZeRO-1, for one
/// rank's shard of them: see [`AdamW::keep_shard`]), and the step count.
#[derive(Clone, Debug, PartialEq)]
pub struct AdamW {
    pub cfg: AdamWConfig,
    pub m: Vec<f32>,
    pub v: Vec<f32>,
    pub step: u64,
    /// The parameter index of `m[0]` and `v[0]`: 0, unless the moments are a shard.
    offset: usize,
    /// Per parameter element: weight decay applies (2-D tensors only), expanded to ranges once.
    decay_ranges: Vec<(std::ops::Range<usize>, bool)>,
}

const CHUNK: usize = 8192;

impl AdamW {
    pub fn new(cfg: AdamWConfig, layout: &ParamLayout) -> Self {
        let decay_ranges = layout
            .tensors
            .iter()
            .map(|t| (t.range.clone(), t.decays()))
            .collect();
        AdamW {
            cfg,
            m: vec![0.0; layout.total],
            v: vec![0.0; layout.total],
            step: 0,
            offset: 0,
            decay_ranges,
        }
    }

    /// Keeps only the moments of the parameters in `shard` (ZeRO-1: each rank holds its shard of
    /// the optimizer state). Updates must then stay inside `shard`.
    pub fn keep_shard(&mut self, shard: std::ops::Range<usize>) {
        let local = shard.start - self.offset..shard.end - self.offset;
        self.m = self.m[local.clone()].to_vec();
        self.v = self.v[local].to_vec();
        self.offset = shard.start;
    }

    /// Takes whole moments again (`m` and `v` for every parameter), after a shard.
    pub fn set_whole(&mut self, m: Vec<f32>, v: Vec<f32>) {
        (self.m, self.v, self.offset) = (m, v, 0);
    }

    /// The parameters whose moments this holds.
    pub fn held(&self) -> std::ops::Range<usize> {
        self.offset..self.offset + self.m.len()
    }

    /// Counts one more step and returns its scalars (shared by the CPU update and the GPU's).
    pub fn next_step(&mut self, lr: f64) -> StepScalars {
        self.step += 1;
        let bc1 = 1.0 - self.cfg.beta1.powi(self.step as i32);
        StepScalars {
            beta1: self.cfg.beta1 as f32,
            beta2: self.cfg.beta2 as f32,
            bc2_sqrt: (1.0 - self.cfg.beta2.powi(self.step as i32)).sqrt() as f32,
            step_size: (lr / bc1) as f32,
            eps: self.cfg.eps as f32,
            decay: (1.0 - lr * self.cfg.weight_decay) as f32,
        }
    }

    /// The parameter ranges and whether weight decay applies to each.
    pub fn decay_ranges(&self) -> &[(std::ops::Range<usize>, bool)] {
        &self.decay_ranges
    }

    /// One update, exactly torch.optim.AdamW's (non-fused, non-amsgrad) arithmetic.
    pub fn update(&mut self, params: &mut [f32], grads: &[f32], lr: f64) {
        self.update_range(params, grads, 0..params.len(), lr);
    }

    /// One update of the elements in `shard` only (ZeRO-1): `grads` holds that range's gradients,
    /// and the moments must hold it ([`AdamW::held`]); the step count advances as in
    /// [`AdamW::update`], and the arithmetic is the same per element.
    pub fn update_range(
        &mut self,
        params: &mut [f32],
        grads: &[f32],
        shard: std::ops::Range<usize>,
        lr: f64,
    ) {
        let held = self.held();
        assert!(
            held.start <= shard.start && shard.end <= held.end,
            "AdamW update of {shard:?} outside the moments held ({held:?})"
        );
        let s = self.next_step(lr);
        let (b1, b2, bc2_sqrt, step_size, eps) = (s.beta1, s.beta2, s.bc2_sqrt, s.step_size, s.eps);
        for (range, decays) in &self.decay_ranges {
            let r = range.start.max(shard.start)..range.end.min(shard.end);
            if r.is_empty() {
                continue;
            }
            let decay = s.decay_for(*decays);
            let g = &grads[r.start - shard.start..r.end - shard.start];
            let local = r.start - self.offset..r.end - self.offset;
            params[r.clone()]
                .par_chunks_mut(CHUNK)
                .zip(g.par_chunks(CHUNK))
                .zip(
                    self.m[local.clone()]
                        .par_chunks_mut(CHUNK)
                        .zip(self.v[local].par_chunks_mut(CHUNK)),
                )
                .for_each(|((p, g), (m, v))| {
                    adamw_chunk(p, g, m, v, [decay, b1, b2, bc2_sqrt, step_size, eps])
                });
        }
    }
}

math::simd_kernel!(adamw_chunk, adamw_chunk_on, adamw_chunk_kernel, (p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], s: [f32; 6]));

/// torch's AdamW on one chunk; `s` is (decay, beta1, beta2, sqrt(1 - beta2^t), step size, eps).
#[inline(always)]
pub(crate) fn adamw_chunk_kernel(
    p: &mut [f32],
    g: &[f32],
    m: &mut [f32],
    v: &mut [f32],
    s: [f32; 6],
) {
    let [decay, b1, b2, bc2_sqrt, step_size, eps] = s;
    let n = p.len();
    let (g, m, v) = (&g[..n], &mut m[..n], &mut v[..n]);
    for i in 0..n {
        p[i] *= decay;
        m[i] = b1 * m[i] + (1.0 - b1) * g[i];
        v[i] = b2 * v[i] + (1.0 - b2) * g[i] * g[i];
        let denom = v[i].sqrt() / bc2_sqrt + eps;
        p[i] -= step_size * m[i] / denom;
    }
}

/// One AdamW step's scalars, in the f32 the update uses.
pub struct StepScalars {
    pub beta1: f32,
    pub beta2: f32,
    /// sqrt(1 - beta2^step)
    pub bc2_sqrt: f32,
    /// lr / (1 - beta1^step)
    pub step_size: f32,
    pub eps: f32,
    /// 1 - lr * weight_decay, the factor for tensors that decay.
    pub decay: f32,
}

impl StepScalars {
    pub fn decay_for(&self, decays: bool) -> f32 {
        if decays { self.decay } else { 1.0 }
    }
}

/// torch's clip_grad_norm_ factor for a gradient of norm `norm`, when it scales at all.
pub fn clip_coef(norm: f32, max_norm: f32) -> Option<f32> {
    let coef = max_norm / (norm + 1e-6);
    (coef < 1.0).then_some(coef)
}

/// Global L2 norm of the gradients; sums fixed chunks in parallel, then adds them in order.
pub fn grad_norm(grads: &[f32]) -> f32 {
    grad_square_sum(grads).sqrt() as f32
}

/// The sum of the squared gradients, in f64 (a ZeRO-1 rank's share of the global norm).
pub fn grad_square_sum(grads: &[f32]) -> f64 {
    let partial: Vec<f64> = grads.par_chunks(CHUNK).map(square_sum).collect();
    partial.iter().sum::<f64>()
}

math::simd_kernel!(square_sum, square_sum_on, square_sum_kernel, (x: &[f32]) -> f64);

#[inline(always)]
fn square_sum_kernel(x: &[f32]) -> f64 {
    math::square_sum_f64(x)
}

/// torch.nn.utils.clip_grad_norm_: scales by max_norm / (norm + 1e-6) when that is below 1.
/// Returns the norm before clipping.
pub fn clip_grad_norm(grads: &mut [f32], max_norm: f32) -> f32 {
    let norm = grad_norm(grads);
    if let Some(coef) = clip_coef(norm, max_norm) {
        grads
            .par_chunks_mut(CHUNK)
            .for_each(|c| c.iter_mut().for_each(|g| *g *= coef));
    }
    norm
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_matches_nanogpt_get_lr() {
        let s = LrSchedule {
            learning_rate: 1e-3,
            decay_lr: true,
            warmup_iters: 100,
            lr_decay_iters: 2000,
            min_lr: 1e-4,
        };
        assert!((s.at(0) - 1e-3 / 101.0).abs() < 1e-12);
        assert!((s.at(99) - 1e-3 * 100.0 / 101.0).abs() < 1e-12);
        assert!((s.at(100) - 1e-3).abs() < 1e-12);
        assert!((s.at(1050) - 5.5e-4).abs() < 1e-9);
        assert!((s.at(2000) - 1e-4).abs() < 1e-12);
        assert_eq!(s.at(5000), 1e-4);
        assert_eq!(
            LrSchedule {
                decay_lr: false,
                ..s
            }
            .at(7),
            1e-3
        );
    }

    /// Two ranks' sharded updates (ZeRO-1, each holding only its shard's moments) make exactly
    /// the whole update, over a boundary that cuts a tensor.
    #[test]
    fn sharded_updates_are_the_whole_update() {
        let cfg = super::super::GptConfig {
            vocab_size: 11,
            block_size: 4,
            n_layer: 1,
            n_head: 1,
            n_embd: 6,
            dropout: 0.0,
            bias: true,
            gelu: Default::default(),
        };
        let layout = ParamLayout::new(&cfg);
        let n = layout.total;
        let adam = AdamWConfig {
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.1,
        };
        let params: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
        let grads = |step: usize| -> Vec<f32> {
            (0..n)
                .map(|i| ((i * 7 + step) as f32 * 0.11).cos())
                .collect()
        };
        let (mut whole, mut p_whole) = (AdamW::new(adam.clone(), &layout), params.clone());
        let cut = n / 2 + 1;
        let mut shards = [0..cut, cut..n].map(|r| {
            let mut opt = AdamW::new(adam.clone(), &layout);
            opt.keep_shard(r.clone());
            (opt, r)
        });
        let mut p_sharded = params;
        for step in 0..3 {
            let g = grads(step);
            whole.update(&mut p_whole, &g, 1e-2);
            for (opt, r) in &mut shards {
                opt.update_range(&mut p_sharded, &g[r.clone()], r.clone(), 1e-2);
                assert_eq!(opt.m.len(), r.len());
            }
        }
        assert_eq!(p_whole, p_sharded);
        let joined: Vec<f32> = shards.iter().flat_map(|(o, _)| o.m.clone()).collect();
        assert_eq!(joined, whole.m);
    }

    #[test]
    fn clipping_scales_to_max_norm() {
        let mut g = vec![3.0, 4.0];
        assert_eq!(clip_grad_norm(&mut g, 1.0), 5.0);
        assert!((grad_norm(&g) - 1.0).abs() < 1e-5);
        let mut small = vec![0.3, 0.4];
        clip_grad_norm(&mut small, 1.0);
        assert_eq!(small, vec![0.3, 0.4]);
    }
}
