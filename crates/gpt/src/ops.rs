//! The layers, each a `*_forward` / `*_backward` pair side by side (llm.c style). Shapes: `n` rows
//! (batch * time) of `c` channels, row-major. Backward functions *accumulate* into parameter
//! gradients; activation gradients are overwritten unless the name says `add`.
//!
//! Every reduction across rows (bias and LayerNorm gradients) is done in fixed row blocks whose partial
//! sums are added in block order, so results never depend on the number of threads.

use super::config::Gelu;
use super::math;
use super::matmul::{MatRef, matmul, matmul_strided};
use super::rng::dropout_keep;
use rayon::prelude::*;

const LN_EPS: f32 = 1e-5;
/// Rows per task in row-parallel loops and row reductions (fixed: see the module doc).
const ROWS: usize = 64;

// ---------------------------------------------------------------------------------------------
// Embedding: x[b, t] = wte[token] + wpe[t]

pub fn encoder_forward(
    out: &mut [f32],
    tokens: &[u32],
    wte: &[f32],
    wpe: &[f32],
    t_len: usize,
    c: usize,
) {
    out.par_chunks_mut(c)
        .zip(tokens.par_iter())
        .enumerate()
        .for_each(|(i, (row, &tok))| {
            let t = i % t_len;
            let te = &wte[tok as usize * c..][..c];
            let pe = &wpe[t * c..][..c];
            for j in 0..c {
                row[j] = te[j] + pe[j];
            }
        });
}

/// Scatter-adds into the embedding tables; serial because tokens repeat (keeps it deterministic).
pub fn encoder_backward(
    dwte: &mut [f32],
    dwpe: &mut [f32],
    dout: &[f32],
    tokens: &[u32],
    t_len: usize,
    c: usize,
) {
    for (i, (row, &tok)) in dout.chunks(c).zip(tokens).enumerate() {
        let t = i % t_len;
        let te = &mut dwte[tok as usize * c..][..c];
        for j in 0..c {
            te[j] += row[j];
        }
        let pe = &mut dwpe[t * c..][..c];
        for j in 0..c {
            pe[j] += row[j];
        }
    }
}

// ---------------------------------------------------------------------------------------------
// LayerNorm

pub fn layernorm_forward(
    out: &mut [f32],
    mean: &mut [f32],
    rstd: &mut [f32],
    inp: &[f32],
    w: &[f32],
    b: Option<&[f32]>,
    c: usize,
) {
    out.par_chunks_mut(c)
        .zip(inp.par_chunks(c))
        .zip(mean.par_iter_mut().zip(rstd.par_iter_mut()))
        .for_each(|((o, x), (m, r))| (*m, *r) = layernorm_row(o, x, w, b));
}

math::simd_kernel!(layernorm_row, layernorm_row_on, layernorm_row_kernel, (o: &mut [f32], x: &[f32], w: &[f32], b: Option<&[f32]>) -> (f32, f32));

/// One row's LayerNorm; returns its mean and 1/std.
#[inline(always)]
fn layernorm_row_kernel(o: &mut [f32], x: &[f32], w: &[f32], b: Option<&[f32]>) -> (f32, f32) {
    let c = x.len();
    let mu = math::sum(x) / c as f32;
    let var = math::sum3(x, x, x, |v, _, _| (v - mu) * (v - mu)) / c as f32;
    let rs = 1.0 / (var + LN_EPS).sqrt();
    match b {
        Some(b) => {
            for j in 0..c {
                o[j] = (x[j] - mu) * rs * w[j] + b[j];
            }
        }
        None => {
            for j in 0..c {
                o[j] = (x[j] - mu) * rs * w[j] + 0.0;
            }
        }
    }
    (mu, rs)
}

/// `dinp += ...`, `dw += ...`, `db += ...`.
#[allow(clippy::too_many_arguments)]
pub fn layernorm_backward_add(
    dinp: &mut [f32],
    dw: &mut [f32],
    db: Option<&mut [f32]>,
    dout: &[f32],
    inp: &[f32],
    mean: &[f32],
    rstd: &[f32],
    w: &[f32],
    c: usize,
) {
    dinp.par_chunks_mut(c)
        .zip(dout.par_chunks(c))
        .zip(inp.par_chunks(c))
        .enumerate()
        .for_each(|(i, ((di, d), x))| layernorm_backward_row(di, d, x, w, mean[i], rstd[i]));
    let with_bias = db.is_some();
    let width = if with_bias { 2 * c } else { c };
    let sums = reduce_rows(dout.len() / c, width, |i, acc| {
        let (mu, rs) = (mean[i], rstd[i]);
        let (d, x) = (&dout[i * c..][..c], &inp[i * c..][..c]);
        for j in 0..c {
            acc[j] += (x[j] - mu) * rs * d[j];
        }
        if with_bias {
            for j in 0..c {
                acc[c + j] += d[j];
            }
        }
    });
    add_into(dw, &sums[..c]);
    if let Some(db) = db {
        add_into(db, &sums[c..]);
    }
}

// ---------------------------------------------------------------------------------------------
// Linear: out = inp @ w^T + b, with w stored (out_features, in_features) like torch.nn.Linear.

pub fn linear_forward(
    out: &mut [f32],
    inp: &[f32],
    w: &[f32],
    b: Option<&[f32]>,
    n: usize,
    ic: usize,
    oc: usize,
) {
    let out = &mut out[..n * oc];
    if let Some(b) = b {
        out.par_chunks_mut(oc)
            .for_each(|row| row.copy_from_slice(b));
    }
    matmul(
        out,
        MatRef::new(inp, n, ic),
        MatRef::new(w, oc, ic).t(),
        b.is_some(),
    );
}

/// `dinp = dout @ w` (overwritten), `dw += dout^T @ inp`, `db += column sums of dout`.
#[allow(clippy::too_many_arguments)]
pub fn linear_backward(
    dinp: &mut [f32],
    dw: &mut [f32],
    db: Option<&mut [f32]>,
    dout: &[f32],
    inp: &[f32],
    w: &[f32],
    n: usize,
    ic: usize,
    oc: usize,
) {
    let dout_m = MatRef::new(dout, n, oc);
    matmul(&mut dinp[..n * ic], dout_m, MatRef::new(w, oc, ic), false);
    matmul(
        &mut dw[..oc * ic],
        dout_m.t(),
        MatRef::new(inp, n, ic),
        true,
    );
    if let Some(db) = db {
        let sums = reduce_rows(n, oc, |i, acc| add_into(acc, &dout[i * oc..][..oc]));
        add_into(db, &sums);
    }
}

// ---------------------------------------------------------------------------------------------
// GELU

const SQRT_2_OVER_PI: f32 = 0.797_884_6;

pub fn gelu_forward(out: &mut [f32], inp: &[f32], form: Gelu) {
    out.par_chunks_mut(4096)
        .zip(inp.par_chunks(4096))
        .for_each(|(o, x)| match form {
            Gelu::Tanh => gelu_tanh_forward(o, x),
            Gelu::Erf => gelu_erf_forward(o, x),
        });
}

pub fn gelu_backward(dinp: &mut [f32], inp: &[f32], dout: &[f32], form: Gelu) {
    dinp.par_chunks_mut(4096)
        .zip(inp.par_chunks(4096))
        .zip(dout.par_chunks(4096))
        .for_each(|((di, x), d)| match form {
            Gelu::Tanh => gelu_tanh_backward(di, x, d),
            Gelu::Erf => gelu_erf_backward(di, x, d),
        });
}

math::simd_kernel!(gelu_tanh_forward, gelu_tanh_forward_on, gelu_tanh_forward_kernel, (o: &mut [f32], x: &[f32]));
math::simd_kernel!(gelu_erf_forward, gelu_erf_forward_on, gelu_erf_forward_kernel, (o: &mut [f32], x: &[f32]));
math::simd_kernel!(gelu_tanh_backward, gelu_tanh_backward_on, gelu_tanh_backward_kernel, (di: &mut [f32], x: &[f32], d: &[f32]));
math::simd_kernel!(gelu_erf_backward, gelu_erf_backward_on, gelu_erf_backward_kernel, (di: &mut [f32], x: &[f32], d: &[f32]));

#[inline(always)]
fn gelu_tanh_forward_kernel(o: &mut [f32], x: &[f32]) {
    for (o, &x) in o.iter_mut().zip(x) {
        let cube = 0.044715 * x * x * x;
        *o = 0.5 * x * (1.0 + math::tanh(SQRT_2_OVER_PI * (x + cube)));
    }
}

#[inline(always)]
fn gelu_erf_forward_kernel(o: &mut [f32], x: &[f32]) {
    for (o, &x) in o.iter_mut().zip(x) {
        *o = 0.5 * x * (1.0 + math::erf(x * std::f32::consts::FRAC_1_SQRT_2));
    }
}

#[inline(always)]
fn gelu_tanh_backward_kernel(di: &mut [f32], x: &[f32], d: &[f32]) {
    for ((di, &x), &d) in di.iter_mut().zip(x).zip(d) {
        let cube = 0.044715 * x * x * x;
        let tanh_out = math::tanh(SQRT_2_OVER_PI * (x + cube));
        let sech2 = 1.0 - tanh_out * tanh_out;
        let local = 0.5 * (1.0 + tanh_out)
            + x * 0.5 * sech2 * SQRT_2_OVER_PI * (1.0 + 3.0 * 0.044715 * x * x);
        *di = local * d;
    }
}

#[inline(always)]
fn gelu_erf_backward_kernel(di: &mut [f32], x: &[f32], d: &[f32]) {
    const INV_SQRT_2PI: f32 = 0.398_942_3;
    for ((di, &x), &d) in di.iter_mut().zip(x).zip(d) {
        let cdf = 0.5 * (1.0 + math::erf(x * std::f32::consts::FRAC_1_SQRT_2));
        let pdf = INV_SQRT_2PI * math::exp(-0.5 * x * x);
        *di = (cdf + x * pdf) * d;
    }
}

// ---------------------------------------------------------------------------------------------
// Dropout, with counter-based masks (see rng::dropout_keep): `out = inp * mask / (1 - p)`.

/// Identifies one dropout application: a seed for the step and a site number for the place.
#[derive(Clone, Copy, Debug)]
pub struct Dropout {
    pub p: f32,
    pub seed: u64,
    pub site: u64,
}

impl Dropout {
    #[inline]
    pub fn scale(&self, index: usize) -> f32 {
        if dropout_keep(self.seed, self.site, index, self.p) {
            1.0 / (1.0 - self.p)
        } else {
            0.0
        }
    }

    /// `x[i] *= mask(i) / (1 - p)`; the backward of dropout is the same operation on the gradient.
    pub fn apply_in_place(&self, x: &mut [f32]) {
        x.par_chunks_mut(4096).enumerate().for_each(|(chunk, xs)| {
            for (k, v) in xs.iter_mut().enumerate() {
                *v *= self.scale(chunk * 4096 + k);
            }
        });
    }
}

math::simd_kernel!(layernorm_backward_row, layernorm_backward_row_on, layernorm_backward_row_kernel, (di: &mut [f32], d: &[f32], x: &[f32], w: &[f32], mu: f32, rs: f32));

/// One row of LayerNorm's input gradient, added into `di`.
#[inline(always)]
fn layernorm_backward_row_kernel(
    di: &mut [f32],
    d: &[f32],
    x: &[f32],
    w: &[f32],
    mu: f32,
    rs: f32,
) {
    let c = x.len();
    let dnorm_mean = math::dot(w, d) / c as f32;
    let dnorm_norm_mean = math::sum3(w, d, x, |w, d, x| w * d * ((x - mu) * rs)) / c as f32;
    for j in 0..c {
        let norm = (x[j] - mu) * rs;
        let dnorm = w[j] * d[j];
        di[j] += (dnorm - dnorm_mean - norm * dnorm_norm_mean) * rs;
    }
}

/// `out = a + b`.
pub fn residual_forward(out: &mut [f32], a: &[f32], b: &[f32]) {
    out.par_chunks_mut(4096)
        .zip(a.par_chunks(4096))
        .zip(b.par_chunks(4096))
        .for_each(|((o, a), b)| {
            for ((o, a), b) in o.iter_mut().zip(a).zip(b) {
                *o = a + b;
            }
        });
}

// ---------------------------------------------------------------------------------------------
// Causal self-attention. qkv: (B, T, 3C) holding q, k, v; att: (B, H, T, T) softmax probabilities;
// att_drop: the same after dropout (only when training with dropout); out: (B, T, C).

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
                    for (k, (o, &x)) in ad.iter_mut().zip(a.iter()).enumerate() {
                        *o = x * d.scale(bh * t * t + k);
                    }
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
                    for (k, x) in da.iter_mut().enumerate() {
                        *x *= d.scale(bh * t * t + k);
                    }
                }
                causal_softmax_backward_rows(da, a, t, scale);
                let dpre = MatRef::new(da, t, t);
                matmul_strided(dq, 3 * c, 1, dpre, k, false);
                matmul_strided(dk, 3 * c, 1, dpre.t(), q, false);
            }
        });
}

// ---------------------------------------------------------------------------------------------
// Softmax + cross-entropy, fused.

/// Turns logits (n, v) into probabilities in place; returns the mean loss over rows (sum in f64, in
/// row order). `losses` receives each row's loss.
pub fn crossentropy_forward(
    probs: &mut [f32],
    losses: &mut [f32],
    targets: &[u32],
    v: usize,
) -> f32 {
    probs
        .par_chunks_mut(v)
        .zip(losses.par_iter_mut())
        .zip(targets.par_iter())
        .for_each(|((p, l), &y)| {
            softmax(p);
            *l = -p[y as usize].max(f32::MIN_POSITIVE).ln();
        });
    (losses.iter().map(|&l| l as f64).sum::<f64>() / losses.len() as f64) as f32
}

// Numerically stable softmax of one row, in place (AVX2 when available).
math::simd_kernel!(softmax, softmax_on, softmax_in_place, (p: &mut [f32]));
math::simd_kernel!(causal_softmax_rows, causal_softmax_rows_on, causal_softmax_rows_kernel, (a: &mut [f32], t: usize, scale: f32));

/// The columns of row `i` of a causal (T, T) block that the lane-wise kernels touch: `0..=i`
/// rounded up to whole [`math::LANES`] chunks (the rest of the row is zero).
fn causal_width(i: usize, t: usize) -> usize {
    (i + 1).next_multiple_of(math::LANES).min(t)
}

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
            *x = if j <= i { *x * scale } else { f32::NEG_INFINITY };
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

/// The exponentials are a loop of their own so they vectorise; the max and sum are lane-wise
/// ([`math::LANES`]).
#[inline(always)]
pub fn softmax_in_place(p: &mut [f32]) {
    let max = math::max(p);
    for x in p.iter_mut() {
        *x = math::exp(*x - max);
    }
    let sum = math::sum(p);
    let inv = 1.0 / sum;
    for x in p.iter_mut() {
        *x *= inv;
    }
}

/// Probabilities become dlogits in place: `(p - onehot(y)) * dloss`.
pub fn crossentropy_backward(probs: &mut [f32], targets: &[u32], v: usize, dloss: f32) {
    probs
        .par_chunks_mut(v)
        .zip(targets.par_iter())
        .for_each(|(p, &y)| {
            p[y as usize] -= 1.0;
            for x in p.iter_mut() {
                *x *= dloss;
            }
        });
}

// ---------------------------------------------------------------------------------------------
// Helpers

pub fn add_into(acc: &mut [f32], x: &[f32]) {
    for (a, b) in acc.iter_mut().zip(x) {
        *a += b;
    }
}

/// Sums `f(row, acc)` over `n` rows into a `width`-wide vector: blocks of [`ROWS`] rows in parallel,
/// partial sums added in block order (deterministic for any thread count).
pub fn reduce_rows(n: usize, width: usize, f: impl Fn(usize, &mut [f32]) + Sync) -> Vec<f32> {
    let blocks = n.div_ceil(ROWS);
    let mut partial = vec![0.0f32; blocks * width];
    partial
        .par_chunks_mut(width)
        .enumerate()
        .for_each(|(blk, acc)| {
            for i in blk * ROWS..((blk + 1) * ROWS).min(n) {
                f(i, acc);
            }
        });
    let mut total = vec![0.0f32; width];
    for p in partial.chunks(width) {
        add_into(&mut total, p);
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every ISA path present (`Isa::available`) must give the portable kernels' bits (so a
    /// checkpoint written on one CPU resumes bit-identically on another, GEMMs aside).
    #[test]
    fn every_isa_path_of_each_kernel_matches_the_portable_one_bit_for_bit() {
        use crate::isa::Isa;
        let mut rng = crate::rng::Rng::new(3);
        let x: Vec<f32> = (0..4099).map(|_| (rng.normal() * 3.0) as f32).collect();
        let d: Vec<f32> = (0..4099).map(|_| rng.normal() as f32).collect();
        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        let paths = Isa::available();
        assert!(paths.contains(&Isa::active()));
        for isa in paths {
            let (mut a, mut b) = (vec![0.0; x.len()], vec![0.0; x.len()]);
            gelu_erf_backward_on(isa, &mut a, &x, &d);
            gelu_erf_backward_kernel(&mut b, &x, &d);
            assert_eq!(bits(&a), bits(&b), "{isa:?} gelu_erf_backward");
            gelu_tanh_backward_on(isa, &mut a, &x, &d);
            gelu_tanh_backward_kernel(&mut b, &x, &d);
            assert_eq!(bits(&a), bits(&b), "{isa:?} gelu_tanh_backward");
            gelu_erf_forward_on(isa, &mut a, &x);
            gelu_erf_forward_kernel(&mut b, &x);
            assert_eq!(bits(&a), bits(&b), "{isa:?} gelu_erf_forward");
            gelu_tanh_forward_on(isa, &mut a, &x);
            gelu_tanh_forward_kernel(&mut b, &x);
            assert_eq!(bits(&a), bits(&b), "{isa:?} gelu_tanh_forward");
            let (mut s1, mut s2) = (x[..64 * 64].to_vec(), x[..64 * 64].to_vec());
            causal_softmax_rows_on(isa, &mut s1, 64, 0.17);
            causal_softmax_rows_kernel(&mut s2, 64, 0.17);
            assert_eq!(bits(&s1), bits(&s2), "{isa:?} causal_softmax_rows");
            let (mut p1, mut p2) = (x[..65].to_vec(), x[..65].to_vec());
            softmax_on(isa, &mut p1);
            softmax_in_place(&mut p2);
            assert_eq!(bits(&p1), bits(&p2), "{isa:?} softmax");
            let (w, bias) = (&d[..128], &x[128..256]);
            let (mut o1, mut o2) = (vec![0.0; 128], vec![0.0; 128]);
            for b in [Some(bias), None] {
                let r1 = layernorm_row_on(isa, &mut o1, &x[..128], w, b);
                let r2 = layernorm_row_kernel(&mut o2, &x[..128], w, b);
                assert_eq!(
                    (bits(&o1), r1.0.to_bits()),
                    (bits(&o2), r2.0.to_bits()),
                    "{isa:?} layernorm"
                );
            }
            layernorm_backward_row_on(isa, &mut o1, &d[..128], &x[..128], w, 0.1, 1.3);
            layernorm_backward_row_kernel(&mut o2, &d[..128], &x[..128], w, 0.1, 1.3);
            assert_eq!(bits(&o1), bits(&o2), "{isa:?} layernorm backward");
            let s = [0.999, 0.9, 0.95, 0.3, 1e-3, 1e-8];
            let (mut p1, mut m1, mut v1) = (
                x.clone(),
                d.clone(),
                x.iter().map(|v| v * v).collect::<Vec<_>>(),
            );
            let (mut p2, mut m2, mut v2) = (p1.clone(), m1.clone(), v1.clone());
            crate::optim::adamw_chunk_on(isa, &mut p1, &d, &mut m1, &mut v1, s);
            crate::optim::adamw_chunk_kernel(&mut p2, &d, &mut m2, &mut v2, s);
            assert_eq!(
                (bits(&p1), bits(&m1), bits(&v1)),
                (bits(&p2), bits(&m2), bits(&v2)),
                "{isa:?} AdamW"
            );
        }
    }
}
