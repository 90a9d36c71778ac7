//! Runs: each `pipe run` gets an id and a folder `runs/<id>/` in the store holding
//! `plan.json` (the resolved manifest: what `pipe resume` re-executes), `log.jsonl` (an append-only
//! event log, each line flushed and fsynced as it happens) and `lock` (held while the process lives).
//!
//! A run's status is read from its log: the `run_finished` event if there is one; otherwise
//! `running` while some process holds the lock, and `interrupted` once none does (killed or crashed),
//! so a dead run never shows as running forever.
//!
//! `logged_events` reads a log without probing its lock (`refs.rs` reads what logs reference
//! with it).

mod log;
mod record;
mod status;

pub use crate::clock::{new_run_id, utc_now};
pub use log::{Executor, RunEvent, RunLog, SweepMember, logged_events};
pub use record::{RunRecord, list_run_ids, read_plan};
pub use status::{RunStatus, StageStatus, finished_status};
