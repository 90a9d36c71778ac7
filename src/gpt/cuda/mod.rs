//! The CUDA engine: the same GPT as `model.rs`, with parameters, gradients, AdamW moments and
//! activations in GPU memory. Matrix products go to cuBLAS; everything else is a kernel of
//! `kernels.cu`, compiled by NVRTC the first time a GPU model is made. cudarc loads the driver,
//! cuBLAS and NVRTC at run time, so building needs no CUDA toolkit.
//!
//! The pass is `model.rs` step for step (same buffers, same dropout masks, same order), so the two
//! can be compared op by op (`tests/cuda.rs`). Results are not bit-stable on the GPU (the embedding
//! gradient uses atomics, and cuBLAS picks its own summation order); f32 stays the reference
//! precision. `dtype: tf32` lets cuBLAS multiply on TF32 tensor cores; `dtype: bf16` rounds each
//! product's operands to bf16 (copies in scratch buffers) for bf16 tensor cores. Weights,
//! activations, gradients and accumulation stay f32 either way.

use super::config::{Gelu, GptConfig};
use super::device::Precision;
use super::memory::{self, Footprint};
use super::model::DropoutPlan;
use super::optim::{AdamW, clip_coef};
use super::params::ParamLayout;
use super::rng::Rng;
use super::sample::{SampleConfig, sample_rng, sample_token};
use anyhow::{Context, Result, anyhow, bail, ensure};
use cudarc::cublas::{CudaBlas, result as blas, sys as blas_sys};
use cudarc::driver::{
    CudaContext, CudaFunction, CudaSlice, CudaStream, DevicePtr, DeviceRepr, LaunchConfig,
    PushKernelArg, ValidAsZeroBits,
};
use cudarc::nvrtc::{CompileOptions, compile_ptx_with_opts};
use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

const KERNELS: &str = include_str!("kernels.cu");
/// Every kernel of `kernels.cu`, loaded by name.
pub const KERNEL_NAMES: &[&str] = &[
    "dropout_apply",
    "encoder_forward",
    "encoder_backward",
    "layernorm_forward",
    "layernorm_backward_input",
    "layernorm_param_partials",
    "column_partials",
    "sum_partials",
    "broadcast_rows",
    "add",
    "scale",
    "gelu_forward",
    "gelu_backward",
    "split_heads",
    "merge_heads_grad",
    "merge_heads",
    "merge_heads_backward",
    "causal_softmax",
    "causal_softmax_backward",
    "softmax_crossentropy",
    "crossentropy_backward",
    "sumsq_partials",
    "adamw",
    "last_rows",
    "to_bf16",
];

/// Rows per block of the column sums behind bias and LayerNorm gradients.
const ROWS: usize = 256;
/// Elements per block of the gradient-norm partial sums.
const NORM_CHUNK: usize = 1 << 16;

/// NVRTC options: no fused multiply-add, so element-wise kernels round like the CPU engine.
fn compile_options(arch: Option<&'static str>) -> CompileOptions {
    CompileOptions {
        fmad: Some(false),
        arch,
        name: Some("pipe_kernels.cu".into()),
        ..Default::default()
    }
}

/// Compiles the kernels to PTX for `arch` (e.g. "compute_90"). Needs only NVRTC, not a GPU.
pub fn compile_kernels(arch: Option<&'static str>) -> Result<String> {
    let ptx = compile_ptx_with_opts(KERNELS, compile_options(arch))
        .map_err(|e| anyhow!("compiling the CUDA kernels with NVRTC failed: {e:?}"))?;
    Ok(ptx.to_src())
}

fn arch_for(major: i32, minor: i32) -> Option<&'static str> {
    Some(match (major, minor) {
        (7, 5) => "compute_75",
        (8, 0) => "compute_80",
        (8, 6) => "compute_86",
        (8, 9) => "compute_89",
        (9, 0) => "compute_90",
        (10, 0) => "compute_100",
        (12, 0) => "compute_120",
        _ => return None,
    })
}

/// Whether a shared library cudarc loads at run time (e.g. "nvrtc", "cublas", "cuda") can be
/// found under any of the names cudarc tries.
pub fn library_available(name: &str) -> bool {
    cudarc::get_lib_name_candidates(name)
        .into_iter()
        .any(|candidate| {
            let c = std::ffi::CString::new(candidate).expect("no NUL in library names");
            !unsafe { libc::dlopen(c.as_ptr(), libc::RTLD_LAZY | libc::RTLD_LOCAL) }.is_null()
        })
}

/// Checks that a shared library cudarc will need can be loaded, so a missing one is an error
/// that says what to install instead of a panic inside cudarc.
fn check_library(name: &str, what: &str) -> Result<()> {
    if library_available(name) {
        return Ok(());
    }
    bail!(
        "no CUDA GPU is usable: {what} (lib{name}.so) was not found. Install the NVIDIA driver and CUDA 12 or 13 \
         libraries (cuBLAS and NVRTC: the toolkit, or the pip wheels nvidia-cublas and nvidia-cuda-nvrtc) and put \
         their folders on LD_LIBRARY_PATH, or run with device: cpu"
    )
}

/// One GPU: its context, stream and compiled kernels, shared by every model in the process.
pub struct Gpu {
    pub ctx: Arc<CudaContext>,
    pub stream: Arc<CudaStream>,
    kernels: HashMap<&'static str, CudaFunction>,
    pub name: String,
    /// Compute capability (major, minor).
    pub capability: (i32, i32),
}

/// The GPU's name, opening it (and compiling the kernels) if needed: a check that CUDA works.
pub fn gpu_name() -> Result<String> {
    Ok(Gpu::get()?.name.clone())
}

static GPU: Mutex<Option<Arc<Gpu>>> = Mutex::new(None);

impl Gpu {
    /// The process's GPU (device 0), opened and its kernels compiled on first use.
    pub fn get() -> Result<Arc<Gpu>> {
        let mut slot = GPU.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(g) = slot.as_ref() {
            return Ok(g.clone());
        }
        let g = Arc::new(Gpu::open()?);
        *slot = Some(g.clone());
        Ok(g)
    }

    fn open() -> Result<Gpu> {
        check_library("cuda", "the NVIDIA driver library")?;
        check_library("nvrtc", "NVRTC")?;
        check_library("cublas", "cuBLAS")?;
        let ctx = std::panic::catch_unwind(|| CudaContext::new(0))
            .map_err(|_| anyhow!("no CUDA GPU is usable: the CUDA driver could not be loaded"))?
            .map_err(|e| {
                anyhow!("no CUDA GPU is usable: {e:?} (is a GPU visible? nvidia-smi tells)")
            })?;
        // One stream: no cross-stream event tracking needed.
        unsafe { ctx.disable_event_tracking() };
        let (major, minor) = ctx.compute_capability()?;
        let name = format!("{} (sm_{major}{minor})", ctx.name()?);
        let ptx = compile_ptx_with_opts(KERNELS, compile_options(arch_for(major, minor)))
            .map_err(|e| anyhow!("compiling the CUDA kernels with NVRTC failed: {e:?}"))?;
        let module = ctx.load_module(ptx).context(
            "loading the CUDA kernels (an NVRTC newer than the driver's CUDA version makes code the \
             driver cannot load: use the NVRTC of the driver's CUDA version or older, or update the driver)",
        )?;
        let mut kernels = HashMap::new();
        for &k in KERNEL_NAMES {
            kernels.insert(
                k,
                module
                    .load_function(k)
                    .with_context(|| format!("kernel {k}"))?,
            );
        }
        let stream = ctx.default_stream();
        Ok(Gpu {
            ctx,
            stream,
            kernels,
            name,
            capability: (major, minor),
        })
    }

    fn func(&self, name: &str) -> &CudaFunction {
        &self.kernels[name]
    }
}

/// Refuses `need` when it is more than the GPU's free memory (the rule of `memory::ensure_fits`), so
/// absurd sizes get the numbers rather than an allocation error.
fn check_gpu_memory(gpu: &Gpu, need: &Footprint) -> Result<()> {
    gpu.ctx.bind_to_thread()?;
    let (free, total) = cudarc::driver::result::mem_get_info()
        .map_err(|e| anyhow!("reading the GPU's free memory: {e:?}"))?;
    memory::check_gpu(need, free, total)
}

/// A device buffer and its raw address (kernels and cuBLAS take addresses; offsets are arithmetic).
struct Buf<T: DeviceRepr> {
    slice: CudaSlice<T>,
    ptr: u64,
}

impl<T: DeviceRepr + ValidAsZeroBits> Buf<T> {
    fn zeros(stream: &Arc<CudaStream>, n: usize) -> Result<Self> {
        let slice = stream
            .alloc_zeros::<T>(n.max(1))
            .with_context(|| format!("allocating {n} elements on the GPU"))?;
        let ptr = slice.device_ptr(stream).0;
        Ok(Buf { slice, ptr })
    }

    /// Address of element `i`.
    fn at(&self, i: usize) -> u64 {
        self.ptr + (i * std::mem::size_of::<T>()) as u64
    }
}

/// Launches a kernel; arguments are bound to locals so they outlive the launch call.
macro_rules! launch {
    ($gpu:expr, $name:literal, $cfg:expr; $($arg:expr),* $(,)?) => {{
        let gpu: &Gpu = &$gpu;
        let mut builder = gpu.stream.launch_builder(gpu.func($name));
        $( let a = $arg; builder.arg(&a); )*
        unsafe { builder.launch($cfg) }.map(|_| ()).with_context(|| concat!("kernel ", $name))
    }};
}

/// How many elements cuBLAS reads for an operand `op(X)` of shape `(rows, cols)` stored
/// column-major with leading dimension `ld`, `batch` times `stride` apart.
fn span(
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
fn op(transposed: bool) -> blas_sys::cublasOperation_t {
    if transposed {
        blas_sys::cublasOperation_t::CUBLAS_OP_T
    } else {
        blas_sys::cublasOperation_t::CUBLAS_OP_N
    }
}

/// A grid-stride launch over `n` elements.
fn grid(n: usize) -> LaunchConfig {
    let blocks = n.div_ceil(256).clamp(1, 1 << 16) as u32;
    LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// One warp per row, 8 rows per block.
fn rows_grid(rows: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (rows.div_ceil(8).max(1) as u32, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// Activations of one (B, T) capacity, as `model.rs`'s `Activations`, plus the per-head copies
/// of q, k, v and the attention output that the batched cuBLAS products need.
struct Acts {
    b: usize,
    t: usize,
    with_dropout: bool,
    layers: usize,
    tokens: Buf<u32>,
    targets: Buf<u32>,
    encoded: Buf<f32>,
    ln1: Buf<f32>,
    ln1_mean: Buf<f32>,
    ln1_rstd: Buf<f32>,
    qkv: Buf<f32>,  // (B, T, 3C) scratch
    qkvr: Buf<f32>, // (L, 3, B, NH, T, HS)
    att: Buf<f32>,
    att_drop: Buf<f32>,
    yheads: Buf<f32>, // (B, NH, T, HS) scratch
    atty: Buf<f32>,
    residual2: Buf<f32>,
    ln2: Buf<f32>,
    ln2_mean: Buf<f32>,
    ln2_rstd: Buf<f32>,
    fch: Buf<f32>,
    fch_gelu: Buf<f32>,
    residual3: Buf<f32>,
    lnf: Buf<f32>,
    lnf_mean: Buf<f32>,
    lnf_rstd: Buf<f32>,
    probs: Buf<f32>,
    losses: Buf<f32>,
    proj: Buf<f32>,
    dres: Buf<f32>,
    dtmp: Buf<f32>,
    dln: Buf<f32>,
    datty: Buf<f32>,
    dqkv: Buf<f32>,
    dqkvr: Buf<f32>, // (3, B, NH, T, HS)
    dyheads: Buf<f32>,
    datt: Buf<f32>,
    dfc: Buf<f32>,
    dfc2: Buf<f32>,
    partial: Buf<f32>,
    last_logits: Buf<f32>,
}

impl Acts {
    fn new(
        s: &Arc<CudaStream>,
        cfg: &GptConfig,
        b: usize,
        t: usize,
        with_dropout: bool,
        layers: usize,
    ) -> Result<Self> {
        let (l, c, v, h) = (layers, cfg.n_embd, cfg.vocab_size, cfg.n_head);
        let bt = b * t;
        let z = |n: usize| Buf::<f32>::zeros(s, n);
        let partial_rows = bt.div_ceil(ROWS);
        Ok(Acts {
            b,
            t,
            with_dropout,
            layers,
            tokens: Buf::zeros(s, bt)?,
            targets: Buf::zeros(s, bt)?,
            encoded: z(bt * c)?,
            ln1: z(l * bt * c)?,
            ln1_mean: z(l * bt)?,
            ln1_rstd: z(l * bt)?,
            qkv: z(bt * 3 * c)?,
            qkvr: z(l * bt * 3 * c)?,
            att: z(l * b * h * t * t)?,
            att_drop: z(if with_dropout { l * b * h * t * t } else { 0 })?,
            yheads: z(bt * c)?,
            atty: z(l * bt * c)?,
            residual2: z(l * bt * c)?,
            ln2: z(l * bt * c)?,
            ln2_mean: z(l * bt)?,
            ln2_rstd: z(l * bt)?,
            fch: z(l * bt * 4 * c)?,
            fch_gelu: z(l * bt * 4 * c)?,
            residual3: z(l * bt * c)?,
            lnf: z(bt * c)?,
            lnf_mean: z(bt)?,
            lnf_rstd: z(bt)?,
            probs: z(bt * v)?,
            losses: z(bt)?,
            proj: z(bt * c)?,
            dres: z(bt * c)?,
            dtmp: z(bt * c)?,
            dln: z(bt * c)?,
            datty: z(bt * c)?,
            dqkv: z(bt * 3 * c)?,
            dqkvr: z(bt * 3 * c)?,
            dyheads: z(bt * c)?,
            datt: z(b * h * t * t)?,
            dfc: z(bt * 4 * c)?,
            dfc2: z(bt * 4 * c)?,
            partial: z(partial_rows * 4 * c)?,
            last_logits: z(b * v)?,
        })
    }
}

/// The attention's per-head shape: B * NH matrices of (T, HS), and of (T, T) scores.
struct Heads {
    b: usize,
    nh: usize,
    t: usize,
    hs: usize,
}

/// What the last forward pass with targets ran on, for the backward pass.
struct Pass {
    b: usize,
    t: usize,
    dropout: Option<DropoutPlan>,
}

/// A GPT whose state lives on the GPU. Parameters go up once; the host sees them again through
/// [`GpuGpt::download`] (checkpoints are the CPU engine's format, so devices can alternate).
pub struct GpuGpt {
    gpu: Arc<Gpu>,
    blas: CudaBlas,
    precision: Precision,
    compute: blas_sys::cublasComputeType_t,
    /// bf16 copies of the two operands of the current product (dtype: bf16), grown as needed.
    bf16_operands: RefCell<[Option<Buf<u16>>; 2]>,
    pub config: GptConfig,
    layout: ParamLayout,
    params: Buf<f32>,
    grads: Buf<f32>,
    m: Buf<f32>,
    v: Buf<f32>,
    norm_partials: Buf<f64>,
    acts: Option<Acts>,
    last: Option<Pass>,
}

impl GpuGpt {
    /// Uploads `params` (the CPU layout); matrix products run at `precision`.
    pub fn new(config: &GptConfig, params: &[f32], precision: Precision) -> Result<GpuGpt> {
        let total = ParamLayout::new(config).total;
        ensure!(
            params.len() == total,
            "parameter count {} does not match the config ({total})",
            params.len(),
        );
        let mut g = GpuGpt::new_zeroed(config, precision)?;
        g.upload_params(0, params)?;
        Ok(g)
    }

    /// A model whose parameters are all zero until [`GpuGpt::upload_params`] fills them (a
    /// checkpoint is uploaded tensor by tensor from its memory map, with no host copy).
    pub fn new_zeroed(config: &GptConfig, precision: Precision) -> Result<GpuGpt> {
        config.validate()?;
        let layout = ParamLayout::new(config);
        let gpu = Gpu::get()?;
        ensure!(
            precision == Precision::F32 || gpu.capability.0 >= 8,
            "dtype `{}` needs tensor cores of compute capability 8.0 or newer (Ampere); {} has {}.{}: \
             use dtype: float32",
            if precision == Precision::Tf32 {
                "tf32"
            } else {
                "bf16"
            },
            gpu.name,
            gpu.capability.0,
            gpu.capability.1
        );
        gpu.ctx.bind_to_thread()?;
        let s = &gpu.stream;
        let blas =
            CudaBlas::new(s.clone()).map_err(|e| anyhow!("creating a cuBLAS handle: {e:?}"))?;
        use blas_sys::cublasComputeType_t::*;
        let compute = match precision {
            Precision::F32 | Precision::Bf16 => CUBLAS_COMPUTE_32F,
            Precision::Tf32 => CUBLAS_COMPUTE_32F_FAST_TF32,
        };
        // Every GPU model holds all four buffers, whatever it is used for.
        let need = Footprint {
            model: config.training_buffers(),
            activations: None,
        };
        check_gpu_memory(&gpu, &need)?;
        let n = layout.total;
        Ok(GpuGpt {
            params: Buf::zeros(s, n)?,
            grads: Buf::zeros(s, n)?,
            m: Buf::zeros(s, n)?,
            v: Buf::zeros(s, n)?,
            norm_partials: Buf::zeros(s, n.div_ceil(NORM_CHUNK))?,
            gpu,
            blas,
            precision,
            compute,
            bf16_operands: RefCell::new([None, None]),
            config: config.clone(),
            layout,
            acts: None,
            last: None,
        })
    }

    pub fn config(&self) -> &GptConfig {
        &self.config
    }

    pub fn device_name(&self) -> &str {
        &self.gpu.name
    }

    /// Copies `host` into the parameters from element `offset` on (the CPU layout). Returns once
    /// `host` has been read, so the caller may drop or release it.
    pub fn upload_params(&mut self, offset: usize, host: &[f32]) -> Result<()> {
        ensure!(
            offset + host.len() <= self.layout.total,
            "parameters {offset}..{} are outside the model ({})",
            offset + host.len(),
            self.layout.total
        );
        if host.is_empty() {
            return Ok(());
        }
        let s = &self.gpu.stream;
        s.memcpy_htod(
            host,
            &mut self.params.slice.slice_mut(offset..offset + host.len()),
        )?;
        s.synchronize()?;
        Ok(())
    }

    /// Replaces the AdamW moments (resuming a checkpoint).
    pub fn upload_moments(&mut self, m: &[f32], v: &[f32]) -> Result<()> {
        ensure!(m.len() == self.layout.total && v.len() == self.layout.total);
        let s = &self.gpu.stream;
        s.memcpy_htod(m, &mut self.m.slice)?;
        s.memcpy_htod(v, &mut self.v.slice)?;
        Ok(())
    }

    /// Copies parameters and AdamW moments back into host buffers of the CPU layout.
    pub fn download(&self, params: &mut [f32], m: &mut [f32], v: &mut [f32]) -> Result<()> {
        let s = &self.gpu.stream;
        s.memcpy_dtoh(&self.params.slice.slice(0..self.layout.total), params)?;
        s.memcpy_dtoh(&self.m.slice.slice(0..self.layout.total), m)?;
        s.memcpy_dtoh(&self.v.slice.slice(0..self.layout.total), v)?;
        s.synchronize()?;
        Ok(())
    }

    /// The gradient buffer (for tests against the CPU engine).
    pub fn download_grads(&self) -> Result<Vec<f32>> {
        let mut g = vec![0.0; self.layout.total];
        self.gpu
            .stream
            .memcpy_dtoh(&self.grads.slice.slice(0..self.layout.total), &mut g[..])?;
        Ok(g)
    }

    pub fn zero_grad(&mut self) -> Result<()> {
        self.gpu.stream.memset_zeros(&mut self.grads.slice)?;
        Ok(())
    }

    fn p(&self, r: &std::ops::Range<usize>) -> u64 {
        self.params.at(r.start)
    }
    fn po(&self, r: &Option<std::ops::Range<usize>>) -> u64 {
        r.as_ref().map_or(0, |r| self.params.at(r.start))
    }
    fn g(&self, r: &std::ops::Range<usize>) -> u64 {
        self.grads.at(r.start)
    }
    fn go(&self, r: &Option<std::ops::Range<usize>>) -> u64 {
        r.as_ref().map_or(0, |r| self.grads.at(r.start))
    }

    fn ensure_acts(&mut self, b: usize, t: usize, with_dropout: bool, layers: usize) -> Result<()> {
        let fits = self.acts.as_ref().is_some_and(|a| {
            a.b >= b && a.t >= t && (a.with_dropout || !with_dropout) && a.layers >= layers
        });
        if !fits {
            self.acts = None;
            let need = Footprint {
                model: Vec::new(),
                activations: Some((
                    4.0 * self.config.activation_floats(b, t, layers, with_dropout),
                    format!("batch {b} x block {t}, {layers} layer(s)"),
                )),
            };
            check_gpu_memory(&self.gpu, &need)?;
            self.acts = Some(Acts::new(
                &self.gpu.stream,
                &self.config,
                b,
                t,
                with_dropout,
                layers,
            )?);
        }
        Ok(())
    }

    /// An operand as cuBLAS will read it: the f32 matrix in place, or with `dtype: bf16` a bf16
    /// copy of its `elems` elements in scratch `slot`.
    fn operand(
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
    fn gemm(
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
    fn gemm_batched(
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
    fn heads_x_yt(&self, h: &Heads, out: u64, x: u64, y: u64) -> Result<()> {
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
    fn heads_p_x(&self, h: &Heads, out: u64, p: u64, x: u64) -> Result<()> {
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
    fn heads_pt_x(&self, h: &Heads, out: u64, p: u64, x: u64) -> Result<()> {
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

    /// out (n, oc) = inp (n, ic) W^T (+ bias), W stored (oc, ic) as nanoGPT's Linear.
    #[allow(clippy::too_many_arguments)]
    fn linear_forward(
        &self,
        out: u64,
        inp: u64,
        w: u64,
        bias: u64,
        n: usize,
        ic: usize,
        oc: usize,
    ) -> Result<()> {
        if bias != 0 {
            launch!(self.gpu, "broadcast_rows", grid(n * oc); out, bias, n as u64, oc as i32)?;
        }
        let beta = if bias != 0 { 1.0 } else { 0.0 };
        self.gemm(true, false, (oc, n, ic), w, ic, inp, ic, beta, out, oc)
    }

    /// dinp = dout W; dW += dout^T inp; dbias += column sums of dout.
    #[allow(clippy::too_many_arguments)]
    fn linear_backward(
        &self,
        partial: u64,
        (dinp, dw, db): (u64, u64, u64),
        dout: u64,
        inp: u64,
        w: u64,
        (n, ic, oc): (usize, usize, usize),
    ) -> Result<()> {
        self.gemm(false, false, (ic, n, oc), w, ic, dout, oc, 0.0, dinp, ic)?;
        self.gemm(false, true, (ic, oc, n), inp, ic, dout, oc, 1.0, dw, ic)?;
        if db != 0 {
            let blocks = n.div_ceil(ROWS);
            let cfg = LaunchConfig {
                grid_dim: (oc.div_ceil(256) as u32, blocks as u32, 1),
                block_dim: (256, 1, 1),
                shared_mem_bytes: 0,
            };
            launch!(self.gpu, "column_partials", cfg; partial, dout, n as u64, oc as i32, ROWS as i32)?;
            launch!(self.gpu, "sum_partials", grid(oc); db, db, partial, blocks as i32, oc as i32, oc as i32)?;
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn layernorm_forward(
        &self,
        out: u64,
        mean: u64,
        rstd: u64,
        inp: u64,
        w: u64,
        b: u64,
        n: usize,
    ) -> Result<()> {
        let c = self.config.n_embd;
        launch!(self.gpu, "layernorm_forward", rows_grid(n); out, mean, rstd, inp, w, b, n as u64, c as i32)
    }

    /// dinp += input gradient; dw (and db) += parameter gradients.
    #[allow(clippy::too_many_arguments)]
    fn layernorm_backward(
        &self,
        partial: u64,
        (dinp, dw, db): (u64, u64, u64),
        dout: u64,
        inp: u64,
        mean: u64,
        rstd: u64,
        w: u64,
        n: usize,
    ) -> Result<()> {
        let c = self.config.n_embd;
        launch!(self.gpu, "layernorm_backward_input", rows_grid(n);
            dinp, dout, inp, mean, rstd, w, n as u64, c as i32)?;
        let blocks = n.div_ceil(ROWS);
        let with_bias = db != 0;
        let width = if with_bias { 2 * c } else { c };
        let cfg = LaunchConfig {
            grid_dim: (c.div_ceil(256) as u32, blocks as u32, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        launch!(self.gpu, "layernorm_param_partials", cfg;
            partial, dout, inp, mean, rstd, n as u64, c as i32, ROWS as i32, with_bias as i32)?;
        launch!(self.gpu, "sum_partials", grid(width); dw, db, partial, blocks as i32, width as i32, c as i32)
    }

    fn dropout(&self, out: u64, inp: u64, n: usize, d: Option<(DropoutPlan, u64)>) -> Result<()> {
        if let Some((plan, site)) = d {
            launch!(self.gpu, "dropout_apply", grid(n); out, inp, n as u64, plan.p, plan.seed, site)?;
        }
        Ok(())
    }

    fn add(&self, out: u64, a: u64, b: u64, n: usize) -> Result<()> {
        launch!(self.gpu, "add", grid(n); out, a, b, n as u64)
    }

    /// The forward pass of `model.rs` (`Gpt::forward`), returning the mean loss when `targets` are
    /// given. `for_backward: false` keeps one layer's activations (evaluation).
    pub fn forward(
        &mut self,
        tokens: &[u32],
        targets: Option<&[u32]>,
        (b, t): (usize, usize),
        dropout: Option<DropoutPlan>,
        for_backward: bool,
    ) -> Result<f32> {
        let cfg = self.config.clone();
        let (c, v, nh) = (cfg.n_embd, cfg.vocab_size, cfg.n_head);
        let hs = c / nh;
        ensure!(
            t <= cfg.block_size,
            "sequence length {t} exceeds block_size {}",
            cfg.block_size
        );
        ensure!(b > 0 && t > 0, "an empty batch ({b} x {t})");
        ensure!(tokens.len() == b * t, "expected {} tokens", b * t);
        ensure!(
            tokens.iter().all(|&x| (x as usize) < v),
            "token id out of vocabulary"
        );
        let dropout = dropout.filter(|d| d.p > 0.0);
        let layers = if for_backward { cfg.n_layer } else { 1 };
        self.gpu.ctx.bind_to_thread()?;
        self.ensure_acts(b, t, dropout.is_some(), layers)?;
        let a = self.acts.take().expect("activations allocated");
        let r = self.forward_on(
            &a,
            tokens,
            targets,
            (b, t),
            dropout,
            for_backward,
            (c, v, nh, hs),
        );
        self.acts = Some(a);
        let loss = r?;
        self.last = (targets.is_some() && for_backward).then_some(Pass { b, t, dropout });
        Ok(loss)
    }

    /// Copies host data to a device address (synchronous for pageable host memory).
    fn upload<T>(&self, dst: u64, src: &[T]) -> Result<()> {
        self.gpu.ctx.bind_to_thread()?;
        unsafe {
            cudarc::driver::result::memcpy_htod_async(dst, src, self.gpu.stream.cu_stream())
        }?;
        Ok(())
    }

    /// Copies device data to the host and waits for it.
    fn download_to<T>(&self, dst: &mut [T], src: u64) -> Result<()> {
        self.gpu.ctx.bind_to_thread()?;
        unsafe {
            cudarc::driver::result::memcpy_dtoh_async(dst, src, self.gpu.stream.cu_stream())
        }?;
        self.gpu.stream.synchronize()?;
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn forward_on(
        &self,
        a: &Acts,
        tokens: &[u32],
        targets: Option<&[u32]>,
        (b, t): (usize, usize),
        dropout: Option<DropoutPlan>,
        for_backward: bool,
        (c, v, nh, hs): (usize, usize, usize, usize),
    ) -> Result<f32> {
        let bt = b * t;
        let lay = &self.layout;
        let cfg = &self.config;
        self.upload(a.tokens.ptr, tokens)?;
        launch!(self.gpu, "encoder_forward", grid(bt * c);
            a.encoded.ptr, a.tokens.ptr, self.p(&lay.wte), self.p(&lay.wpe), bt as u64, t as i32, c as i32)?;
        let site = |k: u64| dropout.map(|d| (d, k));
        self.dropout(a.encoded.ptr, a.encoded.ptr, bt * c, site(0))?;
        let slot = |l: usize| if for_backward { l } else { 0 };
        let scale = 1.0 / (hs as f32).sqrt();
        for (l, blk) in lay.blocks.iter().enumerate() {
            let sl = slot(l);
            let (oc, o1, o3, o4) = (sl * bt * c, sl * bt, sl * bt * 3 * c, sl * bt * 4 * c);
            let oatt = sl * b * nh * t * t;
            let lsite = |k: u64| site(1 + 3 * l as u64 + k);
            let residual = if l == 0 {
                a.encoded.ptr
            } else {
                a.residual3.at(slot(l - 1) * bt * c)
            };
            self.layernorm_forward(
                a.ln1.at(oc),
                a.ln1_mean.at(o1),
                a.ln1_rstd.at(o1),
                residual,
                self.p(&blk.ln_1_w),
                self.po(&blk.ln_1_b),
                bt,
            )?;
            self.linear_forward(
                a.qkv.ptr,
                a.ln1.at(oc),
                self.p(&blk.c_attn_w),
                self.po(&blk.c_attn_b),
                bt,
                c,
                3 * c,
            )?;
            // Attention: per-head q, k, v; att = softmax(q k^T * scale); y = drop(att) v.
            let (q, k, vv) = (
                a.qkvr.at(o3),
                a.qkvr.at(o3 + bt * c),
                a.qkvr.at(o3 + 2 * bt * c),
            );
            launch!(self.gpu, "split_heads", grid(bt * c);
                q, k, vv, a.qkv.ptr, b as i32, t as i32, nh as i32, hs as i32)?;
            let att = a.att.at(oatt);
            let heads = Heads { b, nh, t, hs };
            self.heads_x_yt(&heads, att, q, k)?;
            launch!(self.gpu, "causal_softmax", rows_grid(b * nh * t);
                att, (b * nh * t) as u64, t as i32, scale)?;
            let probs = match lsite(0) {
                Some(d) => {
                    let ad = a.att_drop.at(oatt);
                    self.dropout(ad, att, b * nh * t * t, Some(d))?;
                    ad
                }
                None => att,
            };
            self.heads_p_x(&heads, a.yheads.ptr, probs, vv)?;
            launch!(self.gpu, "merge_heads", grid(bt * c);
                a.atty.at(oc), a.yheads.ptr, b as i32, t as i32, nh as i32, hs as i32)?;
            self.linear_forward(
                a.proj.ptr,
                a.atty.at(oc),
                self.p(&blk.attn_proj_w),
                self.po(&blk.attn_proj_b),
                bt,
                c,
                c,
            )?;
            self.dropout(a.proj.ptr, a.proj.ptr, bt * c, lsite(1))?;
            self.add(a.residual2.at(oc), residual, a.proj.ptr, bt * c)?;

            self.layernorm_forward(
                a.ln2.at(oc),
                a.ln2_mean.at(o1),
                a.ln2_rstd.at(o1),
                a.residual2.at(oc),
                self.p(&blk.ln_2_w),
                self.po(&blk.ln_2_b),
                bt,
            )?;
            self.linear_forward(
                a.fch.at(o4),
                a.ln2.at(oc),
                self.p(&blk.c_fc_w),
                self.po(&blk.c_fc_b),
                bt,
                c,
                4 * c,
            )?;
            let tanh = (cfg.gelu == Gelu::Tanh) as i32;
            launch!(self.gpu, "gelu_forward", grid(bt * 4 * c);
                a.fch_gelu.at(o4), a.fch.at(o4), (bt * 4 * c) as u64, tanh)?;
            self.linear_forward(
                a.proj.ptr,
                a.fch_gelu.at(o4),
                self.p(&blk.mlp_proj_w),
                self.po(&blk.mlp_proj_b),
                bt,
                4 * c,
                c,
            )?;
            self.dropout(a.proj.ptr, a.proj.ptr, bt * c, lsite(2))?;
            self.add(a.residual3.at(oc), a.residual2.at(oc), a.proj.ptr, bt * c)?;
        }
        let last = a.residual3.at(slot(cfg.n_layer - 1) * bt * c);
        self.layernorm_forward(
            a.lnf.ptr,
            a.lnf_mean.ptr,
            a.lnf_rstd.ptr,
            last,
            self.p(&lay.ln_f_w),
            self.po(&lay.ln_f_b),
            bt,
        )?;
        self.linear_forward(a.probs.ptr, a.lnf.ptr, self.p(&lay.wte), 0, bt, c, v)?;
        let Some(y) = targets else {
            return Ok(f32::NAN);
        };
        ensure!(y.len() == bt, "expected {bt} targets");
        ensure!(
            y.iter().all(|&x| (x as usize) < v),
            "target id out of vocabulary"
        );
        self.upload(a.targets.ptr, y)?;
        let cfg1 = LaunchConfig {
            grid_dim: (bt as u32, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        launch!(self.gpu, "softmax_crossentropy", cfg1; a.probs.ptr, a.losses.ptr, a.targets.ptr, v as i32)?;
        let mut losses = vec![0.0f32; bt];
        self.download_to(&mut losses, a.losses.ptr)?;
        Ok((losses.iter().map(|&l| l as f64).sum::<f64>() / bt as f64) as f32)
    }

    /// Logits (B*T, V) of the last forward pass run without targets.
    pub fn logits(&self, b: usize, t: usize) -> Result<Vec<f32>> {
        let a = self.acts.as_ref().context("forward first")?;
        let mut out = vec![0.0f32; b * t * self.config.vocab_size];
        self.download_to(&mut out, a.probs.ptr)?;
        Ok(out)
    }

    /// The logits of the last position of each of the `b` rows of the last forward pass.
    fn last_logits(&self, b: usize, t: usize) -> Result<Vec<f32>> {
        let a = self.acts.as_ref().context("forward first")?;
        let v = self.config.vocab_size;
        launch!(self.gpu, "last_rows", grid(b * v); a.last_logits.ptr, a.probs.ptr, b as i32, t as i32, v as i32)?;
        let mut out = vec![0.0f32; b * v];
        self.download_to(&mut out, a.last_logits.ptr)?;
        Ok(out)
    }

    /// Waits for the GPU's queued work (for timing).
    pub fn synchronize(&self) -> Result<()> {
        self.gpu.stream.synchronize()?;
        Ok(())
    }

    /// Accumulates the gradient of `loss_scale * loss` of the last forward pass (as `Gpt::backward`).
    pub fn backward(&mut self, loss_scale: f32) -> Result<()> {
        let pass = self
            .last
            .take()
            .context("backward needs a forward pass with targets")?;
        self.gpu.ctx.bind_to_thread()?;
        let a = self.acts.take().expect("activations allocated");
        let r = self.backward_on(&a, &pass, loss_scale);
        self.acts = Some(a);
        r
    }

    fn backward_on(&self, a: &Acts, pass: &Pass, loss_scale: f32) -> Result<()> {
        let cfg = &self.config;
        let (c, v, nh) = (cfg.n_embd, cfg.vocab_size, cfg.n_head);
        let hs = c / nh;
        let (b, t) = (pass.b, pass.t);
        let bt = b * t;
        let lay = &self.layout;
        let site = |k: u64| pass.dropout.map(|d| (d, k));
        let part = a.partial.ptr;
        let dloss = loss_scale / bt as f32;
        launch!(self.gpu, "crossentropy_backward", grid(bt * v); a.probs.ptr, a.targets.ptr, bt as u64, v as i32, dloss)?;
        self.linear_backward(
            part,
            (a.dln.ptr, self.g(&lay.wte), 0),
            a.probs.ptr,
            a.lnf.ptr,
            self.p(&lay.wte),
            (bt, c, v),
        )?;
        self.zero(a.dres.ptr, bt * c)?;
        let last = a.residual3.at((cfg.n_layer - 1) * bt * c);
        self.layernorm_backward(
            part,
            (a.dres.ptr, self.g(&lay.ln_f_w), self.go(&lay.ln_f_b)),
            a.dln.ptr,
            last,
            a.lnf_mean.ptr,
            a.lnf_rstd.ptr,
            self.p(&lay.ln_f_w),
            bt,
        )?;
        let scale = 1.0 / (hs as f32).sqrt();
        let copy = |dst: u64, src: u64| -> Result<()> {
            let bytes = bt * c * 4;
            unsafe {
                cudarc::driver::result::memcpy_dtod_async(
                    dst,
                    src,
                    bytes,
                    self.gpu.stream.cu_stream(),
                )
            }?;
            Ok(())
        };
        for (l, blk) in lay.blocks.iter().enumerate().rev() {
            let (oc, o1, o3, o4) = (l * bt * c, l * bt, l * bt * 3 * c, l * bt * 4 * c);
            let oatt = l * b * nh * t * t;
            let lsite = |k: u64| site(1 + 3 * l as u64 + k);
            let residual = if l == 0 {
                a.encoded.ptr
            } else {
                a.residual3.at((l - 1) * bt * c)
            };

            // MLP: residual3 = residual2 + drop(c_proj(gelu(c_fc(ln_2(residual2)))))
            copy(a.dtmp.ptr, a.dres.ptr)?;
            self.dropout(a.dtmp.ptr, a.dtmp.ptr, bt * c, lsite(2))?;
            self.linear_backward(
                part,
                (a.dfc.ptr, self.g(&blk.mlp_proj_w), self.go(&blk.mlp_proj_b)),
                a.dtmp.ptr,
                a.fch_gelu.at(o4),
                self.p(&blk.mlp_proj_w),
                (bt, 4 * c, c),
            )?;
            let tanh = (cfg.gelu == Gelu::Tanh) as i32;
            launch!(self.gpu, "gelu_backward", grid(bt * 4 * c);
                a.dfc2.ptr, a.fch.at(o4), a.dfc.ptr, (bt * 4 * c) as u64, tanh)?;
            self.linear_backward(
                part,
                (a.dln.ptr, self.g(&blk.c_fc_w), self.go(&blk.c_fc_b)),
                a.dfc2.ptr,
                a.ln2.at(oc),
                self.p(&blk.c_fc_w),
                (bt, c, 4 * c),
            )?;
            self.layernorm_backward(
                part,
                (a.dres.ptr, self.g(&blk.ln_2_w), self.go(&blk.ln_2_b)),
                a.dln.ptr,
                a.residual2.at(oc),
                a.ln2_mean.at(o1),
                a.ln2_rstd.at(o1),
                self.p(&blk.ln_2_w),
                bt,
            )?;

            // Attention: residual2 = residual + drop(c_proj(attn(c_attn(ln_1(residual)))))
            copy(a.dtmp.ptr, a.dres.ptr)?;
            self.dropout(a.dtmp.ptr, a.dtmp.ptr, bt * c, lsite(1))?;
            self.linear_backward(
                part,
                (
                    a.datty.ptr,
                    self.g(&blk.attn_proj_w),
                    self.go(&blk.attn_proj_b),
                ),
                a.dtmp.ptr,
                a.atty.at(oc),
                self.p(&blk.attn_proj_w),
                (bt, c, c),
            )?;
            let (q, k, vv) = (
                a.qkvr.at(o3),
                a.qkvr.at(o3 + bt * c),
                a.qkvr.at(o3 + 2 * bt * c),
            );
            let (dq, dk, dv) = (a.dqkvr.ptr, a.dqkvr.at(bt * c), a.dqkvr.at(2 * bt * c));
            let att = a.att.at(oatt);
            let probs = if lsite(0).is_some() {
                a.att_drop.at(oatt)
            } else {
                att
            };
            let dy = a.dyheads.ptr;
            let datt = a.datt.ptr;
            let dims = (b as i32, t as i32, nh as i32, hs as i32);
            launch!(self.gpu, "merge_heads_backward", grid(bt * c);
                dy, a.datty.ptr, dims.0, dims.1, dims.2, dims.3)?;
            let heads = Heads { b, nh, t, hs };
            self.heads_x_yt(&heads, datt, dy, vv)?; // datt = dy v^T
            self.heads_pt_x(&heads, dv, probs, dy)?; // dv = probs^T dy
            self.dropout(datt, datt, b * nh * t * t, lsite(0))?;
            launch!(self.gpu, "causal_softmax_backward", rows_grid(b * nh * t);
                datt, att, (b * nh * t) as u64, t as i32, scale)?;
            self.heads_p_x(&heads, dq, datt, k)?; // dq = dpre k
            self.heads_pt_x(&heads, dk, datt, q)?; // dk = dpre^T q
            launch!(self.gpu, "merge_heads_grad", grid(bt * c);
                a.dqkv.ptr, dq, dk, dv, dims.0, dims.1, dims.2, dims.3)?;
            self.linear_backward(
                part,
                (a.dln.ptr, self.g(&blk.c_attn_w), self.go(&blk.c_attn_b)),
                a.dqkv.ptr,
                a.ln1.at(oc),
                self.p(&blk.c_attn_w),
                (bt, c, 3 * c),
            )?;
            self.layernorm_backward(
                part,
                (a.dres.ptr, self.g(&blk.ln_1_w), self.go(&blk.ln_1_b)),
                a.dln.ptr,
                residual,
                a.ln1_mean.at(o1),
                a.ln1_rstd.at(o1),
                self.p(&blk.ln_1_w),
                bt,
            )?;
        }
        self.dropout(a.dres.ptr, a.dres.ptr, bt * c, site(0))?;
        launch!(self.gpu, "encoder_backward", grid(bt * c);
            self.g(&lay.wte), self.g(&lay.wpe), a.dres.ptr, a.tokens.ptr, bt as u64, t as i32, c as i32)?;
        Ok(())
    }

    fn zero(&self, ptr: u64, n: usize) -> Result<()> {
        unsafe {
            cudarc::driver::result::memset_d8_async(ptr, 0, n * 4, self.gpu.stream.cu_stream())
        }?;
        Ok(())
    }

    /// Global-norm clipping (as `clip_grad_norm`, returning the norm before clipping), then one
    /// AdamW update with the host optimiser's hyper-parameters and step count; zeroes the gradients.
    pub fn step(&mut self, opt: &mut AdamW, lr: f64, grad_clip: f32) -> Result<f32> {
        self.gpu.ctx.bind_to_thread()?;
        let n = self.layout.total;
        let norm = if grad_clip > 0.0 {
            let blocks = n.div_ceil(NORM_CHUNK);
            let cfg = LaunchConfig {
                grid_dim: (blocks as u32, 1, 1),
                block_dim: (256, 1, 1),
                shared_mem_bytes: 0,
            };
            launch!(self.gpu, "sumsq_partials", cfg;
                self.norm_partials.ptr, self.grads.ptr, n as u64, NORM_CHUNK as u64)?;
            let mut partial = vec![0.0f64; blocks];
            self.download_to(&mut partial, self.norm_partials.ptr)?;
            let norm = partial.iter().sum::<f64>().sqrt() as f32;
            if let Some(coef) = clip_coef(norm, grad_clip) {
                launch!(self.gpu, "scale", grid(n); self.grads.ptr, n as u64, coef)?;
            }
            norm
        } else {
            f32::NAN
        };
        let s = opt.next_step(lr);
        for (range, decays) in opt.decay_ranges() {
            let (off, len) = (range.start, range.len());
            launch!(self.gpu, "adamw", grid(len);
                self.params.at(off), self.grads.at(off), self.m.at(off), self.v.at(off), len as u64,
                s.decay_for(*decays), s.beta1, s.beta2, s.bc2_sqrt, s.step_size, s.eps)?;
        }
        self.zero(self.grads.ptr, n)?;
        Ok(norm)
    }

    /// Evaluation loss of one batch (no dropout, one layer's activations).
    pub fn eval_loss(&mut self, x: &[u32], y: &[u32], b: usize, t: usize) -> Result<f32> {
        self.forward(x, Some(y), (b, t), None, false)
    }

    /// `num_samples` samples, all advanced together as one batch; sample `i` draws from the same
    /// stream as on the CPU (`generate_many`), and the context is cropped to `block_size` as nanoGPT.
    pub fn generate_many(
        &mut self,
        prompt: &[u32],
        cfg: &SampleConfig,
        num_samples: usize,
    ) -> Result<Vec<Vec<u32>>> {
        ensure!(
            !prompt.is_empty(),
            "generation needs at least one prompt token"
        );
        let bs = self.config.block_size;
        let v = self.config.vocab_size;
        let n = num_samples;
        if n == 0 {
            return Ok(Vec::new());
        }
        let mut rngs: Vec<Rng> = (0..n).map(|i| sample_rng(cfg.seed, i)).collect();
        let mut seqs: Vec<Vec<u32>> = vec![prompt.to_vec(); n];
        // One allocation for the longest context.
        self.ensure_acts(
            n,
            bs.min(prompt.len() + cfg.max_new_tokens).max(1),
            false,
            1,
        )?;
        let mut batch = Vec::new();
        for _ in 0..cfg.max_new_tokens {
            let len = seqs[0].len();
            let start = len.saturating_sub(bs);
            let t = len - start;
            batch.clear();
            for s in &seqs {
                batch.extend_from_slice(&s[start..]);
            }
            self.forward(&batch, None, (n, t), None, false)?;
            let logits = self.last_logits(n, t)?;
            for (i, s) in seqs.iter_mut().enumerate() {
                s.push(sample_token(&logits[i * v..(i + 1) * v], cfg, &mut rngs[i]));
            }
        }
        Ok(seqs
            .into_iter()
            .map(|mut s| s.split_off(prompt.len()))
            .collect())
    }
}
