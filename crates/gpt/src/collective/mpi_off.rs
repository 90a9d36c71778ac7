//! Stands in for the MPI backend in a build without the `mpi` feature: the same API around an
//! uninhabited type, so callers need no `cfg`, and joining an MPI job is a clear error.

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

crate::collective::uninhabited_collective!(Mpi);
