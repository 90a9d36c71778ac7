//! Loading the CUDA libraries (each checked with `dlopen` first, since cudarc panics on a missing
//! one), compiling `kernels.cu` with NVRTC, and opening the process's one GPU.

use anyhow::{Context, Result, anyhow, bail};
use cudarc::driver::{CudaContext, CudaFunction, CudaStream};
use cudarc::nvrtc::{CompileOptions, compile_ptx_with_opts};
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
            // SAFETY: `c` is a NUL-terminated string that lives through the call. The handle is
            // never closed, so the library stays loaded (cudarc loads it again by name).
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

/// How many GPUs the driver shows (without opening any of them).
pub fn device_count() -> Result<usize> {
    check_library("cuda", "the NVIDIA driver library")?;
    let count = std::panic::catch_unwind(CudaContext::device_count)
        .map_err(|_| anyhow!("no CUDA GPU is usable: the CUDA driver could not be loaded"))?
        .map_err(|e| {
            anyhow!("no CUDA GPU is usable: {e:?} (is a GPU visible? nvidia-smi tells)")
        })?;
    Ok(count.max(0) as usize)
}

/// The GPU's name, opening it (and compiling the kernels) if needed: a check that CUDA works.
pub fn gpu_name() -> Result<String> {
    Ok(Gpu::get()?.name.clone())
}

static GPU: Mutex<Option<Arc<Gpu>>> = Mutex::new(None);
/// The device [`Gpu::get`] opens: 0, or the one [`Gpu::select`] chose (a rank's LOCAL_RANK).
static ORDINAL: Mutex<usize> = Mutex::new(0);

impl Gpu {
    /// The process's GPU (device 0 unless [`Gpu::select`] chose another), opened and its
    /// kernels compiled on first use.
    pub fn get() -> Result<Arc<Gpu>> {
        let mut slot = GPU.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(g) = slot.as_ref() {
            return Ok(g.clone());
        }
        let ordinal = *ORDINAL.lock().unwrap_or_else(|e| e.into_inner());
        let g = Arc::new(Gpu::open(ordinal)?);
        *slot = Some(g.clone());
        Ok(g)
    }

    /// Makes device `ordinal` the process's GPU (each data-parallel rank takes the GPU of its
    /// local rank, as torchrun's scripts do with `torch.cuda.set_device(LOCAL_RANK)`). Call it
    /// before the GPU is first used.
    pub fn select(ordinal: usize) -> Result<()> {
        let slot = GPU.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(g) = slot.as_ref()
            && g.ctx.ordinal() != ordinal
        {
            bail!(
                "GPU {} is already in use by this process, so it cannot switch to GPU {ordinal}",
                g.ctx.ordinal()
            );
        }
        *ORDINAL.lock().unwrap_or_else(|e| e.into_inner()) = ordinal;
        Ok(())
    }

    fn open(ordinal: usize) -> Result<Gpu> {
        let count = device_count()?;
        check_library("nvrtc", "NVRTC")?;
        check_library("cublas", "cuBLAS")?;
        // A launcher that shows each rank only its own GPU (Slurm's --gpus-per-task, --gpu-bind)
        // leaves one device, whatever the local rank.
        let ordinal = if count == 1 { 0 } else { ordinal };
        if ordinal >= count {
            bail!(
                "GPU {ordinal} was asked for (this rank's LOCAL_RANK), but this machine shows {count} GPU(s): start at most one rank per GPU on each machine"
            );
        }
        let ctx = CudaContext::new(ordinal).map_err(|e| {
            anyhow!("no CUDA GPU is usable: {e:?} (is a GPU visible? nvidia-smi tells)")
        })?;
        // One stream: no cross-stream event tracking needed.
        // SAFETY: every buffer and launch of the process uses this context's one default stream,
        // so work is ordered without cudarc's events; this runs before any buffer exists.
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

    pub(super) fn func(&self, name: &str) -> &CudaFunction {
        &self.kernels[name]
    }
}
