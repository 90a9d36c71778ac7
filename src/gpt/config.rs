//! Model hyper-parameters (nanoGPT's `GPTConfig`, plus the GELU form).

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
        if self.n_layer == 0
            || self.n_head == 0
            || self.n_embd == 0
            || self.block_size == 0
            || self.vocab_size == 0
        {
            bail!(
                "model sizes must be positive (n_layer, n_head, n_embd, block_size, vocab_size): {self:?}"
            );
        }
        if !self.n_embd.is_multiple_of(self.n_head) {
            bail!(
                "n_embd ({}) must be divisible by n_head ({})",
                self.n_embd,
                self.n_head
            );
        }
        if !(0.0..1.0).contains(&self.dropout) {
            bail!("dropout must be in [0, 1), got {}", self.dropout);
        }
        Ok(())
    }

    pub fn head_size(&self) -> usize {
        self.n_embd / self.n_head
    }
}
