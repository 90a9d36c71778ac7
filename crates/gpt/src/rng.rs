//! Deterministic random numbers for initialisation, batch sampling, dropout and generation.
//!
//! Hand-written rather than the `rand` crate because the state has to go into checkpoints (a u64)
//! and the streams must never change between crate versions: a checkpoint written today has to resume
//! bit-identically next year. SplitMix64 is tiny, fast and passes BigCrush.

use serde::{Deserialize, Serialize};

/// A SplitMix64 stream. Its whole state is one `u64`, saved in checkpoints.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rng {
    pub state: u64,
}

const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

/// The SplitMix64 finaliser: a strong 64-bit mixing function.
#[inline(always)]
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng {
            state: mix64(seed ^ 0x5eed),
        }
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(GOLDEN);
        mix64(self.state)
    }

    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform integer in [0, n). Multiply-shift keeps the bias below 2^-32 for our n.
    pub fn below(&mut self, n: usize) -> usize {
        assert!(n > 0);
        ((self.next_u64() as u128 * n as u128) >> 64) as usize
    }

    /// Standard normal (Box-Muller; one value per call keeps the stream simple to reason about).
    pub fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.uniform(); // (0, 1]
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }
}

/// Counter-based dropout masks: whether element `index` at dropout site `site` is kept. Stateless, so
/// forward and backward recompute the same mask, and any thread can evaluate any element.
#[inline(always)]
pub fn dropout_keep(seed: u64, site: u64, index: usize, p: f32) -> bool {
    let h = mix64(
        seed ^ mix64(
            site.wrapping_mul(GOLDEN) ^ (index as u64).wrapping_mul(0xD6E8_FEB8_6659_FD93),
        ),
    );
    ((h >> 40) as f32) * (1.0 / (1u64 << 24) as f32) >= p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_reproducible_and_roughly_uniform() {
        let mut a = Rng::new(7);
        let mut b = Rng::new(7);
        let xs: Vec<u64> = (0..100).map(|_| a.next_u64()).collect();
        let ys: Vec<u64> = (0..100).map(|_| b.next_u64()).collect();
        assert_eq!(xs, ys);
        let mut r = Rng::new(1);
        let mean: f64 = (0..20000).map(|_| r.normal()).sum::<f64>() / 20000.0;
        assert!(mean.abs() < 0.03, "normal mean {mean}");
        let kept = (0..20000).filter(|&i| dropout_keep(3, 9, i, 0.25)).count();
        assert!((kept as f64 / 20000.0 - 0.75).abs() < 0.02, "kept {kept}");
    }
}
