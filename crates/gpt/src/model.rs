//! The GPT: parameters, preallocated activations, forward and backward over a (B, T) batch.
//! One file of ~670 lines because each layer's backward mirrors its forward and both read the
//! same activation slots (`layers.rs`); ~610 lines of code, then its tests.

use super::attention::{self, AttnShape};
use super::block::{BlockWeights, Normed};
use super::config::GptConfig;
use super::layers::{EMBEDDING_SITE, LayerPlan, LayerSite, LayerSlot, dropout_site};
use super::ops::{self, Dropout};
use super::params::ParamLayout;
use super::rng::Rng;
use std::ops::Range;

/// Activations saved by the forward pass for the backward pass, plus backward scratch, all sized
/// for one (B, T) once (llm.c's `ActivationTensors`). Per-layer buffers are stacked by layer.
struct Activations {
    b: usize,
    t: usize,
    with_dropout: bool,
    layers: usize,
    encoded: Vec<f32>,   // (B, T, C) block 0 input
    ln1: Vec<f32>,       // (L, B, T, C)
    ln1_mean: Vec<f32>,  // (L, B, T)
    ln1_rstd: Vec<f32>,  // (L, B, T)
    qkv: Vec<f32>,       // (L, B, T, 3C)
    att: Vec<f32>,       // (L, B, H, T, T)
    att_drop: Vec<f32>,  // (L, B, H, T, T) only with dropout
    atty: Vec<f32>,      // (L, B, T, C)
    residual2: Vec<f32>, // (L, B, T, C)
    ln2: Vec<f32>,
    ln2_mean: Vec<f32>,
    ln2_rstd: Vec<f32>,
    fch: Vec<f32>,       // (L, B, T, 4C)
    fch_gelu: Vec<f32>,  // (L, B, T, 4C)
    residual3: Vec<f32>, // (L, B, T, C)
    lnf: Vec<f32>,
    lnf_mean: Vec<f32>,
    lnf_rstd: Vec<f32>,
    probs: Vec<f32>, // (B, T, V) logits, then probabilities, then dlogits
    losses: Vec<f32>,
    // scratch
    proj: Vec<f32>,  // (B, T, C) output of a projection before dropout/residual
    dres: Vec<f32>,  // (B, T, C) gradient flowing down the residual stream
    dtmp: Vec<f32>,  // (B, T, C)
    dln: Vec<f32>,   // (B, T, C)
    datty: Vec<f32>, // (B, T, C)
    dqkv: Vec<f32>,  // (B, T, 3C)
    datt: Vec<f32>,  // (B, H, T, T)
    dfc: Vec<f32>,   // (B, T, 4C)
    dfc2: Vec<f32>,  // (B, T, 4C)
}

impl Activations {
    /// `layers`: how many layers' activations to keep (all for training, one for evaluation).
    fn new(cfg: &GptConfig, b: usize, t: usize, with_dropout: bool, layers: usize) -> Self {
        let (l, c, v, h) = (layers, cfg.n_embd, cfg.vocab_size, cfg.n_head);
        let bt = b * t;
        let st = LayerPlan::new(b, t, c, h).stacked(l);
        let z = |n: usize| vec![0.0f32; n];
        Activations {
            b,
            t,
            with_dropout,
            layers,
            encoded: z(bt * c),
            ln1: z(st.c.len()),
            ln1_mean: z(st.rows.len()),
            ln1_rstd: z(st.rows.len()),
            qkv: z(st.c3.len()),
            att: z(st.att.len()),
            att_drop: z(if with_dropout { st.att.len() } else { 0 }),
            atty: z(st.c.len()),
            residual2: z(st.c.len()),
            ln2: z(st.c.len()),
            ln2_mean: z(st.rows.len()),
            ln2_rstd: z(st.rows.len()),
            fch: z(st.c4.len()),
            fch_gelu: z(st.c4.len()),
            residual3: z(st.c.len()),
            lnf: z(bt * c),
            lnf_mean: z(bt),
            lnf_rstd: z(bt),
            probs: z(bt * v),
            losses: z(bt),
            proj: z(bt * c),
            dres: z(bt * c),
            dtmp: z(bt * c),
            dln: z(bt * c),
            datty: z(bt * c),
            dqkv: z(bt * 3 * c),
            datt: z(b * h * t * t),
            dfc: z(bt * 4 * c),
            dfc2: z(bt * 4 * c),
        }
    }
}

/// Dropout for one forward pass: the probability and a seed unique to this (step, micro-step).
#[derive(Clone, Copy, Debug)]
pub struct DropoutPlan {
    pub p: f32,
    pub seed: u64,
}

impl DropoutPlan {
    /// Site numbers: see [`super::layers`] (0 for the embedding, then 3 per layer).
    fn site(&self, site: u64) -> Option<Dropout> {
        (self.p > 0.0).then_some(Dropout {
            p: self.p,
            seed: self.seed,
            site,
        })
    }
}

/// What the last forward pass was run on, kept for the backward pass.
struct ForwardState {
    tokens: Vec<u32>,
    targets: Vec<u32>,
    dropout: Option<DropoutPlan>,
}

pub struct Gpt {
    pub config: GptConfig,
    pub layout: ParamLayout,
    pub params: Vec<f32>,
    pub grads: Vec<f32>,
    acts: Option<Activations>,
    last: Option<ForwardState>,
}

fn opt<'a>(buf: &'a [f32], r: &Option<Range<usize>>) -> Option<&'a [f32]> {
    r.as_ref().map(|r| &buf[r.clone()])
}

/// Two disjoint mutable views into one buffer (e.g. a weight gradient and its bias gradient).
fn two_mut<'a>(
    buf: &'a mut [f32],
    a: &Range<usize>,
    b: &Option<Range<usize>>,
) -> (&'a mut [f32], Option<&'a mut [f32]>) {
    match b {
        None => (&mut buf[a.clone()], None),
        Some(b) => {
            assert!(
                a.end <= b.start,
                "bias must follow its weight in the layout"
            );
            let (lo, hi) = buf.split_at_mut(b.start);
            (&mut lo[a.clone()], Some(&mut hi[..b.len()]))
        }
    }
}

impl Gpt {
    /// A model with the given parameters (length must match the layout).
    pub fn from_params(config: GptConfig, params: Vec<f32>) -> anyhow::Result<Self> {
        config.validate()?;
        let layout = ParamLayout::new(&config);
        anyhow::ensure!(
            params.len() == layout.total,
            "parameter count {} does not match the config ({})",
            params.len(),
            layout.total
        );
        let grads = vec![0.0; layout.total];
        Ok(Gpt {
            config,
            layout,
            params,
            grads,
            acts: None,
            last: None,
        })
    }

    /// nanoGPT's initialisation: N(0, 0.02) for weights and embeddings, N(0, 0.02/sqrt(2 n_layer)) for
    /// the residual projections (`c_proj`), zeros for biases, ones for LayerNorm gains.
    pub fn new_random(config: GptConfig, seed: u64) -> anyhow::Result<Self> {
        config.validate()?;
        let layout = ParamLayout::new(&config);
        let mut params = vec![0.0f32; layout.total];
        let mut rng = Rng::new(seed);
        let proj_std = 0.02 / (2.0 * config.n_layer as f64).sqrt();
        for t in &layout.tensors {
            let p = &mut params[t.range.clone()];
            if t.name.contains("ln_") {
                p.fill(if t.name.ends_with("weight") { 1.0 } else { 0.0 });
            } else if t.name.ends_with("bias") {
                p.fill(0.0);
            } else {
                let std = if t.name.ends_with("c_proj.weight") {
                    proj_std
                } else {
                    0.02
                };
                p.iter_mut().for_each(|x| *x = (rng.normal() * std) as f32);
            }
        }
        Self::from_params(config, params)
    }

    fn ensure_acts(&mut self, b: usize, t: usize, with_dropout: bool, layers: usize) {
        let fits = self.acts.as_ref().is_some_and(|a| {
            a.b == b && a.t == t && (a.with_dropout || !with_dropout) && a.layers >= layers
        });
        if !fits {
            self.acts = None; // free the old buffers before allocating the new ones
            self.acts = Some(Activations::new(&self.config, b, t, with_dropout, layers));
        }
    }

    /// Evaluation: the loss (and logits) of `tokens` without dropout, keeping only one layer's
    /// activations at a time (a fraction of [`Gpt::forward`]'s memory); no backward may follow.
    pub fn forward_no_grad(
        &mut self,
        tokens: &[u32],
        targets: Option<&[u32]>,
        b: usize,
        t: usize,
    ) -> f32 {
        self.forward_impl(tokens, targets, b, t, None, false)
    }

    /// Runs the model on `tokens` (B*T, row-major). With `targets`, returns the mean cross-entropy
    /// loss and keeps what [`Gpt::backward`] needs; without, only logits are computed
    /// (read them with [`Gpt::logits`]). `dropout: None` is evaluation mode.
    pub fn forward(
        &mut self,
        tokens: &[u32],
        targets: Option<&[u32]>,
        b: usize,
        t: usize,
        dropout: Option<DropoutPlan>,
    ) -> f32 {
        self.forward_impl(tokens, targets, b, t, dropout, true)
    }

    fn forward_impl(
        &mut self,
        tokens: &[u32],
        targets: Option<&[u32]>,
        b: usize,
        t: usize,
        dropout: Option<DropoutPlan>,
        for_backward: bool,
    ) -> f32 {
        let cfg = self.config.clone();
        let (c, v, nh) = (cfg.n_embd, cfg.vocab_size, cfg.n_head);
        assert!(
            t <= cfg.block_size,
            "sequence length {t} exceeds block_size {}",
            cfg.block_size
        );
        assert_eq!(tokens.len(), b * t);
        assert!(
            tokens.iter().all(|&x| (x as usize) < v),
            "token id out of vocabulary"
        );
        let dropout = dropout.filter(|d| d.p > 0.0);
        let layers = if for_backward { cfg.n_layer } else { 1 };
        self.ensure_acts(b, t, dropout.is_some(), layers);
        let bt = b * t;
        let p = &self.params;
        let lay = &self.layout;
        let a = self.acts.as_mut().expect("activations allocated");
        let shape = AttnShape {
            b,
            t,
            c,
            n_head: nh,
        };
        let plan = LayerPlan::new(b, t, c, nh);

        ops::encoder_forward(
            &mut a.encoded,
            tokens,
            &p[lay.wte.clone()],
            &p[lay.wpe.clone()],
            t,
            c,
        );
        if let Some(d) = dropout.and_then(|d| d.site(EMBEDDING_SITE)) {
            d.apply_in_place(&mut a.encoded);
        }
        // Where layer l's activations go: its own slot for backward, else slot 0 for every layer.
        let slot = |l: usize| plan.slot(if for_backward { l } else { 0 });
        for (l, blk) in lay.blocks.iter().enumerate() {
            let LayerSlot {
                c: rc,
                rows: r1,
                c3: r3c,
                c4: r4c,
                att: ratt,
            } = slot(l);
            let site = |k: LayerSite| dropout.and_then(|d| d.site(dropout_site(l, k)));
            let residual: &[f32] = if l == 0 {
                &a.encoded
            } else {
                &a.residual3[slot(l - 1).c]
            };

            let w = BlockWeights::of(p, blk, cfg.gelu);
            w.attention_input(
                Normed {
                    out: &mut a.ln1[rc.clone()],
                    mean: &mut a.ln1_mean[r1.clone()],
                    rstd: &mut a.ln1_rstd[r1.clone()],
                },
                &mut a.qkv[r3c.clone()],
                residual,
                c,
            );
            let att_drop = if dropout.is_some() {
                Some(&mut a.att_drop[ratt.clone()])
            } else {
                None
            };
            attention::attention_forward(
                &mut a.atty[rc.clone()],
                &mut a.att[ratt],
                att_drop,
                &a.qkv[r3c],
                &shape,
                site(LayerSite::AttnProbs),
            );
            w.attention_output(&mut a.proj, &a.atty[rc.clone()], c);
            if let Some(d) = site(LayerSite::AttnOut) {
                d.apply_in_place(&mut a.proj);
            }
            ops::residual_forward(&mut a.residual2[rc.clone()], residual, &a.proj);
            w.mlp(
                Normed {
                    out: &mut a.ln2[rc.clone()],
                    mean: &mut a.ln2_mean[r1.clone()],
                    rstd: &mut a.ln2_rstd[r1],
                },
                &mut a.fch[r4c.clone()],
                &mut a.fch_gelu[r4c],
                &mut a.proj,
                &a.residual2[rc.clone()],
                c,
            );
            if let Some(d) = site(LayerSite::Mlp) {
                d.apply_in_place(&mut a.proj);
            }
            ops::residual_forward(&mut a.residual3[rc.clone()], &a.residual2[rc], &a.proj);
        }
        let last = &a.residual3[slot(cfg.n_layer - 1).c];
        ops::layernorm_forward(
            &mut a.lnf,
            &mut a.lnf_mean,
            &mut a.lnf_rstd,
            last,
            &p[lay.ln_f_w.clone()],
            opt(p, &lay.ln_f_b),
            c,
        );
        // lm_head is tied to wte.
        ops::linear_forward(&mut a.probs, &a.lnf, &p[lay.wte.clone()], None, bt, c, v);

        let loss = match targets {
            Some(y) => {
                assert_eq!(y.len(), bt);
                assert!(
                    y.iter().all(|&x| (x as usize) < v),
                    "target id out of vocabulary"
                );
                ops::crossentropy_forward(&mut a.probs, &mut a.losses, y, v)
            }
            None => f32::NAN,
        };
        self.last = targets.filter(|_| for_backward).map(|y| ForwardState {
            tokens: tokens.to_vec(),
            targets: y.to_vec(),
            dropout,
        });
        loss
    }

    /// Logits (B*T, V) of the last forward pass run without targets.
    pub fn logits(&self) -> &[f32] {
        let a = self.acts.as_ref().expect("forward first");
        &a.probs[..a.b * a.t * self.config.vocab_size]
    }

    /// Accumulates into `self.grads` the gradient of `loss_scale * loss` of the last forward pass.
    /// (nanoGPT divides each micro-step's loss by gradient_accumulation_steps; pass that here.)
    pub fn backward(&mut self, loss_scale: f32) {
        let st = self
            .last
            .take()
            .expect("backward needs a forward pass with targets");
        let cfg = self.config.clone();
        let (c, v, nh) = (cfg.n_embd, cfg.vocab_size, cfg.n_head);
        let a = self.acts.as_mut().expect("activations allocated");
        let (b, t) = (a.b, a.t);
        let bt = b * t;
        let p = &self.params;
        let g = &mut self.grads;
        let lay = &self.layout;
        let shape = AttnShape {
            b,
            t,
            c,
            n_head: nh,
        };
        let plan = LayerPlan::new(b, t, c, nh);
        let dropout = st.dropout;

        ops::crossentropy_backward(&mut a.probs, &st.targets, v, loss_scale / bt as f32);
        ops::linear_backward(
            &mut a.dln,
            &mut g[lay.wte.clone()],
            None,
            &a.probs,
            &a.lnf,
            &p[lay.wte.clone()],
            bt,
            c,
            v,
        );
        a.dres.fill(0.0);
        {
            let last = &a.residual3[plan.slot(cfg.n_layer - 1).c];
            let (dw, db) = two_mut(g, &lay.ln_f_w, &lay.ln_f_b);
            ops::layernorm_backward_add(
                &mut a.dres,
                dw,
                db,
                &a.dln,
                last,
                &a.lnf_mean,
                &a.lnf_rstd,
                &p[lay.ln_f_w.clone()],
                c,
            );
        }
        for (l, blk) in lay.blocks.iter().enumerate().rev() {
            let LayerSlot {
                c: rc,
                rows: r1,
                c3: r3c,
                c4: r4c,
                att: ratt,
            } = plan.slot(l);
            let site = |k: LayerSite| dropout.and_then(|d| d.site(dropout_site(l, k)));
            let residual: &[f32] = if l == 0 {
                &a.encoded
            } else {
                &a.residual3[plan.slot(l - 1).c]
            };

            // MLP: residual3 = residual2 + drop(c_proj(gelu(c_fc(ln_2(residual2)))))
            a.dtmp.copy_from_slice(&a.dres);
            if let Some(d) = site(LayerSite::Mlp) {
                d.apply_in_place(&mut a.dtmp);
            }
            let (dw, db) = two_mut(g, &blk.mlp_proj_w, &blk.mlp_proj_b);
            ops::linear_backward(
                &mut a.dfc,
                dw,
                db,
                &a.dtmp,
                &a.fch_gelu[r4c.clone()],
                &p[blk.mlp_proj_w.clone()],
                bt,
                4 * c,
                c,
            );
            ops::gelu_backward(&mut a.dfc2, &a.fch[r4c], &a.dfc, cfg.gelu);
            let (dw, db) = two_mut(g, &blk.c_fc_w, &blk.c_fc_b);
            ops::linear_backward(
                &mut a.dln,
                dw,
                db,
                &a.dfc2,
                &a.ln2[rc.clone()],
                &p[blk.c_fc_w.clone()],
                bt,
                c,
                4 * c,
            );
            let (dw, db) = two_mut(g, &blk.ln_2_w, &blk.ln_2_b);
            ops::layernorm_backward_add(
                &mut a.dres,
                dw,
                db,
                &a.dln,
                &a.residual2[rc.clone()],
                &a.ln2_mean[r1.clone()],
                &a.ln2_rstd[r1.clone()],
                &p[blk.ln_2_w.clone()],
                c,
            );

            // Attention: residual2 = residual + drop(c_proj(attn(c_attn(ln_1(residual)))))
            a.dtmp.copy_from_slice(&a.dres);
            if let Some(d) = site(LayerSite::AttnOut) {
                d.apply_in_place(&mut a.dtmp);
            }
            let (dw, db) = two_mut(g, &blk.attn_proj_w, &blk.attn_proj_b);
            ops::linear_backward(
                &mut a.datty,
                dw,
                db,
                &a.dtmp,
                &a.atty[rc.clone()],
                &p[blk.attn_proj_w.clone()],
                bt,
                c,
                c,
            );
            let att_drop = if dropout.is_some() {
                Some(&a.att_drop[ratt.clone()])
            } else {
                None
            };
            attention::attention_backward(
                &mut a.dqkv,
                &mut a.datt,
                &a.datty,
                &a.qkv[r3c.clone()],
                &a.att[ratt],
                att_drop,
                &shape,
                site(LayerSite::AttnProbs),
            );
            let (dw, db) = two_mut(g, &blk.c_attn_w, &blk.c_attn_b);
            ops::linear_backward(
                &mut a.dln,
                dw,
                db,
                &a.dqkv,
                &a.ln1[rc.clone()],
                &p[blk.c_attn_w.clone()],
                bt,
                c,
                3 * c,
            );
            let (dw, db) = two_mut(g, &blk.ln_1_w, &blk.ln_1_b);
            ops::layernorm_backward_add(
                &mut a.dres,
                dw,
                db,
                &a.dln,
                residual,
                &a.ln1_mean[r1.clone()],
                &a.ln1_rstd[r1],
                &p[blk.ln_1_w.clone()],
                c,
            );
        }
        if let Some(d) = dropout.and_then(|d| d.site(EMBEDDING_SITE)) {
            d.apply_in_place(&mut a.dres);
        }
        let (dwte, rest) = g.split_at_mut(lay.wpe.start);
        ops::encoder_backward(
            &mut dwte[lay.wte.clone()],
            &mut rest[..lay.wpe.len()],
            &a.dres,
            &st.tokens,
            t,
            c,
        );
    }

    pub fn zero_grad(&mut self) {
        self.grads.fill(0.0);
    }

    /// Frees the activation buffers (e.g. before sampling with a different shape).
    pub fn release_activations(&mut self) {
        self.acts = None;
        self.last = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Gelu;

    impl Activations {
        fn floats(&self) -> usize {
            [
                &self.encoded,
                &self.ln1,
                &self.ln1_mean,
                &self.ln1_rstd,
                &self.qkv,
                &self.att,
                &self.att_drop,
                &self.atty,
                &self.residual2,
                &self.ln2,
                &self.ln2_mean,
                &self.ln2_rstd,
                &self.fch,
                &self.fch_gelu,
                &self.residual3,
                &self.lnf,
                &self.lnf_mean,
                &self.lnf_rstd,
                &self.probs,
                &self.losses,
                &self.proj,
                &self.dres,
                &self.dtmp,
                &self.dln,
                &self.datty,
                &self.dqkv,
                &self.datt,
                &self.dfc,
                &self.dfc2,
            ]
            .iter()
            .map(|v| v.len())
            .sum()
        }
    }

    #[test]
    fn the_memory_estimate_counts_every_activation() {
        let cfg = GptConfig {
            n_layer: 3,
            n_head: 2,
            n_embd: 16,
            block_size: 8,
            vocab_size: 65,
            bias: false,
            dropout: 0.1,
            gelu: Gelu::Erf,
        };
        for (b, t, dropout, layers) in [(2, 8, true, 3), (3, 5, false, 1)] {
            let a = Activations::new(&cfg, b, t, dropout, layers);
            assert_eq!(
                cfg.activation_floats(b, t, layers, dropout),
                a.floats() as f64
            );
        }
    }
}
