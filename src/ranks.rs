//! A data-parallel job's ranks: rank 0 runs the command (the plan, the store, the run log, every
//! stage), and the other ranks follow it. When rank 0 trains, it sends the others an order with
//! what they need to hold the same trainer (the token objects' paths in the shared store, the
//! trainer's state, then its tensors), and every rank runs the training loop with its share of
//! each batch ([`crate::gpt::train`]). Only rank 0 writes anything. When rank 0's command ends,
//! it dismisses them.
//!
//! The ranks talk through MPI (CPU ranks: mpirun, srun) or NCCL (GPU ranks: torchrun, pipe's own
//! `--ranks N` with device cuda, or srun with PIPE_COLLECTIVE=nccl); see [`Backend`].
//!
//! Orders travel as JSON through the collective's `broadcast_bytes`, which waits without spinning
//! (a follower idles while rank 0 prepares data). A rank that dies ends the job: the launcher
//! (mpirun, srun, torchrun, or pipe's own) then stops every rank. A rank that hangs is bounded by
//! the step timeout (see [`Watchdog`]).

use crate::error::InputError;
use crate::gpt::collective::mpi::Mpi;
use crate::gpt::collective::{Collective, Nccl, rendezvous};
use crate::gpt::device::Device;
use crate::gpt::train::{ReplicaState, Trainer};
use crate::hash::Hash;
use crate::launch::{Launcher, Placement};
use crate::store::Store;
use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Which collective library the ranks of a job talk through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// CPU ranks: weights and gradients in host memory.
    Mpi,
    /// GPU ranks: weights and gradients in GPU memory.
    Nccl,
}

impl Backend {
    /// `PIPE_COLLECTIVE` (`mpi` or `nccl`) when given; else NCCL under torchrun (which starts GPU
    /// ranks, as for nanoGPT's DDP) and MPI under mpirun and srun.
    pub fn choose(launcher: Launcher, var: Option<&str>) -> Result<Backend, InputError> {
        match var.map(str::trim) {
            Some("mpi") => Ok(Backend::Mpi),
            Some("nccl") => Ok(Backend::Nccl),
            Some(other) => Err(InputError::new(
                format!(
                    "PIPE_COLLECTIVE={other:?}: expected `mpi` (CPU ranks) or `nccl` (GPU ranks)"
                ),
                Some("leave it unset: torchrun's ranks use NCCL, mpirun's and srun's MPI"),
            )),
            None if launcher == Launcher::Torchrun => Ok(Backend::Nccl),
            None => Ok(Backend::Mpi),
        }
    }

    /// Whether this backend trains on `device` (MPI moves host memory, NCCL GPU memory).
    pub fn check_device(self, device: Device) -> Result<(), InputError> {
        match (self, device.is_cuda()) {
            (Backend::Mpi, true) => Err(InputError::new(
                "the manifest trains on device: cuda, but these ranks joined over MPI, which moves host memory",
                Some(
                    "start GPU ranks with `pipe run --ranks N` (one per GPU), torchrun --no-python, or srun with PIPE_COLLECTIVE=nccl",
                ),
            )),
            (Backend::Nccl, false) => Err(InputError::new(
                "these ranks joined over NCCL (GPU memory), but the manifest trains on the CPU",
                Some(
                    "start CPU ranks with `pipe run --ranks N` or mpirun (MPI), or train with device: cuda",
                ),
            )),
            _ => Ok(()),
        }
    }
}

/// This process's membership of the job.
pub struct Ranks {
    comm: Box<dyn Collective + Send + Sync>,
    backend: Backend,
}

/// What rank 0 asks of the others.
#[derive(Serialize, Deserialize)]
enum Order {
    /// Join the training of `stage`.
    Train(Box<TrainOrder>),
    /// Rank 0's command has ended: exit.
    Done,
}

#[derive(Serialize, Deserialize)]
struct TrainOrder {
    stage: String,
    /// The store's root (a shared filesystem across machines) and the token objects in it.
    store: PathBuf,
    train: Hash,
    val: Hash,
    state: ReplicaState,
    /// Where every rank trains (each GPU rank on its own GPU).
    device: Device,
}

impl Ranks {
    /// Joins the job the launcher started, over MPI or NCCL (see [`Backend::choose`]), and
    /// checks that the collective sees what the launcher said.
    pub fn join(placement: Placement) -> Result<Ranks> {
        let var = std::env::var("PIPE_COLLECTIVE").ok();
        let backend = Backend::choose(placement.launcher, var.as_deref())?;
        let comm: Box<dyn Collective + Send + Sync> = match backend {
            Backend::Mpi => Box::new(Mpi::init()?),
            Backend::Nccl => Box::new(join_nccl(&placement)?),
        };
        if (comm.rank(), comm.world()) != (placement.rank, placement.world) {
            bail!(
                "{} started rank {} of {}, but {:?} sees rank {} of {}: this MPI does not know the launcher (for srun, try `srun --mpi=pmix`)",
                placement.launcher.name(),
                placement.rank,
                placement.world,
                backend,
                comm.rank(),
                comm.world()
            );
        }
        Ok(Ranks { comm, backend })
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    pub fn world(&self) -> usize {
        self.comm.world()
    }

    pub fn is_leader(&self) -> bool {
        self.comm.rank() == 0
    }

    /// Rank 0: brings the other ranks into the training `trainer` is about to run on the token
    /// objects `train` and `val` of `store`, and makes `trainer` one of the job's ranks.
    pub fn lead_training<'d>(
        &'d self,
        stage: &str,
        store: &Store,
        (train, val): (&Hash, &Hash),
        trainer: &mut Trainer<'d>,
        device: Device,
    ) -> Result<()> {
        let order = Order::Train(Box::new(TrainOrder {
            stage: stage.to_string(),
            store: store.root.clone(),
            train: train.clone(),
            val: val.clone(),
            state: trainer.replica_state(),
            device,
        }));
        self.send(&order)?;
        let joined = trainer.data_parallel(self.comm.as_ref());
        agree(self.comm.as_ref(), joined)?;
        trainer.share_state()
    }

    /// Rank 0: the other ranks exit.
    pub fn dismiss(&self) {
        if let Err(e) = self.send(&Order::Done) {
            tracing::warn!("could not dismiss the other ranks: {e:#}");
        }
    }

    fn send(&self, order: &Order) -> Result<()> {
        let mut bytes = serde_json::to_vec(order)?;
        self.comm.broadcast_bytes(&mut bytes)
    }

    /// A rank other than 0: carries out rank 0's orders until it is dismissed. A training that
    /// fails here is reported on this rank's stderr and the rank waits for the next order (rank 0
    /// fails the stage).
    pub fn follow(&self, step_timeout: Duration) -> Result<()> {
        let rank = self.comm.rank();
        loop {
            let mut bytes = Vec::new();
            self.comm.broadcast_bytes(&mut bytes)?;
            let order: Order = serde_json::from_slice(&bytes).context("reading rank 0's order")?;
            match order {
                Order::Done => return Ok(()),
                Order::Train(o) => {
                    let stage = o.stage.clone();
                    if let Err(e) = self.follow_training(*o, step_timeout) {
                        eprintln!("rank {rank}: stage `{stage}`: {e:#}");
                    }
                }
            }
        }
    }

    fn follow_training(&self, o: TrainOrder, step_timeout: Duration) -> Result<()> {
        let store = Store::at(&o.store);
        let maps = store
            .map(&o.train)
            .and_then(|t| Ok((t, store.map(&o.val)?)));
        let (train_map, val_map) = match maps {
            Ok(m) => m,
            Err(e) => return agree(self.comm.as_ref(), Err(e)),
        };
        let built = (|| {
            let mut tr = Trainer::replica(o.state, train_map.tokens()?, val_map.tokens()?)?;
            tr.use_device(o.device)?;
            tr.data_parallel(self.comm.as_ref())?;
            Ok(tr)
        })();
        let mut trainer = match built {
            Ok(t) => {
                agree(self.comm.as_ref(), Ok(()))?;
                t
            }
            Err(e) => return agree(self.comm.as_ref(), Err(e)),
        };
        trainer.share_state()?;
        trainer.after_each_batch(|| {
            train_map.release(0..usize::MAX);
            val_map.release(0..usize::MAX);
        });
        let watchdog = Watchdog::start(step_timeout, self.comm.rank());
        let beat = watchdog.beat();
        let r = trainer.run_streaming(&mut |_| {
            beat();
            Ok(())
        });
        drop(watchdog);
        r
    }
}

/// Joins an NCCL job: rank 0 makes NCCL's unique id and hands it to the others over TCP (see
/// `rendezvous`), then every rank creates its communicator on the GPU of its local rank.
fn join_nccl(p: &Placement) -> Result<Nccl> {
    let meeting = crate::launch::nccl_rendezvous(p, &|k| std::env::var(k).ok())?;
    let timeout = step_timeout()?;
    let id = if p.rank == 0 {
        let id = Nccl::unique_id()?;
        rendezvous::serve(&id, meeting.port, p.world, meeting.job, timeout)?;
        id
    } else {
        rendezvous::fetch(&meeting.address, p.rank, meeting.job, timeout)?
    };
    Nccl::join(p.rank, p.world, p.local_rank, &id)
}

/// Every rank's `local` result: an error here if any rank failed (this rank's own error, or
/// one naming how many others failed; theirs are on their stderr).
fn agree(comm: &dyn Collective, local: Result<()>) -> Result<()> {
    let mut failed = [if local.is_err() { 1.0 } else { 0.0 }];
    comm.all_reduce_sum_f64(&mut failed)?;
    local?;
    if failed[0] > 0.0 {
        bail!(
            "{} of the {} ranks could not start training (their errors are on their stderr)",
            failed[0] as usize,
            comm.world()
        );
    }
    Ok(())
}

/// Ends this process when training makes no progress for `timeout`: a rank stuck in a
/// collective (another rank hangs) would otherwise wait forever. Exiting makes the launcher stop
/// the job; the stage's last checkpoint is where `pipe resume` continues.
pub struct Watchdog {
    origin: Instant,
    /// Milliseconds from `origin` to the last beat.
    last: Arc<AtomicU64>,
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl Watchdog {
    pub fn start(timeout: Duration, rank: usize) -> Watchdog {
        let origin = Instant::now();
        let last = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (l, s) = (last.clone(), stop.clone());
        std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(200));
                let idle =
                    (origin.elapsed().as_millis() as u64).saturating_sub(l.load(Ordering::SeqCst));
                if idle > timeout.as_millis() as u64 && !s.load(Ordering::SeqCst) {
                    eprintln!(
                        "error: rank {rank}: no training step finished in {} s (another rank has hung or died): ending this rank; `pipe resume` continues from the last checkpoint (PIPE_STEP_TIMEOUT sets the bound)",
                        timeout.as_secs()
                    );
                    // At once: exit handlers could wait on the stuck collective.
                    // SAFETY: _exit has no preconditions; stderr is unbuffered.
                    unsafe { libc::_exit(1) };
                }
            }
        });
        Watchdog { origin, last, stop }
    }

    /// Call at each step: the bound restarts.
    pub fn beat(&self) -> impl Fn() + use<> {
        let (origin, last) = (self.origin, self.last.clone());
        move || last.store(origin.elapsed().as_millis() as u64, Ordering::SeqCst)
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// The step timeout: PIPE_STEP_TIMEOUT seconds, default 600.
pub fn step_timeout() -> Result<Duration> {
    match std::env::var("PIPE_STEP_TIMEOUT") {
        Err(_) => Ok(Duration::from_secs(600)),
        Ok(v) => match v.trim().parse::<u64>() {
            Ok(s) if s >= 1 => Ok(Duration::from_secs(s)),
            _ => bail!("PIPE_STEP_TIMEOUT={v:?}: expected a whole number of seconds >= 1"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_parallel_backends_follow_the_launcher_unless_told() {
        use Launcher::*;
        assert_eq!(Backend::choose(Torchrun, None).unwrap(), Backend::Nccl);
        assert_eq!(Backend::choose(OpenMpi, None).unwrap(), Backend::Mpi);
        assert_eq!(Backend::choose(Slurm, None).unwrap(), Backend::Mpi);
        assert_eq!(Backend::choose(Slurm, Some("nccl")).unwrap(), Backend::Nccl);
        assert_eq!(
            Backend::choose(Torchrun, Some("mpi")).unwrap(),
            Backend::Mpi
        );
        let e = Backend::choose(OpenMpi, Some("gloo"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("expected `mpi` (CPU ranks) or `nccl` (GPU ranks)"),
            "{e}"
        );
        let cuda = Device::Cuda(crate::gpt::device::Precision::F32);
        assert!(Backend::Nccl.check_device(cuda).is_ok());
        assert!(Backend::Mpi.check_device(Device::Cpu).is_ok());
        let e = Backend::Mpi.check_device(cuda).unwrap_err().to_string();
        assert!(e.contains("joined over MPI"), "{e}");
        let e = Backend::Nccl
            .check_device(Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(e.contains("trains on the CPU"), "{e}");
    }
}
