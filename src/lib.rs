//! `pipe`: declarative, reproducible GPT experiments. See ARCHITECTURE.md for the map.
//!
//! The runner's modules are private to the crate: its public surface is the command line
//! (`Cli`, `run`) and the few types the integration tests and `examples/` use, re-exported
//! below. So code that nothing calls warns.

mod bench;
mod cli;
mod clock;
mod compare;
mod curves;
mod data;
mod error;
mod exec;
mod hash;
mod key;
mod launch;
mod maintain;
mod manifest;
mod nanogpt_config;
mod plan;
mod plot;
mod ranks;
mod refs;
mod run;
mod show;
mod slurm;
mod stages;
mod store;
mod sweep;
mod tensorboard;
mod tokenizer;
mod ui;

/// The engine, its own crate (crates/gpt), under the name the runner has always used.
pub use pipe_gpt as gpt;

pub use bench::{config_m, config_s, time_training};
pub use cli::{Cli, error_json, is_input_error, run};
pub use curves::{Curve, read_curve};
pub use data::split::is_val;
pub use key::ENGINE_FORMAT;
pub use manifest::{Manifest, load as load_manifest};
pub use tensorboard::{EventWriter, frame as event_frame};
pub use tokenizer::Tokenizer;
