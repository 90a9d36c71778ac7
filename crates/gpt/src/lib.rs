//! The GPT engine: nanoGPT's model written out explicitly, llm.c style. One parameter buffer with
//! named views ([`params`]), layers as forward/backward pairs ([`ops`]), preallocated activations
//! ([`model`]), AdamW and the LR schedule ([`optim`]), the training loop ([`train`]), generation with
//! a KV cache ([`sample`]), checkpoints ([`checkpoint`]) and Hugging Face import/export ([`hf`]). The same model on an NVIDIA GPU
//! is [`cuda`] (the `cuda` feature; a stand-in without it), and [`device`] picks one for a stage.

pub mod attention;
mod block;
pub mod checkpoint;
pub mod collective;
pub mod config;
#[cfg(feature = "cuda")]
pub mod cuda;
#[cfg(not(feature = "cuda"))]
#[path = "cuda_off.rs"]
pub mod cuda;
pub mod device;
pub mod engine;
pub mod hf;
pub mod isa;
pub mod layers;
pub mod math;
pub mod matmul;
pub mod memory;
pub mod model;
pub mod nanogpt;
pub mod ops;
pub mod optim;
pub mod params;
pub mod precision;
pub mod rng;
pub mod sample;
pub mod train;

pub use checkpoint::Checkpoint;
pub use config::{Gelu, GptConfig};
pub use model::{DropoutPlan, Gpt};
pub use train::{TrainConfig, Trainer};
