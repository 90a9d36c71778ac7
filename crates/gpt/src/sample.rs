//! Generation (nanoGPT's `generate`) with a KV cache.
//!
//! [`Decoder::extend`] runs new tokens through the model against the cached keys and values of the
//! ones before, so each new token costs one row instead of the whole context. Because GPT uses
//! absolute position embeddings, once the sequence outgrows `block_size` the context is cropped to
//! its last `block_size` tokens exactly as nanoGPT does and the cache is rebuilt from them in one
//! batched pass: the output equals full recomputation at every step.

use super::block::{BlockWeights, Normed};
use super::layers::LayerPlan;
use super::model::Gpt;
use super::rng::{Rng, mix64};
use super::{math, ops};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SampleConfig {
    pub max_new_tokens: usize,
    /// 1.0 = no change; lower is more conservative. 0 (or less) means greedy (argmax); a tiny positive
    /// temperature approaches greedy.
    pub temperature: f32,
    /// Keep only the k most likely tokens (`None`: all).
    pub top_k: Option<usize>,
    pub seed: u64,
}

/// Per-sequence state: the KV cache and work buffers for up to `block_size` rows.
pub struct Decoder<'m> {
    model: &'m Gpt,
    len: usize,
    k: Vec<f32>, // (L, block_size, C)
    v: Vec<f32>, // (L, block_size, C)
    x: Vec<f32>,
    ln: Vec<f32>,
    mean: Vec<f32>,
    rstd: Vec<f32>,
    qkv: Vec<f32>,
    atty: Vec<f32>,
    proj: Vec<f32>,
    fc: Vec<f32>,
    fcg: Vec<f32>,
    logits: Vec<f32>,
    scores: Vec<f32>,
}

impl<'m> Decoder<'m> {
    pub fn new(model: &'m Gpt) -> Self {
        let cfg = &model.config;
        let (t, c) = (cfg.block_size, cfg.n_embd);
        let z = |n| vec![0.0f32; n];
        let cache = kv_plan(cfg).stacked(cfg.n_layer).c.len();
        Decoder {
            model,
            len: 0,
            k: z(cache),
            v: z(cache),
            x: z(t * c),
            ln: z(t * c),
            mean: z(t),
            rstd: z(t),
            qkv: z(t * 3 * c),
            atty: z(t * c),
            proj: z(t * c),
            fc: z(t * 4 * c),
            fcg: z(t * 4 * c),
            logits: z(cfg.vocab_size),
            scores: z(t),
        }
    }

    /// Tokens currently in the cache.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn reset(&mut self) {
        self.len = 0;
    }

    /// Appends `tokens` at positions `len..len+n` and returns the logits after the last of them.
    pub fn extend(&mut self, tokens: &[u32]) -> &[f32] {
        let m = self.model;
        let cfg = &m.config;
        let (c, nh, bs, v) = (cfg.n_embd, cfg.n_head, cfg.block_size, cfg.vocab_size);
        let hs = cfg.head_size();
        let (n, p0) = (tokens.len(), self.len);
        assert!(n > 0 && p0 + n <= bs, "decoder context exceeds block_size");
        assert!(
            tokens.iter().all(|&t| (t as usize) < v),
            "token id out of vocabulary"
        );
        let p = &m.params;
        let lay = &m.layout;
        let opt = |r: &Option<std::ops::Range<usize>>| r.as_ref().map(|r| &p[r.clone()]);
        let x = &mut self.x[..n * c];
        // Positions p0..p0+n: the encoder over one sequence of n, from wpe row p0 on.
        ops::encoder_forward(
            x,
            tokens,
            &p[lay.wte.clone()],
            &p[lay.wpe.start + p0 * c..lay.wpe.end],
            n,
            c,
        );
        let kv = kv_plan(cfg);
        for (l, blk) in lay.blocks.iter().enumerate() {
            let w = BlockWeights::of(p, blk, cfg.gelu);
            let qkv = &mut self.qkv[..n * 3 * c];
            w.attention_input(
                Normed {
                    out: &mut self.ln[..n * c],
                    mean: &mut self.mean[..n],
                    rstd: &mut self.rstd[..n],
                },
                qkv,
                x,
                c,
            );
            let kc = &mut self.k[kv.slot(l).c];
            let vc = &mut self.v[kv.slot(l).c];
            for i in 0..n {
                kc[(p0 + i) * c..][..c].copy_from_slice(&qkv[i * 3 * c + c..][..c]);
                vc[(p0 + i) * c..][..c].copy_from_slice(&qkv[i * 3 * c + 2 * c..][..c]);
            }
            let scale = 1.0 / (hs as f32).sqrt();
            let (scores_buf, atty) = (&mut self.scores, &mut self.atty);
            {
                for i in 0..n {
                    let pos = p0 + i;
                    for h in 0..nh {
                        let q = &qkv[i * 3 * c + h * hs..][..hs];
                        let scores = &mut scores_buf[..=pos];
                        for (j, s) in scores.iter_mut().enumerate() {
                            *s = math::dot(q, &kc[j * c + h * hs..][..hs]) * scale;
                        }
                        ops::softmax_in_place(scores);
                        let y = &mut atty[i * c + h * hs..][..hs];
                        y.fill(0.0);
                        for (j, &a) in scores.iter().enumerate() {
                            let vv = &vc[j * c + h * hs..][..hs];
                            for d in 0..hs {
                                y[d] += a * vv[d];
                            }
                        }
                    }
                }
            }
            let proj = &mut self.proj[..n * c];
            w.attention_output(proj, &self.atty[..n * c], c);
            ops::add_into(x, proj);
            w.mlp(
                Normed {
                    out: &mut self.ln[..n * c],
                    mean: &mut self.mean[..n],
                    rstd: &mut self.rstd[..n],
                },
                &mut self.fc[..n * 4 * c],
                &mut self.fcg[..n * 4 * c],
                proj,
                x,
                c,
            );
            ops::add_into(x, proj);
        }
        self.len += n;
        // Only the last position's logits are needed.
        let last = &x[(n - 1) * c..n * c];
        let ln = &mut self.ln[..c];
        ops::layernorm_forward(
            ln,
            &mut self.mean[..1],
            &mut self.rstd[..1],
            last,
            &p[lay.ln_f_w.clone()],
            opt(&lay.ln_f_b),
            c,
        );
        ops::linear_forward(&mut self.logits, ln, &p[lay.wte.clone()], None, 1, c, v);
        &self.logits
    }
}

/// The KV cache's layer plan: one sequence of `block_size` rows per layer.
fn kv_plan(cfg: &super::config::GptConfig) -> LayerPlan {
    LayerPlan::new(1, cfg.block_size, cfg.n_embd, cfg.n_head)
}

/// Picks the next token from logits: temperature, top-k, then a draw from the softmax.
pub fn sample_token(logits: &[f32], cfg: &SampleConfig, rng: &mut Rng) -> u32 {
    if cfg.temperature <= 0.0 {
        return argmax(logits);
    }
    let mut probs = scaled_logits(logits, cfg.temperature);
    if let Some(k) = cfg.top_k.filter(|&k| k > 0 && k < probs.len()) {
        let mut sorted = probs.clone();
        sorted.select_nth_unstable_by(k - 1, |a, b| b.total_cmp(a));
        let kth = sorted[k - 1];
        probs
            .iter_mut()
            .filter(|p| **p < kth)
            .for_each(|p| *p = f32::NEG_INFINITY);
    }
    ops::softmax_in_place(&mut probs);
    let r = rng.uniform() as f32;
    let mut acc = 0.0;
    for (i, p) in probs.iter().enumerate() {
        acc += p;
        if r < acc {
            return i as u32;
        }
    }
    // Rounding left r above the total: take the most likely token.
    argmax(&probs)
}

/// Logits divided by the temperature. A tiny temperature overflows the plain quotients to infinity
/// (and the softmax to NaN); then the largest logit is subtracted first, so it becomes 0 and the rest
/// large negatives: the near one-hot distribution that a temperature approaching 0 means. Every
/// temperature that did not overflow keeps the plain quotient, so its samples are unchanged.
fn scaled_logits(logits: &[f32], temperature: f32) -> Vec<f32> {
    let plain: Vec<f32> = logits.iter().map(|l| l / temperature).collect();
    if plain.iter().all(|x| x.is_finite()) {
        return plain;
    }
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
    logits.iter().map(|l| (l - max) / temperature).collect()
}

fn argmax(x: &[f32]) -> u32 {
    x.iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |(bi, bv), (i, &v)| {
            if v > bv { (i, v) } else { (bi, bv) }
        })
        .0 as u32
}

/// Generates `max_new_tokens` after `prompt`; returns only the new tokens.
pub fn generate(model: &Gpt, prompt: &[u32], cfg: &SampleConfig, rng: &mut Rng) -> Vec<u32> {
    assert!(
        !prompt.is_empty(),
        "generation needs at least one prompt token"
    );
    let bs = model.config.block_size;
    let mut dec = Decoder::new(model);
    let mut seq: Vec<u32> = prompt.to_vec();
    let start = seq.len().saturating_sub(bs);
    let mut logits = dec.extend(&seq[start..]).to_vec();
    for _ in 0..cfg.max_new_tokens {
        let next = sample_token(&logits, cfg, rng);
        seq.push(next);
        if dec.len() < bs {
            logits.copy_from_slice(dec.extend(&[next]));
        } else {
            // Crop to the last block_size tokens (positions restart at 0) and rebuild the cache.
            dec.reset();
            logits.copy_from_slice(dec.extend(&seq[seq.len() - bs..]));
        }
    }
    seq.split_off(prompt.len())
}

/// The random stream of sample `i` of a sampling run seeded `seed` (on every device).
pub fn sample_rng(seed: u64, i: usize) -> Rng {
    Rng::new(mix64(seed) ^ i as u64)
}

/// Samples `samples` (their indices: a run streams its samples in batches), in parallel; sample
/// `i` draws from its own stream derived from `(seed, i)`, so the output does not depend on the
/// thread count or the batches.
pub fn generate_many(
    model: &Gpt,
    prompt: &[u32],
    cfg: &SampleConfig,
    samples: std::ops::Range<usize>,
) -> Vec<Vec<u32>> {
    samples
        .into_par_iter()
        .map(|i| {
            let mut rng = sample_rng(cfg.seed, i);
            generate(model, prompt, cfg, &mut rng)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Gelu, GptConfig};

    fn cfg(temperature: f32, top_k: Option<usize>) -> SampleConfig {
        SampleConfig {
            max_new_tokens: 1,
            temperature,
            top_k,
            seed: 1,
        }
    }

    #[test]
    fn a_tiny_temperature_picks_the_most_likely_token() {
        let logits = [1.5f32, 3.25, -2.0, 3.0];
        for t in [1e-45, 1e-30, 1e-6] {
            for top_k in [None, Some(2)] {
                assert!(scaled_logits(&logits, t).iter().all(|x| !x.is_nan()));
                for seed in 0..20 {
                    let token = sample_token(&logits, &cfg(t, top_k), &mut Rng::new(seed));
                    assert_eq!(token, 1, "temperature {t}, top_k {top_k:?}");
                }
            }
        }
        assert_eq!(sample_token(&logits, &cfg(0.0, None), &mut Rng::new(0)), 1);
    }

    #[test]
    fn ordinary_temperatures_keep_the_plain_quotient() {
        let logits = [1.5f32, 3.25, -2.0, 3.0];
        let want: Vec<f32> = logits.iter().map(|l| l / 0.8).collect();
        assert_eq!(scaled_logits(&logits, 0.8), want);
    }

    #[test]
    fn the_memory_estimate_counts_a_decoder() {
        let config = GptConfig {
            n_layer: 2,
            n_head: 2,
            n_embd: 8,
            block_size: 6,
            vocab_size: 11,
            bias: true,
            dropout: 0.0,
            gelu: Gelu::Erf,
        };
        let model = Gpt::new_random(config.clone(), 1).unwrap();
        let d = Decoder::new(&model);
        let floats = [
            &d.k, &d.v, &d.x, &d.ln, &d.mean, &d.rstd, &d.qkv, &d.atty, &d.proj, &d.fc, &d.fcg,
            &d.logits, &d.scores,
        ]
        .iter()
        .map(|b| b.len())
        .sum::<usize>();
        assert_eq!(config.decoder_floats(), floats as f64);
    }
}
