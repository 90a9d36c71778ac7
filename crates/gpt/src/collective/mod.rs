//! The collectives data-parallel training uses, behind one interface ([`Collective`]), with the
//! backends that implement it: [`Single`] (world size 1, no communication); with the `mpi`
//! feature, `Mpi` (Open MPI or any MPI through the `mpi` crate, rsmpi), for CPU ranks; and with
//! the `cuda` feature, [`Nccl`] (in `cuda/nccl.rs`, beside the GPU memory it works on), for GPU
//! ranks. Every rank calls the same collectives in the same order; a rank that stops calling
//! them stops the others (see the `ranks` module for how a stage ends on every rank).
//!
//! pipe writes no communication of its own: what moves between processes is MPI's or NCCL's.
//! The one exception is NCCL's 128-byte unique id, which [`rendezvous`] hands from rank 0 to the
//! others over TCP (bounded), as torchrun's store does; [`nccl_library`] finds libnccl.so.2.

pub mod nccl_library;
pub mod rendezvous;

pub use crate::cuda::Nccl;

#[cfg(feature = "mpi")]
pub mod mpi;
#[cfg(not(feature = "mpi"))]
#[path = "mpi_off.rs"]
pub mod mpi;

use anyhow::Result;

/// One process's view of a job of `world()` ranks.
pub trait Collective {
    fn rank(&self) -> usize;
    fn world(&self) -> usize;
    /// Element-wise sum over the ranks, in place, on every rank.
    fn all_reduce_sum(&self, buf: &mut [f32]) -> Result<()>;
    /// Like [`Collective::all_reduce_sum`] for f64 (losses and norms, summed in f64).
    fn all_reduce_sum_f64(&self, buf: &mut [f64]) -> Result<()>;
    /// Sums `send` (world × `recv.len()` elements) over the ranks; rank r receives the r-th block.
    fn reduce_scatter_sum(&self, send: &[f32], recv: &mut [f32]) -> Result<()>;
    /// Concatenates every rank's `send` in rank order into `recv` (world × `send.len()`).
    fn all_gather(&self, send: &[f32], recv: &mut [f32]) -> Result<()>;
    /// Like [`Collective::all_gather`], into rank 0's `recv` only (the others' `recv` is unused
    /// and may be empty).
    fn gather(&self, send: &[f32], recv: &mut [f32]) -> Result<()>;
    /// Rank 0's `buf` on every rank.
    fn broadcast(&self, buf: &mut [f32]) -> Result<()>;
    /// Rank 0's bytes on every rank (the length travels first, so only rank 0's `buf` matters).
    fn broadcast_bytes(&self, buf: &mut Vec<u8>) -> Result<()>;
    /// Returns once every rank has called it.
    fn barrier(&self) -> Result<()>;
    /// The NCCL communicator behind this collective, for buffers in GPU memory (`None` for the
    /// host backends).
    fn nccl(&self) -> Option<&Nccl> {
        None
    }
}

/// `impl Collective` for an uninhabited stand-in (`mpi_off.rs`, `cuda_off.rs`): no value exists,
/// so no method can be called.
#[allow(unused_macros)] // unused when both the `mpi` and `cuda` features are on
macro_rules! uninhabited_collective {
    ($t:ty) => {
        impl $crate::collective::Collective for $t {
            fn rank(&self) -> usize {
                match *self {}
            }
            fn world(&self) -> usize {
                match *self {}
            }
            fn all_reduce_sum(&self, _: &mut [f32]) -> anyhow::Result<()> {
                match *self {}
            }
            fn all_reduce_sum_f64(&self, _: &mut [f64]) -> anyhow::Result<()> {
                match *self {}
            }
            fn reduce_scatter_sum(&self, _: &[f32], _: &mut [f32]) -> anyhow::Result<()> {
                match *self {}
            }
            fn all_gather(&self, _: &[f32], _: &mut [f32]) -> anyhow::Result<()> {
                match *self {}
            }
            fn gather(&self, _: &[f32], _: &mut [f32]) -> anyhow::Result<()> {
                match *self {}
            }
            fn broadcast(&self, _: &mut [f32]) -> anyhow::Result<()> {
                match *self {}
            }
            fn broadcast_bytes(&self, _: &mut Vec<u8>) -> anyhow::Result<()> {
                match *self {}
            }
            fn barrier(&self) -> anyhow::Result<()> {
                match *self {}
            }
        }
    };
}
#[allow(unused_imports)]
pub(crate) use uninhabited_collective;

/// Element-wise mean over the ranks: [`Collective::all_reduce_sum`], then a division.
pub fn all_reduce_mean(c: &dyn Collective, buf: &mut [f32]) -> Result<()> {
    c.all_reduce_sum(buf)?;
    let n = c.world() as f32;
    buf.iter_mut().for_each(|v| *v /= n);
    Ok(())
}

/// World size 1: every collective is the identity.
#[derive(Clone, Copy, Debug, Default)]
pub struct Single;

impl Collective for Single {
    fn rank(&self) -> usize {
        0
    }
    fn world(&self) -> usize {
        1
    }
    fn all_reduce_sum(&self, _: &mut [f32]) -> Result<()> {
        Ok(())
    }
    fn all_reduce_sum_f64(&self, _: &mut [f64]) -> Result<()> {
        Ok(())
    }
    fn reduce_scatter_sum(&self, send: &[f32], recv: &mut [f32]) -> Result<()> {
        recv.copy_from_slice(&send[..recv.len()]);
        Ok(())
    }
    fn all_gather(&self, send: &[f32], recv: &mut [f32]) -> Result<()> {
        recv.copy_from_slice(send);
        Ok(())
    }
    fn gather(&self, send: &[f32], recv: &mut [f32]) -> Result<()> {
        recv.copy_from_slice(send);
        Ok(())
    }
    fn broadcast(&self, _: &mut [f32]) -> Result<()> {
        Ok(())
    }
    fn broadcast_bytes(&self, _: &mut Vec<u8>) -> Result<()> {
        Ok(())
    }
    fn barrier(&self) -> Result<()> {
        Ok(())
    }
}

/// How a parameter buffer of `len` elements is split for ZeRO-1: `world` shards of `shard`
/// elements each, the last padded with zeros (so `shard * world >= len`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shards {
    pub len: usize,
    pub world: usize,
    pub shard: usize,
}

impl Shards {
    pub fn new(len: usize, world: usize) -> Shards {
        Shards {
            len,
            world,
            shard: len.div_ceil(world),
        }
    }

    /// The padded length: `shard * world`.
    pub fn padded(&self) -> usize {
        self.shard * self.world
    }

    /// Rank `r`'s elements of the unpadded buffer (empty or short for the last ranks).
    pub fn range(&self, r: usize) -> std::ops::Range<usize> {
        let start = (r * self.shard).min(self.len);
        start..((r + 1) * self.shard).min(self.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_cover_the_buffer_once_with_padding_at_the_end() {
        let s = Shards::new(7, 2);
        assert_eq!((s.shard, s.padded()), (4, 8));
        assert_eq!((s.range(0), s.range(1)), (0..4, 4..7));
        let s = Shards::new(2, 4);
        assert_eq!(s.shard, 1);
        assert_eq!(
            (0..4).map(|r| s.range(r)).collect::<Vec<_>>(),
            vec![0..1, 1..2, 2..2, 2..2]
        );
    }

    #[test]
    fn single_is_the_identity() {
        let c = Single;
        let mut a = vec![1.0, 2.0];
        c.all_reduce_sum(&mut a).unwrap();
        all_reduce_mean(&c, &mut a).unwrap();
        assert_eq!(a, vec![1.0, 2.0]);
        let mut r = vec![0.0; 2];
        c.reduce_scatter_sum(&[3.0, 4.0], &mut r).unwrap();
        assert_eq!(r, vec![3.0, 4.0]);
    }
}
