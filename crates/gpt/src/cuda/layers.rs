//! The layers of `ops.rs` as kernel launches and cuBLAS products: Linear, LayerNorm, dropout and
//! the residual add, each forward and (where it has one) backward.

use super::buffers::{grid, launch, rows_grid};
use super::loader::Gpu;
use super::{GpuGpt, ROWS};
use crate::model::DropoutPlan;
use anyhow::{Context, Result};
use cudarc::driver::{LaunchConfig, PushKernelArg};

impl GpuGpt {
    /// out (n, oc) = inp (n, ic) W^T (+ bias), W stored (oc, ic) as nanoGPT's Linear.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn linear_forward(
        &self,
        out: u64,
        inp: u64,
        w: u64,
        bias: u64,
        n: usize,
        ic: usize,
        oc: usize,
    ) -> Result<()> {
        if bias != 0 {
            launch!(self.gpu, "broadcast_rows", grid(n * oc); out, bias, n as u64, oc as i32)?;
        }
        let beta = if bias != 0 { 1.0 } else { 0.0 };
        self.gemm(true, false, (oc, n, ic), w, ic, inp, ic, beta, out, oc)
    }

    /// dinp = dout W; dW += dout^T inp; dbias += column sums of dout.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn linear_backward(
        &self,
        partial: u64,
        (dinp, dw, db): (u64, u64, u64),
        dout: u64,
        inp: u64,
        w: u64,
        (n, ic, oc): (usize, usize, usize),
    ) -> Result<()> {
        self.gemm(false, false, (ic, n, oc), w, ic, dout, oc, 0.0, dinp, ic)?;
        self.gemm(false, true, (ic, oc, n), inp, ic, dout, oc, 1.0, dw, ic)?;
        if db != 0 {
            let blocks = n.div_ceil(ROWS);
            let cfg = LaunchConfig {
                grid_dim: (oc.div_ceil(256) as u32, blocks as u32, 1),
                block_dim: (256, 1, 1),
                shared_mem_bytes: 0,
            };
            launch!(self.gpu, "column_partials", cfg; partial, dout, n as u64, oc as i32, ROWS as i32)?;
            launch!(self.gpu, "sum_partials", grid(oc); db, db, partial, blocks as i32, oc as i32, oc as i32)?;
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn layernorm_forward(
        &self,
        out: u64,
        mean: u64,
        rstd: u64,
        inp: u64,
        w: u64,
        b: u64,
        n: usize,
    ) -> Result<()> {
        let c = self.config.n_embd;
        launch!(self.gpu, "layernorm_forward", rows_grid(n); out, mean, rstd, inp, w, b, n as u64, c as i32)
    }

    /// dinp += input gradient; dw (and db) += parameter gradients.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn layernorm_backward(
        &self,
        partial: u64,
        (dinp, dw, db): (u64, u64, u64),
        dout: u64,
        inp: u64,
        mean: u64,
        rstd: u64,
        w: u64,
        n: usize,
    ) -> Result<()> {
        let c = self.config.n_embd;
        launch!(self.gpu, "layernorm_backward_input", rows_grid(n);
            dinp, dout, inp, mean, rstd, w, n as u64, c as i32)?;
        let blocks = n.div_ceil(ROWS);
        let with_bias = db != 0;
        let width = if with_bias { 2 * c } else { c };
        let cfg = LaunchConfig {
            grid_dim: (c.div_ceil(256) as u32, blocks as u32, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        launch!(self.gpu, "layernorm_param_partials", cfg;
            partial, dout, inp, mean, rstd, n as u64, c as i32, ROWS as i32, with_bias as i32)?;
        launch!(self.gpu, "sum_partials", grid(width); dw, db, partial, blocks as i32, width as i32, c as i32)
    }

    pub(super) fn dropout(
        &self,
        out: u64,
        inp: u64,
        n: usize,
        d: Option<(DropoutPlan, u64)>,
    ) -> Result<()> {
        if let Some((plan, site)) = d {
            launch!(self.gpu, "dropout_apply", grid(n); out, inp, n as u64, plan.p, plan.seed, site)?;
        }
        Ok(())
    }

    pub(super) fn add(&self, out: u64, a: u64, b: u64, n: usize) -> Result<()> {
        launch!(self.gpu, "add", grid(n); out, a, b, n as u64)
    }
}
