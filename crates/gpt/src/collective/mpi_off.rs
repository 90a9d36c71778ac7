//! Stands in for the MPI backend in a build without the `mpi` feature: the same API around an
//! uninhabited type, so callers need no `cfg`, and joining an MPI job is a clear error.

use super::Collective;
use anyhow::{Result, bail};

pub enum Mpi {}

/// What to do about a binary built without MPI.
pub const BUILD_WITH_MPI: &str = "this pipe was built without MPI: install Debian's `openmpi-bin` and `libopenmpi-dev` (and `libclang-dev`, which the mpi crate's build uses), then build with `cargo build --release --features mpi`";

impl Mpi {
    pub fn init() -> Result<Mpi> {
        bail!("{BUILD_WITH_MPI}")
    }

    pub fn abort(&self, _: i32) -> ! {
        match *self {}
    }
}

impl Collective for Mpi {
    fn rank(&self) -> usize {
        match *self {}
    }
    fn world(&self) -> usize {
        match *self {}
    }
    fn all_reduce_sum(&self, _: &mut [f32]) -> Result<()> {
        match *self {}
    }
    fn all_reduce_sum_f64(&self, _: &mut [f64]) -> Result<()> {
        match *self {}
    }
    fn reduce_scatter_sum(&self, _: &[f32], _: &mut [f32]) -> Result<()> {
        match *self {}
    }
    fn all_gather(&self, _: &[f32], _: &mut [f32]) -> Result<()> {
        match *self {}
    }
    fn gather(&self, _: &[f32], _: &mut [f32]) -> Result<()> {
        match *self {}
    }
    fn broadcast(&self, _: &mut [f32]) -> Result<()> {
        match *self {}
    }
    fn broadcast_bytes(&self, _: &mut Vec<u8>) -> Result<()> {
        match *self {}
    }
    fn barrier(&self) -> Result<()> {
        match *self {}
    }
}
