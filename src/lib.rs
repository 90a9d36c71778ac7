//! `pipe`: declarative, reproducible GPT experiments. See ARCHITECTURE.md for the map.

pub mod bench;
pub mod cli;
pub mod clock;
pub mod compare;
pub mod curves;
pub mod data;
pub mod error;
pub mod exec;
/// The engine, its own crate (crates/gpt), under the name the runner has always used.
pub use pipe_gpt as gpt;
pub mod hash;
pub mod key;
pub mod launch;
pub mod manifest;
pub mod nanogpt_config;
pub mod plan;
pub mod plot;
pub mod ranks;
pub mod refs;
pub mod run;
pub mod show;
pub mod slurm;
pub mod stages;
pub mod store;
pub mod sweep;
pub mod tensorboard;
pub mod tokenizer;
pub mod ui;
