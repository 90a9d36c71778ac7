//! Matrix multiplication, the engine's hot path, on the `gemm` crate.
//!
//! Why `gemm`: measured at the engine's real shapes on this machine (768x128x384 and friends for
//! config S, 16384x384x1536 for config M) it ran 100-115 GFLOPS single-threaded, 5-25% ahead of
//! `matrixmultiply`, with no system library to install (OpenBLAS would need one).
//!
//! Determinism: every `gemm` call here has an inner dimension of at most [`K_CHUNK`] (longer
//! products are cut into chunks at fixed offsets, added in order), so gemm never blocks `k`
//! itself and each output element is one FMA chain per chunk, in `k` order, whatever the call's
//! shape. [`matmul`] cuts the rows of C into one block per thread (one gemm call each: on the
//! README's Intel Xeon, config S's products ran at 110-150 GFLOPS as 8 calls of 96 rows, and at
//! 155-220 as one call of 768), and
//! keeps every block large enough that gemm's special kernels for tiny matrices (which sum in
//! another order) never run on a block unless they would on the whole matrix. So the bits do not
//! depend on the number of threads, which is what makes training bit-identical across 1 and 2.

use rayon::prelude::*;

/// The longest inner dimension one gemm call gets: gemm's own `k` blocking is `k` itself up to 512
/// on every cache size, so chunks of 512 fix the summation order.
const K_CHUNK: usize = 512;

/// The row blocks of an `m x n` product on `threads` threads: at most one per thread, each of at
/// least 16 rows and more than 256 elements (below that gemm switches kernels), spread evenly.
fn row_blocks(m: usize, n: usize, threads: usize) -> Vec<std::ops::Range<usize>> {
    let min_rows = 16.max(257usize.div_ceil(n.max(1)));
    let blocks = threads.min(m / min_rows).max(1);
    (0..blocks)
        .map(|i| i * m / blocks..(i + 1) * m / blocks)
        .collect()
}

/// A read-only strided matrix view: element (i, j) is `data[i * rs + j * cs]`.
#[derive(Clone, Copy)]
pub struct MatRef<'a> {
    pub data: &'a [f32],
    pub rows: usize,
    pub cols: usize,
    pub rs: usize,
    pub cs: usize,
}

impl<'a> MatRef<'a> {
    /// A row-major `rows x cols` matrix stored contiguously.
    pub fn new(data: &'a [f32], rows: usize, cols: usize) -> Self {
        assert!(data.len() >= rows * cols, "matrix view out of bounds");
        MatRef {
            data,
            rows,
            cols,
            rs: cols,
            cs: 1,
        }
    }

    /// The transpose, as a view (no copy).
    pub fn t(self) -> Self {
        MatRef {
            data: self.data,
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
        }
    }

    fn rows_from(self, start: usize, count: usize) -> Self {
        let offset = start * self.rs;
        MatRef {
            data: &self.data[offset..],
            rows: count,
            ..self
        }
    }

    fn check(&self) {
        if self.rows > 0 && self.cols > 0 {
            let last = (self.rows - 1) * self.rs + (self.cols - 1) * self.cs;
            assert!(last < self.data.len(), "matrix view out of bounds");
        }
    }
}

/// `c (m x n, row-major, contiguous) = a (m x k) * b (k x n)`, or `+=` when `accumulate`.
/// Parallel over row blocks of `c`, one per thread ([`row_blocks`]).
pub fn matmul(c: &mut [f32], a: MatRef, b: MatRef, accumulate: bool) {
    let (m, n) = (a.rows, b.cols);
    assert_eq!(a.cols, b.rows, "matmul inner dimensions differ");
    assert!(c.len() >= m * n, "matmul output too small");
    a.check();
    b.check();
    let mut rest = &mut c[..m * n];
    let mut tasks = Vec::new();
    for rows in row_blocks(m, n, rayon::current_num_threads()) {
        let (block, tail) = std::mem::take(&mut rest).split_at_mut(rows.len() * n);
        tasks.push((rows, block));
        rest = tail;
    }
    tasks.into_par_iter().for_each(|(rows, c_rows)| {
        let a_rows = a.rows_from(rows.start, rows.len());
        // SAFETY: views were bounds-checked above; c_rows is exactly rows x n.
        unsafe {
            gemm_raw(
                rows.len(),
                n,
                a.cols,
                c_rows.as_mut_ptr(),
                n,
                1,
                accumulate,
                a_rows,
                b,
            );
        }
    });
}

/// Single-threaded multiply into a strided destination (used inside per-head attention tasks).
///
/// # Safety
/// `c` must be valid for writes at `i * rsc + j * csc` for all `i < a.rows, j < b.cols`, and no other
/// thread may touch those elements during the call.
pub unsafe fn matmul_strided(
    c: *mut f32,
    rsc: usize,
    csc: usize,
    a: MatRef,
    b: MatRef,
    accumulate: bool,
) {
    assert_eq!(a.cols, b.rows, "matmul inner dimensions differ");
    a.check();
    b.check();
    unsafe { gemm_raw(a.rows, b.cols, a.cols, c, rsc, csc, accumulate, a, b) }
}

#[allow(clippy::too_many_arguments)]
unsafe fn gemm_raw(
    m: usize,
    n: usize,
    k: usize,
    c: *mut f32,
    rsc: usize,
    csc: usize,
    accumulate: bool,
    a: MatRef,
    b: MatRef,
) {
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for i in 0..m {
                for j in 0..n {
                    unsafe { *c.add(i * rsc + j * csc) = 0.0 };
                }
            }
        }
        return;
    }
    // Chunks of the inner dimension, each added onto what the ones before it left in c.
    for k0 in (0..k).step_by(K_CHUNK) {
        let kc = K_CHUNK.min(k - k0);
        let add = accumulate || k0 > 0;
        unsafe {
            gemm::gemm(
                m,
                n,
                kc,
                c,
                csc as isize,
                rsc as isize,
                add,
                a.data.as_ptr().add(k0 * a.cs),
                a.cs as isize,
                a.rs as isize,
                b.data.as_ptr().add(k0 * b.rs),
                b.cs as isize,
                b.rs as isize,
                if add { 1.0 } else { 0.0 },
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::None,
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(a: MatRef, b: MatRef) -> Vec<f32> {
        let mut c = vec![0.0; a.rows * b.cols];
        for i in 0..a.rows {
            for j in 0..b.cols {
                let mut s = 0.0f64;
                for p in 0..a.cols {
                    s += (a.data[i * a.rs + p * a.cs] * b.data[p * b.rs + j * b.cs]) as f64;
                }
                c[i * b.cols + j] = s as f32;
            }
        }
        c
    }

    #[test]
    fn matches_naive_with_transposes_and_accumulation() {
        let (m, k, n) = (130, 37, 21);
        let a: Vec<f32> = (0..m * k)
            .map(|i| ((i * 7 % 13) as f32 - 6.0) * 0.1)
            .collect();
        let bt: Vec<f32> = (0..n * k)
            .map(|i| ((i * 5 % 11) as f32 - 5.0) * 0.1)
            .collect();
        let av = MatRef::new(&a, m, k);
        let bv = MatRef::new(&bt, n, k).t();
        let expect = naive(av, bv);
        let mut c = vec![1.0; m * n];
        matmul(&mut c, av, bv, false);
        for (x, y) in c.iter().zip(&expect) {
            assert!((x - y).abs() < 1e-4, "{x} vs {y}");
        }
        matmul(&mut c, av, bv, true);
        for (x, y) in c.iter().zip(&expect) {
            assert!((x - 2.0 * y).abs() < 2e-4);
        }
    }

    /// The row blocks follow the thread count, the bits must not: shapes with k past one chunk,
    /// odd sizes, few columns (where a block could fall below gemm's small-matrix threshold) and
    /// accumulation, on pools of 1 to 7 threads.
    #[test]
    fn products_are_bit_identical_on_any_number_of_threads() {
        let mut rng = crate::rng::Rng::new(5);
        for (m, k, n) in [
            (768, 128, 384),
            (300, 1100, 70),
            (97, 600, 3),
            (40, 513, 9),
            (5, 7, 2),
        ] {
            let a: Vec<f32> = (0..m * k).map(|_| rng.normal() as f32).collect();
            let b: Vec<f32> = (0..n * k).map(|_| rng.normal() as f32).collect();
            let c0: Vec<f32> = (0..m * n).map(|_| rng.normal() as f32).collect();
            let run = |threads: usize| {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap();
                let mut c = c0.clone();
                pool.install(|| {
                    matmul(
                        &mut c,
                        MatRef::new(&a, m, k),
                        MatRef::new(&b, n, k).t(),
                        true,
                    );
                    let mut d = vec![0.0; m * n];
                    matmul(&mut d, MatRef::new(&a, m, k), MatRef::new(&b, k, n), false);
                    c.extend(d);
                });
                c.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
            };
            let one = run(1);
            for threads in 2..=7 {
                assert!(
                    run(threads) == one,
                    "{m}x{k}x{n} differs on {threads} threads"
                );
            }
            assert!(
                row_blocks(m, n, 7)
                    .iter()
                    .all(|r| r.len() * n > 256 || r.len() == m)
            );
        }
    }

    /// The active ISA path's GEMMs (gemm's AVX-512 or AVX2 micro-kernels) against an f64 reference,
    /// at shapes of the engine's layers (k up to 4 * n_embd, past gemm's k blocking).
    #[test]
    fn the_active_isa_paths_gemm_is_within_1e_5_of_an_f64_reference() {
        let mut rng = crate::rng::Rng::new(9);
        for (m, k, n) in [(768, 128, 384), (64, 512, 128), (100, 1536, 70)] {
            let a: Vec<f32> = (0..m * k).map(|_| rng.normal() as f32).collect();
            let b: Vec<f32> = (0..n * k).map(|_| rng.normal() as f32).collect();
            let (av, bv) = (MatRef::new(&a, m, k), MatRef::new(&b, n, k).t());
            let expect = naive(av, bv);
            let mut c = vec![0.0; m * n];
            matmul(&mut c, av, bv, false);
            let scale = expect.iter().map(|x| x.abs()).fold(0.0, f32::max);
            let err = c
                .iter()
                .zip(&expect)
                .map(|(x, y)| (x - y).abs())
                .fold(0.0, f32::max)
                / scale;
            let isa = crate::isa::Isa::active();
            assert!(err < 1e-5, "{isa:?} ({m}x{k}x{n}): relative error {err:e}");
        }
    }
}
