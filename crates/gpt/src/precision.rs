//! The format of the GPU's matrix products, shared by `device.rs` (which reads it from the
//! manifest) and the CUDA engine (which uses it), so neither imports the other for it.

/// The format of the GPU's matrix products. Weights, activations, gradients and optimiser state
/// are f32 in every case; only cuBLAS's multiplications change.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Precision {
    /// Plain f32 products: the reference.
    F32,
    /// TF32 tensor cores: inputs rounded to a 10-bit mantissa, f32 accumulation.
    Tf32,
    /// bf16 tensor cores: inputs rounded to bf16 (8-bit mantissa), f32 accumulation.
    Bf16,
}
