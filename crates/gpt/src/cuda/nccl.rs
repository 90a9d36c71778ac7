//! The NCCL backend of [`Collective`] (feature `cuda`): one communicator per process, on the
//! process's GPU ([`Gpu::select`] picks it by local rank), through cudarc's NCCL bindings, which
//! load `libnccl.so` at run time ([`nccl_library`] makes the pip wheels' `libnccl.so.2` loadable).
//!
//! Training calls the device collectives ([`Nccl::all_reduce_sum_device`] and the others) on
//! the gradients and weights where they live, in GPU memory. The [`Collective`] methods on host
//! buffers (orders, losses, a trainer's state at start-up) go through a staging buffer on the
//! GPU. Waits poll the stream with short sleeps, so a rank waiting for rank 0 leaves its core
//! free, as the MPI backend does.
//!
//! Every collective of a job runs on each rank in the same order; a rank that stops calling them
//! stops the others. NCCL never times out by itself: the launcher (torchrun, srun, or pipe's own
//! `--ranks N`) ends the job when a rank dies, and the trainer's step timeout ends a rank that
//! waits too long (see the runner's `ranks` module).

use super::buffers::Buf;
use super::loader::Gpu;
use crate::collective::rendezvous::UniqueId;
use crate::collective::{Collective, nccl_library};
use anyhow::{Result, anyhow, bail};
use cudarc::nccl::{result, sys};
use std::ffi::c_void;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// This process's rank of an NCCL job.
pub struct Nccl {
    comm: sys::ncclComm_t,
    gpu: Arc<Gpu>,
    rank: usize,
    world: usize,
    /// Device memory for the host collectives, grown as needed.
    staging: Mutex<Option<Buf<u8>>>,
}

// SAFETY: the communicator is used by one thread at a time: the ranks' runs execute one stage at
// a time, and only that stage's thread calls collectives (as for the MPI backend); `staging` is
// behind a mutex.
unsafe impl Send for Nccl {}
unsafe impl Sync for Nccl {}

/// Checks that cudarc can load NCCL (it panics when it cannot), else says how to get it.
pub fn check_library() -> Result<()> {
    // SAFETY: this only opens and closes the library, under the names cudarc will use.
    if unsafe { sys::is_culib_present() } {
        return Ok(());
    }
    let Some(dir) = link_folder()? else {
        bail!(
            "NCCL (libnccl.so) did not load: {}",
            nccl_library::INSTALL_NCCL
        );
    };
    bail!(
        "NCCL is here only as libnccl.so.2, which cudarc loads only as libnccl.so: pipe linked it into {0}; start pipe with `export LD_LIBRARY_PATH={0}:$LD_LIBRARY_PATH` (`pipe run --ranks N` does this for the ranks it starts)",
        dir.display()
    )
}

/// `None` when cudarc can load NCCL as it is; else the folder where pipe has linked NCCL's
/// `libnccl.so.2` as `libnccl.so`, for the ranks' `LD_LIBRARY_PATH` (the loader reads it when a
/// process starts).
pub fn link_folder() -> Result<Option<std::path::PathBuf>> {
    match nccl_library::find(std::env::var("PIPE_NCCL_LIB").ok().as_deref())? {
        nccl_library::Found::Loadable => Ok(None),
        nccl_library::Found::Soname2(lib) => {
            let dir = link_dir()?;
            nccl_library::link_for_cudarc(&lib, &dir, "")?;
            Ok(Some(dir))
        }
    }
}

/// `$XDG_CACHE_HOME/pipe/nccl`, else `~/.cache/pipe/nccl`: a folder of this user's, so no
/// other user chooses the library the ranks load (as one could with a fixed name in /tmp).
fn link_dir() -> Result<std::path::PathBuf> {
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| std::path::Path::new(&h).join(".cache")))
        .ok_or_else(|| {
            anyhow!("neither XDG_CACHE_HOME nor HOME is set: pipe has nowhere to link NCCL as libnccl.so")
        })?;
    Ok(cache.join("pipe").join("nccl"))
}

fn nccl_error(what: &str, e: result::NcclError) -> anyhow::Error {
    // SAFETY: ncclGetErrorString returns a static NUL-terminated string for any result code.
    let text = unsafe { std::ffi::CStr::from_ptr(sys::ncclGetErrorString(e.0)) };
    anyhow!("NCCL {what}: {} ({:?})", text.to_string_lossy(), e.0)
}

impl Nccl {
    /// A new unique id for a job (rank 0 makes it and hands it out: see `rendezvous`).
    pub fn unique_id() -> Result<UniqueId> {
        check_library()?;
        let id = result::get_uniqueid().map_err(|e| nccl_error("ncclGetUniqueId", e))?;
        Ok(id.internal.map(|c| c as u8))
    }

    /// Joins the job of `world` ranks whose ranks all hold `id`, as `rank`, on GPU `local_rank`.
    /// Returns once every rank has joined (ncclCommInitRank).
    pub fn join(rank: usize, world: usize, local_rank: usize, id: &UniqueId) -> Result<Nccl> {
        check_library()?;
        Gpu::select(local_rank)?;
        let gpu = Gpu::get()?;
        gpu.ctx.bind_to_thread()?;
        let id = sys::ncclUniqueId {
            internal: id.map(|b| b as std::ffi::c_char),
        };
        let mut comm = std::ptr::null_mut();
        // SAFETY: `comm` is a valid place for the communicator; NCCL reads `id` by value.
        unsafe { result::comm_init_rank(&mut comm, world as i32, id, rank as i32) }
            .map_err(|e| nccl_error("ncclCommInitRank", e))?;
        Ok(Nccl {
            comm,
            gpu,
            rank,
            world,
            staging: Mutex::new(None),
        })
    }

    fn stream(&self) -> sys::cudaStream_t {
        self.gpu.stream.cu_stream() as sys::cudaStream_t
    }

    /// Waits for the stream's work: polling with yields for the first few hundred tries (a small
    /// collective ends within microseconds), then every millisecond, so no core spins while a
    /// rank waits for another.
    fn wait(&self) -> Result<()> {
        use cudarc::driver::sys::{CUresult, cuStreamQuery};
        for tries in 0u32.. {
            // SAFETY: the stream is the process's live default stream.
            match unsafe { cuStreamQuery(self.gpu.stream.cu_stream()) } {
                CUresult::CUDA_SUCCESS => return Ok(()),
                CUresult::CUDA_ERROR_NOT_READY if tries < 500 => std::thread::yield_now(),
                CUresult::CUDA_ERROR_NOT_READY => std::thread::sleep(Duration::from_millis(1)),
                e => bail!("waiting for the GPU during a collective: {e:?}"),
            }
        }
        unreachable!("the loop returns")
    }

    /// Sums `n` f32 at device address `ptr` over the ranks, in place (queued on the stream).
    pub fn all_reduce_sum_device(&self, ptr: u64, n: usize) -> Result<()> {
        self.all_reduce_raw(ptr, n, sys::ncclDataType_t::ncclFloat32)
    }

    fn all_reduce_raw(&self, ptr: u64, n: usize, dtype: sys::ncclDataType_t) -> Result<()> {
        // SAFETY: `ptr` is a device buffer of at least `n` elements of `dtype` on this
        // communicator's GPU, live until the stream's work is done (callers wait or keep it).
        unsafe {
            result::all_reduce(
                ptr as *const c_void,
                ptr as *mut c_void,
                n,
                dtype,
                sys::ncclRedOp_t::ncclSum,
                self.comm,
                self.stream(),
            )
        }
        .map(drop)
        .map_err(|e| nccl_error("all-reduce", e))
    }

    /// Sums `world × n` f32 at `send` over the ranks; rank r gets block r at `recv` (`n` f32).
    pub fn reduce_scatter_sum_device(&self, send: u64, recv: u64, n: usize) -> Result<()> {
        // SAFETY: `send` holds world × n f32 and `recv` n f32, both on this GPU and live until
        // the stream's work is done.
        unsafe {
            result::reduce_scatter(
                send as *const c_void,
                recv as *mut c_void,
                n,
                sys::ncclDataType_t::ncclFloat32,
                sys::ncclRedOp_t::ncclSum,
                self.comm,
                self.stream(),
            )
        }
        .map(drop)
        .map_err(|e| nccl_error("reduce-scatter", e))
    }

    /// Every rank's `n` f32 at `send`, in rank order, at `recv` (world × `n` f32). `send` may be
    /// `recv`'s own block (in place).
    pub fn all_gather_device(&self, send: u64, recv: u64, n: usize) -> Result<()> {
        // SAFETY: `send` holds n f32 and `recv` world × n f32, both on this GPU and live until
        // the stream's work is done.
        unsafe {
            result::all_gather(
                send as *const c_void,
                recv as *mut c_void,
                n,
                sys::ncclDataType_t::ncclFloat32,
                self.comm,
                self.stream(),
            )
        }
        .map(drop)
        .map_err(|e| nccl_error("all-gather", e))
    }

    fn broadcast_raw(&self, ptr: u64, bytes: usize) -> Result<()> {
        // SAFETY: `ptr` is a device buffer of at least `bytes` bytes on this GPU, live until the
        // stream's work is done.
        unsafe {
            result::broadcast(
                ptr as *const c_void,
                ptr as *mut c_void,
                bytes,
                sys::ncclDataType_t::ncclUint8,
                0,
                self.comm,
                self.stream(),
            )
        }
        .map(drop)
        .map_err(|e| nccl_error("broadcast", e))
    }

    /// Runs `op` on a staging buffer of at least `bytes` bytes (its device address), then
    /// waits for the stream.
    fn staged<R>(&self, bytes: usize, op: impl FnOnce(u64) -> Result<R>) -> Result<R> {
        self.gpu.ctx.bind_to_thread()?;
        let mut slot = self.staging.lock().unwrap_or_else(|e| e.into_inner());
        if slot.as_ref().is_none_or(|b| b.slice.len() < bytes) {
            *slot = None;
            *slot = Some(Buf::zeros(&self.gpu.stream, bytes.next_power_of_two())?);
        }
        let ptr = slot.as_ref().expect("just made").ptr;
        let r = op(ptr)?;
        self.wait()?;
        Ok(r)
    }

    fn upload<T>(&self, dst: u64, src: &[T]) -> Result<()> {
        // SAFETY: `dst` is a staging address with room for `src` (see `staged`); pageable host
        // memory is read by the time the call returns.
        unsafe {
            cudarc::driver::result::memcpy_htod_async(dst, src, self.gpu.stream.cu_stream())
        }?;
        Ok(())
    }

    fn download<T>(&self, dst: &mut [T], src: u64) -> Result<()> {
        // The collective first, polled: a copy into pageable memory would wait for it inside the
        // driver, spinning.
        self.wait()?;
        // SAFETY: `src` is a staging address holding `dst.len()` elements; the stream is waited
        // for before `dst`'s borrow ends.
        unsafe {
            cudarc::driver::result::memcpy_dtoh_async(dst, src, self.gpu.stream.cu_stream())
        }?;
        self.wait()
    }
}

impl Drop for Nccl {
    fn drop(&mut self) {
        // Abort rather than destroy: destroying waits for the peers, which may be gone.
        // SAFETY: the communicator is live and nothing uses it after this point (its owner is
        // gone); an error here has nowhere to go.
        let _ = unsafe { result::comm_abort(self.comm) };
    }
}

impl Collective for Nccl {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world(&self) -> usize {
        self.world
    }

    fn all_reduce_sum(&self, buf: &mut [f32]) -> Result<()> {
        self.staged(size_of_val(buf), |d| {
            self.upload(d, buf)?;
            self.all_reduce_raw(d, buf.len(), sys::ncclDataType_t::ncclFloat32)?;
            self.download(buf, d)
        })
    }

    fn all_reduce_sum_f64(&self, buf: &mut [f64]) -> Result<()> {
        self.staged(size_of_val(buf), |d| {
            self.upload(d, buf)?;
            self.all_reduce_raw(d, buf.len(), sys::ncclDataType_t::ncclFloat64)?;
            self.download(buf, d)
        })
    }

    fn reduce_scatter_sum(&self, send: &[f32], recv: &mut [f32]) -> Result<()> {
        let n = recv.len();
        anyhow::ensure!(
            send.len() == n * self.world,
            "reduce-scatter of uneven blocks"
        );
        self.staged(size_of_val(send) + size_of_val(recv), |d| {
            let out = d + size_of_val(send) as u64;
            self.upload(d, send)?;
            self.reduce_scatter_sum_device(d, out, n)?;
            self.download(recv, out)
        })
    }

    fn all_gather(&self, send: &[f32], recv: &mut [f32]) -> Result<()> {
        let n = send.len();
        anyhow::ensure!(recv.len() == n * self.world, "all-gather of uneven blocks");
        self.staged(size_of_val(recv), |d| {
            // In place: this rank's block is already where the result has it.
            let mine = d + (self.rank * size_of_val(send)) as u64;
            self.upload(mine, send)?;
            self.all_gather_device(mine, d, n)?;
            self.download(recv, d)
        })
    }

    fn gather(&self, send: &[f32], recv: &mut [f32]) -> Result<()> {
        // NCCL has no gather: every rank receives, and only rank 0 copies the result out.
        let n = send.len();
        let whole = n * self.world;
        anyhow::ensure!(
            self.rank != 0 || recv.len() == whole,
            "gather of uneven blocks"
        );
        self.staged(whole * 4, |d| {
            let mine = d + (self.rank * n * 4) as u64;
            self.upload(mine, send)?;
            self.all_gather_device(mine, d, n)?;
            if self.rank == 0 {
                self.download(recv, d)?;
            }
            Ok(())
        })
    }

    fn broadcast(&self, buf: &mut [f32]) -> Result<()> {
        self.staged(size_of_val(buf), |d| {
            self.upload(d, buf)?;
            self.broadcast_raw(d, size_of_val(buf))?;
            self.download(buf, d)
        })
    }

    fn broadcast_bytes(&self, buf: &mut Vec<u8>) -> Result<()> {
        let mut len = [buf.len() as u64];
        self.staged(8, |d| {
            self.upload(d, &len)?;
            self.broadcast_raw(d, 8)?;
            self.download(&mut len, d)
        })?;
        buf.resize(len[0] as usize, 0);
        if buf.is_empty() {
            return Ok(());
        }
        self.staged(buf.len(), |d| {
            self.upload(d, buf)?;
            self.broadcast_raw(d, buf.len())?;
            self.download(buf, d)
        })
    }

    fn barrier(&self) -> Result<()> {
        self.all_reduce_sum_f64(&mut [0.0])
    }

    fn nccl(&self) -> Option<&Nccl> {
        Some(self)
    }
}
