//! `pipe`: declarative, reproducible GPT experiments. See ARCHITECTURE.md for the map.

pub mod gpt;
