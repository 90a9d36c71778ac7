//! A run read back from its folder: `RunRecord`, its plan, and the ids of the store's runs.

use super::log::event_time;
use super::{RunEvent, RunStatus, finished_status};
use crate::clock::parse_utc;
use crate::store::Store;
use anyhow::{Context, Result};
use std::fs::{self, File, OpenOptions};
use std::path::PathBuf;

/// The plan.json of the run in `dir`, or why it cannot be read (the run is then damaged).
pub fn read_plan(dir: &std::path::Path) -> Result<serde_json::Value, String> {
    let path = dir.join("plan.json");
    fs::read(&path)
        .map_err(|e| e.to_string())
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
        .map_err(|e| format!("{} cannot be read: {e}", path.display()))
}

pub(super) fn run_dir(store: &Store, id: &str) -> Result<PathBuf> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::{Executor, StageStatus};

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
