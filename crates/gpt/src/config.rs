//! Model hyper-parameters (nanoGPT's `GPTConfig`, plus the GELU form).

use super::memory::{Footprint, Work};
use anyhow::{Result, bail};
use serde::{Deserialize, Serialize};

/// Which GELU: nanoGPT's model uses the exact erf form, GPT-2 / Hugging Face ("gelu_new") the tanh
/// approximation. Imported GPT-2 weights must use `Tanh` to reproduce transformers' logits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Gelu {
    #[default]
    Erf,
    Tanh,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GptConfig {
    pub n_layer: usize,
    pub n_head: usize,
    pub n_embd: usize,
    pub block_size: usize,
    pub vocab_size: usize,
    /// Biases in Linear and LayerNorm layers (GPT-2: true).
    pub bias: bool,
    pub dropout: f32,
    #[serde(default)]
    pub gelu: Gelu,
}

impl GptConfig {
    pub fn validate(&self) -> Result<()> {
        if let Some((_, why)) = self.invalid_field() {
            bail!("{why}");
        }
        if !self.n_embd.is_multiple_of(self.n_head) {
            bail!(
                "n_embd ({}) must be divisible by n_head ({})",
                self.n_embd,
                self.n_head
            );
        }
        Ok(())
    }

    /// The first field whose value the model cannot use on its own, and why (for errors located
    /// in a manifest). [`GptConfig::validate`] also checks how fields go together.
    pub fn invalid_field(&self) -> Option<(&'static str, String)> {
        let sizes = [
            ("n_layer", self.n_layer),
            ("n_head", self.n_head),
            ("n_embd", self.n_embd),
            ("block_size", self.block_size),
            ("vocab_size", self.vocab_size),
        ];
        if let Some((field, _)) = sizes.iter().find(|(_, v)| *v == 0) {
            return Some((*field, format!("{field} must be at least 1, found 0")));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            let why = format!("dropout must be in [0, 1), found {}", self.dropout);
            return Some(("dropout", why));
        }
        None
    }

    pub fn head_size(&self) -> usize {
        self.n_embd / self.n_head
    }

    /// The number of parameters (`ParamLayout::total`), in f64 so absurd sizes cannot overflow.
    pub fn param_count(&self) -> f64 {
        let (c, v, t) = (
            self.n_embd as f64,
            self.vocab_size as f64,
            self.block_size as f64,
        );
        let biases = if self.bias { 1.0 } else { 0.0 };
        // Per block: LayerNorm gains 2C, weights 12C² (qkv 3C², proj C², MLP 8C²), biases 11C.
        let block = 12.0 * c * c + 2.0 * c + biases * 11.0 * c;
        v * c + t * c + self.n_layer as f64 * block + c + biases * c
    }

    /// f32 values the CPU engine's activations take for (b, t) windows with `layers` layers kept
    /// (`model.rs`'s `Activations`; the GPU's are about the same).
    pub fn activation_floats(&self, b: usize, t: usize, layers: usize, dropout: bool) -> f64 {
        let (c, v) = (self.n_embd as f64, self.vocab_size as f64);
        let att = self.n_head as f64 * t as f64; // attention scores per position
        let drop = if dropout { 1.0 } else { 0.0 };
        let per_layer = 16.0 * c + 4.0 + att * (1.0 + drop);
        let shared = 18.0 * c + 3.0 + v + att;
        b as f64 * t as f64 * (layers as f64 * per_layer + shared)
    }

    /// f32 values one sampling `Decoder` holds: a KV cache and buffers for block_size positions.
    pub fn decoder_floats(&self) -> f64 {
        let (c, t) = (self.n_embd as f64, self.block_size as f64);
        2.0 * self.n_layer as f64 * t * c + 15.0 * t * c + 3.0 * t + self.vocab_size as f64
    }

    /// Bytes of the buffers training keeps per parameter: the parameters, their gradients and
    /// AdamW's two moments.
    pub fn training_buffers(&self) -> Vec<(&'static str, f64)> {
        let params = 4.0 * self.param_count();
        vec![
            ("parameters", params),
            ("gradients", params),
            ("AdamW moments", 2.0 * params),
        ]
    }

    /// The memory `work` with this model takes on the CPU, in bytes (see [`ensure_fits`](super::memory::ensure_fits)
    /// for how it is judged).
    pub fn footprint(&self, work: Work) -> Footprint {
        let params = 4.0 * self.param_count();
        let floats = |n: f64, what: String| Some((4.0 * n, what));
        match work {
            Work::Load => Footprint {
                model: vec![("parameters", params)],
                activations: None,
            },
            Work::Train { batch } => Footprint {
                model: self.training_buffers(),
                activations: floats(
                    self.activation_floats(
                        batch,
                        self.block_size,
                        self.n_layer,
                        self.dropout > 0.0,
                    ),
                    format!(
                        "batch {batch} x block {}, {} layers",
                        self.block_size, self.n_layer
                    ),
                ),
            },
            Work::Eval { batch, t } => Footprint {
                model: vec![("parameters", params)],
                activations: floats(
                    self.activation_floats(batch, t, 1, false),
                    format!("batch {batch} x block {t}"),
                ),
            },
            Work::Sample { parallel } => Footprint {
                model: vec![("parameters", params)],
                activations: floats(
                    parallel as f64 * self.decoder_floats(),
                    format!("{parallel} sample(s) at once, block {}", self.block_size),
                ),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::params::ParamLayout;

    #[test]
    fn param_count_matches_the_layout() {
        for bias in [false, true] {
            let c = GptConfig {
                n_layer: 3,
                n_head: 2,
                n_embd: 16,
                block_size: 24,
                vocab_size: 65,
                bias,
                dropout: 0.0,
                gelu: Gelu::Erf,
            };
            assert_eq!(c.param_count(), ParamLayout::new(&c).total as f64);
        }
    }
}
