//! A data-parallel job's ranks: rank 0 runs the command (the plan, the store, the run log, every
//! stage), and the other ranks follow it. When rank 0 trains, it sends the others an order with
//! what they need to hold the same trainer (the token objects' paths in the shared store, the
//! trainer's state, then its tensors), and every rank runs the training loop with its share of
//! each batch ([`crate::gpt::train`]). Only rank 0 writes anything. When rank 0's command ends,
//! it dismisses them.
//!
//! Orders travel as JSON through the collective's `broadcast_bytes`, which waits without spinning
//! (a follower idles while rank 0 prepares data). A rank that dies ends the job: mpirun (or srun)
//! then stops every rank. A rank that hangs is bounded by the step timeout (see [`Watchdog`]).

use crate::gpt::collective::Collective;
use crate::gpt::collective::mpi::Mpi;
use crate::gpt::train::{ReplicaState, Trainer};
use crate::hash::Hash;
use crate::launch::Placement;
use crate::store::Store;
use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// This process's membership of the job.
pub struct Ranks {
    comm: Mpi,
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
}

impl Ranks {
    /// Joins the job the launcher started (MPI_Init), and checks that MPI sees what the launcher
    /// said.
    pub fn join(placement: Placement) -> Result<Ranks> {
        let comm = Mpi::init()?;
        if (comm.rank(), comm.world()) != (placement.rank, placement.world) {
            bail!(
                "{} started rank {} of {}, but MPI sees rank {} of {}: this MPI does not know the launcher (for srun, try `srun --mpi=pmix`; for torchrun, ranks need the NCCL backend)",
                placement.launcher.name(),
                placement.rank,
                placement.world,
                comm.rank(),
                comm.world()
            );
        }
        Ok(Ranks { comm })
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
    ) -> Result<()> {
        let order = Order::Train(Box::new(TrainOrder {
            stage: stage.to_string(),
            store: store.root.clone(),
            train: train.clone(),
            val: val.clone(),
            state: trainer.replica_state(),
        }));
        self.send(&order)?;
        let joined = trainer.data_parallel(&self.comm);
        agree(&self.comm, joined)?;
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
            Err(e) => return agree(&self.comm, Err(e)),
        };
        let built = (|| {
            let mut tr = Trainer::replica(o.state, train_map.tokens()?, val_map.tokens()?)?;
            tr.data_parallel(&self.comm)?;
            Ok(tr)
        })();
        let mut trainer = match built {
            Ok(t) => {
                agree(&self.comm, Ok(()))?;
                t
            }
            Err(e) => return agree(&self.comm, Err(e)),
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
                    std::process::exit(1);
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
