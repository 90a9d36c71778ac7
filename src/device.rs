//! Device selection. The CUDA engine sits behind the `cuda` cargo feature; without it (or without a
//! GPU) asking for `device: cuda` is a clear error, never a panic.

use anyhow::{Result, bail};

pub fn require_cuda() -> Result<()> {
    if !cfg!(feature = "cuda") {
        bail!(
            "device `cuda` was requested but this pipe was built without CUDA support; rebuild with `cargo build --release --features cuda`, or run on the CPU with `--set device=cpu`"
        );
    }
    bail!(
        "device `cuda`: the CUDA engine is not available in this build yet (see README, \"CUDA\"); run on the CPU with `--set device=cpu`"
    )
}
