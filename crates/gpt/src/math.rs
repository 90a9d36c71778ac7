//! Branch-free `exp` and `erf` for f32 that the compiler can vectorise (libm's are scalar calls and
//! were ~15% of a training step in GELU and softmax). Both are accurate to a few ulp, which the
//! finite-difference and transformers-parity tests confirm at the model level; the unit tests below
//! bound the error against libm directly.

/// `simd_kernel!(name, name_on, kernel, (args))` defines `name(args)`, which runs `kernel` (an
/// `#[inline(always)]` fn) compiled for the active ISA path ([`Isa::active`]): for AVX-512F
/// (16 lanes) or AVX2 (8 lanes) when the CPU has it, so the math in it vectorises (the default
/// x86-64 target has only SSE2). `name_on(isa, args)` runs a given path (tests compare them).
/// One source for every path; results are bit-identical across them: Rust never fuses
/// multiply-adds on its own, and vector lanes do the same IEEE operations as scalar code.
macro_rules! simd_kernel {
    ($name:ident, $name_on:ident, $kernel:ident, ($($arg:ident : $ty:ty),*) $(-> $ret:ty)?) => {
        #[allow(dead_code)]
        pub(crate) fn $name($($arg: $ty),*) $(-> $ret)? {
            $name_on($crate::isa::Isa::active(), $($arg),*)
        }

        /// Runs on `isa`, which must be one of `Isa::available()`.
        #[allow(dead_code)]
        pub(crate) fn $name_on(isa: $crate::isa::Isa, $($arg: $ty),*) $(-> $ret)? {
            assert!(isa <= $crate::isa::Isa::active(), "{isa:?} is not available here");
            #[cfg(target_arch = "x86_64")]
            {
                #[cfg(feature = "avx512")]
                #[target_feature(enable = "avx512f,avx512dq")]
                unsafe fn avx512($($arg: $ty),*) $(-> $ret)? {
                    $kernel($($arg),*)
                }
                #[target_feature(enable = "avx2")]
                unsafe fn avx2($($arg: $ty),*) $(-> $ret)? {
                    $kernel($($arg),*)
                }
                // SAFETY: `isa` is at most the active path, which the CPU supports.
                #[cfg(feature = "avx512")]
                if isa == $crate::isa::Isa::Avx512 {
                    return unsafe { avx512($($arg),*) };
                }
                if isa >= $crate::isa::Isa::Avx2 {
                    return unsafe { avx2($($arg),*) };
                }
            }
            $kernel($($arg),*)
        }
    };
}
pub(crate) use simd_kernel;

/// e^x, Cephes-style: x = n ln2 + r with |r| <= ln2/2, a degree-6 polynomial for e^r, then 2^n via
/// the exponent bits. Inputs below -87.3 give 0 (softmax's masked entries), above 88.3 saturate.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    let x = x.clamp(-87.3, 88.3);
    // n = round(x / ln 2) = floor(x * log2(e) + 0.5); `floor` is one instruction with SSE4.1/AVX.
    let nf = (x * std::f32::consts::LOG2_E + 0.5).floor();
    // r = x - n ln2, with ln2 split in two for precision.
    let r = x - nf * 0.693_359_4 + nf * 2.121_944_4e-4;
    let r2 = r * r;
    let p = ((((1.987_569_1e-4 * r + 1.398_2e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r
        + 0.166_666_65)
        * r
        + 0.5;
    let er = p * r2 + r + 1.0;
    // 2^n from the exponent bits: n + 127 is in 1..=255, so adding 2^23 puts it exactly in the
    // low mantissa bits, and the shift moves it into the exponent field. (`nf as i32` would be
    // Rust's saturating conversion, which does not vectorise: 16 scalar conversions per vector.)
    let biased = (nf + (127.0 + 8_388_608.0)).to_bits();
    er * f32::from_bits(biased << 23)
}

/// tanh(x) = (e^2x - 1) / (e^2x + 1). Absolute error ~1e-7 (relative error grows near 0, where GELU
/// only ever adds it to 1).
#[inline(always)]
pub fn tanh(x: f32) -> f32 {
    let e = exp(2.0 * x);
    (e - 1.0) / (e + 1.0)
}

/// erf(x) as a rational function x·P(x²)/Q(x²) on [-4, 4] (|erf| rounds to 1 beyond), the form used by
/// Eigen and XLA for float.
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let mut p = x2 * -2.726_142_3e-10 + 2.770_681_4e-8;
    p = x2 * p + -2.101_024e-6;
    p = x2 * p + -5.692_506_4e-5;
    p = x2 * p + -7.349_906_3e-4;
    p = x2 * p + -2.954_6e-3;
    p = x2 * p + -1.609_603_3e-2;
    let mut q = x2 * -1.456_607_2e-5 + -2.133_740_6e-4;
    q = x2 * q + -1.682_827e-3;
    q = x2 * q + -7.373_329_3e-3;
    q = x2 * q + -1.426_474e-2;
    x * p / q
}

/// Sums and maxima keep [`LANES`] partial results: lane `j` takes elements `j`, `j + 16`, ... in
/// order (the last `len % 16` elements go to lanes `0..`), then the lanes are combined pairwise
/// (16 -> 8 -> 4 -> 2 -> 1). A sequential sum is one long dependency chain (4 cycles per element
/// in layer norm and softmax); sixteen lanes vectorise, and they are sixteen on every ISA path (one
/// zmm register, two ymm or four xmm), so every path gives the same bits.
pub const LANES: usize = 16;

/// `sum over i of f(a[i], b[i], c[i])` in [`LANES`] lanes; the slices must have equal lengths.
#[inline(always)]
pub fn sum3(a: &[f32], b: &[f32], c: &[f32], f: impl Fn(f32, f32, f32) -> f32) -> f32 {
    let n = a.len();
    let (b, c) = (&b[..n], &c[..n]);
    let full = n / LANES * LANES;
    let mut acc = [0.0f32; LANES];
    for ((ca, cb), cc) in a[..full]
        .chunks_exact(LANES)
        .zip(b[..full].chunks_exact(LANES))
        .zip(c[..full].chunks_exact(LANES))
    {
        for j in 0..LANES {
            acc[j] += f(ca[j], cb[j], cc[j]);
        }
    }
    for (j, ((&x, &y), &z)) in a[full..].iter().zip(&b[full..]).zip(&c[full..]).enumerate() {
        acc[j] += f(x, y, z);
    }
    combine(acc, |x, y| x + y)
}

/// `sum of x` in [`LANES`] lanes.
#[inline(always)]
pub fn sum(x: &[f32]) -> f32 {
    sum3(x, x, x, |v, _, _| v)
}

/// `sum of a[i] * b[i]` in [`LANES`] lanes.
#[inline(always)]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    sum3(a, b, a, |x, y, _| x * y)
}

/// The largest element (NaNs ignored, -inf for an empty slice), in [`LANES`] lanes.
#[inline(always)]
pub fn max(x: &[f32]) -> f32 {
    let full = x.len() / LANES * LANES;
    let mut acc = [f32::NEG_INFINITY; LANES];
    for chunk in x[..full].chunks_exact(LANES) {
        for j in 0..LANES {
            acc[j] = acc[j].max(chunk[j]);
        }
    }
    for (j, &v) in x[full..].iter().enumerate() {
        acc[j] = acc[j].max(v);
    }
    combine(acc, f32::max)
}

/// `sum of x[i]^2` (the gradient norm's sum): blocks of 256 elements summed in f32 [`LANES`]
/// lanes (16 squares per lane), the blocks' sums added in order in f64. (An all-f64 sum did not
/// vectorise: 2% of a training step in config S.)
#[inline(always)]
pub fn square_sum_f64(x: &[f32]) -> f64 {
    x.chunks(256)
        .map(|block| sum3(block, block, block, |v, _, _| v * v) as f64)
        .fold(0.0, |total, s| total + s)
}

/// The lanes, combined pairwise.
#[inline(always)]
fn combine<T: Copy>(mut acc: [T; LANES], op: impl Fn(T, T) -> T) -> T {
    let mut width = LANES;
    while width > 1 {
        width /= 2;
        for j in 0..width {
            acc[j] = op(acc[j], acc[j + width]);
        }
    }
    acc[0]
}

#[cfg(test)]
mod tests {
    #[test]
    fn lane_sums_follow_their_documented_order() {
        let x: Vec<f32> = (0..37).map(|i| 1.0 + i as f32 * 1e-7).collect();
        let mut lanes = [0.0f32; super::LANES];
        for (i, v) in x.iter().enumerate() {
            lanes[if i < 32 { i % 16 } else { i - 32 }] += v;
        }
        let mut w = 16;
        while w > 1 {
            w /= 2;
            for j in 0..w {
                lanes[j] += lanes[j + w];
            }
        }
        assert_eq!(super::sum(&x).to_bits(), lanes[0].to_bits());
        let exact: f64 = x.iter().map(|&v| v as f64).sum();
        assert!((super::sum(&x) as f64 - exact).abs() < 1e-5);
        assert_eq!(super::dot(&x, &x), super::sum3(&x, &x, &x, |a, b, _| a * b));
        assert_eq!(super::max(&x), x[36]);
        assert_eq!(super::max(&[f32::NAN, -3.0, -2.0]), -2.0);
        assert_eq!(super::max(&[]), f32::NEG_INFINITY);
        assert_eq!(super::sum(&[]), 0.0);
        let g: Vec<f32> = (0..100_003)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) * 1e-3)
            .collect();
        let exact: f64 = g.iter().map(|&v| v as f64 * v as f64).sum();
        let ours = super::square_sum_f64(&g);
        assert!(((ours - exact) / exact).abs() < 1e-6, "{ours} vs {exact}");
    }

    #[test]
    fn exp_matches_libm() {
        let mut worst = 0.0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let (a, b) = (super::exp(x) as f64, (x as f64).exp());
            worst = worst.max(((a - b) / b).abs());
            x += 0.0137;
        }
        assert!(worst < 4e-7, "max relative error {worst:e}");
        assert!((0.0..1e-37).contains(&super::exp(-1000.0)));
        assert!(super::exp(1000.0).is_finite());
    }

    #[test]
    fn tanh_matches_std() {
        let mut worst = 0.0f64;
        let mut x = -50.0f32;
        while x < 50.0 {
            worst = worst.max((super::tanh(x) as f64 - (x as f64).tanh()).abs());
            x += 0.00377;
        }
        assert!(worst < 3e-7, "max absolute error {worst:e}");
    }

    #[test]
    fn erf_matches_libm() {
        let mut worst = 0.0f64;
        let mut x = -6.0f32;
        while x < 6.0 {
            worst = worst.max((super::erf(x) as f64 - libm::erf(x as f64)).abs());
            x += 0.00123;
        }
        assert!(worst < 5e-7, "max absolute error {worst:e}");
    }
}
