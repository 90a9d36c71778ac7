//! One transformer block's dense steps, written once for the training forward (model.rs) and the
//! KV-cache decoder (sample.rs). Only attention itself differs between the two: causal over the
//! whole sequence in training, against the cached keys and values in the decoder.
//!
//! A block is nanoGPT's `x = x + attn(ln_1(x)); x = x + mlp(ln_2(x))`. These helpers compute
//! each part into buffers the caller owns (training keeps them for backward, the decoder reuses
//! them); the residual adds and dropout stay with the caller.

use super::config::Gelu;
use super::ops;
use super::params::BlockParams;
use std::ops::Range;

/// A block's weights, sliced out of the flat parameter vector, and its GELU's form.
pub(crate) struct BlockWeights<'p> {
    gelu: Gelu,
    ln_1: (&'p [f32], Option<&'p [f32]>),
    c_attn: (&'p [f32], Option<&'p [f32]>),
    attn_proj: (&'p [f32], Option<&'p [f32]>),
    ln_2: (&'p [f32], Option<&'p [f32]>),
    c_fc: (&'p [f32], Option<&'p [f32]>),
    mlp_proj: (&'p [f32], Option<&'p [f32]>),
}

/// Where a layer norm writes: its output and the per-row mean and 1/std that backward reuses.
pub(crate) struct Normed<'a> {
    pub out: &'a mut [f32],
    pub mean: &'a mut [f32],
    pub rstd: &'a mut [f32],
}

impl<'p> BlockWeights<'p> {
    pub(crate) fn of(params: &'p [f32], blk: &BlockParams, gelu: Gelu) -> Self {
        let pair = |w: &Range<usize>, b: &Option<Range<usize>>| {
            (&params[w.clone()], b.as_ref().map(|b| &params[b.clone()]))
        };
        BlockWeights {
            gelu,
            ln_1: pair(&blk.ln_1_w, &blk.ln_1_b),
            c_attn: pair(&blk.c_attn_w, &blk.c_attn_b),
            attn_proj: pair(&blk.attn_proj_w, &blk.attn_proj_b),
            ln_2: pair(&blk.ln_2_w, &blk.ln_2_b),
            c_fc: pair(&blk.c_fc_w, &blk.c_fc_b),
            mlp_proj: pair(&blk.mlp_proj_w, &blk.mlp_proj_b),
        }
    }

    /// `ln_1(x)` into `ln`, then attention's query, key and value rows into `qkv` (rows, 3C).
    pub(crate) fn attention_input(&self, ln: Normed, qkv: &mut [f32], x: &[f32], c: usize) {
        let rows = x.len() / c;
        ops::layernorm_forward(ln.out, ln.mean, ln.rstd, x, self.ln_1.0, self.ln_1.1, c);
        ops::linear_forward(qkv, ln.out, self.c_attn.0, self.c_attn.1, rows, c, 3 * c);
    }

    /// Attention's output projection of the heads' outputs `atty` (rows, C) into `out`.
    pub(crate) fn attention_output(&self, out: &mut [f32], atty: &[f32], c: usize) {
        let rows = atty.len() / c;
        ops::linear_forward(out, atty, self.attn_proj.0, self.attn_proj.1, rows, c, c);
    }

    /// The MLP of `ln_2(x)` into `out` (rows, C), through `fc` and `fc_gelu` (rows, 4C).
    pub(crate) fn mlp(
        &self,
        ln: Normed,
        fc: &mut [f32],
        fc_gelu: &mut [f32],
        out: &mut [f32],
        x: &[f32],
        c: usize,
    ) {
        let rows = x.len() / c;
        ops::layernorm_forward(ln.out, ln.mean, ln.rstd, x, self.ln_2.0, self.ln_2.1, c);
        ops::linear_forward(fc, ln.out, self.c_fc.0, self.c_fc.1, rows, c, 4 * c);
        ops::gelu_forward(fc_gelu, fc, self.gelu);
        let (w, b) = self.mlp_proj;
        ops::linear_forward(out, fc_gelu, w, b, rows, 4 * c, c);
    }
}
