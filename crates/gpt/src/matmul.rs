//! Matrix multiplication, the engine's hot path, on the `gemm` crate.
//!
//! Why `gemm`: measured at the engine's real shapes on this machine (768x128x384 and friends for
//! config S, 16384x384x1536 for config M) it ran 100-115 GFLOPS single-threaded, 5-25% ahead of
//! `matrixmultiply`, with no system library to install (OpenBLAS would need one).
//!
//! Determinism: rows of C are cut into blocks whose size depends only on the matrix shape
//! ([`row_block`]), never on the number of threads, and every block runs the single-threaded kernel. Each output element is
//! therefore computed by the same instructions in the same order whatever rayon's pool size, which is
//! what makes training bit-identical across 1 and 2 threads.

use rayon::prelude::*;

/// Rows of C per task: about an eighth of the rows (enough tasks to balance two to eight threads),
/// a multiple of 16 (gemm's micro-kernel height), and between 64 and 256 rows (measured: 64-row calls
/// run at ~88 GFLOPS, 256-row calls at ~103, on one core of the dev machine).
fn row_block(m: usize) -> usize {
    m.div_ceil(8).next_multiple_of(16).clamp(64, 256)
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
/// Parallel over fixed row blocks of `c`.
pub fn matmul(c: &mut [f32], a: MatRef, b: MatRef, accumulate: bool) {
    let (m, n) = (a.rows, b.cols);
    assert_eq!(a.cols, b.rows, "matmul inner dimensions differ");
    assert!(c.len() >= m * n, "matmul output too small");
    a.check();
    b.check();
    let rb = row_block(m);
    c[..m * n]
        .par_chunks_mut(rb * n)
        .enumerate()
        .for_each(|(block, c_rows)| {
            let rows = c_rows.len() / n;
            let a_rows = a.rows_from(block * rb, rows);
            // SAFETY: views were bounds-checked above; c_rows is exactly rows x n.
            unsafe {
                gemm_raw(
                    rows,
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
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c,
            csc as isize,
            rsc as isize,
            accumulate,
            a.data.as_ptr(),
            a.cs as isize,
            a.rs as isize,
            b.data.as_ptr(),
            b.cs as isize,
            b.rs as isize,
            if accumulate { 1.0 } else { 0.0 },
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        )
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
