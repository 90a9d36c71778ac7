//! A run's log: the events (`RunEvent`) and the open, appending `RunLog`.

use super::record::run_dir;
use super::{RunStatus, StageStatus};
use crate::clock::new_run_id;
use crate::manifest::StageKind;
use crate::store::{Hash, Key, Outputs, Store};
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::sync::Mutex;

/// Where a run's stages execute: in the run's own process, or as Slurm jobs (`src/slurm/`).
/// Logged in `run_started`, so `pipe resume` continues a run the way it started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Executor {
    #[default]
    Local,
    Slurm,
}

impl Executor {
    fn is_local(&self) -> bool {
        *self == Executor::Local
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum RunEvent {
    RunStarted {
        time: String,
        command: String,
        manifest: String,
        name: String,
        pid: u32,
        /// Absent (local) in logs written before there was a choice.
        #[serde(default, skip_serializing_if = "Executor::is_local")]
        executor: Executor,
        /// The sweep this run is a variant of, and the variant's overrides (`--set` form).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sweep: Option<SweepMember>,
    },
    /// A stage handed to Slurm as job `job_id` (script and log paths in the store's run folder;
    /// `script` is empty for a job submitted by hand, logged by the job itself).
    StageSubmitted {
        time: String,
        stage: String,
        kind: StageKind,
        job_id: String,
        script: String,
        log: String,
    },
    StageStarted {
        time: String,
        stage: String,
        kind: StageKind,
        key: Key,
    },
    StageFinished {
        time: String,
        stage: String,
        kind: StageKind,
        key: Key,
        status: StageStatus,
        outputs: Outputs,
        metrics: serde_json::Value,
        seconds: f64,
    },
    StageFailed {
        time: String,
        stage: String,
        kind: StageKind,
        key: Option<Key>,
        error: String,
    },
    StageSkipped {
        time: String,
        stage: String,
        kind: StageKind,
        reason: String,
    },
    Eval {
        time: String,
        stage: String,
        iter: u64,
        train_loss: f32,
        val_loss: f32,
    },
    Checkpoint {
        time: String,
        stage: String,
        iter: u64,
        hash: Hash,
        keep: bool,
    },
    RunFinished {
        time: String,
        status: RunStatus,
    },
}

/// A run's place in a sweep (`src/sweep.rs`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct SweepMember {
    pub sweep_id: String,
    pub overrides: Vec<String>,
}

/// An open run: appends events to its log. Shared between stage threads.
pub struct RunLog {
    pub id: String,
    pub dir: PathBuf,
    file: Mutex<File>,
    /// The run's flock; `None` for a Slurm job appending to a run its submitter holds.
    _lock: Option<File>,
}

impl RunLog {
    /// Creates a new run with its plan snapshot.
    pub fn create(store: &Store, plan_json: &serde_json::Value) -> Result<RunLog> {
        // create_dir (not _all) fails if the id exists: two runs never share a folder.
        let (id, dir) = loop {
            let id = new_run_id();
            let dir = store.root.join("runs").join(&id);
            match fs::create_dir(&dir) {
                Ok(()) => break (id, dir),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => {
                    return Err(e)
                        .with_context(|| format!("creating the run folder {}", dir.display()));
                }
            }
        };
        crate::store::write_atomic(
            &store.root.join("tmp"),
            &dir.join("plan.json"),
            &serde_json::to_vec_pretty(plan_json)?,
        )?;
        Self::open(store, &id)
    }

    /// Opens an existing run for appending (resume). Fails if another process is running it.
    pub fn open(store: &Store, id: &str) -> Result<RunLog> {
        let dir = run_dir(store, id)?;
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join("lock"))
            .with_context(|| format!("opening {}", dir.join("lock").display()))?;
        // `show` and `gc` probe this lock for a moment; retry before concluding it is held.
        let held = (0..20).all(|_| {
            let busy = lock.try_lock().is_err();
            if busy {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            busy
        });
        if held {
            anyhow::bail!(
                "run {id} is still running in another process; wait for it or stop it first"
            );
        }
        Self::append_to(dir, id, Some(lock))
    }

    /// Opens a run's log for appending without its lock: a Slurm job (`pipe run-stage`) logs
    /// its stage's events while the submitting process holds the run. Each event is one
    /// `O_APPEND` write, so lines from several processes do not interleave.
    pub fn attach(store: &Store, id: &str) -> Result<RunLog> {
        let dir = run_dir(store, id)?;
        Self::append_to(dir, id, None)
    }

    fn append_to(dir: PathBuf, id: &str, lock: Option<File>) -> Result<RunLog> {
        let log_path = dir.join("log.jsonl");
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("opening {}", log_path.display()))?;
        // A line torn by a kill must not swallow the next event: start on a fresh line.
        let text = fs::read(dir.join("log.jsonl"))?;
        if text.last().is_some_and(|&b| b != b'\n') {
            file.write_all(b"\n")?;
        }
        Ok(RunLog {
            id: id.to_string(),
            dir,
            file: Mutex::new(file),
            _lock: lock,
        })
    }

    /// The run's name (its manifest's `name`, from plan.json); `None` if plan.json cannot be read.
    pub fn name(&self) -> Option<String> {
        let plan: serde_json::Value =
            serde_json::from_slice(&fs::read(self.dir.join("plan.json")).ok()?).ok()?;
        plan["name"].as_str().map(String::from)
    }

    /// Appends one event durably (write, flush, fsync).
    pub fn append(&self, ev: &RunEvent) -> Result<()> {
        tracing::trace!(run = %self.id, event = ?ev, "run log");
        let mut line = serde_json::to_vec(ev)?;
        line.push(b'\n');
        let mut f = self.file.lock().expect("log mutex");
        f.write_all(&line)
            .and_then(|()| f.sync_data())
            .with_context(|| format!("appending to {}", self.dir.join("log.jsonl").display()))
    }
}

pub(super) fn event_time(e: &RunEvent) -> &str {
    match e {
        RunEvent::RunStarted { time, .. }
        | RunEvent::StageSubmitted { time, .. }
        | RunEvent::StageStarted { time, .. }
        | RunEvent::StageFinished { time, .. }
        | RunEvent::StageFailed { time, .. }
        | RunEvent::StageSkipped { time, .. }
        | RunEvent::Eval { time, .. }
        | RunEvent::Checkpoint { time, .. }
        | RunEvent::RunFinished { time, .. } => time.as_str(),
    }
}

/// A run's events, read straight from its log in `dir` (no lock probing: retention reads logs
/// while runs are live). A missing or torn log gives what it has.
pub fn logged_events(dir: &std::path::Path) -> Vec<RunEvent> {
    std::fs::read_to_string(dir.join("log.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}
