//! Device buffers (a `CudaSlice` and its raw address), kernel launches, the activations of one
//! (B, T) capacity, and the copies between host and device.

use super::loader::Gpu;
use super::{GpuGpt, ROWS};
use crate::config::GptConfig;
use crate::layers::LayerPlan;
use crate::memory::{self, Footprint};
use anyhow::{Context, Result, anyhow, ensure};
use cudarc::driver::{CudaSlice, CudaStream, DevicePtr, DeviceRepr, LaunchConfig, ValidAsZeroBits};
use std::sync::Arc;

/// Refuses `need` when it is more than the GPU's free memory (the rule of `memory::ensure_fits`), so
/// absurd sizes get the numbers rather than an allocation error.
pub(super) fn check_gpu_memory(gpu: &Gpu, need: &Footprint) -> Result<()> {
    gpu.ctx.bind_to_thread()?;
    let (free, total) = cudarc::driver::result::mem_get_info()
        .map_err(|e| anyhow!("reading the GPU's free memory: {e:?}"))?;
    memory::check_gpu(need, free, total)
}

/// A device buffer and its raw address (kernels and cuBLAS take addresses; offsets are arithmetic).
pub(super) struct Buf<T: DeviceRepr> {
    pub(super) slice: CudaSlice<T>,
    pub(super) ptr: u64,
}

impl<T: DeviceRepr + ValidAsZeroBits> Buf<T> {
    pub(super) fn zeros(stream: &Arc<CudaStream>, n: usize) -> Result<Self> {
        let slice = stream
            .alloc_zeros::<T>(n.max(1))
            .with_context(|| format!("allocating {n} elements on the GPU"))?;
        let ptr = slice.device_ptr(stream).0;
        Ok(Buf { slice, ptr })
    }

    /// Address of element `i`. Debug builds check that it lies in the buffer (or just past its
    /// end: the address of an empty range).
    pub(super) fn at(&self, i: usize) -> u64 {
        debug_assert!(
            i <= self.slice.len(),
            "element {i} is outside a device buffer of {} elements",
            self.slice.len()
        );
        self.ptr + (i * std::mem::size_of::<T>()) as u64
    }

    /// Address of the `n` elements from element `i` on. Debug builds check that they fit the buffer.
    pub(super) fn range(&self, i: usize, n: usize) -> u64 {
        debug_assert!(
            i.checked_add(n).is_some_and(|end| end <= self.slice.len()),
            "elements {i}..{i}+{n} are outside a device buffer of {} elements",
            self.slice.len()
        );
        self.at(i)
    }
}

/// Launches a kernel; arguments are bound to locals so they outlive the launch call.
macro_rules! launch {
    ($gpu:expr, $name:literal, $cfg:expr; $($arg:expr),* $(,)?) => {{
        let gpu: &Gpu = &$gpu;
        let mut builder = gpu.stream.launch_builder(gpu.func($name));
        $( let a = $arg; builder.arg(&a); )*
        // SAFETY: the arguments are bound to locals that outlive the launch call, and each has the
        // type its kernel in `kernels.cu` declares (device addresses as u64, sizes as the kernel's
        // integer types). Every address is a `Buf` of this model, allocated for the capacity the
        // launch covers (`ensure_acts`, the parameter layout), and stays allocated while the work
        // is queued: all work runs in order on the one stream, and buffers are freed only with
        // their model or when `ensure_acts` replaces them between passes.
        unsafe { builder.launch($cfg) }.map(|_| ()).with_context(|| concat!("kernel ", $name))
    }};
}

pub(super) use launch;

/// A grid-stride launch over `n` elements.
pub(super) fn grid(n: usize) -> LaunchConfig {
    let blocks = n.div_ceil(256).clamp(1, 1 << 16) as u32;
    LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// One warp per row, 8 rows per block.
pub(super) fn rows_grid(rows: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (rows.div_ceil(8).max(1) as u32, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// Activations of one (B, T) capacity, as `model.rs`'s `Activations`, plus the per-head copies
/// of q, k, v and the attention output that the batched cuBLAS products need.
pub(super) struct Acts {
    pub(super) b: usize,
    pub(super) t: usize,
    pub(super) with_dropout: bool,
    pub(super) layers: usize,
    pub(super) tokens: Buf<u32>,
    pub(super) targets: Buf<u32>,
    pub(super) encoded: Buf<f32>,
    pub(super) ln1: Buf<f32>,
    pub(super) ln1_mean: Buf<f32>,
    pub(super) ln1_rstd: Buf<f32>,
    pub(super) qkv: Buf<f32>,  // (B, T, 3C) scratch
    pub(super) qkvr: Buf<f32>, // (L, 3, B, NH, T, HS)
    pub(super) att: Buf<f32>,
    pub(super) att_drop: Buf<f32>,
    pub(super) yheads: Buf<f32>, // (B, NH, T, HS) scratch
    pub(super) atty: Buf<f32>,
    pub(super) residual2: Buf<f32>,
    pub(super) ln2: Buf<f32>,
    pub(super) ln2_mean: Buf<f32>,
    pub(super) ln2_rstd: Buf<f32>,
    pub(super) fch: Buf<f32>,
    pub(super) fch_gelu: Buf<f32>,
    pub(super) residual3: Buf<f32>,
    pub(super) lnf: Buf<f32>,
    pub(super) lnf_mean: Buf<f32>,
    pub(super) lnf_rstd: Buf<f32>,
    pub(super) probs: Buf<f32>,
    pub(super) losses: Buf<f32>,
    pub(super) proj: Buf<f32>,
    pub(super) dres: Buf<f32>,
    pub(super) dtmp: Buf<f32>,
    pub(super) dln: Buf<f32>,
    pub(super) datty: Buf<f32>,
    pub(super) dqkv: Buf<f32>,
    pub(super) dqkvr: Buf<f32>, // (3, B, NH, T, HS)
    pub(super) dyheads: Buf<f32>,
    pub(super) datt: Buf<f32>,
    pub(super) dfc: Buf<f32>,
    pub(super) dfc2: Buf<f32>,
    pub(super) partial: Buf<f32>,
    pub(super) last_logits: Buf<f32>,
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
        let st = LayerPlan::new(b, t, c, h).stacked(l);
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
            ln1: z(st.c.len())?,
            ln1_mean: z(st.rows.len())?,
            ln1_rstd: z(st.rows.len())?,
            qkv: z(bt * 3 * c)?,
            qkvr: z(st.c3.len())?,
            att: z(st.att.len())?,
            att_drop: z(if with_dropout { st.att.len() } else { 0 })?,
            yheads: z(bt * c)?,
            atty: z(st.c.len())?,
            residual2: z(st.c.len())?,
            ln2: z(st.c.len())?,
            ln2_mean: z(st.rows.len())?,
            ln2_rstd: z(st.rows.len())?,
            fch: z(st.c4.len())?,
            fch_gelu: z(st.c4.len())?,
            residual3: z(st.c.len())?,
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

impl GpuGpt {
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

    pub(super) fn p(&self, r: &std::ops::Range<usize>) -> u64 {
        self.params.range(r.start, r.len())
    }
    pub(super) fn po(&self, r: &Option<std::ops::Range<usize>>) -> u64 {
        r.as_ref()
            .map_or(0, |r| self.params.range(r.start, r.len()))
    }
    pub(super) fn g(&self, r: &std::ops::Range<usize>) -> u64 {
        self.grads.range(r.start, r.len())
    }
    pub(super) fn go(&self, r: &Option<std::ops::Range<usize>>) -> u64 {
        r.as_ref().map_or(0, |r| self.grads.range(r.start, r.len()))
    }

    pub(super) fn ensure_acts(
        &mut self,
        b: usize,
        t: usize,
        with_dropout: bool,
        layers: usize,
    ) -> Result<()> {
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

    /// Copies host data to a device address (synchronous for pageable host memory).
    pub(super) fn upload<T>(&self, dst: u64, src: &[T]) -> Result<()> {
        self.gpu.ctx.bind_to_thread()?;
        // SAFETY: `dst` is the address of a buffer with room for `src.len()` elements (token and
        // target buffers of the activations, sized for the batch). `src` is pageable host memory,
        // so the copy has read it by the time the call returns, while `src` is still borrowed.
        unsafe {
            cudarc::driver::result::memcpy_htod_async(dst, src, self.gpu.stream.cu_stream())
        }?;
        Ok(())
    }

    /// Copies device data to the host and waits for it.
    pub(super) fn download_to<T>(&self, dst: &mut [T], src: u64) -> Result<()> {
        self.gpu.ctx.bind_to_thread()?;
        // SAFETY: `src` is the address of a buffer holding at least `dst.len()` elements (losses,
        // logits, norm partials: each sized for what is read). The stream is synchronised below
        // before `dst`'s borrow ends, so the copy never outlives it.
        unsafe {
            cudarc::driver::result::memcpy_dtoh_async(dst, src, self.gpu.stream.cu_stream())
        }?;
        self.gpu.stream.synchronize()?;
        Ok(())
    }

    /// Copies `n` f32 from device address `src` to `dst` (queued on the stream).
    pub(super) fn copy(&self, dst: u64, src: u64, n: usize) -> Result<()> {
        // SAFETY: `dst` and `src` are addresses of f32 buffers of this model with at least `n`
        // elements from there on (the weights, gradients and ZeRO-1 scratch buffers, sized by
        // the layout and its shards); the copy is ordered with every other use on the one stream.
        unsafe {
            cudarc::driver::result::memcpy_dtod_async(dst, src, n * 4, self.gpu.stream.cu_stream())
        }?;
        Ok(())
    }

    pub(super) fn zero(&self, ptr: u64, n: usize) -> Result<()> {
        // SAFETY: `ptr` is the address of an f32 buffer of at least `n` elements (the gradients,
        // or an activation gradient of the batch), so `n * 4` bytes are inside it; the memset is
        // ordered with every other use of the buffer on the one stream.
        unsafe {
            cudarc::driver::result::memset_d8_async(ptr, 0, n * 4, self.gpu.stream.cu_stream())
        }?;
        Ok(())
    }
}
