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

use crate::clock::parse_utc;
pub use crate::clock::{new_run_id, utc_now};
use crate::store::{Hash, Key, Outputs, Store};
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::sync::Mutex;

/// A status enum, its `as_str` (the log's and `--json`'s string) and `ALL` (every variant), from
/// one list, so no list of them can leave one out.
macro_rules! status_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident => $text:literal,)* }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
        #[serde(rename_all = "kebab-case")]
        pub enum $name {
            $($(#[$vmeta])* $variant,)*
        }

        impl $name {
            /// Every status, in declaration order.
            pub const ALL: &[$name] = &[$($name::$variant),*];

            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)*
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.pad(self.as_str())
            }
        }
    };
}

status_enum!(
    /// A stage's status. A run logs `executed`, `cached`, `pulled` or `resumed` when a stage
    /// finishes; `show` rebuilds the others from the log (`pending`, `running`, `interrupted`,
    /// `failed`, `skipped`); `pipe status` predicts `cached`, `stale`, `pulled` or `blocked`.
    /// Serialized as the lower-case name.
    StageStatus {
        Executed => "executed",
        Cached => "cached",
        /// Downloaded from the remote store (`--remote`): computed elsewhere, not here.
        Pulled => "pulled",
        Resumed => "resumed",
        Failed => "failed",
        Skipped => "skipped",
        Pending => "pending",
        Running => "running",
        Interrupted => "interrupted",
        Stale => "stale",
        Blocked => "blocked",
    }
);

impl StageStatus {
    /// Whether the stage's outputs exist (it ran, was cached, or resumed to the end).
    pub fn done(self) -> bool {
        matches!(
            self,
            StageStatus::Executed
                | StageStatus::Cached
                | StageStatus::Pulled
                | StageStatus::Resumed
        )
    }
}

status_enum!(
    /// A run's status. A run logs `succeeded` or `failed` when it finishes; reading it back adds
    /// `running` (its lock is held), `interrupted` (no `run_finished` and nobody holds the lock)
    /// and `damaged` (its plan cannot be read). Serialized as the lower-case name.
    RunStatus {
        Succeeded => "succeeded",
        Failed => "failed",
        Interrupted => "interrupted",
        Running => "running",
        Damaged => "damaged",
    }
);

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
        kind: String,
        job_id: String,
        script: String,
        log: String,
    },
    StageStarted {
        time: String,
        stage: String,
        kind: String,
        key: Key,
    },
    StageFinished {
        time: String,
        stage: String,
        kind: String,
        key: Key,
        status: StageStatus,
        outputs: Outputs,
        metrics: serde_json::Value,
        seconds: f64,
    },
    StageFailed {
        time: String,
        stage: String,
        kind: String,
        key: Option<Key>,
        error: String,
    },
    StageSkipped {
        time: String,
        stage: String,
        kind: String,
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

/// The plan.json of the run in `dir`, or why it cannot be read (the run is then damaged).
pub fn read_plan(dir: &std::path::Path) -> Result<serde_json::Value, String> {
    let path = dir.join("plan.json");
    fs::read(&path)
        .map_err(|e| e.to_string())
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
        .map_err(|e| format!("{} cannot be read: {e}", path.display()))
}

/// How a run's log says it ended: its last `run_finished`, unless a `run_started` came after it
/// (a resume is, or was, in progress); none while it has not finished.
pub fn finished_status(events: &[RunEvent]) -> Option<RunStatus> {
    let last_start = events
        .iter()
        .rposition(|e| matches!(e, RunEvent::RunStarted { .. }));
    let last_finish = events
        .iter()
        .rposition(|e| matches!(e, RunEvent::RunFinished { .. }))?;
    if last_start > Some(last_finish) {
        return None;
    }
    match &events[last_finish] {
        RunEvent::RunFinished { status, .. } => Some(*status),
        _ => None,
    }
}

fn run_dir(store: &Store, id: &str) -> Result<PathBuf> {
    let dir = store.root.join("runs").join(id);
    if !id.is_empty() && !id.contains('/') && dir.join("plan.json").exists() {
        return Ok(dir);
    }
    // Accept a unique prefix.
    let ids = list_run_ids(store)?;
    let m: Vec<&String> = ids.iter().filter(|r| r.starts_with(id)).collect();
    match m.len() {
        1 => Ok(store.root.join("runs").join(m[0])),
        0 => anyhow::bail!(
            "no run {id:?} in {} (list runs with `pipe show`)",
            store.root.display()
        ),
        n => anyhow::bail!("{id:?} matches {n} runs; give more of the id"),
    }
}

pub fn list_run_ids(store: &Store) -> Result<Vec<String>> {
    let Ok(rd) = fs::read_dir(store.root.join("runs")) else {
        return Ok(Vec::new());
    };
    let mut ids: Vec<String> = rd
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("plan.json").exists())
        .map(|e| e.file_name().to_string_lossy().to_string())
        .collect();
    ids.sort();
    Ok(ids)
}

/// A run as read back from disk.
pub struct RunRecord {
    pub id: String,
    pub plan: serde_json::Value,
    pub events: Vec<RunEvent>,
    pub status: RunStatus,
    /// What is wrong with a damaged record.
    pub damage: Option<String>,
}

impl RunRecord {
    pub fn load(store: &Store, id: &str) -> Result<RunRecord> {
        let dir = run_dir(store, id)?;
        let id = dir.file_name().unwrap().to_string_lossy().to_string();
        // A damaged plan does not hide the run (its log still says what it made, for gc).
        let (plan, damage) = match read_plan(&dir) {
            Ok(p) => (p, None),
            Err(why) => (serde_json::Value::Null, Some(why)),
        };
        let text = fs::read_to_string(dir.join("log.jsonl")).unwrap_or_default();
        // A torn last line (killed mid-write) is ignored: every complete line is a whole event.
        let events: Vec<RunEvent> = text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        let status = match finished_status(&events) {
            _ if damage.is_some() => RunStatus::Damaged,
            Some(s) => s,
            None => {
                let path = dir.join("lock");
                // On a read-only store the lock is opened for reading (flock needs no write).
                let lock = OpenOptions::new()
                    .create(true)
                    .truncate(false)
                    .write(true)
                    .open(&path)
                    .or_else(|e| match e.kind() {
                        std::io::ErrorKind::ReadOnlyFilesystem => File::open(&path),
                        _ => Err(e),
                    });
                match lock {
                    Ok(lock) if lock.try_lock().is_err() => RunStatus::Running,
                    Ok(_) => RunStatus::Interrupted,
                    // No lock file on a read-only store: no process can be running it.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => RunStatus::Interrupted,
                    Err(e) => return Err(e).with_context(|| format!("opening {}", path.display())),
                }
            }
        };
        Ok(RunRecord {
            id,
            plan,
            events,
            status,
            damage,
        })
    }

    pub fn started(&self) -> Option<&str> {
        self.events.iter().find_map(|e| match e {
            RunEvent::RunStarted { time, .. } => Some(time.as_str()),
            _ => None,
        })
    }

    /// Seconds the run was actually running: each attempt (run, then each resume) from its
    /// `run_started` to its last event, without the idle time in between.
    pub fn active_seconds(&self) -> Option<u64> {
        let mut total = 0;
        let mut attempt: Option<(u64, u64)> = None; // (start, latest)
        for e in &self.events {
            let t = parse_utc(event_time(e))?;
            match (e, attempt) {
                (RunEvent::RunStarted { .. }, prev) => {
                    total += prev.map_or(0, |(a, b)| b.saturating_sub(a));
                    attempt = Some((t, t));
                }
                (_, Some((a, _))) => attempt = Some((a, t)),
                (_, None) => {}
            }
        }
        Some(total + attempt.map_or(0, |(a, b)| b.saturating_sub(a)))
    }
}

fn event_time(e: &RunEvent) -> &str {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn active_time_leaves_out_the_gap_before_a_resume() {
        let t = |s: u64| crate::clock::format_utc(1_795_824_000 + s);
        let start = |s| RunEvent::RunStarted {
            time: t(s),
            command: "run".into(),
            manifest: "m".into(),
            name: "n".into(),
            pid: 1,
            executor: Executor::Local,
            sweep: None,
        };
        let eval = |s| RunEvent::Eval {
            time: t(s),
            stage: "train".into(),
            iter: 0,
            train_loss: 1.0,
            val_loss: 1.0,
        };
        let rec = RunRecord {
            id: "x".into(),
            plan: serde_json::Value::Null,
            events: vec![
                start(0),
                eval(10),
                start(100),
                eval(104),
                RunEvent::RunFinished {
                    time: t(105),
                    status: RunStatus::Succeeded,
                },
            ],
            status: RunStatus::Succeeded,
            damage: None,
        };
        assert_eq!(rec.active_seconds(), Some(15));
    }

    #[test]
    fn statuses_serialize_as_the_log_and_json_strings() {
        for &s in StageStatus::ALL {
            let j = serde_json::to_string(&s).unwrap();
            assert_eq!(j, format!("\"{}\"", s.as_str()));
            assert_eq!(serde_json::from_str::<StageStatus>(&j).unwrap(), s);
        }
        assert_eq!(StageStatus::ALL.len(), 11);
        for &s in RunStatus::ALL {
            let j = serde_json::to_string(&s).unwrap();
            assert_eq!(j, format!("\"{}\"", s.as_str()));
            assert_eq!(serde_json::from_str::<RunStatus>(&j).unwrap(), s);
        }
        // A run_started written before there was an executor reads as local.
        let line = r#"{"event":"run_started","time":"2026-11-28T00:00:00Z","command":"run","manifest":"m","name":"n","pid":1}"#;
        assert!(matches!(
            serde_json::from_str::<RunEvent>(line).unwrap(),
            RunEvent::RunStarted {
                executor: Executor::Local,
                ..
            }
        ));
        // A log line written before these were types still reads.
        let line = r#"{"event":"run_finished","time":"2026-11-28T00:00:00Z","status":"succeeded"}"#;
        assert!(matches!(
            serde_json::from_str::<RunEvent>(line).unwrap(),
            RunEvent::RunFinished {
                status: RunStatus::Succeeded,
                ..
            }
        ));
    }
}
