//! The forward and backward passes of `model.rs`, layer by layer on the GPU.

use super::GpuGpt;
use super::blas::Heads;
use super::buffers::{Acts, grid, launch, rows_grid};
use super::loader::Gpu;
use crate::config::Gelu;
use crate::layers::{EMBEDDING_SITE, LayerPlan, LayerSite, dropout_site};
use crate::model::DropoutPlan;
use anyhow::{Context, Result, ensure};
use cudarc::driver::{LaunchConfig, PushKernelArg};

/// What the last forward pass with targets ran on, for the backward pass.
pub(super) struct Pass {
    pub(super) b: usize,
    pub(super) t: usize,
    pub(super) dropout: Option<DropoutPlan>,
}

impl GpuGpt {
    /// The forward pass of `model.rs` (`Gpt::forward`), returning the mean loss when `targets` are
    /// given. `for_backward: false` keeps one layer's activations (evaluation).
    pub fn forward(
        &mut self,
        tokens: &[u32],
        targets: Option<&[u32]>,
        (b, t): (usize, usize),
        dropout: Option<DropoutPlan>,
        for_backward: bool,
    ) -> Result<f32> {
        let cfg = self.config.clone();
        let (c, v, nh) = (cfg.n_embd, cfg.vocab_size, cfg.n_head);
        let hs = cfg.head_size();
        ensure!(
            t <= cfg.block_size,
            "sequence length {t} exceeds block_size {}",
            cfg.block_size
        );
        ensure!(b > 0 && t > 0, "an empty batch ({b} x {t})");
        ensure!(tokens.len() == b * t, "expected {} tokens", b * t);
        ensure!(
            tokens.iter().all(|&x| (x as usize) < v),
            "token id out of vocabulary"
        );
        let dropout = dropout.filter(|d| d.p > 0.0);
        let layers = if for_backward { cfg.n_layer } else { 1 };
        self.gpu.ctx.bind_to_thread()?;
        self.ensure_acts(b, t, dropout.is_some(), layers)?;
        let a = self.acts.take().expect("activations allocated");
        let r = self.forward_on(
            &a,
            tokens,
            targets,
            (b, t),
            dropout,
            for_backward,
            (c, v, nh, hs),
        );
        self.acts = Some(a);
        let loss = r?;
        self.last = (targets.is_some() && for_backward).then_some(Pass { b, t, dropout });
        Ok(loss)
    }

    #[allow(clippy::too_many_arguments)]
    fn forward_on(
        &self,
        a: &Acts,
        tokens: &[u32],
        targets: Option<&[u32]>,
        (b, t): (usize, usize),
        dropout: Option<DropoutPlan>,
        for_backward: bool,
        (c, v, nh, hs): (usize, usize, usize, usize),
    ) -> Result<f32> {
        let bt = b * t;
        let lay = &self.layout;
        let cfg = &self.config;
        self.upload(a.tokens.ptr, tokens)?;
        launch!(self.gpu, "encoder_forward", grid(bt * c);
            a.encoded.ptr, a.tokens.ptr, self.p(&lay.wte), self.p(&lay.wpe), bt as u64, t as i32, c as i32)?;
        let site = |k: u64| dropout.map(|d| (d, k));
        self.dropout(a.encoded.ptr, a.encoded.ptr, bt * c, site(EMBEDDING_SITE))?;
        let plan = LayerPlan::new(b, t, c, nh);
        let slot = |l: usize| plan.slot(if for_backward { l } else { 0 });
        let scale = 1.0 / (hs as f32).sqrt();
        for (l, blk) in lay.blocks.iter().enumerate() {
            let s = slot(l);
            let (oc, o1, o3, o4) = (s.c.start, s.rows.start, s.c3.start, s.c4.start);
            let oatt = s.att.start;
            let lsite = |k: LayerSite| site(dropout_site(l, k));
            let residual = if l == 0 {
                a.encoded.ptr
            } else {
                a.residual3.at(slot(l - 1).c.start)
            };
            self.layernorm_forward(
                a.ln1.at(oc),
                a.ln1_mean.at(o1),
                a.ln1_rstd.at(o1),
                residual,
                self.p(&blk.ln_1_w),
                self.po(&blk.ln_1_b),
                bt,
            )?;
            self.linear_forward(
                a.qkv.ptr,
                a.ln1.at(oc),
                self.p(&blk.c_attn_w),
                self.po(&blk.c_attn_b),
                bt,
                c,
                3 * c,
            )?;
            // Attention: per-head q, k, v; att = softmax(q k^T * scale); y = drop(att) v.
            let (q, k, vv) = (
                a.qkvr.at(o3),
                a.qkvr.at(o3 + bt * c),
                a.qkvr.at(o3 + 2 * bt * c),
            );
            launch!(self.gpu, "split_heads", grid(bt * c);
                q, k, vv, a.qkv.ptr, b as i32, t as i32, nh as i32, hs as i32)?;
            let att = a.att.at(oatt);
            let heads = Heads { b, nh, t, hs };
            self.heads_x_yt(&heads, att, q, k)?;
            launch!(self.gpu, "causal_softmax", rows_grid(b * nh * t);
                att, (b * nh * t) as u64, t as i32, scale)?;
            let probs = match lsite(LayerSite::AttnProbs) {
                Some(d) => {
                    let ad = a.att_drop.at(oatt);
                    self.dropout(ad, att, b * nh * t * t, Some(d))?;
                    ad
                }
                None => att,
            };
            self.heads_p_x(&heads, a.yheads.ptr, probs, vv)?;
            launch!(self.gpu, "merge_heads", grid(bt * c);
                a.atty.at(oc), a.yheads.ptr, b as i32, t as i32, nh as i32, hs as i32)?;
            self.linear_forward(
                a.proj.ptr,
                a.atty.at(oc),
                self.p(&blk.attn_proj_w),
                self.po(&blk.attn_proj_b),
                bt,
                c,
                c,
            )?;
            self.dropout(a.proj.ptr, a.proj.ptr, bt * c, lsite(LayerSite::AttnOut))?;
            self.add(a.residual2.at(oc), residual, a.proj.ptr, bt * c)?;

            self.layernorm_forward(
                a.ln2.at(oc),
                a.ln2_mean.at(o1),
                a.ln2_rstd.at(o1),
                a.residual2.at(oc),
                self.p(&blk.ln_2_w),
                self.po(&blk.ln_2_b),
                bt,
            )?;
            self.linear_forward(
                a.fch.at(o4),
                a.ln2.at(oc),
                self.p(&blk.c_fc_w),
                self.po(&blk.c_fc_b),
                bt,
                c,
                4 * c,
            )?;
            let tanh = (cfg.gelu == Gelu::Tanh) as i32;
            launch!(self.gpu, "gelu_forward", grid(bt * 4 * c);
                a.fch_gelu.at(o4), a.fch.at(o4), (bt * 4 * c) as u64, tanh)?;
            self.linear_forward(
                a.proj.ptr,
                a.fch_gelu.at(o4),
                self.p(&blk.mlp_proj_w),
                self.po(&blk.mlp_proj_b),
                bt,
                4 * c,
                c,
            )?;
            self.dropout(a.proj.ptr, a.proj.ptr, bt * c, lsite(LayerSite::Mlp))?;
            self.add(a.residual3.at(oc), a.residual2.at(oc), a.proj.ptr, bt * c)?;
        }
        let last = a.residual3.at(slot(cfg.n_layer - 1).c.start);
        self.layernorm_forward(
            a.lnf.ptr,
            a.lnf_mean.ptr,
            a.lnf_rstd.ptr,
            last,
            self.p(&lay.ln_f_w),
            self.po(&lay.ln_f_b),
            bt,
        )?;
        self.linear_forward(a.probs.ptr, a.lnf.ptr, self.p(&lay.wte), 0, bt, c, v)?;
        let Some(y) = targets else {
            return Ok(f32::NAN);
        };
        ensure!(y.len() == bt, "expected {bt} targets");
        ensure!(
            y.iter().all(|&x| (x as usize) < v),
            "target id out of vocabulary"
        );
        self.upload(a.targets.ptr, y)?;
        let cfg1 = LaunchConfig {
            grid_dim: (bt as u32, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        launch!(self.gpu, "softmax_crossentropy", cfg1; a.probs.ptr, a.losses.ptr, a.targets.ptr, v as i32)?;
        let mut losses = vec![0.0f32; bt];
        self.download_to(&mut losses, a.losses.ptr)?;
        Ok((losses.iter().map(|&l| l as f64).sum::<f64>() / bt as f64) as f32)
    }

    /// Logits (B*T, V) of the last forward pass run without targets.
    pub fn logits(&self, b: usize, t: usize) -> Result<Vec<f32>> {
        let a = self.acts.as_ref().context("forward first")?;
        let mut out = vec![0.0f32; b * t * self.config.vocab_size];
        self.download_to(&mut out, a.probs.ptr)?;
        Ok(out)
    }

    /// Accumulates the gradient of `loss_scale * loss` of the last forward pass (as `Gpt::backward`).
    pub fn backward(&mut self, loss_scale: f32) -> Result<()> {
        let pass = self
            .last
            .take()
            .context("backward needs a forward pass with targets")?;
        self.gpu.ctx.bind_to_thread()?;
        let a = self.acts.take().expect("activations allocated");
        let r = self.backward_on(&a, &pass, loss_scale);
        self.acts = Some(a);
        r
    }

    fn backward_on(&self, a: &Acts, pass: &Pass, loss_scale: f32) -> Result<()> {
        let cfg = &self.config;
        let (c, v, nh) = (cfg.n_embd, cfg.vocab_size, cfg.n_head);
        let hs = cfg.head_size();
        let (b, t) = (pass.b, pass.t);
        let bt = b * t;
        let lay = &self.layout;
        let site = |k: u64| pass.dropout.map(|d| (d, k));
        let plan = LayerPlan::new(b, t, c, nh);
        let part = a.partial.ptr;
        let dloss = loss_scale / bt as f32;
        launch!(self.gpu, "crossentropy_backward", grid(bt * v); a.probs.ptr, a.targets.ptr, bt as u64, v as i32, dloss)?;
        self.linear_backward(
            part,
            (a.dln.ptr, self.g(&lay.wte), 0),
            a.probs.ptr,
            a.lnf.ptr,
            self.p(&lay.wte),
            (bt, c, v),
        )?;
        self.zero(a.dres.ptr, bt * c)?;
        let last = a.residual3.at(plan.slot(cfg.n_layer - 1).c.start);
        self.layernorm_backward(
            part,
            (a.dres.ptr, self.g(&lay.ln_f_w), self.go(&lay.ln_f_b)),
            a.dln.ptr,
            last,
            a.lnf_mean.ptr,
            a.lnf_rstd.ptr,
            self.p(&lay.ln_f_w),
            bt,
        )?;
        let scale = 1.0 / (hs as f32).sqrt();
        let copy = |dst: u64, src: u64| -> Result<()> {
            let bytes = bt * c * 4;
            // SAFETY: `dst` and `src` are activation gradients (`dtmp`, `dres`) of `bt * c` f32
            // each for this pass's batch, distinct buffers; the copy is ordered on the one stream.
            unsafe {
                cudarc::driver::result::memcpy_dtod_async(
                    dst,
                    src,
                    bytes,
                    self.gpu.stream.cu_stream(),
                )
            }?;
            Ok(())
        };
        for (l, blk) in lay.blocks.iter().enumerate().rev() {
            let s = plan.slot(l);
            let (oc, o1, o3, o4) = (s.c.start, s.rows.start, s.c3.start, s.c4.start);
            let oatt = s.att.start;
            let lsite = |k: LayerSite| site(dropout_site(l, k));
            let residual = if l == 0 {
                a.encoded.ptr
            } else {
                a.residual3.at(plan.slot(l - 1).c.start)
            };

            // MLP: residual3 = residual2 + drop(c_proj(gelu(c_fc(ln_2(residual2)))))
            copy(a.dtmp.ptr, a.dres.ptr)?;
            self.dropout(a.dtmp.ptr, a.dtmp.ptr, bt * c, lsite(LayerSite::Mlp))?;
            self.linear_backward(
                part,
                (a.dfc.ptr, self.g(&blk.mlp_proj_w), self.go(&blk.mlp_proj_b)),
                a.dtmp.ptr,
                a.fch_gelu.at(o4),
                self.p(&blk.mlp_proj_w),
                (bt, 4 * c, c),
            )?;
            let tanh = (cfg.gelu == Gelu::Tanh) as i32;
            launch!(self.gpu, "gelu_backward", grid(bt * 4 * c);
                a.dfc2.ptr, a.fch.at(o4), a.dfc.ptr, (bt * 4 * c) as u64, tanh)?;
            self.linear_backward(
                part,
                (a.dln.ptr, self.g(&blk.c_fc_w), self.go(&blk.c_fc_b)),
                a.dfc2.ptr,
                a.ln2.at(oc),
                self.p(&blk.c_fc_w),
                (bt, c, 4 * c),
            )?;
            self.layernorm_backward(
                part,
                (a.dres.ptr, self.g(&blk.ln_2_w), self.go(&blk.ln_2_b)),
                a.dln.ptr,
                a.residual2.at(oc),
                a.ln2_mean.at(o1),
                a.ln2_rstd.at(o1),
                self.p(&blk.ln_2_w),
                bt,
            )?;

            // Attention: residual2 = residual + drop(c_proj(attn(c_attn(ln_1(residual)))))
            copy(a.dtmp.ptr, a.dres.ptr)?;
            self.dropout(a.dtmp.ptr, a.dtmp.ptr, bt * c, lsite(LayerSite::AttnOut))?;
            self.linear_backward(
                part,
                (
                    a.datty.ptr,
                    self.g(&blk.attn_proj_w),
                    self.go(&blk.attn_proj_b),
                ),
                a.dtmp.ptr,
                a.atty.at(oc),
                self.p(&blk.attn_proj_w),
                (bt, c, c),
            )?;
            let (q, k, vv) = (
                a.qkvr.at(o3),
                a.qkvr.at(o3 + bt * c),
                a.qkvr.at(o3 + 2 * bt * c),
            );
            let (dq, dk, dv) = (a.dqkvr.ptr, a.dqkvr.at(bt * c), a.dqkvr.at(2 * bt * c));
            let att = a.att.at(oatt);
            let probs = if lsite(LayerSite::AttnProbs).is_some() {
                a.att_drop.at(oatt)
            } else {
                att
            };
            let dy = a.dyheads.ptr;
            let datt = a.datt.ptr;
            let dims = (b as i32, t as i32, nh as i32, hs as i32);
            launch!(self.gpu, "merge_heads_backward", grid(bt * c);
                dy, a.datty.ptr, dims.0, dims.1, dims.2, dims.3)?;
            let heads = Heads { b, nh, t, hs };
            self.heads_x_yt(&heads, datt, dy, vv)?; // datt = dy v^T
            self.heads_pt_x(&heads, dv, probs, dy)?; // dv = probs^T dy
            self.dropout(datt, datt, b * nh * t * t, lsite(LayerSite::AttnProbs))?;
            launch!(self.gpu, "causal_softmax_backward", rows_grid(b * nh * t);
                datt, att, (b * nh * t) as u64, t as i32, scale)?;
            self.heads_p_x(&heads, dq, datt, k)?; // dq = dpre k
            self.heads_pt_x(&heads, dk, datt, q)?; // dk = dpre^T q
            launch!(self.gpu, "merge_heads_grad", grid(bt * c);
                a.dqkv.ptr, dq, dk, dv, dims.0, dims.1, dims.2, dims.3)?;
            self.linear_backward(
                part,
                (a.dln.ptr, self.g(&blk.c_attn_w), self.go(&blk.c_attn_b)),
                a.dqkv.ptr,
                a.ln1.at(oc),
                self.p(&blk.c_attn_w),
                (bt, c, 3 * c),
            )?;
            self.layernorm_backward(
                part,
                (a.dres.ptr, self.g(&blk.ln_1_w), self.go(&blk.ln_1_b)),
                a.dln.ptr,
                residual,
                a.ln1_mean.at(o1),
                a.ln1_rstd.at(o1),
                self.p(&blk.ln_1_w),
                bt,
            )?;
        }
        self.dropout(a.dres.ptr, a.dres.ptr, bt * c, site(EMBEDDING_SITE))?;
        launch!(self.gpu, "encoder_backward", grid(bt * c);
            self.g(&lay.wte), self.g(&lay.wpe), a.dres.ptr, a.tokens.ptr, bt as u64, t as i32, c as i32)?;
        Ok(())
    }

    /// Evaluation loss of one batch (no dropout, one layer's activations).
    pub fn eval_loss(&mut self, x: &[u32], y: &[u32], b: usize, t: usize) -> Result<f32> {
        self.forward(x, Some(y), (b, t), None, false)
    }
}
