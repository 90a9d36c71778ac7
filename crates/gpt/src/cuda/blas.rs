//! Matrix products on cuBLAS: plain and strided-batched `gemm_ex` at the model's precision, with
//! bf16 copies of the operands for `dtype: bf16`, and the attention's per-head products.

use super::GpuGpt;
use super::buffers::{Buf, grid, launch};
use super::loader::Gpu;
use crate::precision::Precision;
use anyhow::{Context, Result, anyhow};
use cudarc::cublas::{result as blas, sys as blas_sys};
use cudarc::driver::PushKernelArg;

/// How many elements cuBLAS reads for an operand `op(X)` of shape `(rows, cols)` stored
/// column-major with leading dimension `ld`, `batch` times `stride` apart.
pub(super) fn span(
    transposed: bool,
    (rows, cols): (usize, usize),
    ld: usize,
    stride: usize,
    batch: usize,
) -> usize {
    let (stored_rows, stored_cols) = if transposed {
        (cols, rows)
    } else {
        (rows, cols)
    };
    if batch == 0 || stored_rows == 0 || stored_cols == 0 {
        return 0;
    }
    (batch - 1) * stride + (stored_cols - 1) * ld + stored_rows
}

/// cuBLAS's name for "transposed" or not.
pub(super) fn op(transposed: bool) -> blas_sys::cublasOperation_t {
    if transposed {
        blas_sys::cublasOperation_t::CUBLAS_OP_T
    } else {
        blas_sys::cublasOperation_t::CUBLAS_OP_N
    }
}

/// The attention's per-head shape: B * NH matrices of (T, HS), and of (T, T) scores.
pub(super) struct Heads {
    pub(super) b: usize,
    pub(super) nh: usize,
    pub(super) t: usize,
    pub(super) hs: usize,
}

impl GpuGpt {
    /// An operand as cuBLAS will read it: the f32 matrix in place, or with `dtype: bf16` a bf16
    /// copy of its `elems` elements in scratch `slot`.
    pub(super) fn operand(
        &self,
        ptr: u64,
        elems: usize,
        slot: usize,
    ) -> Result<(u64, blas_sys::cudaDataType)> {
        if self.precision != Precision::Bf16 {
            return Ok((ptr, blas_sys::cudaDataType::CUDA_R_32F));
        }
        let mut scratch = self.bf16_operands.borrow_mut();
        if scratch[slot].as_ref().is_none_or(|b| b.slice.len() < elems) {
            scratch[slot] = None;
            scratch[slot] = Some(Buf::zeros(&self.gpu.stream, elems)?);
        }
        let dst = scratch[slot].as_ref().expect("allocated").ptr;
        launch!(self.gpu, "to_bf16", grid(elems); dst, ptr, elems as u64)?;
        Ok((dst, blas_sys::cudaDataType::CUDA_R_16BF))
    }

    /// C (m x n, column-major) = op(A) op(B) + beta C, as cuBLAS sees row-major buffers.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn gemm(
        &self,
        ta: bool,
        tb: bool,
        (m, n, k): (usize, usize, usize),
        a: u64,
        lda: usize,
        b: u64,
        ldb: usize,
        beta: f32,
        c: u64,
        ldc: usize,
    ) -> Result<()> {
        let alpha = 1.0f32;
        let f32t = blas_sys::cudaDataType::CUDA_R_32F;
        let (a, at) = self.operand(a, span(ta, (m, k), lda, 0, 1), 0)?;
        let (b, bt) = self.operand(b, span(tb, (k, n), ldb, 0, 1), 1)?;
        // SAFETY: `a`, `b` and `c` are device addresses of buffers holding at least what cuBLAS
        // reads or writes for these shapes and leading dimensions (`span` sizes the bf16 copies
        // the same way); `alpha` and `beta` are host scalars that outlive the call (cuBLAS reads
        // them before returning, pointer mode host). The handle runs on the model's one stream,
        // so the product is ordered with the kernels around it.
        unsafe {
            blas::gemm_ex(
                *self.blas.handle(),
                op(ta),
                op(tb),
                m as i32,
                n as i32,
                k as i32,
                (&alpha as *const f32).cast(),
                a as *const _,
                at,
                lda as i32,
                b as *const _,
                bt,
                ldb as i32,
                (&beta as *const f32).cast(),
                c as *mut _,
                f32t,
                ldc as i32,
                self.compute,
                blas_sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        }
        .map_err(|e| anyhow!("cuBLAS gemm: {e:?}"))
    }

    /// `batch` products with fixed strides between consecutive matrices.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn gemm_batched(
        &self,
        ta: bool,
        tb: bool,
        (m, n, k): (usize, usize, usize),
        (a, lda, sa): (u64, usize, usize),
        (b, ldb, sb): (u64, usize, usize),
        (c, ldc, sc): (u64, usize, usize),
        batch: usize,
    ) -> Result<()> {
        let (alpha, beta) = (1.0f32, 0.0f32);
        let f32t = blas_sys::cudaDataType::CUDA_R_32F;
        let (a, at) = self.operand(a, span(ta, (m, k), lda, sa, batch), 0)?;
        let (b, bt) = self.operand(b, span(tb, (k, n), ldb, sb, batch), 1)?;
        // SAFETY: as in `gemm`, for `batch` matrices `sa`, `sb`, `sc` elements apart: the per-head
        // buffers hold B * NH matrices of these strides, and the bf16 copies are sized by `span`.
        unsafe {
            blas::gemm_strided_batched_ex(
                *self.blas.handle(),
                op(ta),
                op(tb),
                m as i32,
                n as i32,
                k as i32,
                (&alpha as *const f32).cast(),
                a as *const _,
                at,
                lda as i32,
                sa as i64,
                b as *const _,
                bt,
                ldb as i32,
                sb as i64,
                (&beta as *const f32).cast(),
                c as *mut _,
                f32t,
                ldc as i32,
                sc as i64,
                batch as i32,
                self.compute,
                blas_sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        }
        .map_err(|e| anyhow!("cuBLAS batched gemm: {e:?}"))
    }

    /// Per head: out (T, T) = x y^T, for x, y of (B, NH, T, HS) (attention scores, and their
    /// gradient with respect to the probabilities).
    pub(super) fn heads_x_yt(&self, h: &Heads, out: u64, x: u64, y: u64) -> Result<()> {
        let (t, hs) = (h.t, h.hs);
        let (th, tt) = (t * hs, t * t);
        self.gemm_batched(
            true,
            false,
            (t, t, hs),
            (y, hs, th),
            (x, hs, th),
            (out, t, tt),
            h.b * h.nh,
        )
    }

    /// Per head: out (T, HS) = p x, for p of (B, NH, T, T) (attention output, and dq).
    pub(super) fn heads_p_x(&self, h: &Heads, out: u64, p: u64, x: u64) -> Result<()> {
        let (t, hs) = (h.t, h.hs);
        let (th, tt) = (t * hs, t * t);
        self.gemm_batched(
            false,
            false,
            (hs, t, t),
            (x, hs, th),
            (p, t, tt),
            (out, hs, th),
            h.b * h.nh,
        )
    }

    /// Per head: out (T, HS) = p^T x (dv and dk).
    pub(super) fn heads_pt_x(&self, h: &Heads, out: u64, p: u64, x: u64) -> Result<()> {
        let (t, hs) = (h.t, h.hs);
        let (th, tt) = (t * hs, t * t);
        self.gemm_batched(
            false,
            true,
            (hs, t, t),
            (x, hs, th),
            (p, t, tt),
            (out, hs, th),
            h.b * h.nh,
        )
    }
}
