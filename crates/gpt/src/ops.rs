//! The layers, each a `*_forward` / `*_backward` pair side by side (llm.c style). Shapes: `n` rows
//! (batch * time) of `c` channels, row-major. Backward functions *accumulate* into parameter
//! gradients; activation gradients are overwritten unless the name says `add`.
//!
//! Every reduction across rows (bias and LayerNorm gradients) is done in fixed row blocks whose partial
//! sums are added in block order, so results never depend on the number of threads.

use super::config::Gelu;
use super::math;
use super::matmul::{MatRef, matmul};
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
        .with_min_len(ROWS)
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
    out.par_chunks_mut(ROWS * c)
        .zip(inp.par_chunks(ROWS * c))
        .zip(mean.par_chunks_mut(ROWS).zip(rstd.par_chunks_mut(ROWS)))
        .for_each(|((o, x), (m, r))| layernorm_rows(o, m, r, x, w, b));
}

math::simd_kernel!(layernorm_rows, layernorm_rows_on, layernorm_rows_kernel, (out: &mut [f32], mean: &mut [f32], rstd: &mut [f32], inp: &[f32], w: &[f32], b: Option<&[f32]>));

/// A block of rows' LayerNorm (one dispatch per block, not per row).
#[inline(always)]
fn layernorm_rows_kernel(
    out: &mut [f32],
    mean: &mut [f32],
    rstd: &mut [f32],
    inp: &[f32],
    w: &[f32],
    b: Option<&[f32]>,
) {
    let c = w.len();
    let rows = out.chunks_exact_mut(c).zip(inp.chunks_exact(c));
    for ((o, x), (m, r)) in rows.zip(mean.iter_mut().zip(rstd.iter_mut())) {
        (*m, *r) = layernorm_row_kernel(o, x, w, b);
    }
}

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
    dinp.par_chunks_mut(ROWS * c)
        .zip(dout.par_chunks(ROWS * c))
        .zip(inp.par_chunks(ROWS * c))
        .zip(mean.par_chunks(ROWS).zip(rstd.par_chunks(ROWS)))
        .for_each(|(((di, d), x), (m, r))| layernorm_backward_rows(di, d, x, w, m, r));
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
    #[inline(always)]
    pub fn scale(&self, index: usize) -> f32 {
        if dropout_keep(self.seed, self.site, index, self.p) {
            1.0 / (1.0 - self.p)
        } else {
            0.0
        }
    }

    /// `x[i] *= mask(i) / (1 - p)`; the backward of dropout is the same operation on the gradient.
    pub fn apply_in_place(&self, x: &mut [f32]) {
        x.par_chunks_mut(4096)
            .enumerate()
            .for_each(|(chunk, xs)| dropout_in_place(xs, *self, chunk * 4096));
    }
}

math::simd_kernel!(dropout_in_place, dropout_in_place_on, dropout_in_place_kernel, (x: &mut [f32], d: Dropout, first: usize));
math::simd_kernel!(dropout_into, dropout_into_on, dropout_into_kernel, (out: &mut [f32], x: &[f32], d: Dropout, first: usize));

/// `x[k] *= mask(first + k) / (1 - p)`: the masks' integer hashing vectorises too.
#[inline(always)]
fn dropout_in_place_kernel(x: &mut [f32], d: Dropout, first: usize) {
    for (k, v) in x.iter_mut().enumerate() {
        *v *= d.scale(first + k);
    }
}

/// `out[k] = x[k] * mask(first + k) / (1 - p)`.
#[inline(always)]
fn dropout_into_kernel(out: &mut [f32], x: &[f32], d: Dropout, first: usize) {
    for (k, (o, &v)) in out.iter_mut().zip(x).enumerate() {
        *o = v * d.scale(first + k);
    }
}

math::simd_kernel!(layernorm_backward_rows, layernorm_backward_rows_on, layernorm_backward_rows_kernel, (di: &mut [f32], d: &[f32], x: &[f32], w: &[f32], mean: &[f32], rstd: &[f32]));

/// A block of rows of LayerNorm's input gradient, added into `di`.
#[inline(always)]
fn layernorm_backward_rows_kernel(
    di: &mut [f32],
    d: &[f32],
    x: &[f32],
    w: &[f32],
    mean: &[f32],
    rstd: &[f32],
) {
    let c = w.len();
    let rows = di
        .chunks_exact_mut(c)
        .zip(d.chunks_exact(c))
        .zip(x.chunks_exact(c));
    for (((di, d), x), (&mu, &rs)) in rows.zip(mean.iter().zip(rstd)) {
        layernorm_backward_row_kernel(di, d, x, w, mu, rs);
    }
}

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
        .with_min_len(ROWS)
        .for_each(|((p, l), &y)| {
            softmax(p);
            *l = -p[y as usize].max(f32::MIN_POSITIVE).ln();
        });
    (losses.iter().map(|&l| l as f64).sum::<f64>() / losses.len() as f64) as f32
}

// Numerically stable softmax of one row, in place (AVX2 when available).
math::simd_kernel!(softmax, softmax_on, softmax_in_place, (p: &mut [f32]));

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
        .with_min_len(ROWS)
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
            let (mut p1, mut p2) = (x[..65].to_vec(), x[..65].to_vec());
            softmax_on(isa, &mut p1);
            softmax_in_place(&mut p2);
            assert_eq!(bits(&p1), bits(&p2), "{isa:?} softmax");
            let (w, bias) = (&d[..128], &x[128..256]);
            let (mut o1, mut o2) = (vec![0.0; 3 * 128], vec![0.0; 3 * 128]);
            let (mut m1, mut m2, mut r1, mut r2) = ([0.0; 3], [0.0; 3], [0.0; 3], [0.0; 3]);
            for b in [Some(bias), None] {
                layernorm_rows_on(isa, &mut o1, &mut m1, &mut r1, &x[..3 * 128], w, b);
                layernorm_rows_kernel(&mut o2, &mut m2, &mut r2, &x[..3 * 128], w, b);
                assert_eq!(
                    (bits(&o1), bits(&m1), bits(&r1)),
                    (bits(&o2), bits(&m2), bits(&r2)),
                    "{isa:?} layernorm"
                );
            }
            let (dx, xs) = (&d[..3 * 128], &x[..3 * 128]);
            let (mu, rs) = ([0.1, -0.2, 0.3], [1.3, 0.7, 2.1]);
            layernorm_backward_rows_on(isa, &mut o1, dx, xs, w, &mu, &rs);
            layernorm_backward_rows_kernel(&mut o2, dx, xs, w, &mu, &rs);
            assert_eq!(bits(&o1), bits(&o2), "{isa:?} layernorm backward");
            let drop = Dropout {
                p: 0.3,
                seed: 7,
                site: 2,
            };
            let (mut o1, mut o2) = (x.clone(), x.clone());
            dropout_in_place_on(isa, &mut o1, drop, 5);
            dropout_in_place_kernel(&mut o2, drop, 5);
            assert_eq!(bits(&o1), bits(&o2), "{isa:?} dropout in place");
            let masked: Vec<f32> = x
                .iter()
                .enumerate()
                .map(|(k, v)| v * drop.scale(5 + k))
                .collect();
            assert_eq!(bits(&o1), bits(&masked), "{isa:?} dropout masks");
            dropout_into_on(isa, &mut o1, &x, drop, 5);
            assert_eq!(bits(&o1), bits(&masked), "{isa:?} dropout into");
            assert_eq!(
                crate::optim::square_sum_on(isa, &x).to_bits(),
                math::square_sum_f64(&x).to_bits(),
                "{isa:?} gradient norm squares"
            );
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
