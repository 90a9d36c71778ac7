//! Causal self-attention on the CPU, one task per (batch, head). qkv: (B, T, 3C) holding q, k, v;
//! att: (B, H, T, T) softmax probabilities; att_drop: the same after dropout (only when training
//! with dropout); out: (B, T, C). The products are `gemm` calls on strided views of one head; the
//! causal softmax and its backward are lane-wise kernels ([`math::simd_kernel`]).

use super::math;
use super::matmul::{MatRef, matmul_strided};
use super::ops::{Dropout, dropout_in_place, dropout_into};
use rayon::prelude::*;

/// A raw pointer that may cross threads: each (batch, head) task writes a disjoint strided region.
#[derive(Clone, Copy)]
struct SharedMut(*mut f32);
unsafe impl Send for SharedMut {}
unsafe impl Sync for SharedMut {}

impl SharedMut {
    /// A method (not `.0`) so closures capture the whole wrapper, which is Send + Sync.
    fn ptr(self) -> *mut f32 {
        self.0
    }
}

pub struct AttnShape {
    pub b: usize,
    pub t: usize,
    pub c: usize,
    pub n_head: usize,
}

impl AttnShape {
    pub fn head_size(&self) -> usize {
        self.c / self.n_head
    }
}

/// Views of one (batch, head)'s q, k and v, each (T, hs), inside the (B, T, 3C) qkv activations.
fn head_views(
    qkv: &[f32],
    bi: usize,
    h: usize,
    t: usize,
    c: usize,
    hs: usize,
) -> (MatRef<'_>, MatRef<'_>, MatRef<'_>) {
    let base = &qkv[bi * t * 3 * c..];
    let view = |offset: usize| MatRef {
        data: &base[offset + h * hs..],
        rows: t,
        cols: hs,
        rs: 3 * c,
        cs: 1,
    };
    (view(0), view(c), view(2 * c))
}

pub fn attention_forward(
    out: &mut [f32],
    att: &mut [f32],
    att_drop: Option<&mut [f32]>,
    qkv: &[f32],
    s: &AttnShape,
    dropout: Option<Dropout>,
) {
    let (b, t, c, nh) = (s.b, s.t, s.c, s.n_head);
    let hs = s.head_size();
    let scale = 1.0 / (hs as f32).sqrt();
    assert!(out.len() >= b * t * c && att.len() >= b * nh * t * t && qkv.len() >= b * t * 3 * c);
    let out_ptr = SharedMut(out.as_mut_ptr());
    let drop_ptr = att_drop.map(|d| {
        assert!(d.len() >= b * nh * t * t);
        SharedMut(d.as_mut_ptr())
    });
    att[..b * nh * t * t]
        .par_chunks_mut(t * t)
        .enumerate()
        .for_each(|(bh, a)| {
            let (bi, h) = (bh / nh, bh % nh);
            let (q, k, v) = head_views(qkv, bi, h, t, c, hs);
            // SAFETY: `a` is this task's own (T, T) block.
            unsafe { matmul_strided(a.as_mut_ptr(), t, 1, q, k.t(), false) };
            causal_softmax_rows(a, t, scale);
            let probs: &[f32] = match (drop_ptr, dropout) {
                (Some(dp), Some(d)) => {
                    // SAFETY: this task's own (T, T) block of att_drop.
                    let ad =
                        unsafe { std::slice::from_raw_parts_mut(dp.ptr().add(bh * t * t), t * t) };
                    dropout_into(ad, a, d, bh * t * t);
                    ad
                }
                _ => a,
            };
            // SAFETY: out rows (bi, 0..t), columns h*hs..(h+1)*hs belong to this task alone.
            unsafe {
                let dst = out_ptr.ptr().add(bi * t * c + h * hs);
                matmul_strided(dst, c, 1, MatRef::new(probs, t, t), v, false);
            }
        });
}

/// Writes dqkv (overwritten). `datt` is (B, H, T, T) scratch.
#[allow(clippy::too_many_arguments)]
pub fn attention_backward(
    dqkv: &mut [f32],
    datt: &mut [f32],
    dout: &[f32],
    qkv: &[f32],
    att: &[f32],
    att_drop: Option<&[f32]>,
    s: &AttnShape,
    dropout: Option<Dropout>,
) {
    let (b, t, c, nh) = (s.b, s.t, s.c, s.n_head);
    let hs = s.head_size();
    let scale = 1.0 / (hs as f32).sqrt();
    assert!(dqkv.len() >= b * t * 3 * c && datt.len() >= b * nh * t * t && dout.len() >= b * t * c);
    let dqkv_ptr = SharedMut(dqkv.as_mut_ptr());
    datt[..b * nh * t * t]
        .par_chunks_mut(t * t)
        .enumerate()
        .for_each(|(bh, da)| {
            let (bi, h) = (bh / nh, bh % nh);
            let (q, k, v) = head_views(qkv, bi, h, t, c, hs);
            let dy = MatRef {
                data: &dout[bi * t * c + h * hs..],
                rows: t,
                cols: hs,
                rs: c,
                cs: 1,
            };
            let a = &att[bh * t * t..][..t * t];
            let probs = match (att_drop, dropout) {
                (Some(ad), Some(_)) => &ad[bh * t * t..][..t * t],
                _ => a,
            };
            // SAFETY: each task writes only its own head's columns of dqkv and its own datt block.
            unsafe {
                let dq = dqkv_ptr.ptr().add(bi * t * 3 * c + h * hs);
                let dk = dq.add(c);
                let dv = dq.add(2 * c);
                // dv = probs^T @ dy ; dprobs = dy @ v^T
                matmul_strided(dv, 3 * c, 1, MatRef::new(probs, t, t).t(), dy, false);
                matmul_strided(da.as_mut_ptr(), t, 1, dy, v.t(), false);
                if let Some(d) = dropout.filter(|_| att_drop.is_some()) {
                    dropout_in_place(da, d, bh * t * t);
                }
                causal_softmax_backward_rows(da, a, t, scale);
                let dpre = MatRef::new(da, t, t);
                matmul_strided(dq, 3 * c, 1, dpre, k, false);
                matmul_strided(dk, 3 * c, 1, dpre.t(), q, false);
            }
        });
}

/// The columns of row `i` of a causal (T, T) block that the lane-wise kernels touch: `0..=i`
/// rounded up to whole [`math::LANES`] chunks (the rest of the row is zero).
fn causal_width(i: usize, t: usize) -> usize {
    (i + 1).next_multiple_of(math::LANES).min(t)
}

math::simd_kernel!(causal_softmax_rows, causal_softmax_rows_on, causal_softmax_rows_kernel, (a: &mut [f32], t: usize, scale: f32));

/// Row i of a (T, T) score block: scale, softmax over columns 0..=i, zeros after. Each row is
/// worked in whole lane chunks, the columns past `i` masked (-inf into the max, 0 into the sum):
/// the same bits as softmax over `0..=i` alone (lane `j % 16` takes column `j` either way), without
/// a scalar tail on every row.
#[inline(always)]
fn causal_softmax_rows_kernel(a: &mut [f32], t: usize, scale: f32) {
    for i in 0..t {
        let row = &mut a[i * t..][..t];
        let (live, rest) = row.split_at_mut(causal_width(i, t));
        for (j, x) in live.iter_mut().enumerate() {
            *x = if j <= i {
                *x * scale
            } else {
                f32::NEG_INFINITY
            };
        }
        let max = math::max(live);
        for (j, x) in live.iter_mut().enumerate() {
            *x = if j <= i { math::exp(*x - max) } else { 0.0 };
        }
        let inv = 1.0 / math::sum(live);
        for x in live.iter_mut() {
            *x *= inv;
        }
        rest.fill(0.0);
    }
}

math::simd_kernel!(causal_softmax_backward_rows, causal_softmax_backward_rows_on, causal_softmax_backward_rows_kernel, (da: &mut [f32], a: &[f32], t: usize, scale: f32));

/// Softmax's backward on a causal (T, T) block, then the 1/sqrt(hs) scale: `da` holds the
/// gradient of the probabilities `a` and becomes that of the scores. Lane chunks as in
/// [`causal_softmax_rows_kernel`]; `a` is zero past column `i`, so the dot product is unchanged.
#[inline(always)]
fn causal_softmax_backward_rows_kernel(da: &mut [f32], a: &[f32], t: usize, scale: f32) {
    for i in 0..t {
        let (ar, dr) = (&a[i * t..][..t], &mut da[i * t..][..t]);
        let width = causal_width(i, t);
        let dot = math::dot(&ar[..width], &dr[..width]);
        for (j, (d, &p)) in dr[..width].iter_mut().zip(&ar[..width]).enumerate() {
            *d = if j <= i { p * (*d - dot) * scale } else { 0.0 };
        }
        dr[width..].fill(0.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::isa::Isa;

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|f| f.to_bits()).collect()
    }

    /// The lane-chunked causal softmax gives the bits of a plain softmax over each row's live part,
    /// on every ISA path, for widths that are and are not whole lane chunks; so does its backward
    /// against the row-by-row formula.
    #[test]
    fn causal_softmax_matches_the_live_part_alone_on_every_path() {
        let mut rng = crate::rng::Rng::new(11);
        for t in [64, 37, 5] {
            let x: Vec<f32> = (0..t * t).map(|_| (rng.normal() * 3.0) as f32).collect();
            let g: Vec<f32> = (0..t * t).map(|_| rng.normal() as f32).collect();
            let scale = 0.17;
            let mut want = x.clone();
            for i in 0..t {
                let row = &mut want[i * t..][..t];
                row[..=i].iter_mut().for_each(|v| *v *= scale);
                crate::ops::softmax_in_place(&mut row[..=i]);
                row[i + 1..].fill(0.0);
            }
            let mut dwant = g.clone();
            for i in 0..t {
                let (p, d) = (&want[i * t..][..t], &mut dwant[i * t..][..t]);
                let dot = math::dot(&p[..=i], &d[..=i]);
                for j in 0..t {
                    d[j] = if j <= i {
                        p[j] * (d[j] - dot) * scale
                    } else {
                        0.0
                    };
                }
            }
            for isa in Isa::available() {
                let mut a = x.clone();
                causal_softmax_rows_on(isa, &mut a, t, scale);
                assert_eq!(bits(&a), bits(&want), "{isa:?} causal softmax, T={t}");
                let mut d = g.clone();
                causal_softmax_backward_rows_on(isa, &mut d, &a, t, scale);
                assert_eq!(
                    bits(&d),
                    bits(&dwant),
                    "{isa:?} causal softmax backward, T={t}"
                );
            }
        }
    }
}
