//! The MPI backend (feature `mpi`): rsmpi over the system's MPI (Debian's Open MPI in CI). MPI's
//! default error handler is fatal, so a failed collective aborts the whole job (mpirun then ends
//! every rank) rather than returning here.

use super::Collective;
use anyhow::{Result, bail};
use mpi::collective::SystemOperation;
use mpi::topology::SimpleCommunicator;
use mpi::traits::*;
use std::sync::Mutex;
use std::time::Duration;

pub struct Mpi {
    /// Finalizes MPI when dropped.
    _universe: mpi::environment::Universe,
    world: SimpleCommunicator,
    /// The send copy for in-place reductions (rsmpi has no MPI_IN_PLACE), kept between calls.
    scratch: Mutex<Vec<f32>>,
}

impl Mpi {
    /// Joins the job the launcher started (MPI_Init_thread).
    pub fn init() -> Result<Mpi> {
        let Some((universe, level)) = mpi::initialize_with_threading(mpi::Threading::Serialized)
        else {
            bail!("MPI was already initialised in this process");
        };
        if level < mpi::Threading::Serialized {
            bail!(
                "this MPI library gives only {level:?} thread support; pipe's stages call MPI from a worker thread, which needs MPI_THREAD_SERIALIZED"
            );
        }
        let world = universe.world();
        Ok(Mpi {
            _universe: universe,
            world,
            scratch: Mutex::new(Vec::new()),
        })
    }

    /// Ends every rank of the job with `code` (MPI_Abort).
    pub fn abort(&self, code: i32) -> ! {
        self.world.abort(code)
    }
}

// SAFETY: MPI is initialised with at least MPI_THREAD_SERIALIZED (checked in `init`), and pipe
// makes one MPI call at a time: the ranks' runs execute one stage at a time (`-j 1`), and only
// that stage's thread calls MPI.
unsafe impl Sync for Mpi {}
unsafe impl Send for Mpi {}

impl Collective for Mpi {
    fn rank(&self) -> usize {
        self.world.rank() as usize
    }

    fn world(&self) -> usize {
        self.world.size() as usize
    }

    fn all_reduce_sum(&self, buf: &mut [f32]) -> Result<()> {
        let mut send = self.scratch.lock().unwrap_or_else(|e| e.into_inner());
        send.clear();
        send.extend_from_slice(buf);
        self.world
            .all_reduce_into(&send[..], buf, SystemOperation::sum());
        Ok(())
    }

    fn all_reduce_sum_f64(&self, buf: &mut [f64]) -> Result<()> {
        let send = buf.to_vec();
        self.world
            .all_reduce_into(&send[..], buf, SystemOperation::sum());
        Ok(())
    }

    fn reduce_scatter_sum(&self, send: &[f32], recv: &mut [f32]) -> Result<()> {
        self.world
            .reduce_scatter_block_into(send, recv, SystemOperation::sum());
        Ok(())
    }

    fn all_gather(&self, send: &[f32], recv: &mut [f32]) -> Result<()> {
        self.world.all_gather_into(send, recv);
        Ok(())
    }

    fn gather(&self, send: &[f32], recv: &mut [f32]) -> Result<()> {
        let root = self.world.process_at_rank(0);
        if self.world.rank() == 0 {
            root.gather_into_root(send, recv);
        } else {
            root.gather_into(send);
        }
        Ok(())
    }

    fn broadcast(&self, buf: &mut [f32]) -> Result<()> {
        self.world.process_at_rank(0).broadcast_into(buf);
        Ok(())
    }

    /// The length goes with a non-blocking broadcast that every rank polls with short sleeps:
    /// a rank waiting for rank 0 (which may be preparing data for minutes) leaves its core free,
    /// where a blocking MPI wait would spin on it.
    fn broadcast_bytes(&self, buf: &mut Vec<u8>) -> Result<()> {
        let root = self.world.process_at_rank(0);
        let mut len = buf.len() as u64;
        mpi::request::scope(|scope| {
            let mut req = root.immediate_broadcast_into(scope, &mut len);
            loop {
                match req.test() {
                    Ok(_) => break,
                    Err(r) => {
                        req = r;
                        std::thread::sleep(Duration::from_millis(2));
                    }
                }
            }
        });
        buf.resize(len as usize, 0);
        root.broadcast_into(&mut buf[..]);
        Ok(())
    }

    fn barrier(&self) -> Result<()> {
        self.world.barrier();
        Ok(())
    }
}
