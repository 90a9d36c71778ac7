//! All parameters live in one `Vec<f32>`; this module names the pieces (llm.c's `ParameterTensors`).
//! Names and shapes follow nanoGPT's `state_dict` (Linear weights are `(out, in)`), so checkpoints read
//! like nanoGPT's and the Hugging Face importer only has to transpose Conv1D weights. `lm_head.weight`
//! is tied to `transformer.wte.weight` and is not stored twice.

use super::config::GptConfig;
use std::ops::Range;

/// One named tensor inside the parameter buffer.
#[derive(Clone, Debug)]
pub struct Tensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub range: Range<usize>,
}

impl Tensor {
    /// nanoGPT's AdamW groups: weight decay on every tensor of 2+ dimensions (matmul weights and
    /// embeddings), none on biases and LayerNorm gains.
    pub fn decays(&self) -> bool {
        self.shape.len() >= 2
    }
}

/// Offsets of one transformer block's tensors. Biases are `None` when `bias: false`.
#[derive(Clone, Debug)]
pub struct BlockParams {
    pub ln_1_w: Range<usize>,
    pub ln_1_b: Option<Range<usize>>,
    pub c_attn_w: Range<usize>,
    pub c_attn_b: Option<Range<usize>>,
    pub attn_proj_w: Range<usize>,
    pub attn_proj_b: Option<Range<usize>>,
    pub ln_2_w: Range<usize>,
    pub ln_2_b: Option<Range<usize>>,
    pub c_fc_w: Range<usize>,
    pub c_fc_b: Option<Range<usize>>,
    pub mlp_proj_w: Range<usize>,
    pub mlp_proj_b: Option<Range<usize>>,
}

#[derive(Clone, Debug)]
pub struct ParamLayout {
    pub tensors: Vec<Tensor>,
    pub wte: Range<usize>,
    pub wpe: Range<usize>,
    pub blocks: Vec<BlockParams>,
    pub ln_f_w: Range<usize>,
    pub ln_f_b: Option<Range<usize>>,
    pub total: usize,
}

struct Builder {
    tensors: Vec<Tensor>,
    next: usize,
}

impl Builder {
    fn add(&mut self, name: String, shape: &[usize]) -> Range<usize> {
        let len: usize = shape.iter().product();
        let range = self.next..self.next + len;
        self.next += len;
        self.tensors.push(Tensor {
            name,
            shape: shape.to_vec(),
            range: range.clone(),
        });
        range
    }

    fn bias(&mut self, on: bool, name: String, len: usize) -> Option<Range<usize>> {
        on.then(|| self.add(name, &[len]))
    }
}

impl ParamLayout {
    pub fn new(cfg: &GptConfig) -> Self {
        let (c, v, b) = (cfg.n_embd, cfg.vocab_size, cfg.bias);
        let mut p = Builder {
            tensors: Vec::new(),
            next: 0,
        };
        let wte = p.add("transformer.wte.weight".into(), &[v, c]);
        let wpe = p.add("transformer.wpe.weight".into(), &[cfg.block_size, c]);
        let blocks = (0..cfg.n_layer)
            .map(|l| {
                let n = |s: &str| format!("transformer.h.{l}.{s}");
                BlockParams {
                    ln_1_w: p.add(n("ln_1.weight"), &[c]),
                    ln_1_b: p.bias(b, n("ln_1.bias"), c),
                    c_attn_w: p.add(n("attn.c_attn.weight"), &[3 * c, c]),
                    c_attn_b: p.bias(b, n("attn.c_attn.bias"), 3 * c),
                    attn_proj_w: p.add(n("attn.c_proj.weight"), &[c, c]),
                    attn_proj_b: p.bias(b, n("attn.c_proj.bias"), c),
                    ln_2_w: p.add(n("ln_2.weight"), &[c]),
                    ln_2_b: p.bias(b, n("ln_2.bias"), c),
                    c_fc_w: p.add(n("mlp.c_fc.weight"), &[4 * c, c]),
                    c_fc_b: p.bias(b, n("mlp.c_fc.bias"), 4 * c),
                    mlp_proj_w: p.add(n("mlp.c_proj.weight"), &[c, 4 * c]),
                    mlp_proj_b: p.bias(b, n("mlp.c_proj.bias"), c),
                }
            })
            .collect();
        let ln_f_w = p.add("transformer.ln_f.weight".into(), &[c]);
        let ln_f_b = p.bias(b, "transformer.ln_f.bias".into(), c);
        ParamLayout {
            tensors: p.tensors,
            wte,
            wpe,
            blocks,
            ln_f_w,
            ln_f_b,
            total: p.next,
        }
    }

    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// Parameters excluding position embeddings, as nanoGPT's `get_num_params` reports them.
    pub fn num_params_non_embedding(&self) -> usize {
        self.total - self.wpe.len()
    }
}
