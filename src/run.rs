//! Runs: each `pipe run` gets an id and a folder `runs/<id>/` in the store holding
//! `plan.json` (the resolved manifest: what `pipe resume` re-executes), `log.jsonl` (an append-only
//! event log, each line flushed and fsynced as it happens) and `lock` (held while the process lives).
//!
//! A run's status is read from its log: the `run_finished` event if there is one; otherwise
//! `running` while some process holds the lock, and `interrupted` once none does (killed or crashed),
//! so a dead run never shows as running forever.
//!
//! Also what run logs reference (`logged_events`, `referenced_elsewhere`, which training's
//! checkpoint retention asks). ~540 lines of code, then its tests.

use crate::clock::parse_utc;
pub use crate::clock::{new_run_id, utc_now};
use crate::store::{Hash, Key, Outputs, Store};
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
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
        let plan_path = dir.join("plan.json");
        // A damaged plan does not hide the run (its log still says what it made, for gc).
        let (plan, damage) = match fs::read(&plan_path)
            .map_err(|e| e.to_string())
            .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
        {
            Ok(p) => (p, None),
            Err(e) => (
                serde_json::Value::Null,
                Some(format!("{} cannot be read: {e}", plan_path.display())),
            ),
        };
        let text = fs::read_to_string(dir.join("log.jsonl")).unwrap_or_default();
        // A torn last line (killed mid-write) is ignored: every complete line is a whole event.
        let events: Vec<RunEvent> = text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        let finished = events.iter().rev().find_map(|e| match e {
            RunEvent::RunFinished { status, .. } => Some(*status),
            _ => None,
        });
        // The last run_started after the last run_finished means a resume is (or was) in progress.
        let last_start = events
            .iter()
            .rposition(|e| matches!(e, RunEvent::RunStarted { .. }));
        let last_finish = events
            .iter()
            .rposition(|e| matches!(e, RunEvent::RunFinished { .. }));
        let status = match (finished, last_start > last_finish) {
            _ if damage.is_some() => RunStatus::Damaged,
            (Some(s), false) => s,
            _ => {
                let lock = OpenOptions::new()
                    .create(true)
                    .truncate(false)
                    .write(true)
                    .open(dir.join("lock"))?;
                if lock.try_lock().is_ok() {
                    RunStatus::Interrupted
                } else {
                    RunStatus::Running
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

pub fn logged_events(dir: &std::path::Path) -> Vec<RunEvent> {
    std::fs::read_to_string(dir.join("log.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Everything that references objects apart from the progress of the train stage with key `key`:
/// train's retention deletes a superseded checkpoint of that stage only when it is not in here.
/// That is: outputs of finished stages in every run record (even one whose plan is damaged),
/// checkpoints that runs logged for any *other* stage key (a `checkpoint` event is attributed to the
/// key of the last `stage_started` of its stage in the same log; one that cannot be attributed
/// counts as another's), the outputs of every action record (including downloads), the checkpoints
/// of every other progress record, and pins. Checkpoints that runs logged for `key` itself are the
/// stage's own history, which retention manages.
pub fn referenced_elsewhere(store: &Store, key: &Key) -> Result<BTreeSet<Hash>> {
    let mut refs = BTreeSet::new();
    if let Ok(rd) = std::fs::read_dir(store.root.join("runs")) {
        for dir in rd.filter_map(|e| e.ok()).map(|e| e.path()) {
            let mut key_of: BTreeMap<String, Key> = BTreeMap::new();
            for e in logged_events(&dir) {
                match e {
                    RunEvent::StageStarted { stage, key, .. } => {
                        key_of.insert(stage, key);
                    }
                    RunEvent::StageFinished { outputs, .. } => refs.extend(outputs.into_values()),
                    RunEvent::Checkpoint { stage, hash, .. } if key_of.get(&stage) != Some(key) => {
                        refs.insert(hash);
                    }
                    _ => {}
                }
            }
        }
    }
    refs.extend(store.pins()?);
    for k in store.progress_keys()? {
        if k != *key {
            refs.extend(store.progress(&k)?.checkpoints.into_iter().map(|c| c.hash));
        }
    }
    for a in store.actions()? {
        refs.extend(a.outputs.into_values());
    }
    Ok(refs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{ActionRecord, Progress, SavedCheckpoint};
    use serde_json::Value;

    #[test]
    fn referenced_elsewhere_counts_everything_but_the_stages_own_history() {
        let dir = std::env::temp_dir().join(format!(
            "pipe-refs-{}-{}",
            std::process::id(),
            crate::store::temp_name("t")
        ));
        let store = Store::open(&dir).unwrap();
        let t = || "2026-01-01T00:00:00Z".to_string();
        // Names for the test's objects and keys.
        let h = |s: &str| Hash::of(s.as_bytes());
        let k = |s: &str| Key::from(blake3::hash(s.as_bytes()));
        let started = |stage: &str, key: &str| RunEvent::StageStarted {
            time: t(),
            stage: stage.into(),
            kind: "train".into(),
            key: k(key),
        };
        let ckpt = |stage: &str, hash: &str| RunEvent::Checkpoint {
            time: t(),
            stage: stage.into(),
            iter: 1,
            hash: h(hash),
            keep: true,
        };
        let write_log = |id: &str, events: &[RunEvent]| {
            let d = store.root.join("runs").join(id);
            std::fs::create_dir_all(&d).unwrap();
            let text: String = events
                .iter()
                .map(|e| serde_json::to_string(e).unwrap() + "\n")
                .collect();
            std::fs::write(d.join("log.jsonl"), text).unwrap();
        };
        write_log(
            "a",
            &[
                started("train", "K"),
                ckpt("train", "own-logged"),
                started("other", "K2"),
                ckpt("other", "other-key-logged"),
                ckpt("never-started", "unattributed"),
            ],
        );
        write_log(
            "b",
            &[
                // The same stage name under another key in another run.
                started("train", "K3"),
                ckpt("train", "same-name-other-key"),
                RunEvent::StageFinished {
                    time: t(),
                    stage: "train".into(),
                    kind: "train".into(),
                    key: k("K3"),
                    status: StageStatus::Executed,
                    outputs: crate::store::outputs([("ckpt", h("finished-output"))]),
                    metrics: Value::Null,
                    seconds: 1.0,
                },
            ],
        );
        let progress = |hash: &str| Progress {
            checkpoints: vec![SavedCheckpoint {
                iter: 1,
                hash: h(hash),
                keep: true,
            }],
            evals: vec![],
            steps: vec![],
        };
        store
            .put_progress(&k("K"), &progress("own-progress"))
            .unwrap();
        store
            .put_progress(&k("K4"), &progress("other-progress"))
            .unwrap();
        store
            .put_action(&ActionRecord {
                key: k("K5"),
                stage: "init".into(),
                kind: crate::store::RecordKind::Stage(crate::manifest::StageKind::Init),
                key_material: Value::Null,
                outputs: crate::store::outputs([("ckpt", h("action-output"))]),
                metrics: Value::Null,
                created: t(),
            })
            .unwrap();
        store.set_pin(&h("pinned"), true).unwrap();
        let refs = referenced_elsewhere(&store, &k("K")).unwrap();
        let want: BTreeSet<Hash> = [
            "other-key-logged",
            "unattributed",
            "same-name-other-key",
            "finished-output",
            "other-progress",
            "action-output",
            "pinned",
        ]
        .iter()
        .map(|s| h(s))
        .collect();
        assert_eq!(refs, want);
        std::fs::remove_dir_all(dir).unwrap();
    }

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
