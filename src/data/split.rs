//! Which documents go to validation. nanoGPT's openwebtext/prepare.py uses Hugging Face's
//! `train_test_split(test_size=0.0005, seed=2357, shuffle=True)`; here each document is chosen on
//! its own, from a hash of (seed, document index): reproducible, independent of the thread count and
//! of how the corpus is cut into files, and decided without knowing how many documents there are
//! (so the corpus is read once, as a stream).

/// Document `index` (0-based, in corpus order) goes to validation with probability `val_fraction`.
pub fn is_val(seed: u64, index: u64, val_fraction: f64) -> bool {
    let h = mix(seed ^ mix(index.wrapping_add(0x9E37_79B9_7F4A_7C15)));
    // The top 53 bits as a uniform number in [0, 1).
    ((h >> 11) as f64) * (1.0 / (1u64 << 53) as f64) < val_fraction
}

/// SplitMix64's finaliser (a bijection on u64 with good avalanche).
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fraction_and_seed() {
        let n = 200_000;
        let val = (0..n).filter(|&i| is_val(2357, i, 0.01)).count();
        assert!((1800..2200).contains(&val), "{val}");
        let a: Vec<bool> = (0..1000).map(|i| is_val(1, i, 0.5)).collect();
        let b: Vec<bool> = (0..1000).map(|i| is_val(2, i, 0.5)).collect();
        assert_ne!(a, b);
        assert_eq!(a, (0..1000).map(|i| is_val(1, i, 0.5)).collect::<Vec<_>>());
        // Pinned: changing this function changes every prepared multi-document data set.
        let first: Vec<u64> = (0..200).filter(|&i| is_val(2357, i, 0.05)).collect();
        assert_eq!(first, PINNED);
    }

    const PINNED: &[u64] = &[22, 45, 107, 112, 120, 160, 163, 166];
}
