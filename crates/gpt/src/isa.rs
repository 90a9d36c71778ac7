//! Which x86 vector instructions the CPU engine computes with: its one ISA path, picked once per
//! process from the CPU and the build. AVX-512 (F and DQ) when the CPU has it and the build has
//! the `avx512` feature (the default: gemm's `x86-v4` micro-kernels), else AVX2 with FMA, else
//! portable code (SSE2, the x86-64 baseline, or whatever another architecture has).
//!
//! Every kernel follows the same path: gemm dispatches its micro-kernels on the same test, and the
//! hand-written kernels (`math::simd_kernel!`) on [`Isa::active`]. To run the AVX2 path on an
//! AVX-512 machine, build without the feature (`cargo build --release --no-default-features`);
//! gemm offers no way to force it at run time.
//!
//! Bytes: the hand-written kernels give the same bits on every path (Rust never fuses a multiply and
//! an add on its own, and vector lanes do scalar code's IEEE operations in its order), but the GEMMs
//! do not (wider micro-kernels accumulate in another order). So a stage's output bytes depend on
//! the path: `pipe show` records it (a train stage's `cpu_isa`), and the golden test keeps a table
//! per path.

use serde::{Deserialize, Serialize};
use std::sync::OnceLock;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Isa {
    Portable,
    Avx2,
    Avx512,
}

impl Isa {
    /// The path this process computes with (detected once).
    pub fn active() -> Isa {
        static ACTIVE: OnceLock<Isa> = OnceLock::new();
        *ACTIVE.get_or_init(Isa::detect)
    }

    fn detect() -> Isa {
        #[cfg(target_arch = "x86_64")]
        {
            // DQ too (every AVX-512 CPU but Xeon Phi): 64-bit lane products for dropout's hash.
            if cfg!(feature = "avx512")
                && std::is_x86_feature_detected!("avx512f")
                && std::is_x86_feature_detected!("avx512dq")
            {
                return Isa::Avx512;
            }
            // gemm's AVX2 micro-kernels are chosen on `fma`; every CPU with FMA3 has AVX2.
            if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                return Isa::Avx2;
            }
        }
        Isa::Portable
    }

    /// Every path this process can run: `Portable` up to [`Isa::active`] (for tests that compare
    /// them).
    pub fn available() -> Vec<Isa> {
        [Isa::Portable, Isa::Avx2, Isa::Avx512]
            .into_iter()
            .filter(|i| *i <= Isa::active())
            .collect()
    }

    pub fn name(self) -> &'static str {
        match self {
            Isa::Portable => "portable",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
        }
    }
}
