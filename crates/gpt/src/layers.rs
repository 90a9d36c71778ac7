//! The layer plan shared by the CPU pass ([`super::model`]), the CUDA pass and sampling: where
//! layer `l`'s activations lie in the buffers stacked by layer, and which dropout site each of its
//! dropouts uses. Site numbers seed the counter-based masks ([`super::rng::dropout_keep`]), so they
//! are part of the output bits: 0 is the embedding, then 3 per layer in [`LayerSite`] order.

use std::ops::Range;

/// The dropout site of the token + position embedding.
pub const EMBEDDING_SITE: u64 = 0;

/// The dropouts inside one transformer block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayerSite {
    /// The attention probabilities.
    AttnProbs = 0,
    /// The attention output projection, before the residual add.
    AttnOut = 1,
    /// The MLP output projection, before the residual add.
    Mlp = 2,
}

/// The dropout site number of `site` in layer `layer`.
pub fn dropout_site(layer: usize, site: LayerSite) -> u64 {
    1 + 3 * layer as u64 + site as u64
}

/// The shape of one layer's activations for a (B, T) pass.
#[derive(Clone, Copy, Debug)]
pub struct LayerPlan {
    pub b: usize,
    pub t: usize,
    pub c: usize,
    pub n_head: usize,
}

/// Element ranges of one layer slot in the stacked buffers, by the per-position width of the buffer:
/// `c` (B, T, C), `rows` (B, T), `c3` (B, T, 3C), `c4` (B, T, 4C), `att` (B, H, T, T).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayerSlot {
    pub c: Range<usize>,
    pub rows: Range<usize>,
    pub c3: Range<usize>,
    pub c4: Range<usize>,
    pub att: Range<usize>,
}

impl LayerPlan {
    pub fn new(b: usize, t: usize, c: usize, n_head: usize) -> Self {
        LayerPlan { b, t, c, n_head }
    }

    /// The ranges covering slots `0..layers`: their lengths are those of the stacked buffers.
    pub fn stacked(&self, layers: usize) -> LayerSlot {
        let end = self.slot(layers);
        LayerSlot {
            c: 0..end.c.start,
            rows: 0..end.rows.start,
            c3: 0..end.c3.start,
            c4: 0..end.c4.start,
            att: 0..end.att.start,
        }
    }

    /// The ranges of slot `s` (layer `s` when every layer keeps its activations).
    pub fn slot(&self, s: usize) -> LayerSlot {
        let bt = self.b * self.t;
        let r = |n: usize| s * n..(s + 1) * n;
        LayerSlot {
            c: r(bt * self.c),
            rows: r(bt),
            c3: r(bt * 3 * self.c),
            c4: r(bt * 4 * self.c),
            att: r(self.b * self.n_head * self.t * self.t),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sites_are_embedding_then_three_per_layer() {
        assert_eq!(EMBEDDING_SITE, 0);
        assert_eq!(dropout_site(0, LayerSite::AttnProbs), 1);
        assert_eq!(dropout_site(0, LayerSite::Mlp), 3);
        assert_eq!(dropout_site(2, LayerSite::AttnOut), 8);
    }

    #[test]
    fn slots_are_stacked_by_layer() {
        let p = LayerPlan::new(2, 3, 4, 2);
        let s = p.slot(1);
        assert_eq!(s.c, 24..48);
        assert_eq!(s.rows, 6..12);
        assert_eq!(s.c3, 72..144);
        assert_eq!(s.c4, 96..192);
        assert_eq!(s.att, 36..72);
        let all = p.stacked(3);
        assert_eq!((all.c.len(), all.rows.len(), all.att.len()), (72, 18, 108));
        assert_eq!((all.c3.len(), all.c4.len()), (216, 288));
    }
}
